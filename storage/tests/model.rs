//! Random operation sequences against an in-memory oracle.
//!
//! Checks, after every step: held snapshots never change; no reader ever sees a building
//! generation or a partial one (every visible passage has a vector or is pending); GC never
//! removes a current or pinned generation and removes exactly what the policy says; and all
//! of it survives reopening the database.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use realm_storage::{
    Db, Dtype, Error, GenerationSpec, GenerationState, GenerationWriter, NewPassage, Snapshot,
};

#[derive(Clone, Debug)]
enum Op {
    Insert {
        count: usize,
        ext: Option<u8>,
    },
    Delete(usize),
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

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..4, proptest::option::of(0u8..4)).prop_map(|(count, ext)| Op::Insert { count, ext }),
        2 => any::<usize>().prop_map(Op::Delete),
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

#[derive(Clone, Debug, PartialEq)]
struct View {
    generation: Option<u64>,
    passages: BTreeMap<u64, String>,
    vectors: BTreeMap<u64, [f32; 2]>,
    pending: Vec<u64>,
}

#[derive(Default)]
struct Model {
    passages: BTreeMap<u64, String>,
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

    fn missing(&self, g: u64) -> Vec<u64> {
        self.passages
            .keys()
            .filter(|p| !self.generations[&g].1.contains(p))
            .copied()
            .collect()
    }
}

fn observe(snap: &Snapshot) -> View {
    let passages = snap
        .passages()
        .map(|p| p.map(|p| (p.id, p.title)))
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
    snapshots: Vec<(Snapshot, View)>,
    model: Model,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path()).unwrap();
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
            .filter(|(s, _)| s.generation_id() == Some(g))
            .count()
    }

    fn apply(&mut self, op: &Op) {
        let m = &mut self.model;
        match op {
            Op::Insert { count, ext } => {
                let batch: Vec<NewPassage> = (0..*count)
                    .map(|i| {
                        let p = NewPassage::new(format!("t{}-{i}", m.next_passage), "some text");
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
                            m.passages.insert(m.next_passage, p.title.clone());
                            if let Some(e) = &p.external_id {
                                m.ext.insert(e.clone(), m.next_passage);
                            }
                            m.next_passage += 1;
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
                m.passages.remove(&id);
                m.ext.retain(|_, v| *v != id);
            }
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
                self.snapshots.push((snap, view));
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
                self.snapshots.push((snap, view));
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

    fn check(&self) {
        for (snap, view) in &self.snapshots {
            assert_eq!(&observe(snap), view, "a held snapshot changed");
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
