//! Two-sided phrase search (DensePhrases §4.1) over the phrase rows of many passages, and
//! answers from the retrieved phrases.

use std::collections::{HashMap, HashSet};

use realm_storage::PassageId;
use tch::{Device, Kind, Tensor};

use super::encoder::PhraseQuery;
use super::ivf::{PhraseIvfConfig, SideIvf};
use super::{PhraseRows, PhraseToken};
use crate::error::{Error, Result};
use crate::eval::normalize_answer;
use crate::matrix::ReadOnlyTensor;

/// How a phrase search runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhraseSearchOptions {
    /// How many phrases to return.
    pub k: usize,
    /// The longest phrase in words (DensePhrases' L).
    pub max_words: usize,
    /// How many of the best starts and of the best ends are extended into phrases. With at
    /// least as many as the index stores, the search is exact (every phrase is scored).
    pub side_k: usize,
    /// Find the best starts and ends through the index's approximate index (see
    /// [`PhraseIndex::build_ivf`]), probing this many lists per side; `None` scans every
    /// start and end exactly.
    pub nprobe: Option<usize>,
}

impl Default for PhraseSearchOptions {
    fn default() -> Self {
        PhraseSearchOptions {
            k: 10,
            max_words: 10,
            side_k: 256,
            nprobe: None,
        }
    }
}

/// One retrieved phrase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhraseHit {
    /// The passage the phrase was copied from.
    pub passage: PassageId,
    /// Byte offset of the phrase in the passage text.
    pub start_byte: u32,
    /// Byte offset one past the phrase's end in the passage text.
    pub end_byte: u32,
    /// The text-token position of its first token.
    pub start_position: u32,
    /// The text-token position of its last token.
    pub end_position: u32,
    /// q_start · s_i + q_end · e_j.
    pub score: f32,
}

impl PhraseHit {
    /// The phrase's text, copied from its passage's text.
    pub fn text<'a>(&self, passage_text: &'a str) -> &'a str {
        passage_text
            .get(self.start_byte as usize..self.end_byte as usize)
            .unwrap_or("")
    }
}

/// An answer from retrieved phrases: equal normalized texts (SQuAD normalization) pooled.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseAnswer {
    /// The text of the best-scoring phrase of the group.
    pub text: String,
    /// The softmax over the retrieved phrases' scores, summed over the group.
    pub probability: f64,
    /// The best-scoring phrase of the group.
    pub best: PhraseHit,
}

/// The phrase rows of a set of passages, held for search: every stored token's start and
/// end vector on the host for exact scoring, and the starts and ends that may begin or
/// finish a phrase as matrices on the device for the two top-k scans.
#[derive(Debug)]
pub struct PhraseIndex {
    dim: usize,
    /// Per passage: its id and the range of its tokens in `tokens`.
    passages: Vec<(PassageId, std::ops::Range<usize>)>,
    /// The index into `passages` of each passage id.
    by_id: HashMap<PassageId, u32>,
    tokens: Vec<PhraseToken>,
    /// The index into `passages` of each token.
    owner: Vec<u32>,
    start: Vec<f32>,
    end: Vec<f32>,
    /// Tokens that may start a phrase, in `start_matrix` row order.
    start_rows: Vec<u32>,
    /// Tokens that may end a phrase, in `end_matrix` row order.
    end_rows: Vec<u32>,
    start_matrix: ReadOnlyTensor,
    end_matrix: ReadOnlyTensor,
    /// The approximate index of the starts and of the ends, once built.
    ivf: Option<(SideIvf, SideIvf)>,
}

/// Scores held at once by a batch's scans (`rows × queries`, f32): 64 Mi, 256 MiB.
const SCORES_PER_GROUP: usize = 64 << 20;

