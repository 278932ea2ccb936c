//! Encoder checkpoints written by earlier builds stay loadable and keep their outputs.
//!
//! `tests/fixtures/encoder-v1.ckpt` (a REALM head with a projection, f32 weights) and
//! `tests/fixtures/encoder-v1-f16.ckpt` (a normalized mean-pooling head, f16 weights) were
//! written by the encoder as it was before the checkpoint code moved to the `safetensors`
//! crate (commit fd73949), together with `encoder-v1.json`: the SHA-256 of each file and
//! the embeddings that build computed from it. [`regenerate_fixtures`] (ignored) rewrites
//! all of them from a tiny seeded model and a tiny WordPiece tokenizer; the current code
//! writes the same bytes as that build did. Run it with
//! `cargo test -p realm-retriever --test it -- --ignored checkpoints::regenerate_fixtures`.

use std::path::{Path, PathBuf};

use realm_retriever::encoder::{Encoder, EncoderConfig, EncoderHead, checkpoint_fingerprint};
use realm_testing_torch::{fixture_bert, fixture_tokenizer};
use serde::{Deserialize, Serialize};
use tch::Tensor;

const TEXTS: [&str; 3] = [
    "Who wrote Hamlet?",
    "The Globe Theatre stood near the river.",
    "",
];
const DOCS: [(&str, &str); 2] = [
    (
        "Hamlet",
        "Hamlet is a tragedy written by William Shakespeare.",
    ),
    ("Globe", "The Globe stood in London, near the Thames."),
];
/// What an encoder fixture must reproduce.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Expected {
    /// The hex SHA-256 of the fixture file (its checkpoint id).
    sha256: String,
    dim: i64,
    max_len: usize,
    pad_id: i64,
    /// `encode(TEXTS)`, row by row.
    texts: Vec<Vec<f32>>,
    /// `encode_docs(DOCS)`, row by row.
    docs: Vec<Vec<f32>>,
}

/// The expected outputs of every encoder fixture, by file name.
type ExpectedFile = std::collections::BTreeMap<String, Expected>;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_kind(tch::Kind::Float).contiguous();
    let (_, d) = t.size2().expect("a 2-D tensor");
    let flat = Vec::<f32>::try_from(t.view([-1])).expect("float data");
    flat.chunks(d as usize).map(<[f32]>::to_vec).collect()
}

fn outputs(encoder: &Encoder, sha256: String) -> Expected {
    Expected {
        sha256,
        dim: encoder.dim(),
        max_len: encoder.max_len(),
        pad_id: encoder.pad_id(),
        texts: rows(&encoder.encode(&TEXTS).expect("texts embed")),
        docs: rows(&encoder.encode_docs(&DOCS).expect("documents embed")),
    }
}

fn assert_close(name: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{name}: row count");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{name}: width of row {r}");
        for (c, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "{name}: row {r} column {c} is {a}, expected {b}"
            );
        }
    }
}

fn load(bytes: &[u8]) -> Encoder {
    Encoder::from_checkpoint_bytes(bytes, None, EncoderConfig::default())
        .expect("the checkpoint loads")
}

fn read_expected() -> ExpectedFile {
    let path = fixtures().join("encoder-v1.json");
    let text = std::fs::read_to_string(&path).expect("the expected outputs are readable");
    serde_json::from_str(&text).expect("the expected outputs are valid JSON")
}

/// Loads one fixture, compares it with its recorded outputs, and checks that re-saving and
/// reloading keeps the outputs and gives stable bytes; returns the fixture and the re-saved
/// bytes.
fn check_fixture(file: &str) -> (Vec<u8>, Vec<u8>) {
    let expected = read_expected();
    let want = &expected[file];
    let bytes = std::fs::read(fixtures().join(file)).expect("the fixture is readable");
    assert_eq!(
        checkpoint_fingerprint(&bytes),
        want.sha256,
        "{file}: its id"
    );
    let encoder = load(&bytes);
    let got = outputs(&encoder, want.sha256.clone());
    assert_eq!(
        (got.dim, got.max_len, got.pad_id),
        (want.dim, want.max_len, want.pad_id)
    );
    assert_close(&format!("{file} texts"), &got.texts, &want.texts);
    assert_close(&format!("{file} docs"), &got.docs, &want.docs);

    let resaved = encoder.to_checkpoint_bytes().expect("the encoder saves");
    let reloaded = load(&resaved);
    let again = outputs(&reloaded, String::new());
    assert_close(&format!("{file} reloaded texts"), &again.texts, &want.texts);
    assert_close(&format!("{file} reloaded docs"), &again.docs, &want.docs);
    assert_eq!(reloaded.to_checkpoint_bytes().unwrap(), resaved);
    assert_eq!(
        reloaded.fingerprint().unwrap(),
        checkpoint_fingerprint(&resaved)
    );
    (bytes, resaved)
}

/// An f32 encoder re-saves to the very bytes it was loaded from: checkpoint ids written
/// before the move to the `safetensors` crate stay the ids of the same weights.
#[test]
fn v1_encoder_checkpoint_loads_with_its_recorded_outputs() {
    let (bytes, resaved) = check_fixture("encoder-v1.ckpt");
    assert!(resaved == bytes, "re-saving changed the checkpoint's bytes");
}

/// f16 weights load into f32 variables, and re-saving writes them as f32.
#[test]
fn v1_f16_encoder_checkpoint_loads_with_its_recorded_outputs() {
    let (bytes, resaved) = check_fixture("encoder-v1-f16.ckpt");
    assert!(resaved.len() > bytes.len(), "f32 weights take more room");
}

fn write_fixture(dir: &Path, file: &str, encoder: &Encoder, expected: &mut ExpectedFile) {
    let bytes = encoder.to_checkpoint_bytes().expect("the encoder saves");
    std::fs::write(dir.join(file), &bytes).expect("the fixture is written");
    let loaded = load(&bytes);
    expected.insert(
        file.to_owned(),
        outputs(&loaded, checkpoint_fingerprint(&bytes)),
    );
}

/// Rewrites the encoder fixtures and their expected outputs.
#[test]
#[ignore = "rewrites the committed fixtures"]
fn regenerate_fixtures() {
    let dir = fixtures();
    std::fs::create_dir_all(&dir).expect("the fixture folder exists");
    let mut expected = ExpectedFile::new();
    let realm = Encoder::random(
        fixture_bert(),
        fixture_tokenizer(),
        EncoderHead::realm(Some(8)),
        EncoderConfig::default(),
        11,
    )
    .expect("a tiny REALM encoder builds");
    write_fixture(&dir, "encoder-v1.ckpt", &realm, &mut expected);
    let mut mean = Encoder::random(
        fixture_bert(),
        fixture_tokenizer(),
        EncoderHead::mean(true),
        EncoderConfig::default(),
        12,
    )
    .expect("a tiny mean-pooling encoder builds");
    mean.var_store_mut().half();
    write_fixture(&dir, "encoder-v1-f16.ckpt", &mean, &mut expected);
    let json = serde_json::to_string_pretty(&expected).expect("the outputs serialize");
    std::fs::write(dir.join("encoder-v1.json"), json + "\n").expect("the outputs are written");
}
