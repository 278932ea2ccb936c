//! The answer rules of `Reader::answer_from_scores` and `Reader::answer_with`: span scores
//! are built by hand, so each rule decides a known winner.

use realm_reader::{
    AnswerOptions, Error, Marginalization, PassageSpans, Span, SpanNormalization, SpanScores,
};
use realm_retriever::eval::normalize_answer;
use realm_testing_torch::tiny_reader;
use tch::Tensor;

/// One passage: its text, p(z|x), and its spans as (first occurrence of a substring,
/// p(s|z,x)).
struct Passage {
    text: &'static str,
    p_z: f32,
    spans: Vec<(&'static str, f64)>,
}

fn passage(text: &'static str, p_z: f32, spans: &[(&'static str, f64)]) -> Passage {
    Passage {
        text,
        p_z,
        spans: spans.to_vec(),
    }
}

/// Answers `question` from hand-built span scores with `options` (a tiny reader with the
/// default `top_spans_per_passage`, 5): each span's given value q is taken as p(s|z,x) as it
/// stands, and ln q as its raw score.
fn answer(
    question: &str,
    passages: &[Passage],
    options: &AnswerOptions,
) -> realm_reader::Result<realm_reader::Answer> {
    answer_from(question, &span_scores(passages, false), passages, options)
}

/// Hand-built span scores: raw scores ln q; log p(s|z,x) = ln q as it stands, or the
/// per-passage log-softmax of the raw scores when `normalize`.
fn span_scores(passages: &[Passage], normalize: bool) -> SpanScores {
    SpanScores {
        passages: passages
            .iter()
            .map(|p| {
                let spans = p
                    .spans
                    .iter()
                    .map(|(s, _)| {
                        let start = p.text.find(s).expect("the span is in its passage");
                        Span {
                            start_byte: start,
                            end_byte: start + s.len(),
                            start_token: 0,
                            end_token: 0,
                        }
                    })
                    .collect();
                let logits: Vec<f32> = p.spans.iter().map(|(_, q)| q.ln() as f32).collect();
                let logits = Tensor::from_slice(&logits);
                let log_probs = if normalize {
                    logits.log_softmax(0, tch::Kind::Float)
                } else {
                    logits.shallow_clone()
                };
                PassageSpans {
                    spans,
                    log_probs,
                    logits,
                    passage_tokens: (0, 0),
                }
            })
            .collect(),
    }
}

fn answer_from(
    question: &str,
    scores: &SpanScores,
    passages: &[Passage],
    options: &AnswerOptions,
) -> realm_reader::Result<realm_reader::Answer> {
    let given: Vec<(u64, &str, &str, f32)> = passages
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64, "", p.text, p.p_z))
        .collect();
    let reader = tiny_reader(1, realm_reader::ReaderConfig::default());
    reader.answer_from_scores(question, &given, scores, options)
}

fn text_of(question: &str, passages: &[Passage], options: &AnswerOptions) -> String {
    answer(question, passages, options).expect("an answer").text
}

const MONA_LISA: &str = "The Mona Lisa was painted by Leonardo da Vinci in Florence.";

#[test]
fn question_words_are_dropped_unless_nothing_else_is_left() {
    let question = "Who painted the Mona Lisa?";
    let passages = [passage(
        MONA_LISA,
        1.0,
        &[
            ("Mona Lisa", 0.6),
            ("Leonardo da Vinci", 0.3),
            ("Florence", 0.1),
        ],
    )];
    let default = AnswerOptions::default();
    assert_eq!(text_of(question, &passages, &default), "Leonardo da Vinci");
    let keep = AnswerOptions {
        drop_question_words: false,
        ..AnswerOptions::default()
    };
    assert_eq!(text_of(question, &passages, &keep), "Mona Lisa");
    // The question's words are matched as whole words: "Lis" is not "lisa".
    let partial = [passage(MONA_LISA, 1.0, &[("Lis", 0.6), ("Leonardo", 0.3)])];
    assert_eq!(text_of(question, &partial, &default), "Lis");
    // Nothing else is left: the question's words answer after all.
    let only = [passage(
        MONA_LISA,
        1.0,
        &[("Mona Lisa", 0.6), ("painted", 0.3)],
    )];
    let a = answer(question, &only, &default).expect("an answer");
    assert_eq!(a.text, "Mona Lisa");
    assert_eq!(a.alternatives.len(), 2);
}

