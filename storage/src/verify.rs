//! A full integrity check of the store, for `realm-db check` and for crash tests.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::codec::{self, decode_u64, pair_key, pair_second};
use crate::db::{
    Db, META_NEXT_GENERATION, META_PASSAGE_COUNT, read_current, read_manifests, read_meta_u64,
    read_passage, read_phrase_current,
};
use crate::error::Result;
use crate::ivf::{self, IndexState};
use crate::lexical::{self, DocTerms};
use crate::phrase_generation::decode_phrase_manifest;
use crate::phrase_rows::PhraseRows;
use crate::rocks::{Cf, Reader};
use crate::{GenerationManifest, GenerationState, PhraseManifest};

/// What [`Db::verify`] found. The store is sound when `problems` is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub passages: u64,
    pub generations: usize,
    pub blocks: u64,
    pub rows: u64,
    /// Entries of the lexical (BM25) index.
    pub postings: u64,
    /// Entries of approximate (IVF) indexes, every version.
    pub index_entries: u64,
    /// Phrase generations, every state.
    pub phrase_generations: usize,
    /// Phrase-row records (one per passage and phrase generation).
    pub phrase_records: u64,
    /// Every violated invariant, as a sentence.
    pub problems: Vec<String>,
}

impl Db {
    /// Reads every record and checks the invariants in `docs/format.md`: checksums, the
    /// passage count, one committed current generation, no leftover building generation
    /// (on a writer), no vector data of unknown generations, blocks `0..blocks` present, and
    /// manifests' row counts equal to their index and tombstones, the lexical index
    /// holding exactly each passage's postings with totals that match, and phrase
    /// generations' manifests, query-encoder versions and row records (invariants 17 to 21).
    pub fn verify(&self) -> Result<IntegrityReport> {
        let rocks = self.rocks();
        let r: &dyn Reader = &*rocks;
        let mut report = IntegrityReport::default();
        let mut problems = Vec::new();
        let mut problem = |s: String| problems.push(s);
        let lexical_unavailable = lexical::unavailable_reason(r)?;
        let mut lexical = LexicalCheck::default();
        let mut passages = HashSet::new();
        let mut external_ids: HashMap<u64, String> = HashMap::new();
        for entry in r.scan(Cf::Passages, &[], &[]) {
            let (key, value) = entry?;
            match decode_u64(&key, &|| "a passage key".into()) {
                Ok(id) => {
                    match crate::db::decode_passage(id, &value) {
                        Ok(passage) => {
                            if lexical_unavailable.is_none() {
                                let terms = DocTerms::of(&passage.title, &passage.text);
                                lexical.passage(r, id, &terms)?;
                            }
                            if let Some(ext) = passage.external_id {
                                external_ids.insert(id, ext);
                            }
                        }
                        Err(e) => problem(e.to_string()),
                    }
                    passages.insert(id);
                }
                Err(e) => problem(e.to_string()),
            }
        }
        let counted = read_meta_u64(r, META_PASSAGE_COUNT)?.unwrap_or(0);
        if counted != passages.len() as u64 {
            problem(format!(
                "the passage count says {counted}, but {} passages are stored",
                passages.len()
            ));
        }
        let manifests: BTreeMap<u64, GenerationManifest> =
            read_manifests(r)?.into_iter().map(|m| (m.id, m)).collect();
        let current = read_current(r)?;
        let committed: Vec<u64> = manifests
            .values()
            .filter(|m| m.state == GenerationState::Committed)
            .map(|m| m.id)
            .collect();
        match current {
            Some(c) if committed != [c] => problem(format!(
                "the current generation is {c}, but the committed generations are {committed:?}"
            )),
            None if !committed.is_empty() => problem(format!(
                "no generation is current, but generations {committed:?} are committed"
            )),
            _ => {}
        }
        for m in manifests.values() {
            if m.state == GenerationState::Building && !self.is_follower() {
                problem(format!("generation {} is still building after open", m.id));
            }
        }
        let mut blocks_seen: BTreeMap<u64, u64> = BTreeMap::new();
        let mut rows_seen: BTreeMap<u64, u64> = BTreeMap::new();
        for entry in r.scan(Cf::Vectors, &[], &[]) {
            let (key, value) = entry?;
            let generation = decode_u64(&key[..8.min(key.len())], &|| "a vector key".into())?;
            let Some(m) = manifests.get(&generation) else {
                problem(format!(
                    "vector data of unknown generation {generation} is left"
                ));
                continue;
            };
            let block = pair_second(&key, &|| "a vector key".into())?;
            let mut values = Vec::new();
            match codec::decode_block(&value, m.spec.dim as usize, generation, block, &mut values) {
                Ok(rows) => {
                    *rows_seen.entry(generation).or_default() += rows.ids.len() as u64;
                    *blocks_seen.entry(generation).or_default() += 1;
                    report.blocks += 1;
                    report.rows += rows.ids.len() as u64;
                }
                Err(e) => problem(e.to_string()),
            }
        }
        let mut index_entries: BTreeMap<u64, u64> = BTreeMap::new();
        for (cf, what) in [(Cf::VectorIndex, "index"), (Cf::Tombstones, "tombstone")] {
            for entry in r.scan(cf, &[], &[]) {
                let (key, _) = entry?;
                let generation = decode_u64(&key[..8.min(key.len())], &|| "an index key".into())?;
                if !manifests.contains_key(&generation) {
                    problem(format!(
                        "{what} entries of unknown generation {generation} are left"
                    ));
                } else if cf == Cf::VectorIndex {
                    *index_entries.entry(generation).or_default() += 1;
                }
            }
        }
        for m in manifests.values() {
            let blocks = blocks_seen.get(&m.id).copied().unwrap_or(0);
            let rows = rows_seen.get(&m.id).copied().unwrap_or(0);
            let index = index_entries.get(&m.id).copied().unwrap_or(0);
            if blocks != m.blocks || rows != m.vector_count {
                problem(format!(
                    "generation {} records {} blocks and {} rows, but {blocks} blocks with {rows} rows are stored",
                    m.id, m.blocks, m.vector_count
                ));
            }
            if index != m.live_vectors() {
                problem(format!(
                    "generation {} records {} live rows, but its index has {index} entries",
                    m.id,
                    m.live_vectors()
                ));
            }
        }
        check_names(r, &passages, external_ids, &mut problem)?;
        report.index_entries = check_indexes(r, &manifests, !self.is_follower(), &mut problem)?;
        (report.phrase_generations, report.phrase_records) =
            check_phrases(r, &passages, &manifests, !self.is_follower(), &mut problem)?;
        match lexical_unavailable {
            None => report.postings = lexical.finish(r, &passages, &mut problem)?,
            // A follower of a database that no writer has upgraded yet has no index to check.
            Some(reason) if !self.is_follower() => {
                problem(format!("the lexical index is unusable: {reason}"));
            }
            Some(_) => {}
        }
        report.passages = passages.len() as u64;
        report.generations = manifests.len();
        report.problems = problems;
        Ok(report)
    }
}

