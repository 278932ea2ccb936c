//! Parity of the encoder with sentence-transformers on all-MiniLM-L6-v2, batching
//! invariance, and checkpoint round trips.
//!
//! The model folder is `realm_testing_torch::model_dir()` (`$REALM_DB_MODEL`, else
//! `.deps/models/all-MiniLM-L6-v2` in the workspace); the reference vectors are
//! `shared/reference/minilm-embeddings.jsonl` beside the workspace
//! (`realm_testing_torch::shared_file`). Missing files fail the tests.

use std::path::PathBuf;

use realm_retriever::encoder::{
    DocFormat, Encoder, EncoderConfig, EncoderHead, Pooling, checkpoint_fingerprint,
};
use realm_testing_torch::{model_dir, shared_file, tiny_bert, tiny_encoder, tokenizer};
use serde::Deserialize;
use tch::Tensor;

fn reference_path() -> PathBuf {
    let path = shared_file("reference/minilm-embeddings.jsonl");
    assert!(
        path.is_file(),
        "the reference file {} is missing",
        path.display()
    );
    path
}

#[derive(Deserialize)]
struct Reference {
    text: String,
    input_ids: Vec<i64>,
    embedding: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let path = reference_path();
    let text = std::fs::read_to_string(&path).expect("the reference file is readable");
    let refs: Vec<Reference> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("each reference line is valid JSON"))
        .collect();
    assert!(!refs.is_empty(), "the reference file holds no lines");
    refs
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_kind(tch::Kind::Float).contiguous();
    let (n, d) = t.size2().expect("a 2-D tensor");
    let flat = Vec::<f32>::try_from(t.view([-1])).expect("float data");
    assert_eq!(flat.len() as i64, n * d);
    flat.chunks(d as usize).map(<[f32]>::to_vec).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn minilm_matches_sentence_transformers() {
    let refs = references();
    let encoder = Encoder::load(&model_dir(), EncoderConfig::default()).expect("model loads");
    assert_eq!(encoder.dim(), 384);
    assert_eq!(encoder.max_len(), 256);
    assert_eq!(
        encoder.head().pooling,
        Pooling::Mean { normalize: true },
        "modules.json lists a Normalize module"
    );

    let mut ids_matching = 0;
    for r in &refs {
        let batch = encoder.tokenize(&[r.text.as_str()]).expect("tokenizes");
        let ids = Vec::<i64>::try_from(batch.input_ids.view([-1])).expect("int64 ids");
        assert_eq!(ids, r.input_ids, "input ids differ for {:?}", r.text);
        ids_matching += 1;
    }

    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let embeddings = encoder.encode(&texts).expect("encodes");
    assert_eq!(embeddings.size(), [refs.len() as i64, 384]);
    let ours = rows(&embeddings);
    let mut min_cos = f64::INFINITY;
    for (r, e) in refs.iter().zip(&ours) {
        let c = cosine(e, &r.embedding);
        min_cos = min_cos.min(c);
        assert!(c >= 0.9999, "cosine {c} < 0.9999 for {:?}", r.text);
    }
    eprintln!(
        "parity: {ids_matching}/{} input_ids identical, min cosine {min_cos:.9} (1 - min = {:e})",
        refs.len(),
        1.0 - min_cos
    );
}

