//! Reader checkpoints written by earlier builds stay loadable and keep their outputs.
//!
//! `tests/fixtures/reader-v1.ckpt` was written by the reader as it was before its weights
//! section became a safetensors file (format version 1: a hand-rolled list of f32 tensors),
//! together with `reader-v1.json`: the SHA-256 of the file and the outputs that build
//! computed from it. [`regenerate_fixtures`] (ignored) rewrites them from a tiny seeded
//! model and a tiny WordPiece tokenizer; run it with
//! `cargo test -p realm-reader --test checkpoints -- --ignored regenerate_fixtures`.

use std::path::PathBuf;

use realm_reader::{Reader, ReaderConfig};
use realm_retriever::bert::BertConfig;
use realm_retriever::encoder::checkpoint_fingerprint;
use serde::{Deserialize, Serialize};
use tch::Tensor;

const QUESTION: &str = "Who wrote Hamlet?";
const PASSAGES: [(u64, &str, &str, f32); 2] = [
    (1, "Hamlet", "Hamlet is a tragedy written by William Shakespeare.", 0.7),
    (2, "Globe", "The Globe stood in London, near the Thames.", 0.3),
];
/// "the globe stood in [MASK]" as ids of the tiny vocabulary, with its masked target.
const MASKED: [i64; 5] = [5, 24, 28, 8, 4];
const TARGETS: [(usize, i64); 1] = [(4, 23)];
const VOCAB: [&str; 36] = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "a",
    "of",
    "in",
    "is",
    "was",
    "by",
    "who",
    "what",
    "where",
    "wrote",
    "ham",
    "##let",
    "shakespeare",
    "william",
    "play",
    "tragedy",
    "denmark",
    "london",
    "globe",
    "theatre",
    "river",
    "thames",
    "stood",
    "near",
    "written",
    "##s",
    "##ed",
    ".",
    ",",
    "?",
];

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

fn tiny_config() -> BertConfig {
    BertConfig {
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 32,
        ..BertConfig::tiny(VOCAB.len() as i64)
    }
}

/// A lower-casing BERT WordPiece tokenizer over [`VOCAB`], shaped like MiniLM's.
fn tiny_tokenizer() -> tokenizers::Tokenizer {
    let special = |id: usize| {
        serde_json::json!({"id": id, "special": true, "content": VOCAB[id], "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false})
    };
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), i.into()))
        .collect();
    let cls = serde_json::json!({"SpecialToken": {"id": "[CLS]", "type_id": 0}});
    let sep = |t: u32| serde_json::json!({"SpecialToken": {"id": "[SEP]", "type_id": t}});
    let seq = |id: &str, t: u32| serde_json::json!({"Sequence": {"id": id, "type_id": t}});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": (0..5).map(special).collect::<Vec<_>>(),
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
            "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [cls, seq("A", 0), sep(0)],
            "pair": [cls, seq("A", 0), sep(0), seq("B", 1), sep(1)],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]",
            "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
            "vocab": vocab}
    });
    tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).expect("the tokenizer builds")
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

/// Loads the fixture, compares it with its recorded outputs, and checks that re-saving
/// and reloading keeps the outputs and gives stable bytes.
#[test]
fn v1_reader_checkpoint_loads_with_its_recorded_outputs() {
    let text = std::fs::read_to_string(fixtures().join("reader-v1.json"))
        .expect("the expected outputs are readable");
    let want: Expected = serde_json::from_str(&text).expect("the expected outputs are JSON");
    let bytes = std::fs::read(fixtures().join("reader-v1.ckpt")).expect("the fixture reads");
    assert_eq!(checkpoint_fingerprint(&bytes), want.sha256);
    let reader = load(&bytes);
    assert_matches("reader-v1", &outputs(&reader, String::new()), &want);

    let resaved = reader.to_checkpoint_bytes().expect("the reader saves");
    let reloaded = load(&resaved);
    assert_matches("resaved", &outputs(&reloaded, String::new()), &want);
    assert_eq!(reloaded.to_checkpoint_bytes().unwrap(), resaved);
    assert_eq!(
        reloaded.fingerprint().unwrap(),
        checkpoint_fingerprint(&resaved)
    );
}

/// Rewrites the reader fixture and its expected outputs.
#[test]
#[ignore = "rewrites the committed fixtures"]
fn regenerate_fixtures() {
    let dir = fixtures();
    std::fs::create_dir_all(&dir).expect("the fixture folder exists");
    let mut reader =
        Reader::random(tiny_config(), tiny_tokenizer(), config(), 21).expect("a tiny reader");
    reader.set_retrieval_scale(2.5).expect("a valid scale");
    let bytes = reader.to_checkpoint_bytes().expect("the reader saves");
    std::fs::write(dir.join("reader-v1.ckpt"), &bytes).expect("the fixture is written");
    let expected = outputs(&load(&bytes), checkpoint_fingerprint(&bytes));
    let json = serde_json::to_string_pretty(&expected).expect("the outputs serialize");
    std::fs::write(dir.join("reader-v1.json"), json + "\n").expect("the outputs are written");
}
