//! Retrieval evaluation: question files, DPR-style answer matching, and top-k accuracy.
//!
//! The matching rule is the one of the evaluation data's README (`shared/data/README.md`
//! beside the repository), which is DPR's:
//!
//! * plain answers: an answer *appears in* a passage when [`normalize_answer`] of the
//!   answer is not empty and, padded with one space on each side, is a substring of the
//!   normalized passage text padded the same way (a whole-token match: "one" does not
//!   match "someone");
//! * regular-expression answers (CuratedTREC): a passage matches when its text contains
//!   a match of one of the question's patterns, compiled case-insensitive, multi-line and
//!   Unicode-aware and searched anywhere, pattern and text both Unicode NFD-normalized
//!   first. When a question has patterns, they are used and its plain answers are not.
//!   Patterns are written in Python's `re` syntax, as in DPR, and translated for the
//!   `regex` crate by [`crate::pyregex`]; an escaped accented letter is that letter, NFD
//!   form included. A pattern that cannot be compiled is an error for
//!   [`AnswerMatcher::new`], and left out, matching nothing, for [`AnswerMatcher::lenient`].
//!
//! Top-k retrieval accuracy ([`TopKAccuracy`]) is the fraction of questions for which at
//! least one of the `k` first retrieved passages matches. Many callers match the same
//! passage against many questions; [`PreparedText`] normalizes a passage once for that.
//!
//! A reader's predicted answer is scored with SQuAD's exact match and token F1
//! ([`exact_match_score`], [`f1_score`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};
use crate::pyregex;
pub use crate::qa_metrics::{exact_match_score, f1_score};

/// SQuAD v1.1 / DPR answer normalization, the same as the Python reference:
///
/// ```python
/// s = s.lower()
/// s = "".join(ch for ch in s if ch not in set(string.punctuation))
/// s = re.sub(r"\b(a|an|the)\b", " ", s)
/// return " ".join(s.split())
/// ```
///
/// 1. Unicode lower-casing;
/// 2. every ASCII punctuation character ``!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~`` is deleted
///    (not replaced: "U.S." becomes "us", "1,000" becomes "1000");
/// 3. the whole words "a", "an" and "the" are replaced by a space, words being runs of
///    the characters Python's `re` counts as `\w` (letters, numbers, `_`);
/// 4. the text is split on Python's whitespace (Unicode white space plus the ASCII
///    separators U+001C..U+001F) and re-joined with single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lowered: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let mut out = String::with_capacity(lowered.len());
    // Walk maximal runs of word characters and of other characters; after step 2 an
    // article match of `\b(a|an|the)\b` is always a whole run of word characters.
    let mut rest = lowered.as_str();
    while let Some(first) = rest.chars().next() {
        let word = is_python_word_char(first);
        let end = rest
            .char_indices()
            .find(|&(_, c)| is_python_word_char(c) != word)
            .map_or(rest.len(), |(i, _)| i);
        let (run, tail) = rest.split_at(end);
        rest = tail;
        if word {
            if matches!(run, "a" | "an" | "the") {
                push_space(&mut out);
            } else {
                out.push_str(run);
            }
        } else {
            for c in run.chars() {
                if is_python_whitespace(c) {
                    push_space(&mut out);
                } else {
                    out.push(c);
                }
            }
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Appends a separator to `out` unless it is empty or already ends with one.
fn push_space(out: &mut String) {
    if !out.is_empty() && !out.ends_with(' ') {
        out.push(' ');
    }
}

/// Python `re`'s `\w` for `str` patterns: `str.isalnum()` or `_`. `isalnum` is true for
/// the letter categories (Lu, Ll, Lt, Lm, Lo) and for characters with a numeric value,
/// which are the number categories (Nd, Nl, No) and a few ideographs already in Lo.
fn is_python_word_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    python_word_regex().is_match(c.encode_utf8(&mut [0; 4]))
}

fn python_word_regex() -> &'static Regex {
    static WORD: OnceLock<Regex> = OnceLock::new();
    WORD.get_or_init(|| Regex::new(r"\A[\p{L}\p{N}_]\z").expect("a valid constant regex"))
}

