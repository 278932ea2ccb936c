//! Damaged phrase records: `verify` reports records planted behind the checks (rows of
//! unknown passages or phrase generations, rows that do not fit their text, the spec's dim
//! or dtype, garbage), and a flipped byte on disk is a typed error, never a panic.

use std::path::Path;

use realm_storage::{Db, Dtype, Error, GenerationId, NewPassage};
use realm_testing::facts;

use super::phrases::{DIM, assert_clean, build, rows_with, spec, text_of};

/// A database with one committed phrase generation over two passages; returns its id.
fn planted(path: &Path) -> (Db, GenerationId) {
    let db = Db::create(path).unwrap();
    db.insert(&facts(2)).unwrap();
    let g = build(&db, Dtype::F32, 1);
    assert_clean(&db);
    (db, g)
}

fn problems(db: &Db) -> Vec<String> {
    db.verify().unwrap().problems
}

fn assert_reported(db: &Db, needle: &str) {
    let problems = problems(db);
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "{needle:?} not in {problems:?}"
    );
}

#[test]
fn verify_reports_planted_phrase_records() {
    // Rows of a passage that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let (db, g) = planted(&dir.path().join("a"));
    let record = Db::testing_phrase_record(&rows_with("one two", DIM, 1.0), Dtype::F32);
    db.testing_put_raw_phrase_record(g, 77, &record).unwrap();
    assert_reported(&db, "name passages that are not stored");
    // Rows of a phrase generation that does not exist.
    let (db, _) = planted(&dir.path().join("b"));
    db.testing_put_raw_phrase_record(999, 0, &record).unwrap();
    assert_reported(&db, "phrase rows of unknown phrase generation 999");
    // Rows that do not fit their passage's text, for a pending passage (and one record more
    // than the generation counted).
    let (db, g) = planted(&dir.path().join("c"));
    let short = db.insert(&[NewPassage::new("Short", "ab")]).unwrap()[0].id();
    assert_clean(&db);
    let record = Db::testing_phrase_record(&rows_with("long words", DIM, 1.0), Dtype::F32);
    db.testing_put_raw_phrase_record(g, short, &record).unwrap();
    assert_reported(&db, "do not fit the passage's text");
    assert_reported(&db, "counts 2 records");
    // Rows of another dimension or dtype than the generation's.
    let (db, g) = planted(&dir.path().join("d"));
    let text = text_of(&db, 0);
    let wide = Db::testing_phrase_record(&rows_with(&text, DIM + 2, 1.0), Dtype::F32);
    db.testing_put_raw_phrase_record(g, 0, &wide).unwrap();
    assert_reported(&db, "are 5-dimensional");
    let half = Db::testing_phrase_record(&rows_with(&text, DIM, 1.0), Dtype::F16);
    db.testing_put_raw_phrase_record(g, 0, &half).unwrap();
    assert_reported(&db, "are stored as f16");
    // Garbage.
    db.testing_put_raw_phrase_record(g, 1, b"not a record")
        .unwrap();
    assert_reported(&db, "corrupted: the phrase rows of passage 1");
    assert!(matches!(
        db.phrase_snapshot().unwrap().all_rows(),
        Err(Error::Corrupt { .. })
    ));
}

const MARKER: f32 = 4321.25;

/// Flips one byte in the middle of the first occurrence of `needle` in any table file.
fn flip_in_sst(dir: &Path, needle: &[u8]) -> bool {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sst") {
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                bytes[at + needle.len() / 2] ^= 0x5a;
                std::fs::write(&path, bytes).unwrap();
                return true;
            }
        }
    }
    false
}

#[test]
fn a_flipped_byte_in_a_phrase_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::create(dir.path()).unwrap();
        db.insert(&facts(1)).unwrap();
        let mut w = db.begin_phrase_generation(spec(Dtype::F32)).unwrap();
        w.write(&[(0, rows_with(&text_of(&db, 0), DIM, MARKER))])
            .unwrap();
        w.commit().unwrap();
        db.stats().unwrap(); // flushes memtables into table files
    }
    let needle: Vec<u8> = [MARKER; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(flip_in_sst(dir.path(), &needle), "the record is on disk");
    let db = Db::open(dir.path()).unwrap();
    let snap = db.phrase_snapshot().unwrap();
    let err = snap.rows(0).unwrap_err();
    assert!(
        matches!(err, Error::Rocks { .. } | Error::Corrupt { .. }),
        "{err}"
    );
    assert!(db.verify().is_err() || !problems(&db).is_empty());
}
