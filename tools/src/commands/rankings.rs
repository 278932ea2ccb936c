//! The `--rankings` file of `realm-db eval`: a header line naming the system, the question
//! file, the generation and the query-encoder version, then each question's top passages with
//! whether they hold an answer, as JSON lines.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::error::user;
use crate::output::json_line;

/// A question's ranking, as a line of the `--rankings` file.
#[derive(Debug, Serialize)]
pub(crate) struct Ranking {
    /// The question's line in the question file.
    pub(crate) line: usize,
    pub(crate) question: String,
    /// The 1-based rank of the first passage holding an answer, within the largest k.
    pub(crate) first_match: Option<usize>,
    pub(crate) top: Vec<RankedPassage>,
}

/// A passage of a `--rankings` line.
#[derive(Debug, Serialize)]
pub(crate) struct RankedPassage {
    pub(crate) id: u64,
    pub(crate) title: String,
    /// Whether the passage holds an answer.
    pub(crate) answer: bool,
}

/// The header line of the `--rankings` file, before the questions.
#[derive(Debug, Serialize)]
pub(crate) struct RankingsHeader<'a> {
    pub(crate) system: &'a str,
    /// The question file, as given.
    pub(crate) qa: String,
    pub(crate) generation: Option<u64>,
    /// The query-encoder version of the generation (`null`: its document encoder).
    pub(crate) query_encoder: Option<u32>,
}

/// Writes the `--rankings` file: `header`, then one line per question.
pub(crate) fn write_rankings(
    path: &Path,
    header: &RankingsHeader<'_>,
    rankings: &[Ranking],
) -> Result<()> {
    let file = std::fs::File::create(path)
        .map_err(|e| user(format!("cannot create {}: {e}", path.display())))?;
    let mut file = std::io::BufWriter::new(file);
    json_line(&mut file, header)?;
    for ranking in rankings {
        json_line(&mut file, ranking)?;
    }
    file.flush()?;
    Ok(())
}
