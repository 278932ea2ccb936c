//! DensePhrases' phrase side: phrase rows hold exactly the word boundaries the filter keeps,
//! at their real byte offsets; two-sided search against a brute-force scoring of every
//! phrase; answers pooled from phrases; checkpoints; bad input.

use proptest::prelude::*;
use realm_retriever::Error;
use realm_retriever::phrase::{
    PassageText, PhraseEncoder, PhraseEncoderConfig, PhraseHit, PhraseIndex, PhraseQuery,
    PhraseRows, PhraseSearchOptions, PhraseTargets, PhraseToken, QueryPooling, RetrievalUnit,
    UnitSpan, phrase_answers, roll_up,
};
use realm_retriever::random::SplitMix64;
use realm_testing_torch::{fixture_bert, fixture_tokenizer};
use tch::{Device, Kind, Tensor};

const DIM: i64 = 8;

const PASSAGES: [(&str, &str); 3] = [
    ("Hamlet", "Hamlet was written by William Shakespeare."),
    ("Nothing", ""),
    ("Globe", "The Globe Theatre stood near the river Thames."),
];

fn config(filter_threshold: f64) -> PhraseEncoderConfig {
    PhraseEncoderConfig {
        max_len: 32,
        filter_threshold,
        batch_size: 2,
        device: Device::Cpu,
    }
}

fn encoder(filter_threshold: f64) -> PhraseEncoder {
    PhraseEncoder::random(
        fixture_bert(),
        fixture_tokenizer(),
        DIM,
        config(filter_threshold),
        7,
    )
    .expect("a tiny phrase encoder builds")
}

fn texts(rows: &PhraseRows, text: &str) -> Vec<(String, bool, bool, u32)> {
    rows.tokens()
        .iter()
        .map(|t| {
            let slice = &text[t.start_byte as usize..t.end_byte as usize];
            (slice.to_owned(), t.starts, t.ends, t.word)
        })
        .collect()
}

#[test]
fn rows_hold_the_word_boundaries_of_the_text_at_their_byte_offsets() {
    let rows = encoder(0.0).encode_passages(&PASSAGES).unwrap();
    assert_eq!(rows.len(), 3);
    let expected: Vec<(String, bool, bool, u32)> = [
        ("Ham", true, false, 0),
        ("let", false, true, 0),
        ("was", true, true, 1),
        ("written", true, true, 2),
        ("by", true, true, 3),
        ("William", true, true, 4),
        ("Shakespeare", true, true, 5),
        (".", true, true, 6),
    ]
    .into_iter()
    .map(|(s, a, b, w)| (s.to_owned(), a, b, w))
    .collect();
    assert_eq!(texts(&rows[0], PASSAGES[0].1), expected);
    // No token of the title is stored, and an empty text has no rows.
    assert!(rows[1].is_empty());
    assert_eq!(rows[2].len(), 9);
    assert!(rows[2].tokens().iter().all(|t| t.starts && t.ends));
    for (r, (_, text)) in rows.iter().zip(PASSAGES) {
        r.check_text(text).unwrap();
        assert_eq!(r.dim(), DIM as usize);
        assert!(r.start_values().iter().all(|v| v.is_finite()));
    }
    // "Hamlet was" is a phrase of 2 words, "let" alone cannot start one.
    let phrases = rows[0].phrases(2);
    let spans: Vec<&str> = phrases
        .iter()
        .map(|&(i, j)| {
            let (a, b) = (rows[0].tokens()[i], rows[0].tokens()[j]);
            &PASSAGES[0].1[a.start_byte as usize..b.end_byte as usize]
        })
        .collect();
    assert_eq!(
        spans,
        [
            "Hamlet",
            "Hamlet was",
            "was",
            "was written",
            "written",
            "written by",
            "by",
            "by William",
            "William",
            "William Shakespeare",
            "Shakespeare",
            "Shakespeare.",
            "."
        ]
    );
}

/// Gives the filter head random weights so that its probabilities differ between tokens.
fn randomize_filter(encoder: &PhraseEncoder) {
    let vars = encoder.var_store().variables();
    let mut weight = vars["phrase.filter.weight"].shallow_clone();
    let random = Tensor::randn(weight.size(), (Kind::Float, Device::Cpu)) * 3.0;
    tch::no_grad(|| weight.copy_(&random));
}

