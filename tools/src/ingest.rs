//! Reading passages from input files, one record at a time.
//!
//! The format is chosen by extension:
//!
//! * `.jsonl` / `.json`: one JSON object a line: `"text"` (required, a non-empty string),
//!   `"title"` (optional string), `"id"` (optional string or number: the external id, which
//!   makes re-ingesting idempotent) and `"meta"` (optional, any JSON). Blank lines are
//!   skipped; unknown fields are ignored.
//! * `.tsv`: three columns `id<TAB>title<TAB>text` or two columns `title<TAB>text`, decided per
//!   line by the number of columns; an empty id column means no external id. A first line
//!   that names the columns (`id title text` or `title text`) is skipped as a header.
//! * anything else: plain UTF-8 text, split into passages of about 100 words at sentence
//!   ends (a blank line also ends a sentence), titled with the file name without its
//!   extension. Plain-text passages carry no external id, so ingesting a file twice stores
//!   it twice; their metadata names the source file, the passage number and its first line.
//!
//! Every record is validated before it reaches the store; a bad record is reported as a
//! [`Rejection`] with its line number and never stops the records after it.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::Path;

use realm_db::NewPassage;
use realm_db::storage::{PassageLimits, validate_passage};
use serde_json::Value;

/// The words a plain-text passage aims for.
pub const TARGET_WORDS: usize = 100;
/// A sentence longer than this is cut (text without punctuation would otherwise make one
/// huge passage).
pub const MAX_SENTENCE_WORDS: usize = 200;

/// An input file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Tsv,
    Text,
}

impl Format {
    /// The format of a file, by extension.
    pub fn for_path(path: &Path) -> Format {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "json" | "ndjson") => Format::JsonLines,
            Some("tsv") => Format::Tsv,
            _ => Format::Text,
        }
    }
}

/// A valid passage and the line it starts on (1-based).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub line: u64,
    pub passage: NewPassage,
}

/// A line that cannot become a passage, and why (a full sentence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub line: u64,
    pub reason: String,
}

/// One parsed item.
pub type Item = Result<Record, Rejection>;

/// Reads records from a file's bytes in one of the formats.
#[derive(Debug)]
pub struct RecordReader<R> {
    input: R,
    format: Format,
    limits: PassageLimits,
    line: u64,
    bytes_read: u64,
    buffer: Vec<u8>,
    ready: VecDeque<Item>,
    done: bool,
    /// The first non-blank line has been seen (TSV header detection, JSON BOM).
    started: bool,
    text: TextSplitter,
}

impl<R: BufRead> RecordReader<R> {
    /// A reader of `input` in `format`; `title` names plain-text passages and `source`
    /// is recorded in their metadata.
    pub fn new(input: R, format: Format, title: &str, source: &str, limits: PassageLimits) -> Self {
        RecordReader {
            input,
            format,
            limits,
            line: 0,
            bytes_read: 0,
            buffer: Vec::new(),
            ready: VecDeque::new(),
            done: false,
            started: false,
            text: TextSplitter::new(title, source),
        }
    }

