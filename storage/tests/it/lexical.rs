//! The lexical (BM25) index through the public API: the analyzer, exact scores against the
//! formula and against `bm25s`, ranking, snapshot consistency, reopening, rebuilding, the
//! upgrade from format version 1, repair of an outdated index, and followers.

use std::collections::BTreeMap;

use realm_storage::lexical::{Bm25Params, analyze};
use realm_storage::{Db, Error, FORMAT_VERSION, NewPassage, PassageId, Snapshot};
use realm_testing::temp_db;

const TOY: [(&str, &str); 5] = [
    ("Rivers", "The river runs through the valley."),
    (
        "Glaciers",
        "A glacier is running slowly, and glaciers run downhill.",
    ),
    (
        "Quantum",
        "Quantum theory of the river delta and the quantum river.",
    ),
    (
        "Geography",
        "Mountains, valleys, plains, deserts, forests, lakes and one river shape the land we live on every day.",
    ),
    ("Stop", "to be or not to be"),
];

/// What `bm25s.tokenize(..., stopwords="en", stemmer=Stemmer.Stemmer("english"))` returns for
/// the toy passages (`title + " " + text`), recorded from bm25s 0.3.16 with PyStemmer 3.1.0.
const TOY_TOKENS: [&[&str]; 5] = [
    &["river", "river", "run", "through", "valley"],
    &[
        "glacier", "glacier", "run", "slowli", "glacier", "run", "downhil",
    ],
    &[
        "quantum", "quantum", "theori", "river", "delta", "quantum", "river",
    ],
    &[
        "geographi",
        "mountain",
        "valley",
        "plain",
        "desert",
        "forest",
        "lake",
        "one",
        "river",
        "shape",
        "land",
        "we",
        "live",
        "everi",
        "day",
    ],
    &["stop"],
];

fn toy_db(dir: &std::path::Path) -> (Db, Vec<PassageId>) {
    let db = Db::create(dir).unwrap();
    let batch: Vec<NewPassage> = TOY.iter().map(|(t, x)| NewPassage::new(*t, *x)).collect();
    let ids = db.insert(&batch).unwrap().iter().map(|o| o.id()).collect();
    (db, ids)
}

/// BM25 (Lucene variant) computed directly from token lists, best first, ties by id.
fn oracle(docs: &BTreeMap<PassageId, Vec<String>>, query: &str, p: Bm25Params) -> Vec<(u64, f64)> {
    let n = docs.len() as f64;
    if docs.is_empty() {
        return Vec::new();
    }
    let avgdl = docs.values().map(|d| d.len()).sum::<usize>() as f64 / n;
    let (k1, b) = (f64::from(p.k1), f64::from(p.b));
    let mut scores: BTreeMap<u64, f64> = BTreeMap::new();
    for term in analyze(query) {
        let df = docs.values().filter(|d| d.contains(&term)).count() as f64;
        if df == 0.0 {
            continue;
        }
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        for (&id, doc) in docs {
            let tf = doc.iter().filter(|t| **t == term).count() as f64;
            if tf > 0.0 {
                let norm = k1 * (1.0 - b + b * doc.len() as f64 / avgdl);
                *scores.entry(id).or_default() += idf * tf / (tf + norm);
            }
        }
    }
    let mut ranked: Vec<(u64, f64)> = scores.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
}

fn assert_close(got: &[(PassageId, f32)], expected: &[(u64, f64)]) {
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        expected.iter().map(|e| e.0).collect::<Vec<_>>(),
        "ranking: got {got:?}, expected {expected:?}"
    );
    for (g, e) in got.iter().zip(expected) {
        let diff = (f64::from(g.1) - e.1).abs();
        assert!(diff <= 1e-6 * e.1.abs().max(1.0), "score: {g:?} vs {e:?}");
    }
}

fn toy_docs(ids: &[PassageId]) -> BTreeMap<PassageId, Vec<String>> {
    ids.iter()
        .zip(TOY_TOKENS)
        .map(|(&id, tokens)| (id, tokens.iter().map(|t| t.to_string()).collect()))
        .collect()
}

fn search(snap: &Snapshot, query: &str) -> Vec<(PassageId, f32)> {
    snap.bm25_search(query, usize::MAX, Bm25Params::default())
        .unwrap()
}