/// Checks invariant 16: the external ids map exactly to the passages that carry them, and
/// rows are indexed only for stored passages and tombstoned only for removed ones (an update
/// removes the old passage, so its rows must be tombstoned, never left live).
fn check_names(
    r: &dyn Reader,
    passages: &HashSet<u64>,
    mut external_ids: HashMap<u64, String>,
    problem: &mut dyn FnMut(String),
) -> Result<()> {
    for entry in r.scan(Cf::ExternalIds, &[], &[]) {
        let (key, value) = entry?;
        let ext = String::from_utf8_lossy(&key).into_owned();
        let id = decode_u64(&value, &|| format!("external id {ext:?}"))?;
        if external_ids.get(&id) == Some(&ext) {
            external_ids.remove(&id);
        } else {
            problem(format!(
                "external id {ext:?} names passage {id}, which does not carry it"
            ));
        }
    }
    for (id, ext) in external_ids {
        problem(format!(
            "passage {id} carries external id {ext:?}, which does not name it"
        ));
    }
    for (cf, live) in [(Cf::VectorIndex, true), (Cf::Tombstones, false)] {
        let mut wrong = Vec::new();
        for entry in r.scan(cf, &[], &[]) {
            let (key, _) = entry?;
            let id = pair_second(&key, &|| "a row key".into())?;
            if passages.contains(&id) != live {
                wrong.push(id);
            }
        }
        if !wrong.is_empty() {
            let (what, state) = if live {
                ("rows are indexed", "removed")
            } else {
                ("rows are tombstoned", "stored")
            };
            problem(format!(
                "{} {what} for passages that are {state}: {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(5)]
            ));
        }
    }
    Ok(())
}