#[test]
fn the_filter_keeps_exactly_the_tokens_at_or_above_its_threshold() {
    tch::manual_seed(11);
    let mut phrase = encoder(0.0);
    randomize_filter(&phrase);
    let all = phrase.encode_passages(&PASSAGES).unwrap();
    let (batch, encodings) = phrase.tokenize_passages(&PASSAGES).unwrap();
    let probabilities = tch::no_grad(|| phrase.passage_forward_t(&batch, false).filter.sigmoid());
    // Threshold 0 keeps every word boundary whatever the filter says.
    assert_eq!(all[0].len(), 8);
    assert_eq!(all[2].len(), 9);
    phrase.set_filter_threshold(0.5).unwrap();
    let kept = phrase.encode_passages(&PASSAGES).unwrap();
    let mut dropped = 0;
    for (p, (rows_all, rows_kept)) in all.iter().zip(&kept).enumerate() {
        let text_tokens: Vec<usize> = encodings[p]
            .get_sequence_ids()
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Some(1))
            .map(|(i, _)| i)
            .collect();
        let mut expected = Vec::new();
        for token in rows_all.tokens() {
            let i = text_tokens[token.position as usize] as i64;
            let starts = token.starts && probabilities.double_value(&[p as i64, i, 0]) >= 0.5;
            let ends = token.ends && probabilities.double_value(&[p as i64, i, 1]) >= 0.5;
            if starts || ends {
                expected.push(PhraseToken {
                    starts,
                    ends,
                    ..*token
                });
            } else {
                dropped += 1;
            }
        }
        assert_eq!(rows_kept.tokens(), expected.as_slice());
        // A kept token keeps its vectors.
        for (k, token) in rows_kept.tokens().iter().enumerate() {
            let a = rows_all
                .tokens()
                .iter()
                .position(|t| t.position == token.position)
                .unwrap();
            assert_eq!(rows_kept.start_vector(k), rows_all.start_vector(a));
            assert_eq!(rows_kept.end_vector(k), rows_all.end_vector(a));
        }
    }
    assert!(
        dropped > 0,
        "the random filter dropped nothing; the test proves nothing"
    );
    phrase.set_filter_threshold(1.5).unwrap();
    assert!(
        phrase
            .encode_passages(&PASSAGES)
            .unwrap()
            .iter()
            .all(PhraseRows::is_empty)
    );
}

/// Random rows: `tokens` tokens in words of one or two tokens, random flags and vectors.
/// Passages 10, 13, 16… with random rows of `sizes[i]` tokens each.
pub(crate) fn random_passages(
    rng: &mut SplitMix64,
    dim: usize,
    sizes: &[usize],
) -> Vec<(u64, PhraseRows)> {
    sizes
        .iter()
        .enumerate()
        .map(|(p, &n)| (10 + 3 * p as u64, random_rows(rng, dim, n)))
        .collect()
}

/// A query with standard normal start and end vectors.
pub(crate) fn random_query(rng: &mut SplitMix64, dim: usize) -> PhraseQuery {
    let mut vector = || (0..dim).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    PhraseQuery {
        start: vector(),
        end: vector(),
    }
}

/// What identifies a phrase hit: its passage and its start and end token positions.
pub(crate) fn hit_key(h: &PhraseHit) -> (u64, u32, u32) {
    (h.passage, h.start_position, h.end_position)
}

