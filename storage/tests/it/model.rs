//! Random operation sequences against an in-memory oracle.
//!
//! Checks, after every step: `verify` finds no problem; held snapshots never change (an
//! update or a delete after them included); no reader ever sees a building
//! generation or a partial one (every visible passage has a vector or is pending); GC never
//! removes a current or pinned generation and removes exactly what the policy says; BM25
//! search through a fresh snapshot equals a brute-force oracle over the model's passages, and
//! through a held snapshot never changes; and all of it survives reopening the database.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use realm_storage::lexical::{Bm25Params, analyze};
use realm_storage::{
    Db, Dtype, Error, GenerationSpec, GenerationState, GenerationWriter, InsertOutcome, NewPassage,
    Snapshot,
};
use realm_testing::temp_db;
use serde_json::{Value, json};

/// Words of the passages' texts: inflections of one stem, stop words, a single character.
const VOCAB: [&str; 13] = [
    "river", "Rivers", "run", "running", "runs", "the", "a", "quantum", "glacier", "glaciers",
    "of", "delta", "x",
];

/// Queries checked after every step (held snapshots re-run these).
const QUERIES: [&str; 4] = [
    "river",
    "running quantum",
    "the glacier of rivers",
    "delta delta river x",
];

#[derive(Clone, Debug)]
enum Op {
    /// One passage per word list (indices into `VOCAB`).
    Insert {
        texts: Vec<Vec<usize>>,
        ext: Option<u8>,
    },
    Delete(usize),
    /// `Db::upsert` (with rows in the current generation when `vectors`): per entry, an
    /// external id, words, whether to repeat the stored content, and metadata.
    Upsert {
        entries: Vec<UpsertEntry>,
        vectors: bool,
    },
    Begin,
    WriteSome(usize),
    Commit,
    /// Begin (if needed), write every missing vector, commit: what an index builder does.
    Build,
    Abort,
    Append,
    Snapshot,
    TimeTravel(usize),
    DropSnapshot(usize),
    Gc(usize),
    Reopen,
}

#[derive(Clone, Debug)]
struct UpsertEntry {
    ext: u8,
    words: Vec<usize>,
    /// Repeat the stored title, text and metadata (a duplicate) when the id is stored.
    same: bool,
    meta: Option<u8>,
}

fn upsert_entry() -> impl Strategy<Value = UpsertEntry> {
    (
        0u8..4,
        proptest::collection::vec(0..VOCAB.len(), 1..6),
        any::<bool>(),
        proptest::option::of(0u8..2),
    )
        .prop_map(|(ext, words, same, meta)| UpsertEntry {
            ext,
            words,
            same,
            meta,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            proptest::collection::vec(proptest::collection::vec(0..VOCAB.len(), 1..6), 1..4),
            proptest::option::of(0u8..4),
        )
            .prop_map(|(texts, ext)| Op::Insert { texts, ext }),
        2 => any::<usize>().prop_map(Op::Delete),
        4 => (proptest::collection::vec(upsert_entry(), 1..4), any::<bool>())
            .prop_map(|(entries, vectors)| Op::Upsert { entries, vectors }),
        2 => Just(Op::Begin),
        4 => (1usize..12).prop_map(Op::WriteSome),
        3 => Just(Op::Commit),
        3 => Just(Op::Build),
        1 => Just(Op::Abort),
        2 => Just(Op::Append),
        3 => Just(Op::Snapshot),
        1 => any::<usize>().prop_map(Op::TimeTravel),
        2 => any::<usize>().prop_map(Op::DropSnapshot),
        2 => (0usize..3).prop_map(Op::Gc),
        1 => Just(Op::Reopen),
    ]
}

/// The vector the test writes for passage `p` in generation `g`.
fn vector(g: u64, p: u64) -> [f32; 2] {
    [g as f32, p as f32]
}

/// A passage's title, text and metadata.
type Content = (String, String, Value);

#[derive(Clone, Debug, PartialEq)]
struct View {
    generation: Option<u64>,
    passages: BTreeMap<u64, Content>,
    vectors: BTreeMap<u64, [f32; 2]>,
    pending: Vec<u64>,
}

#[derive(Default)]
struct Model {
    passages: BTreeMap<u64, Content>,
    /// Each passage's analyzed `title + " " + text`.
    docs: BTreeMap<u64, Vec<String>>,
    ext: BTreeMap<String, u64>,
    next_passage: u64,
    /// Generation → (state, passages with a row, dead or alive).
    generations: BTreeMap<u64, (GenerationState, BTreeSet<u64>)>,
    current: Option<u64>,
    next_generation: u64,
}

