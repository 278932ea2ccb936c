//! Phrase generations through the public API: coverage at commit, pending passages and
//! incremental rows, refused writes, MVCC and time travel, GC, reopening and crash recovery,
//! query-encoder versions and the upgrade from format version 4.
//! Followers are in `phrase_followers.rs`, planted damage in `phrase_corruption.rs`; the
//! helpers here serve them too.
//!
//! The crash case runs this test binary again as a child process: the ignored test
//! [`child_dies_while_building_a_phrase_generation`] with `REALM_PHRASE_CHILD_DIR` set.

use realm_storage::phrase_rows::{PhraseRows, PhraseToken};
use realm_storage::{
    Db, Dtype, Error, GenerationId, GenerationSpec, GenerationState, NewPassage, PassageId,
    PhraseGenerationSpec, PhraseManifest, QueryEncoderVersion,
};
use realm_testing::{facts, temp_db};

const CHILD_DIR: &str = "REALM_PHRASE_CHILD_DIR";
const CHILD_EXIT: i32 = 23;
pub(crate) const DIM: usize = 3;

/// Byte ranges of the whitespace-separated words of `text`.
pub(crate) fn word_spans(text: &str) -> Vec<(u32, u32)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                spans.push((s as u32, i as u32));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        spans.push((s as u32, text.len() as u32));
    }
    spans
}

/// A deterministic hash of two numbers.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0x632B_E59B_D9B4_E019);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// Phrase rows of `text` derived from `seed`: about two words in three stored, each able to
/// start, end or both, with values that are multiples of 1/4 below 8 in magnitude, so that
/// half precision stores them exactly.
pub(crate) fn rows_for(text: &str, dim: usize, seed: u64) -> PhraseRows {
    let mut tokens = Vec::new();
    for (word, (start, end)) in word_spans(text).into_iter().enumerate() {
        let word = word as u32;
        let h = mix(seed, u64::from(word));
        if h.is_multiple_of(3) {
            continue;
        }
        tokens.push(PhraseToken {
            position: word,
            word,
            start_byte: start,
            end_byte: end,
            starts: (h >> 8) % 3 != 1,
            ends: !(h >> 8).is_multiple_of(3),
        });
    }
    let values = |side: u64| -> Vec<f32> {
        (0..tokens.len() * dim)
            .map(|i| (mix(seed ^ side, i as u64) % 64) as f32 * 0.25 - 8.0)
            .collect()
    };
    let (start, end) = (values(1), values(2));
    PhraseRows::new(dim, tokens, start, end).unwrap()
}

/// One token per word of `text` with the given start value in every dimension.
pub(crate) fn rows_with(text: &str, dim: usize, value: f32) -> PhraseRows {
    let tokens: Vec<PhraseToken> = word_spans(text)
        .into_iter()
        .enumerate()
        .map(|(i, (start_byte, end_byte))| PhraseToken {
            position: i as u32,
            word: i as u32,
            start_byte,
            end_byte,
            starts: true,
            ends: true,
        })
        .collect();
    let n = tokens.len() * dim;
    PhraseRows::new(dim, tokens, vec![value; n], vec![-value; n]).unwrap()
}

pub(crate) fn spec(dtype: Dtype) -> PhraseGenerationSpec {
    PhraseGenerationSpec::new("phrase-test", DIM as u32, dtype)
}

pub(crate) fn text_of(db: &Db, id: PassageId) -> String {
    db.snapshot().unwrap().get(id).unwrap().unwrap().text
}

/// Rows derived from `seed` for each of `ids`.
pub(crate) fn rows_of(db: &Db, ids: &[PassageId], seed: u64) -> Vec<(PassageId, PhraseRows)> {
    let snapshot = db.snapshot().unwrap();
    ids.iter()
        .map(|&id| {
            let text = snapshot.get(id).unwrap().unwrap().text;
            (id, rows_for(&text, DIM, seed))
        })
        .collect()
}

