//! MLM scoring for REALM pre-training with a tiny random reader and the real MiniLM
//! tokenizer.

use realm_testing_torch::{reader_config, tiny_reader};

#[test]
fn mlm_log_likelihoods_per_passage_and_null_document() {
    let reader = tiny_reader(3, reader_config(32));
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
