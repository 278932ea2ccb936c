//! Damaged files: bytes flipped inside a stored vector block or passage record on disk are
//! reported as typed errors by reads and by `verify`, never as a panic or wrong data.

use std::path::Path;

use realm_storage::{Db, Dtype, Error, GenerationSpec, NewPassage};

const MARKER: f32 = 1234.5;
const TEXT: &str = "zq-unique-passage-marker-text-7391";

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

fn build(dir: &Path) {
    let db = Db::create(dir).unwrap();
    let ids = db.insert(&[NewPassage::new("t", TEXT)]).unwrap();
    let mut w = db
        .begin_generation(GenerationSpec::new("enc", 8, Dtype::F32))
        .unwrap();
    w.write(&[ids[0].id()], &[MARKER; 8]).unwrap();
    w.commit().unwrap();
    db.stats().unwrap(); // flushes memtables into table files
}

#[test]
fn a_flipped_byte_in_a_vector_block_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let needle: Vec<u8> = [MARKER; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(
        flip_in_sst(dir.path(), &needle),
        "the vector block is on disk"
    );
    let db = Db::open(dir.path()).unwrap();
    let snap = db.snapshot().unwrap();
    let err = snap.vectors().unwrap_err();
    assert!(
        matches!(err, Error::Rocks { .. } | Error::Corrupt { .. }),
        "{err}"
    );
    assert!(err.to_string().to_lowercase().contains("corrupt"), "{err}");
    assert!(db.verify().is_err() || !db.verify().unwrap().problems.is_empty());
}

#[test]
fn a_flipped_byte_in_a_passage_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    assert!(
        flip_in_sst(dir.path(), TEXT.as_bytes()),
        "the passage is on disk"
    );
    let db = Db::open(dir.path()).unwrap();
    let snap = db.snapshot().unwrap();
    let err = snap.get(0).unwrap_err();
    assert!(
        matches!(err, Error::Rocks { .. } | Error::Corrupt { .. }),
        "{err}"
    );
    assert!(snap.passages().any(|p| p.is_err()));
}