pub(crate) fn random_rows(rng: &mut SplitMix64, dim: usize, tokens: usize) -> PhraseRows {
    let mut list = Vec::new();
    let (mut word, mut byte) = (0u32, 0u32);
    for position in 0..tokens as u32 {
        if position > 0 && !rng.next_u64().is_multiple_of(3) {
            word += 1;
        }
        let flags = rng.next_u64() % 3;
        list.push(PhraseToken {
            position,
            word,
            start_byte: byte,
            end_byte: byte + 3,
            starts: flags != 1,
            ends: flags != 0,
        });
        byte += 4;
    }
    let mut values = || {
        (0..tokens * dim)
            .map(|_| rng.normal() as f32)
            .collect::<Vec<f32>>()
    };
    let start = values();
    let end = values();
    PhraseRows::new(dim, list, start, end).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Every phrase of every passage, scored: (passage, start position, end position, score,
/// start score, end score).
pub(crate) fn all_phrases(
    passages: &[(u64, PhraseRows)],
    query: &PhraseQuery,
    max_words: usize,
) -> Vec<(u64, u32, u32, f32, f32, f32)> {
    let mut out = Vec::new();
    for (id, rows) in passages {
        for (i, j) in rows.phrases(max_words) {
            let s = dot(&query.start, rows.start_vector(i));
            let e = dot(&query.end, rows.end_vector(j));
            out.push((
                *id,
                rows.tokens()[i].position,
                rows.tokens()[j].position,
                s + e,
                s,
                e,
            ));
        }
    }
    out.sort_by(|a, b| {
        b.3.total_cmp(&a.3)
            .then(a.0.cmp(&b.0))
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// With sides as large as the index the two-sided search scores every phrase, so it
    /// equals the brute force; with small sides every hit is a real phrase with its exact
    /// score, and the best phrase is found whenever its start is among the best starts or
    /// its end among the best ends.
    #[test]
    fn two_sided_search_against_brute_force(
        seed in any::<u64>(),
        dim in 1usize..6,
        sizes in proptest::collection::vec(0usize..12, 1..6),
        max_words in 1usize..5,
        side_k in 1usize..6,
        k in 1usize..8,
    ) {
        let mut rng = SplitMix64::new(seed);
        let passages = random_passages(&mut rng, dim, &sizes);
        let query = random_query(&mut rng, dim);
        let index = PhraseIndex::build(dim, passages.clone(), Device::Cpu).unwrap();
        let oracle = all_phrases(&passages, &query, max_words);

        let exact = PhraseSearchOptions { k, max_words, side_k: index.token_count().max(1), nprobe: None };
        let hits = index.search(&query, &exact).unwrap();
        let expected: Vec<(u64, u32, u32)> = oracle.iter().take(k).map(|o| (o.0, o.1, o.2)).collect();
        prop_assert_eq!(hits.iter().map(hit_key).collect::<Vec<_>>(), expected);
        for (hit, o) in hits.iter().zip(&oracle) {
            prop_assert!((hit.score - o.3).abs() <= 1e-5 * (1.0 + o.3.abs()));
        }

        let small = PhraseSearchOptions { k, max_words, side_k, nprobe: None };
        let hits = index.search(&query, &small).unwrap();
        // A batch answers each query as a search of it alone does.
        let other = PhraseQuery { start: query.end.clone(), end: query.start.clone() };
        let batch = index.search_batch(&[query.clone(), other.clone(), query.clone()], &small).unwrap();
        prop_assert_eq!(&batch[0], &hits);
        prop_assert_eq!(&batch[1], &index.search(&other, &small).unwrap());
        prop_assert_eq!(&batch[2], &hits);
        for pair in hits.windows(2) {
            prop_assert!(pair[0].score >= pair[1].score);
        }
        for hit in &hits {
            let o = oracle.iter().find(|o| (o.0, o.1, o.2) == hit_key(hit));
            prop_assert!(o.is_some(), "the hit {:?} is not a phrase", hit);
            prop_assert!((hit.score - o.unwrap().3).abs() <= 1e-5 * (1.0 + hit.score.abs()));
        }
        if let Some(best) = oracle.first() {
            let rank = |score: f32, all: Vec<f32>| all.iter().filter(|&&s| s > score).count();
            let starts: Vec<f32> = passages.iter().flat_map(|(_, r)| {
                (0..r.len()).filter(|&i| r.tokens()[i].starts).map(|i| dot(&query.start, r.start_vector(i))).collect::<Vec<_>>()
            }).collect();
            let ends: Vec<f32> = passages.iter().flat_map(|(_, r)| {
                (0..r.len()).filter(|&j| r.tokens()[j].ends).map(|j| dot(&query.end, r.end_vector(j))).collect::<Vec<_>>()
            }).collect();
            if rank(best.4, starts) < side_k || rank(best.5, ends) < side_k {
                prop_assert_eq!(hits.first().map(hit_key), Some((best.0, best.1, best.2)));
            }
        }
    }
}

/// A text for [`random_rows`]' byte offsets (token `t` at bytes `4t..4t + 3`): capitalized
/// three-letter tokens joined by spaces, where a token ending in `.` ends a sentence.
fn random_text(rng: &mut SplitMix64, tokens: usize) -> (String, Vec<usize>) {
    let mut text = String::new();
    let mut sentence_of = Vec::new();
    let mut sentence = 0;
    for t in 0..tokens {
        if t > 0 {
            text.push(' ');
        }
        let ends = rng.next_u64().is_multiple_of(4);
        text.push_str(if ends { "Ab." } else { "Abc" });
        sentence_of.push(sentence);
        sentence += usize::from(ends);
    }
    (text, sentence_of)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Every phrase retrieved and rolled up: each unit appears once, scored by the best of
    /// all its phrases (by brute force), best first.
    #[test]
    fn units_score_as_their_best_phrase_against_brute_force(
        seed in any::<u64>(),
        sizes in proptest::collection::vec(0usize..10, 1..6),
        max_words in 1usize..4,
        k in 1usize..8,
    ) {
        let dim = 3;
        let mut rng = SplitMix64::new(seed);
        let passages: Vec<(u64, PhraseRows)> = sizes
            .iter()
            .enumerate()
            .map(|(p, &n)| (p as u64, random_rows(&mut rng, dim, n)))
            .collect();
        let texts: Vec<(String, Vec<usize>)> =
            sizes.iter().map(|&n| random_text(&mut rng, n)).collect();
        let titles: Vec<String> = (0..sizes.len()).map(|p| format!("doc {}", p % 2)).collect();
        let query = random_query(&mut rng, dim);
        let index = PhraseIndex::build(dim, passages.clone(), Device::Cpu).unwrap();
        let oracle = all_phrases(&passages, &query, max_words);
        let exact = PhraseSearchOptions {
            k: oracle.len().max(1),
            max_words,
            side_k: index.token_count().max(1),
            nprobe: None,
        };
        let hits = index.search(&query, &exact).unwrap();
        let passage_of = |id: u64| {
            let p = id as usize;
            Some(PassageText { title: &titles[p], text: &texts[p].0 })
        };
        // The brute force: each phrase's unit, named without the library's sentence rule.
        let unit_of = |unit: RetrievalUnit, o: &(u64, u32, u32, f32, f32, f32)| -> String {
            let p = o.0 as usize;
            match unit {
                RetrievalUnit::Phrase => format!("{p}:{}-{}", o.1, o.2),
                RetrievalUnit::Sentence => format!("{p}:s{}", texts[p].1[o.1 as usize]),
                RetrievalUnit::Passage => format!("{p}"),
                RetrievalUnit::Document => titles[p].clone(),
            }
        };
        // The library's unit, named alike; a span must hold its best phrase's start.
        let name = |unit: RetrievalUnit, span: &UnitSpan, best: &PhraseHit| -> Option<String> {
            let p = best.passage as usize;
            let sentence = |byte: u32| texts[p].1[(byte / 4) as usize];
            match (unit, span) {
                (RetrievalUnit::Phrase, UnitSpan::Text { passage, start_byte, end_byte })
                    if *passage == best.passage
                        && (*start_byte, *end_byte) == (best.start_byte, best.end_byte) =>
                {
                    Some(format!("{p}:{}-{}", best.start_position, best.end_position))
                }
                (RetrievalUnit::Sentence, UnitSpan::Text { passage, start_byte, end_byte })
                    if *passage == best.passage
                        && *start_byte <= best.start_byte
                        && best.start_byte < *end_byte
                        && sentence(*start_byte) == sentence(best.start_byte) =>
                {
                    Some(format!("{p}:s{}", sentence(*start_byte)))
                }
                (RetrievalUnit::Passage, UnitSpan::Passage(id)) if *id == best.passage => {
                    Some(format!("{id}"))
                }
                (RetrievalUnit::Document, UnitSpan::Document(title)) if *title == titles[p] => {
                    Some(title.clone())
                }
                _ => None,
            }
        };
        for unit in [RetrievalUnit::Phrase, RetrievalUnit::Sentence, RetrievalUnit::Passage, RetrievalUnit::Document] {
            let mut best: std::collections::HashMap<String, f32> = std::collections::HashMap::new();
            for o in &oracle {
                let score = best.entry(unit_of(unit, o)).or_insert(o.3);
                *score = score.max(o.3);
            }
            let units = roll_up(&hits, unit, k, passage_of);
            prop_assert_eq!(units.len(), k.min(best.len()));
            let mut names = std::collections::HashSet::new();
            for u in &units {
                let named = name(unit, &u.span, &u.best);
                prop_assert!(named.is_some(), "{:?} is no {:?} of its best phrase", u.span, unit);
                let named = named.unwrap();
                prop_assert!((u.score() - best[&named]).abs() <= 1e-5 * (1.0 + u.score().abs()));
                prop_assert!(names.insert(named), "a unit twice");
            }
            for pair in units.windows(2) {
                prop_assert!(pair[0].score() >= pair[1].score());
            }
            // Every unit left out scores no more than the last one returned.
            if let Some(last) = units.last() {
                let out = best.iter().filter(|(n, _)| !names.contains(*n)).map(|(_, &s)| s);
                for s in out {
                    prop_assert!(s <= last.score() + 1e-5 * (1.0 + s.abs()));
                }
            }
        }
    }
}

#[test]
fn encoded_passages_answer_with_phrases_copied_from_their_text() {
    let phrase = encoder(0.0);
    let rows = phrase.encode_passages(&PASSAGES).unwrap();
    let ids = [4u64, 5, 9];
    let index = PhraseIndex::build(
        phrase.dim(),
        ids.iter().copied().zip(rows).collect(),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!((index.passage_count(), index.token_count()), (3, 17));
    assert_eq!((index.start_count(), index.end_count()), (16, 16));
    let query = phrase
        .encode_queries(&["who wrote hamlet?"])
        .unwrap()
        .remove(0);
    let opts = PhraseSearchOptions {
        k: 20,
        ..PhraseSearchOptions::default()
    };
    let hits = index.search(&query, &opts).unwrap();
    assert_eq!(hits.len(), 20);
    let text_of = |id: u64| ids.iter().position(|&i| i == id).map(|p| PASSAGES[p].1);
    for hit in &hits {
        let text = text_of(hit.passage).unwrap();
        let phrase_text = hit.text(text);
        assert!(!phrase_text.is_empty());
        assert!(phrase_text.split_whitespace().count() <= opts.max_words);
        // Phrases begin on word boundaries: after a non-word character, or with punctuation.
        let before = text[..hit.start_byte as usize].chars().last();
        let first = phrase_text.chars().next().unwrap();
        assert!(
            before.is_none_or(|c| !c.is_alphanumeric()) || !first.is_alphanumeric(),
            "{phrase_text:?} starts inside a word"
        );
    }
    let answers = phrase_answers(&hits, text_of);
    let total: f64 = answers.iter().map(|a| a.probability).sum();
    assert!((total - 1.0).abs() < 1e-9, "probabilities sum to {total}");
}

#[test]
fn answers_pool_equal_normalized_phrases_and_drop_empty_ones() {
    let text = "The Globe, the globe and the Thames.";
    let hit = |start: u32, end: u32, score: f32| PhraseHit {
        passage: 1,
        start_byte: start,
        end_byte: end,
        start_position: start,
        end_position: end,
        score,
    };
    let hits = [
        hit(0, 9, 2.0),   // "The Globe"
        hit(15, 20, 1.0), // "globe"
        hit(29, 35, 0.5), // "Thames"
        hit(9, 10, 3.0),  // ","
        hit(7, 12, 0.0),  // from another passage
    ];
    let mut hits = hits.to_vec();
    hits[4].passage = 2;
    let answers = phrase_answers(&hits, |id| (id == 1).then_some(text));
    let z = 2f64.exp() + 1f64.exp() + 0.5f64.exp();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].text, "The Globe");
    assert!((answers[0].probability - (2f64.exp() + 1f64.exp()) / z).abs() < 1e-12);
    assert_eq!(answers[0].best, hits[0]);
    assert_eq!(answers[1].text, "Thames");
    assert!((answers[1].probability - 0.5f64.exp() / z).abs() < 1e-12);
}

#[test]
fn checkpoints_round_trip_and_refuse_other_kinds() {
    let phrase = encoder(0.0);
    let bytes = phrase.to_checkpoint_bytes().unwrap();
    let loaded = PhraseEncoder::from_checkpoint_bytes(&bytes, config(0.0)).unwrap();
    assert_eq!(loaded.to_checkpoint_bytes().unwrap(), bytes);
    assert_eq!(loaded.fingerprint().unwrap(), phrase.fingerprint().unwrap());
    assert_eq!(
        loaded.encode_passages(&PASSAGES).unwrap(),
        phrase.encode_passages(&PASSAGES).unwrap()
    );
    assert_eq!(
        loaded.encode_queries(&["who wrote hamlet?"]).unwrap(),
        phrase.encode_queries(&["who wrote hamlet?"]).unwrap()
    );
    let other = realm_testing_torch::tiny_encoder(1)
        .to_checkpoint_bytes()
        .unwrap();
    let err = PhraseEncoder::from_checkpoint_bytes(&other, config(0.0)).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("phrase encoder magic"), "{err}");
    let err =
        PhraseEncoder::from_checkpoint_bytes(&bytes[..bytes.len() - 9], config(0.0)).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
}

/// New phrase encoders pool the question's tokens by their mean; a checkpoint written before
/// the pooling was recorded (no `query_pooling` in its header) reads as `[CLS]`, which gives
/// other query vectors from the same weights.
#[test]
fn query_pooling_is_recorded_and_old_checkpoints_read_as_cls() {
    use realm_retriever::checkpoint::{Checkpoint, CheckpointKind, CheckpointParts};
    let phrase = encoder(0.0);
    assert_eq!(phrase.query_pooling(), QueryPooling::Mean);
    let bytes = phrase.to_checkpoint_bytes().unwrap();
    let kind = CheckpointKind {
        magic: b"REALMPHR",
        name: "phrase encoder",
        versions: &[1],
    };
    let parsed = Checkpoint::parse(&bytes, &kind).unwrap();
    let mut header: serde_json::Value = parsed.header().unwrap();
    assert_eq!(header["query_pooling"], "mean");
    header.as_object_mut().unwrap().remove("query_pooling");
    let old = realm_retriever::checkpoint::write_checkpoint(CheckpointParts {
        kind: &kind,
        header: &header,
        tokenizer: &parsed.tokenizer().unwrap(),
        weights: parsed.weights,
    })
    .unwrap();
    let old = PhraseEncoder::from_checkpoint_bytes(&old, config(0.0)).unwrap();
    assert_eq!(old.query_pooling(), QueryPooling::Cls);
    let question = ["who wrote hamlet?"];
    assert_ne!(
        old.encode_queries(&question).unwrap(),
        phrase.encode_queries(&question).unwrap()
    );
    assert_eq!(
        old.encode_passages(&PASSAGES).unwrap(),
        phrase.encode_passages(&PASSAGES).unwrap(),
        "the passage side does not pool"
    );
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let bad = |r: realm_storage::Result<PhraseRows>| match r {
        Err(realm_storage::Error::InvalidPhraseRows { reason }) => reason,
        other => panic!("expected InvalidPhraseRows, got {other:?}"),
    };
    let token = |position: u32, start_byte: u32| PhraseToken {
        position,
        word: position,
        start_byte,
        end_byte: start_byte + 2,
        starts: true,
        ends: true,
    };
    assert!(bad(PhraseRows::new(0, vec![], vec![], vec![])).contains("dimension"));
    assert!(
        bad(PhraseRows::new(
            2,
            vec![token(0, 0)],
            vec![0.0; 2],
            vec![0.0; 3]
        ))
        .contains("end values")
    );
    assert!(
        bad(PhraseRows::new(
            1,
            vec![token(0, 0)],
            vec![f32::NAN],
            vec![0.0]
        ))
        .contains("not finite")
    );
    assert!(
        bad(PhraseRows::new(
            1,
            vec![token(1, 0), token(0, 3)],
            vec![0.0; 2],
            vec![0.0; 2]
        ))
        .contains("does not follow")
    );
    let neither = PhraseToken {
        starts: false,
        ends: false,
        ..token(0, 0)
    };
    assert!(bad(PhraseRows::new(1, vec![neither], vec![0.0], vec![0.0])).contains("neither"));
    let rows = PhraseRows::new(1, vec![token(0, 0)], vec![1.0], vec![1.0]).unwrap();
    assert!(rows.check_text("a").is_err());
    assert!(rows.check_text("é").is_ok());
    assert!(
        rows.check_text("aé").is_err(),
        "a token must not split a character"
    );

    let err =
        PhraseIndex::build(1, vec![(1, rows.clone()), (1, rows.clone())], Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("given twice"), "{err}");
    let err = PhraseIndex::build(2, vec![(1, rows.clone())], Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("dimension 1, not 2"), "{err}");
    let index = PhraseIndex::build(1, vec![(1, rows)], Device::Cpu).unwrap();
    let opts = PhraseSearchOptions::default();
    let query = |start: Vec<f32>| PhraseQuery {
        start,
        end: vec![1.0],
    };
    for (q, o, needle) in [
        (query(vec![1.0, 2.0]), opts, "2 values"),
        (query(vec![f32::INFINITY]), opts, "not finite"),
        (
            query(vec![1.0]),
            PhraseSearchOptions { k: 0, ..opts },
            "at least 1",
        ),
    ] {
        let err = index.search(&q, &o).unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. }) && err.to_string().contains(needle),
            "{err}"
        );
    }
    assert_eq!(index.search(&query(vec![1.0]), &opts).unwrap().len(), 1);

    let err =
        PhraseEncoder::random(fixture_bert(), fixture_tokenizer(), 17, config(0.0), 1).unwrap_err();
    assert!(
        err.to_string().contains("between 1 and the hidden size 16"),
        "{err}"
    );
    let err = PhraseEncoder::random(
        fixture_bert(),
        fixture_tokenizer(),
        DIM,
        config(f64::NAN),
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("filter threshold"), "{err}");
}