/// Checks every approximate index: its parameters fit its generation, its entries are
/// exactly one per row of the blocks it covers, and a published index of a published
/// generation covers every block. Returns the number of entries.
fn check_indexes(
    r: &dyn Reader,
    manifests: &BTreeMap<u64, GenerationManifest>,
    writer: bool,
    problem: &mut dyn FnMut(String),
) -> Result<u64> {
    let mut total = 0u64;
    for entry in r.scan(Cf::IvfIndexes, &[], &[]) {
        let (key, _) = entry?;
        let generation = decode_u64(&key[..8.min(key.len())], &|| "an index key".into())?;
        if !manifests.contains_key(&generation) {
            problem(format!(
                "approximate index records of unknown generation {generation} are left"
            ));
        }
    }
    for entry in r.scan(Cf::IvfLists, &[], &[]) {
        let (key, _) = entry?;
        let generation = decode_u64(&key[..8.min(key.len())], &|| "an index key".into())?;
        if !manifests.contains_key(&generation) {
            problem(format!(
                "approximate index entries of unknown generation {generation} are left"
            ));
            break;
        }
    }
    for m in manifests.values() {
        for info in ivf::read_infos(r, m.id)? {
            let name = format!("index {} of generation {}", info.version, m.id);
            if writer && info.state == IndexState::Building {
                problem(format!("{name} is still building after open"));
            }
            match ivf::read_params(r, m.id, info.version) {
                Ok(params) => {
                    if let Err(e) = params.check(m.spec.dim) {
                        problem(format!("{name}: {e}"));
                    } else if params.nlist != info.nlist {
                        problem(format!(
                            "{name} records {} lists, but its centroids are for {}",
                            info.nlist, params.nlist
                        ));
                    }
                }
                Err(e) => problem(e.to_string()),
            }
            let caught_up = info.covered_blocks == m.blocks;
            if info.state == IndexState::Ready && !caught_up {
                problem(format!(
                    "{name} is published but covers blocks 0..{} of {}",
                    info.covered_blocks, m.blocks
                ));
            }
            let mut seen = HashSet::new();
            let mut entries = 0u64;
            let prefix = ivf::list_prefix(m.id, info.version, None);
            for entry in r.scan(Cf::IvfLists, &prefix, &[]) {
                let (key, value) = entry?;
                entries += 1;
                if let Some(p) = ivf::entry_problem(&key, &value, m.spec.dim as usize) {
                    problem(format!("{name}: {p}"));
                    continue;
                }
                let (list, id) = ivf::split_entry_key(&key)?;
                let row = pair_key(m.id, id);
                let has_row = r.get(Cf::VectorIndex, &row)?.is_some()
                    || r.get(Cf::Tombstones, &row)?.is_some();
                if list >= info.nlist || !has_row || !seen.insert(id) {
                    problem(format!(
                        "{name}: the entry of passage {id} in list {list} is out of range, has no row in the generation, or repeats"
                    ));
                }
            }
            if entries != info.entries || (caught_up && entries != m.vector_count) {
                problem(format!(
                    "{name} records {} entries and generation {} has {} rows, but {entries} entries are stored",
                    info.entries, m.id, m.vector_count
                ));
            }
            total += entries;
        }
    }
    Ok(total)
}