/// Builds and commits a phrase generation over every passage, rows derived from `seed`.
pub(crate) fn build(db: &Db, dtype: Dtype, seed: u64) -> GenerationId {
    let mut w = db.begin_phrase_generation(spec(dtype)).unwrap();
    let rows = rows_of(db, &w.missing().unwrap(), seed);
    w.write(&rows).unwrap();
    w.commit().unwrap()
}

pub(crate) fn assert_clean(db: &Db) {
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn ids(db: &Db) -> Vec<PassageId> {
    db.snapshot()
        .unwrap()
        .passages()
        .map(|p| p.unwrap().id)
        .collect()
}

#[test]
fn commit_needs_rows_for_every_passage_and_empty_rows_cover() {
    let (_dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    assert!(matches!(
        db.phrase_snapshot(),
        Err(Error::NoPhraseGeneration)
    ));
    let mut w = db.begin_phrase_generation(spec(Dtype::F32)).unwrap();
    assert_eq!(w.missing().unwrap(), vec![0, 1, 2]);
    w.write(&rows_of(&db, &[0], 1)).unwrap();
    match w.commit() {
        Err(Error::CoverageGap {
            generation,
            missing,
            first,
        }) => {
            assert_eq!((generation, missing, first), (w.id(), 2, vec![1, 2]));
        }
        other => panic!("expected a coverage gap, got {other:?}"),
    }
    // Empty rows (of any dimension) cover their passage.
    w.write(&[(1, PhraseRows::empty(1).unwrap())]).unwrap();
    assert_eq!(w.missing().unwrap(), vec![2]);
    // A passage ingested during the build must be covered too.
    let late = db.insert(&facts(4)[3..]).unwrap()[0].id();
    assert_eq!(w.missing().unwrap(), vec![2, late]);
    assert!(matches!(
        w.commit(),
        Err(Error::CoverageGap { missing: 2, .. })
    ));
    // Not visible while building.
    assert!(matches!(
        db.phrase_snapshot(),
        Err(Error::NoPhraseGeneration)
    ));
    assert!(matches!(
        db.phrase_snapshot_at(w.id()),
        Err(Error::NotPinnable {
            state: GenerationState::Building,
            ..
        })
    ));
    w.write(&rows_of(&db, &[2, late], 1)).unwrap();
    assert!(w.missing().unwrap().is_empty());
    let g = w.commit().unwrap();
    drop(w);
    assert_eq!(db.current_phrase_generation().unwrap(), Some(g));
    let m = db.phrase_generation(g).unwrap();
    assert_eq!(m.state, GenerationState::Committed);
    assert_eq!(m.passages_written, 4);
    let snap = db.phrase_snapshot().unwrap();
    let rows = snap.all_rows().unwrap();
    let tokens: usize = rows.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(m.tokens_written, tokens as u64);
    assert_eq!(
        rows.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![0, 1, 2, late]
    );
    assert!(snap.rows(1).unwrap().unwrap().is_empty());
    assert!(snap.pending().unwrap().is_empty());
    let infos = db.phrase_generations().unwrap();
    assert_eq!(infos.len(), 1);
    assert!(infos[0].current);
    assert_eq!((infos[0].pins, infos[0].pinned_elsewhere), (1, 0));
    // Phrase generations are not passage generations.
    assert!(db.generations().unwrap().is_empty());
    assert!(matches!(db.snapshot_at(g), Err(Error::UnknownGeneration(id)) if id == g));
    assert_clean(&db);
}

#[test]
fn passages_inserted_after_commit_are_pending_until_their_rows_are_put() {
    let (_dir, db) = temp_db();
    db.insert(&facts(2)).unwrap();
    let g = build(&db, Dtype::F32, 1);
    let new = db.insert(&facts(4)[2..]).unwrap();
    let new: Vec<PassageId> = new.iter().map(|o| o.id()).collect();
    let snap = db.phrase_snapshot().unwrap();
    assert_eq!(snap.pending().unwrap(), new);
    assert_eq!(snap.rows(new[0]).unwrap(), None);
    assert_clean(&db);
    db.put_phrase_rows(g, &rows_of(&db, &new[..1], 2)).unwrap();
    // The held snapshot still sees both pending; a new one sees one.
    assert_eq!(snap.pending().unwrap(), new);
    let fresh = db.phrase_snapshot().unwrap();
    assert_eq!(fresh.pending().unwrap(), vec![new[1]]);
    assert_eq!(
        fresh.rows(new[0]).unwrap(),
        Some(rows_for(&text_of(&db, new[0]), DIM, 2))
    );
    assert!(matches!(
        db.put_phrase_rows(g, &rows_of(&db, &new[..1], 2)),
        Err(Error::DuplicatePhraseRows { generation, passage }) if generation == g && passage == new[0]
    ));
    // Only the current phrase generation takes rows: not a building one, a retired one, an
    // unknown id, or a passage generation's id.
    let mut w = db.begin_phrase_generation(spec(Dtype::F32)).unwrap();
    assert!(matches!(
        db.put_phrase_rows(w.id(), &rows_of(&db, &[0], 3)),
        Err(Error::NotWritable {
            state: GenerationState::Building,
            ..
        })
    ));
    let rows = rows_of(&db, &w.missing().unwrap(), 3);
    w.write(&rows).unwrap();
    let g2 = w.commit().unwrap();
    assert!(g2 > g);
    assert!(matches!(
        db.put_phrase_rows(g, &rows_of(&db, &new[1..], 2)),
        Err(Error::NotWritable {
            state: GenerationState::Retired,
            ..
        })
    ));
    assert!(matches!(
        db.put_phrase_rows(999, &[]),
        Err(Error::UnknownGeneration(999))
    ));
    let mut vw = db
        .begin_generation(GenerationSpec::new("enc", 2, Dtype::F32))
        .unwrap();
    let vid = vw.id();
    assert!(vid > g2, "one counter names both kinds");
    let all = ids(&db);
    let values: Vec<f32> = all.iter().flat_map(|_| [1.0, 0.0]).collect();
    vw.write(&all, &values).unwrap();
    vw.commit().unwrap();
    assert!(matches!(
        db.put_phrase_rows(vid, &rows_of(&db, &[0], 3)),
        Err(Error::UnknownGeneration(id)) if id == vid
    ));
    assert!(matches!(
        db.phrase_generation(vid),
        Err(Error::UnknownGeneration(_))
    ));
    assert_clean(&db);
}

#[test]
fn writes_refuse_bad_rows_and_write_nothing_then() {
    let (dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    for bad in [
        PhraseGenerationSpec::new("enc", 0, Dtype::F32),
        PhraseGenerationSpec::new(" ", 3, Dtype::F32),
        PhraseGenerationSpec {
            filter_threshold: -0.5,
            ..spec(Dtype::F32)
        },
        PhraseGenerationSpec {
            filter_threshold: f64::NAN,
            ..spec(Dtype::F32)
        },
    ] {
        assert!(matches!(
            db.begin_phrase_generation(bad),
            Err(Error::InvalidSpec { .. })
        ));
    }
    let mut w = db.begin_phrase_generation(spec(Dtype::F16)).unwrap();
    let good = rows_of(&db, &[0], 1);
    assert!(matches!(
        w.write(&[good[0].clone(), (99, PhraseRows::empty(DIM).unwrap())]),
        Err(Error::UnknownPassage(99))
    ));
    // A duplicate within one call, then across calls.
    assert!(matches!(
        w.write(&[good[0].clone(), good[0].clone()]),
        Err(Error::DuplicatePhraseRows { passage: 0, .. })
    ));
    assert_eq!(
        w.missing().unwrap(),
        vec![0, 1, 2],
        "a refused call wrote nothing"
    );
    w.write(&good).unwrap();
    assert!(matches!(
        w.write(&good),
        Err(Error::DuplicatePhraseRows { passage: 0, .. })
    ));
    // The wrong dimension.
    let text1 = text_of(&db, 1);
    let wide = rows_for(&text1, DIM + 1, 1);
    assert!(!wide.is_empty());
    assert!(matches!(
        w.write(&[(1, wide)]),
        Err(Error::InvalidPhraseRows { reason }) if reason.contains("4-dimensional")
    ));
    // Byte offsets outside the passage's text, or inside a character.
    let beyond = PhraseRows::new(
        DIM,
        vec![PhraseToken {
            position: 0,
            word: 0,
            start_byte: text1.len() as u32 - 2,
            end_byte: text1.len() as u32 + 3,
            starts: true,
            ends: true,
        }],
        vec![0.0; DIM],
        vec![0.0; DIM],
    )
    .unwrap();
    assert!(matches!(
        w.write(&[(1, beyond.clone())]),
        Err(Error::InvalidPhraseRows { reason }) if reason.contains("passage 1")
    ));
    // Rows that fit another passage's text do not fit this one's.
    let long = db
        .insert(&[NewPassage::new(
            "Long",
            "a b c d e f g h i j k l m n o p q r s t u v w x y z",
        )])
        .unwrap()[0]
        .id();
    let long_rows = rows_with(&text_of(&db, long), DIM, 1.0);
    assert!(matches!(
        w.write(&[(2, long_rows)]),
        Err(Error::InvalidPhraseRows { .. })
    ));
    let accented = db.insert(&[NewPassage::new("Café", "é é")]).unwrap()[0].id();
    let split = PhraseRows::new(
        DIM,
        vec![PhraseToken {
            position: 0,
            word: 0,
            start_byte: 0,
            end_byte: 1,
            starts: true,
            ends: true,
        }],
        vec![0.0; DIM],
        vec![0.0; DIM],
    )
    .unwrap();
    assert!(matches!(
        w.write(&[(accented, split)]),
        Err(Error::InvalidPhraseRows { .. })
    ));
    // Values half precision cannot hold, in an f16 generation.
    let huge = rows_with(&text1, DIM, 1e5);
    assert!(matches!(
        w.write(&[(1, huge)]),
        Err(Error::InvalidPhraseRows { reason }) if reason.contains("half precision")
    ));
    assert_eq!(w.missing().unwrap(), vec![1, 2, long, accented]);
    assert_eq!(w.manifest().unwrap().passages_written, 1);
    w.abort().unwrap();
    assert_clean(&db);
    drop(db);
    let follower = Db::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        follower.begin_phrase_generation(spec(Dtype::F32)),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        follower.put_phrase_rows(1, &[]),
        Err(Error::ReadOnly { .. })
    ));
}

#[test]
fn held_phrase_snapshots_keep_their_generation_and_rows() {
    let (_dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    db.upsert(&[NewPassage::new("Named", "a passage with a name").with_external_id("n")])
        .unwrap();
    let g1 = build(&db, Dtype::F32, 1);
    let old = db.phrase_snapshot().unwrap();
    let before = old.all_rows().unwrap();
    assert_eq!(before.len(), 4);
    let g2 = build(&db, Dtype::F32, 2);
    db.delete(&[0]).unwrap();
    // The update removes passage 3's rows and stores its new content under a new id.
    let updated = db
        .upsert(&[NewPassage::new("Named", "new words for the name").with_external_id("n")])
        .unwrap()[0]
        .id();
    assert_ne!(updated, 3);
    assert_eq!(old.generation(), g1);
    assert_eq!(old.manifest().state, GenerationState::Committed);
    assert_eq!(old.all_rows().unwrap(), before);
    assert!(old.passage(0).unwrap().is_some());
    assert!(old.rows(0).unwrap().is_some());
    assert!(old.pending().unwrap().is_empty());
    assert!(old.is_stale().unwrap());
    assert_eq!(old.current_generation_at_snapshot().unwrap(), Some(g1));
    let new = db.phrase_snapshot().unwrap();
    assert_eq!(new.generation(), g2);
    assert!(!new.is_stale().unwrap());
    assert_eq!(new.passage(0).unwrap(), None);
    assert_eq!(new.rows(0).unwrap(), None);
    assert_eq!(new.rows(3).unwrap(), None);
    assert_eq!(new.pending().unwrap(), vec![updated]);
    let rows = new.all_rows().unwrap();
    assert_eq!(rows.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(rows, rows_of(&db, &[1, 2], 2));
    // The counters keep what was written.
    assert_eq!(new.manifest().passages_written, 4);
    let mut moved = old;
    moved.refresh().unwrap();
    assert_eq!(moved.generation(), g2);
    assert_eq!(moved.all_rows().unwrap(), rows);
    assert_clean(&db);
}

#[test]
fn time_travel_pins_retired_phrase_generations_until_gc_collects_them() {
    let (_dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    let all = ids(&db);
    let passage_generation = |db: &Db| {
        let mut w = db
            .begin_generation(GenerationSpec::new("enc", 2, Dtype::F32))
            .unwrap();
        let values: Vec<f32> = all.iter().flat_map(|_| [1.0, 0.0]).collect();
        w.write(&all, &values).unwrap();
        w.commit().unwrap()
    };
    let v1 = passage_generation(&db);
    let p1 = build(&db, Dtype::F32, 1);
    let v2 = passage_generation(&db);
    let p2 = build(&db, Dtype::F16, 2);
    let p3 = build(&db, Dtype::F32, 3);
    assert!(v1 < p1 && p1 < v2 && v2 < p2 && p2 < p3);
    let back = db.phrase_snapshot_at(p1).unwrap();
    assert_eq!(back.generation(), p1);
    assert_eq!(back.manifest().state, GenerationState::Retired);
    assert_eq!(back.all_rows().unwrap(), rows_of(&db, &all, 1));
    assert!(matches!(
        db.phrase_snapshot_at(v1),
        Err(Error::UnknownGeneration(_))
    ));
    let info = |id| {
        db.phrase_generations()
            .unwrap()
            .into_iter()
            .find(|i| i.manifest.id == id)
            .unwrap()
    };
    assert_eq!(info(p1).pins, 1);
    // Passage and phrase generations are collected apart; keep counts each kind alone.
    let report = db.gc(1).unwrap();
    assert_eq!(report.collected, Vec::<u64>::new());
    assert_eq!(report.retained, vec![v1]);
    assert_eq!(report.phrase_pinned, vec![p1]);
    assert_eq!(report.phrase_retained, vec![p2]);
    assert!(report.phrase_collected.is_empty());
    let report = db.gc(0).unwrap();
    assert_eq!(report.collected, vec![v1]);
    assert_eq!(report.phrase_collected, vec![p2]);
    assert_eq!(report.phrase_pinned, vec![p1]);
    assert_eq!(back.all_rows().unwrap(), rows_of(&db, &all, 1));
    assert_clean(&db);
    drop(back);
    assert_eq!(info(p1).pins, 0);
    let report = db.gc(0).unwrap();
    assert_eq!(report.phrase_collected, vec![p1]);
    for gone in [p1, p2] {
        assert!(
            matches!(db.phrase_snapshot_at(gone), Err(Error::UnknownGeneration(id)) if id == gone)
        );
        assert!(matches!(
            db.phrase_generation(gone),
            Err(Error::UnknownGeneration(_))
        ));
    }
    let left: Vec<u64> = db
        .phrase_generations()
        .unwrap()
        .iter()
        .map(|i| i.manifest.id)
        .collect();
    assert_eq!(left, vec![p3]);
    assert_eq!(
        db.phrase_snapshot().unwrap().all_rows().unwrap(),
        rows_of(&db, &all, 3)
    );
    assert_eq!(db.current_generation().unwrap(), Some(v2));
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.phrase_generations, report.phrase_records), (1, 3));
}

#[test]
fn reopening_keeps_phrase_generations_and_abandoned_ones_vanish() {
    let (dir, db) = temp_db();
    db.insert(&facts(4)).unwrap();
    let all = ids(&db);
    let exact = build(&db, Dtype::F32, 1);
    let mut w = db.begin_phrase_generation(spec(Dtype::F16)).unwrap();
    let rows: Vec<(PassageId, PhraseRows)> = all
        .iter()
        .map(|&id| (id, rows_with(&text_of(&db, id), DIM, 0.1)))
        .collect();
    w.write(&rows).unwrap();
    let half = w.commit().unwrap();
    drop(w);
    let manifests = db.phrase_generations().unwrap();
    // A dropped writer aborts.
    {
        let mut w = db.begin_phrase_generation(spec(Dtype::F32)).unwrap();
        w.write(&rows_of(&db, &all[..2], 5)).unwrap();
    }
    assert_eq!(db.phrase_generations().unwrap(), manifests);
    assert_clean(&db);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.current_phrase_generation().unwrap(), Some(half));
    assert_eq!(db.phrase_generations().unwrap(), manifests);
    assert_eq!(
        db.phrase_snapshot_at(exact).unwrap().all_rows().unwrap(),
        rows_of(&db, &all, 1)
    );
    let stored = db.phrase_snapshot().unwrap().all_rows().unwrap();
    assert_eq!(stored.len(), rows.len());
    for ((p, got), (q, want)) in stored.iter().zip(&rows) {
        assert_eq!((p, got.tokens()), (q, want.tokens()));
        for (a, b) in got
            .start_values()
            .iter()
            .chain(got.end_values())
            .zip(want.start_values().iter().chain(want.end_values()))
        {
            assert_ne!(a, b, "0.1 is not a half-precision number");
            assert!((a - b).abs() <= b.abs() / 1024.0, "{a} vs {b}");
        }
    }
    assert_clean(&db);
    assert_eq!(
        db.stats().unwrap().format_version,
        realm_storage::FORMAT_VERSION
    );
    assert_eq!(db.stats().unwrap().current_phrase_generation, Some(half));
}

/// Run by [`a_phrase_generation_left_building_by_a_dead_process_is_removed_on_open`] as a
/// child process: starts a phrase generation, writes part of it and exits without any
/// clean-up.
#[test]
#[ignore = "a child process of another test"]
fn child_dies_while_building_a_phrase_generation() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let db = Db::open(&dir).unwrap();
    let mut w = db.begin_phrase_generation(spec(Dtype::F32)).unwrap();
    w.write(&rows_of(&db, &[0, 1], 9)).unwrap();
    std::process::exit(CHILD_EXIT);
}

