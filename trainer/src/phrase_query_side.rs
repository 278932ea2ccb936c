//! Phrase query-side training (DensePhrases §5): the phrase generation is frozen, so its
//! stored start and end vectors stay valid, and only the question side of a copy of the
//! phrase encoder trains (its BERT and query heads). Each step encodes the batch's
//! questions, retrieves each one's top `candidates` phrases from the pinned phrase
//! generation by the same two-sided search as the query path, and maximizes the marginal
//! likelihood of the retrieved phrases whose text is an answer (SQuAD normalization): the
//! loss is −log of their softmax mass among the retrieved phrases. A question none of whose
//! retrieved phrases is an answer is skipped at that step. At the end the encoder is
//! attached to the phrase generation as a new query-encoder version, which phrase search
//! then encodes questions with.

use std::collections::{HashMap, HashSet};

use realm_retriever::eval::{QaExample, normalize_answer};
use realm_retriever::phrase::{
    PHRASE_ENCODER_BLOB_PREFIX, PhraseEncoderConfig, PhraseHit, PhraseQuery, PhraseSearchOptions,
    PhraseSearcher, phrase_answers,
};
use realm_storage::PassageId;
use tch::{Device, Kind, Tensor};

use crate::context::{Context, INFERENCE_BATCH};
use crate::error::{Error, Result};
use crate::evaluation::{EvalSet, ExactMatch, ExactMatchTally};
use crate::sampling::batch_indices;
use crate::state::TrainerState;
use crate::supervision::with_answer_strings;
use crate::towers::PhraseTower;

/// The note of query-encoder versions attached to phrase generations by phrase query-side
/// training.
pub const PHRASE_QUERY_NOTE: &str = "phrase query-side training";

/// What one phrase query-side step did.
pub(crate) struct PhraseQueryStep {
    /// The mean loss (NaN, with no update, when no question of the batch retrieved an
    /// answer phrase).
    pub loss: f64,
    pub questions: usize,
    /// Questions none of whose retrieved phrases was an answer.
    pub skipped: usize,
}

/// The state of a phrase query-side run.
pub(crate) struct PhraseQuerySide {
    /// The question side that trains (a whole phrase encoder; its phrase heads are unused).
    pub tower: PhraseTower,
    /// The frozen phrase generation, pinned and loaded.
    searcher: PhraseSearcher,
    examples: Vec<QaExample>,
    /// Each example's normalized answer strings.
    answers: Vec<HashSet<String>>,
    pub dropped: usize,
    /// Passage texts of retrieved phrases, as of the pinned snapshot (`None`: deleted).
    texts: HashMap<PassageId, Option<String>>,
}