/// Checks invariants 17 to 21 of phrase generations: manifests decode (in either layout) and
/// sit under their ids, which no passage generation shares and which the id counter has
/// passed; query-encoder versions count from 1 and name a checkpoint; one committed
/// phrase generation, the current one; none building on a writer; every row record belongs
/// to a phrase generation and a stored passage, decodes, fits the spec and its passage's
/// text, and no generation holds more records or tokens than it counted. Pending passages
/// are legal. Returns the numbers of phrase generations and records.
fn check_phrases(
    r: &dyn Reader,
    passages: &HashSet<u64>,
    generations: &BTreeMap<u64, GenerationManifest>,
    writer: bool,
    problem: &mut dyn FnMut(String),
) -> Result<(usize, u64)> {
    let mut manifests: BTreeMap<u64, PhraseManifest> = BTreeMap::new();
    for entry in r.scan(Cf::PhraseGenerations, &[], &[]) {
        let (key, value) = entry?;
        let id = match decode_u64(&key, &|| "a phrase generation key".into()) {
            Ok(id) => id,
            Err(e) => {
                problem(e.to_string());
                continue;
            }
        };
        match decode_phrase_manifest(&value, &|| {
            format!("the manifest of phrase generation {id}")
        }) {
            Ok(m) if m.id == id => {
                manifests.insert(id, m);
            }
            Ok(m) => problem(format!(
                "the phrase manifest stored under id {id} names phrase generation {}",
                m.id
            )),
            Err(e) => problem(e.to_string()),
        }
    }
    let next = read_meta_u64(r, META_NEXT_GENERATION)?.unwrap_or(1);
    for (&id, m) in &manifests {
        if generations.contains_key(&id) {
            problem(format!(
                "id {id} names both a generation and a phrase generation"
            ));
        }
        if id >= next {
            problem(format!(
                "phrase generation {id} is not below the next generation id {next}"
            ));
        }
        if writer && m.state == GenerationState::Building {
            problem(format!(
                "phrase generation {id} is still building after open"
            ));
        }
        let versions: Vec<u32> = m.query_encoders.iter().map(|q| q.version).collect();
        if !versions.iter().copied().eq(1..=versions.len() as u32) {
            problem(format!(
                "the query-encoder versions of phrase generation {id} are {versions:?}, but they must count 1, 2, 3, … oldest first"
            ));
        }
        for q in &m.query_encoders {
            if q.checkpoint_id.trim().is_empty() {
                problem(format!(
                    "query-encoder version {} of phrase generation {id} has an empty checkpoint id",
                    q.version
                ));
            }
        }
    }
    let committed: Vec<u64> = manifests
        .values()
        .filter(|m| m.state == GenerationState::Committed)
        .map(|m| m.id)
        .collect();
    match read_phrase_current(r)? {
        Some(c) if !manifests.contains_key(&c) => problem(format!(
            "the current phrase generation is {c}, which has no manifest"
        )),
        Some(c) if committed != [c] => problem(format!(
            "the current phrase generation is {c}, but the committed phrase generations are {committed:?}"
        )),
        None if !committed.is_empty() => problem(format!(
            "no phrase generation is current, but phrase generations {committed:?} are committed"
        )),
        _ => {}
    }
    let mut records = 0u64;
    // Per generation: live records and their tokens.
    let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut unknown_generations = BTreeSet::new();
    let mut unknown_passages = Vec::new();
    for entry in r.scan(Cf::PhraseRows, &[], &[]) {
        let (key, value) = entry?;
        records += 1;
        let (g, p) = match (
            decode_u64(&key[..8.min(key.len())], &|| "a phrase-row key".into()),
            pair_second(&key, &|| "a phrase-row key".into()),
        ) {
            (Ok(g), Ok(p)) => (g, p),
            (Err(e), _) | (_, Err(e)) => {
                problem(e.to_string());
                continue;
            }
        };
        let Some(m) = manifests.get(&g) else {
            unknown_generations.insert(g);
            continue;
        };
        if !passages.contains(&p) {
            unknown_passages.push((g, p));
            continue;
        }
        let counts = live.entry(g).or_default();
        counts.0 += 1;
        let name = format!("the phrase rows of passage {p} in phrase generation {g}");
        let rows = match PhraseRows::decode_record(&value, &|| name.clone()) {
            Ok((dtype, rows)) if dtype == m.spec.dtype => rows,
            Ok((dtype, _)) => {
                problem(format!(
                    "{name} are stored as {dtype}, but the generation stores {}",
                    m.spec.dtype
                ));
                continue;
            }
            Err(e) => {
                problem(e.to_string());
                continue;
            }
        };
        counts.1 += rows.len() as u64;
        if !rows.is_empty() && rows.dim() != m.spec.dim as usize {
            problem(format!(
                "{name} are {}-dimensional, but the generation stores {}-dimensional vectors",
                rows.dim(),
                m.spec.dim
            ));
        }
        // An undecodable passage record is reported with the passages.
        if let Ok(Some(passage)) = read_passage(r, p)
            && let Err(e) = rows.check_text(&passage.text)
        {
            problem(format!("{name} do not fit the passage's text: {e}"));
        }
    }
    for g in unknown_generations {
        problem(format!(
            "phrase rows of unknown phrase generation {g} are left"
        ));
    }
    if !unknown_passages.is_empty() {
        problem(format!(
            "{} phrase-row records name passages that are not stored (first few, as (phrase generation, passage): {:?})",
            unknown_passages.len(),
            &unknown_passages[..unknown_passages.len().min(5)]
        ));
    }
    for (g, (stored, tokens)) in live {
        let m = &manifests[&g];
        if stored > m.passages_written || tokens > m.tokens_written {
            problem(format!(
                "phrase generation {g} counts {} records of {} tokens written, but {stored} live records of {tokens} tokens are stored",
                m.passages_written, m.tokens_written
            ));
        }
    }
    Ok((manifests.len(), records))
}