impl Model {
    fn view(&self, generation: Option<u64>) -> View {
        let written = generation
            .map(|g| self.generations[&g].1.clone())
            .unwrap_or_default();
        View {
            generation,
            passages: self.passages.clone(),
            vectors: self
                .passages
                .keys()
                .filter(|p| written.contains(p))
                .map(|&p| (p, vector(generation.unwrap_or(0), p)))
                .collect(),
            pending: self
                .passages
                .keys()
                .filter(|p| !written.contains(p))
                .copied()
                .collect(),
        }
    }

    /// Stores a new passage under the next id.
    fn add(&mut self, p: &NewPassage) -> u64 {
        let id = self.next_passage;
        self.next_passage += 1;
        self.passages
            .insert(id, (p.title.clone(), p.text.clone(), p.meta.clone()));
        self.docs
            .insert(id, analyze(&format!("{} {}", p.title, p.text)));
        if let Some(e) = &p.external_id {
            self.ext.insert(e.clone(), id);
        }
        id
    }

    fn remove(&mut self, id: u64) {
        self.passages.remove(&id);
        self.docs.remove(&id);
        self.ext.retain(|_, v| *v != id);
    }

    /// What `Db::upsert` must answer for `batch`: one outcome per passage, or the index of
    /// the repeat that fails the whole batch. Changes nothing.
    fn expect_upsert(&self, batch: &[NewPassage]) -> Result<Vec<InsertOutcome>, usize> {
        let mut next = self.next_passage;
        let mut seen: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
        let mut outcomes = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let ext = p
                .external_id
                .as_deref()
                .expect("upserts name their passages");
            let content = (p.title.clone(), p.text.clone(), p.meta.clone());
            if let Some(&(first, id)) = seen.get(ext) {
                let earlier = &batch[first];
                if (&earlier.title, &earlier.text, &earlier.meta) != (&p.title, &p.text, &p.meta) {
                    return Err(i);
                }
                outcomes.push(InsertOutcome::Duplicate(id));
                continue;
            }
            let outcome = match self.ext.get(ext) {
                Some(&old) if self.passages[&old] == content => InsertOutcome::Duplicate(old),
                Some(&old) => {
                    next += 1;
                    InsertOutcome::Updated { old, new: next - 1 }
                }
                None => {
                    next += 1;
                    InsertOutcome::Inserted(next - 1)
                }
            };
            seen.insert(ext, (i, outcome.id()));
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    fn missing(&self, g: u64) -> Vec<u64> {
        self.passages
            .keys()
            .filter(|p| !self.generations[&g].1.contains(p))
            .copied()
            .collect()
    }

    /// Brute-force BM25 (Lucene variant, default parameters) over every passage.
    fn bm25(&self, query: &str) -> BTreeMap<u64, f64> {
        let mut scores = BTreeMap::new();
        if self.docs.is_empty() {
            return scores;
        }
        let p = Bm25Params::default();
        let (k1, b) = (f64::from(p.k1), f64::from(p.b));
        let n = self.docs.len() as f64;
        let avgdl = self.docs.values().map(Vec::len).sum::<usize>() as f64 / n;
        for term in analyze(query) {
            let df = self.docs.values().filter(|d| d.contains(&term)).count() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for (&id, doc) in &self.docs {
                let tf = doc.iter().filter(|t| **t == term).count() as f64;
                if tf > 0.0 {
                    let norm = k1 * (1.0 - b + b * doc.len() as f64 / avgdl);
                    *scores.entry(id).or_insert(0.0) += idf * tf / (tf + norm);
                }
            }
        }
        scores
    }

    /// The fixed queries plus two built from the passages: the text of the oldest passage
    /// and the title of the newest.
    fn queries(&self) -> Vec<String> {
        let mut queries: Vec<String> = QUERIES.iter().map(|q| q.to_string()).collect();
        if let Some(doc) = self.docs.values().next() {
            queries.push(doc.join(" "));
        }
        if let Some((title, _, _)) = self.passages.values().next_back() {
            queries.push(title.clone());
        }
        queries
    }
}

type Ranked = Vec<(u64, f32)>;

/// The full BM25 result of each query, checking the invariants of one result list: scores
/// positive and descending, ties by ascending id, and top-k a prefix of the full list.
fn lexical(snap: &Snapshot, queries: &[String]) -> Vec<Ranked> {
    queries
        .iter()
        .map(|q| {
            let all = snap
                .bm25_search(q, usize::MAX, Bm25Params::default())
                .unwrap();
            for w in all.windows(2) {
                assert!(
                    w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0),
                    "{q:?}: misordered {all:?}"
                );
            }
            assert!(all.iter().all(|r| r.1 > 0.0));
            let top = snap.bm25_search(q, 2, Bm25Params::default()).unwrap();
            assert_eq!(top, all[..all.len().min(2)], "{q:?}: top-2 is not a prefix");
            all
        })
        .collect()
}