#[test]
fn a_phrase_generation_left_building_by_a_dead_process_is_removed_on_open() {
    let (dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    let g = build(&db, Dtype::F32, 1);
    drop(db);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "phrases::child_dies_while_building_a_phrase_generation",
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
    // A follower sees the leftover (and, not being the writer, does not call it a problem).
    let follower = Db::open_read_only(dir.path()).unwrap();
    let infos = follower.phrase_generations().unwrap();
    assert_eq!(infos.len(), 2);
    let leftover = infos[1].manifest.id;
    assert_eq!(infos[1].manifest.state, GenerationState::Building);
    assert_eq!(infos[1].manifest.passages_written, 2);
    assert_clean(&follower);
    assert_eq!(follower.phrase_snapshot().unwrap().generation(), g);
    drop(follower);
    let db = Db::open(dir.path()).unwrap();
    assert!(matches!(
        db.phrase_generation(leftover),
        Err(Error::UnknownGeneration(_))
    ));
    assert_eq!(db.phrase_generations().unwrap().len(), 1);
    assert_eq!(db.current_phrase_generation().unwrap(), Some(g));
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.phrase_records, 3, "the leftover's rows are gone");
    let next = build(&db, Dtype::F32, 2);
    assert!(next > leftover, "ids are never reused");
}

