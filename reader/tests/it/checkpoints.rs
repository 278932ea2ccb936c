//! Reader checkpoints written by earlier builds stay loadable and keep their outputs.
//!
//! `tests/fixtures/reader-v1.ckpt` was written by the reader as it was before its weights
//! section became a safetensors file (format version 1: a hand-rolled list of f32 tensors,
//! commit fd73949), together with `reader-v1.json`: the SHA-256 of the file and the outputs
//! that build computed from it. `reader-v2.ckpt` holds the same weights in format 2
//! (safetensors weights), with `reader-v2.json`. [`regenerate_fixtures`] (ignored)
//! rewrites the format-2 pair from a tiny seeded model and a tiny WordPiece tokenizer; run
//! it with `cargo test -p realm-reader --test it -- --ignored checkpoints::regenerate_fixtures`.

use std::path::PathBuf;

use realm_reader::{Reader, ReaderConfig, SpanNormalization};
use realm_retriever::encoder::checkpoint_fingerprint;
use realm_testing_torch::{fixture_bert, fixture_tokenizer};
use serde::{Deserialize, Serialize};
use tch::Tensor;

const QUESTION: &str = "Who wrote Hamlet?";
const PASSAGES: [(u64, &str, &str, f32); 2] = [
    (
        1,
        "Hamlet",
        "Hamlet is a tragedy written by William Shakespeare.",
        0.7,
    ),
    (
        2,
        "Globe",
        "The Globe stood in London, near the Thames.",
        0.3,
    ),
];
/// "the globe stood in [MASK]" as ids of the tiny vocabulary, with its masked target.
const MASKED: [i64; 5] = [5, 24, 28, 8, 4];
const TARGETS: [(usize, i64); 1] = [(4, 23)];
/// What a reader fixture must reproduce.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Expected {
    /// The hex SHA-256 of the fixture file (its checkpoint id).
    sha256: String,
    retrieval_scale: f64,
    /// log p(s|z,x) of every span of each passage for [`QUESTION`].
    span_log_probs: Vec<Vec<f32>>,
    /// The answer to [`QUESTION`] from [`PASSAGES`] and its p(y|x).
    answer: String,
    answer_prob: f64,
    /// log p(y|z,x) of [`MASKED`] read with each passage and with the null document.
    mlm_log_likelihoods: Vec<f32>,
    /// REALM's QA loss for [`QUESTION`] with the answer "william shakespeare".
    qa_loss: f32,
}

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

fn config() -> ReaderConfig {
    ReaderConfig {
        max_len: 32,
        ..ReaderConfig::default()
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).contiguous().view([-1])).expect("floats")
}

fn outputs(reader: &Reader, sha256: String) -> Expected {
    tch::no_grad(|| {
        let texts: Vec<&str> = PASSAGES.iter().map(|p| p.2).collect();
        let scores = reader
            .span_scores(QUESTION, &texts, false)
            .expect("spans score");
        let answer = reader.answer(QUESTION, &PASSAGES).expect("an answer");
        let mut with_null = texts.clone();
        with_null.push("");
        let mlm = reader
            .mlm_log_likelihoods(&MASKED, &TARGETS, &with_null, false)
            .expect("MLM scores");
        let log_p_z = Tensor::from_slice(&[0.7f32.ln(), 0.3f32.ln()]);
        let loss = reader
            .qa_loss(
                QUESTION,
                &texts,
                &log_p_z,
                &["William Shakespeare".to_owned()],
                false,
            )
            .expect("a QA loss")
            .expect("the answer occurs in a passage");
        Expected {
            sha256,
            retrieval_scale: reader.retrieval_scale(),
            span_log_probs: scores
                .passages
                .iter()
                .map(|p| floats(&p.log_probs))
                .collect(),
            answer: answer.text,
            answer_prob: answer.prob,
            mlm_log_likelihoods: floats(&mlm),
            qa_loss: floats(&loss)[0],
        }
    })
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6,
            "{name}: entry {i} is {a}, expected {b}"
        );
    }
}

fn assert_matches(name: &str, got: &Expected, want: &Expected) {
    assert_eq!(got.retrieval_scale, want.retrieval_scale, "{name}: scale");
    assert_eq!(got.span_log_probs.len(), want.span_log_probs.len());
    for (g, w) in got.span_log_probs.iter().zip(&want.span_log_probs) {
        assert_close(&format!("{name} span log-probs"), g, w);
    }
    assert_eq!(got.answer, want.answer, "{name}: answer");
    assert!(
        (got.answer_prob - want.answer_prob).abs() <= 1e-6,
        "{name}: p(y|x) is {}, expected {}",
        got.answer_prob,
        want.answer_prob
    );
    assert_close(
        &format!("{name} MLM"),
        &got.mlm_log_likelihoods,
        &want.mlm_log_likelihoods,
    );
    assert_close(&format!("{name} QA loss"), &[got.qa_loss], &[want.qa_loss]);
}

