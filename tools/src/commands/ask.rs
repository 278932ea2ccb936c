//! `realm-db ask`: retrieve, then read. The answer's probability marginalizes over the
//! retrieved passages: p(y|x) = Σ_z p(z|x) p(y|z,x) (or, with `--marginalize max`,
//! max_z p(z|x) p(y|z,x)); the best three distinct answers are listed with their
//! probabilities renormalized over the candidates. A reader trained with the joint span
//! normalization (DPR's) scores spans with one softmax over all passages, so each passage's
//! share is p(y,z|x) and they sum to p(y|x).

use std::io::Write;

use anyhow::Result;
use realm_db::reader::store::current_reader;
use realm_db::reader::{Answer, Marginalization, ReaderConfig, ask_with};
use serde::Serialize;

use super::search::pin;
use super::{Env, say};
use crate::cli::AskArgs;
use crate::error::user;
use crate::open;
use crate::output::{Align, Table, json_line, truncate};

/// The answer as one JSON object.
#[derive(Debug, Serialize)]
struct AnswerJson<'a> {
    question: &'a str,
    answer: &'a str,
    prob: f64,
    generation: u64,
    reader: &'a str,
    /// `sum` or `max`: what `prob` is.
    marginalization: &'static str,
    /// `passage` (evidence: p(z|x) and p(y|z,x)) or `joint` (evidence: p(z|x) as retrieved
    /// and p(y,z|x)).
    span_normalization: &'static str,
    /// The best distinct answers, best first (the first is `answer`).
    alternatives: Vec<AlternativeJson<'a>>,
    evidence: Vec<EvidenceJson<'a>>,
}

#[derive(Debug, Serialize)]
struct AlternativeJson<'a> {
    answer: &'a str,
    /// The answer's score renormalized over every candidate kept.
    prob: f64,
}

#[derive(Debug, Serialize)]
struct EvidenceJson<'a> {
    id: u64,
    title: &'a str,
    p_z: f64,
    span: Option<&'a str>,
    span_prob: f64,
    p_answer_given_z: f64,
}

pub fn run(args: &AskArgs, env: &Env, out: &mut dyn Write) -> Result<()> {
    if args.question.trim().is_empty() {
        return Err(user("the question is empty; give a question to answer"));
    }
    if args.phrases {
        return super::phrases::ask(args, env, out);
    }
    let options = env.retriever_options()?;
    let device = options.encoder.device;
    let retriever = open::open_reader(&args.dir, options)?;
    let config = ReaderConfig {
        device,
        ..ReaderConfig::default()
    };
    let Some((reader_id, reader)) = current_reader(&retriever, config)? else {
        return Err(user(format!(
            "the database at {} has no trained reader yet; train one with `realm-db train {} --mode qa --qa FILE`",
            args.dir.display(),
            args.dir.display()
        )));
    };
    let snapshot = pin(&retriever, args.generation)?;
    snapshot.set_search_options(args.index.options());
    let options = args.answer.options();
    let (answer, generation) = ask_with(
        &reader,
        &snapshot,
        &args.question,
        args.k as usize,
        &options,
    )?;
    let marginalization = options.marginalization;
    if args.json {
        let mut json = to_json(&args.question, &answer, generation, &reader_id);
        json.marginalization = marginalization.name();
        return json_line(out, &json);
    }
    write_answer(&answer, generation, marginalization, out)
}

fn to_json<'a>(
    question: &'a str,
    answer: &'a Answer,
    generation: u64,
    reader: &'a str,
) -> AnswerJson<'a> {
    AnswerJson {
        question,
        answer: &answer.text,
        prob: answer.prob,
        generation,
        reader,
        marginalization: Marginalization::Sum.name(),
        span_normalization: answer.span_normalization.name(),
        alternatives: answer
            .alternatives
            .iter()
            .map(|a| AlternativeJson {
                answer: &a.text,
                prob: a.prob,
            })
            .collect(),
        evidence: answer
            .evidence
            .iter()
            .map(|e| EvidenceJson {
                id: e.passage_id,
                title: &e.title,
                p_z: e.p_z,
                span: e.span.as_deref(),
                span_prob: e.span_prob,
                p_answer_given_z: e.p_answer_given_z,
            })
            .collect(),
    }
}

fn write_answer(
    answer: &Answer,
    generation: u64,
    marginalization: Marginalization,
    out: &mut dyn Write,
) -> Result<()> {
    let score = match marginalization {
        Marginalization::Sum => "p(y|x)",
        Marginalization::Max => "max_z p(z|x) p(y|z,x)",
    };
    say(
        out,
        format_args!(
            "{}  ({score} = {:.3}, generation {generation})",
            answer.text, answer.prob
        ),
    )?;
    let mut top = Table::new(&[
        ("#", Align::Right),
        ("p", Align::Right),
        ("answer", Align::Left),
    ]);
    for (i, a) in answer.alternatives.iter().enumerate() {
        top.row(vec![
            (i + 1).to_string(),
            format!("{:.3}", a.prob),
            truncate(&a.text, 60),
        ]);
    }
    top.write(out)?;
    say(out, "")?;
    let mut table = Table::new(&[
        ("id", Align::Right),
        ("p(z|x)", Align::Right),
        ("p(y|z,x)", Align::Right),
        ("best span", Align::Left),
        ("title", Align::Left),
    ]);
    for e in &answer.evidence {
        table.row(vec![
            e.passage_id.to_string(),
            format!("{:.3}", e.p_z),
            format!("{:.3}", e.p_answer_given_z),
            e.span
                .as_deref()
                .map_or_else(|| "-".to_string(), |s| truncate(s, 40)),
            truncate(&e.title, 40),
        ]);
    }
    table.write(out)
}
