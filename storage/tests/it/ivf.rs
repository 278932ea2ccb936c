//! Approximate-index versions through the storage API: parameters are validated, a version
//! is filled block by block and published only when it covers every row, rows written after
//! it caught up get their entries in the same write, snapshots see only what was published
//! before them, and interrupted, aborted or collected indexes leave nothing behind.

use realm_storage::ivf::{IndexState, IvfParams, Sq8};
use realm_storage::{Db, Dtype, Error, GenerationSpec, NewPassage};
use realm_testing::temp_db;

const DIM: usize = 2;

/// Two lists: x-ish rows go to list 0, y-ish rows to list 1.
fn params() -> IvfParams {
    IvfParams {
        dim: DIM as u32,
        nlist: 2,
        centroids: vec![1.0, 0.0, 0.0, 1.0],
        quantizer: Sq8 {
            min: vec![-1.0, -1.0],
            step: vec![2.0 / 255.0, 2.0 / 255.0],
        },
    }
}

fn row(i: u64) -> [f32; DIM] {
    if i.is_multiple_of(2) {
        [0.9, 0.1]
    } else {
        [0.1, 0.9]
    }
}

/// `n` more passages, then a committed generation of every passage, written in blocks of
/// `per_write` rows.
fn generation(db: &Db, n: usize, per_write: usize) -> u64 {
    let batch: Vec<NewPassage> = (0..n)
        .map(|i| NewPassage::new("t", format!("passage {i}")))
        .collect();
    db.insert(&batch).unwrap();
    let mut w = db
        .begin_generation(GenerationSpec::new("enc", DIM as u32, Dtype::F32))
        .unwrap();
    let ids = w.missing().unwrap();
    for part in ids.chunks(per_write) {
        let values: Vec<f32> = part.iter().flat_map(|&i| row(i)).collect();
        w.write(part, &values).unwrap();
    }
    w.commit().unwrap()
}

/// Builds and publishes an index with the rule of `row` (even ids in list 0).
fn index(db: &Db, generation: u64) -> realm_storage::ivf::IndexInfo {
    let mut w = db.begin_index(generation, params(), "test").unwrap();
    while let Some(rows) = w.next_rows(1).unwrap() {
        let lists: Vec<u32> = rows.ids.iter().map(|id| (id % 2) as u32).collect();
        w.write(&rows, &lists).unwrap();
    }
    w.publish().unwrap()
}

