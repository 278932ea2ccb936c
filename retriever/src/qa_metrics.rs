//! SQuAD's answer metrics: exact match and token F1 of a predicted answer against gold
//! answers, both on [`normalize_answer`]'d text (re-exported from [`crate::eval`]).

use std::collections::HashMap;

use crate::eval::normalize_answer;

/// SQuAD v1.1 exact match: whether [`normalize_answer`] of `prediction` equals that of one
/// of `gold_answers`. A prediction that normalizes to nothing matches nothing.
pub fn exact_match_score<S: AsRef<str>>(prediction: &str, gold_answers: &[S]) -> bool {
    let predicted = normalize_answer(prediction);
    !predicted.is_empty()
        && gold_answers
            .iter()
            .any(|g| normalize_answer(g.as_ref()) == predicted)
}

/// SQuAD v1.1 token F1, the maximum over `gold_answers` (0 when there are none):
/// with the tokens of [`normalize_answer`] split on spaces, `common` is the size of the
/// multiset intersection of prediction and gold tokens, precision `common / |prediction|`,
/// recall `common / |gold|` and F1 their harmonic mean, 0 when nothing is in common (an
/// empty prediction or gold scores 0), as in the Python reference:
///
/// ```python
/// common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
/// num_same = sum(common.values())
/// if num_same == 0:
///     return 0
/// precision = 1.0 * num_same / len(prediction_tokens)
/// recall = 1.0 * num_same / len(ground_truth_tokens)
/// return (2 * precision * recall) / (precision + recall)
/// ```
pub fn f1_score<S: AsRef<str>>(prediction: &str, gold_answers: &[S]) -> f64 {
    let predicted = normalize_answer(prediction);
    let predicted: Vec<&str> = predicted.split(' ').filter(|t| !t.is_empty()).collect();
    gold_answers
        .iter()
        .map(|g| token_f1(&predicted, &normalize_answer(g.as_ref())))
        .fold(0.0, f64::max)
}

/// Token F1 of normalized prediction tokens against one normalized gold answer.
fn token_f1(predicted: &[&str], gold: &str) -> f64 {
    let gold: Vec<&str> = gold.split(' ').filter(|t| !t.is_empty()).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &gold {
        *counts.entry(t).or_insert(0) += 1;
    }
    let mut common = 0usize;
    for t in predicted {
        if let Some(n) = counts.get_mut(t)
            && *n > 0
        {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / predicted.len() as f64;
    let recall = common as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn f1_equals_hand_computations() {
        // "the Eiffel tower in Paris" -> "eiffel tower in paris" (4 tokens; "the" goes);
        // gold "Eiffel Tower" -> "eiffel tower" (2 tokens). Common 2: P = 2/4, R = 2/2,
        // F1 = 2 · 0.5 · 1 / 1.5 = 2/3.
        assert!(close(
            f1_score("the Eiffel tower in Paris", &["Eiffel Tower"]),
            2.0 / 3.0
        ));
        // Multisets: "paris paris france" vs "Paris": common is 1 (one "paris" in the gold),
        // P = 1/3, R = 1/1, F1 = 2 · (1/3) / (4/3) = 1/2.
        assert!(close(f1_score("Paris, Paris, France", &["Paris"]), 0.5));
        // The maximum over golds: vs "William Shakespeare" P = R = 1 (F1 1); vs
        // "Shakespeare" P = 1/2, R = 1 (F1 2/3).
        assert!(close(
            f1_score(
                "William Shakespeare",
                &["Shakespeare", "William Shakespeare"]
            ),
            1.0
        ));
        assert!(close(
            f1_score("William Shakespeare", &["Shakespeare"]),
            2.0 / 3.0
        ));
        // Punctuation and case vanish: "U.S. Army" -> "us army" vs "the US army" -> "us army".
        assert!(close(f1_score("U.S. Army", &["the US army"]), 1.0));
        // "1 2 3" vs "3 4": common 1, P = 1/3, R = 1/2, F1 = 2 · (1/6) / (5/6) = 2/5.
        assert!(close(f1_score("1 2 3", &["3 4"]), 0.4));
        // Nothing in common, an empty prediction, an article-only gold, no golds: 0.
        assert_eq!(f1_score("London", &["Paris"]), 0.0);
        assert_eq!(f1_score("", &["Paris"]), 0.0);
        assert_eq!(f1_score("Paris", &["the"]), 0.0);
        assert_eq!(f1_score::<&str>("Paris", &[]), 0.0);
    }

    #[test]
    fn exact_match_compares_normalized_text() {
        assert!(exact_match_score("The Beatles!", &["beatles"]));
        assert!(!exact_match_score("Beatles band", &["beatles"]));
        assert!(!exact_match_score("the", &["a"]));
    }
}
