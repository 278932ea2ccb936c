//! Answer matching, question files and top-k accuracy (`realm_retriever::eval`).

use std::path::Path;

use realm_retriever::Error;
use realm_retriever::eval::{
    AnswerMatcher, PreparedText, QaExample, TopKAccuracy, first_hit, normalize_answer,
    parse_qa_line, read_qa_file,
};
use realm_testing_torch::qa;

fn example(answers: &[&str], patterns: &[&str]) -> QaExample {
    qa(1, "q", answers, patterns)
}

fn strings(answers: &[&str]) -> AnswerMatcher {
    AnswerMatcher::new(&example(answers, &[])).unwrap()
}

fn patterns(patterns: &[&str]) -> AnswerMatcher {
    AnswerMatcher::new(&example(&[], patterns)).unwrap()
}

/// Every way of asking the matcher gives the same answer.
fn matches_all_ways(m: &AnswerMatcher, text: &str) -> bool {
    let direct = m.matches(text);
    assert_eq!(
        m.matches_normalized(&normalize_answer(text), text),
        direct,
        "{text:?}"
    );
    assert_eq!(
        m.matches_prepared(&PreparedText::new(text)),
        direct,
        "{text:?}"
    );
    direct
}

#[test]
fn normalization_follows_the_readme_examples() {
    assert_eq!(normalize_answer("a-laying"), "alaying");
    assert_eq!(normalize_answer("1,000"), "1000");
    assert_eq!(normalize_answer("U.S."), "us");
    assert_eq!(normalize_answer("The Beatles"), "beatles");
    assert_eq!(normalize_answer("The the THE a an"), "");
    assert_eq!(normalize_answer("(the) [a] {an}"), "");
    assert_eq!(normalize_answer("  Hello\t\nWorld  "), "hello world");
    assert_eq!(normalize_answer("ÉCOLE"), "école");
    assert_eq!(normalize_answer(""), "");
}

#[test]
fn normalization_deletes_every_ascii_punctuation_character() {
    let punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    assert_eq!(punctuation.len(), 32);
    assert_eq!(normalize_answer(&format!("x{punctuation}y")), "xy");
    // Non-ASCII punctuation is kept.
    assert_eq!(normalize_answer("«x» — y’s"), "«x» — y’s");
}

#[test]
fn normalization_removes_only_whole_article_words() {
    assert_eq!(
        normalize_answer("theater anthem area"),
        "theater anthem area"
    );
    assert_eq!(normalize_answer("anthe"), "anthe");
    assert_eq!(normalize_answer("Don't"), "dont");
    // Punctuation goes first, so "the-end" is one word.
    assert_eq!(normalize_answer("the-end of an era"), "theend of era");
    assert_eq!(normalize_answer("A.N.T."), "ant");
    assert_eq!(normalize_answer("a_b"), "ab");
}

/// Expected values computed by the Python reference of the data README (Python 3.11):
/// `\b` uses Python's `\w` (`str.isalnum()`), `split()` Python's white space.
#[test]
fn normalization_matches_the_python_reference_on_tricky_strings() {
    // "²" is alphanumeric for Python, so "the²" is one word and stays.
    assert_eq!(normalize_answer("the\u{b2}"), "the\u{b2}");
    // A combining mark is not alphanumeric for Python: "the" is a whole word.
    assert_eq!(normalize_answer("the\u{301}"), "\u{301}");
    // U+203F is connector punctuation, not a word character for Python.
    assert_eq!(normalize_answer("a\u{203f}b"), "\u{203f}b");
    // A Roman numeral (Nl) is alphanumeric; Unicode lower-casing maps it.
    assert_eq!(normalize_answer("\u{216b} the"), "\u{217b}");
    // Final sigma.
    assert_eq!(normalize_answer("ΟΔΟΣ"), "οδος");
    assert_eq!(normalize_answer("ΟΔΟΣ").chars().last(), Some('ς'));
    // Full lower-case mapping of the dotted capital I.
    assert_eq!(normalize_answer("İstanbul"), "i\u{307}stanbul");
    // Unicode white space splits; U+001F splits too (Python counts it as white space).
    assert_eq!(normalize_answer("the\u{a0}end"), "end");
    assert_eq!(normalize_answer("\u{3000}A\u{2003}B\u{3000}"), "b");
    assert_eq!(normalize_answer("x\u{1f}y"), "x y");
    // Zero-width space and soft hyphen are neither white space nor ASCII punctuation.
    assert_eq!(normalize_answer("x\u{200b}y"), "x\u{200b}y");
    assert_eq!(normalize_answer("ab\u{ad}cd"), "ab\u{ad}cd");
    // A right single quotation mark is not ASCII punctuation.
    assert_eq!(normalize_answer("café the\u{2019}s"), "café \u{2019}s");
}