#[test]
fn query_encoder_versions_attach_to_the_current_phrase_generation_and_survive_reopen() {
    let (dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    let g = build(&db, Dtype::F32, 1);
    let before = db.phrase_generation(g).unwrap();
    assert!(before.query_encoders.is_empty());
    assert_eq!(before.query_encoder(), None);
    let snap = db.phrase_snapshot().unwrap();
    assert_eq!(
        db.attach_phrase_query_encoder(g, "q-one", "first").unwrap(),
        1
    );
    assert_eq!(
        db.attach_phrase_query_encoder(g, "q-two", "second")
            .unwrap(),
        2
    );
    let m = db.phrase_generation(g).unwrap();
    let listed: Vec<(u32, &str, &str)> = m
        .query_encoders
        .iter()
        .map(|q| (q.version, q.checkpoint_id.as_str(), q.note.as_str()))
        .collect();
    assert_eq!(listed, vec![(1, "q-one", "first"), (2, "q-two", "second")]);
    assert!(m.query_encoders[0].attached_ms <= m.query_encoders[1].attached_ms);
    assert!(m.query_encoders[0].attached_ms >= before.created_ms);
    assert_eq!(m.query_encoder(), Some(&m.query_encoders[1]));
    // Only the list changed: the generation, its counts and its rows stay.
    assert_eq!(
        PhraseManifest {
            query_encoders: Vec::new(),
            ..m.clone()
        },
        before
    );
    assert_eq!(db.current_phrase_generation().unwrap(), Some(g));
    assert_eq!(snap.all_rows().unwrap(), rows_of(&db, &ids(&db), 1));
    assert_eq!(
        db.phrase_snapshot().unwrap().all_rows().unwrap(),
        snap.all_rows().unwrap()
    );
    drop(snap);
    // A follower sees the versions.
    let follower = Db::open_read_only(dir.path()).unwrap();
    assert_eq!(follower.phrase_generation(g).unwrap(), m);
    drop(follower);
    assert_clean(&db);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.phrase_generation(g).unwrap(), m);
    assert_eq!(
        db.phrase_generations().unwrap()[0]
            .manifest
            .query_encoder()
            .unwrap()
            .checkpoint_id,
        "q-two"
    );
    assert_eq!(db.attach_phrase_query_encoder(g, "q-three", "").unwrap(), 3);
    assert_clean(&db);
    // A new phrase generation starts without query-encoder versions.
    let g2 = build(&db, Dtype::F32, 2);
    assert!(db.phrase_generation(g2).unwrap().query_encoders.is_empty());
    assert_eq!(db.phrase_generation(g).unwrap().query_encoders.len(), 3);
    assert_eq!(db.attach_phrase_query_encoder(g2, "q-new", "").unwrap(), 1);
    assert_clean(&db);
}