fn clean(db: &Db) {
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn bad_parameters_are_refused_before_anything_is_written() {
    let (_dir, db) = temp_db();
    let g = generation(&db, 4, 2);
    let mut wrong_dim = params();
    wrong_dim.dim = 3;
    let mut no_lists = params();
    no_lists.nlist = 0;
    let mut short = params();
    short.centroids.pop();
    let mut nan = params();
    nan.centroids[0] = f32::NAN;
    let mut flat = params();
    flat.quantizer.step[1] = 0.0;
    for bad in [wrong_dim, no_lists, short, nan, flat] {
        let err = db.begin_index(g, bad, "").unwrap_err();
        assert!(matches!(err, Error::InvalidIndex { .. }), "{err}");
        assert!(err.is_user_error());
    }
    assert!(db.indexes(g).unwrap().is_empty());
    assert!(matches!(
        db.begin_index(99, params(), ""),
        Err(Error::UnknownGeneration(99))
    ));
    // A retired generation takes no new index.
    generation(&db, 0, 1);
    assert!(matches!(
        db.begin_index(g, params(), ""),
        Err(Error::NotWritable { .. })
    ));
    clean(&db);
}

#[test]
fn an_index_is_published_only_when_it_covers_every_row() {
    let (_dir, db) = temp_db();
    let g = generation(&db, 5, 2);
    let before = db.snapshot().unwrap();
    let mut w = db.begin_index(g, params(), "").unwrap();
    let err = w.publish().unwrap_err();
    assert!(err.to_string().contains("covers blocks 0..0 of 3"), "{err}");
    let first = w.next_rows(1).unwrap().unwrap();
    assert_eq!(
        (first.first_block, first.end_block, first.ids.len()),
        (0, 1, 2)
    );
    let err = w.write(&first, &[0]).unwrap_err();
    assert!(
        err.to_string().contains("2 rows came with 1 lists"),
        "{err}"
    );
    let err = w.write(&first, &[0, 2]).unwrap_err();
    assert!(err.to_string().contains("list 2 does not exist"), "{err}");
    w.write(&first, &[0, 1]).unwrap();
    // The same rows again: they no longer start where coverage ends.
    let err = w.write(&first, &[0, 1]).unwrap_err();
    assert!(err.to_string().contains("covers blocks 0..1"), "{err}");
    let rest = w.next_rows(10).unwrap().unwrap();
    assert_eq!(
        (rest.first_block, rest.end_block, rest.ids.len()),
        (1, 3, 3)
    );
    w.write(&rest, &[1, 0, 1]).unwrap();
    assert!(w.next_rows(1).unwrap().is_none());
    let info = w.publish().unwrap();
    assert_eq!(
        (info.state, info.entries, info.covered_blocks),
        (IndexState::Ready, 5, 3)
    );
    assert!(
        w.publish().is_err(),
        "a published index is no longer being built"
    );
    // Snapshots see what was published before them.
    assert_eq!(before.index().unwrap(), None);
    let after = db.snapshot().unwrap();
    assert_eq!(after.index().unwrap().map(|i| i.version), Some(1));
    let sizes = after.index_list_sizes(1).unwrap();
    assert_eq!(sizes, vec![2, 3]);
    let lists = after.index_lists(1).unwrap();
    assert_eq!(lists[0].ids.len() * DIM, lists[0].codes.len());
    assert_eq!(after.index_list(1, 1).unwrap(), lists[1]);
    assert!(matches!(
        before.index_params(1),
        Err(Error::UnknownIndex { version: 1, .. })
    ));
    clean(&db);
}

#[test]
fn rows_written_after_an_index_caught_up_get_their_entries_in_the_same_write() {
    let (_dir, db) = temp_db();
    let g = generation(&db, 4, 4);
    let info = index(&db, g);
    assert_eq!(info.entries, 4);
    // Ingestion with vectors, and a pending passage embedded later.
    let added = db
        .insert_with_vectors(&[NewPassage::new("t", "more")], g, &[Some(&[0.95, 0.05])])
        .unwrap()[0]
        .id();
    let pending = db.insert(&[NewPassage::new("t", "later")]).unwrap()[0].id();
    db.put_vectors(g, &[pending], &[0.0, 1.0]).unwrap();
    let snapshot = db.snapshot().unwrap();
    let info = snapshot.index().unwrap().unwrap();
    assert_eq!(info.entries, 6);
    assert_eq!(info.covered_blocks, snapshot.generation().unwrap().blocks);
    let lists = snapshot.index_lists(info.version).unwrap();
    // The store assigned them by the largest inner product with a centroid.
    assert!(lists[0].ids.contains(&added));
    assert!(lists[1].ids.contains(&pending));
    // Codes stand for the rows within the recorded error bound.
    let quantizer = snapshot.index_params(info.version).unwrap().quantizer;
    let position = lists[0].ids.iter().position(|&id| id == added).unwrap();
    let decoded = quantizer.decode(&lists[0].codes[position * DIM..(position + 1) * DIM]);
    for (d, (x, y)) in decoded.iter().zip([0.95f32, 0.05]).enumerate() {
        assert!((x - y).abs() <= info.max_error[d] + 1e-6, "{x} vs {y}");
    }
    // A deleted passage keeps its entry, like its row; the snapshot's tombstones hide it.
    db.delete(&[added]).unwrap();
    assert!(
        db.snapshot()
            .unwrap()
            .deleted_vectors()
            .unwrap()
            .contains(&added)
    );
    clean(&db);
}

#[test]
fn unpublished_indexes_vanish_and_collected_generations_take_theirs_along() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path()).unwrap();
    let g = generation(&db, 6, 2);
    // Dropped before publishing: aborted.
    {
        let mut w = db.begin_index(g, params(), "").unwrap();
        let rows = w.next_rows(1).unwrap().unwrap();
        w.write(&rows, &[0, 1]).unwrap();
    }
    assert!(db.indexes(g).unwrap().is_empty());
    clean(&db);
    // Left building by a process that died: the next writer's open discards it.
    drop(db);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "ivf::child_dies_while_building_an_index",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(CHILD_EXIT),
        "the child did not reach its exit"
    );
    let follower = Db::builder(dir.path()).follower(true).open().unwrap();
    assert_eq!(follower.indexes(g).unwrap()[0].state, IndexState::Building);
    drop(follower);
    let db = Db::open(dir.path()).unwrap();
    assert!(db.indexes(g).unwrap().is_empty());
    clean(&db);
    // A published index lives as long as its generation.
    index(&db, g);
    let follower = Db::builder(dir.path()).follower(true).open().unwrap();
    assert_eq!(
        follower
            .snapshot()
            .unwrap()
            .index()
            .unwrap()
            .map(|i| i.entries),
        Some(6)
    );
    drop(follower);
    generation(&db, 0, 1);
    let report = db.gc(0).unwrap();
    assert_eq!(report.collected, vec![g]);
    assert!(db.indexes(g).unwrap().is_empty());
    clean(&db);
}

