//! Updating passages by external id (`Db::upsert`): outcomes, one atomic replacement of text,
//! postings, rows and approximate-index entries, snapshots that keep the old passage, and
//! generations under construction that must embed the new content before they commit.

use realm_storage::ivf::{IvfParams, Sq8};
use realm_storage::{
    Bm25Params, Db, Dtype, Error, GenerationSpec, InsertOutcome, NewPassage, Snapshot,
};
use realm_testing::temp_db;
use serde_json::json;

const DIM: usize = 2;

fn passage(ext: &str, text: &str) -> NewPassage {
    NewPassage::new(format!("title {ext}"), text).with_external_id(ext)
}

/// Three named passages in a committed generation whose rows are `[1, id]`.
fn corpus(db: &Db) -> u64 {
    db.insert(&[
        passage("a", "glaciers carve the valley"),
        passage("b", "rivers run to the delta"),
        passage("c", "quantum rivers of light"),
    ])
    .unwrap();
    let mut w = db
        .begin_generation(GenerationSpec::new("enc", DIM as u32, Dtype::F32))
        .unwrap();
    let ids = w.missing().unwrap();
    let values: Vec<f32> = ids.iter().flat_map(|&id| [1.0, id as f32]).collect();
    w.write(&ids, &values).unwrap();
    w.commit().unwrap()
}

/// Publishes an index of two lists (x-ish rows in list 0, y-ish in list 1).
fn index(db: &Db, generation: u64) {
    let params = IvfParams {
        dim: DIM as u32,
        nlist: 2,
        centroids: vec![1.0, 0.0, 0.0, 1.0],
        quantizer: Sq8 {
            min: vec![-8.0, -8.0],
            step: vec![16.0 / 255.0, 16.0 / 255.0],
        },
    };
    let mut w = db.begin_index(generation, params, "test").unwrap();
    while let Some(rows) = w.next_rows(8).unwrap() {
        let lists: Vec<u32> = (0..rows.ids.len())
            .map(|i| u32::from(rows.values[i * DIM + 1] > rows.values[i * DIM]))
            .collect();
        w.write(&rows, &lists).unwrap();
    }
    w.publish().unwrap();
}

