//! Phrase generations through the retriever: built from a phrase encoder and published,
//! searched exactly as the encoder's own rows would be, kept up to date by ingestion,
//! pinned while newer ones are published, and searchable after they retire (time travel).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use realm_retriever::phrase::{
    PhraseBuildOptions, PhraseEncoder, PhraseHit, PhraseIndex, PhraseSearchOptions,
};
use realm_retriever::{Progress, Retriever};
use realm_storage::{Dtype, NewPassage};
use realm_testing_torch::{tiny_phrase_encoder, towns_retriever};
use tch::Device;

const QUESTION: &str = "which crop is farmed in quimbo";

fn phrase_encoder(seed: i64) -> PhraseEncoder {
    tiny_phrase_encoder(8, seed)
}

fn build(retriever: &Retriever, encoder: &PhraseEncoder) -> u64 {
    retriever
        .build_phrase_generation(
            encoder,
            PhraseBuildOptions {
                dtype: Dtype::F32,
                batch: 5,
                ..PhraseBuildOptions::default()
            },
        )
        .expect("the phrase generation builds")
}

/// Every phrase is scored: the search is exact.
fn exact() -> PhraseSearchOptions {
    PhraseSearchOptions {
        k: 12,
        max_words: 6,
        side_k: 100_000,
        nprobe: None,
    }
}

fn search(retriever: &Retriever, generation: Option<u64>) -> (u64, Vec<PhraseHit>) {
    let searcher = match generation {
        Some(g) => retriever.phrase_searcher_at(g),
        None => retriever.phrase_searcher(),
    }
    .expect("a phrase searcher");
    let hits = searcher
        .search(QUESTION, &exact())
        .expect("a phrase search");
    (searcher.generation(), hits)
}

#[test]
fn a_built_phrase_generation_holds_what_its_encoder_computes_and_grows_with_ingestion() {
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = towns_retriever(dir.path(), 1);
    let encoder = phrase_encoder(3);
    let mut reports = Vec::new();
    let mut progress = |p: Progress| reports.push(p);
    let generation = retriever
        .build_phrase_generation(
            &encoder,
            PhraseBuildOptions {
                dtype: Dtype::F32,
                batch: 5,
                progress: Some(&mut progress),
                ..PhraseBuildOptions::default()
            },
        )
        .unwrap();
    assert_eq!(reports.len(), 7);
    assert_eq!(reports.last().map(|p| (p.done, p.total)), Some((32, 32)));
    assert_eq!(
        retriever.db().current_phrase_generation().unwrap(),
        Some(generation)
    );

    // The stored rows are the encoder's rows, so the search equals one over an index built
    // from the encoder's output directly.
    let snapshot = retriever.db().snapshot().unwrap();
    let passages: Vec<_> = snapshot.passages().map(Result::unwrap).collect();
    let docs: Vec<(&str, &str)> = passages
        .iter()
        .map(|p| (p.title.as_str(), p.text.as_str()))
        .collect();
    let rows = encoder.encode_passages(&docs).unwrap();
    let tokens: usize = rows.iter().map(|r| r.len()).sum();
    let direct = PhraseIndex::build(
        8,
        passages.iter().map(|p| p.id).zip(rows).collect(),
        Device::Cpu,
    )
    .unwrap();
    let query = encoder.encode_queries(&[QUESTION]).unwrap().remove(0);
    let held = retriever.phrase_searcher().unwrap();
    assert_eq!(held.index().passage_count(), 32);
    assert_eq!(held.index().token_count(), tokens);
    assert_eq!(
        held.search(QUESTION, &exact()).unwrap(),
        direct.search(&query, &exact()).unwrap()
    );
    let manifest = retriever.db().phrase_generation(generation).unwrap();
    assert_eq!(
        (manifest.passages_written, manifest.tokens_written),
        (32, tokens as u64)
    );

    // Ingestion gives a new passage its phrase rows at once; the held searcher does not see it.
    let text = "Vornhelm is a town where the people grow blue figs.";
    let id = retriever
        .ingest(&[NewPassage::new("Vornhelm", text)])
        .unwrap()[0]
        .id();
    let fresh = retriever.phrase_searcher().unwrap();
    assert!(fresh.snapshot().pending().unwrap().is_empty());
    assert_eq!(fresh.index().passage_count(), 33);
    let expected = encoder
        .encode_passages(&[("Vornhelm", text)])
        .unwrap()
        .remove(0);
    assert!(!expected.is_empty());
    assert_eq!(fresh.snapshot().rows(id).unwrap(), Some(expected));
    assert_eq!(held.index().passage_count(), 32);
    let all = PhraseSearchOptions {
        k: 100_000,
        ..exact()
    };
    let hits = fresh.search("which fruit grows in vornhelm", &all).unwrap();
    assert!(
        hits.iter().any(|h| h.passage == id),
        "the new passage's phrases are searched"
    );

    // A deleted passage's phrases leave new searchers, not held ones.
    retriever.db().delete(&[id]).unwrap();
    let after = retriever.phrase_searcher().unwrap();
    assert_eq!(after.index().passage_count(), 32);
    assert_eq!(fresh.index().passage_count(), 33);
    assert!(fresh.snapshot().rows(id).unwrap().is_some());
    let report = retriever.db().verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn pinned_and_retired_phrase_generations_answer_as_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = towns_retriever(dir.path(), 1);
    let first = build(&retriever, &phrase_encoder(3));
    let held = retriever.phrase_searcher().unwrap();
    let before = held.search(QUESTION, &exact()).unwrap();

    let second = build(&retriever, &phrase_encoder(4));
    assert_ne!(first, second);
    let (current, now) = search(&retriever, None);
    assert_eq!(current, second);
    assert_ne!(
        now, before,
        "a different encoder scores phrases differently"
    );
    // The held searcher and time travel both see the first generation's phrases.
    assert_eq!(held.search(QUESTION, &exact()).unwrap(), before);
    assert_eq!(search(&retriever, Some(first)), (first, before));
}

#[test]
fn a_phrase_generation_published_while_searches_run_mixes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (retriever, _) = towns_retriever(dir.path(), 1);
    let first = build(&retriever, &phrase_encoder(3));
    let (_, expected_first) = search(&retriever, None);
    let done = Arc::new(AtomicBool::new(false));
    let searching = {
        let retriever = retriever.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !done.load(Ordering::SeqCst) || seen.is_empty() {
                seen.push(search(&retriever, None));
            }
            seen.push(search(&retriever, None));
            seen
        })
    };
    let second = build(&retriever, &phrase_encoder(4));
    done.store(true, Ordering::SeqCst);
    let seen = searching.join().unwrap();
    let (_, expected_second) = search(&retriever, Some(second));
    assert!(
        seen.iter().any(|(g, _)| *g == second),
        "the last search sees the new generation"
    );
    for (generation, hits) in &seen {
        let expected = if *generation == first {
            &expected_first
        } else {
            assert_eq!(*generation, second);
            &expected_second
        };
        assert_eq!(
            hits, expected,
            "a search of generation {generation} mixed generations"
        );
    }
}