#[test]
fn string_answers_match_whole_tokens_only() {
    let one = strings(&["one"]);
    assert!(!matches_all_ways(&one, "Someone was there."));
    assert!(!matches_all_ways(&one, "onestep"));
    assert!(matches_all_ways(&one, "One of them."));
    assert!(matches_all_ways(&one, "It was (one)!"));
    assert!(matches_all_ways(&one, "one"));

    let us = strings(&["U.S."]);
    assert!(matches_all_ways(&us, "the US army"));
    assert!(!matches_all_ways(&us, "the USA"));

    let phrase = strings(&["The Rolling Stones"]);
    assert!(matches_all_ways(
        &phrase,
        "a concert by the rolling stones, in 1969"
    ));
    assert!(matches_all_ways(&phrase, "Rolling   Stones"));
    assert!(!matches_all_ways(&phrase, "rolling stonesy"));

    let number = strings(&["1,000"]);
    assert!(matches_all_ways(&number, "about 1000 people"));
    assert!(!matches_all_ways(&number, "about 10000 people"));
}

#[test]
fn overlapping_candidates_are_all_considered() {
    // The first occurrence of "b b" is not a whole-token match, an overlapping one is.
    let m = strings(&["b b"]);
    assert!(matches_all_ways(&m, "cb b b"));
    assert!(!matches_all_ways(&m, "cb bc"));
}

#[test]
fn any_answer_can_match() {
    let m = strings(&["Paris", "Lutetia"]);
    assert!(matches_all_ways(&m, "Lutetia was its Roman name."));
    assert!(matches_all_ways(&m, "The capital is Paris."));
    assert!(!matches_all_ways(&m, "The capital is Lyon."));
}

#[test]
fn an_answer_empty_after_normalization_never_matches() {
    let m = strings(&["The", "..."]);
    assert!(!m.can_match());
    assert!(!matches_all_ways(&m, "the"));
    assert!(!matches_all_ways(&m, ""));
    assert!(!matches_all_ways(&m, "..."));
    // An empty answer does not keep another answer from matching.
    let m = strings(&["", "cat"]);
    assert!(m.can_match());
    assert!(matches_all_ways(&m, "The cat."));
}

#[test]
fn patterns_are_case_insensitive_and_searched_anywhere() {
    let m = patterns(&[r"\bParis\b"]);
    assert!(m.uses_patterns());
    assert!(matches_all_ways(&m, "It is PARIS, the capital."));
    assert!(!matches_all_ways(&m, "Parisian food"));
    // Searched anywhere: no whole-token constraint of its own.
    let m = patterns(&["ton"]);
    assert!(matches_all_ways(&m, "Washington"));
}

#[test]
fn patterns_support_alternatives_and_multi_line_anchors() {
    let m = patterns(&[r"George\s+Washington|Washington,?\s+George|Lincoln"]);
    assert!(matches_all_ways(&m, "President george washington"));
    assert!(matches_all_ways(&m, "Washington, George"));
    assert!(matches_all_ways(&m, "Abraham Lincoln"));
    assert!(!matches_all_ways(&m, "George Bush"));
    let anchored = patterns(&["^1776$"]);
    assert!(matches_all_ways(&anchored, "year\n1776\nwas"));
    assert!(!matches_all_ways(&anchored, "in 1776 they"));
}

#[test]
fn patterns_and_texts_are_nfd_normalized() {
    let composed = "Caf\u{e9}";
    let decomposed = "Cafe\u{301}";
    for pattern in [composed, decomposed] {
        let m = patterns(&[pattern]);
        assert!(matches_all_ways(&m, "a caf\u{e9} here"), "{pattern:?}");
        assert!(matches_all_ways(&m, "a cafe\u{301} here"), "{pattern:?}");
        assert!(matches_all_ways(&m, "A CAF\u{c9}"), "{pattern:?}");
        assert!(!matches_all_ways(&m, "a cafe here"), "{pattern:?}");
    }
}

