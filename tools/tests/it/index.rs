//! Approximate indexes from the shell: built with a generation (`init --index ivf`) or added
//! to one (`index --ivf`), searched with `--nprobe` or bypassed with `--exact`, shown by
//! `stats` and checked by `check`.

use crate::cli::{Fixture, json_lines};

#[test]
fn an_index_is_built_searched_reported_and_checked() {
    let f = Fixture::empty();
    f.write("corpus.jsonl", crate::cli::CORPUS);
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    f.run(&["init", db]);
    f.run(&[
        "ingest",
        db,
        f.path("corpus.jsonl").to_str().expect("UTF-8"),
    ]);
    // No index yet: stats says nothing about one, and --nprobe falls back to exact search.
    let stats: serde_json::Value = serde_json::from_str(&f.run(&["stats", db, "--json"])).unwrap();
    assert!(stats["index"].is_null(), "{stats}");
    let exact = f.search_json("capital of Norway", &["--exact", "-k", "6"]);
    assert_eq!(
        f.search_json("capital of Norway", &["--nprobe", "1", "-k", "6"]),
        exact
    );

    let added = json_lines(&f.run(&["index", db, "--ivf", "--nlist", "2", "--json"]));
    assert_eq!(added[0]["index_version"], 1);
    assert_eq!(added[0]["nlist"], 2);
    assert_eq!(added[0]["entries"], 6);
    // Every list probed: the exact ranking, scores included.
    assert_eq!(
        f.search_json("capital of Norway", &["--nprobe", "2", "-k", "6"]),
        exact
    );
    let one = f.search_json("capital of Norway", &["--nprobe", "1", "-k", "6"]);
    assert!(!one.is_empty() && one.len() <= 6);
    assert_eq!(one[0]["title"], "Oslo");

    let stats: serde_json::Value = serde_json::from_str(&f.run(&["stats", db, "--json"])).unwrap();
    assert_eq!(stats["index"]["version"], 1, "{stats}");
    assert_eq!(stats["index"]["entries"], 6);
    assert_eq!(
        stats["index"]["list_size_min"].as_u64().unwrap()
            + stats["index"]["list_size_max"].as_u64().unwrap(),
        6
    );

    // A new generation built with its index: the first snapshot already searches it.
    let re = json_lines(&f.run(&["reindex", db, "--index", "ivf", "--nlist", "3", "--json"]));
    assert_eq!(re[0]["generation"], 2);
    let stats: serde_json::Value = serde_json::from_str(&f.run(&["stats", db, "--json"])).unwrap();
    assert_eq!(stats["index"]["nlist"], 3, "{stats}");
    let generations = json_lines(&f.run(&["generations", db, "--json"]));
    assert_eq!(generations[0]["indexes"][0]["nlist"], 2, "{generations:?}");
    assert_eq!(
        generations[1]["indexes"][0]["state"], "ready",
        "{generations:?}"
    );
    assert!(f.run(&["generations", db]).contains("ivf v1 (3)"));
    // `check` exits 0 only when every invariant holds, the index's included.
    f.run(&["check", db]);

    // The shell switches between the index and exact search.
    let out = f
        .cmd()
        .args(["shell", db])
        .write_stdin(".json on\n.nprobe 3\ncapital of Norway\n.nprobe 0\n.exact\ncapital of Norway\n.nprobe auto\n.quit\n")
        .assert()
        .success()
        .get_output()
        .clone();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("probe 3 lists"), "{out}");
    assert!(out.contains("scan every row"), "{out}");
    assert!(
        out.contains("let its size decide") || out.contains("large enough"),
        "{out}"
    );
    let tops: Vec<&str> = out.lines().filter(|l| l.contains("\"rank\":1,")).collect();
    assert_eq!(tops.len(), 2, "{out}");
    assert!(tops.iter().all(|l| l.contains("Oslo")), "{out}");

    // Bad requests are user errors.
    let err = f.user_error(&["index", db, "--ivf", "--nlist", "7"]);
    assert!(err.contains("7 lists"), "{err}");
    let err = f.user_error(&["search", db, "x", "--nprobe", "2", "--exact"]);
    assert!(err.contains("--exact"), "{err}");
}
