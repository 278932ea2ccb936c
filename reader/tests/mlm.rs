//! MLM scoring for REALM pre-training with a tiny random reader and the real MiniLM
//! tokenizer.

use realm_reader::{Reader, ReaderConfig};
use realm_retriever::bert::BertConfig;
use realm_retriever::default_model_dir;
use realm_retriever::encoder::load_tokenizer;

fn tiny_reader() -> Reader {
    let dir = default_model_dir().expect("the MiniLM model folder is installed");
    let tokenizer = load_tokenizer(&dir.join("tokenizer.json")).expect("tokenizer.json loads");
    let vocab = tokenizer.get_vocab_size(true) as i64;
    let cfg = ReaderConfig {
        max_len: 32,
        ..ReaderConfig::default()
    };
    Reader::random(BertConfig::tiny(vocab), tokenizer, cfg, 3).expect("a tiny reader builds")
}

#[test]
fn mlm_log_likelihoods_per_passage_and_null_document() {
    let reader = tiny_reader();
    let text = "the capital of zorblat is london.";
    let tokens = reader.tokenize_sentence(text).unwrap();
    assert_eq!(tokens.ids.len(), tokens.offsets.len());
    let at = tokens
        .offsets
        .iter()
        .position(|&(s, e)| &text[s..e] == "london")
        .unwrap();
    let mask = reader.special_token_id("[MASK]").unwrap();
    let mut ids = tokens.ids.clone();
    ids[at] = mask;
    let targets = [(at, tokens.ids[at])];
    let long = "word ".repeat(100);
    let passages = ["london is the capital of zorblat.", long.as_str(), ""];
    let lp = tch::no_grad(|| {
        reader
            .mlm_log_likelihoods(&ids, &targets, &passages, false)
            .unwrap()
    });
    assert_eq!(lp.size(), vec![3]);
    let values = Vec::<f64>::try_from(&lp).unwrap();
    assert!(
        values.iter().all(|v| v.is_finite() && *v < 0.0),
        "{values:?}"
    );
    // The null document alone equals a batch of one.
    let alone = tch::no_grad(|| {
        reader
            .mlm_log_likelihoods(&ids, &targets, &[""], false)
            .unwrap()
    });
    let diff = (alone.get(0) - lp.get(2)).abs().double_value(&[]);
    assert!(diff < 1e-4, "{diff}");
    // Gradient flows when enabled.
    let lp = reader
        .mlm_log_likelihoods(&ids, &targets, &passages[..1], true)
        .unwrap();
    assert!(lp.requires_grad());
    // Bad input is refused.
    assert!(
        reader
            .mlm_log_likelihoods(&ids, &[], &passages, false)
            .is_err()
    );
    assert!(
        reader
            .mlm_log_likelihoods(&ids, &[(ids.len(), 1)], &passages, false)
            .is_err()
    );
    assert!(reader.special_token_id("[NOPE]").is_err());
}