    /// The number of the last line read (1-based; 0 before the first).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Bytes consumed so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    fn read_line(&mut self) -> std::io::Result<bool> {
        self.buffer.clear();
        let n = self.input.read_until(b'\n', &mut self.buffer)?;
        if n == 0 {
            return Ok(false);
        }
        self.bytes_read += n as u64;
        self.line += 1;
        while matches!(self.buffer.last(), Some(b'\n' | b'\r')) {
            self.buffer.pop();
        }
        Ok(true)
    }

    /// Parses the line in `self.buffer` into zero or more items.
    fn parse_line(&mut self) {
        let line = self.line;
        let text = match std::str::from_utf8(&self.buffer) {
            Ok(text) => text,
            Err(e) => {
                self.ready.push_back(Err(Rejection {
                    line,
                    reason: format!(
                        "The line is not valid UTF-8 (the first bad byte is at column {}).",
                        e.valid_up_to() + 1
                    ),
                }));
                return;
            }
        };
        let first = !self.started && !text.trim().is_empty();
        let text = if first {
            self.started = true;
            text.strip_prefix('\u{feff}').unwrap_or(text)
        } else {
            text
        };
        match self.format {
            Format::JsonLines => {
                if !text.trim().is_empty() {
                    let item = parse_json_line(text, line, &self.limits);
                    self.ready.push_back(item);
                }
            }
            Format::Tsv => {
                let skip = text.trim().is_empty() || (first && is_tsv_header(text));
                if !skip {
                    let item = parse_tsv_line(text, line, &self.limits);
                    self.ready.push_back(item);
                }
            }
            Format::Text => {
                let passages = self.text.feed(text, line);
                self.queue_text(passages);
            }
        }
    }

    fn queue_text(&mut self, passages: Vec<(u64, NewPassage)>) {
        for (line, passage) in passages {
            let item = match validate(&passage, &self.limits) {
                Ok(()) => Ok(Record { line, passage }),
                Err(reason) => Err(Rejection { line, reason }),
            };
            self.ready.push_back(item);
        }
    }
}

impl<R: BufRead> Iterator for RecordReader<R> {
    type Item = std::io::Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            match self.read_line() {
                Ok(true) => self.parse_line(),
                Ok(false) => {
                    self.done = true;
                    let rest = self.text.finish();
                    self.queue_text(rest);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Describes a JSON value's type for messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_json_line(text: &str, line: u64, limits: &PassageLimits) -> Item {
    let reject = |reason: String| Err(Rejection { line, reason });
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return reject(format!("The line is not valid JSON ({e}).")),
    };
    let Value::Object(mut object) = value else {
        return reject(format!(
            "The line is {}, not a JSON object with a \"text\" field.",
            json_type(&value)
        ));
    };
    let text = match object.remove("text") {
        None => return reject("The \"text\" field is missing.".into()),
        Some(Value::String(s)) => s,
        Some(other) => {
            return reject(format!(
                "The \"text\" field must be a string, but it is {}.",
                json_type(&other)
            ));
        }
    };
    let title = match object.remove("title") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return reject(format!(
                "The \"title\" field must be a string, but it is {}.",
                json_type(&other)
            ));
        }
    };
    let external_id = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return reject(format!(
                "The \"id\" field must be a string or a number, but it is {}.",
                json_type(&other)
            ));
        }
    };
    let meta = object.remove("meta").unwrap_or(Value::Null);
    let mut passage = NewPassage::new(title, text).with_meta(meta);
    passage.external_id = external_id;
    match validate(&passage, limits) {
        Ok(()) => Ok(Record { line, passage }),
        Err(reason) => reject(reason),
    }
}

fn is_tsv_header(text: &str) -> bool {
    let columns: Vec<String> = text
        .split('\t')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    columns == ["id", "title", "text"] || columns == ["title", "text"]
}

fn parse_tsv_line(text: &str, line: u64, limits: &PassageLimits) -> Item {
    let columns: Vec<&str> = text.split('\t').collect();
    let (id, title, body) = match columns.as_slice() {
        [title, body] => (None, *title, *body),
        [id, title, body] => {
            let id = id.trim();
            (if id.is_empty() { None } else { Some(id) }, *title, *body)
        }
        other => {
            return Err(Rejection {
                line,
                reason: format!(
                    "The line has {} tab-separated columns; expected 3 (id, title, text) or 2 (title, text).",
                    other.len()
                ),
            });
        }
    };
    let mut passage = NewPassage::new(title.trim(), body.trim());
    passage.external_id = id.map(str::to_string);
    match validate(&passage, limits) {
        Ok(()) => Ok(Record { line, passage }),
        Err(reason) => Err(Rejection { line, reason }),
    }
}

/// Checks what the store would reject ([`validate_passage`]), so one bad record never fails
/// a batch; the reason comes back as a sentence with a capital and a period.
pub fn validate(passage: &NewPassage, limits: &PassageLimits) -> Result<(), String> {
    validate_passage(passage, limits).map_err(|reason| {
        let reason = reason.to_string();
        let mut chars = reason.chars();
        let first = chars.next().map(|c| c.to_uppercase().collect::<String>());
        format!("{}{}.", first.unwrap_or_default(), chars.as_str())
    })
}