fn load(bytes: &[u8]) -> Reader {
    Reader::from_checkpoint_bytes(bytes, config()).expect("the checkpoint loads")
}

fn read_expected(file: &str) -> Expected {
    let text = std::fs::read_to_string(fixtures().join(file)).expect("the outputs are readable");
    serde_json::from_str(&text).expect("the expected outputs are JSON")
}

/// Loads a fixture, compares it with its recorded outputs, and checks that re-saving and
/// reloading keeps the outputs and gives stable bytes; returns the re-saved bytes.
fn check_fixture(file: &str, expected: &str) -> Vec<u8> {
    let want = read_expected(expected);
    let bytes = std::fs::read(fixtures().join(file)).expect("the fixture reads");
    assert_eq!(
        checkpoint_fingerprint(&bytes),
        want.sha256,
        "{file}: its id"
    );
    let reader = load(&bytes);
    assert_matches(file, &outputs(&reader, String::new()), &want);

    let resaved = reader.to_checkpoint_bytes().expect("the reader saves");
    let reloaded = load(&resaved);
    assert_matches("resaved", &outputs(&reloaded, String::new()), &want);
    assert_eq!(reloaded.to_checkpoint_bytes().unwrap(), resaved);
    assert_eq!(
        reloaded.fingerprint().unwrap(),
        checkpoint_fingerprint(&resaved)
    );
    resaved
}

/// A format-1 checkpoint loads with its recorded outputs and re-saves as exactly the
/// format-2 fixture of the same weights.
#[test]
fn v1_reader_checkpoint_loads_with_its_recorded_outputs() {
    let resaved = check_fixture("reader-v1.ckpt", "reader-v1.json");
    let v2 = std::fs::read(fixtures().join("reader-v2.ckpt")).expect("the fixture reads");
    assert!(
        resaved == v2,
        "a re-saved v1 reader differs from reader-v2.ckpt"
    );
}

/// A format-2 checkpoint (safetensors weights) loads with the outputs recorded for the same
/// weights in format 1, and re-saves to its own bytes.
#[test]
fn v2_reader_checkpoint_loads_with_the_v1_outputs() {
    let bytes = std::fs::read(fixtures().join("reader-v2.ckpt")).expect("the fixture reads");
    let resaved = check_fixture("reader-v2.ckpt", "reader-v2.json");
    assert!(resaved == bytes, "re-saving changed the checkpoint's bytes");
    let (v1, v2) = (
        read_expected("reader-v1.json"),
        read_expected("reader-v2.json"),
    );
    assert_matches("v2 against v1", &v2, &v1);
}

/// A reader trained with the joint span normalization saves it and loads with it; one with
/// the per-passage normalization writes no such field (its bytes are those of readers saved
/// before the setting existed, as the fixtures show).
#[test]
fn the_span_normalization_survives_a_checkpoint() {
    let bytes = std::fs::read(fixtures().join("reader-v2.ckpt")).expect("the fixture reads");
    let mut reader = load(&bytes);
    assert_eq!(reader.span_normalization(), SpanNormalization::Passage);
    reader.set_span_normalization(SpanNormalization::Joint);
    let joint = reader.to_checkpoint_bytes().expect("the reader saves");
    assert_ne!(joint, bytes);
    assert_eq!(load(&joint).span_normalization(), SpanNormalization::Joint);
    reader.set_span_normalization(SpanNormalization::Passage);
    assert!(reader.to_checkpoint_bytes().unwrap() == bytes);
}

/// Rewrites the format-2 reader fixture and its expected outputs (the format-1 fixture
/// came from this generator at commit fd73949, before format 2 existed).
#[test]
#[ignore = "rewrites the committed fixtures"]
fn regenerate_fixtures() {
    let dir = fixtures();
    std::fs::create_dir_all(&dir).expect("the fixture folder exists");
    let mut reader =
        Reader::random(fixture_bert(), fixture_tokenizer(), config(), 21).expect("a reader");
    reader.set_retrieval_scale(2.5).expect("a valid scale");
    let bytes = reader.to_checkpoint_bytes().expect("the reader saves");
    std::fs::write(dir.join("reader-v2.ckpt"), &bytes).expect("the fixture is written");
    let expected = outputs(&load(&bytes), checkpoint_fingerprint(&bytes));
    let json = serde_json::to_string_pretty(&expected).expect("the outputs serialize");
    std::fs::write(dir.join("reader-v2.json"), json + "\n").expect("the outputs are written");
}