fn clean(db: &Db) {
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn bm25(snapshot: &Snapshot, query: &str) -> Vec<(u64, f32)> {
    snapshot
        .bm25_search(query, usize::MAX, Bm25Params::default())
        .unwrap()
}

/// Passage ids a snapshot's index lists name and its tombstones do not hide.
fn indexed(snapshot: &Snapshot) -> Vec<u64> {
    let version = snapshot.index().unwrap().unwrap().version;
    let deleted = snapshot.deleted_vectors().unwrap();
    let mut ids: Vec<u64> = snapshot
        .index_lists(version)
        .unwrap()
        .into_iter()
        .flat_map(|l| l.ids)
        .filter(|id| !deleted.contains(id))
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn a_snapshot_held_across_an_update_keeps_the_old_text_vector_and_bm25_scores() {
    let (_dir, db) = temp_db();
    let g = corpus(&db);
    index(&db, g);
    let before = db.snapshot().unwrap();
    let old_glacier = bm25(&before, "glacier");
    let old_rivers = bm25(&before, "rivers");
    assert_eq!(old_glacier.len(), 1);
    let old = before.get_by_external_id("a").unwrap().unwrap();

    let out = db
        .upsert_with_vectors(
            &[
                passage("a", "rivers flood the glacier delta"),
                passage("b", "rivers run to the delta"),
            ],
            g,
            &[Some(&[-1.0, 7.0]), Some(&[5.0, 5.0])],
        )
        .unwrap();
    let new = out[0].id();
    assert_eq!(out[0], InsertOutcome::Updated { old: old.id, new });
    assert_eq!(out[1], InsertOutcome::Duplicate(1));
    assert_ne!(
        new, old.id,
        "an update stores the new content under a new id"
    );

    // The held snapshot sees exactly what it saw.
    assert_eq!(before.get_by_external_id("a").unwrap().unwrap(), old);
    assert_eq!(before.get(new).unwrap(), None);
    assert_eq!(before.vector(old.id).unwrap(), Some(vec![1.0, 0.0]));
    assert_eq!(before.vectors().unwrap().ids, vec![0, 1, 2]);
    assert_eq!(bm25(&before, "glacier"), old_glacier);
    assert_eq!(bm25(&before, "rivers"), old_rivers);
    assert_eq!(indexed(&before), vec![0, 1, 2]);
    assert_eq!(before.passage_count().unwrap(), 3);

    // A new snapshot sees only the new content, its row and its postings.
    let after = db.snapshot().unwrap();
    let stored = after.get_by_external_id("a").unwrap().unwrap();
    assert_eq!(
        (stored.id, stored.text.as_str()),
        (new, "rivers flood the glacier delta")
    );
    assert_eq!(after.get(old.id).unwrap(), None);
    assert_eq!(after.passage_count().unwrap(), 3);
    assert!(after.pending().unwrap().is_empty());
    let matrix = after.vectors().unwrap();
    assert_eq!(matrix.ids, vec![1, 2, new]);
    assert_eq!(matrix.row(2), [-1.0, 7.0]);
    assert_eq!(after.vector(old.id).unwrap(), None);
    assert!(after.deleted_vectors().unwrap().contains(&old.id));
    let glacier = bm25(&after, "glacier");
    assert_eq!(glacier.iter().map(|r| r.0).collect::<Vec<_>>(), vec![new]);
    assert_ne!(glacier[0].1, old_glacier[0].1, "the statistics changed");
    let valley = bm25(&after, "valley");
    assert!(
        valley.is_empty(),
        "the old text's postings are gone: {valley:?}"
    );
    let rivers: Vec<u64> = bm25(&after, "rivers").iter().map(|r| r.0).collect();
    assert_eq!(rivers.len(), 3);
    assert!(rivers.contains(&new) && !rivers.contains(&old.id));
    // The approximate index: the new row has its entry (list 1), the old one is hidden.
    assert_eq!(indexed(&after), vec![1, 2, new]);
    let info = after.index().unwrap().unwrap();
    assert!(
        after
            .index_list(info.version, 1)
            .unwrap()
            .ids
            .contains(&new)
    );
    clean(&db);

    // The same content again is a duplicate of the new passage, also across a reopen.
    let dir = db.path();
    drop((before, after));
    drop(db);
    let db = Db::open(&dir).unwrap();
    let again = db
        .upsert(&[passage("a", "rivers flood the glacier delta")])
        .unwrap();
    assert_eq!(again, vec![InsertOutcome::Duplicate(new)]);
    clean(&db);
}

#[test]
fn an_update_during_a_build_is_pending_until_the_builder_embeds_it() {
    let (_dir, db) = temp_db();
    let g1 = corpus(&db);
    let mut w = db
        .begin_generation(GenerationSpec::new("enc-2", DIM as u32, Dtype::F32))
        .unwrap();
    let ids = w.missing().unwrap();
    let values: Vec<f32> = ids.iter().flat_map(|&id| [2.0, id as f32]).collect();
    w.write(&ids, &values).unwrap();
    assert!(w.missing().unwrap().is_empty());

    // Updated with a row in the current generation only.
    let out = db
        .upsert_with_vectors(&[passage("b", "rivers dry out")], g1, &[Some(&[3.0, 3.0])])
        .unwrap();
    let InsertOutcome::Updated { old, new } = out[0] else {
        panic!("expected an update, got {out:?}");
    };
    // The builder must embed the new content; the old row is dead in both generations.
    assert_eq!(w.missing().unwrap(), vec![new]);
    match w.commit() {
        Err(Error::CoverageGap { missing, first, .. }) => {
            assert_eq!((missing, first), (1, vec![new]));
        }
        other => panic!("commit must wait for the updated passage: {other:?}"),
    }
    w.write(&[new], &[2.0, 9.0]).unwrap();
    let g2 = w.commit().unwrap();
    let snapshot = db.snapshot().unwrap();
    assert_eq!(snapshot.generation_id(), Some(g2));
    assert!(snapshot.pending().unwrap().is_empty());
    let matrix = snapshot.vectors().unwrap();
    assert_eq!(matrix.ids, vec![0, 2, new]);
    assert_eq!(matrix.row(2), [2.0, 9.0]);
    assert!(snapshot.deleted_vectors().unwrap().contains(&old));
    assert!(
        db.snapshot_at(g1)
            .unwrap()
            .deleted_vectors()
            .unwrap()
            .contains(&old)
    );
    clean(&db);

    // Without a row, an updated passage is pending in the current generation.
    let out = db.upsert(&[passage("c", "light of quanta")]).unwrap();
    let InsertOutcome::Updated { new, .. } = out[0] else {
        panic!("expected an update, got {out:?}");
    };
    assert_eq!(db.snapshot().unwrap().pending().unwrap(), vec![new]);
    db.put_vectors(g2, &[new], &[0.5, 0.5]).unwrap();
    assert!(db.snapshot().unwrap().pending().unwrap().is_empty());
    clean(&db);
}

#[test]
fn metadata_counts_repeats_are_checked_and_insert_never_updates() {
    let (_dir, db) = temp_db();
    corpus(&db);
    // `insert` keeps the stored passage whatever the content.
    let out = db.insert(&[passage("a", "other text")]).unwrap();
    assert_eq!(out, vec![InsertOutcome::Duplicate(0)]);
    // Metadata alone makes an update; a new external id is an insert.
    let out = db
        .upsert(&[
            passage("a", "glaciers carve the valley").with_meta(json!({"rev": 2})),
            passage("d", "a new passage"),
        ])
        .unwrap();
    assert_eq!(
        out,
        vec![
            InsertOutcome::Updated { old: 0, new: 3 },
            InsertOutcome::Inserted(4)
        ]
    );
    assert_eq!(
        db.snapshot().unwrap().get(3).unwrap().unwrap().meta,
        json!({"rev": 2})
    );
    // A repeat in one batch: identical is a duplicate, different fails the whole batch.
    let out = db
        .upsert(&[passage("e", "one"), passage("e", "one")])
        .unwrap();
    assert_eq!(
        out,
        vec![InsertOutcome::Inserted(5), InsertOutcome::Duplicate(5)]
    );
    let err = db
        .upsert(&[passage("b", "changed"), passage("b", "changed again")])
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidPassage { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("separate batches"), "{err}");
    let snapshot = db.snapshot().unwrap();
    assert_eq!(
        snapshot.get(1).unwrap().unwrap().text,
        "rivers run to the delta"
    );
    assert_eq!(snapshot.passage_count().unwrap(), 5);
    // Rows must match the batch, as for inserts.
    assert!(matches!(
        db.upsert_with_vectors(&[passage("b", "x")], 1, &[]),
        Err(Error::InvalidPassage { .. })
    ));
    clean(&db);
}
