//! Phrase generations seen by followers: a follower sees a phrase generation once it is
//! committed, its pins hold off the writer's GC, and a version-3 database (no phrase column
//! families) reads on a follower and is upgraded by a writer's open while the follower follows.

use realm_storage::{Db, Dtype, Error};
use realm_testing::{facts, temp_db};

use super::phrases::{assert_clean, build, rows_of, spec};

#[test]
fn followers_see_committed_phrase_generations_after_catching_up() {
    let (dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    let follower = Db::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        follower.phrase_snapshot(),
        Err(Error::NoPhraseGeneration)
    ));
    let mut w = db.begin_phrase_generation(spec(Dtype::F32)).unwrap();
    w.write(&rows_of(&db, &[0, 1, 2], 1)).unwrap();
    assert!(matches!(
        follower.phrase_snapshot(),
        Err(Error::NoPhraseGeneration)
    ));
    let g = w.commit().unwrap();
    let snap = follower.phrase_snapshot().unwrap();
    assert_eq!(snap.generation(), g);
    assert_eq!(snap.all_rows().unwrap(), rows_of(&db, &[0, 1, 2], 1));
    follower.catch_up().unwrap();
    assert_eq!(follower.current_phrase_generation().unwrap(), Some(g));
    // The follower's pin holds off the writer's GC.
    let g2 = build(&db, Dtype::F32, 2);
    let report = db.gc(0).unwrap();
    assert_eq!(report.phrase_pinned, vec![g]);
    let infos = db.phrase_generations().unwrap();
    assert_eq!((infos[0].manifest.id, infos[0].pinned_elsewhere), (g, 1));
    assert!(snap.is_stale().unwrap());
    assert_eq!(snap.all_rows().unwrap(), rows_of(&db, &[0, 1, 2], 1));
    drop(snap);
    assert_eq!(db.gc(0).unwrap().phrase_collected, vec![g]);
    assert_eq!(follower.phrase_snapshot().unwrap().generation(), g2);
    assert_clean(&follower);
}

#[test]
fn a_version_3_database_reads_on_followers_and_upgrades_on_a_writers_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3");
    let db = Db::create(&path).unwrap();
    db.insert(&facts(2)).unwrap();
    drop(db);
    Db::testing_downgrade_to_format_3(&path).unwrap();
    let follower = Db::open_read_only(&path).unwrap();
    assert_eq!(follower.stats().unwrap().format_version, 3);
    assert_eq!(follower.current_phrase_generation().unwrap(), None);
    assert!(follower.phrase_generations().unwrap().is_empty());
    assert!(matches!(
        follower.phrase_snapshot(),
        Err(Error::NoPhraseGeneration)
    ));
    assert!(matches!(
        follower.phrase_generation(1),
        Err(Error::UnknownGeneration(1))
    ));
    assert_clean(&follower);
    // The writer's open creates the column families and records the current version (5);
    // the follower, open all along, follows.
    let db = Db::open(&path).unwrap();
    assert_eq!(
        db.stats().unwrap().format_version,
        realm_storage::FORMAT_VERSION
    );
    let g = build(&db, Dtype::F32, 1);
    let snap = follower.phrase_snapshot().unwrap();
    assert_eq!(snap.generation(), g);
    assert_eq!(snap.all_rows().unwrap().len(), 2);
    assert_clean(&db);
    assert_clean(&follower);
}
