//! `realm-db ingest --upsert` and `realm-db delete` together: changed lines replace their
//! passages (new text, new embedding, new BM25 postings, the old ones gone from exact, index
//! and lexical search), unchanged lines stay duplicates, and deletes remove updated passages.

use crate::cli::{CORPUS, Fixture, json_lines};

const OSLO_NEW: &str = "Oslo hosts the Nobel Peace Prize ceremony every December.";

/// `export` as (external id, passage id, text, meta, whether it has an embedding).
fn exported(f: &Fixture) -> Vec<serde_json::Value> {
    let db = f.db();
    json_lines(&f.run(&["export", db.to_str().unwrap(), "--vectors"]))
}

fn by_external_id<'a>(rows: &'a [serde_json::Value], ext: &str) -> Vec<&'a serde_json::Value> {
    rows.iter().filter(|r| r["external_id"] == ext).collect()
}

/// The external ids of the hits of a search.
fn hits(f: &Fixture, query: &str, extra: &[&str]) -> Vec<String> {
    f.search_json(query, extra)
        .iter()
        .map(|h| h["external_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn ingest_upsert_replaces_changed_passages_and_delete_removes_them() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    f.run(&["index", db, "--ivf", "--nlist", "2"]);
    let before = exported(&f);
    let old_oslo = by_external_id(&before, "oslo")[0].clone();

    // Without --upsert a changed line is a duplicate and changes nothing.
    let changed = format!(r#"{{"id": "oslo", "title": "Oslo", "text": "{OSLO_NEW}"}}"#);
    let plain = f.write("plain.jsonl", &format!("{changed}\n"));
    let out = f.run(&["ingest", db, plain.to_str().unwrap()]);
    assert!(out.contains("0 inserted, 1 duplicate, 0 rejected"), "{out}");
    assert_eq!(by_external_id(&exported(&f), "oslo")[0], &old_oslo);

    // With --upsert: Oslo's text changes (twice: the later line wins), 42's metadata
    // changes, Paris is unchanged, Lima is new.
    let paris = CORPUS.lines().next().unwrap();
    let input = format!(
        "{}\n{paris}\n{}\n{}\n{changed}\n",
        r#"{"id": "oslo", "title": "Oslo", "text": "Oslo is an interim text."}"#,
        r#"{"id": 42, "title": "Photosynthesis", "text": "Photosynthesis is the process by which green plants turn sunlight, water and carbon dioxide into sugar.", "meta": {"topic": "botany"}}"#,
        r#"{"id": "lima", "title": "Lima", "text": "Lima is the capital of Peru."}"#,
    );
    let file = f.write("update.jsonl", &input);
    let out = json_lines(&f.run(&["ingest", db, file.to_str().unwrap(), "--upsert", "--json"]));
    let summary = out.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(
        (
            &summary["inserted"],
            &summary["updated"],
            &summary["duplicate"]
        ),
        (&1.into(), &3.into(), &1.into()),
        "{summary}"
    );

    // `export` shows each external id once, with the new content and an embedding.
    let after = exported(&f);
    assert_eq!(after.len(), 7);
    let oslo = by_external_id(&after, "oslo");
    assert_eq!(oslo.len(), 1);
    assert_eq!(oslo[0]["text"], OSLO_NEW);
    assert_ne!(
        oslo[0]["id"], old_oslo["id"],
        "an update gets a new passage id"
    );
    assert!(oslo[0]["embedding"].is_array(), "{}", oslo[0]);
    assert_ne!(oslo[0]["embedding"], old_oslo["embedding"]);
    assert_eq!(by_external_id(&after, "42")[0]["meta"]["topic"], "botany");
    assert_eq!(
        by_external_id(&after, "paris")[0],
        by_external_id(&before, "paris")[0]
    );

    // Dense search (exact and through the index) and BM25 find the new text only.
    for extra in [&["--exact"][..], &["--nprobe", "2"][..]] {
        let mut args = vec!["-k", "1"];
        args.extend_from_slice(extra);
        assert_eq!(hits(&f, "Nobel Peace Prize ceremony", &args), ["oslo"]);
        let mut args = vec!["-k", "10"];
        args.extend_from_slice(extra);
        let all = f.search_json("most populous city of Norway", &args);
        assert_eq!(all.len(), 7, "the old row is never returned: {all:?}");
        assert!(
            all.iter()
                .all(|h| !h["snippet"].as_str().unwrap().contains("populous")),
            "{all:?}"
        );
    }
    assert_eq!(
        hits(&f, "populous", &["--mode", "bm25"]),
        Vec::<String>::new()
    );
    assert_eq!(hits(&f, "Nobel", &["--mode", "bm25"]), ["oslo"]);
    let text = f.run(&["ingest", db, file.to_str().unwrap(), "--upsert"]);
    assert!(
        text.contains("0 inserted, 2 updated, 3 duplicate, 0 rejected"),
        "the interim Oslo line updates again, and the last line back: {text}"
    );
    f.run(&["check", db]);

    // Deleting updated and new passages by external id removes them everywhere.
    let out = json_lines(&f.run(&["delete", db, "--id", "oslo", "--id", "lima", "--json"]));
    assert_eq!(out[0]["deleted"], 2);
    for extra in [&["--exact"][..], &["--nprobe", "2"][..]] {
        let mut args = vec!["-k", "10"];
        args.extend_from_slice(extra);
        let found = hits(&f, "Nobel Peace Prize ceremony", &args);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(
            !found.iter().any(|h| h == "oslo" || h == "lima"),
            "{found:?}"
        );
    }
    assert_eq!(hits(&f, "Nobel", &["--mode", "bm25"]), Vec::<String>::new());
    let rest = exported(&f);
    assert_eq!(rest.len(), 5);
    assert!(by_external_id(&rest, "oslo").is_empty());
    f.run(&["check", db]);

    // A deleted external id comes back as an insert.
    let out = f.run(&["ingest", db, plain.to_str().unwrap(), "--upsert"]);
    assert!(
        out.contains("1 inserted, 0 updated, 0 duplicate, 0 rejected"),
        "{out}"
    );
    assert_eq!(hits(&f, "Nobel", &["--mode", "bm25"]), ["oslo"]);
    f.run(&["check", db]);
}