#[test]
fn sq8_codes_stay_within_their_error_bound() {
    let rows: Vec<f32> = (0..64)
        .map(|i| ((i * 37) % 101) as f32 / 17.0 - 3.0)
        .collect();
    let sq = Sq8::fit(&rows, 4);
    let mut bound = vec![0.0; 4];
    let mut code = Vec::new();
    for r in rows.chunks(4) {
        sq.error(r, &mut bound);
        code.clear();
        sq.encode(r, &mut code);
        for (d, (x, y)) in sq.decode(&code).iter().zip(r).enumerate() {
            assert!(
                (x - y).abs() <= bound[d] * (1.0 + 1e-5),
                "dim {d}: {x} vs {y}"
            );
        }
    }
    // Inside the fitted range the bound is half a step; outside it grows by the distance.
    assert!(
        bound
            .iter()
            .zip(&sq.step)
            .all(|(b, s)| (b - s / 2.0).abs() < 1e-6)
    );
    let far = [100.0, 0.0, 0.0, 0.0];
    sq.error(&far, &mut bound);
    assert!(bound[0] > 90.0);
}

const CHILD_DIR: &str = "REALM_IVF_CHILD_DIR";
const CHILD_EXIT: i32 = 17;

/// Run by `unpublished_indexes_vanish_and_collected_generations_take_theirs_along` as a
/// child process: starts an index, writes part of it and exits without any clean-up.
#[test]
#[ignore = "a child process of another test"]
fn child_dies_while_building_an_index() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let db = Db::open(&dir).unwrap();
    let g = db.current_generation().unwrap().unwrap();
    let mut w = db.begin_index(g, params(), "").unwrap();
    let rows = w.next_rows(1).unwrap().unwrap();
    let lists = vec![0; rows.ids.len()];
    w.write(&rows, &lists).unwrap();
    std::process::exit(CHILD_EXIT);
}

#[test]
fn verify_notices_a_missing_entry_and_a_writer_upgrades_format_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path()).unwrap();
    let g = generation(&db, 4, 2);
    index(&db, g);
    let removed = db.testing_remove_index_entry(g, 1).unwrap().unwrap();
    let problems = db.verify().unwrap().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("records 4 entries") && p.contains("3 entries are stored")),
        "passage {removed}: {problems:?}"
    );
    drop(db);
    // A database a version-2 build wrote: the writer's open records version 3.
    let old = tempfile::tempdir().unwrap();
    let db = Db::create(old.path().join("v2")).unwrap();
    db.testing_set_format_version(2).unwrap();
    let path = db.path();
    drop(db);
    let follower = Db::builder(&path).follower(true).open().unwrap();
    assert_eq!(follower.stats().unwrap().format_version, 2);
    drop(follower);
    let db = Db::open(&path).unwrap();
    assert_eq!(
        db.stats().unwrap().format_version,
        realm_storage::FORMAT_VERSION
    );
    clean(&db);
}