#[test]
fn phrase_targets_are_the_word_boundaries_and_the_answer_phrases() {
    let encoder = encoder(0.0);
    let text = PASSAGES[0].1;
    let (_, encodings) = encoder.tokenize_passages(&[PASSAGES[0]]).unwrap();
    let encoding = &encodings[0];
    let piece = |i: usize| {
        let (a, b) = encoding.get_offsets()[i];
        &text[a..b]
    };
    let phrases = |answers: &[&str], max_words: usize| -> Vec<String> {
        let answers: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
        PhraseTargets::new(encoding, text, &answers, max_words)
            .answers
            .iter()
            .map(|&(s, e)| format!("{}..{}", piece(s), piece(e)))
            .collect()
    };
    let all = PhraseTargets::new(encoding, text, &[], 10);
    let starts: Vec<&str> = all.starts.iter().map(|&i| piece(i)).collect();
    let ends: Vec<&str> = all.ends.iter().map(|&i| piece(i)).collect();
    let words = ["was", "written", "by", "William", "Shakespeare", "."];
    assert_eq!(starts, [&["Ham"][..], &words].concat());
    assert_eq!(ends, [&["let"][..], &words].concat());
    assert!(all.answers.is_empty());
    // Normalized (case, articles, punctuation), whole words only, every occurrence: the
    // final full stop normalizes away, so the phrase that ends on it matches too.
    assert_eq!(
        phrases(&["william SHAKESPEARE"], 10),
        ["William..Shakespeare", "William..."]
    );
    assert_eq!(phrases(&["Hamlet"], 10), ["Ham..let"]);
    assert_eq!(
        phrases(&["the hamlet", "Shakespeare."], 10),
        ["Ham..let", "Shakespeare..Shakespeare", "Shakespeare..."]
    );
    assert!(phrases(&["Ham", "liam", ""], 10).is_empty());
    // A phrase has fewer than `max_words` words.
    assert!(phrases(&["William Shakespeare"], 1).is_empty());
    assert_eq!(phrases(&["William Shakespeare"], 2).len(), 1);
}
