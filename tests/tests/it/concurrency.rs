//! Incremental ingestion under load: one thread ingests batches (embedding them in the same
//! atomic write) and deletes passages, another publishes new generations, and several
//! threads search. Every
//! result belongs wholly to its snapshot, and passages become visible to every snapshot
//! taken after their ingest call returned.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use realm_db::{BuildOptions, NewPassage};
use realm_testing_torch::{indexed_retriever, tiny_encoder};

fn passage(i: u64) -> NewPassage {
    NewPassage::new(
        format!("topic {i}"),
        format!("passage number {i} about subject {}", i * 7919 % 1000),
    )
    .with_external_id(format!("p{i}"))
}

#[test]
fn ingest_publish_and_search_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let retriever = indexed_retriever(dir.path(), &(0..20).map(passage).collect::<Vec<_>>(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    // Highest passage index whose ingest call has returned.
    let acknowledged = Arc::new(AtomicU64::new(19));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let searches = Arc::new(AtomicU64::new(0));

    std::thread::scope(|s| {
        let ingester = {
            let (retriever, acknowledged) = (retriever.clone(), acknowledged.clone());
            s.spawn(move || {
                for round in 0..12u64 {
                    let batch: Vec<NewPassage> = (20 + round * 5..20 + (round + 1) * 5)
                        .map(passage)
                        .collect();
                    retriever.ingest(&batch).unwrap();
                    acknowledged.store(20 + (round + 1) * 5 - 1, Ordering::SeqCst);
                    // Deletes race with the builds too (p0..p9; probes never ask for them).
                    if round < 10 {
                        let snap = retriever.db().snapshot().unwrap();
                        let victim = snap.get_by_external_id(&format!("p{round}")).unwrap();
                        retriever.db().delete(&[victim.unwrap().id]).unwrap();
                    }
                }
            })
        };
        let publisher = {
            let retriever = retriever.clone();
            s.spawn(move || {
                for seed in 2..4 {
                    retriever
                        .build_generation(&tiny_encoder(seed), BuildOptions::default())
                        .unwrap();
                }
            })
        };
        for t in 0..3u64 {
            let (retriever, stop, acknowledged, failures, searches) = (
                retriever.clone(),
                stop.clone(),
                acknowledged.clone(),
                failures.clone(),
                searches.clone(),
            );
            s.spawn(move || {
                let fail = |m: String| failures.lock().unwrap().push(m);
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    i += 3;
                    let visible_before = acknowledged.load(Ordering::SeqCst);
                    let snap = retriever.snapshot().unwrap();
                    let generation = snap.generation_id();
                    // Visibility: everything acknowledged before the snapshot is in it, with
                    // a vector (ingest embeds in the same write).
                    let probe = visible_before - (i % 10);
                    let ext = format!("p{probe}");
                    match snap.storage().get_by_external_id(&ext).unwrap() {
                        None => fail(format!("{ext} acknowledged but invisible")),
                        Some(p) if snap.storage().vector(p.id).unwrap().is_none() => {
                            fail(format!("{ext} visible without a vector"))
                        }
                        Some(_) => {}
                    }
                    let query = passage(probe);
                    let text = format!("{} {}", query.title, query.text);
                    let encoder = snap.query_encoder().unwrap();
                    let q = encoder.encode(&[text.as_str()]).unwrap();
                    let hits = snap.search_vectors(&q, 5).unwrap().remove(0);
                    let qv: Vec<f32> = Vec::try_from(&q.view(-1)).unwrap();
                    for hit in &hits {
                        if hit.generation != generation.unwrap() {
                            fail(format!(
                                "hit from generation {} in a snapshot of {generation:?}",
                                hit.generation
                            ));
                        }
                        // The score must come from this snapshot's generation's vector.
                        match snap.storage().vector(hit.passage_id).unwrap() {
                            None => fail(format!(
                                "hit {} has no vector in its snapshot",
                                hit.passage_id
                            )),
                            Some(v) => {
                                let dot: f32 = v.iter().zip(&qv).map(|(a, b)| a * b).sum();
                                if (dot - hit.score).abs() > 1e-4 {
                                    fail(format!(
                                        "hit {} scored {} but its vector gives {dot}",
                                        hit.passage_id, hit.score
                                    ));
                                }
                            }
                        }
                    }
                    if hits.first().map(|h| h.title.as_str()) != Some(query.title.as_str()) {
                        fail(format!("the exact text of {ext} did not rank first"));
                    }
                    searches.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        // Stop the searchers whatever happened, then report a writer's panic.
        let ingested = ingester.join();
        let published = publisher.join();
        stop.store(true, Ordering::SeqCst);
        ingested.expect("the ingesting thread panicked");
        published.expect("the publishing thread panicked");
    });
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(searches.load(Ordering::SeqCst) > 10);
    let snap = retriever.snapshot().unwrap();
    assert_eq!(snap.storage().passage_count().unwrap(), 70);
    assert!(snap.storage().get_by_external_id("p3").unwrap().is_none());
    assert!(snap.storage().pending().unwrap().is_empty());
    assert!(retriever.db().verify().unwrap().problems.is_empty());
}
