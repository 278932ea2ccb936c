//! Shared fixtures of realm-db's tests, one home for each: where the model and the shared
//! reference files are, temporary databases, toy corpora and the lock that serializes tests
//! using libtorch's global generator. This crate does not link libtorch, so
//! `realm-storage`'s tests use it; `realm-testing-torch` (`testing/torch/`) holds the
//! fixtures that do (tiny encoder and reader, CPU retriever options, indexed toy databases,
//! a trainer runner) and re-exports this crate's.
//! Each crate's integration tests are one binary, `tests/it/main.rs`, with a module per
//! topic.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use realm_storage::{Db, NewPassage};
use tempfile::TempDir;

/// The workspace root (the folder of the top `Cargo.toml`).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testing/ lies in the workspace")
        .to_path_buf()
}

/// The all-MiniLM-L6-v2 model folder: `$REALM_DB_MODEL` (at run time, else as the build
/// saw it), else `.deps/models/all-MiniLM-L6-v2` in the workspace, where
/// `scripts/setup.sh` installs it. Panics with a hint when it holds no model.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("REALM_DB_MODEL")
        .map(PathBuf::from)
        .or_else(|| option_env!("REALM_DB_MODEL").map(PathBuf::from))
        .unwrap_or_else(|| workspace_dir().join(".deps/models/all-MiniLM-L6-v2"));
    for file in ["tokenizer.json", "model.safetensors"] {
        assert!(
            dir.join(file).is_file(),
            "the model folder {} has no {file}; run scripts/setup.sh or set REALM_DB_MODEL to an all-MiniLM-L6-v2 folder",
            dir.display()
        );
    }
    dir
}

/// `shared/<relative>`: the reference files kept beside the workspace (not in it). Looks in
/// the `shared/` folder beside the workspace, then beside each folder above it (a worktree
/// nested deeper finds the same files); where none holds the file, the path beside the
/// workspace, which does not exist.
pub fn shared_file(relative: &str) -> PathBuf {
    let root = workspace_dir();
    root.ancestors()
        .skip(1)
        .map(|dir| dir.join("shared").join(relative))
        .find(|path| path.is_file())
        .unwrap_or_else(|| root.join("../shared").join(relative))
}

/// A new empty database in a new temporary folder (keep the folder alive while the
/// database is used: `let (_dir, db) = temp_db();`).
pub fn temp_db() -> (TempDir, Db) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let db = Db::create(dir.path()).expect("a new database");
    (dir, db)
}

static GLOBAL_RNG: Mutex<()> = Mutex::new(());

/// The environment variable `name` parsed as a `T` (a test's knob: its seed, steps, learning
/// rate), or `default` when it is unset. A value that does not parse fails the test.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} does not parse")),
        Err(_) => default,
    }
}

/// Serializes the tests that draw from libtorch's global generator (dropout during
/// training; `Trainer::run` reseeds it with `tch::manual_seed`): hold the guard for the
/// whole test. Tests of one binary run on parallel threads and the generator is
/// process-global, so without it a determinism test (a resumed run ends with the weights
/// of an uninterrupted one) would see another test's draws. A test that failed while
/// holding it does not block the others.
pub fn global_rng_lock() -> MutexGuard<'static, ()> {
    GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Eight short encyclopedia passages (title, text): four on unrelated topics, then four
/// sharing words with the first three (Sicily and volcanoes, starch, China).
pub const FACTS: [(&str, &str); 8] = [
    (
        "Volcano",
        "Mount Etna is an active volcano on the east coast of Sicily.",
    ),
    (
        "Enzyme",
        "Amylase is an enzyme that catalyses the hydrolysis of starch.",
    ),
    ("Dynasty", "The Tang dynasty ruled China from 618 to 907."),
    (
        "Orbit",
        "A geostationary orbit lies 35,786 kilometres above the equator.",
    ),
    (
        "Sicily",
        "Sicily is the largest island in the Mediterranean Sea.",
    ),
    (
        "Volcanoes",
        "A volcano is a rupture in the crust of a planet.",
    ),
    (
        "Starch",
        "Starch is a polymeric carbohydrate made by green plants.",
    ),
    (
        "China",
        "China is a country in East Asia, the most populous until 2023.",
    ),
];

/// The first `n` of [`FACTS`] as passages without external ids.
pub fn facts(n: usize) -> Vec<NewPassage> {
    FACTS[..n]
        .iter()
        .map(|(title, text)| NewPassage::new(*title, *text))
        .collect()
}

/// Checks one sample of every variant of a crate's error enum: no variant sampled twice,
/// `variants` samples in all, each classified as `expected` says (`is_user` against
/// `expected`, both `true` for a user error), and each message in the crates' style: a
/// clause that starts with a lowercase word or an acronym ("I/O", "BM25"), on one line,
/// without a final period (the CLI adds it). A source's own message is its crate's business:
/// only the enum's own words are checked.
pub fn assert_error_variants<E: std::error::Error>(
    samples: &[E],
    variants: usize,
    is_user: impl Fn(&E) -> bool,
    expected: impl Fn(&E) -> bool,
) {
    let distinct: std::collections::HashSet<_> =
        samples.iter().map(std::mem::discriminant).collect();
    assert_eq!(distinct.len(), samples.len(), "a variant is sampled twice");
    assert_eq!(samples.len(), variants, "a variant has no sample");
    for e in samples {
        assert_eq!(is_user(e), expected(e), "{e:?}");
        let mut message = e.to_string();
        if let Some(source) = e.source() {
            message = message.replace(&source.to_string(), "SOURCE");
        }
        assert_sentence(&message);
    }
}

/// Asserts the crates' error-message style (see [`assert_error_variants`]).
pub fn assert_sentence(message: &str) {
    let first_word = message.split(' ').next().unwrap_or("");
    let starts_lower = first_word.chars().next().is_some_and(char::is_lowercase);
    let acronym = first_word.chars().next().is_some_and(char::is_uppercase)
        && !first_word.chars().any(char::is_lowercase);
    assert!(
        starts_lower || acronym,
        "{message:?} does not start a sentence"
    );
    assert!(
        !message.ends_with(['.', ' ']),
        "{message:?} ends with a period or a space"
    );
    assert!(!message.contains(['\n', '\r']), "{message:?} spans lines");
    assert!(!message.contains("  "), "{message:?} holds a double space");
}

/// Defines the test `every_variant_has_a_kind_and_a_sentence` of a crate's error enum
/// `Error` (see [`assert_error_variants`]): `samples` lists one value of each variant,
/// `variants` counts the variants, `expected` classifies them independently of
/// `Error::is_user_error`.
#[macro_export]
macro_rules! error_variants_test {
    ($samples:expr, $variants:expr, $expected:path) => {
        #[test]
        fn every_variant_has_a_kind_and_a_sentence() {
            $crate::assert_error_variants(&$samples, $variants, Error::is_user_error, $expected);
        }
    };
}