fn invalid(reason: String) -> Error {
    Error::InvalidInput { reason }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl PhraseIndex {
    /// Holds the rows of `passages` (each passage id once, every rows of dimension `dim`)
    /// with the scan matrices on `device`.
    pub fn build(
        dim: usize,
        passages: Vec<(PassageId, PhraseRows)>,
        device: Device,
    ) -> Result<PhraseIndex> {
        if dim == 0 {
            return Err(invalid("phrase vectors need at least one dimension".into()));
        }
        let total: usize = passages.iter().map(|(_, rows)| rows.len()).sum();
        if u32::try_from(total).is_err() || u32::try_from(passages.len()).is_err() {
            return Err(invalid(format!(
                "{total} phrase tokens of {} passages exceed what one index holds (2^32 - 1)",
                passages.len()
            )));
        }
        let mut index = PhraseIndex {
            dim,
            passages: Vec::with_capacity(passages.len()),
            by_id: HashMap::with_capacity(passages.len()),
            tokens: Vec::with_capacity(total),
            owner: Vec::with_capacity(total),
            start: Vec::with_capacity(total * dim),
            end: Vec::with_capacity(total * dim),
            start_rows: Vec::new(),
            end_rows: Vec::new(),
            start_matrix: ReadOnlyTensor(Tensor::zeros([0, dim as i64], (Kind::Float, device))),
            end_matrix: ReadOnlyTensor(Tensor::zeros([0, dim as i64], (Kind::Float, device))),
            ivf: None,
        };
        for (id, rows) in passages {
            if index
                .by_id
                .insert(id, index.passages.len() as u32)
                .is_some()
            {
                return Err(invalid(format!("passage {id} is given twice")));
            }
            if !rows.is_empty() && rows.dim() != dim {
                return Err(invalid(format!(
                    "the phrase rows of passage {id} have dimension {}, not {dim}",
                    rows.dim()
                )));
            }
            let first = index.tokens.len();
            let owner = index.passages.len() as u32;
            for (i, token) in rows.tokens().iter().enumerate() {
                let g = (first + i) as u32;
                if token.starts {
                    index.start_rows.push(g);
                }
                if token.ends {
                    index.end_rows.push(g);
                }
                index.owner.push(owner);
            }
            index.tokens.extend_from_slice(rows.tokens());
            index.start.extend_from_slice(rows.start_values());
            index.end.extend_from_slice(rows.end_values());
            index.passages.push((id, first..index.tokens.len()));
        }
        index.start_matrix =
            ReadOnlyTensor(index.matrix(&index.start_rows, &index.start, device)?);
        index.end_matrix = ReadOnlyTensor(index.matrix(&index.end_rows, &index.end, device)?);
        Ok(index)
    }

    fn matrix(&self, rows: &[u32], values: &[f32], device: Device) -> Result<Tensor> {
        let mut gathered = Vec::with_capacity(rows.len() * self.dim);
        for &g in rows {
            gathered.extend_from_slice(self.vector(values, g as usize));
        }
        Ok(Tensor::f_from_slice(&gathered)?
            .f_view([rows.len() as i64, self.dim as i64])?
            .f_to_device(device)?)
    }

    fn vector<'a>(&self, values: &'a [f32], g: usize) -> &'a [f32] {
        &values[g * self.dim..(g + 1) * self.dim]
    }

    /// The dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// How many passages the index holds (with or without stored tokens).
    pub fn passage_count(&self) -> usize {
        self.passages.len()
    }

    /// How many tokens are stored.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// How many stored tokens may start a phrase.
    pub fn start_count(&self) -> usize {
        self.start_rows.len()
    }

    /// How many stored tokens may end a phrase.
    pub fn end_count(&self) -> usize {
        self.end_rows.len()
    }

    /// Trains an approximate index (IVF with 8-bit codes) over the starts and one over the
    /// ends, replacing any built before. Searches use it when their options set `nprobe`.
    pub fn build_ivf(&mut self, config: &PhraseIvfConfig) -> Result<()> {
        let nlist = config.lists_for(self.start_rows.len().max(self.end_rows.len()));
        let side = |matrix: &Tensor, tokens: &[u32], values: &[f32]| {
            SideIvf::build(matrix, tokens, |g| self.vector(values, g), nlist, config)
        };
        let start = side(&self.start_matrix, &self.start_rows, &self.start)?;
        let end = side(&self.end_matrix, &self.end_rows, &self.end)?;
        self.ivf = Some((start, end));
        Ok(())
    }

    /// The lists per side of the approximate index; `None` before [`PhraseIndex::build_ivf`].
    pub fn ivf_lists(&self) -> Option<usize> {
        self.ivf.as_ref().map(|(start, _)| start.nlist())
    }

    /// The start vector of a hit's first token and the end vector of its last, as stored;
    /// `None` when the hit is not a phrase of this index (another passage, or positions
    /// it does not store). Query-side training scores retrieved phrases with them.
    pub fn phrase_vectors(&self, hit: &PhraseHit) -> Option<(&[f32], &[f32])> {
        let owner = *self.by_id.get(&hit.passage)? as usize;
        let range = self.passages[owner].1.clone();
        let tokens = &self.tokens[range.clone()];
        let find = |position: u32| {
            tokens
                .binary_search_by_key(&position, |t| t.position)
                .ok()
                .map(|i| range.start + i)
        };
        let (i, j) = (find(hit.start_position)?, find(hit.end_position)?);
        Some((self.vector(&self.start, i), self.vector(&self.end, j)))
    }

    /// The `opts.k` best phrases for `query` by DensePhrases' two-sided search: the
    /// `side_k` best starts (q_start · s_i) are each extended to every end of their passage
    /// within `max_words` words, the `side_k` best ends likewise backwards to every start;
    /// each phrase found is scored exactly (q_start · s_i + q_end · e_j), duplicates
    /// merged. Ordered by score, then passage id, then position (deterministic).
    pub fn search(
        &self,
        query: &PhraseQuery,
        opts: &PhraseSearchOptions,
    ) -> Result<Vec<PhraseHit>> {
        let mut results = self.search_batch(std::slice::from_ref(query), opts)?;
        Ok(results.pop().unwrap_or_default())
    }

    /// [`PhraseIndex::search`] for many queries at once, with the same results query by
    /// query. Each scan is one matrix product per group of queries, so the start and end
    /// matrices are read once per group rather than once per query (a single query's scan is
    /// bound by memory bandwidth).
    pub fn search_batch(
        &self,
        queries: &[PhraseQuery],
        opts: &PhraseSearchOptions,
    ) -> Result<Vec<Vec<PhraseHit>>> {
        for query in queries {
            self.check(query, opts)?;
        }
        if let Some(nprobe) = opts.nprobe {
            return self.search_probing(queries, opts, nprobe);
        }
        let rows = self.start_rows.len().max(self.end_rows.len()).max(1);
        let group = (SCORES_PER_GROUP / rows).clamp(1, 256);
        let mut out = Vec::with_capacity(queries.len());
        for part in queries.chunks(group) {
            let starts = self.top_rows(
                &self.start_matrix,
                &self.start_rows,
                part.iter().map(|q| q.start.as_slice()),
                opts.side_k,
            )?;
            let ends = self.top_rows(
                &self.end_matrix,
                &self.end_rows,
                part.iter().map(|q| q.end.as_slice()),
                opts.side_k,
            )?;
            for ((query, starts), ends) in part.iter().zip(starts).zip(ends) {
                out.push(self.extend(query, &starts, &ends, opts));
            }
        }
        Ok(out)
    }

    /// [`PhraseIndex::search_batch`] through the approximate index, probing `nprobe` lists
    /// per side; the queries are shared among the available threads.
    fn search_probing(
        &self,
        queries: &[PhraseQuery],
        opts: &PhraseSearchOptions,
        nprobe: usize,
    ) -> Result<Vec<Vec<PhraseHit>>> {
        let Some((start_ivf, end_ivf)) = &self.ivf else {
            return Err(invalid(
                "probing needs the phrase index's approximate index, which was not built".into(),
            ));
        };
        let one = |query: &PhraseQuery| {
            let starts = start_ivf.top(&query.start, opts.side_k, nprobe, |g| {
                self.vector(&self.start, g)
            });
            let ends = end_ivf.top(&query.end, opts.side_k, nprobe, |g| {
                self.vector(&self.end, g)
            });
            self.extend(query, &starts, &ends, opts)
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if queries.len() < 2 || threads < 2 {
            return Ok(queries.iter().map(one).collect());
        }
        let per = queries.len().div_ceil(threads);
        Ok(std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .chunks(per)
                .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        }))
    }

    /// The phrases of the best `starts` (extended forwards) and `ends` (backwards), scored
    /// exactly, merged and ranked.
    fn extend(
        &self,
        query: &PhraseQuery,
        starts: &[usize],
        ends: &[usize],
        opts: &PhraseSearchOptions,
    ) -> Vec<PhraseHit> {
        let mut found: HashSet<(u32, u32)> = HashSet::new();
        for &g in starts {
            let (_, last) = self.span_of(g);
            let word = self.tokens[g].word;
            for j in g..last {
                if (self.tokens[j].word - word) as usize >= opts.max_words {
                    break;
                }
                if self.tokens[j].ends {
                    found.insert((g as u32, j as u32));
                }
            }
        }
        for &g in ends {
            let (first, _) = self.span_of(g);
            let word = self.tokens[g].word;
            for i in (first..=g).rev() {
                if (word - self.tokens[i].word) as usize >= opts.max_words {
                    break;
                }
                if self.tokens[i].starts {
                    found.insert((i as u32, g as u32));
                }
            }
        }
        let mut hits: Vec<PhraseHit> = found
            .into_iter()
            .map(|(i, j)| self.hit(query, i as usize, j as usize))
            .collect();
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.passage.cmp(&b.passage))
                .then(a.start_position.cmp(&b.start_position))
                .then(a.end_position.cmp(&b.end_position))
        });
        hits.truncate(opts.k);
        hits
    }

    fn check(&self, query: &PhraseQuery, opts: &PhraseSearchOptions) -> Result<()> {
        for (side, v) in [("start", &query.start), ("end", &query.end)] {
            if v.len() != self.dim {
                return Err(invalid(format!(
                    "the query's {side} vector has {} values, but the phrase index's dimension is {}",
                    v.len(),
                    self.dim
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(invalid(format!(
                    "the query's {side} vector holds a value that is not finite"
                )));
            }
        }
        if opts.nprobe == Some(0) {
            return Err(invalid(
                "a probing phrase search must probe at least 1 list".into(),
            ));
        }
        if opts.k == 0 || opts.max_words == 0 || opts.side_k == 0 {
            return Err(invalid(format!(
                "k, the phrase length in words and the side k must be at least 1, not {}, {} and {}",
                opts.k, opts.max_words, opts.side_k
            )));
        }
        Ok(())
    }

    /// For each query vector, the tokens of the `k` best rows of `matrix`, as indices into
    /// `tokens`: one `[rows, queries]` matrix product and a top-k per column.
    fn top_rows<'q>(
        &self,
        matrix: &Tensor,
        rows: &[u32],
        queries: impl ExactSizeIterator<Item = &'q [f32]>,
        k: usize,
    ) -> Result<Vec<Vec<usize>>> {
        let n = queries.len();
        let k = k.min(rows.len());
        if k == 0 {
            return Ok(vec![Vec::new(); n]);
        }
        let values: Vec<f32> = queries.flat_map(|q| q.iter().copied()).collect();
        let q = Tensor::f_from_slice(&values)?
            .f_view([n as i64, self.dim as i64])?
            .f_to_device(matrix.device())?;
        let scores = matrix.f_matmul(&q.f_transpose(0, 1)?)?;
        let (_, best) = scores.f_topk(k as i64, 0, true, false)?;
        let best = Vec::<i64>::try_from(
            best.f_transpose(0, 1)?
                .f_contiguous()?
                .f_to_device(Device::Cpu)?
                .f_view([-1])?,
        )?;
        Ok(best
            .chunks(k)
            .map(|column| column.iter().map(|&r| rows[r as usize] as usize).collect())
            .collect())
    }

    /// The token range of the passage that holds token `g`.
    fn span_of(&self, g: usize) -> (usize, usize) {
        let range = &self.passages[self.owner[g] as usize].1;
        (range.start, range.end)
    }

    fn hit(&self, query: &PhraseQuery, i: usize, j: usize) -> PhraseHit {
        let (a, b) = (self.tokens[i], self.tokens[j]);
        PhraseHit {
            passage: self.passages[self.owner[i] as usize].0,
            start_byte: a.start_byte,
            end_byte: b.end_byte,
            start_position: a.position,
            end_position: b.position,
            score: dot(&query.start, self.vector(&self.start, i))
                + dot(&query.end, self.vector(&self.end, j)),
        }
    }
}

/// Answers from retrieved phrases: a softmax over the scores of the phrases whose text
/// normalizes to something (SQuAD normalization; phrases of punctuation or articles alone
/// are dropped), summed over equal normalized texts, best first (ties: the better phrase).
/// `text_of` gives a passage's text; hits whose passage it does not know are dropped.
pub fn phrase_answers<'a>(
    hits: &[PhraseHit],
    text_of: impl Fn(PassageId) -> Option<&'a str>,
) -> Vec<PhraseAnswer> {
    let named: Vec<(String, &PhraseHit, String)> = hits
        .iter()
        .filter_map(|hit| {
            let text = hit.text(text_of(hit.passage)?).to_owned();
            let normalized = normalize_answer(&text);
            (!normalized.is_empty()).then_some((text, hit, normalized))
        })
        .collect();
    let Some(max) = named
        .iter()
        .map(|(_, h, _)| f64::from(h.score))
        .reduce(f64::max)
    else {
        return Vec::new();
    };
    let total: f64 = named
        .iter()
        .map(|(_, h, _)| (f64::from(h.score) - max).exp())
        .sum();
    let mut groups: HashMap<&str, usize> = HashMap::new();
    let mut answers: Vec<PhraseAnswer> = Vec::new();
    for (text, hit, normalized) in &named {
        let p = (f64::from(hit.score) - max).exp() / total;
        match groups.get(normalized.as_str()) {
            Some(&a) => {
                let answer = &mut answers[a];
                answer.probability += p;
                if hit.score > answer.best.score {
                    answer.best = **hit;
                    answer.text.clone_from(text);
                }
            }
            None => {
                groups.insert(normalized, answers.len());
                answers.push(PhraseAnswer {
                    text: text.clone(),
                    probability: p,
                    best: **hit,
                });
            }
        }
    }
    answers.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(b.best.score.total_cmp(&a.best.score))
    });
    answers
}
