//! `realm-db delete`: by external id, from a file, by passage id; an unknown name deletes
//! nothing; deleted passages leave exact and index searches alike.

use crate::cli::{Fixture, json_lines};

fn titles(hits: &[serde_json::Value]) -> Vec<String> {
    hits.iter()
        .map(|h| h["title"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn passages_are_deleted_by_external_id_file_or_passage_id() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    f.run(&["index", db, "--ivf", "--nlist", "2"]);

    // One unknown name: an error naming it, and nothing deleted.
    let err = f.user_error(&["delete", db, "--id", "paris", "--id", "nope"]);
    assert!(
        err.contains("\"nope\"") && err.contains("nothing was deleted"),
        "{err}"
    );
    assert!(titles(&f.search_json("capital of France", &["-k", "6"])).contains(&"Paris".into()));
    let err = f.user_error(&["delete", db]);
    assert!(err.contains("--id"), "{err}");

    let out = json_lines(&f.run(&["delete", db, "--id", "oslo", "--json"]));
    assert_eq!(out[0]["deleted"], 1);
    for extra in [&["--exact"][..], &["--nprobe", "2"][..]] {
        let mut args = vec!["-k", "6"];
        args.extend_from_slice(extra);
        let found = titles(&f.search_json("capital of Norway", &args));
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(!found.contains(&"Oslo".to_string()), "{found:?}");
    }

    let list = f.write("ids.txt", "paris\n\neverest\n");
    let out = json_lines(&f.run(&["delete", db, "--ids-from", list.to_str().unwrap(), "--json"]));
    assert_eq!(out[0]["deleted"], 2);
    let dna = f.search_json("genetic instructions", &["-k", "1"]);
    assert_eq!(dna[0]["title"], "DNA");
    let id = dna[0]["passage_id"]
        .as_u64()
        .or_else(|| dna[0]["id"].as_u64())
        .unwrap();
    let out = f.run(&["delete", db, "--passage", &id.to_string()]);
    assert!(out.contains("Deleted 1 passage"), "{out}");
    let stats: serde_json::Value = serde_json::from_str(&f.run(&["stats", db, "--json"])).unwrap();
    assert_eq!(stats["passages"], 2, "{stats}");
    assert_eq!(
        titles(&f.search_json("anything", &["-k", "10"])).len(),
        2,
        "only the two remaining passages are found"
    );
    let err = f.user_error(&["delete", db, "--passage", &id.to_string()]);
    assert!(err.contains("nothing was deleted"), "{err}");
    f.run(&["check", db]);
}
