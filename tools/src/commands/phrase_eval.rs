//! `realm-db eval --phrases`: every question answered from a phrase generation without a
//! reader (exact match and F1, on all questions and the in-corpus subset, questions/s), and
//! units (passages by default; `--unit` phrases, sentences or documents) ranked by their best
//! retrieved phrase (top-k accuracy: a unit is a hit when its text holds an answer).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use realm_db::retriever::eval::{AnswerMatcher, QaExample, TopKAccuracy, first_hit};
use realm_db::retriever::phrase::{
    PassageText, PhraseHit, PhraseSearchOptions, PhraseSearcher, RetrievalUnit, UnitSpan,
    phrase_answers, roll_up,
};
use serde::Serialize;

use super::reader_eval::Totals;
use crate::progress;

/// How phrase retrieval is evaluated.
pub(crate) struct PhraseEval {
    /// The search; answers pool its `k` best phrases.
    pub(crate) options: PhraseSearchOptions,
    /// The k values of unit accuracy, ascending.
    pub(crate) ks: Vec<usize>,
    /// What is ranked for top-k accuracy.
    pub(crate) unit: RetrievalUnit,
    /// Questions encoded and searched at once.
    pub(crate) batch: usize,
}

/// The figures of phrase retrieval, as a JSON line.
#[derive(Debug, Serialize)]
pub(crate) struct PhraseFigures {
    system: &'static str,
    phrase_generation: u64,
    phrases: usize,
    max_words: usize,
    side_k: usize,
    /// Lists probed per side of the approximate phrase index; `None` for exact scans.
    nprobe: Option<usize>,
    questions: usize,
    in_corpus_questions: Option<usize>,
    em: f64,
    in_corpus_em: Option<f64>,
    f1: f64,
    in_corpus_f1: Option<f64>,
    /// The unit ranked by its best phrase for top-k accuracy.
    unit: &'static str,
    /// (k, top-k accuracy of units ranked by their best phrase).
    passage_accuracy: Vec<(usize, f64)>,
    in_corpus_passage_accuracy: Option<Vec<(usize, f64)>>,
    seconds: f64,
    questions_per_second: f64,
}

