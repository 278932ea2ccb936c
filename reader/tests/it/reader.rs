//! Tests of the knowledge-augmented reader with a tiny random BERT and the real MiniLM
//! tokenizer (CPU).

use std::time::Instant;

use realm_reader::{Error, Reader, ReaderConfig};
use realm_retriever::eval::normalize_answer;
use realm_storage::NewPassage;
use realm_testing_torch::{indexed_retriever, model_dir, tiny_reader};
use tch::{Kind, Tensor};

const PASSAGES: [(u64, &str, &str, f32); 3] = [
    (
        11,
        "Hamlet",
        "Hamlet is a tragedy written by William Shakespeare around 1600, set in Denmark.",
        0.5,
    ),
    (
        22,
        "Café Müller",
        "Café Müller is a dance piece by Pina Bausch; it premiered in Wuppertal in 1978.",
        0.3,
    ),
    (
        33,
        "Globe",
        "The Globe Theatre stood in London, near the River Thames.",
        0.2,
    ),
];

#[test]
fn answer_returns_a_span_copied_from_a_passage_with_consistent_probabilities() {
    let reader = tiny_reader(7, ReaderConfig::default());
    let question = "Who wrote the tragedy Hamlet, and where is it set?";
    let answer = reader.answer(question, &PASSAGES).expect("an answer");
    assert!(
        PASSAGES.iter().any(|p| p.2.contains(&answer.text)),
        "{:?} is not copied from a passage",
        answer.text
    );
    assert_eq!(answer.evidence.len(), PASSAGES.len());
    let mut marginal = 0.0;
    for (e, p) in answer.evidence.iter().zip(&PASSAGES) {
        assert_eq!(e.passage_id, p.0);
        assert_eq!(e.title, p.1);
        assert!((e.p_z - f64::from(p.3)).abs() < 1e-9);
        assert!((0.0..=1.0).contains(&e.p_answer_given_z));
        assert!((0.0..=1.0).contains(&e.span_prob));
        let span = e.span.as_deref().expect("every passage has a best span");
        assert!(p.2.contains(span));
        marginal += e.p_z * e.p_answer_given_z;
    }
    assert!(
        (answer.prob - marginal).abs() < 1e-5,
        "{} vs {marginal}",
        answer.prob
    );
    assert!(answer.prob > 0.0 && answer.prob <= 1.0);

    // Every span lies inside its passage's tokens, is at most L tokens long, and its byte
    // offsets give back exactly the passage text its tokens came from.
    let texts: Vec<&str> = PASSAGES.iter().map(|p| p.2).collect();
    let scores = tch::no_grad(|| reader.span_scores(question, &texts, false)).expect("scores");
    let max_span = reader.config().max_span_tokens;
    for (spans, text) in scores.passages.iter().zip(&texts) {
        let pair = reader
            .tokenizer()
            .encode((question, *text), true)
            .expect("the pair encodes");
        let (lo, hi) = spans.passage_tokens;
        assert!(
            lo > 0 && hi < pair.len(),
            "the passage range excludes [CLS] and the final [SEP]"
        );
        assert!(!spans.spans.is_empty());
        for s in &spans.spans {
            assert!(s.start_token >= lo && s.end_token < hi && s.start_token <= s.end_token);
            assert!(s.end_token - s.start_token < max_span);
            assert!(
                pair.get_type_ids()[s.start_token..=s.end_token]
                    .iter()
                    .all(|&t| t == 1)
            );
            let piece = &text[s.start_byte..s.end_byte];
            assert_eq!(s.text(text), piece);
            let alone = reader
                .tokenizer()
                .encode(piece, false)
                .expect("the span encodes");
            assert_eq!(
                alone.get_ids(),
                &pair.get_ids()[s.start_token..=s.end_token],
                "the offsets of {piece:?} do not match its tokens"
            );
        }
    }

    assert!(matches!(
        reader.answer(question, &[]),
        Err(Error::NoPassages)
    ));
}

#[test]
fn span_probabilities_sum_to_one_per_passage() {
    let reader = tiny_reader(3, ReaderConfig::default());
    let texts: Vec<&str> = PASSAGES.iter().map(|p| p.2).collect();
    for train in [false, true] {
        let scores = reader
            .span_scores("Where did the Globe Theatre stand?", &texts, train)
            .expect("scores");
        assert_eq!(scores.passages.len(), texts.len());
        for p in &scores.passages {
            assert_eq!(p.log_probs.size(), [p.spans.len() as i64]);
            let total = p.log_probs.exp().sum(Kind::Double).double_value(&[]);
            assert!(
                (total - 1.0).abs() < 1e-5,
                "the span probabilities sum to {total}"
            );
        }
        if train {
            let loss = -scores.passages[0].log_probs.get(0);
            loss.backward();
            let grads = reader
                .var_store()
                .trainable_variables()
                .iter()
                .filter(|v| {
                    v.grad().defined() && v.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0
                })
                .count();
            assert!(grads > 0, "gradients reach the reader's variables");
        }
    }
}