/// Patterns are Python `re` syntax; expected values computed with Python 3.11's `re`
/// (`re.search(nfd(p), nfd(t), re.I | re.U | re.M)`).
#[test]
fn patterns_read_python_syntax() {
    let cases: &[(&str, &str, bool)] = &[
        // Escaped non-ASCII characters are literals (CuratedTREC has `\°`, `\–`, `\ `).
        (r"56\.6\°C", "it was 56.6°c", true),
        (r"1491 \– 1547", "1491 – 1547", true),
        ("11\\\u{a0}kg", "11\u{a0}kg", true),
        (r"\'s", "it's", true),
        (r"a\}", "a}", true),
        // `\<` and `\>` are the characters, not word boundaries.
        (r"\<b\>", "a <b> c", true),
        (r"\<b\>", "a b c", false),
        // A `{` that is no repetition is a literal; `{,n}` is 0 to n.
        ("a{", "xa{y", true),
        ("{x}", "{x}", true),
        ("a{}", "a{}", true),
        ("x{,2}y", "y", true),
        ("^x{,2}y$", "xxxy", false),
        ("^x{1,}y$", "xxxy", true),
        // Character classes: no nesting or set operations, a leading `]` is literal.
        ("[[]x", "[x", true),
        ("[]a]", "]", true),
        ("[^]a]", "b", true),
        ("[^]a]", "]", false),
        ("[a&&b]", "&", true),
        ("[~]", "~", true),
        // `\Z` is the end of the text, not of a line.
        (r"end\Z", "the end", true),
        (r"end\Z", "end\nx", false),
    ];
    for &(pattern, text, want) in cases {
        let m = patterns(&[pattern]);
        assert_eq!(m.matches(text), want, "{pattern:?} on {text:?}");
    }
}

#[test]
fn patterns_take_precedence_over_answers() {
    let m = AnswerMatcher::new(&example(&["Lyon"], &["Paris"])).unwrap();
    assert!(m.matches("Paris"));
    assert!(!m.matches("Lyon"));
}

#[test]
fn an_invalid_or_empty_pattern_is_an_error_naming_it() {
    let err = AnswerMatcher::new(&example(&[], &["(unclosed"])).unwrap_err();
    assert!(matches!(&err, Error::AnswerPattern { pattern, .. } if pattern == "(unclosed"));
    assert!(err.to_string().contains("(unclosed"), "{err}");
    let err = AnswerMatcher::new(&example(&[], &[""])).unwrap_err();
    assert!(matches!(&err, Error::AnswerPattern { .. }), "{err}");
}