impl PhraseQuerySide {
    /// Pins the phrase generation (the resumed run's, else the current one) and starts the
    /// question side from the resumed checkpoint, else from the generation's newest
    /// query-encoder version, else from its phrase encoder. Keeps the pairs with an answer
    /// string; an error when none is left.
    pub(crate) fn new(
        ctx: &Context,
        resumed: Option<(&TrainerState, &str)>,
        train: Vec<QaExample>,
    ) -> Result<PhraseQuerySide> {
        let retriever = &ctx.retriever;
        let searcher = match resumed {
            Some((state, blob)) => {
                let generation = state.phrase_generation.ok_or_else(|| Error::CorruptState {
                    blob: blob.to_owned(),
                    reason: "a phrase query-side run's state names no phrase generation".to_owned(),
                })?;
                retriever.phrase_searcher_at(generation)?
            }
            None => retriever.phrase_searcher()?,
        };
        let spec = &searcher.snapshot().manifest().spec;
        let checkpoint = match resumed {
            Some((state, blob)) => {
                state
                    .phrase_checkpoint
                    .clone()
                    .ok_or_else(|| Error::CorruptState {
                        blob: blob.to_owned(),
                        reason:
                            "a phrase query-side run's state names no phrase encoder checkpoint"
                                .to_owned(),
                    })?
            }
            None => searcher.snapshot().manifest().query_encoder().map_or_else(
                || spec.encoder_checkpoint_id.clone(),
                |q| q.checkpoint_id.clone(),
            ),
        };
        let encoder = retriever.load_phrase_encoder(
            &checkpoint,
            PhraseEncoderConfig {
                max_len: 0,
                filter_threshold: spec.filter_threshold,
                device: retriever.options().encoder.device,
                ..PhraseEncoderConfig::default()
            },
        )?;
        if encoder.dim() != spec.dim as usize {
            return Err(Error::CorruptState {
                blob: format!("{PHRASE_ENCODER_BLOB_PREFIX}{checkpoint}"),
                reason: format!(
                    "its query vectors have {} values, but phrase generation {} stores {}",
                    encoder.dim(),
                    searcher.generation(),
                    spec.dim
                ),
            });
        }
        let given = train.len();
        let examples = with_answer_strings(ctx, train)?;
        let answers = examples
            .iter()
            .map(|e| {
                e.answers
                    .iter()
                    .map(|a| normalize_answer(a))
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .collect();
        Ok(PhraseQuerySide {
            tower: PhraseTower::new(encoder),
            searcher,
            dropped: given - examples.len(),
            examples,
            answers,
            texts: HashMap::new(),
        })
    }

    /// Usable examples.
    pub(crate) fn examples(&self) -> usize {
        self.examples.len()
    }

    /// The pinned phrase generation.
    pub(crate) fn generation(&self) -> u64 {
        self.searcher.generation()
    }

    fn options(ctx: &Context) -> PhraseSearchOptions {
        PhraseSearchOptions {
            k: ctx.config.candidates,
            ..PhraseSearchOptions::default()
        }
    }

    /// The normalized text of a retrieved phrase (empty when its passage is gone).
    fn normalized_text(&mut self, hit: &PhraseHit) -> Result<String> {
        if !self.texts.contains_key(&hit.passage) {
            let passage = self.searcher.snapshot().passage(hit.passage)?;
            self.texts.insert(hit.passage, passage.map(|p| p.text));
        }
        Ok(self.texts[&hit.passage]
            .as_deref()
            .map(|text| normalize_answer(hit.text(text)))
            .unwrap_or_default())
    }

    /// One step of the marginal likelihood of the retrieved answer phrases; see the module
    /// documentation.
    pub(crate) fn step(&mut self, ctx: &mut Context, step: u64) -> Result<PhraseQueryStep> {
        let idx = batch_indices(ctx.config.seed, self.examples.len(), ctx.batch, step);
        let questions: Vec<&str> = idx
            .iter()
            .map(|&i| self.examples[i].question.as_str())
            .collect();
        ctx.seed_dropout(step);
        let encoder = &self.tower.encoder;
        let (q_start, q_end) =
            encoder.query_forward_t(&encoder.tokenize_queries(&questions)?, true);
        let queries: Vec<PhraseQuery> = host_rows(&q_start)?
            .into_iter()
            .zip(host_rows(&q_end)?)
            .map(|(start, end)| PhraseQuery { start, end })
            .collect();
        let hits = self
            .searcher
            .index()
            .search_batch(&queries, &Self::options(ctx))?;
        let (b, k, dim) = (
            idx.len(),
            ctx.config.candidates,
            self.searcher.index().dim(),
        );
        let mut starts = vec![0f32; b * k * dim];
        let mut ends = vec![0f32; b * k * dim];
        let mut valid = vec![false; b * k];
        let mut gold = vec![false; b * k];
        for (r, row) in hits.iter().enumerate() {
            for (c, hit) in row.iter().enumerate() {
                let at = r * k + c;
                let (s, e) = self
                    .searcher
                    .index()
                    .phrase_vectors(hit)
                    .expect("a retrieved phrase is a phrase of the index");
                starts[at * dim..(at + 1) * dim].copy_from_slice(s);
                ends[at * dim..(at + 1) * dim].copy_from_slice(e);
                valid[at] = true;
                let text = self.normalized_text(hit)?;
                gold[at] = self.answers[idx[r]].contains(&text);
            }
        }
        let keep: Vec<i64> = (0..b)
            .filter(|&r| gold[r * k..(r + 1) * k].contains(&true))
            .map(|r| r as i64)
            .collect();
        let skipped = b - keep.len();
        if keep.is_empty() {
            self.tower.opt.zero_grad();
            return Ok(PhraseQueryStep {
                loss: f64::NAN,
                questions: b,
                skipped,
            });
        }
        let device = ctx.device();
        let shape = [b as i64, k as i64, dim as i64];
        let tensor = |values: &[f32]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(values)?
                .f_view(shape)?
                .f_to_device(device)?)
        };
        let mask = |values: &[bool]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(values)?
                .f_view([b as i64, k as i64])?
                .f_to_device(device)?)
        };
        let scores =
            (q_start.unsqueeze(1) * tensor(&starts)?).sum_dim_intlist(-1, false, None::<Kind>)
                + (q_end.unsqueeze(1) * tensor(&ends)?).sum_dim_intlist(-1, false, None::<Kind>);
        let logits = scores.masked_fill(&mask(&valid)?.logical_not(), f64::NEG_INFINITY);
        let all = logits.logsumexp([1], false);
        let positive = logits
            .masked_fill(&mask(&gold)?.logical_not(), f64::NEG_INFINITY)
            .logsumexp([1], false);
        let keep = Tensor::from_slice(&keep).to_device(device);
        let loss = (all - positive).index_select(0, &keep).mean(Kind::Float);
        loss.backward();
        let value = loss.double_value(&[]);
        self.tower.step(ctx.lr(step));
        // The passage query tower does not train here; its gradient is never computed.
        ctx.query.opt.zero_grad();
        Ok(PhraseQueryStep {
            loss: value,
            questions: b,
            skipped,
        })
    }

    /// Phrase exact match of the question side as it is (no dropout) on `eval`'s questions
    /// with an answer string: the best answer of the default phrase search
    /// ([`phrase_answers`]); `None` when there is none.
    pub(crate) fn exact_match(&self, eval: &EvalSet) -> Result<Option<ExactMatch>> {
        let items = eval.answerable();
        let opts = PhraseSearchOptions::default();
        let mut tally = ExactMatchTally::default();
        for chunk in items.chunks(INFERENCE_BATCH) {
            let questions: Vec<&str> = chunk.iter().map(|&i| eval.question(i)).collect();
            let queries = self.tower.encoder.encode_queries(&questions)?;
            let rows = self.searcher.index().search_batch(&queries, &opts)?;
            for (hits, &i) in rows.iter().zip(chunk) {
                let mut texts = HashMap::new();
                for hit in hits {
                    if let Some(p) = self.searcher.snapshot().passage(hit.passage)? {
                        texts.insert(hit.passage, p.text);
                    }
                }
                let answers = phrase_answers(hits, |id| texts.get(&id).map(String::as_str));
                let hit = answers.first().is_some_and(|a| eval.matches(i, &a.text));
                tally.add(hit, eval.in_corpus(i));
            }
        }
        Ok(tally.finish())
    }

    /// Attaches the trained question side to the pinned phrase generation, unless its
    /// newest version already is this encoder (a run killed right after attaching).
    /// Returns the phrase generation and the version.
    pub(crate) fn attach(&self, ctx: &Context, step: u64) -> Result<(u64, u32)> {
        let retriever = &ctx.retriever;
        let generation = self.generation();
        let id = retriever.store_phrase_encoder(&self.tower.encoder)?;
        let db = retriever.db();
        if let Some(last) = db.phrase_generation(generation)?.query_encoder()
            && last.checkpoint_id == id
        {
            return Ok((generation, last.version));
        }
        let note = format!(
            "{PHRASE_QUERY_NOTE} (run {:?}, {step} steps, seed {})",
            ctx.config.run, ctx.config.seed
        );
        let version = db.attach_phrase_query_encoder(generation, &id, &note)?;
        Ok((generation, version))
    }
}

/// The rows of a `[n, dim]` tensor, on the host.
fn host_rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t
        .f_detach()?
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?;
    let dim = t.size()[1] as usize;
    let values = Vec::<f32>::try_from(t.f_contiguous()?.f_view([-1])?)?;
    Ok(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
}