/// Python's `str.split()` separators: Unicode white space plus U+001C..U+001F, which
/// Python also counts as white space (bidirectional class B or S).
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// One question of a question file.
#[derive(Debug, Clone, PartialEq)]
pub struct QaExample {
    /// The 1-based line of the question in its file.
    pub line: usize,
    pub question: String,
    /// Plain answer strings (may be empty when `answer_patterns` is not).
    pub answers: Vec<String>,
    /// Regular-expression answers (CuratedTREC); used instead of `answers` when present.
    pub answer_patterns: Vec<String>,
    /// Whether an answer appears in some passage of the evaluation corpus, when the file
    /// says so.
    pub in_corpus: Option<bool>,
    /// The source's question id (a JSON string or number, as text).
    pub id: Option<String>,
}

/// The JSON shape of a question line; unknown fields (such as `split`) are ignored.
#[derive(Deserialize)]
struct RawQa {
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    answers: Option<Vec<String>>,
    #[serde(default)]
    answer_patterns: Option<Vec<String>>,
    #[serde(default)]
    in_corpus: Option<bool>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// Parses one line of a question file: a JSON object with `question` and `answers`
/// (a list of strings), and optionally `answer_patterns` (a list of regular expressions),
/// `in_corpus` (a boolean) and `id` (a string or a number). A line must have a non-empty
/// question and at least one answer or pattern.
///
/// Errors are [`Error::QaLine`] naming `line_no`; [`read_qa_file`] adds the file's path.
pub fn parse_qa_line(line: &str, line_no: usize) -> Result<QaExample> {
    let bad = |reason: String| Error::QaLine {
        line: line_no,
        reason,
    };
    let raw: RawQa = serde_json::from_str(line.trim())
        .map_err(|e| bad(format!("it is not a valid question object ({e})")))?;
    let question = match raw.question {
        None => return Err(bad("it has no \"question\" field".to_owned())),
        Some(q) if q.trim().is_empty() => return Err(bad("its question is empty".to_owned())),
        Some(q) => q,
    };
    let answers = raw.answers.unwrap_or_default();
    let answer_patterns = raw.answer_patterns.unwrap_or_default();
    if answers.is_empty() && answer_patterns.is_empty() {
        return Err(bad(
            "it has neither \"answers\" nor \"answer_patterns\" (at least one answer is needed)"
                .to_owned(),
        ));
    }
    let id = match raw.id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(bad(format!(
                "its \"id\" must be a string or a number, not {other}"
            )));
        }
    };
    Ok(QaExample {
        line: line_no,
        question,
        answers,
        answer_patterns,
        in_corpus: raw.in_corpus,
        id,
    })
}

/// Reads a question file (JSON Lines, UTF-8, one [`parse_qa_line`] object per line).
/// Blank lines are skipped; a byte-order mark at the start is ignored.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read, and [`Error::QaFile`] naming the path and
/// the 1-based line number for a line that is not valid UTF-8 or not a usable question.
pub fn read_qa_file(path: &Path) -> Result<Vec<QaExample>> {
    read_qa(path, false).map(|(examples, _)| examples)
}

/// [`read_qa_file`] that skips the lines it cannot use instead of failing on the first:
/// the questions of the good lines, and an [`Error::QaFile`] naming the path and the line
/// for each skipped one.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read.
pub fn read_qa_file_skipping_bad_lines(path: &Path) -> Result<(Vec<QaExample>, Vec<Error>)> {
    read_qa(path, true)
}

