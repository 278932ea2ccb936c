//! Listing and deleting blobs: `Db::blobs` reports every stored blob with its length,
//! `Db::delete_blobs` removes exactly the named ones and gives their disk space back, and
//! only the writer deletes.

use std::collections::BTreeMap;

use realm_storage::{BlobInfo, Db, Error};
use realm_testing::temp_db;

const MIB: usize = 1 << 20;

/// `len` bytes that differ from blob to blob (`seed`) and from chunk to chunk.
fn bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

fn infos(expected: &BTreeMap<&str, Vec<u8>>) -> Vec<BlobInfo> {
    expected
        .iter()
        .map(|(name, bytes)| BlobInfo {
            name: (*name).to_owned(),
            bytes: bytes.len() as u64,
        })
        .collect()
}

fn blob_disk_bytes(db: &Db) -> u64 {
    db.stats().unwrap().disk_bytes["blobs"]
}

#[test]
fn blobs_lists_every_stored_blob_with_its_length() {
    let (dir, db) = temp_db();
    assert_eq!(db.blobs().unwrap(), Vec::new());
    // Names that are prefixes of one another, an empty blob, blobs of exactly one chunk and
    // of several, a non-ASCII name, and a blob replaced by a shorter one.
    let mut expected = BTreeMap::new();
    expected.insert("a", Vec::new());
    expected.insert("a/b", b"abc".to_vec());
    expected.insert("ab", bytes(2 * MIB + MIB / 2, 1));
    expected.insert("encoder/one-chunk", bytes(MIB, 2));
    expected.insert("notes/caf\u{e9}", b"tea".to_vec());
    expected.insert("trainer/run/state", b"{}".to_vec());
    db.put_blob("trainer/run/state", &bytes(3 * MIB, 3))
        .unwrap();
    for (name, value) in &expected {
        db.put_blob(name, value).unwrap();
    }
    assert_eq!(db.blobs().unwrap(), infos(&expected));
    for (name, value) in &expected {
        assert_eq!(&db.get_blob(name).unwrap(), value, "{name}");
    }
    // A NUL would let one name's keys fall among another's: such names are refused.
    assert!(matches!(
        db.put_blob("notes\0x", b"x"),
        Err(Error::InvalidBlobName { name }) if name == "notes\0x"
    ));
    // A follower lists the same blobs.
    let follower = Db::builder(dir.path()).follower(true).open().unwrap();
    assert_eq!(follower.blobs().unwrap(), infos(&expected));
}

#[test]
fn delete_blobs_removes_only_the_named_blobs_and_reclaims_their_space() {
    let (dir, db) = temp_db();
    let mut expected = BTreeMap::new();
    expected.insert("a", b"short".to_vec());
    expected.insert("a/b", b"nested".to_vec());
    expected.insert("ab", b"longer name".to_vec());
    expected.insert("encoder/old", bytes(3 * MIB, 4));
    expected.insert("encoder/old2", bytes(3 * MIB, 5));
    expected.insert("encoder/zero", Vec::new());
    for (name, value) in &expected {
        db.put_blob(name, value).unwrap();
    }
    let before = blob_disk_bytes(&db);
    assert!(before >= 6 * MIB as u64, "{before} bytes on disk");

    // Names that are not stored are ignored; names sharing a prefix are untouched.
    let delete = ["a", "encoder/old", "encoder/zero", "never-stored"].map(String::from);
    db.delete_blobs(&delete).unwrap();
    for name in &delete {
        expected.remove(name.as_str());
        assert!(!db.has_blob(name).unwrap(), "{name}");
        assert!(matches!(db.get_blob(name), Err(Error::UnknownBlob { .. })));
    }
    assert_eq!(db.blobs().unwrap(), infos(&expected));
    for (name, value) in &expected {
        assert_eq!(&db.get_blob(name).unwrap(), value, "{name}");
    }
    // The deleted 3 MiB are gone from disk, not only hidden by a tombstone.
    let after = blob_disk_bytes(&db);
    assert!(
        after + 2 * MIB as u64 <= before,
        "{before} bytes on disk before deleting 3 MiB, {after} after"
    );
    db.delete_blobs(&[]).unwrap();
    assert_eq!(db.blobs().unwrap(), infos(&expected));

    // Deletion survives reopening; a follower cannot delete.
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.blobs().unwrap(), infos(&expected));
    let follower = Db::builder(dir.path()).follower(true).open().unwrap();
    assert!(matches!(
        follower.delete_blobs(&["ab".to_owned()]),
        Err(Error::ReadOnly { .. })
    ));
    assert_eq!(db.blobs().unwrap(), infos(&expected));
}
