//! Behaviour of the public storage API, including every bad-input case.

use realm_storage::{
    Db, Dtype, Error, GenerationSpec, GenerationState, InsertOutcome, NewPassage, Provenance,
};
use realm_testing::temp_db;

fn passages(n: usize) -> Vec<NewPassage> {
    (0..n)
        .map(|i| NewPassage::new(format!("title {i}"), format!("text number {i}")))
        .collect()
}

fn spec(dim: u32) -> GenerationSpec {
    GenerationSpec::new("test-encoder", dim, Dtype::F32)
}

/// Commits a generation with vector `[id, 1]` for every passage.
fn commit_all(db: &Db) -> u64 {
    let mut w = db.begin_generation(spec(2)).unwrap();
    let ids = w.missing().unwrap();
    let values: Vec<f32> = ids.iter().flat_map(|&id| [id as f32, 1.0]).collect();
    w.write(&ids, &values).unwrap();
    w.commit().unwrap()
}

#[test]
fn create_open_and_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    assert!(matches!(Db::open(&path), Err(Error::NotFound { .. })));
    let db = Db::create(&path).unwrap();
    // A second writer on the same directory is refused with a clear error.
    let err = Db::open(&path).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("follower"));
    drop(db);
    assert!(matches!(
        Db::create(&path),
        Err(Error::AlreadyExists { .. })
    ));
    Db::open(&path).unwrap();
}

/// A process killed inside `Db::create` leaves RocksDB's files without any record; the next
/// writer finishes the create, and a follower, which cannot write, refuses it.
#[test]
fn a_create_cut_short_is_finished_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    Db::testing_interrupted_create(&path).unwrap();
    let err = Db::builder(&path).follower(true).open().unwrap_err();
    assert!(matches!(err, Error::NotARealmDb { .. }), "{err}");
    assert!(matches!(
        Db::create(&path),
        Err(Error::AlreadyExists { .. })
    ));
    let db = Db::open(&path).unwrap();
    assert!(db.verify().unwrap().problems.is_empty());
    db.insert(&passages(3)).unwrap();
    commit_all(&db);
    drop(db);
    // A database with records is never re-initialized.
    let db = Db::open(&path).unwrap();
    assert_eq!(db.stats().unwrap().passages, 3);
    assert!(db.current_generation().unwrap().is_some());
}

#[test]
fn passages_round_trip_and_external_ids_are_idempotent() {
    let (_dir, db) = temp_db();
    let batch = vec![
        NewPassage::new("A", "alpha").with_external_id("a"),
        NewPassage::new("B", "beta")
            .with_external_id("b")
            .with_meta(serde_json::json!({"lang": "en"})),
        NewPassage::new("A again", "alpha").with_external_id("a"),
    ];
    let out = db.insert(&batch).unwrap();
    assert_eq!(out[0], InsertOutcome::Inserted(0));
    assert_eq!(out[1], InsertOutcome::Inserted(1));
    assert_eq!(out[2], InsertOutcome::Duplicate(0));
    let again = db.insert(&batch[..2]).unwrap();
    assert_eq!(
        again,
        vec![InsertOutcome::Duplicate(0), InsertOutcome::Duplicate(1)]
    );
    let snap = db.snapshot().unwrap();
    assert_eq!(snap.passage_count().unwrap(), 2);
    let b = snap.get_by_external_id("b").unwrap().unwrap();
    assert_eq!(b.meta["lang"], "en");
    assert_eq!(b.title, "B");
    let all: Vec<_> = snap.passages().collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(db.delete(&[0]).unwrap(), 1);
    // The held snapshot still sees the deleted passage; a new one does not.
    assert!(snap.get(0).unwrap().is_some());
    assert!(db.snapshot().unwrap().get(0).unwrap().is_none());
    // Ids are never reused.
    let out = db.insert(&passages(1)).unwrap();
    assert_eq!(out[0], InsertOutcome::Inserted(2));
}