/// Compares a search result with the oracle: the same passages, scores within 1e-4 relative.
fn assert_matches_oracle(query: &str, got: &Ranked, expected: &BTreeMap<u64, f64>) {
    let got_ids: BTreeSet<u64> = got.iter().map(|r| r.0).collect();
    let expected_ids: BTreeSet<u64> = expected.keys().copied().collect();
    assert_eq!(got_ids, expected_ids, "{query:?}: matching passages differ");
    for (id, score) in got {
        let want = expected[id];
        assert!(
            (f64::from(*score) - want).abs() <= 1e-4 * want.abs(),
            "{query:?}: passage {id} scores {score}, the oracle {want}"
        );
    }
}

fn observe(snap: &Snapshot) -> View {
    let passages = snap
        .passages()
        .map(|p| p.map(|p| (p.id, (p.title, p.text, p.meta))))
        .collect::<Result<BTreeMap<_, _>, _>>()
        .unwrap();
    let vectors = match snap.generation_id() {
        None => BTreeMap::new(),
        Some(_) => {
            let m = snap.vectors().unwrap();
            m.ids
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, [m.row(i)[0], m.row(i)[1]]))
                .collect()
        }
    };
    View {
        generation: snap.generation_id(),
        passages,
        vectors,
        pending: snap.pending().unwrap(),
    }
}

struct Harness {
    dir: tempfile::TempDir,
    db: Option<Db>,
    writer: Option<GenerationWriter>,
    /// Held snapshots, what they showed when taken, and their results for `QUERIES`.
    snapshots: Vec<(Snapshot, View, Vec<Ranked>)>,
    model: Model,
}

impl Harness {
    fn new() -> Self {
        let (dir, db) = temp_db();
        Harness {
            dir,
            db: Some(db),
            writer: None,
            snapshots: Vec::new(),
            model: Model {
                next_generation: 1,
                ..Model::default()
            },
        }
    }

    fn db(&self) -> &Db {
        self.db.as_ref().unwrap()
    }

    fn pins(&self, g: u64) -> usize {
        self.snapshots
            .iter()
            .filter(|(s, _, _)| s.generation_id() == Some(g))
            .count()
    }