#[test]
fn attaching_a_phrase_query_encoder_is_refused_where_it_cannot_apply() {
    let (dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    let old = build(&db, Dtype::F32, 1);
    let current = build(&db, Dtype::F32, 2);
    let w = db.begin_phrase_generation(spec(Dtype::F32)).unwrap();
    let building = w.id();
    let manifests = db.phrase_generations().unwrap();
    assert!(matches!(
        db.attach_phrase_query_encoder(old, "q", ""),
        Err(Error::NotWritable { generation, state: GenerationState::Retired }) if generation == old
    ));
    assert!(matches!(
        db.attach_phrase_query_encoder(building, "q", ""),
        Err(Error::NotWritable { generation, state: GenerationState::Building }) if generation == building
    ));
    assert!(matches!(
        db.attach_phrase_query_encoder(99, "q", ""),
        Err(Error::UnknownGeneration(99))
    ));
    // A passage generation's id names no phrase generation.
    let mut pw = db
        .begin_generation(GenerationSpec::new("enc", 2, Dtype::F32))
        .unwrap();
    let all = ids(&db);
    let values: Vec<f32> = all.iter().flat_map(|_| [1.0, 0.0]).collect();
    pw.write(&all, &values).unwrap();
    let passage_generation = pw.commit().unwrap();
    drop(pw);
    assert!(matches!(
        db.attach_phrase_query_encoder(passage_generation, "q", ""),
        Err(Error::UnknownGeneration(id)) if id == passage_generation
    ));
    for blank in ["", "  ", "\t\n"] {
        assert!(matches!(
            db.attach_phrase_query_encoder(current, blank, "note"),
            Err(Error::InvalidSpec { reason }) if reason.contains("checkpoint id")
        ));
    }
    let follower = Db::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        follower.attach_phrase_query_encoder(current, "q", ""),
        Err(Error::ReadOnly { .. })
    ));
    // Nothing was written.
    assert_eq!(db.phrase_generations().unwrap(), manifests);
    assert_eq!(
        follower.phrase_generation(current).unwrap().query_encoders,
        vec![]
    );
    drop(w);
    assert_clean(&db);
}