fn read_qa(path: &Path, skip_bad_lines: bool) -> Result<(Vec<QaExample>, Vec<Error>)> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut examples = Vec::new();
    let mut skipped = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
            break;
        }
        line_no += 1;
        match parse_file_line(&buf, line_no) {
            Ok(Some(example)) => examples.push(example),
            Ok(None) => {}
            Err(reason) => {
                let err = Error::QaFile {
                    path: path.to_owned(),
                    line: line_no,
                    reason,
                };
                if !skip_bad_lines {
                    return Err(err);
                }
                skipped.push(err);
            }
        }
    }
    Ok((examples, skipped))
}

/// One line of a question file: its question, `None` for a blank line, or why the line
/// cannot be used.
fn parse_file_line(bytes: &[u8], line_no: usize) -> Result<Option<QaExample>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("it is not valid UTF-8 ({e})"))?;
    let text = if line_no == 1 {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    match parse_qa_line(text, line_no) {
        Ok(example) => Ok(Some(example)),
        Err(Error::QaLine { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

/// A passage text prepared once for matching against many questions: its normalized form
/// (for plain answers) is computed up front, its NFD form (for patterns) on first use.
#[derive(Debug)]
pub struct PreparedText<'a> {
    raw: &'a str,
    /// `" " + normalize_answer(raw) + " "`.
    padded: String,
    nfd: OnceLock<String>,
}

impl<'a> PreparedText<'a> {
    pub fn new(raw: &'a str) -> Self {
        let normalized = normalize_answer(raw);
        let mut padded = String::with_capacity(normalized.len() + 2);
        padded.push(' ');
        padded.push_str(&normalized);
        padded.push(' ');
        PreparedText {
            raw,
            padded,
            nfd: OnceLock::new(),
        }
    }

    /// The passage text as given.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// [`normalize_answer`] of the text.
    pub fn normalized(&self) -> &str {
        &self.padded[1..self.padded.len() - 1]
    }

    fn nfd(&self) -> &str {
        self.nfd.get_or_init(|| self.raw.nfd().collect())
    }
}

/// How a question's answers are matched against passage texts.
#[derive(Debug, Clone)]
enum Rule {
    /// Normalized answers padded with one space on each side; empty answers dropped.
    Strings(Vec<String>),
    /// Compiled NFD-normalized patterns.
    Patterns(Vec<Regex>),
}

/// Decides whether a passage contains an answer to one question (see the module docs).
#[derive(Debug, Clone)]
pub struct AnswerMatcher {
    rule: Rule,
}

impl AnswerMatcher {
    /// A matcher for `example`: its `answer_patterns` when it has any, else its `answers`.
    ///
    /// # Errors
    ///
    /// [`Error::AnswerPattern`] when a pattern is empty or not a valid regular expression.
    pub fn new(example: &QaExample) -> Result<AnswerMatcher> {
        if example.answer_patterns.is_empty() {
            Ok(Self::from_answers(&example.answers))
        } else {
            Self::from_patterns(&example.answer_patterns)
        }
    }

    /// A matcher for plain answer strings. An answer that normalizes to nothing never
    /// matches.
    pub fn from_answers<S: AsRef<str>>(answers: &[S]) -> AnswerMatcher {
        let needles = answers
            .iter()
            .map(|a| normalize_answer(a.as_ref()))
            .filter(|n| !n.is_empty())
            .map(|n| format!(" {n} "))
            .collect();
        AnswerMatcher {
            rule: Rule::Strings(needles),
        }
    }

    /// A matcher for regular-expression answers: a passage matches when any pattern
    /// matches somewhere in it.
    ///
    /// # Errors
    ///
    /// [`Error::AnswerPattern`] when a pattern is empty (it would match every passage),
    /// not a valid Python regular expression, or one the `regex` crate cannot express
    /// (see [`crate::pyregex`]).
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<AnswerMatcher> {
        let regexes = patterns
            .iter()
            .map(|p| pyregex::compile_nfd(p.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(AnswerMatcher {
            rule: Rule::Patterns(regexes),
        })
    }

    /// [`new`](Self::new) for data that may hold patterns that cannot be compiled: each
    /// such pattern is left out and its [`Error::AnswerPattern`] returned, so it matches
    /// nothing (a question whose patterns all fail matches no passage; its plain answers
    /// are not used instead) and the caller can report it.
    pub fn lenient(example: &QaExample) -> (AnswerMatcher, Vec<Error>) {
        if example.answer_patterns.is_empty() {
            return (Self::from_answers(&example.answers), Vec::new());
        }
        let mut regexes = Vec::new();
        let mut rejected = Vec::new();
        for pattern in &example.answer_patterns {
            match pyregex::compile_nfd(pattern) {
                Ok(regex) => regexes.push(regex),
                Err(e) => rejected.push(e),
            }
        }
        let matcher = AnswerMatcher {
            rule: Rule::Patterns(regexes),
        };
        (matcher, rejected)
    }

    /// Whether the matcher uses regular expressions (else plain answers).
    pub fn uses_patterns(&self) -> bool {
        matches!(self.rule, Rule::Patterns(_))
    }

    /// Whether the matcher can match anything at all (false when every plain answer
    /// normalizes to the empty string).
    pub fn can_match(&self) -> bool {
        match &self.rule {
            Rule::Strings(needles) => !needles.is_empty(),
            Rule::Patterns(regexes) => !regexes.is_empty(),
        }
    }

    /// Whether an answer appears in `passage_text`.
    pub fn matches(&self, passage_text: &str) -> bool {
        match &self.rule {
            Rule::Strings(_) => self.matches_normalized(&normalize_answer(passage_text), ""),
            Rule::Patterns(_) => self.matches_normalized("", passage_text),
        }
    }

    /// Whether an answer appears in a passage, given both its text (`raw_text`, searched
    /// by patterns) and [`normalize_answer`] of it (`normalized_text`, searched by plain
    /// answers), so that callers can normalize each passage once. Only the argument the
    /// matcher's rule needs is read. [`matches_prepared`](Self::matches_prepared) does the
    /// same with a [`PreparedText`].
    pub fn matches_normalized(&self, normalized_text: &str, raw_text: &str) -> bool {
        match &self.rule {
            Rule::Strings(needles) => needles
                .iter()
                .any(|needle| contains_padded(normalized_text, needle)),
            Rule::Patterns(regexes) => {
                if regexes.is_empty() {
                    return false;
                }
                let nfd: String = raw_text.nfd().collect();
                regexes.iter().any(|r| r.is_match(&nfd))
            }
        }
    }

    /// Whether an answer appears in a prepared passage.
    pub fn matches_prepared(&self, text: &PreparedText<'_>) -> bool {
        match &self.rule {
            Rule::Strings(needles) => needles.iter().any(|n| text.padded.contains(n.as_str())),
            Rule::Patterns(regexes) => {
                !regexes.is_empty() && {
                    let nfd = text.nfd();
                    regexes.iter().any(|r| r.is_match(nfd))
                }
            }
        }
    }
}

/// Whether `" " + haystack + " "` contains `needle` (which starts and ends with a space),
/// without building the padded haystack.
fn contains_padded(haystack: &str, needle: &str) -> bool {
    let core = &needle[1..needle.len() - 1];
    let mut from = 0;
    while let Some(pos) = haystack[from..].find(core) {
        let start = from + pos;
        let end = start + core.len();
        let before_ok = start == 0 || haystack.as_bytes()[start - 1] == b' ';
        let after_ok = end == haystack.len() || haystack.as_bytes()[end] == b' ';
        if before_ok && after_ok {
            return true;
        }
        // Matches may overlap: resume one character after this one's start.
        from = start + haystack[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// The 0-based rank of the first passage, in rank order, in which `matcher` finds an
/// answer; `None` when none does.
pub fn first_hit<'a>(
    matcher: &AnswerMatcher,
    passages_in_rank_order: impl IntoIterator<Item = &'a str>,
) -> Option<usize> {
    passages_in_rank_order
        .into_iter()
        .position(|p| matcher.matches(p))
}

/// Top-k retrieval accuracy, accumulated one question at a time, over all questions and
/// over the `in_corpus` subset (questions marked `in_corpus: true`).
#[derive(Debug, Clone, Default)]
pub struct TopKAccuracy {
    /// `first_hits[r]`: how many questions had their first hit at rank `r`.
    first_hits: Vec<usize>,
    questions: usize,
    /// The same for the questions marked in-corpus.
    in_corpus_first_hits: Vec<usize>,
    in_corpus_questions: usize,
    /// Whether any question carried an `in_corpus` value.
    saw_in_corpus: bool,
}

impl TopKAccuracy {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one question: `first_hit_rank` is the 0-based rank of its first matching
    /// retrieved passage (`None` when no retrieved passage matched), `in_corpus` its
    /// `in_corpus` field.
    pub fn add(&mut self, first_hit_rank: Option<usize>, in_corpus: Option<bool>) {
        fn record(hist: &mut Vec<usize>, rank: Option<usize>) {
            if let Some(r) = rank {
                if hist.len() <= r {
                    hist.resize(r + 1, 0);
                }
                hist[r] += 1;
            }
        }
        self.questions += 1;
        record(&mut self.first_hits, first_hit_rank);
        if let Some(flag) = in_corpus {
            self.saw_in_corpus = true;
            if flag {
                self.in_corpus_questions += 1;
                record(&mut self.in_corpus_first_hits, first_hit_rank);
            }
        }
    }

    /// The number of questions recorded.
    pub fn questions(&self) -> usize {
        self.questions
    }

    /// The number of questions recorded with `in_corpus: true`; `None` when no question
    /// carried an `in_corpus` value.
    pub fn in_corpus_questions(&self) -> Option<usize> {
        self.saw_in_corpus.then_some(self.in_corpus_questions)
    }

    /// The fraction (0 to 1) of questions with a hit among the `k` first passages;
    /// 0 when no question was recorded.
    pub fn accuracy(&self, k: usize) -> f64 {
        fraction(&self.first_hits, self.questions, k)
    }

    /// [`accuracy`](Self::accuracy) over the in-corpus questions; `None` when no question
    /// carried an `in_corpus` value, `Some(0.0)` when some did but none was in-corpus.
    pub fn in_corpus_accuracy(&self, k: usize) -> Option<f64> {
        self.saw_in_corpus
            .then(|| fraction(&self.in_corpus_first_hits, self.in_corpus_questions, k))
    }

    /// `(k, accuracy(k))` for `k` = 1 ..= `max_k`.
    pub fn curve(&self, max_k: usize) -> Vec<(usize, f64)> {
        curve(&self.first_hits, self.questions, max_k)
    }

    /// `(k, in_corpus_accuracy(k))` for `k` = 1 ..= `max_k`; `None` when no question
    /// carried an `in_corpus` value.
    pub fn in_corpus_curve(&self, max_k: usize) -> Option<Vec<(usize, f64)>> {
        self.saw_in_corpus
            .then(|| curve(&self.in_corpus_first_hits, self.in_corpus_questions, max_k))
    }
}

fn fraction(hist: &[usize], total: usize, k: usize) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let hits: usize = hist.iter().take(k).sum();
    hits as f64 / total as f64
}

fn curve(hist: &[usize], total: usize, max_k: usize) -> Vec<(usize, f64)> {
    let mut hits = 0;
    (1..=max_k)
        .map(|k| {
            hits += hist.get(k - 1).copied().unwrap_or(0);
            let acc = if total == 0 {
                0.0
            } else {
                hits as f64 / total as f64
            };
            (k, acc)
        })
        .collect()
}