#[test]
fn analyzer_matches_bm25s_on_the_toy_corpus() {
    for ((title, text), expected) in TOY.iter().zip(TOY_TOKENS) {
        assert_eq!(analyze(&format!("{title} {text}")), expected);
    }
    // Stemming conflates inflections; stop words vanish before stemming.
    assert_eq!(analyze("running runs run"), ["run", "run", "run"]);
    assert!(analyze("The and of A to is").is_empty());
}

#[test]
fn scores_equal_the_formula_and_bm25s() {
    let dir = tempfile::tempdir().unwrap();
    let (db, ids) = toy_db(dir.path());
    let snap = db.snapshot().unwrap();
    let docs = toy_docs(&ids);
    let params = Bm25Params::default();
    assert_eq!((params.k1, params.b), (0.9, 0.4));
    for query in [
        "river",
        "glacier river",
        "running",
        "quantum river",
        "river river",
        "Rivers and RUNNING glaciers",
        "valley stop",
    ] {
        assert_close(&search(&snap, query), &oracle(&docs, query, params));
    }
    // The same figures from bm25s 0.3.16 (`BM25(method="lucene", k1=0.9, b=0.4)`,
    // `get_scores`), which computes in float32.
    let bm25s: [(&str, [f64; 5]); 5] = [
        (
            "river",
            [0.385_390_76, 0.0, 0.371_721_74, 0.233_187_62, 0.0],
        ),
        (
            "glacier river",
            [0.385_390_76, 1.066_380_26, 0.371_721_74, 0.233_187_62, 0.0],
        ),
        ("running", [0.487_144_77, 0.603_771_57, 0.0, 0.0, 0.0]),
        (
            "quantum river",
            [0.385_390_76, 0.0, 1.438_102_01, 0.233_187_62, 0.0],
        ),
        (
            "river river",
            [0.770_781_52, 0.0, 0.743_443_49, 0.466_375_23, 0.0],
        ),
    ];
    for (query, scores) in bm25s {
        let got: BTreeMap<PassageId, f32> = search(&snap, query).into_iter().collect();
        for (&id, &expected) in ids.iter().zip(&scores) {
            let score = got.get(&id).copied().map_or(0.0, f64::from);
            assert!(
                (score - expected).abs() <= 1e-6,
                "{query:?}, passage {id}: {score} vs bm25s {expected}"
            );
        }
    }
}

#[test]
fn ranking_rare_terms_length_stemming_and_stop_words() {
    let dir = tempfile::tempdir().unwrap();
    let (db, ids) = toy_db(dir.path());
    let snap = db.snapshot().unwrap();
    // "glacier" occurs in one passage, "river" in three: the rare term wins.
    assert_eq!(search(&snap, "glacier river")[0].0, ids[1]);
    // "running" is stemmed to "run" and finds "runs", "running" and "run".
    let run: Vec<PassageId> = search(&snap, "running").iter().map(|r| r.0).collect();
    assert_eq!(run, [ids[1], ids[0]]);
    // Stop words and single characters are no terms: nothing matches, and it is no error.
    assert!(search(&snap, "the of and a").is_empty());
    assert!(search(&snap, "").is_empty());
    assert!(search(&snap, "x y z").is_empty());
    // Terms no passage holds add nothing.
    assert_eq!(search(&snap, "river zeppelin"), search(&snap, "river"));
    // A passage with only stop words in its text still counts by its title.
    assert_eq!(search(&snap, "stop")[0].0, ids[4]);

    // Length normalization: the same term frequency in a shorter passage scores higher, and
    // with b = 0 lengths do not matter and ties go to the smaller id.
    let (_dir, db) = temp_db();
    let out = db
        .insert(&[
            NewPassage::new("", "zebra alpha beta gamma delta epsilon"),
            NewPassage::new("", "zebra alpha"),
            NewPassage::new("", "unrelated words only"),
        ])
        .unwrap();
    let (long, short) = (out[0].id(), out[1].id());
    let snap = db.snapshot().unwrap();
    let ranked = search(&snap, "zebra");
    assert_eq!(
        ranked.iter().map(|r| r.0).collect::<Vec<_>>(),
        [short, long]
    );
    assert!(ranked[0].1 > ranked[1].1);
    let flat = snap
        .bm25_search("zebra", 10, Bm25Params { k1: 0.9, b: 0.0 })
        .unwrap();
    assert_eq!(flat.iter().map(|r| r.0).collect::<Vec<_>>(), [long, short]);
    assert_eq!(flat[0].1, flat[1].1);
}