#[test]
fn verify_reports_query_encoder_versions_out_of_order_or_without_a_checkpoint() {
    let (_dir, db) = temp_db();
    db.insert(&facts(2)).unwrap();
    let g = build(&db, Dtype::F32, 1);
    let version = |version: u32, checkpoint_id: &str| QueryEncoderVersion {
        version,
        checkpoint_id: checkpoint_id.into(),
        attached_ms: 1,
        note: String::new(),
    };
    db.testing_set_phrase_query_encoders(g, vec![version(1, "a"), version(2, "b")])
        .unwrap();
    assert_clean(&db);
    for (versions, needle) in [
        (vec![version(1, "a"), version(3, "b")], "[1, 3]"),
        (vec![version(0, "a")], "[0]"),
        (vec![version(2, "a"), version(1, "b")], "[2, 1]"),
        (vec![version(1, "a"), version(1, "b")], "[1, 1]"),
        (
            vec![version(1, "a"), version(2, " ")],
            "empty checkpoint id",
        ),
    ] {
        db.testing_set_phrase_query_encoders(g, versions.clone())
            .unwrap();
        let problems = db.verify().unwrap().problems;
        assert_eq!(problems.len(), 1, "{versions:?}: {problems:?}");
        assert!(
            problems[0].contains(needle) && problems[0].contains(&format!("phrase generation {g}")),
            "{versions:?}: {problems:?}"
        );
    }
}