#[test]
fn invalid_passages_reject_the_whole_batch() {
    let (_dir, db) = temp_db();
    let huge = "x".repeat(2 << 20);
    for (bad, needle) in [
        (NewPassage::new("t", "   "), "empty"),
        (NewPassage::new("t", huge.as_str()), "over the limit"),
        (
            NewPassage::new("t", "ok").with_external_id(""),
            "external id",
        ),
    ] {
        let batch = vec![NewPassage::new("good", "good text"), bad];
        let err = db.insert(&batch).unwrap_err();
        assert!(
            matches!(err, Error::InvalidPassage { index: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert_eq!(db.snapshot().unwrap().passage_count().unwrap(), 0);
}

#[test]
fn generation_lifecycle_and_bad_vectors() {
    let (_dir, db) = temp_db();
    db.insert(&passages(3)).unwrap();
    assert!(matches!(
        db.begin_generation(spec(0)),
        Err(Error::InvalidSpec { .. })
    ));
    let mut w = db.begin_generation(spec(2)).unwrap();
    assert_eq!(w.missing().unwrap(), vec![0, 1, 2]);
    // Wrong dimension.
    let err = w.write(&[0], &[1.0, 2.0, 3.0]).unwrap_err();
    assert!(
        matches!(err, Error::DimensionMismatch { expected: 2, .. }),
        "{err}"
    );
    // NaN and infinity.
    for bad in [f32::NAN, f32::INFINITY] {
        let err = w.write(&[0], &[1.0, bad]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFinite {
                    row: 0,
                    position: 1
                }
            ),
            "{err}"
        );
    }
    // Unknown passage.
    assert!(matches!(
        w.write(&[99], &[1.0, 2.0]),
        Err(Error::UnknownPassage(99))
    ));
    w.write(&[0, 1], &[1.0, 0.0, 0.0, 1.0]).unwrap();
    // The same passage twice.
    assert!(matches!(
        w.write(&[1], &[1.0, 1.0]),
        Err(Error::DuplicateVector { passage: 1, .. })
    ));
    // Passage 2 has no vector: commit refuses and the writer stays usable.
    let err = w.commit().unwrap_err();
    assert!(
        matches!(err, Error::CoverageGap { missing: 1, .. }),
        "{err}"
    );
    // Not visible while building.
    assert_eq!(db.snapshot().unwrap().generation_id(), None);
    w.write(&[2], &[0.5, 0.5]).unwrap();
    let g = w.commit().unwrap();
    // Writing through the writer after commit: the generation is committed.
    let err = w.write(&[2], &[0.5, 0.5]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotWritable {
                state: GenerationState::Committed,
                ..
            }
        ),
        "{err}"
    );
    // Rewriting a committed vector is refused too.
    assert!(matches!(
        db.put_vectors(g, &[0], &[9.0, 9.0]),
        Err(Error::DuplicateVector { .. })
    ));
    let snap = db.snapshot().unwrap();
    let m = snap.vectors().unwrap();
    assert_eq!(m.ids, vec![0, 1, 2]);
    assert_eq!(m.row(2), &[0.5, 0.5]);
    assert_eq!(snap.vector(1).unwrap().unwrap(), vec![0.0, 1.0]);
}

#[test]
fn publish_retires_old_generation_and_snapshots_keep_theirs() {
    let (_dir, db) = temp_db();
    db.insert(&passages(4)).unwrap();
    let g1 = commit_all(&db);
    let old = db.snapshot().unwrap();
    let old_vectors = old.vectors().unwrap();
    let mut w = db
        .begin_generation(spec(2).with_provenance(Provenance {
            training_step: Some(500),
            note: "refresh".into(),
            ..Provenance::default()
        }))
        .unwrap();
    let ids = w.missing().unwrap();
    let values: Vec<f32> = ids.iter().flat_map(|&id| [-(id as f32), 2.0]).collect();
    w.write(&ids, &values).unwrap();
    let g2 = w.commit().unwrap();
    assert!(g2 > g1);
    // The old snapshot still reads generation 1, unchanged.
    assert_eq!(old.generation_id(), Some(g1));
    assert_eq!(old.vectors().unwrap(), old_vectors);
    assert!(old.is_stale().unwrap());
    let new = db.snapshot().unwrap();
    assert_eq!(new.generation_id(), Some(g2));
    let manifest = new.generation().unwrap();
    assert_eq!(manifest.spec.provenance.parent, Some(g1));
    assert_eq!(manifest.spec.provenance.training_step, Some(500));
    let infos = db.generations().unwrap();
    assert_eq!(infos[0].manifest.state, GenerationState::Retired);
    assert_eq!(infos[0].pins, 1);
    assert!(infos[1].current);
    // GC cannot collect the pinned generation, and keep=0 collects it once released.
    let report = db.gc(0).unwrap();
    assert_eq!(report.pinned, vec![g1]);
    drop(old);
    // Time travel to a retained generation.
    let travel = db.snapshot_at(g1).unwrap();
    assert_eq!(travel.vectors().unwrap(), old_vectors);
    drop(travel);
    let report = db.gc(1).unwrap();
    assert_eq!(report.retained, vec![g1]);
    let report = db.gc(0).unwrap();
    assert_eq!(report.collected, vec![g1]);
    assert!(matches!(
        db.snapshot_at(g1),
        Err(Error::UnknownGeneration(_))
    ));
    assert!(matches!(
        db.put_vectors(g1, &[0], &[1.0, 1.0]),
        Err(Error::UnknownGeneration(_))
    ));
}

#[test]
fn incremental_ingestion_pending_and_deletes() {
    let (_dir, db) = temp_db();
    db.insert(&passages(2)).unwrap();
    let g = commit_all(&db);
    // Insert without vectors: pending until written.
    let out = db.insert(&[NewPassage::new("late", "late text")]).unwrap();
    let late = out[0].id();
    let snap = db.snapshot().unwrap();
    assert_eq!(snap.pending().unwrap(), vec![late]);
    db.put_vectors(g, &[late], &[7.0, 7.0]).unwrap();
    assert!(
        snap.vector(late).unwrap().is_none(),
        "held snapshot changed"
    );
    let snap = db.snapshot().unwrap();
    assert!(snap.pending().unwrap().is_empty());
    // Insert with vectors in one write.
    let batch = [
        NewPassage::new("now", "now text"),
        NewPassage::new("no row", "text"),
    ];
    let out = db
        .insert_with_vectors(&batch, g, &[Some(&[3.0, 3.0]), None])
        .unwrap();
    let now = out[0].id();
    let snap = db.snapshot().unwrap();
    assert_eq!(snap.vector(now).unwrap(), Some(vec![3.0, 3.0]));
    // The passage inserted without a row is pending.
    assert_eq!(snap.pending().unwrap(), vec![out[1].id()]);
    db.delete(&[out[1].id()]).unwrap();
    // Bad rows and a stale generation id are refused.
    let one = [NewPassage::new("x", "y")];
    assert!(matches!(
        db.insert_with_vectors(&one, g, &[Some(&[1.0, 2.0, 3.0])]),
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(matches!(
        db.insert_with_vectors(&one, g, &[Some(&[1.0, f32::NAN])]),
        Err(Error::NonFinite {
            row: 0,
            position: 1
        })
    ));
    assert!(matches!(
        db.insert_with_vectors(&one, g + 7, &[Some(&[1.0, 1.0])]),
        Err(Error::GenerationChanged { .. })
    ));
    // Deleting hides the row from loads; unknown ids fail the whole delete.
    assert!(matches!(
        db.delete(&[late, 12345]),
        Err(Error::UnknownPassage(12345))
    ));
    db.delete(&[late]).unwrap();
    let m = db.snapshot().unwrap().vectors().unwrap();
    assert!(!m.ids.contains(&late));
    assert_eq!(m.rows(), 3);
    assert_eq!(db.generation(g).unwrap().dead_vectors, 1);
    // A retired generation cannot be written.
    let g2 = commit_all(&db);
    let err = db.put_vectors(g, &[now], &[1.0, 1.0]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotWritable {
                state: GenerationState::Retired,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(db.current_generation().unwrap(), Some(g2));
}

#[test]
fn f16_generations_store_half_the_bytes() {
    let (_dir, db) = temp_db();
    db.insert(&passages(3)).unwrap();
    let mut w = db
        .begin_generation(GenerationSpec::new("enc", 4, Dtype::F16))
        .unwrap();
    w.write(
        &[0, 1, 2],
        &[0.1, 0.2, 0.3, 0.4, 1.0, -1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 1.0],
    )
    .unwrap();
    w.commit().unwrap();
    let m = db.snapshot().unwrap().vectors().unwrap();
    assert!((m.row(0)[0] - 0.1).abs() < 1e-3);
    assert_eq!(m.row(1), &[1.0, -1.0, 0.5, 0.25]);
}

#[test]
fn aborted_and_dropped_writers_leave_nothing() {
    let (_dir, db) = temp_db();
    db.insert(&passages(2)).unwrap();
    let mut w = db.begin_generation(spec(2)).unwrap();
    w.write(&[0, 1], &[1.0, 1.0, 2.0, 2.0]).unwrap();
    w.abort().unwrap();
    {
        let mut w = db.begin_generation(spec(2)).unwrap();
        w.write(&[0], &[1.0, 1.0]).unwrap();
    }
    assert!(db.generations().unwrap().is_empty());
    assert_eq!(db.current_generation().unwrap(), None);
}

#[test]
fn blobs_round_trip_across_chunks() {
    let (_dir, db) = temp_db();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    db.put_blob("ckpt/abc", &big).unwrap();
    assert_eq!(db.get_blob("ckpt/abc").unwrap(), big);
    db.put_blob("ckpt/abc", b"small").unwrap();
    assert_eq!(db.get_blob("ckpt/abc").unwrap(), b"small");
    assert!(matches!(
        db.get_blob("nope"),
        Err(Error::UnknownBlob { .. })
    ));
}

#[test]
fn follower_sees_only_published_generations() {
    let (dir, db) = temp_db();
    db.insert(&passages(2)).unwrap();
    let g1 = commit_all(&db);
    let follower = Db::builder(dir.path()).follower(true).open().unwrap();
    assert!(follower.is_follower());
    assert_eq!(follower.snapshot().unwrap().generation_id(), Some(g1));
    assert!(matches!(
        follower.insert(&passages(1)),
        Err(Error::ReadOnly { .. })
    ));
    // A generation being built is invisible to the follower; the publish is seen.
    let mut w = db.begin_generation(spec(2)).unwrap();
    w.write(&[0, 1], &[1.0, 0.0, 0.0, 1.0]).unwrap();
    assert_eq!(follower.snapshot().unwrap().generation_id(), Some(g1));
    let g2 = w.commit().unwrap();
    let snap = follower.snapshot().unwrap();
    assert_eq!(snap.generation_id(), Some(g2));
    assert_eq!(snap.vectors().unwrap().rows(), 2);
}