#[test]
fn top_k_and_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (db, ids) = toy_db(dir.path());
    let snap = db.snapshot().unwrap();
    let all = search(&snap, "river");
    assert_eq!(all.len(), 3);
    for k in 0..5 {
        let top = snap.bm25_search("river", k, Bm25Params::default()).unwrap();
        assert_eq!(top, all[..k.min(all.len())]);
    }
    // Identical passages tie; the smaller id comes first, also when k cuts between them.
    let dup = db
        .insert(&[
            NewPassage::new("Copy", "river river river"),
            NewPassage::new("Copy", "river river river"),
        ])
        .unwrap();
    let snap = db.snapshot().unwrap();
    let top = snap.bm25_search("river", 1, Bm25Params::default()).unwrap();
    assert_eq!(top[0].0, dup[0].id());
    let all = search(&snap, "river");
    assert_eq!(
        all[..2].iter().map(|r| r.0).collect::<Vec<_>>(),
        [dup[0].id(), dup[1].id()]
    );
    assert_eq!(all[0].1, all[1].1);
    assert!(all.windows(2).all(|w| w[0].1 >= w[1].1));
    assert!(
        all.iter()
            .all(|r| ids.contains(&r.0) || dup.iter().any(|d| d.id() == r.0))
    );
    for bad in [
        Bm25Params { k1: -1.0, b: 0.4 },
        Bm25Params { k1: 0.9, b: 1.5 },
        Bm25Params {
            k1: f32::NAN,
            b: 0.4,
        },
    ] {
        let err = snap.bm25_search("river", 3, bad).unwrap_err();
        assert!(matches!(err, Error::InvalidBm25Params { .. }), "{err}");
        assert!(err.to_string().contains("BM25 parameters"), "{err}");
    }
}

#[test]
fn snapshots_keep_their_scores_while_the_index_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, ids) = toy_db(dir.path());
    let mut docs = toy_docs(&ids);
    let old = db.snapshot().unwrap();
    let before = search(&old, "river glacier");
    assert_close(
        &before,
        &oracle(&docs, "river glacier", Bm25Params::default()),
    );

    // Inserting changes N, avgdl and df; deleting removes a passage and its postings.
    let added = db
        .insert(&[
            NewPassage::new("Delta", "A river delta forms where a river meets the sea."),
            NewPassage::new("Ice", "Glacial ice and glaciers carve valleys."),
        ])
        .unwrap();
    for (o, (title, text)) in added.iter().zip([
        ("Delta", "A river delta forms where a river meets the sea."),
        ("Ice", "Glacial ice and glaciers carve valleys."),
    ]) {
        docs.insert(o.id(), analyze(&format!("{title} {text}")));
    }
    db.delete(&[ids[2]]).unwrap();
    docs.remove(&ids[2]);

    // The old snapshot still scores with its own statistics: identical ids and scores.
    assert_eq!(search(&old, "river glacier"), before);
    assert!(search(&old, "quantum").iter().any(|r| r.0 == ids[2]));

    let new = db.snapshot().unwrap();
    let after = search(&new, "river glacier");
    assert_close(
        &after,
        &oracle(&docs, "river glacier", Bm25Params::default()),
    );
    assert_ne!(after, before);
    assert!(
        search(&new, "quantum").is_empty(),
        "a deleted passage is found"
    );
    assert!(after.iter().all(|r| r.0 != ids[2]));

    // Deleting everything leaves an empty index, and the integrity check agrees.
    let all: Vec<PassageId> = docs.keys().copied().collect();
    db.delete(&all).unwrap();
    assert!(search(&db.snapshot().unwrap(), "river").is_empty());
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.postings, 0);
}

/// Every query's full result, for comparing whole states.
fn results(db: &Db) -> Vec<Vec<(PassageId, f32)>> {
    let snap = db.snapshot().unwrap();
    [
        "river",
        "glacier river",
        "running",
        "quantum river",
        "valley stop",
    ]
    .iter()
    .map(|q| search(&snap, q))
    .collect()
}