struct Item {
    question: &'static str,
    passages: [&'static str; 3],
    answer: &'static str,
}

/// The passage that holds the answer comes first and gets the highest p(z|x), 0.5; the
/// others (0.3, 0.2) hold the answers of the other questions.
const ITEMS: [Item; 3] = [
    Item {
        question: "Who wrote Hamlet?",
        passages: [
            "Hamlet is a tragedy written by William Shakespeare around 1600.",
            "The Globe Theatre stood in London near the River Thames.",
            "Paris is the capital of France and its largest city.",
        ],
        answer: "William Shakespeare",
    },
    Item {
        question: "What is the capital of France?",
        passages: [
            "Paris is the capital of France and its largest city.",
            "Hamlet is a tragedy written by William Shakespeare around 1600.",
            "The Globe Theatre stood in London near the River Thames.",
        ],
        answer: "Paris",
    },
    Item {
        question: "Where did the Globe Theatre stand?",
        passages: [
            "The Globe Theatre stood in London near the River Thames.",
            "Paris is the capital of France and its largest city.",
            "Hamlet is a tragedy written by William Shakespeare around 1600.",
        ],
        answer: "London",
    },
];

fn answer_prob(reader: &Reader, item: &Item, log_p_z: &Tensor) -> f64 {
    let loss = tch::no_grad(|| {
        reader.qa_loss(
            item.question,
            &item.passages,
            log_p_z,
            &[item.answer.to_owned()],
            false,
        )
    })
    .expect("the loss computes")
    .expect("the answer occurs in a passage");
    (-loss.double_value(&[])).exp()
}

#[test]
fn qa_loss_training_raises_the_probability_of_the_answer() {
    use tch::nn::OptimizerConfig;
    let started = Instant::now();
    let reader = tiny_reader(11, ReaderConfig::default());
    let log_p_z = Tensor::from_slice(&[0.5f32, 0.3, 0.2]).log();
    let before: Vec<f64> = ITEMS
        .iter()
        .map(|i| answer_prob(&reader, i, &log_p_z))
        .collect();

    let mut opt = tch::nn::Adam::default()
        .build(reader.var_store(), 3e-3)
        .expect("Adam builds");
    for _step in 0..60 {
        for item in &ITEMS {
            let loss = reader
                .qa_loss(
                    item.question,
                    &item.passages,
                    &log_p_z,
                    &[item.answer.to_owned()],
                    true,
                )
                .expect("the loss computes")
                .expect("the answer occurs in a passage");
            opt.backward_step(&loss);
        }
    }
    let after: Vec<f64> = ITEMS
        .iter()
        .map(|i| answer_prob(&reader, i, &log_p_z))
        .collect();
    eprintln!(
        "p(y|x) before {before:?}, after {after:?} ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    // p(y|x) is at most p(z|x) of the one passage that holds the answer, 0.5.
    for ((item, b), a) in ITEMS.iter().zip(&before).zip(&after) {
        assert!(
            *a > 0.45 && *a > 10.0 * b,
            "{}: p(y|x) went from {b} to {a} (at most 0.5)",
            item.question
        );
        let passages: Vec<(u64, &str, &str, f32)> = item
            .passages
            .iter()
            .zip([0.5f32, 0.3, 0.2])
            .enumerate()
            .map(|(i, (t, p))| (i as u64, "", *t, p))
            .collect();
        let answer = reader.answer(item.question, &passages).expect("an answer");
        assert_eq!(
            normalize_answer(&answer.text),
            normalize_answer(item.answer)
        );
        assert!((answer.prob - a).abs() < 1e-4, "{} vs {a}", answer.prob);
    }

    let none = reader
        .qa_loss(
            ITEMS[0].question,
            &ITEMS[0].passages,
            &log_p_z,
            &["Johann Sebastian Bach".to_owned()],
            true,
        )
        .expect("the loss computes");
    assert!(none.is_none());
}

#[test]
fn mlm_head_is_tied_to_the_word_embeddings() {
    let reader = tiny_reader(5, ReaderConfig::default());
    let vocab = reader.bert_config().vocab_size;
    let hidden = reader.bert_config().hidden_size;
    let vars = reader.var_store().variables();
    let embeddings = &vars["bert.embeddings.word_embeddings.weight"];
    assert_eq!(embeddings.data_ptr(), reader.word_embeddings().data_ptr());
    let matrices = vars
        .values()
        .filter(|v| v.size() == [vocab, hidden])
        .count();
    assert_eq!(matrices, 1, "the MLM head has no output matrix of its own");
    assert_eq!(vars["mlm.bias"].size(), [vocab]);

    let ids = Tensor::from_slice(&[101i64, 7592, 2088, 102]).view([1, 4]);
    let mask = ids.ones_like();
    let types = ids.zeros_like();
    let logits = tch::no_grad(|| reader.mlm_logits(&ids, &mask, &types, false));
    assert_eq!(logits.size(), [1, 4, vocab]);

    // Zeroing one row of the embedding matrix zeroes that word's logits (the bias is zero
    // at initialization): the output projection is the embedding matrix.
    let word = 2088i64;
    tch::no_grad(|| {
        let _ = embeddings.get(word).fill_(0.0);
    });
    let after = tch::no_grad(|| reader.mlm_logits(&ids, &mask, &types, false));
    let column = after.select(2, word).abs().max().double_value(&[]);
    assert!(column < 1e-6, "the logits of a zeroed word are {column}");
    let before = logits.select(2, word).abs().max().double_value(&[]);
    assert!(before > 1e-4);
}

#[test]
fn checkpoint_round_trip_gives_identical_answers_and_fingerprint() {
    let reader = tiny_reader(9, ReaderConfig::default());
    let bytes = reader.to_checkpoint_bytes().expect("serializes");
    let copy = Reader::from_checkpoint_bytes(&bytes, ReaderConfig::default()).expect("loads");
    assert_eq!(copy.fingerprint().unwrap(), reader.fingerprint().unwrap());
    assert_eq!(copy.to_checkpoint_bytes().unwrap(), bytes);
    let question = "Who wrote Hamlet?";
    assert_eq!(
        copy.answer(question, &PASSAGES).unwrap(),
        reader.answer(question, &PASSAGES).unwrap()
    );
    let other = tiny_reader(10, ReaderConfig::default());
    assert_ne!(other.fingerprint().unwrap(), reader.fingerprint().unwrap());
    // The retrieval temperature travels with the checkpoint and is part of the fingerprint.
    let mut scaled = tiny_reader(9, ReaderConfig::default());
    assert_eq!(scaled.retrieval_scale(), 1.0);
    scaled.set_retrieval_scale(20.0).unwrap();
    assert!(scaled.set_retrieval_scale(0.0).is_err());
    assert!(scaled.set_retrieval_scale(f64::NAN).is_err());
    assert_eq!(scaled.retrieval_scale(), 20.0);
    let loaded = Reader::from_checkpoint_bytes(
        &scaled.to_checkpoint_bytes().unwrap(),
        ReaderConfig::default(),
    )
    .unwrap();
    assert_eq!(loaded.retrieval_scale(), 20.0);
    assert_ne!(loaded.fingerprint().unwrap(), reader.fingerprint().unwrap());
    for bad in [&bytes[..bytes.len() - 1], &bytes[1..], &[][..]] {
        assert!(matches!(
            Reader::from_checkpoint_bytes(bad, ReaderConfig::default()),
            Err(Error::Checkpoint { .. })
        ));
    }
}

#[test]
fn pretrained_reader_answers_a_small_example() {
    let reader =
        Reader::load(&model_dir(), ReaderConfig::default(), 1).expect("MiniLM loads as a reader");
    let answer = reader
        .answer("Who wrote Hamlet?", &PASSAGES)
        .expect("an answer");
    assert!(PASSAGES.iter().any(|p| p.2.contains(&answer.text)));
    assert!(answer.prob > 0.0 && answer.prob <= 1.0 + 1e-9);
    let marginal: f64 = answer
        .evidence
        .iter()
        .map(|e| e.p_z * e.p_answer_given_z)
        .sum();
    assert!((answer.prob - marginal).abs() < 1e-5);
    eprintln!(
        "pretrained answer {:?} with p(y|x) {:.4}",
        answer.text, answer.prob
    );
}

#[test]
fn ask_retrieves_then_answers_from_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let batch: Vec<NewPassage> = PASSAGES.iter().map(|p| NewPassage::new(p.1, p.2)).collect();
    let retriever = indexed_retriever(&dir.path().join("db"), &batch, 4);
    let snapshot = retriever.snapshot().unwrap();

    let mut reader = tiny_reader(2, ReaderConfig::default());
    let (answer, generation) =
        realm_reader::ask(&reader, &snapshot, "Who wrote Hamlet?", 2).expect("an answer");
    let hits = snapshot.search("Who wrote Hamlet?", 2).unwrap();
    assert_eq!(generation, hits[0].generation);
    assert_eq!(answer.evidence.len(), 2);
    // At scale 1, p(z|x) is the search's own softmax of the inner products.
    for (e, h) in answer.evidence.iter().zip(&hits) {
        assert_eq!(e.passage_id, h.passage_id);
        assert!((e.p_z - f64::from(h.prob)).abs() < 1e-6);
    }
    assert!(hits.iter().any(|h| h.text.contains(&answer.text)));
    // A reader trained at scale 20 sees p(z|x) = softmax(20 · score): sharper, still a
    // distribution, and p(y|x) is its marginal.
    reader.set_retrieval_scale(20.0).unwrap();
    let (sharp, _) = realm_reader::ask(&reader, &snapshot, "Who wrote Hamlet?", 2).unwrap();
    let gap = f64::from(hits[0].score - hits[1].score);
    let want = 1.0 / (1.0 + (-20.0 * gap).exp());
    assert!((sharp.evidence[0].p_z - want).abs() < 1e-5, "{sharp:?}");
    let total: f64 = sharp.evidence.iter().map(|e| e.p_z).sum();
    assert!((total - 1.0).abs() < 1e-6);
    let marginal: f64 = sharp
        .evidence
        .iter()
        .map(|e| e.p_z * e.p_answer_given_z)
        .sum();
    assert!((sharp.prob - marginal).abs() < 1e-6);
}
