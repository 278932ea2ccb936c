//! Random operation sequences on phrase generations against a brute-force oracle.
//!
//! Checks, after every step: `verify` finds no problem; a fresh phrase snapshot shows exactly
//! the oracle's rows of the current phrase generation (passage-id order, rows of deleted
//! passages gone) and its pending passages; the phrase generations and their states are the
//! oracle's; held phrase snapshots never change; GC collects exactly what the policy says and
//! never a pinned or current phrase generation; and all of it survives reopening.

use std::collections::BTreeMap;

use proptest::prelude::*;
use realm_storage::phrase_rows::PhraseRows;
use realm_storage::{
    Db, Dtype, Error, GenerationId, GenerationState, InsertOutcome, NewPassage, PassageId,
    PhraseGenerationSpec, PhraseSnapshot,
};
use realm_testing::temp_db;

use super::phrases::rows_for;

const DIM: usize = 2;
const WORDS: [&str; 8] = [
    "delta", "río", "glacier", "x", "of", "naïve", "run", "quantum",
];

#[derive(Clone, Debug)]
enum Op {
    /// One passage per word list (indices into `WORDS`).
    Insert(Vec<Vec<usize>>),
    Delete(usize),
    /// Replaces (or inserts) the passage named `e<ext>` with new words: the delete half
    /// removes the old passage's rows.
    Upsert {
        ext: u8,
        words: Vec<usize>,
    },
    /// Begins a phrase generation, writes every missing passage's rows in two calls and
    /// commits; with `late`, a passage is inserted before the commit, which must then fail
    /// with a coverage gap until its rows are written too.
    Build {
        seed: u64,
        f16: bool,
        late: bool,
    },
    /// Begins a phrase generation, writes some rows and drops the writer.
    Abandon {
        seed: u64,
    },
    /// Writes the rows of every pending passage into the current phrase generation.
    PutPending {
        seed: u64,
    },
    Hold,
    /// Takes a snapshot of a retained phrase generation (time travel) and holds it.
    HoldAt(usize),
    Release(usize),
    Gc(usize),
    Reopen,
}

fn words() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..WORDS.len(), 1..6)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(words(), 1..4).prop_map(Op::Insert),
        2 => any::<usize>().prop_map(Op::Delete),
        2 => (0u8..3, words()).prop_map(|(ext, words)| Op::Upsert { ext, words }),
        3 => (any::<u64>(), any::<bool>(), any::<bool>())
            .prop_map(|(seed, f16, late)| Op::Build { seed, f16, late }),
        1 => any::<u64>().prop_map(|seed| Op::Abandon { seed }),
        2 => any::<u64>().prop_map(|seed| Op::PutPending { seed }),
        2 => Just(Op::Hold),
        1 => any::<usize>().prop_map(Op::HoldAt),
        2 => any::<usize>().prop_map(Op::Release),
        2 => (0usize..3).prop_map(Op::Gc),
        1 => Just(Op::Reopen),
    ]
}

/// What a phrase snapshot shows.
#[derive(Clone, Debug, PartialEq)]
struct View {
    generation: GenerationId,
    rows: Vec<(PassageId, PhraseRows)>,
    pending: Vec<PassageId>,
}

fn observe(snap: &PhraseSnapshot) -> View {
    View {
        generation: snap.generation(),
        rows: snap.all_rows().unwrap(),
        pending: snap.pending().unwrap(),
    }
}

#[derive(Default)]
struct Model {
    /// Passage id → text.
    passages: BTreeMap<PassageId, String>,
    ext: BTreeMap<String, PassageId>,
    next_passage: PassageId,
    /// Phrase generation → (state, rows of live passages).
    generations: BTreeMap<GenerationId, (GenerationState, BTreeMap<PassageId, PhraseRows>)>,
    current: Option<GenerationId>,
    next_generation: GenerationId,
}

impl Model {
    fn view(&self, g: GenerationId) -> View {
        let rows = &self.generations[&g].1;
        View {
            generation: g,
            rows: rows.iter().map(|(p, r)| (*p, r.clone())).collect(),
            pending: self
                .passages
                .keys()
                .filter(|p| !rows.contains_key(p))
                .copied()
                .collect(),
        }
    }

    fn missing(&self, g: GenerationId) -> Vec<PassageId> {
        self.view(g).pending
    }

    fn add(&mut self, text: String) -> PassageId {
        let id = self.next_passage;
        self.next_passage += 1;
        self.passages.insert(id, text);
        id
    }