#[test]
fn batched_encoding_equals_one_by_one() {
    let cfg = EncoderConfig {
        batch_size: 3,
        ..EncoderConfig::default()
    };
    let encoder = Encoder::load(&model_dir(), cfg).expect("model loads");
    let long = "a much longer sentence that keeps going for a while, so that it needs ".repeat(12);
    let texts = [
        "short",
        long.as_str(),
        "",
        "The quick brown fox jumps over the lazy dog.",
        "two words",
        "Photosynthesis converts light energy into chemical energy.",
        "x",
    ];
    let together = encoder.encode(&texts).expect("encodes");
    assert_eq!(together.size(), [texts.len() as i64, 384]);
    let mut worst = 0.0f64;
    for (i, text) in texts.iter().enumerate() {
        let alone = encoder.encode(&[text]).expect("encodes");
        let diff = max_abs_diff(&together.narrow(0, i as i64, 1), &alone);
        worst = worst.max(diff);
        assert!(diff < 1e-5, "row {i} differs by {diff} when batched");
    }
    eprintln!("batched vs alone: max abs diff {worst:e}");

    let docs = [("Paris", "The Eiffel Tower is in Paris."), ("", "x")];
    let joined = encoder.encode_docs(&docs).expect("encodes documents");
    let plain = encoder
        .encode(&["Paris The Eiffel Tower is in Paris.", "x"])
        .expect("encodes");
    assert!(max_abs_diff(&joined, &plain) < 1e-5);

    let empty = encoder.encode(&[]).expect("an empty list encodes");
    assert_eq!(empty.size(), [0, 384]);
    assert!(encoder.tokenize(&[]).is_err());
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let tokenizer = tokenizer();
    let cfg = EncoderConfig {
        max_len: 64,
        batch_size: 2,
        ..EncoderConfig::default()
    };
    let head = EncoderHead::realm(Some(16));
    let encoder = Encoder::random(tiny_bert(), tokenizer.clone(), head, cfg.clone(), 7)
        .expect("random encoder builds");
    assert_eq!(encoder.dim(), 16);
    assert_eq!(encoder.head().doc_format, DocFormat::Pair);

    let docs = [
        (
            "Eiffel Tower",
            "The Eiffel Tower is a wrought-iron tower in Paris.",
        ),
        ("", "An untitled passage."),
        (
            "Moon",
            "Apollo 11 landed the first humans on the Moon in 1969.",
        ),
    ];
    let batch = encoder.tokenize_docs(&docs[..1]).expect("tokenizes");
    let types = Vec::<i64>::try_from(batch.token_type_ids.view([-1])).expect("int64");
    assert_eq!(types.first(), Some(&0));
    assert_eq!(types.last(), Some(&1), "the body is segment 1");

    let before = encoder.encode_docs(&docs).expect("encodes");
    let queries = encoder
        .encode(&["where is the eiffel tower"])
        .expect("encodes");
    let bytes = encoder.to_checkpoint_bytes().expect("serializes");
    let fingerprint = encoder.fingerprint().expect("fingerprints");
    assert_eq!(fingerprint, checkpoint_fingerprint(&bytes));
    assert_eq!(fingerprint.len(), 64);

    // Same batch size: batch composition changes float rounding (about 1e-8).
    let restore_cfg = EncoderConfig {
        max_len: 0,
        ..cfg.clone()
    };
    let restored =
        Encoder::from_checkpoint_bytes(&bytes, None, restore_cfg).expect("checkpoint loads");
    assert_eq!(
        restored.max_len(),
        64,
        "max_len 0 keeps the checkpoint's length"
    );
    assert_eq!(restored.head(), encoder.head());
    assert_eq!(restored.bert_config(), encoder.bert_config());
    let after = restored.encode_docs(&docs).expect("encodes");
    assert_eq!(max_abs_diff(&before, &after), 0.0);
    let queries_after = restored
        .encode(&["where is the eiffel tower"])
        .expect("encodes");
    assert_eq!(max_abs_diff(&queries, &queries_after), 0.0);
    assert_eq!(restored.fingerprint().expect("fingerprints"), fingerprint);
    assert_eq!(restored.to_checkpoint_bytes().expect("serializes"), bytes);

    let same_seed = Encoder::random(tiny_bert(), tokenizer.clone(), head, cfg.clone(), 7)
        .expect("random encoder builds");
    assert_eq!(same_seed.fingerprint().expect("fingerprints"), fingerprint);
    let other_seed =
        Encoder::random(tiny_bert(), tokenizer, head, cfg, 8).expect("random encoder builds");
    assert_ne!(other_seed.fingerprint().expect("fingerprints"), fingerprint);

    for cut in [0, 7, 12, 40, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            Encoder::from_checkpoint_bytes(&bytes[..cut], None, EncoderConfig::default()).is_err(),
            "a checkpoint cut at {cut} bytes must be rejected"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(Encoder::from_checkpoint_bytes(&trailing, None, EncoderConfig::default()).is_err());
}

#[test]
fn minilm_checkpoint_round_trip_keeps_parity() {
    let encoder = Encoder::load(&model_dir(), EncoderConfig::default()).expect("model loads");
    let texts = [
        "The Eiffel Tower is in Paris.",
        "",
        "what is the capital city of australia",
    ];
    let before = encoder.encode(&texts).expect("encodes");
    let bytes = encoder.to_checkpoint_bytes().expect("serializes");
    let restored = Encoder::from_checkpoint_bytes(&bytes, None, EncoderConfig::default())
        .expect("checkpoint loads");
    assert_eq!(restored.max_len(), 256);
    assert_eq!(restored.dim(), 384);
    let after = restored.encode(&texts).expect("encodes");
    assert_eq!(max_abs_diff(&before, &after), 0.0);
    assert_eq!(
        restored.fingerprint().expect("fingerprints"),
        checkpoint_fingerprint(&bytes)
    );
}

#[test]
fn training_forward_has_gradients() {
    let encoder = tiny_encoder(3);
    let vocab = encoder.bert_config().vocab_size;
    let batch = encoder
        .tokenize(&["first text", "a second, longer text"])
        .expect("tokenizes");
    let out = encoder.forward_t(&batch, true);
    assert_eq!(out.size(), [2, 32]);
    assert!(out.requires_grad());
    out.sum(tch::Kind::Float).backward();
    let word = encoder.word_embeddings();
    assert_eq!(word.size(), [vocab, 32]);
    assert!(word.grad().defined());
}

#[test]
fn encoder_is_send_and_sync() {
    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}
    assert_send::<Encoder>();
    assert_sync::<Encoder>();
    assert_send::<realm_retriever::encoder::TokenBatch>();
}

#[test]
fn pretrained_bert_under_a_realm_head() {
    let cfg = EncoderConfig::default();
    let plain = Encoder::load(&model_dir(), cfg.clone()).expect("model loads");
    let realm = Encoder::load_with_head(&model_dir(), EncoderHead::realm(Some(128)), cfg, 1)
        .expect("model loads under a REALM head");
    assert_eq!(realm.dim(), 128);
    assert_eq!(realm.head().pooling, Pooling::Cls);
    assert_eq!(
        max_abs_diff(
            &plain.word_embeddings(),
            &realm.with_bert(|bert| bert.word_embeddings().shallow_clone())
        ),
        0.0
    );
    let long_body = "a body long enough to be truncated ".repeat(100);
    let docs = [
        ("Title", long_body.as_str()),
        ("Paris", "The Eiffel Tower."),
    ];
    let batch = realm.tokenize_docs(&docs).expect("tokenizes");
    assert_eq!(batch.seq_len(), 256, "pairs are truncated to max_len");
    let out = realm.encode_docs(&docs).expect("encodes");
    assert_eq!(out.size(), [2, 128]);
}