#[test]
fn reopening_and_rebuilding_give_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let (db, ids) = toy_db(dir.path());
    db.delete(&[ids[0]]).unwrap();
    let expected = results(&db);
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.postings > 0);
    drop(db);

    let db = Db::open(dir.path()).unwrap();
    assert_eq!(results(&db), expected);
    assert_eq!(db.rebuild_lexical_index().unwrap(), 4);
    assert_eq!(results(&db), expected);
    assert!(db.verify().unwrap().problems.is_empty());

    // A follower reads the same index.
    let follower = Db::builder(dir.path()).follower(true).open().unwrap();
    assert_eq!(results(&follower), expected);
    assert!(matches!(
        follower.rebuild_lexical_index(),
        Err(Error::ReadOnly { .. })
    ));
}

#[test]
fn a_format_1_database_is_upgraded_by_the_writer() {
    // Version 1 lacks the lexical index (and what later versions added: the IVF and the
    // phrase column families): the writer's rebuild records the current version.
    assert_eq!(FORMAT_VERSION, 5);
    let dir = tempfile::tempdir().unwrap();
    let (db, ids) = toy_db(dir.path());
    db.delete(&[ids[3]]).unwrap();
    let expected = results(&db);
    drop(db);
    Db::testing_downgrade_to_format_1(dir.path()).unwrap();

    // A follower opens it and reads passages; lexical search explains why it cannot run.
    let follower = Db::builder(dir.path()).follower(true).open().unwrap();
    let snap = follower.snapshot().unwrap();
    assert_eq!(snap.passage_count().unwrap(), 4);
    assert_eq!(snap.get(ids[0]).unwrap().unwrap().title, "Rivers");
    let err = snap
        .bm25_search("river", 3, Bm25Params::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::LexicalIndexUnavailable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no BM25 index"), "{err}");
    assert!(follower.verify().unwrap().problems.is_empty());
    assert_eq!(follower.stats().unwrap().passages, 4);
    drop(snap);

    // The writer builds the index on open; the follower sees it once it catches up.
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(results(&db), expected);
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(results(&follower), expected);
    drop(db);
    // Opening an upgraded database again does not change anything.
    assert_eq!(results(&Db::open(dir.path()).unwrap()), expected);
}

#[test]
fn an_outdated_or_missing_index_is_reported_and_repaired_on_open() {
    for recorded in [Some("bm25s-en-porter2/0"), None] {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = toy_db(dir.path());
        let expected = results(&db);
        let held = db.snapshot().unwrap();
        db.testing_set_lexical_analyzer(recorded).unwrap();
        // The held snapshot predates the change and still searches.
        assert_eq!(search(&held, "river"), expected[0]);
        let err = db
            .snapshot()
            .unwrap()
            .bm25_search("river", 3, Bm25Params::default())
            .unwrap_err();
        assert!(
            matches!(err, Error::LexicalIndexUnavailable { .. }),
            "{err}"
        );
        if let Some(version) = recorded {
            assert!(err.to_string().contains(version), "{err}");
        }
        assert_eq!(db.verify().unwrap().problems.len(), 1);
        drop(held);
        drop(db);
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(results(&db), expected);
        assert!(db.verify().unwrap().problems.is_empty());
    }
}

#[test]
fn the_index_follows_inserts_with_vectors_and_duplicates() {
    let (_dir, db) = temp_db();
    let first = NewPassage::new("Paris", "Paris is the capital of France.").with_external_id("p");
    db.insert(std::slice::from_ref(&first)).unwrap();
    // A duplicate external id writes nothing, postings included.
    let out = db
        .insert(&[
            first.clone(),
            NewPassage::new("Lyon", "Lyon lies in France."),
        ])
        .unwrap();
    let snap = db.snapshot().unwrap();
    let france = search(&snap, "france");
    assert_eq!(france.len(), 2);
    assert_eq!(search(&snap, "paris").len(), 1);
    assert_eq!(search(&snap, "lyon")[0].0, out[1].id());
    let report = db.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Paris: paris ×2, capit, franc; Lyon: lyon, lie, franc.
    assert_eq!(report.postings, 6);
}