impl PhraseFigures {
    /// The figures as one sentence.
    pub(crate) fn summary(&self) -> String {
        let pct = |v: f64| format!("{:.1}", 100.0 * v);
        let in_corpus =
            |v: Option<f64>| v.map_or_else(String::new, |ic| format!(" / {}% in corpus", pct(ic)));
        let accuracy = |list: &[(usize, f64)]| {
            list.iter()
                .map(|(k, a)| format!("top-{k} {}%", pct(*a)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let scan = self.nprobe.map_or_else(
            || "exact scans".to_owned(),
            |n| format!("approximate index, {n} lists probed"),
        );
        format!(
            "Phrases of generation {} (top {}, at most {} words, {scan}, no reader): exact match {}%{}, F1 {}%{} \
             on {} questions ({:.1} questions/s); {}s by best phrase: {}{}.",
            self.phrase_generation,
            self.phrases,
            self.max_words,
            pct(self.em),
            in_corpus(self.in_corpus_em),
            pct(self.f1),
            in_corpus(self.in_corpus_f1),
            self.questions,
            self.questions_per_second,
            self.unit,
            accuracy(&self.passage_accuracy),
            self.in_corpus_passage_accuracy
                .as_deref()
                .map_or_else(String::new, |ic| format!(" (in corpus: {})", accuracy(ic)))
        )
    }
}

impl PhraseEval {
    /// Answers every question from `searcher` and scores the answers as `eval --em` scores
    /// the reader's; ranks units by the first (best) phrase of each among enough phrases to
    /// reach the largest k.
    pub(crate) fn run(
        &self,
        searcher: &PhraseSearcher,
        examples: &[QaExample],
        matchers: &[AnswerMatcher],
    ) -> Result<PhraseFigures> {
        let max_k = self.ks.last().copied().unwrap_or(1);
        let search = PhraseSearchOptions {
            k: self.options.k.max(10 * max_k),
            ..self.options
        };
        let bar = progress::bar(
            examples.len() as u64,
            "phrases {bar:40} {pos}/{len} questions {per_sec} eta {eta}",
        );
        let started = Instant::now();
        let documents = match self.unit {
            RetrievalUnit::Document => Some(documents(searcher)?),
            _ => None,
        };
        let mut totals = Totals::default();
        let mut accuracy = TopKAccuracy::new();
        for (part, part_matchers) in examples
            .chunks(self.batch.max(1))
            .zip(matchers.chunks(self.batch.max(1)))
        {
            let questions: Vec<&str> = part.iter().map(|e| e.question.as_str()).collect();
            let results = searcher.search_batch(&questions, &search)?;
            for ((example, matcher), hits) in part.iter().zip(part_matchers).zip(results) {
                let top = &hits[..hits.len().min(self.options.k)];
                let texts = self.passages_of(searcher, &hits, top.len(), max_k)?;
                let answers = phrase_answers(top, |id| texts.get(&id).map(|p| p.1.as_str()));
                totals.add(answers.first().map(|a| a.text.as_str()), example, matcher);
                let units = self.ranked_units(&hits, &texts, documents.as_ref(), max_k);
                let first = first_hit(matcher, units.iter().map(String::as_str));
                accuracy.add(first, example.in_corpus);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let ((em, f1), in_corpus) = totals.means();
        Ok(PhraseFigures {
            system: "phrases",
            phrase_generation: searcher.generation(),
            phrases: self.options.k,
            max_words: self.options.max_words,
            side_k: self.options.side_k,
            nprobe: self.options.nprobe,
            questions: examples.len(),
            in_corpus_questions: accuracy.in_corpus_questions(),
            em,
            in_corpus_em: in_corpus.map(|(em, _)| em),
            f1,
            in_corpus_f1: in_corpus.map(|(_, f1)| f1),
            unit: self.unit.name(),
            passage_accuracy: self.ks.iter().map(|&k| (k, accuracy.accuracy(k))).collect(),
            in_corpus_passage_accuracy: accuracy.in_corpus_questions().map(|_| {
                self.ks
                    .iter()
                    .map(|&k| (k, accuracy.in_corpus_accuracy(k).unwrap_or(0.0)))
                    .collect()
            }),
            seconds,
            questions_per_second: examples.len() as f64 / seconds.max(1e-9),
        })
    }

    /// The titles and texts of the passages of `hits` that answers and ranking need: those
    /// of the first `answered` hits and of the first `max_k` distinct passages in phrase
    /// order, which hold the first `max_k` phrases, sentences and passages (every distinct
    /// passage brings at least one of each); for documents, every hit's, since passages of
    /// one document do not bring a new one.
    fn passages_of(
        &self,
        searcher: &PhraseSearcher,
        hits: &[PhraseHit],
        answered: usize,
        max_k: usize,
    ) -> Result<HashMap<u64, (String, String)>> {
        let mut texts: HashMap<u64, (String, String)> = HashMap::new();
        for (rank, hit) in hits.iter().enumerate() {
            if self.unit != RetrievalUnit::Document && rank >= answered && texts.len() >= max_k {
                break;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = texts.entry(hit.passage) {
                let passage = searcher.snapshot().passage(hit.passage)?;
                slot.insert(passage.map(|p| (p.title, p.text)).unwrap_or_default());
            }
        }
        Ok(texts)
    }

    /// The texts of the `max_k` best units among `hits`: a phrase's or a sentence's text, a
    /// passage's, or a document's (all its passages' texts).
    fn ranked_units(
        &self,
        hits: &[PhraseHit],
        texts: &HashMap<u64, (String, String)>,
        documents: Option<&HashMap<String, String>>,
        max_k: usize,
    ) -> Vec<String> {
        let units = roll_up(hits, self.unit, max_k, |id| {
            texts
                .get(&id)
                .map(|(title, text)| PassageText { title, text })
        });
        units
            .into_iter()
            .map(|u| match &u.span {
                UnitSpan::Text {
                    passage,
                    start_byte,
                    end_byte,
                } => texts
                    .get(passage)
                    .and_then(|(_, t)| t.get(*start_byte as usize..*end_byte as usize))
                    .unwrap_or_default()
                    .to_owned(),
                UnitSpan::Passage(id) => texts.get(id).map(|p| p.1.clone()).unwrap_or_default(),
                UnitSpan::Document(title) => documents
                    .and_then(|d| d.get(title))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect()
    }
}

/// Every document's text (its passages' texts, in passage order, a line each), by title, as
/// the database holds them now.
fn documents(searcher: &PhraseSearcher) -> Result<HashMap<String, String>> {
    let mut documents: HashMap<String, String> = HashMap::new();
    for passage in searcher.snapshot().db().snapshot()?.passages() {
        let passage = passage?;
        let text = documents.entry(passage.title).or_default();
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&passage.text);
    }
    Ok(documents)
}