    fn remove(&mut self, id: PassageId) {
        self.passages.remove(&id);
        self.ext.retain(|_, p| *p != id);
        for (_, rows) in self.generations.values_mut() {
            rows.remove(&id);
        }
    }

    fn rows(&self, ids: &[PassageId], seed: u64) -> Vec<(PassageId, PhraseRows)> {
        ids.iter()
            .map(|&p| (p, rows_for(&self.passages[&p], DIM, seed ^ p)))
            .collect()
    }
}

fn text(words: &[usize]) -> String {
    words
        .iter()
        .map(|&w| WORDS[w])
        .collect::<Vec<_>>()
        .join(" ")
}

struct Harness {
    dir: tempfile::TempDir,
    db: Option<Db>,
    held: Vec<(PhraseSnapshot, View)>,
    model: Model,
}

impl Harness {
    fn new() -> Self {
        let (dir, db) = temp_db();
        Harness {
            dir,
            db: Some(db),
            held: Vec::new(),
            model: Model {
                next_generation: 1,
                ..Model::default()
            },
        }
    }

    fn db(&self) -> &Db {
        self.db.as_ref().unwrap()
    }

    fn insert(&mut self, texts: &[String]) {
        let batch: Vec<NewPassage> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| NewPassage::new(format!("p{}-{i}", self.model.next_passage), t))
            .collect();
        let out = self.db().insert(&batch).unwrap();
        for (t, o) in texts.iter().zip(out) {
            assert_eq!(o, InsertOutcome::Inserted(self.model.add(t.clone())));
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Insert(lists) => {
                let texts: Vec<String> = lists.iter().map(|w| text(w)).collect();
                self.insert(&texts);
            }
            Op::Delete(i) => {
                let m = &mut self.model;
                if m.passages.is_empty() {
                    return;
                }
                let id = *m.passages.keys().nth(i % m.passages.len()).unwrap();
                m.remove(id);
                self.db().delete(&[id]).unwrap();
            }
            Op::Upsert { ext, words } => {
                let ext = format!("e{ext}");
                let title = format!("u{}", self.model.next_passage);
                let p = NewPassage::new(title, text(words)).with_external_id(&ext);
                let out = self.db().upsert(std::slice::from_ref(&p)).unwrap()[0];
                let m = &mut self.model;
                match (m.ext.get(&ext).copied(), out) {
                    (Some(old), InsertOutcome::Updated { old: o, new }) => {
                        assert_eq!(o, old);
                        m.remove(old);
                        assert_eq!(m.add(p.text), new);
                    }
                    (None, InsertOutcome::Inserted(new)) => assert_eq!(m.add(p.text), new),
                    (stored, out) => panic!("upsert of {stored:?} answered {out:?}"),
                }
                m.ext.insert(ext, m.next_passage - 1);
            }
            Op::Build { seed, f16, late } => self.build(*seed, *f16, *late),
            Op::Abandon { seed } => {
                let dtype = Dtype::F32;
                let mut w = self
                    .db()
                    .begin_phrase_generation(PhraseGenerationSpec::new("model", DIM as u32, dtype))
                    .unwrap();
                assert_eq!(w.id(), self.model.next_generation);
                self.model.next_generation += 1;
                let missing = w.missing().unwrap();
                let some: Vec<PassageId> = missing.into_iter().step_by(2).collect();
                w.write(&self.model.rows(&some, *seed)).unwrap();
            }
            Op::PutPending { seed } => {
                let Some(g) = self.model.current else {
                    return;
                };
                let pending = self.model.missing(g);
                let rows = self.model.rows(&pending, *seed);
                self.db().put_phrase_rows(g, &rows).unwrap();
                self.model.generations.get_mut(&g).unwrap().1.extend(rows);
            }
            Op::Hold => match self.model.current {
                None => assert!(matches!(
                    self.db().phrase_snapshot(),
                    Err(Error::NoPhraseGeneration)
                )),
                Some(g) => {
                    let snap = self.db().phrase_snapshot().unwrap();
                    let view = self.model.view(g);
                    assert_eq!(observe(&snap), view, "a new phrase snapshot differs");
                    self.held.push((snap, view));
                }
            },
            Op::HoldAt(i) => {
                let retained: Vec<GenerationId> = self.model.generations.keys().copied().collect();
                if retained.is_empty() {
                    return;
                }
                let g = retained[i % retained.len()];
                let snap = self.db().phrase_snapshot_at(g).unwrap();
                let view = self.model.view(g);
                assert_eq!(
                    observe(&snap),
                    view,
                    "a time-travel phrase snapshot differs"
                );
                self.held.push((snap, view));
            }
            Op::Release(i) => {
                if !self.held.is_empty() {
                    let i = i % self.held.len();
                    self.held.remove(i);
                }
            }
            Op::Gc(keep) => self.gc(*keep),
            Op::Reopen => {
                // Snapshots belong to the old handle.
                self.held.clear();
                self.db = None;
                self.db = Some(Db::open(self.dir.path()).unwrap());
            }
        }
    }

    fn build(&mut self, seed: u64, f16: bool, late: bool) {
        let dtype = if f16 { Dtype::F16 } else { Dtype::F32 };
        let spec = PhraseGenerationSpec::new("model", DIM as u32, dtype);
        let mut w = self.db().begin_phrase_generation(spec).unwrap();
        let g = w.id();
        assert_eq!(g, self.model.next_generation);
        self.model.next_generation += 1;
        self.model
            .generations
            .insert(g, (GenerationState::Building, BTreeMap::new()));
        let missing = w.missing().unwrap();
        assert_eq!(missing, self.model.missing(g));
        let rows = self.model.rows(&missing, seed);
        let (first, second) = rows.split_at(rows.len() / 2);
        w.write(first).unwrap();
        w.write(second).unwrap();
        self.model.generations.get_mut(&g).unwrap().1.extend(rows);
        if late {
            self.insert(&[text(&[0, 1, 2])]);
            let missing = self.model.missing(g);
            assert!(matches!(
                w.commit(),
                Err(Error::CoverageGap { missing: n, .. }) if n == missing.len()
            ));
            let rows = self.model.rows(&missing, seed);
            w.write(&rows).unwrap();
            self.model.generations.get_mut(&g).unwrap().1.extend(rows);
        }
        assert_eq!(w.commit().unwrap(), g);
        if let Some(old) = self.model.current.replace(g) {
            self.model.generations.get_mut(&old).unwrap().0 = GenerationState::Retired;
        }
        self.model.generations.get_mut(&g).unwrap().0 = GenerationState::Committed;
    }

    fn gc(&mut self, keep: usize) {
        let pinned = |g: GenerationId| self.held.iter().any(|(s, _)| s.generation() == g);
        let mut retired: Vec<GenerationId> = self
            .model
            .generations
            .iter()
            .filter(|(_, (s, _))| *s == GenerationState::Retired)
            .map(|(g, _)| *g)
            .collect();
        retired.reverse();
        let expected: Vec<GenerationId> = retired
            .iter()
            .enumerate()
            .filter(|(rank, g)| !pinned(**g) && *rank >= keep)
            .map(|(_, g)| *g)
            .collect();
        let report = self.db().gc(keep).unwrap();
        assert_eq!(
            report.phrase_collected, expected,
            "gc collected the wrong ones"
        );
        assert!(report.collected.is_empty());
        for g in &expected {
            assert_ne!(Some(*g), self.model.current);
            self.model.generations.remove(g);
            assert!(matches!(
                self.db().phrase_snapshot_at(*g),
                Err(Error::UnknownGeneration(_))
            ));
        }
    }

    fn check(&self) {
        let report = self.db().verify().unwrap();
        assert!(report.problems.is_empty(), "verify: {:?}", report.problems);
        let records: usize = self.model.generations.values().map(|(_, r)| r.len()).sum();
        assert_eq!(report.phrase_records, records as u64);
        for (snap, view) in &self.held {
            assert_eq!(&observe(snap), view, "a held phrase snapshot changed");
        }
        let states: BTreeMap<GenerationId, GenerationState> = self
            .db()
            .phrase_generations()
            .unwrap()
            .iter()
            .map(|i| {
                assert_eq!(i.current, Some(i.manifest.id) == self.model.current);
                (i.manifest.id, i.manifest.state)
            })
            .collect();
        let expected: BTreeMap<GenerationId, GenerationState> = self
            .model
            .generations
            .iter()
            .map(|(g, (s, _))| (*g, *s))
            .collect();
        assert_eq!(states, expected);
        assert_eq!(
            self.db().current_phrase_generation().unwrap(),
            self.model.current
        );
        match self.model.current {
            None => assert!(matches!(
                self.db().phrase_snapshot(),
                Err(Error::NoPhraseGeneration)
            )),
            Some(g) => {
                let snap = self.db().phrase_snapshot().unwrap();
                assert_eq!(
                    observe(&snap),
                    self.model.view(g),
                    "a fresh snapshot differs"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn phrase_generations_match_the_oracle(ops in proptest::collection::vec(op(), 1..32)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
            h.check();
        }
    }
}