/// What the lexical part of [`Db::verify`] has seen so far.
#[derive(Default)]
struct LexicalCheck {
    /// Postings the passages need.
    expected: u64,
    /// Sum of the passages' lengths in terms.
    tokens: u64,
    passages: u64,
    /// Needed postings that are missing or hold the wrong figures, with the first few.
    wrong: u64,
    examples: Vec<String>,
}

impl LexicalCheck {
    /// Checks that one passage's postings are all stored with the right figures.
    fn passage(&mut self, r: &dyn Reader, id: u64, terms: &DocTerms) -> Result<()> {
        self.passages += 1;
        self.tokens += u64::from(terms.len);
        for (term, &tf) in &terms.terms {
            self.expected += 1;
            let stored = r.get(Cf::LexicalPostings, &lexical::posting_key(term, id))?;
            let what = || format!("the lexical posting of term {term:?} in passage {id}");
            let right = match stored {
                Some(value) => lexical::decode_posting(&value, &what).ok() == Some((tf, terms.len)),
                None => false,
            };
            if !right {
                self.wrong += 1;
                if self.examples.len() < 3 {
                    self.examples.push(format!("{term:?} in passage {id}"));
                }
            }
        }
        Ok(())
    }

    /// Scans every posting (no stray or undecodable ones, as many as needed) and checks the
    /// totals; returns the number of postings.
    fn finish(
        self,
        r: &dyn Reader,
        passages: &HashSet<u64>,
        problem: &mut dyn FnMut(String),
    ) -> Result<u64> {
        if self.wrong > 0 {
            problem(format!(
                "{} lexical postings are missing or hold wrong figures (first few: {})",
                self.wrong,
                self.examples.join(", ")
            ));
        }
        let mut stored = 0u64;
        let mut stray = 0u64;
        for entry in r.scan(Cf::LexicalPostings, &[], &[]) {
            let (key, _) = entry?;
            stored += 1;
            match lexical::split_posting_key(&key) {
                Ok((_, id)) if passages.contains(&id) => {}
                Ok(_) => stray += 1,
                Err(e) => problem(e.to_string()),
            }
        }
        if stray > 0 {
            problem(format!(
                "{stray} lexical postings belong to passages that do not exist"
            ));
        }
        if stored != self.expected {
            problem(format!(
                "the lexical index holds {stored} postings, but the passages need {}",
                self.expected
            ));
        }
        let (docs, tokens) = lexical::read_totals(r)?;
        if docs != self.passages || tokens != self.tokens {
            problem(format!(
                "the lexical index counts {docs} passages of {tokens} terms in all, but {} passages of {} terms are stored",
                self.passages, self.tokens
            ));
        }
        Ok(stored)
    }
}