/// Whether a word ends a sentence: `.`, `!`, `?` or `…`, possibly followed by closing
/// quotes or brackets.
fn ends_sentence(word: &str) -> bool {
    let core = word.trim_end_matches(['"', '\'', '”', '’', ')', ']', '»']);
    core.ends_with(['.', '!', '?', '…'])
}

/// Splits a stream of plain-text lines into passages of about [`TARGET_WORDS`] words that
/// end at sentence boundaries.
#[derive(Debug)]
struct TextSplitter {
    title: String,
    source: String,
    passage: Vec<String>,
    passage_line: u64,
    sentence: Vec<String>,
    sentence_line: u64,
    count: u64,
}

impl TextSplitter {
    fn new(title: &str, source: &str) -> Self {
        TextSplitter {
            title: title.to_string(),
            source: source.to_string(),
            passage: Vec::new(),
            passage_line: 0,
            sentence: Vec::new(),
            sentence_line: 0,
            count: 0,
        }
    }

    /// Adds a line; returns the passages it completed with their first lines.
    fn feed(&mut self, text: &str, line: u64) -> Vec<(u64, NewPassage)> {
        let mut out = Vec::new();
        if text.trim().is_empty() {
            // A blank line ends a paragraph, and so a sentence.
            self.end_sentence(&mut out);
            return out;
        }
        for word in text.split_whitespace() {
            if self.sentence.is_empty() {
                self.sentence_line = line;
            }
            self.sentence.push(word.to_string());
            if ends_sentence(word) || self.sentence.len() >= MAX_SENTENCE_WORDS {
                self.end_sentence(&mut out);
            }
        }
        out
    }

    /// Flushes everything at the end of the input.
    fn finish(&mut self) -> Vec<(u64, NewPassage)> {
        let mut out = Vec::new();
        self.end_sentence(&mut out);
        self.flush(&mut out);
        out
    }

    fn end_sentence(&mut self, out: &mut Vec<(u64, NewPassage)>) {
        if self.sentence.is_empty() {
            return;
        }
        // Close the passage before a sentence that would overshoot the target, unless the
        // passage is still short.
        if !self.passage.is_empty()
            && self.passage.len() + self.sentence.len() > TARGET_WORDS
            && self.passage.len() >= TARGET_WORDS / 2
        {
            self.flush(out);
        }
        if self.passage.is_empty() {
            self.passage_line = self.sentence_line;
        }
        self.passage.append(&mut self.sentence);
        if self.passage.len() >= TARGET_WORDS {
            self.flush(out);
        }
    }