#[test]
fn first_hit_is_the_rank_of_the_first_matching_passage() {
    let m = strings(&["Everest"]);
    assert_eq!(first_hit(&m, ["K2", "Mount Everest", "Everest"]), Some(1));
    assert_eq!(first_hit(&m, ["everest"]), Some(0));
    assert_eq!(first_hit(&m, ["K2", "Lhotse"]), None);
    assert_eq!(first_hit(&m, std::iter::empty::<&str>()), None);
    let owned: Vec<String> = ["a", "the everest"].map(String::from).into();
    assert_eq!(first_hit(&m, owned.iter().map(String::as_str)), Some(1));
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn accuracy_and_curve_arithmetic() {
    let mut acc = TopKAccuracy::new();
    assert_eq!(acc.questions(), 0);
    assert!(close(acc.accuracy(5), 0.0));
    acc.add(Some(0), None);
    acc.add(Some(2), None);
    acc.add(Some(2), None);
    acc.add(None, None);
    acc.add(Some(9), None);
    assert_eq!(acc.questions(), 5);
    assert_eq!(acc.in_corpus_questions(), None);
    assert_eq!(acc.in_corpus_accuracy(1), None);
    assert!(acc.in_corpus_curve(3).is_none());
    assert!(close(acc.accuracy(0), 0.0));
    assert!(close(acc.accuracy(1), 0.2));
    assert!(close(acc.accuracy(2), 0.2));
    assert!(close(acc.accuracy(3), 0.6));
    assert!(close(acc.accuracy(10), 0.8));
    assert!(close(acc.accuracy(1000), 0.8));
    let curve = acc.curve(4);
    let expected = [(1, 0.2), (2, 0.2), (3, 0.6), (4, 0.6)];
    assert_eq!(curve.len(), expected.len());
    for ((k, a), (ek, ea)) in curve.into_iter().zip(expected) {
        assert_eq!(k, ek);
        assert!(close(a, ea), "k={k}: {a} != {ea}");
    }
    assert!(acc.curve(0).is_empty());
    let long = acc.curve(12);
    assert_eq!(long.len(), 12);
    assert!(close(long[9].1, 0.8) && close(long[11].1, 0.8));
    // The curve agrees with accuracy(k) everywhere.
    for (k, a) in acc.curve(12) {
        assert!(close(a, acc.accuracy(k)));
    }
}

#[test]
fn in_corpus_subset_accounting() {
    let mut acc = TopKAccuracy::new();
    acc.add(Some(0), Some(true));
    acc.add(Some(3), Some(true));
    acc.add(None, Some(true));
    acc.add(None, Some(true));
    // A string match in a question marked not in-corpus counts for all questions only.
    acc.add(Some(1), Some(false));
    acc.add(None, Some(false));
    acc.add(Some(0), None);
    assert_eq!(acc.questions(), 7);
    assert_eq!(acc.in_corpus_questions(), Some(4));
    assert!(close(acc.accuracy(1), 2.0 / 7.0));
    assert!(close(acc.accuracy(2), 3.0 / 7.0));
    assert!(close(acc.accuracy(4), 4.0 / 7.0));
    assert!(close(acc.in_corpus_accuracy(1).unwrap(), 0.25));
    assert!(close(acc.in_corpus_accuracy(3).unwrap(), 0.25));
    assert!(close(acc.in_corpus_accuracy(4).unwrap(), 0.5));
    let curve = acc.in_corpus_curve(4).unwrap();
    assert_eq!(curve.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(close(curve[3].1, 0.5));

    // The field present but never true: an empty subset, not a missing one.
    let mut none_in = TopKAccuracy::new();
    none_in.add(Some(0), Some(false));
    assert_eq!(none_in.in_corpus_questions(), Some(0));
    assert_eq!(none_in.in_corpus_accuracy(1), Some(0.0));
}

#[test]
fn parse_qa_line_reads_all_fields() {
    let e = parse_qa_line(
        r#"{"id": "1547", "question": "atomic number of uranium?", "answer_patterns": ["92"], "answers": ["92"], "in_corpus": true, "split": "x"}"#,
        7,
    )
    .unwrap();
    assert_eq!(e.line, 7);
    assert_eq!(e.question, "atomic number of uranium?");
    assert_eq!(e.answers, ["92"]);
    assert_eq!(e.answer_patterns, ["92"]);
    assert_eq!(e.in_corpus, Some(true));
    assert_eq!(e.id.as_deref(), Some("1547"));

    let e = parse_qa_line(r#"{"question": "who", "answers": ["x"], "id": 42}"#, 1).unwrap();
    assert_eq!(e.id.as_deref(), Some("42"));
    assert_eq!(e.in_corpus, None);
    assert!(e.answer_patterns.is_empty());

    // Patterns without plain answers are enough.
    let e = parse_qa_line(
        r#"{"question": "q", "answers": [], "answer_patterns": ["a|b"]}"#,
        1,
    )
    .unwrap();
    assert!(e.answers.is_empty());
}

fn line_error(line: &str) -> (usize, String) {
    match parse_qa_line(line, 3) {
        Err(Error::QaLine { line, reason }) => (line, reason),
        other => panic!("expected a QaLine error for {line:?}, got {other:?}"),
    }
}

#[test]
fn parse_qa_line_rejects_unusable_lines() {
    for bad in [
        "not json",
        "[1, 2]",
        r#"{"question": "q", "answers": ["x"]"#,
        r#"{"answers": ["x"]}"#,
        r#"{"question": "  ", "answers": ["x"]}"#,
        r#"{"question": "q"}"#,
        r#"{"question": "q", "answers": [], "answer_patterns": []}"#,
        r#"{"question": "q", "answers": "x"}"#,
        r#"{"question": "q", "answers": ["x"], "in_corpus": "yes"}"#,
        r#"{"question": "q", "answers": ["x"], "id": [1]}"#,
    ] {
        let (line, reason) = line_error(bad);
        assert_eq!(line, 3);
        assert!(!reason.is_empty());
    }
    assert!(line_error(r#"{"answers": ["x"]}"#).1.contains("question"));
    assert!(line_error(r#"{"question": "q"}"#).1.contains("answers"));
}

fn write(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn read_qa_file_skips_blank_lines_and_numbers_lines_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "q.jsonl",
        "\u{feff}{\"question\": \"a\", \"answers\": [\"1\"], \"in_corpus\": false}\n\n  \r\n{\"question\": \"b\", \"answers\": [\"2\"]}\r\n{\"question\": \"c\", \"answer_patterns\": [\"3\"]}"
            .as_bytes(),
    );
    let qs = read_qa_file(&path).unwrap();
    assert_eq!(qs.len(), 3);
    assert_eq!(
        qs.iter()
            .map(|q| (q.line, q.question.as_str()))
            .collect::<Vec<_>>(),
        [(1, "a"), (4, "b"), (5, "c")]
    );
    assert_eq!(qs[0].in_corpus, Some(false));
    assert_eq!(qs[2].answer_patterns, ["3"]);

    let empty = write(dir.path(), "empty.jsonl", b"");
    assert!(read_qa_file(&empty).unwrap().is_empty());
}

#[test]
fn read_qa_file_errors_name_the_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"question": "q", "answers": ["x"]}"#;
    let cases: [(&str, String, usize); 4] = [
        (
            "malformed.jsonl",
            format!("{good}\n\n{{\"question\": \n"),
            3,
        ),
        (
            "no-question.jsonl",
            format!("{good}\n{{\"answers\": [\"x\"]}}\n"),
            2,
        ),
        (
            "no-answers.jsonl",
            format!("\n\n\n{good}\n{{\"question\": \"q\"}}"),
            5,
        ),
        (
            "empty-question.jsonl",
            format!("{{\"question\": \"\", \"answers\": [\"x\"]}}\n{good}"),
            1,
        ),
    ];
    for (name, content, want_line) in cases {
        let path = write(dir.path(), name, content.as_bytes());
        let err = read_qa_file(&path).unwrap_err();
        match &err {
            Error::QaFile { path: p, line, .. } => {
                assert_eq!(p, &path, "{name}");
                assert_eq!(*line, want_line, "{name}: {err}");
            }
            other => panic!("{name}: expected a QaFile error, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("line {want_line}")), "{message}");
    }

    let mut bytes = format!("{good}\n").into_bytes();
    bytes.extend_from_slice(b"{\"question\": \"\xff\", \"answers\": [\"x\"]}\n");
    let path = write(dir.path(), "latin1.jsonl", &bytes);
    assert!(matches!(
        read_qa_file(&path),
        Err(Error::QaFile { line: 2, .. })
    ));
}

#[test]
fn read_qa_file_io_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let err = read_qa_file(&missing).unwrap_err();
    assert!(matches!(&err, Error::Io { path, .. } if path == &missing));
    assert!(err.to_string().contains("missing.jsonl"), "{err}");
}

#[test]
fn end_to_end_on_a_tiny_hand_made_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "tiny.jsonl",
        concat!(
            r#"{"question": "capital of france", "answers": ["Paris"], "in_corpus": true}"#,
            "\n",
            r#"{"question": "tallest mountain", "answers": ["Mount Everest", "Everest"], "in_corpus": true}"#,
            "\n",
            r#"{"question": "who wrote hamlet", "answers": ["Shakespeare"], "in_corpus": false}"#,
            "\n",
            r#"{"question": "year of independence", "answer_patterns": ["17\\d\\d"], "answers": [], "in_corpus": true}"#,
            "\n",
        )
        .as_bytes(),
    );
    let ranked: [&[&str]; 4] = [
        &["Lyon is a city.", "Paris is the capital."],
        &["K2 is high.", "Lhotse is near.", "Everest is the highest."],
        &["Hamlet is a play."],
        &["It was 1776.", "In 1789."],
    ];
    let mut acc = TopKAccuracy::new();
    for (q, passages) in read_qa_file(&path).unwrap().iter().zip(ranked) {
        let m = AnswerMatcher::new(q).unwrap();
        acc.add(first_hit(&m, passages.iter().copied()), q.in_corpus);
    }
    assert_eq!(acc.questions(), 4);
    assert_eq!(acc.in_corpus_questions(), Some(3));
    assert!(close(acc.accuracy(1), 0.25));
    assert!(close(acc.accuracy(2), 0.5));
    assert!(close(acc.accuracy(3), 0.75));
    assert!(close(acc.in_corpus_accuracy(3).unwrap(), 1.0));
}
