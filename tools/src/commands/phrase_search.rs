//! `realm-db search --phrases` and `search --unit U`: the best phrases of a phrase
//! generation, or the best sentences, passages or documents, each scored by its best phrase
//! (DensePhrases §6).

use std::io::Write;

use anyhow::Result;
use realm_db::Retriever;
use realm_db::retriever::phrase::{PhraseSearchOptions, PhraseSearcher, RetrievalUnit, UnitSpan};
use serde::Serialize;

use super::phrases::open_searcher;
use crate::cli::{SearchArgs, UnitArg};
use crate::output::{Align, Table, json_line, snippet, truncate};

/// Units other than phrases rank by their best phrase among this many phrases per unit
/// asked for (at least [`MIN_PHRASE_POOL`]).
const PHRASES_PER_UNIT: usize = 10;
const MIN_PHRASE_POOL: usize = 100;

/// One unit of `search --phrases --json` or `search --unit U --json`.
#[derive(Debug, Serialize)]
struct UnitHitJson<'a> {
    rank: usize,
    unit: &'static str,
    /// The unit's text: the phrase, the sentence, the passage text or the document's title.
    text: &'a str,
    /// The unit's best phrase, whose score is the unit's.
    phrase: &'a str,
    score: f32,
    /// The passage of the best phrase.
    passage: u64,
    title: &'a str,
    /// The best phrase's byte range in its passage's text.
    start_byte: u32,
    end_byte: u32,
    phrase_generation: u64,
}

impl UnitArg {
    pub(crate) fn unit(self) -> RetrievalUnit {
        match self {
            UnitArg::Phrase => RetrievalUnit::Phrase,
            UnitArg::Sentence => RetrievalUnit::Sentence,
            UnitArg::Passage => RetrievalUnit::Passage,
            UnitArg::Document => RetrievalUnit::Document,
        }
    }
}

/// Whether `search` retrieves through phrases, and which unit: `--unit`, or phrases for
/// `--phrases` alone.
pub(crate) fn unit_of(args: &SearchArgs) -> Option<RetrievalUnit> {
    match (args.unit, args.phrases) {
        (Some(unit), _) => Some(unit.unit()),
        (None, true) => Some(RetrievalUnit::Phrase),
        (None, false) => None,
    }
}

/// The `k` best units of the query from the current phrase generation, or from the one
/// `--generation` names (time travel).
pub fn search(
    retriever: &Retriever,
    args: &SearchArgs,
    unit: RetrievalUnit,
    out: &mut dyn Write,
) -> Result<()> {
    let searcher = open_searcher(retriever, args.generation)?;
    write_units(
        &searcher,
        &args.query,
        unit,
        args.k as usize,
        None,
        args.json,
        out,
    )
}

/// Writes the `k` best units of `query` from `searcher`, as a table or JSON lines.
pub(crate) fn write_units(
    searcher: &PhraseSearcher,
    query: &str,
    unit: RetrievalUnit,
    k: usize,
    nprobe: Option<usize>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let pool = match unit {
        RetrievalUnit::Phrase => k,
        _ => k.saturating_mul(PHRASES_PER_UNIT).max(MIN_PHRASE_POOL),
    };
    let options = PhraseSearchOptions {
        k: pool,
        nprobe,
        ..PhraseSearchOptions::default()
    };
    let units = searcher.search_units(query, unit, k, &options)?;
    let mut table = Table::new(&[
        ("#", Align::Right),
        ("score", Align::Right),
        (unit.name(), Align::Left),
        ("best phrase", Align::Left),
        ("passage", Align::Right),
        ("title", Align::Left),
    ]);
    for (rank, (hit, passage)) in units.iter().enumerate() {
        let phrase = hit.best.text(&passage.text);
        let text = match &hit.span {
            UnitSpan::Text {
                start_byte,
                end_byte,
                ..
            } => passage
                .text
                .get(*start_byte as usize..*end_byte as usize)
                .unwrap_or(""),
            UnitSpan::Passage(_) => passage.text.as_str(),
            UnitSpan::Document(title) => title.as_str(),
        };
        if json {
            json_line(
                out,
                &UnitHitJson {
                    rank: rank + 1,
                    unit: unit.name(),
                    text,
                    phrase,
                    score: hit.score(),
                    passage: hit.best.passage,
                    title: &passage.title,
                    start_byte: hit.best.start_byte,
                    end_byte: hit.best.end_byte,
                    phrase_generation: searcher.generation(),
                },
            )?;
        } else {
            let shown = match unit {
                RetrievalUnit::Phrase => truncate(text, 50),
                RetrievalUnit::Document => truncate(text, 40),
                _ => snippet(text, 80),
            };
            let best = match unit {
                RetrievalUnit::Phrase => String::new(),
                _ => truncate(phrase, 40),
            };
            table.row(vec![
                (rank + 1).to_string(),
                format!("{:.3}", hit.score()),
                shown,
                best,
                hit.best.passage.to_string(),
                truncate(&passage.title, 40),
            ]);
        }
    }
    if json {
        return Ok(());
    }
    table.write(out)
}
