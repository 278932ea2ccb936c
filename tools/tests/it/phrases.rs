//! `realm-db phrases`, `ask --phrases`, `search --phrases` and `eval --phrases` on the
//! six-passage corpus with the default MiniLM encoder (heads not trained: the tests check
//! what is built, published, listed and scored, not that the answers are right).

use crate::cli::{CORPUS, Fixture, json_lines};

/// The corpus texts, by title.
fn texts() -> Vec<(String, String)> {
    json_lines(CORPUS)
        .iter()
        .map(|p| {
            (
                p["title"].as_str().unwrap().to_owned(),
                p["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_phrase_generation_is_built_listed_searched_and_asked() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");

    // Nothing to answer from yet: a user error that names the command to run.
    let err = f.user_error(&["ask", db, "what is the capital of norway", "--phrases"]);
    assert!(err.contains("phrases") && err.contains("--build"), "{err}");
    assert!(f.run(&["phrases", db]).contains("No phrase generations"));

    let built = json_lines(&f.run(&["phrases", db, "--build", "--json", "--batch", "4"]));
    let built = &built[0];
    // Generation ids are shared with passage generations: the corpus's is 1.
    assert_eq!(built["generation"], 2);
    assert_eq!(built["passages"], 6);
    assert_eq!(built["dim"], 192, "half of MiniLM's 384 hidden units");
    assert_eq!(built["dtype"], "f16");
    let stored = built["stored_tokens"].as_u64().unwrap();
    assert!(stored > 60, "{built}");
    assert!(built["starts"].as_u64().unwrap() <= stored);

    let listed = json_lines(&f.run(&["phrases", db, "--json"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["generation"], 2);
    assert_eq!(listed[0]["current"], true);
    assert_eq!(listed[0]["tokens_written"], stored);

    let texts = texts();
    // `ask --phrases` on one question, with `extra` arguments.
    let ask = |extra: &[&str]| -> serde_json::Value {
        let question = "what is the capital of norway";
        let mut args = vec!["ask", db, question, "--phrases", "--phrase-k", "20"];
        args.extend_from_slice(extra);
        args.push("--json");
        json_lines(&f.run(&args)).remove(0)
    };
    let asked = &ask(&[]);
    assert_eq!(asked["phrase_generation"], 2);
    let answers = asked["answers"].as_array().unwrap();
    assert!(!answers.is_empty() && answers.len() <= 3);
    assert_eq!(asked["answer"], answers[0]["answer"]);
    let mut total = 0.0;
    for a in answers {
        let answer = a["answer"].as_str().unwrap();
        let title = a["title"].as_str().unwrap();
        let (_, text) = texts
            .iter()
            .find(|(t, _)| t == title)
            .expect("a corpus title");
        assert!(text.contains(answer), "{answer:?} is not in {title:?}");
        assert!(answer.split_whitespace().count() <= 10);
        total += a["prob"].as_f64().unwrap();
    }
    assert!(total > 0.0 && total <= 1.0 + 1e-9, "{total}");

    let hits = json_lines(&f.run(&[
        "search",
        db,
        "the largest ocean",
        "--phrases",
        "-k",
        "7",
        "--json",
    ]));
    assert_eq!(hits.len(), 7);
    for (rank, hit) in hits.iter().enumerate() {
        assert_eq!(hit["rank"], rank + 1);
        let (_, text) = texts
            .iter()
            .find(|(t, _)| t == hit["title"].as_str().unwrap())
            .unwrap();
        let (a, b) = (
            hit["start_byte"].as_u64().unwrap() as usize,
            hit["end_byte"].as_u64().unwrap() as usize,
        );
        assert_eq!(&text[a..b], hit["phrase"].as_str().unwrap());
    }
    let table = f.run(&["search", db, "the largest ocean", "--phrases", "-k", "3"]);
    assert!(table.lines().next().unwrap().contains("phrase"), "{table}");
    check_units(&f, db, &texts);

    f.write(
        "questions.jsonl",
        "{\"question\": \"what is the capital of norway\", \"answers\": [\"Oslo\"], \"in_corpus\": true}\n\
         {\"question\": \"which ocean is the largest\", \"answers\": [\"Pacific\", \"the Pacific Ocean\"], \"in_corpus\": true}\n\
         {\"question\": \"who painted the mona lisa\", \"answers\": [\"Leonardo da Vinci\"], \"in_corpus\": false}\n",
    );
    let qa = f.path("questions.jsonl");
    // The phrase figures of `eval --phrases` on the questions, with `extra` arguments.
    let phrase_figures = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "eval",
            db,
            "--qa",
            qa.to_str().unwrap(),
            "-k",
            "1,5",
            "--phrases",
        ];
        args.extend_from_slice(extra);
        args.push("--json");
        json_lines(&f.run(&args))
            .into_iter()
            .find(|l| l["system"] == "phrases")
            .expect("a phrases line")
    };
    let figures = &phrase_figures(&[]);
    assert_eq!(figures["questions"], 3);
    assert_eq!(figures["in_corpus_questions"], 2);
    let accuracy = figures["passage_accuracy"].as_array().unwrap();
    assert_eq!(accuracy.len(), 2);
    let (top1, top5) = (
        accuracy[0][1].as_f64().unwrap(),
        accuracy[1][1].as_f64().unwrap(),
    );
    // The Mona Lisa is in no passage, so at most 2 of the 3 questions can have a hit.
    assert!(
        0.0 <= top1 && top1 <= top5 && top5 <= 2.0 / 3.0 + 1e-9,
        "{figures}"
    );
    for key in ["em", "f1"] {
        let v = figures[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{figures}");
    }
    // Units inside passages can only hit less, documents around them only more.
    assert_eq!(figures["unit"], "passage");
    let passage_accuracy = |f: &serde_json::Value| -> Vec<f64> {
        f["passage_accuracy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap())
            .collect()
    };
    let by_passage = passage_accuracy(figures);
    for (unit, at_most) in [("sentence", true), ("phrase", true), ("document", false)] {
        let other = &phrase_figures(&["--unit", unit]);
        assert_eq!(other["unit"], unit);
        assert_eq!(other["em"], figures["em"], "{other}");
        for (a, b) in passage_accuracy(other).iter().zip(&by_passage) {
            assert!(
                if at_most { a <= b } else { a >= b },
                "{unit}: {other} against {figures}"
            );
        }
    }
    let err = f.user_error(&[
        "eval",
        db,
        "--qa",
        qa.to_str().unwrap(),
        "--unit",
        "sentence",
    ]);
    assert!(err.contains("--phrases"), "{err}");

    // Through the approximate phrase index, probing every list: the same figures.
    let probed = &phrase_figures(&["--phrase-nprobe", "65536"]);
    assert_eq!(probed["nprobe"], 65536);
    assert!(figures["nprobe"].is_null(), "{figures}");
    for key in ["em", "f1", "passage_accuracy", "in_corpus_em"] {
        assert_eq!(
            probed[key], figures[key],
            "{key}: {probed} against {figures}"
        );
    }
    let probed_answer = ask(&["--phrase-nprobe", "65536"]);
    assert_eq!(probed_answer["answers"], asked["answers"]);
    assert!(figures["questions_per_second"].as_f64().unwrap() > 0.0);

    // Ingestion encodes new passages into the phrase generation too.
    f.write(
        "more.jsonl",
        "{\"id\": \"nile\", \"title\": \"Nile\", \"text\": \"The Nile is a major river of north-eastern Africa.\"}\n",
    );
    f.run(&["ingest", db, f.path("more.jsonl").to_str().unwrap()]);
    let listed = json_lines(&f.run(&["phrases", db, "--json"]));
    assert_eq!(listed[0]["passages_written"], 7);
    let check = f.run(&["check", db]);
    assert!(
        check.contains("1 phrase generation with 7 row records"),
        "{check}"
    );
    let stats = json_lines(&f.run(&["stats", db, "--json"]));
    assert_eq!(stats[0]["current_phrase_generation"], 2);
    assert_eq!(stats[0]["phrase_generations"], 1);
}

#[test]
fn phrase_training_publishes_a_phrase_generation_that_can_be_rebuilt_with_its_filter() {
    let f = Fixture::new();
    let db = f.db();
    let db = db.to_str().expect("UTF-8 path");
    let err = f.user_error(&["phrases", db, "--build", "--from-current"]);
    assert!(
        err.contains("--from-current") && err.contains("none"),
        "{err}"
    );
    f.write(
        "train.jsonl",
        "{\"question\": \"what is the capital of norway\", \"answers\": [\"Oslo\"]}\n\
         {\"question\": \"which ocean is the largest\", \"answers\": [\"the Pacific Ocean\"]}\n\
         {\"question\": \"which river runs through paris\", \"answers\": [\"Seine\"]}\n\
         {\"question\": \"who painted the mona lisa\", \"answers\": [\"Leonardo da Vinci\"]}\n",
    );
    let qa = f.path("train.jsonl");
    let out = f.run(&[
        "train",
        db,
        "--mode",
        "phrase",
        "--qa",
        qa.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "2",
        "--candidates",
        "6",
        "--prebatch",
        "1",
        "--lr",
        "1e-4",
    ]);
    // The Mona Lisa is in no passage: three questions are supervised.
    assert!(out.contains("on 3 examples"), "{out}");
    assert!(out.contains("Published phrase generation 2"), "{out}");
    assert!(out.contains("phrase generation 2"), "{out}");
    let listed = json_lines(&f.run(&["phrases", db, "--json"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["generation"], 2);
    assert_eq!(listed[0]["current"], true);
    assert!(
        listed[0]["note"]
            .as_str()
            .unwrap()
            .starts_with("phrase training"),
        "{}",
        listed[0]
    );
    let all = listed[0]["tokens_written"].as_u64().unwrap();

    // Query-side fine-tuning over the frozen phrase generation attaches a query encoder.
    let plot = f.path("phrase-query.svg");
    let out = f.run(&[
        "train",
        db,
        "--mode",
        "phrase-query",
        "--qa",
        qa.to_str().unwrap(),
        "--eval",
        qa.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "2",
        "--candidates",
        "50",
        "--lr",
        "1e-4",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(out.contains("phrase exact match on 4 questions"), "{out}");
    assert!(
        out.contains("Attached query-encoder version 1 to phrase generation 2."),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(&plot)
            .unwrap()
            .contains("phrase EM")
    );
    let listed = json_lines(&f.run(&["phrases", db, "--json"]));
    let current = listed.iter().find(|g| g["current"] == true).unwrap();
    assert_eq!(current["generation"], 2);
    assert_eq!(current["query_encoder_version"], 1);
    assert_ne!(current["query_encoder"], current["encoder"]);
    assert!(f.run(&["phrases", db]).contains("v1 "));
    let asked = json_lines(&f.run(&[
        "ask",
        db,
        "what is the capital of norway",
        "--phrases",
        "--json",
    ]));
    assert_eq!(asked[0]["phrase_generation"], 2);

    // The trained encoder rebuilds with its filter: a high threshold keeps fewer tokens.
    let rebuilt = json_lines(&f.run(&[
        "phrases",
        db,
        "--build",
        "--from-current",
        "--filter-threshold",
        "0.5",
        "--json",
    ]));
    assert_eq!(rebuilt[0]["generation"], 3);
    let kept = rebuilt[0]["stored_tokens"].as_u64().unwrap();
    assert!(0 < kept && kept < all, "{kept} of {all}");
    let listed = json_lines(&f.run(&["phrases", db, "--json"]));
    let current = listed.iter().find(|g| g["current"] == true).unwrap();
    assert_eq!(current["generation"], 3);
    assert_eq!(current["filter_threshold"], 0.5);
    assert_eq!(current["query_encoder_version"], serde_json::Value::Null);
    let asked = json_lines(&f.run(&[
        "ask",
        db,
        "what is the capital of norway",
        "--phrases",
        "--json",
    ]));
    assert_eq!(asked[0]["phrase_generation"], 3);
}

/// `search --unit`: sentences, passages and documents, each once, scored by its best phrase
/// (which lies inside it), ranked as the distinct units of a long phrase list rank.
fn check_units(f: &Fixture, db: &str, texts: &[(String, String)]) {
    let query = "the largest ocean";
    let phrases = json_lines(&f.run(&["search", db, query, "--phrases", "-k", "100", "--json"]));
    let text_of = |title: &str| {
        texts
            .iter()
            .find(|(t, _)| t == title)
            .map(|(_, text)| text.as_str())
            .expect("a corpus title")
    };
    for unit in ["sentence", "passage", "document"] {
        let units = json_lines(&f.run(&["search", db, query, "--unit", unit, "-k", "3", "--json"]));
        assert!(!units.is_empty() && units.len() <= 3, "{units:?}");
        // The best phrase of all is the best unit's.
        assert_eq!(units[0]["score"], phrases[0]["score"], "{unit}");
        assert_eq!(units[0]["phrase"], phrases[0]["phrase"], "{unit}");
        let mut seen = std::collections::HashSet::new();
        for (rank, u) in units.iter().enumerate() {
            assert_eq!(u["rank"], rank + 1);
            assert_eq!(u["unit"], unit);
            assert_eq!(u["phrase_generation"], 2);
            let (title, text, phrase) = (
                u["title"].as_str().unwrap(),
                u["text"].as_str().unwrap(),
                u["phrase"].as_str().unwrap(),
            );
            let passage_text = text_of(title);
            let (a, b) = (
                u["start_byte"].as_u64().unwrap() as usize,
                u["end_byte"].as_u64().unwrap() as usize,
            );
            assert_eq!(&passage_text[a..b], phrase);
            match unit {
                "sentence" => {
                    assert!(passage_text.contains(text) && text.contains(phrase), "{u}");
                    assert!(
                        text.len() < passage_text.len() || !text.contains(". "),
                        "{u}"
                    );
                }
                "passage" => assert_eq!(text, passage_text),
                _ => assert_eq!(text, title),
            }
            let key = match unit {
                "passage" => u["passage"].to_string(),
                _ => text.to_owned(),
            };
            assert!(seen.insert(key), "{unit} listed twice: {units:?}");
            if rank > 0 {
                assert!(u["score"].as_f64() <= units[rank - 1]["score"].as_f64());
            }
        }
    }
    // Passages and documents rank as the first phrases of each among the phrase list.
    let mut first = Vec::new();
    let mut titles = Vec::new();
    for p in &phrases {
        if !first.contains(&p["passage"]) {
            first.push(p["passage"].clone());
        }
        if !titles.contains(&p["title"]) {
            titles.push(p["title"].clone());
        }
    }
    let listed = |unit: &str, field: &str| -> Vec<serde_json::Value> {
        json_lines(&f.run(&["search", db, query, "--unit", unit, "-k", "3", "--json"]))
            .iter()
            .map(|u| u[field].clone())
            .collect()
    };
    assert_eq!(listed("passage", "passage"), first[..first.len().min(3)]);
    assert_eq!(listed("document", "title"), titles[..titles.len().min(3)]);
    let table = f.run(&["search", db, query, "--unit", "sentence", "-k", "2"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("sentence") && header.contains("best phrase"),
        "{table}"
    );
    // --generation names a phrase generation here; an unknown one is a user error.
    let again = json_lines(&f.run(&[
        "search",
        db,
        query,
        "--unit",
        "passage",
        "-k",
        "3",
        "--generation",
        "2",
        "--json",
    ]));
    assert_eq!(again.len(), listed("passage", "passage").len());
    f.user_error(&[
        "search",
        db,
        query,
        "--unit",
        "passage",
        "--generation",
        "99",
    ]);

    // Passage-retrieval options mean nothing to a phrase search: refused, not ignored.
    for extra in [["--mode", "bm25"], ["--nprobe", "4"]] {
        let err = f.user_error(&["search", db, query, "--unit", "passage", extra[0], extra[1]]);
        assert!(err.contains(extra[0]), "{err}");
    }

    // The shell keeps the phrase generation loaded and switches units, and back.
    let out = f
        .cmd()
        .args(["shell", db])
        .write_stdin(format!(
            ".json on\n.k 3\n.unit passage\n{query}\n.phrase-nprobe 0\n.phrase-nprobe 65536\n{query}\n\
             .phrase-nprobe off\n.unit bogus\n.unit off\n{query}\n.quit\n"
        ))
        .assert()
        .success()
        .get_output()
        .clone();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("Queries now list passages from phrase generation 2"),
        "{stdout}"
    );
    assert!(stderr.contains("`.unit` takes"), "{stderr}");
    assert!(stderr.contains("`.phrase-nprobe` takes"), "{stderr}");
    assert!(
        stdout.contains("Approximate phrase index:")
            && stdout.contains("Phrase queries probe 65536 lists per side")
            && stdout.contains("Phrase queries scan every start and end."),
        "{stdout}"
    );
    let ranked: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let units: Vec<_> = ranked.iter().filter(|l| l["unit"] == "passage").collect();
    let passages: Vec<_> = units.iter().map(|u| u["passage"].clone()).collect();
    // Exact scans, then the approximate index probing every list: the same passages.
    assert_eq!(passages.len(), 6, "{stdout}");
    assert_eq!(passages[..3], listed("passage", "passage"), "{stdout}");
    assert_eq!(passages[3..], passages[..3], "{stdout}");
    assert_eq!(
        ranked.len(),
        units.len() + 3,
        "passage hits after .unit off: {stdout}"
    );
}