    fn flush(&mut self, out: &mut Vec<(u64, NewPassage)>) {
        if self.passage.is_empty() {
            return;
        }
        let text = self.passage.join(" ");
        self.passage.clear();
        let meta = serde_json::json!({
            "source": self.source,
            "passage": self.count,
            "line": self.passage_line,
        });
        self.count += 1;
        out.push((
            self.passage_line,
            NewPassage::new(self.title.clone(), text).with_meta(meta),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(format: Format, input: &str) -> Vec<Item> {
        RecordReader::new(
            input.as_bytes(),
            format,
            "doc",
            "doc.txt",
            PassageLimits::default(),
        )
        .collect::<std::io::Result<Vec<_>>>()
        .unwrap()
    }

    #[test]
    fn json_lines_are_validated_per_line() {
        let input = concat!(
            "{\"id\": 7, \"title\": \"A\", \"text\": \"alpha\", \"meta\": {\"k\": 1}}\n",
            "{not json\n",
            "\n",
            "{\"title\": \"B\"}\n",
            "{\"title\": \"C\", \"text\": \"  \"}\n",
            "{\"title\": 3, \"text\": \"x\"}\n",
            "[1, 2]\n",
            "{\"id\": \"b\", \"text\": \"beta\"}\r\n",
        );
        let items = read(Format::JsonLines, input);
        assert_eq!(items.len(), 7);
        let first = items[0].as_ref().unwrap();
        assert_eq!(first.line, 1);
        assert_eq!(first.passage.external_id.as_deref(), Some("7"));
        assert_eq!(first.passage.meta, serde_json::json!({"k": 1}));
        let lines: Vec<u64> = items
            .iter()
            .filter_map(|i| i.as_ref().err().map(|r| r.line))
            .collect();
        assert_eq!(lines, [2, 4, 5, 6, 7]);
        let reasons: Vec<&str> = items
            .iter()
            .filter_map(|i| i.as_ref().err().map(|r| r.reason.as_str()))
            .collect();
        assert!(reasons[0].starts_with("The line is not valid JSON"));
        assert_eq!(reasons[1], "The \"text\" field is missing.");
        assert_eq!(reasons[2], "The text is empty.");
        assert!(reasons[3].contains("\"title\" field must be a string"));
        assert!(reasons[4].contains("an array"));
        assert_eq!(items[6].as_ref().unwrap().passage.text, "beta");
    }

    #[test]
    fn over_long_text_is_rejected() {
        let limits = PassageLimits {
            max_text_bytes: 10,
            ..PassageLimits::default()
        };
        let items: Vec<Item> = RecordReader::new(
            "{\"text\": \"01234567890\"}\n".as_bytes(),
            Format::JsonLines,
            "t",
            "t",
            limits,
        )
        .collect::<std::io::Result<Vec<_>>>()
        .unwrap();
        assert!(
            items[0]
                .as_ref()
                .unwrap_err()
                .reason
                .contains("over the limit")
        );
    }

    #[test]
    fn tsv_columns_decide_the_layout() {
        let input = "id\ttitle\ttext\n1\tOne\tthe first\nTwo\tthe second\n\tThree\tthird\nbad\n";
        let items = read(Format::Tsv, input);
        assert_eq!(items.len(), 4);
        let one = items[0].as_ref().unwrap();
        assert_eq!(
            (one.line, one.passage.external_id.as_deref()),
            (2, Some("1"))
        );
        let two = items[1].as_ref().unwrap();
        assert_eq!(
            (
                two.passage.title.as_str(),
                two.passage.external_id.as_deref()
            ),
            ("Two", None)
        );
        assert_eq!(items[2].as_ref().unwrap().passage.external_id, None);
        assert_eq!(items[3].as_ref().unwrap_err().line, 5);
    }

    #[test]
    fn text_is_split_at_sentences_near_the_target() {
        let sentence = "one two three four five six seven eight nine ten. ";
        let input = format!("{}\n\n{}\n", sentence.repeat(15), sentence.repeat(3));
        let items = read(Format::Text, &input);
        let passages: Vec<&Record> = items.iter().map(|i| i.as_ref().unwrap()).collect();
        let words: Vec<usize> = passages
            .iter()
            .map(|r| r.passage.text.split_whitespace().count())
            .collect();
        assert_eq!(words, [100, 80]);
        assert!(passages.iter().all(|r| r.passage.text.ends_with('.')));
        assert_eq!(passages[0].passage.title, "doc");
        assert_eq!(passages[1].line, 1);
        assert_eq!(passages[1].passage.meta["passage"], 1);
    }

    #[test]
    fn text_without_punctuation_is_cut() {
        let input = "word ".repeat(450);
        let items = read(Format::Text, &input);
        let words: Vec<usize> = items
            .iter()
            .map(|i| i.as_ref().unwrap().passage.text.split_whitespace().count())
            .collect();
        assert_eq!(words, [200, 200, 50]);
    }

    #[test]
    fn formats_follow_extensions() {
        assert_eq!(Format::for_path(Path::new("a.JSONL")), Format::JsonLines);
        assert_eq!(Format::for_path(Path::new("a.tsv")), Format::Tsv);
        assert_eq!(Format::for_path(Path::new("a.md")), Format::Text);
        assert_eq!(Format::for_path(Path::new("README")), Format::Text);
    }
}