    fn apply(&mut self, op: &Op) {
        let m = &mut self.model;
        match op {
            Op::Insert { texts, ext } => {
                let batch: Vec<NewPassage> = texts
                    .iter()
                    .enumerate()
                    .map(|(i, words)| {
                        let text: Vec<&str> = words.iter().map(|&w| VOCAB[w]).collect();
                        let p = NewPassage::new(format!("t{}-{i}", m.next_passage), text.join(" "));
                        match ext {
                            Some(e) if i == 0 => p.with_external_id(format!("e{e}")),
                            _ => p,
                        }
                    })
                    .collect();
                let out = self.db.as_ref().unwrap().insert(&batch).unwrap();
                for (p, o) in batch.iter().zip(out) {
                    let existing = p.external_id.as_ref().and_then(|e| m.ext.get(e)).copied();
                    match existing {
                        Some(id) => assert_eq!(o.id(), id, "duplicate must report the old id"),
                        None => {
                            assert_eq!(o.id(), m.next_passage);
                            m.add(p);
                        }
                    }
                }
            }
            Op::Delete(i) => {
                if m.passages.is_empty() {
                    return;
                }
                let id = *m.passages.keys().nth(i % m.passages.len()).unwrap();
                self.db.as_ref().unwrap().delete(&[id]).unwrap();
                m.remove(id);
            }
            Op::Upsert { entries, vectors } => self.upsert(entries, *vectors),
            Op::Begin => {
                if self.writer.is_some() {
                    return;
                }
                let spec = GenerationSpec::new("model-test", 2, Dtype::F32);
                let w = self.db.as_ref().unwrap().begin_generation(spec).unwrap();
                assert_eq!(w.id(), m.next_generation);
                m.generations
                    .insert(w.id(), (GenerationState::Building, BTreeSet::new()));
                m.next_generation += 1;
                self.writer = Some(w);
            }
            Op::WriteSome(n) => {
                let Some(w) = self.writer.as_mut() else {
                    return;
                };
                let g = w.id();
                let missing = w.missing().unwrap();
                assert_eq!(missing, m.missing(g));
                let ids: Vec<u64> = missing.into_iter().take(*n).collect();
                let values: Vec<f32> = ids.iter().flat_map(|&p| vector(g, p)).collect();
                w.write(&ids, &values).unwrap();
                m.generations.get_mut(&g).unwrap().1.extend(ids);
            }
            Op::Commit => {
                let Some(w) = self.writer.as_mut() else {
                    return;
                };
                let g = w.id();
                let expected_missing = m.missing(g);
                match w.commit() {
                    Ok(id) => {
                        assert_eq!(id, g);
                        assert!(expected_missing.is_empty());
                        if let Some(old) = m.current {
                            m.generations.get_mut(&old).unwrap().0 = GenerationState::Retired;
                        }
                        m.generations.get_mut(&g).unwrap().0 = GenerationState::Committed;
                        m.current = Some(g);
                        self.writer = None;
                    }
                    Err(Error::CoverageGap { missing, .. }) => {
                        assert_eq!(missing, expected_missing.len())
                    }
                    Err(e) => panic!("commit failed: {e}"),
                }
            }
            Op::Build => {
                self.apply(&Op::Begin);
                self.apply(&Op::WriteSome(usize::MAX));
                self.apply(&Op::Commit);
            }
            Op::Abort => {
                if let Some(w) = self.writer.take() {
                    m.generations.remove(&w.id());
                    w.abort().unwrap();
                }
            }
            Op::Append => {
                let Some(g) = m.current else { return };
                let pending = m.missing(g);
                let values: Vec<f32> = pending.iter().flat_map(|&p| vector(g, p)).collect();
                self.db
                    .as_ref()
                    .unwrap()
                    .put_vectors(g, &pending, &values)
                    .unwrap();
                m.generations.get_mut(&g).unwrap().1.extend(pending);
            }
            Op::Snapshot => {
                let snap = self.db().snapshot().unwrap();
                let view = self.model.view(self.model.current);
                assert_eq!(
                    observe(&snap),
                    view,
                    "a new snapshot differs from the oracle"
                );
                let results = self.lexical_checked(&snap);
                self.snapshots.push((snap, view, results));
            }
            Op::TimeTravel(i) => {
                let retained: Vec<u64> = self
                    .model
                    .generations
                    .iter()
                    .filter(|(_, (s, _))| *s != GenerationState::Building)
                    .map(|(g, _)| *g)
                    .collect();
                if retained.is_empty() {
                    return;
                }
                let g = retained[i % retained.len()];
                let snap = self.db().snapshot_at(g).unwrap();
                let view = self.model.view(Some(g));
                assert_eq!(observe(&snap), view, "a time-travel snapshot differs");
                let results = self.lexical_checked(&snap);
                self.snapshots.push((snap, view, results));
            }
            Op::DropSnapshot(i) => {
                if !self.snapshots.is_empty() {
                    let i = i % self.snapshots.len();
                    self.snapshots.remove(i);
                }
            }
            Op::Gc(keep) => {
                let mut retired: Vec<u64> = self
                    .model
                    .generations
                    .iter()
                    .filter(|(_, (s, _))| *s == GenerationState::Retired)
                    .map(|(g, _)| *g)
                    .collect();
                retired.sort_by(|a, b| b.cmp(a));
                let expected: Vec<u64> = retired
                    .iter()
                    .enumerate()
                    .filter(|(rank, g)| self.pins(**g) == 0 && *rank >= *keep)
                    .map(|(_, g)| *g)
                    .collect();
                let report = self.db().gc(*keep).unwrap();
                let mut collected = report.collected.clone();
                collected.sort_by(|a, b| b.cmp(a));
                assert_eq!(collected, expected, "gc collected the wrong generations");
                for g in &collected {
                    assert_ne!(
                        Some(*g),
                        self.model.current,
                        "gc collected the current generation"
                    );
                    assert_eq!(self.pins(*g), 0, "gc collected a pinned generation");
                    self.model.generations.remove(g);
                }
            }
            Op::Reopen => {
                // Snapshots and the open writer belong to the old handle.
                self.snapshots.clear();
                if let Some(w) = self.writer.take() {
                    self.model.generations.remove(&w.id());
                }
                self.db = None;
                self.db = Some(Db::open(self.dir.path()).unwrap());
            }
        }
    }

