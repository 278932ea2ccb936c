//! Python `re` answer patterns (`realm_retriever::pyregex`), lenient matchers and question
//! files with bad lines.

use std::path::Path;

use realm_retriever::Error;
use realm_retriever::eval::{AnswerMatcher, read_qa_file, read_qa_file_skipping_bad_lines};
use realm_retriever::pyregex;
use realm_testing_torch::qa;
use unicode_normalization::UnicodeNormalization;

/// `tests/fixtures/python_re_cases.json`, written by `python_re_cases.py` beside it.
fn python_cases() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python_re_cases.json");
    let text = std::fs::read_to_string(&path).expect("the Python fixture");
    serde_json::from_str(&text).expect("the Python fixture is JSON")
}

/// The translation does what Python's `re` does on every case of the fixture, except the
/// few documented departures; a pattern Python rejects is rejected, so it matches nothing.
#[test]
fn translation_agrees_with_python_on_every_case() {
    let doc = python_cases();
    assert!(
        doc["python"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.11")),
        "the fixture was written by Python 3.11"
    );
    let cases = doc["cases"].as_array().expect("a list of cases");
    assert!(cases.len() > 300, "{} cases", cases.len());
    let mut disagreements = Vec::new();
    let mut rejected = 0;
    for case in cases {
        let pattern = case["pattern"].as_str().expect("a pattern");
        let text = case["text"].as_str().expect("a text");
        let python = case["python"].as_bool();
        let departure = case.get("departure").and_then(|d| d.as_str());
        let ours = pyregex::compile(pattern);
        let got = ours.as_ref().ok().map(|r| r.is_match(text));
        let agrees = match departure {
            // A departure names its reason and what realm-db does instead; a pattern the
            // crate cannot express is rejected, so it matches nothing.
            Some(reason) => {
                assert!(!reason.is_empty());
                let want = case["ours"].as_bool().expect("a departure's own result");
                got.unwrap_or(false) == want
                    && (got.is_some() || reason.contains("matches nothing"))
            }
            None => got == python,
        };
        if !agrees {
            disagreements.push(format!(
                "{pattern:?} on {text:?}: Python {python:?} ({}), ours {got:?} (translated {:?})",
                case["python_error"].as_str().unwrap_or("compiles"),
                pyregex::translate(pattern),
            ));
        }
        if let (None, None, Err(err)) = (python, departure, &ours) {
            rejected += 1;
            // Rejected, the pattern is an error naming it, and a lenient matcher leaves
            // it out.
            assert!(
                matches!(err, Error::AnswerPattern { pattern: p, .. } if p == pattern),
                "{err}"
            );
            let (m, bad) = AnswerMatcher::lenient(&qa(1, "q", &[], &[pattern]));
            assert_eq!(bad.len(), 1, "{pattern:?}");
            assert!(!m.can_match() && !m.matches(text), "{pattern:?}");
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements with Python:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(rejected > 30, "{rejected} cases Python rejects");
}

/// CuratedTREC's `Sn\ě\žka`: the escapes are the accented letters, whether the file holds
/// the pattern composed or already NFD-normalized, against composed or decomposed text.
#[test]
fn escaped_accented_letters_match_composed_and_decomposed_text() {
    let composed = r"Sn\ě\žka";
    let decomposed: String = composed.nfd().collect();
    assert_ne!(composed, decomposed);
    for pattern in [composed, decomposed.as_str()] {
        let m = AnswerMatcher::new(&qa(1, "q", &[], &[pattern])).expect("it compiles");
        for text in ["Sněžka is a mountain", "SNĚŽKA", "Sne\u{30c}z\u{30c}ka"] {
            assert!(m.matches(text), "{pattern:?} on {text:?}");
        }
        for text in ["Snezka", "Sn\\ě\\žka", "Sněžk"] {
            assert!(!m.matches(text), "{pattern:?} on {text:?}");
        }
    }
    // Escaped ASCII punctuation and other escaped non-ASCII characters, as CuratedTREC
    // writes them.
    let m = AnswerMatcher::new(&qa(1, "q", &[], &[r"11\,340\ kg\/m3|20 \°C|1491 \– 1547"]))
        .expect("it compiles");
    for text in ["11,340 kg/m3", "at 20 °C", "1491 – 1547"] {
        assert!(m.matches(text), "{text:?}");
    }
    assert!(!m.matches("11340 kg m3"));
}

#[test]
fn a_lenient_matcher_leaves_out_the_patterns_it_cannot_compile() {
    let example = qa(1, "q", &["Lyon"], &["(unclosed", r"(?<=x)y", "Paris"]);
    assert!(matches!(
        AnswerMatcher::new(&example),
        Err(Error::AnswerPattern { pattern, .. }) if pattern == "(unclosed"
    ));
    let (m, bad) = AnswerMatcher::lenient(&example);
    let named: Vec<String> = bad
        .iter()
        .map(|e| match e {
            Error::AnswerPattern { pattern, .. } => pattern.clone(),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(named, ["(unclosed", "(?<=x)y"]);
    assert!(m.matches("Paris, France"));
    assert!(!m.matches("(unclosed"));
    // Every pattern bad: nothing matches, and the plain answers are not used instead.
    let (m, bad) = AnswerMatcher::lenient(&qa(2, "q", &["Lyon"], &["", "\\"]));
    assert_eq!(bad.len(), 2);
    assert!(m.uses_patterns() && !m.can_match());
    assert!(!m.matches("Lyon") && !m.matches(""));
    // Without patterns, nothing to leave out.
    let (m, bad) = AnswerMatcher::lenient(&qa(3, "q", &["Lyon"], &[]));
    assert!(bad.is_empty() && m.matches("in Lyon"));
}

#[test]
fn bad_lines_of_a_question_file_are_skipped_and_named_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qa.jsonl");
    let mut content = Vec::new();
    content.extend_from_slice(b"{\"question\": \"a\", \"answers\": [\"x\"]}\n");
    content.extend_from_slice(b"not json\n");
    content.extend_from_slice(b"\n");
    content.extend_from_slice(b"{\"question\": \"\xff\", \"answers\": [\"x\"]}\n");
    content.extend_from_slice(b"{\"question\": \"b\"}\n");
    content.extend_from_slice(b"{\"question\": \"c\", \"answer_patterns\": [\"(\"]}\n");
    std::fs::write(&path, &content).unwrap();

    match read_qa_file(&path) {
        Err(Error::QaFile { line: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    let (examples, skipped) = read_qa_file_skipping_bad_lines(&path).unwrap();
    let lines: Vec<usize> = examples.iter().map(|e| e.line).collect();
    // The bad pattern of line 6 is the matcher's business, not the reader's.
    assert_eq!(lines, [1, 6]);
    let skipped: Vec<(usize, String)> = skipped
        .iter()
        .map(|e| match e {
            Error::QaFile { path: p, line, .. } if p == &path => (*line, e.to_string()),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(
        skipped.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        [2, 4, 5]
    );
    assert!(
        skipped[0].1.contains("not a valid question object"),
        "{skipped:?}"
    );
    assert!(skipped[1].1.contains("UTF-8"), "{skipped:?}");
    assert!(skipped[2].1.contains("neither"), "{skipped:?}");
    // A missing file is still an error.
    assert!(matches!(
        read_qa_file_skipping_bad_lines(&dir.path().join("missing.jsonl")),
        Err(Error::Io { .. })
    ));
}