#[test]
fn a_version_4_database_reads_legacy_phrase_manifests_and_upgrades_on_a_writers_open() {
    assert_eq!(realm_storage::FORMAT_VERSION, 5);
    let (dir, db) = temp_db();
    db.insert(&facts(3)).unwrap();
    let old = build(&db, Dtype::F32, 1);
    let current = build(&db, Dtype::F16, 2);
    let manifests = db.phrase_generations().unwrap();
    // What a version-4 build left: manifests without query-encoder versions.
    db.testing_put_legacy_phrase_manifest(old).unwrap();
    db.testing_put_legacy_phrase_manifest(current).unwrap();
    db.testing_set_format_version(4).unwrap();
    drop(db);

    // A follower reads it as it is.
    let follower = Db::open_read_only(dir.path()).unwrap();
    assert_eq!(follower.stats().unwrap().format_version, 4);
    assert_eq!(follower.phrase_generations().unwrap(), manifests);
    let m = follower.phrase_generation(current).unwrap();
    assert!(m.query_encoders.is_empty());
    assert_eq!(m.query_encoder(), None);
    assert_eq!(follower.phrase_snapshot().unwrap().generation(), current);
    assert_eq!(
        follower.phrase_snapshot().unwrap().manifest(),
        &manifests[1].manifest
    );
    assert_clean(&follower);

    // The writer's open records version 5; the manifests stay in the old layout until they
    // change, and read the same.
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(
        db.stats().unwrap().format_version,
        realm_storage::FORMAT_VERSION
    );
    follower.catch_up().unwrap();
    assert_eq!(follower.stats().unwrap().format_version, 5);
    assert_eq!(db.phrase_generations().unwrap(), manifests);
    assert_clean(&db);
    assert_eq!(
        db.attach_phrase_query_encoder(current, "q-one", "tuned")
            .unwrap(),
        1
    );
    let m = db.phrase_generation(current).unwrap();
    assert_eq!(m.query_encoder().unwrap().checkpoint_id, "q-one");
    assert_eq!(
        PhraseManifest {
            query_encoders: Vec::new(),
            ..m.clone()
        },
        manifests[1].manifest
    );
    follower.catch_up().unwrap();
    assert_eq!(follower.phrase_generation(current).unwrap(), m);
    // The retired one, still in the old layout, reads on, is pinned and collected as before.
    assert_eq!(db.phrase_generation(old).unwrap(), manifests[0].manifest);
    assert_eq!(
        db.phrase_snapshot_at(old).unwrap().all_rows().unwrap(),
        rows_of(&db, &ids(&db), 1)
    );
    assert_clean(&db);
    assert_clean(&follower);
    drop(db);
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.stats().unwrap().format_version, 5);
    assert_eq!(db.phrase_generation(current).unwrap(), m);
    assert_eq!(db.gc(0).unwrap().phrase_collected, vec![old]);
    assert_clean(&db);
}