#[test]
fn answers_are_at_most_max_answer_words_long() {
    let text = "Leonardo di ser Piero da Vinci painted it.";
    let passages = [passage(
        text,
        1.0,
        &[("Leonardo di ser Piero da Vinci", 0.7), ("Leonardo", 0.2)],
    )];
    let question = "Who painted it?";
    assert_eq!(
        text_of(question, &passages, &AnswerOptions::default()),
        "Leonardo di ser Piero da Vinci"
    );
    let five = AnswerOptions {
        max_answer_words: 5,
        ..AnswerOptions::default()
    };
    assert_eq!(text_of(question, &passages, &five), "Leonardo");
    // Words are counted after normalization: the article does not count.
    let with_article = [passage(
        "The Leonardo di ser Piero painted it.",
        1.0,
        &[("The Leonardo di ser Piero", 0.7), ("Leonardo", 0.2)],
    )];
    let four = AnswerOptions {
        max_answer_words: 4,
        ..AnswerOptions::default()
    };
    assert_eq!(
        text_of(question, &with_article, &four),
        "The Leonardo di ser Piero"
    );
    let zero = AnswerOptions {
        max_answer_words: 0,
        ..AnswerOptions::default()
    };
    assert!(matches!(
        answer(question, &passages, &zero),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn stop_words_and_punctuation_alone_never_answer() {
    let text = "It is one of the works — of Leonardo, in the end.";
    // Five filler spans rank first; they do not use up the passage's five candidates.
    let passages = [passage(
        text,
        1.0,
        &[
            ("of the", 0.3),
            ("—", 0.2),
            ("It is", 0.15),
            (",", 0.1),
            ("in the", 0.1),
            ("Leonardo", 0.05),
        ],
    )];
    let a = answer("Who made it?", &passages, &AnswerOptions::default()).expect("an answer");
    assert_eq!(a.text, "Leonardo");
    assert_eq!(a.alternatives.len(), 1);
    let fillers = [passage(text, 1.0, &[("of the", 0.6), ("—", 0.4)])];
    assert!(matches!(
        answer("Who made it?", &fillers, &AnswerOptions::default()),
        Err(Error::NoCandidate { passages: 1 })
    ));
}

/// "Australia" is in four passages of p(z|x) 0.15, "Canberra" in one of 0.4.
fn australia() -> Vec<Passage> {
    let mut passages = vec![passage(
        "Canberra is the seat of government.",
        0.4,
        &[("Canberra", 0.9), ("government", 0.1)],
    )];
    for text in [
        "Australia is a country.",
        "Sydney is in Australia.",
        "Australia has six states.",
        "Melbourne, Australia.",
    ] {
        passages.push(passage(text, 0.15, &[("Australia", 0.9)]));
    }
    passages
}

#[test]
fn sum_favours_a_string_of_many_passages_and_max_does_not() {
    let question = "Which city is the capital?";
    let passages = australia();
    let sum = answer(question, &passages, &AnswerOptions::default()).expect("an answer");
    // Σ: Australia 4 · 0.15 · 0.9 = 0.54, Canberra 0.4 · 0.9 = 0.36.
    assert_eq!(sum.text, "Australia");
    assert!((sum.prob - 0.54).abs() < 1e-5, "{sum:?}");
    let max = answer(
        question,
        &passages,
        &AnswerOptions {
            marginalization: Marginalization::Max,
            ..AnswerOptions::default()
        },
    )
    .expect("an answer");
    // max: Australia 0.15 · 0.9 = 0.135, Canberra 0.36, government 0.4 · 0.1 = 0.04.
    assert_eq!(max.text, "Canberra");
    assert!((max.prob - 0.36).abs() < 1e-5, "{max:?}");
    assert!((max.alternatives[0].prob - 0.36 / (0.36 + 0.135 + 0.04)).abs() < 1e-5);
    // The evidence holds p(y|z,x) of the winner in each passage.
    assert!((max.evidence[0].p_answer_given_z - 0.9).abs() < 1e-5);
    assert_eq!(max.evidence[1].p_answer_given_z, 0.0);
}

#[test]
fn alternatives_are_distinct_sorted_and_renormalized() {
    let passages = [
        passage(
            "The Eiffel Tower is in Paris, France.",
            0.5,
            &[("The Eiffel Tower", 0.4), ("Paris", 0.3), ("France", 0.2)],
        ),
        passage(
            "Gustave Eiffel built the Eiffel Tower.",
            0.3,
            &[("Eiffel Tower", 0.5), ("Gustave Eiffel", 0.4)],
        ),
        passage("Paris hosts the tower.", 0.2, &[("Paris", 0.9)]),
    ];
    // Σ: eiffel tower 0.5·0.4 + 0.3·0.5 = 0.35, paris 0.15 + 0.18 = 0.33, gustave eiffel
    // 0.12, france 0.1; total 0.9.
    let a = answer("What landmark?", &passages, &AnswerOptions::default()).expect("an answer");
    let texts: Vec<&str> = a.alternatives.iter().map(|x| x.text.as_str()).collect();
    assert_eq!(texts, ["The Eiffel Tower", "Paris", "Gustave Eiffel"]);
    assert_eq!(a.alternatives[0].text, a.text);
    let want = [0.35 / 0.9, 0.33 / 0.9, 0.12 / 0.9];
    for (x, w) in a.alternatives.iter().zip(want) {
        assert!((x.prob - w).abs() < 1e-5, "{:?}", a.alternatives);
    }
    let total: f64 = a.alternatives.iter().map(|x| x.prob).sum();
    assert!(total <= 1.0 + 1e-9);
    let all = answer(
        "What landmark?",
        &passages,
        &AnswerOptions {
            top_answers: 10,
            ..AnswerOptions::default()
        },
    )
    .expect("an answer");
    assert_eq!(
        all.alternatives.len(),
        4,
        "one per distinct normalized text"
    );
    let total: f64 = all.alternatives.iter().map(|x| x.prob).sum();
    assert!((total - 1.0).abs() < 1e-6);
}

#[test]
fn a_reader_answers_with_distinct_alternatives_outside_the_question() {
    let reader = tiny_reader(7, realm_reader::ReaderConfig::default());
    let question = "Who wrote the tragedy Hamlet, set in Denmark?";
    let passages = [
        (
            1,
            "Hamlet",
            "Hamlet is a tragedy written by William Shakespeare around 1600, set in Denmark.",
            0.7f32,
        ),
        (2, "Globe", "The Globe Theatre stood in London.", 0.3),
    ];
    let options = AnswerOptions::default();
    let a = reader
        .answer_with(question, &passages, &options)
        .expect("an answer");
    assert_eq!(a.alternatives.len(), 3);
    assert_eq!(a.alternatives[0].text, a.text);
    let keys: Vec<String> = a
        .alternatives
        .iter()
        .map(|x| normalize_answer(&x.text))
        .collect();
    let question_words = format!(" {} ", normalize_answer(question));
    for (i, key) in keys.iter().enumerate() {
        assert!(!keys[..i].contains(key), "{keys:?}");
        assert!(!question_words.contains(&format!(" {key} ")), "{key:?}");
    }
    assert!(a.alternatives.windows(2).all(|w| w[0].prob >= w[1].prob));
}

/// "Australia" is the only span of four weak passages (p(z|x) 0.15, raw span score ln 0.5);
/// "Canberra" scores ln 20 in a passage of p(z|x) 0.4.
fn weak_australia() -> Vec<Passage> {
    let mut passages = vec![passage(
        "Canberra is the seat of government.",
        0.4,
        &[("Canberra", 20.0), ("government", 1.0)],
    )];
    for text in [
        "Australia is a country.",
        "Sydney is in Australia.",
        "Australia has six states.",
        "Melbourne, Australia.",
    ] {
        passages.push(passage(text, 0.15, &[("Australia", 0.5)]));
    }
    passages
}

#[test]
fn joint_normalization_lets_passages_without_a_good_span_give_little() {
    let passages = weak_australia();
    let scores = span_scores(&passages, true);
    let question = "Which city is the capital?";
    let with = |normalization| AnswerOptions {
        span_normalization: Some(normalization),
        ..AnswerOptions::default()
    };
    // Per passage, each weak passage's lone span gets p(s|z,x) = 1:
    // Australia 4 · 0.15 = 0.6, Canberra 0.4 · 20/21 = 0.381.
    let per_passage = answer_from(
        question,
        &scores,
        &passages,
        &with(SpanNormalization::Passage),
    )
    .expect("an answer");
    assert_eq!(per_passage.text, "Australia");
    assert!((per_passage.prob - 0.6).abs() < 1e-5, "{per_passage:?}");
    // Joint: p(s,z|x) ∝ p(z|x) · exp(score): Canberra 8, government 0.4, Australia
    // 4 · 0.075 = 0.3, out of 8.7.
    let joint = answer_from(
        question,
        &scores,
        &passages,
        &with(SpanNormalization::Joint),
    )
    .expect("an answer");
    assert_eq!(joint.text, "Canberra");
    assert!((joint.prob - 8.0 / 8.7).abs() < 1e-5, "{joint:?}");
    let australia = joint
        .alternatives
        .iter()
        .find(|a| a.text == "Australia")
        .expect("Australia is an alternative");
    assert!((australia.prob - 0.3 / 8.7).abs() < 1e-5, "{joint:?}");
    // The evidence's p(y, z|x) sums over passages to the answer's probability.
    let total: f64 = joint.evidence.iter().map(|e| e.p_answer_given_z).sum();
    assert!((total - joint.prob).abs() < 1e-6);
    // The reader's own normalization is the default (a tiny reader: per passage).
    let default =
        answer_from(question, &scores, &passages, &AnswerOptions::default()).expect("an answer");
    assert_eq!(default.text, "Australia");
}

#[test]
fn joint_log_probabilities_sum_to_one_over_every_span() {
    let passages = weak_australia();
    let scores = span_scores(&passages, true);
    let p_z: Vec<f32> = passages.iter().map(|p| p.p_z.ln()).collect();
    let log_p_z = Tensor::from_slice(&p_z);
    let total = |normalization| -> f64 {
        scores
            .log_probs_with(&log_p_z, normalization)
            .expect("log-probabilities")
            .iter()
            .map(|t| t.exp().sum(tch::Kind::Double).double_value(&[]))
            .sum()
    };
    assert!((total(SpanNormalization::Joint) - 1.0).abs() < 1e-5);
    assert!((total(SpanNormalization::Passage) - 1.0).abs() < 1e-5);
    let joint = scores
        .log_probs_with(&log_p_z, SpanNormalization::Joint)
        .expect("log-probabilities");
    // Canberra: 8 / 8.7.
    assert!((joint[0].double_value(&[0]).exp() - 8.0 / 8.7).abs() < 1e-5);
    assert!(matches!(
        scores.log_probs_with(&Tensor::from_slice(&[0.0f32]), SpanNormalization::Joint),
        Err(Error::InvalidInput { .. })
    ));
}