    /// Upserts a batch and checks every outcome against the model; with `vectors`, the rows
    /// go into the current generation in the same write.
    fn upsert(&mut self, entries: &[UpsertEntry], vectors: bool) {
        let m = &mut self.model;
        let batch: Vec<NewPassage> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let ext = format!("e{}", e.ext);
                let stored = m.ext.get(&ext).map(|id| m.passages[id].clone());
                let (title, text, meta) = match stored {
                    Some(content) if e.same => content,
                    _ => {
                        let words: Vec<&str> = e.words.iter().map(|&w| VOCAB[w]).collect();
                        let meta = e.meta.map_or(Value::Null, |v| json!({ "v": v }));
                        (format!("u{}-{i}", m.next_passage), words.join(" "), meta)
                    }
                };
                NewPassage::new(title, text)
                    .with_external_id(ext)
                    .with_meta(meta)
            })
            .collect();
        let expected = m.expect_upsert(&batch);
        let db = self.db.as_ref().unwrap();
        let generation = m.current.filter(|_| vectors);
        let rows: Vec<[f32; 2]> = match (&expected, generation) {
            (Ok(outcomes), Some(g)) => outcomes.iter().map(|o| vector(g, o.id())).collect(),
            _ => Vec::new(),
        };
        let got = match generation {
            Some(g) => {
                let rows: Vec<Option<&[f32]>> = if rows.is_empty() {
                    vec![Some(&[0.0, 0.0][..]); batch.len()]
                } else {
                    rows.iter().map(|r| Some(&r[..])).collect()
                };
                db.upsert_with_vectors(&batch, g, &rows)
            }
            None => db.upsert(&batch),
        };
        let outcomes = match (expected, got) {
            (Ok(expected), Ok(got)) => {
                assert_eq!(got, expected, "upsert outcomes differ from the oracle");
                got
            }
            (Err(index), Err(Error::InvalidPassage { index: i, .. })) => {
                assert_eq!(i, index, "the wrong repeat was refused");
                return;
            }
            (expected, got) => panic!("upsert: expected {expected:?}, got {got:?}"),
        };
        for (p, o) in batch.iter().zip(outcomes) {
            match o {
                InsertOutcome::Duplicate(_) => {}
                InsertOutcome::Inserted(id) | InsertOutcome::Updated { new: id, .. } => {
                    if let InsertOutcome::Updated { old, .. } = o {
                        m.remove(old);
                    }
                    assert_eq!(m.add(p), id);
                    if let Some(g) = generation {
                        m.generations.get_mut(&g).unwrap().1.insert(id);
                    }
                }
            }
        }
    }

    /// Checks a fresh snapshot's BM25 results against the oracle (the fixed queries and the
    /// ones built from the model's passages); returns its results for the fixed queries.
    fn lexical_checked(&self, snap: &Snapshot) -> Vec<Ranked> {
        let queries = self.model.queries();
        let results = lexical(snap, &queries);
        for (query, got) in queries.iter().zip(&results) {
            assert_matches_oracle(query, got, &self.model.bm25(query));
        }
        results[..QUERIES.len()].to_vec()
    }

    fn check(&self) {
        // `verify` expects no generation to be building (it runs after open); the harness's
        // open writer is the one exception it may report.
        let report = self.db().verify().unwrap();
        let building = self
            .writer
            .as_ref()
            .map(|w| format!("generation {} is still building after open", w.id()));
        let problems: Vec<&String> = report
            .problems
            .iter()
            .filter(|p| Some(*p) != building.as_ref())
            .collect();
        assert!(problems.is_empty(), "verify: {problems:?}");
        let fixed: Vec<String> = QUERIES.iter().map(|q| q.to_string()).collect();
        for (snap, view, results) in &self.snapshots {
            assert_eq!(&observe(snap), view, "a held snapshot changed");
            assert_eq!(
                &lexical(snap, &fixed),
                results,
                "a held snapshot's BM25 results changed"
            );
        }
        let infos = self.db().generations().unwrap();
        let states: BTreeMap<u64, GenerationState> = infos
            .iter()
            .map(|i| (i.manifest.id, i.manifest.state))
            .collect();
        let expected: BTreeMap<u64, GenerationState> = self
            .model
            .generations
            .iter()
            .map(|(g, (s, _))| (*g, *s))
            .collect();
        assert_eq!(states, expected);
        assert_eq!(self.db().current_generation().unwrap(), self.model.current);
        // A fresh reader never sees a building generation or a partial one.
        let snap = self.db().snapshot().unwrap();
        assert_eq!(snap.generation_id(), self.model.current);
        let view = observe(&snap);
        let covered: BTreeSet<u64> = view.vectors.keys().chain(&view.pending).copied().collect();
        assert_eq!(covered, view.passages.keys().copied().collect());
        self.lexical_checked(&snap);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn storage_matches_the_oracle(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
            h.check();
        }
    }
}
