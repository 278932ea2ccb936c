//! The training loop of the four modes, checkpoints and resume, and the index-builder
//! thread of dual and ICT training.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use realm_reader::{Reader, ReaderConfig};
use realm_retriever::eval::{
    AnswerMatcher, PreparedText, QaExample, TopKAccuracy, first_hit, normalize_answer,
};
use realm_retriever::index::ENCODER_BLOB_PREFIX;
use realm_retriever::{BuildOptions, Encoder, Retriever, SearchMode, SearchSnapshot};
use realm_storage::{Passage, Provenance};
use tch::{Device, Kind, Tensor};

use crate::adamw::{AdamW, WEIGHT_DECAY, learning_rate};
use crate::config::{Control, Event, Mode, TrainConfig, TrainReport};
use crate::error::{Error, Result};
use crate::ict::{sample_ict_pair, split_sentences};
use crate::masking::{mask_one, salient_spans};
use crate::readers::{load_reader, set_current_reader, store_reader};
use crate::state::{
    STATE_FORMAT, TrainerState, decode_optimizers, encode_optimizers, optimizer_blob, state_blob,
};

/// Salts that separate the random streams derived from the seed.
const SALT_EPOCH: u64 = 0x6570_6f63_6800_0001;
const SALT_DROPOUT: u64 = 0x6472_6f70_0000_0002;
const SALT_ICT: u64 = 0x6963_7400_0000_0003;
const SALT_REALM: u64 = 0x7265_616c_6d00_0004;
const SALT_HELD_OUT: u64 = 0x6865_6c64_0000_0005;

/// REALM: at most this many held-out sentences are scored at each evaluation (the first
/// ones in passage order; all of them stay out of training).
pub const REALM_HELD_OUT_SCORED: usize = 256;

/// Top-1, top-5 and top-20 accuracy.
type Accuracy = (f64, f64, f64);

/// Questions encoded per batch for distant supervision and evaluation.
const INFERENCE_BATCH: usize = 64;

/// The provenance note of generations built by dual training.
pub const DUAL_NOTE: &str = "dual training refresh";
/// The provenance note of the generation built at the end of ICT training.
pub const ICT_NOTE: &str = "ict training";
/// The note of query-encoder versions attached by query-side training.
pub const QUERY_SIDE_NOTE: &str = "query-side training";
/// The note of query-encoder versions attached by QA training.
pub const QA_NOTE: &str = "qa training";
/// The provenance note of generations built by REALM training.
pub const REALM_NOTE: &str = "realm training";

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether the article `title` is held out of REALM training: a stable hash (FNV-1a) of the
/// title, mixed with the seed, falls in the lowest `fraction` of the range.
pub(crate) fn title_held_out(seed: u64, title: &str, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in title.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let unit = (derive(seed, SALT_HELD_OUT, h) >> 11) as f64 / (1u64 << 53) as f64;
    unit < fraction
}

/// A 64-bit value derived only from `(seed, salt, x)`.
fn derive(seed: u64, salt: u64, x: u64) -> u64 {
    splitmix(splitmix(seed ^ salt) ^ x)
}

/// The order in which epoch `epoch` visits `n` examples.
fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(derive(seed, SALT_EPOCH, epoch)));
    order
}

/// The example indices of 1-based `step`: examples are visited without replacement within an
/// epoch, in an order derived from the seed and the epoch; batch `b` of step `s` holds the
/// positions `(s − 1)·b ..< s·b` of the concatenated epochs.
pub(crate) fn batch_indices(seed: u64, n: usize, b: usize, step: u64) -> Vec<usize> {
    let mut perms: Vec<(u64, Vec<usize>)> = Vec::new();
    let start = u128::from(step.saturating_sub(1)) * b as u128;
    (0..b as u128)
        .map(|j| {
            let p = start + j;
            let epoch = (p / n as u128) as u64;
            let at = (p % n as u128) as usize;
            if let Some((_, perm)) = perms.iter().find(|(e, _)| *e == epoch) {
                return perm[at];
            }
            let perm = epoch_permutation(seed, epoch, n);
            let index = perm[at];
            perms.push((epoch, perm));
            index
        })
        .collect()
}

/// A trainable encoder and its optimizer.
struct Tower {
    encoder: Encoder,
    opt: AdamW,
}

impl Tower {
    fn from_bytes(bytes: &[u8], retriever: &Retriever) -> Result<Tower> {
        let mut encoder =
            Encoder::from_checkpoint_bytes(bytes, None, retriever.options().encoder.clone())?;
        encoder.var_store_mut().unfreeze();
        let opt = AdamW::for_var_store(encoder.var_store(), WEIGHT_DECAY);
        Ok(Tower { encoder, opt })
    }

    fn step(&mut self, lr: f64) {
        self.opt.step(lr);
    }
}

/// The reader and its optimizer (QA).
struct ReaderTower {
    reader: Reader,
    opt: AdamW,
}

impl ReaderTower {
    fn new(mut reader: Reader) -> ReaderTower {
        reader.var_store_mut().unfreeze();
        let opt = AdamW::for_var_store(reader.var_store(), WEIGHT_DECAY);
        ReaderTower { reader, opt }
    }
}

/// A QA training question with its answer strings.
struct QaPair {
    question: String,
    answers: Vec<String>,
}

/// REALM: a corpus sentence with at least one salient span, and its passage.
struct RealmSentence {
    passage: u64,
    text: String,
}

/// REALM: a masked sentence ready to be read.
struct MaskedItem {
    /// The passage the sentence came from (never a candidate).
    passage: u64,
    /// The sentence with one `[MASK]` per masked token, for the query tower.
    query: String,
    /// The reader's token ids of the sentence, masked.
    ids: Vec<i64>,
    /// (position, true id) of each masked token.
    targets: Vec<(usize, i64)>,
}

/// The ids of the top `k` of a retrieved `row` (best first) other than `source`, the
/// passage the masked sentence came from: retrieving it would make the task trivial.
pub(crate) fn realm_candidates(row: &[(u64, f32)], source: u64, k: usize) -> Vec<u64> {
    row.iter()
        .map(|&(id, _)| id)
        .filter(|&id| id != source)
        .take(k)
        .collect()
}

/// A question with its distant supervision.
struct Supervised {
    question: String,
    matcher: AnswerMatcher,
    /// Retrieved passages that contain an answer, best first.
    positives: Vec<u64>,
    /// Retrieved passages that do not, best first.
    negatives: Vec<u64>,
}

/// The frozen document vectors of the pinned generation (query-side, QA).
struct DocMatrix {
    rows: HashMap<u64, i64>,
    /// The passage id of each row.
    ids: Vec<u64>,
    values: Tensor,
}

/// A request to the index builder: both towers' checkpoints and the step of their weights.
struct RefreshRequest {
    query: Vec<u8>,
    document: Vec<u8>,
    step: u64,
}

/// A generation the builder published.
struct Published {
    generation: u64,
    weights_step: u64,
    seconds: f64,
}

/// The index-builder thread: it builds and publishes a generation for each request it
/// receives; at most one request waits while it builds.
struct Builder {
    requests: Option<Sender<RefreshRequest>>,
    /// The receiving end, kept to replace a waiting request by a newer one.
    pending: Receiver<RefreshRequest>,
    results: Receiver<Result<Published>>,
    handle: Option<JoinHandle<()>>,
}

impl Builder {
    fn spawn(retriever: Retriever, note: &'static str) -> Builder {
        let (tx, rx) = crossbeam_channel::bounded::<RefreshRequest>(1);
        let (res_tx, res_rx) = crossbeam_channel::unbounded();
        let worker_rx = rx.clone();
        let handle = std::thread::spawn(move || {
            for request in worker_rx.iter() {
                let result = build_refresh(&retriever, &request, note);
                let failed = result.is_err();
                if res_tx.send(result).is_err() || failed {
                    break;
                }
            }
        });
        Builder {
            requests: Some(tx),
            pending: rx,
            results: res_rx,
            handle: Some(handle),
        }
    }

    /// Queues a request, replacing one that is still waiting.
    fn request(&self, mut request: RefreshRequest) {
        let Some(tx) = &self.requests else { return };
        loop {
            match tx.try_send(request) {
                Ok(()) => return,
                Err(TrySendError::Full(r)) => {
                    let _ = self.pending.try_recv();
                    request = r;
                }
                // The builder stopped after a failure; its error waits in `results`.
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// Results reported so far.
    fn poll(&self) -> Vec<Result<Published>> {
        self.results.try_iter().collect()
    }

    /// Drops a waiting request.
    fn cancel_pending(&self) {
        while self.pending.try_recv().is_ok() {}
    }

    /// Lets the builder finish its queue and waits for it; returns the remaining results.
    fn finish(&mut self) -> Result<Vec<Result<Published>>> {
        self.requests = None;
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            return Err(Error::BuilderPanicked);
        }
        Ok(self.poll())
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        self.requests = None;
        self.cancel_pending();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn build_refresh(retriever: &Retriever, request: &RefreshRequest, note: &str) -> Result<Published> {
    let started = Instant::now();
    let cfg = retriever.options().encoder.clone();
    let document = Encoder::from_checkpoint_bytes(&request.document, None, cfg.clone())?;
    let query = Encoder::from_checkpoint_bytes(&request.query, None, cfg)?;
    let parent = retriever.db().current_generation()?;
    let generation = retriever.build_generation(
        &document,
        BuildOptions {
            provenance: Provenance {
                training_step: Some(request.step),
                checkpoint_id: None,
                parent,
                note: note.to_owned(),
            },
            query_encoder: Some(&query),
            ..BuildOptions::default()
        },
    )?;
    Ok(Published {
        generation,
        weights_step: request.step,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Passes events to the caller's callback and remembers a request to stop.
struct Emitter<'a> {
    callback: &'a mut dyn FnMut(&Event) -> Control,
    stop: bool,
}

impl Emitter<'_> {
    fn emit(&mut self, event: Event) {
        if (self.callback)(&event) == Control::Stop {
            self.stop = true;
        }
    }
}

/// A training run on a live database; see the crate documentation for the modes.
pub struct Trainer {
    retriever: Retriever,
    config: TrainConfig,
    /// The generation trained against: pinned for query-side, moved forward by dual when a
    /// refresh is published.
    search: SearchSnapshot,
    query: Tower,
    /// The document tower (dual, ICT).
    document: Option<Tower>,
    /// Query-side and dual: the questions with a positive passage.
    examples: Vec<Supervised>,
    /// Questions dropped for want of a positive passage.
    dropped: usize,
    /// ICT: `(title, text)` of every passage.
    passages: Vec<(String, String)>,
    /// Held-out questions.
    eval: Vec<(String, AnswerMatcher)>,
    /// The answer strings and `in_corpus` flag of each held-out question (QA exact match).
    eval_answers: Vec<(Vec<String>, Option<bool>)>,
    /// QA: the reader being trained.
    reader: Option<ReaderTower>,
    /// QA: the questions with answer strings.
    qa: Vec<QaPair>,
    /// REALM: the training sentences with a salient span.
    sentences: Vec<RealmSentence>,
    /// REALM: the held-out sentences with a salient span.
    held_out: Vec<RealmSentence>,
    /// Query-side and QA: the stored document vectors.
    doc_matrix: Option<DocMatrix>,
    /// The effective batch size (capped at the number of examples).
    batch: usize,
    /// The step the weights are at.
    step: u64,
    /// The step this trainer resumed from, until announced.
    resumed: Option<u64>,
    /// The optimizer slot the last checkpoint wrote.
    slot: char,
}

impl fmt::Debug for Trainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("generation", &self.search.generation_id())
            .field("step", &self.step)
            .field("examples", &self.examples.len())
            .field("passages", &self.passages.len())
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Prepares a run: loads or copies the towers, and for query-side and dual runs applies
    /// distant supervision to `train` (QA pairs whose top-`candidates` passages contain no
    /// answer are dropped; an error if none remains). `train` is ignored for ICT, which
    /// samples the database's passages. `eval` holds held-out questions for
    /// [`Event::Eval`] (may be empty).
    ///
    /// When the database holds an unfinished checkpoint of run `config.run` in the same
    /// mode, the run resumes from it ([`Event::Resumed`]); a finished run, or one of another
    /// mode, starts afresh from the current generation.
    ///
    /// QA runs use the examples' answer strings (examples with only answer patterns are
    /// dropped) and a fresh run starts from the database's current reader, or else from a
    /// reader loaded from `config.reader_model` (default: the default model folder).
    pub fn new(
        retriever: Retriever,
        config: TrainConfig,
        train: Vec<QaExample>,
        eval: Vec<QaExample>,
    ) -> Result<Trainer> {
        Trainer::new_with_reader(retriever, config, train, eval, None)
    }

    /// [`Trainer::new`], where a QA run that starts afresh begins from `reader` instead of
    /// the current or a loaded reader (tests use a tiny random one). A resumed QA run loads
    /// its checkpointed reader's weights with `reader`'s runtime settings. Ignored by the
    /// other modes.
    pub fn new_with_reader(
        retriever: Retriever,
        config: TrainConfig,
        train: Vec<QaExample>,
        eval: Vec<QaExample>,
        reader: Option<Reader>,
    ) -> Result<Trainer> {
        config.validate()?;
        let db = retriever.db().clone();
        let state_name = state_blob(&config.run);
        let state = if db.has_blob(&state_name)? {
            Some(TrainerState::parse(
                &db.get_blob(&state_name)?,
                &state_name,
            )?)
        } else {
            None
        };
        let state = state.filter(|s| s.mode == config.mode && !s.finished);
        let search = match (&state, config.mode) {
            (Some(s), Mode::QuerySide | Mode::Qa) => retriever.snapshot_at(s.generation)?,
            _ => retriever.snapshot()?,
        };
        let manifest = search
            .storage()
            .generation()
            .cloned()
            .ok_or(Error::NoGeneration)?;
        let two_towers = !matches!(config.mode, Mode::QuerySide | Mode::Qa);
        let mut reader_tower = if matches!(config.mode, Mode::Qa | Mode::Realm) {
            let device = retriever.options().encoder.device;
            let cfg = reader.as_ref().map_or_else(
                || ReaderConfig {
                    device,
                    ..ReaderConfig::default()
                },
                |r| r.config().clone(),
            );
            let mut reader = match (&state, reader) {
                (Some(s), _) => {
                    let id = s
                        .reader_checkpoint
                        .as_deref()
                        .ok_or_else(|| Error::CorruptState {
                            blob: state_name.clone(),
                            reason: format!(
                                "a {} run's state names no reader checkpoint",
                                config.mode
                            ),
                        })?;
                    load_reader(&retriever, id, cfg)?
                }
                (None, Some(r)) => r,
                (None, None) => match crate::readers::current_reader(&retriever, cfg.clone())? {
                    Some((_, r)) => r,
                    None => {
                        let dir = match &config.reader_model {
                            Some(dir) => dir.clone(),
                            None => realm_retriever::default_model_dir()?,
                        };
                        Reader::load(&dir, cfg, (config.seed >> 1) as i64)?
                    }
                },
            };
            // p(z|x) at answer time uses the temperature the reader trains with.
            reader.set_retrieval_scale(config.scale)?;
            Some(ReaderTower::new(reader))
        } else {
            None
        };

        let (query, document, step, slot) = match &state {
            Some(s) => {
                let corrupt = |reason: String| Error::CorruptState {
                    blob: state_name.clone(),
                    reason,
                };
                let load = |id: &str| -> Result<Tower> {
                    let bytes = db.get_blob(&format!("{ENCODER_BLOB_PREFIX}{id}"))?;
                    Tower::from_bytes(&bytes, &retriever)
                };
                let mut query = load(&s.query_checkpoint)?;
                let mut document = match (&s.document_checkpoint, two_towers) {
                    (Some(id), true) => Some(load(id)?),
                    (None, true) => {
                        return Err(corrupt(format!(
                            "a {} run's state names no document checkpoint",
                            config.mode
                        )));
                    }
                    (_, false) => None,
                };
                let towers =
                    decode_optimizers(&db.get_blob(&s.optimizer_blob)?, &s.optimizer_blob)?;
                let opt_corrupt = |reason: String| Error::CorruptState {
                    blob: s.optimizer_blob.clone(),
                    reason,
                };
                for (name, steps, moments) in towers {
                    let opt = match (name.as_str(), document.as_mut(), reader_tower.as_mut()) {
                        ("query", _, _) => &mut query.opt,
                        ("document", Some(d), _) => &mut d.opt,
                        ("reader", _, Some(r)) => &mut r.opt,
                        _ => {
                            return Err(opt_corrupt(format!(
                                "it holds moments of an unexpected tower {name:?}"
                            )));
                        }
                    };
                    opt.restore(steps, moments)
                        .map_err(|r| opt_corrupt(format!("the {name} tower: {r}")))?;
                }
                let slot = if s.optimizer_blob.ends_with('a') {
                    'a'
                } else {
                    'b'
                };
                (query, document, s.step, slot)
            }
            None => {
                let query = Tower::from_bytes(
                    &retriever.query_encoder(&manifest)?.to_checkpoint_bytes()?,
                    &retriever,
                )?;
                let document = if two_towers {
                    Some(Tower::from_bytes(
                        &retriever
                            .document_encoder(&manifest)?
                            .to_checkpoint_bytes()?,
                        &retriever,
                    )?)
                } else {
                    None
                };
                (query, document, 0, 'b')
            }
        };

        let eval_answers = eval
            .iter()
            .map(|e| (e.answers.clone(), e.in_corpus))
            .collect();
        let eval = eval
            .iter()
            .map(|e| Ok((e.question.clone(), AnswerMatcher::new(e)?)))
            .collect::<Result<Vec<_>>>()?;

        let mut trainer = Trainer {
            retriever,
            config,
            search,
            query,
            document,
            examples: Vec::new(),
            dropped: 0,
            passages: Vec::new(),
            eval,
            eval_answers,
            reader: reader_tower,
            qa: Vec::new(),
            sentences: Vec::new(),
            held_out: Vec::new(),
            doc_matrix: None,
            batch: 0,
            step,
            resumed: state.as_ref().map(|s| s.step),
            slot,
        };
        let available = match trainer.config.mode {
            Mode::QuerySide => {
                trainer.load_doc_matrix()?;
                trainer.supervise(&train)?;
                trainer.examples.len()
            }
            Mode::Dual => {
                trainer.supervise(&train)?;
                trainer.examples.len()
            }
            Mode::Qa => {
                trainer.load_doc_matrix()?;
                for example in train {
                    let answers: Vec<String> = example
                        .answers
                        .into_iter()
                        .filter(|a| !normalize_answer(a).is_empty())
                        .collect();
                    if answers.is_empty() {
                        trainer.dropped += 1;
                    } else {
                        trainer.qa.push(QaPair {
                            question: example.question,
                            answers,
                        });
                    }
                }
                if trainer.qa.is_empty() {
                    return Err(Error::NoData {
                        reason: format!(
                            "qa training needs question-answer pairs with answer strings, and none of the {} given has one",
                            trainer.dropped
                        ),
                    });
                }
                trainer.qa.len()
            }
            Mode::Realm => {
                let (seed, fraction) = (trainer.config.seed, trainer.config.held_out);
                for p in trainer.search.storage().passages() {
                    let p = p?;
                    let held = title_held_out(seed, &p.title, fraction);
                    for sentence in split_sentences(&p.text) {
                        if !salient_spans(sentence).is_empty() {
                            let s = RealmSentence {
                                passage: p.id,
                                text: sentence.to_owned(),
                            };
                            if held {
                                trainer.held_out.push(s);
                            } else {
                                trainer.sentences.push(s);
                            }
                        }
                    }
                }
                if trainer.sentences.is_empty() {
                    return Err(Error::NoData {
                        reason: format!(
                            "REALM training needs sentences with a salient span (a name, date or number), and the corpus has none outside the {} held out",
                            trainer.held_out.len()
                        ),
                    });
                }
                trainer.sentences.len()
            }
            Mode::Ict => {
                for p in trainer.search.storage().passages() {
                    let p = p?;
                    if !p.text.trim().is_empty() {
                        trainer.passages.push((p.title, p.text));
                    }
                }
                if trainer.passages.len() < 2 {
                    return Err(Error::NoData {
                        reason: format!(
                            "ICT needs at least 2 passages for in-batch negatives, and the database has {}",
                            trainer.passages.len()
                        ),
                    });
                }
                trainer.passages.len()
            }
        };
        trainer.batch = trainer.config.batch.min(available);
        Ok(trainer)
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The step the weights are at.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Usable examples: QA pairs with a positive passage (QA: with an answer string), or
    /// passages for ICT.
    pub fn examples(&self) -> usize {
        match self.config.mode {
            Mode::Ict => self.passages.len(),
            Mode::Qa => self.qa.len(),
            Mode::Realm => self.sentences.len(),
            _ => self.examples.len(),
        }
    }

    /// Training questions dropped because no retrieved passage contained an answer (QA:
    /// because they have no answer string).
    pub fn dropped_examples(&self) -> usize {
        self.dropped
    }

    /// The query tower being trained.
    pub fn query_encoder(&self) -> &Encoder {
        &self.query.encoder
    }

    /// The document tower being trained (dual, ICT).
    pub fn document_encoder(&self) -> Option<&Encoder> {
        self.document.as_ref().map(|t| &t.encoder)
    }

    /// The reader being trained (QA).
    pub fn reader(&self) -> Option<&Reader> {
        self.reader.as_ref().map(|r| &r.reader)
    }

    fn load_doc_matrix(&mut self) -> Result<()> {
        let vectors = self.search.storage().vectors()?;
        let rows = vectors
            .ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i as i64))
            .collect();
        let values = Tensor::from_slice(&vectors.values)
            .view([vectors.rows() as i64, vectors.dim as i64])
            .to_device(self.device());
        self.doc_matrix = Some(DocMatrix {
            rows,
            ids: vectors.ids.clone(),
            values,
        });
        Ok(())
    }

    /// Distant supervision with the generation's own query encoder: positives are the
    /// retrieved passages an answer matches.
    fn supervise(&mut self, train: &[QaExample]) -> Result<()> {
        let k = self.config.candidates;
        let mut cache: HashMap<u64, Option<Passage>> = HashMap::new();
        for chunk in train.chunks(INFERENCE_BATCH) {
            let texts: Vec<&str> = chunk.iter().map(|e| e.question.as_str()).collect();
            let ranked = self.search.rank_batch(&texts, k, SearchMode::Dense)?;
            for (example, row) in chunk.iter().zip(ranked) {
                let matcher = AnswerMatcher::new(example)?;
                let mut positives = Vec::new();
                let mut negatives = Vec::new();
                for (id, _) in row {
                    if let Some(m) = &self.doc_matrix
                        && !m.rows.contains_key(&id)
                    {
                        continue;
                    }
                    let passage = match cache.get(&id) {
                        Some(p) => p.clone(),
                        None => {
                            let p = self.search.storage().get(id)?;
                            cache.insert(id, p.clone());
                            p
                        }
                    };
                    let Some(passage) = passage else { continue };
                    if matcher.matches(&passage.text) {
                        positives.push(id);
                    } else {
                        negatives.push(id);
                    }
                }
                if positives.is_empty() {
                    self.dropped += 1;
                } else {
                    self.examples.push(Supervised {
                        question: example.question.clone(),
                        matcher,
                        positives,
                        negatives,
                    });
                }
            }
        }
        if self.examples.is_empty() {
            if train.is_empty() {
                return Err(Error::NoData {
                    reason: format!(
                        "{} training needs question-answer pairs, and none were given",
                        self.config.mode
                    ),
                });
            }
            return Err(Error::NoPositives {
                examples: train.len(),
                candidates: k,
            });
        }
        Ok(())
    }

    fn device(&self) -> Device {
        self.query.encoder.device()
    }

    fn generation(&self) -> u64 {
        self.search.generation_id().unwrap_or(0)
    }

    /// The training step of the weights that built the generation in use.
    fn weights_step(&self) -> u64 {
        self.search
            .storage()
            .generation()
            .and_then(|m| m.spec.provenance.training_step)
            .unwrap_or(0)
    }

    fn seed_dropout(&self, step: u64) {
        tch::manual_seed((derive(self.config.seed, SALT_DROPOUT, step) >> 1) as i64);
    }

    /// Runs to `config.steps`, reporting progress to `on_event`; returning
    /// [`Control::Stop`] from it ends the run after the current step with a checkpoint
    /// (resume it with a new [`Trainer::new`] on the same database and run name).
    ///
    /// At the end of a complete run, query-side training attaches the query tower to the
    /// pinned generation; dual and ICT training publish a generation built with the final
    /// towers.
    pub fn run(&mut self, on_event: &mut dyn FnMut(&Event) -> Control) -> Result<TrainReport> {
        let started = Instant::now();
        let mut em = Emitter {
            callback: on_event,
            stop: false,
        };
        if let Some(step) = self.resumed.take() {
            em.emit(Event::Resumed { step });
        }
        em.emit(Event::Started {
            mode: self.config.mode.name().to_owned(),
            start_step: self.step,
            steps: self.config.steps,
            examples: self.examples(),
            generation: self.generation(),
        });
        let mut report = TrainReport {
            steps_run: 0,
            final_step: self.step,
            generation: self.generation(),
            query_encoder_version: None,
            reader_checkpoint: None,
            qa_skipped: 0,
            first_eval: None,
            last_eval: None,
            generations_published: Vec::new(),
            seconds: 0.0,
        };
        report.first_eval = self.eval_event(&mut em)?;
        let mut builder = match self.config.mode {
            Mode::QuerySide | Mode::Qa => None,
            Mode::Dual => Some(Builder::spawn(self.retriever.clone(), DUAL_NOTE)),
            Mode::Ict => Some(Builder::spawn(self.retriever.clone(), ICT_NOTE)),
            Mode::Realm => Some(Builder::spawn(self.retriever.clone(), REALM_NOTE)),
        };
        let start_step = self.step;
        while self.step < self.config.steps && !em.stop {
            if let Some(b) = &builder {
                self.take_published(b.poll(), &mut em, &mut report)?;
            }
            let step = self.step + 1;
            let t0 = Instant::now();
            let mut realm_batch = None;
            let loss = match self.config.mode {
                Mode::QuerySide => self.query_side_step(step)?,
                Mode::Dual => self.dual_step(step)?,
                Mode::Ict => self.ict_step(step)?,
                Mode::Qa => {
                    let (loss, questions, skipped) = self.qa_step(step)?;
                    report.qa_skipped += skipped as u64;
                    em.emit(Event::QaBatch {
                        step,
                        questions,
                        skipped,
                    });
                    loss
                }
                Mode::Realm => {
                    let (loss, sentences, utility) = self.realm_step(step)?;
                    realm_batch = Some((sentences, utility));
                    loss
                }
            };
            self.step = step;
            let staleness = match self.config.mode {
                Mode::Dual | Mode::Realm => step.saturating_sub(self.weights_step()),
                _ => 0,
            };
            em.emit(Event::Step {
                step,
                loss,
                generation: self.generation(),
                staleness,
                seconds: t0.elapsed().as_secs_f64(),
            });
            if let Some((sentences, utility)) = realm_batch {
                em.emit(Event::RealmBatch {
                    step,
                    sentences,
                    utility,
                });
            }
            let last = step >= self.config.steps;
            if matches!(self.config.mode, Mode::Dual | Mode::Realm)
                && step.is_multiple_of(self.config.refresh_every)
                && !last
                && !em.stop
                && let Some(b) = &builder
            {
                b.request(self.refresh_request(step)?);
            }
            if self.config.eval_every > 0 && step.is_multiple_of(self.config.eval_every) && !last {
                self.eval_event(&mut em)?;
            }
            if self.config.checkpoint_every > 0
                && step.is_multiple_of(self.config.checkpoint_every)
                && !last
                && !em.stop
            {
                self.checkpoint(false, &mut em)?;
            }
        }
        report.steps_run = self.step - start_step;
        let finished = self.step >= self.config.steps;
        if let Some(b) = builder.as_mut() {
            if finished {
                b.request(self.refresh_request(self.step)?);
            } else {
                b.cancel_pending();
            }
            let results = b.finish()?;
            self.take_published(results, &mut em, &mut report)?;
        }
        drop(builder);
        // Query-side and QA mark the state finished only after attaching, so a run killed in
        // between resumes at its last step and attaches then.
        let attaches = matches!(self.config.mode, Mode::QuerySide | Mode::Qa);
        let mut state = self.checkpoint(finished && !attaches, &mut em)?;
        if finished && attaches {
            let (generation, version) = self.attach_query_encoder()?;
            report.query_encoder_version = Some(version);
            em.emit(Event::QueryEncoderAttached {
                generation,
                version,
            });
            if let Some(r) = &self.reader {
                let id = store_reader(&self.retriever, &r.reader)?;
                set_current_reader(&self.retriever, &id)?;
                report.reader_checkpoint = Some(id.clone());
                em.emit(Event::ReaderStored { checkpoint: id });
            }
            state.finished = true;
            self.put_state(&state)?;
        }
        if finished
            && self.config.mode == Mode::Realm
            && let Some(r) = &self.reader
        {
            let id = store_reader(&self.retriever, &r.reader)?;
            set_current_reader(&self.retriever, &id)?;
            report.reader_checkpoint = Some(id.clone());
            em.emit(Event::ReaderStored { checkpoint: id });
        }
        report.last_eval = self.eval_event(&mut em)?;
        report.final_step = self.step;
        report.generation = self.generation();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Handles builder results: announces each published generation and moves to the
    /// current one.
    fn take_published(
        &mut self,
        results: Vec<Result<Published>>,
        em: &mut Emitter<'_>,
        report: &mut TrainReport,
    ) -> Result<()> {
        let mut moved = false;
        for result in results {
            let published = result?;
            report.generations_published.push(published.generation);
            em.emit(Event::Published {
                generation: published.generation,
                weights_step: published.weights_step,
                seconds: published.seconds,
            });
            moved = true;
        }
        if moved {
            self.search = self.retriever.snapshot()?;
        }
        Ok(())
    }

    fn refresh_request(&self, step: u64) -> Result<RefreshRequest> {
        let document = self
            .document
            .as_ref()
            .map(|d| d.encoder.to_checkpoint_bytes())
            .transpose()?
            .unwrap_or_default();
        Ok(RefreshRequest {
            query: self.query.encoder.to_checkpoint_bytes()?,
            document,
            step,
        })
    }

    /// Evaluates and emits [`Event::Eval`] when there are eval questions.
    fn eval_event(&self, em: &mut Emitter<'_>) -> Result<Option<Accuracy>> {
        if let Some((with_retrieval, null_only, sentences)) = self.realm_held_out()? {
            em.emit(Event::RealmHeldOut {
                step: self.step,
                sentences,
                with_retrieval,
                null_only,
                utility: with_retrieval - null_only,
            });
        }
        let Some((questions, accuracy)) = self.evaluate()? else {
            return Ok(None);
        };
        em.emit(Event::Eval {
            step: self.step,
            generation: self.generation(),
            questions,
            top1: accuracy.0,
            top5: accuracy.1,
            top20: accuracy.2,
        });
        if let Some((questions, em_value, in_corpus_em)) = self.exact_match()? {
            em.emit(Event::ExactMatch {
                step: self.step,
                questions,
                em: em_value,
                in_corpus_em,
            });
        }
        Ok(Some(accuracy))
    }

    /// The current query tower's top `reader_passages` rows of the frozen document matrix
    /// for each question, best first, with their scaled scores (no gradient).
    fn retrieve_rows(&self, questions: &[&str], k: usize) -> Result<(Vec<Vec<i64>>, Tensor)> {
        let matrix = self.doc_matrix.as_ref().ok_or(Error::NoGeneration)?;
        let queries = self
            .query
            .encoder
            .encode(questions)?
            .to_device(self.device());
        let (values, rows) = tch::no_grad(|| {
            (queries.matmul(&matrix.values.tr()) * self.config.scale).topk(k as i64, 1, true, true)
        });
        let flat = Vec::<i64>::try_from(&rows.flatten(0, -1).to_device(Device::Cpu))?;
        Ok((flat.chunks(k.max(1)).map(<[i64]>::to_vec).collect(), values))
    }

    /// QA: exact match of the reader over the current query tower's top `reader_passages`
    /// passages, on the held-out questions with answer strings.
    fn exact_match(&self) -> Result<Option<(usize, f64, Option<f64>)>> {
        let (Some(reader), Some(matrix)) = (&self.reader, &self.doc_matrix) else {
            return Ok(None);
        };
        let k = self.config.reader_passages.min(matrix.ids.len());
        let items: Vec<usize> = (0..self.eval.len())
            .filter(|&i| {
                self.eval_answers[i]
                    .0
                    .iter()
                    .any(|a| !normalize_answer(a).is_empty())
            })
            .collect();
        if items.is_empty() || k == 0 {
            return Ok(None);
        }
        let (mut correct, mut in_corpus, mut in_corpus_correct) = (0usize, 0usize, 0usize);
        for chunk in items.chunks(INFERENCE_BATCH) {
            let questions: Vec<&str> = chunk.iter().map(|&i| self.eval[i].0.as_str()).collect();
            let (rows, scores) = self.retrieve_rows(&questions, k)?;
            let probs = tch::no_grad(|| scores.softmax(1, Kind::Float));
            let probs = Vec::<f32>::try_from(&probs.flatten(0, -1).to_device(Device::Cpu))?;
            for (r, &i) in chunk.iter().enumerate() {
                let mut passages = Vec::with_capacity(k);
                for (j, &row) in rows[r].iter().enumerate() {
                    let id = matrix.ids[row as usize];
                    let p = self.search.storage().get(id)?;
                    let (title, text) = p.map(|p| (p.title, p.text)).unwrap_or_default();
                    passages.push((id, title, text, probs[r * k + j]));
                }
                let borrowed: Vec<(u64, &str, &str, f32)> = passages
                    .iter()
                    .map(|(id, title, text, p)| (*id, title.as_str(), text.as_str(), *p))
                    .collect();
                let hit = match reader.reader.answer(questions[r], &borrowed) {
                    Ok(answer) => {
                        let got = normalize_answer(&answer.text);
                        self.eval_answers[i]
                            .0
                            .iter()
                            .any(|a| normalize_answer(a) == got)
                    }
                    Err(realm_reader::Error::NoCandidate { .. }) => false,
                    Err(e) => return Err(e.into()),
                };
                correct += usize::from(hit);
                if self.eval_answers[i].1 == Some(true) {
                    in_corpus += 1;
                    in_corpus_correct += usize::from(hit);
                }
            }
        }
        let n = items.len();
        let in_corpus_em = (in_corpus > 0).then(|| in_corpus_correct as f64 / in_corpus as f64);
        Ok(Some((n, correct as f64 / n as f64, in_corpus_em)))
    }

    /// QA step: retrieve each question's top `reader_passages` passages with the current
    /// query tower, score them with gradient, and minimize the reader's marginal loss
    /// −log Σ_z p(z|x) Σ_{s∈S(z,y)} p(s|z,x). Returns the loss (NaN when every question was
    /// skipped, with no update), the batch size and the skipped questions.
    fn qa_step(&mut self, step: u64) -> Result<(f64, usize, usize)> {
        let idx = batch_indices(self.config.seed, self.qa.len(), self.batch, step);
        let questions: Vec<&str> = idx.iter().map(|&i| self.qa[i].question.as_str()).collect();
        let matrix = self.doc_matrix.as_ref().ok_or(Error::NoGeneration)?;
        let k = self.config.reader_passages.min(matrix.ids.len());
        let (rows, _) = self.retrieve_rows(&questions, k)?;
        let mut texts: Vec<Vec<String>> = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut passage_texts = Vec::with_capacity(k);
            for &r in row {
                let p = self.search.storage().get(matrix.ids[r as usize])?;
                passage_texts.push(p.map(|p| p.text).unwrap_or_default());
            }
            texts.push(passage_texts);
        }
        let device = self.device();
        let b = idx.len() as i64;
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        let d = matrix
            .values
            .index_select(0, &Tensor::from_slice(&flat).to_device(device))
            .view([b, k as i64, -1]);
        self.seed_dropout(step);
        let q = self
            .query
            .encoder
            .forward_t(&self.query.encoder.tokenize(&questions)?, true);
        let log_p_z = (d.matmul(&q.unsqueeze(2)).squeeze_dim(2) * self.config.scale)
            .log_softmax(1, Kind::Float);
        let Some(reader) = self.reader.as_mut() else {
            return Err(Error::NoGeneration);
        };
        let mut losses = Vec::new();
        for (r, &i) in idx.iter().enumerate() {
            let passages: Vec<&str> = texts[r].iter().map(String::as_str).collect();
            if let Some(loss) = reader.reader.qa_loss(
                questions[r],
                &passages,
                &log_p_z.get(r as i64),
                &self.qa[i].answers,
                true,
            )? {
                losses.push(loss);
            }
        }
        let skipped = idx.len() - losses.len();
        if losses.is_empty() {
            self.query.opt.zero_grad();
            reader.opt.zero_grad();
            return Ok((f64::NAN, idx.len(), skipped));
        }
        let loss = Tensor::stack(&losses, 0).mean(Kind::Float);
        loss.backward();
        let value = loss.double_value(&[]);
        let total = self.config.steps;
        reader
            .opt
            .step(learning_rate(self.config.reader_lr, step, total));
        self.query.step(learning_rate(self.config.lr, step, total));
        Ok((value, idx.len(), skipped))
    }

    /// Top-1/5/20 accuracy of the current query tower over the generation in use.
    fn evaluate(&self) -> Result<Option<(usize, Accuracy)>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let mut accuracy = TopKAccuracy::new();
        for chunk in self.eval.chunks(INFERENCE_BATCH) {
            let texts: Vec<&str> = chunk.iter().map(|(q, _)| q.as_str()).collect();
            let queries = self.query.encoder.encode(&texts)?;
            let ranked = self.search.top_k(&queries, 20)?;
            for ((_, matcher), row) in chunk.iter().zip(ranked) {
                let mut texts = Vec::with_capacity(row.len());
                for (id, _) in row {
                    if let Some(p) = self.search.storage().get(id)? {
                        texts.push(p.text);
                    }
                }
                accuracy.add(first_hit(matcher, texts.iter().map(String::as_str)), None);
            }
        }
        Ok(Some((
            accuracy.questions(),
            (
                accuracy.accuracy(1),
                accuracy.accuracy(5),
                accuracy.accuracy(20),
            ),
        )))
    }

    /// Query-side step: cross-entropy of each question against its positive, with the
    /// batch's other positives, hard negatives and pre-batch positives as negatives.
    fn query_side_step(&mut self, step: u64) -> Result<f64> {
        let n = self.examples.len();
        let seed = self.config.seed;
        let idx = batch_indices(seed, n, self.batch, step);
        let mut columns: Vec<u64> = idx.iter().map(|&i| self.examples[i].positives[0]).collect();
        for &i in &idx {
            columns.extend(
                self.examples[i]
                    .negatives
                    .iter()
                    .take(self.config.hard_negatives),
            );
        }
        for back in 1..=self.config.prebatch as u64 {
            if step > back {
                for i in batch_indices(seed, n, self.batch, step - back) {
                    columns.push(self.examples[i].positives[0]);
                }
            }
        }
        let b = idx.len();
        let c = columns.len();
        let mut mask = vec![false; b * c];
        for (r, &i) in idx.iter().enumerate() {
            let example = &self.examples[i];
            let target = columns[r];
            for (col, id) in columns.iter().enumerate() {
                if col != r && (*id == target || example.positives.contains(id)) {
                    mask[r * c + col] = true;
                }
            }
        }
        let device = self.device();
        let matrix = self.doc_matrix.as_ref().ok_or(Error::NoGeneration)?;
        let rows: Vec<i64> = columns.iter().map(|id| matrix.rows[id]).collect();
        let candidates = matrix
            .values
            .index_select(0, &Tensor::from_slice(&rows).to_device(device));
        let questions: Vec<&str> = idx
            .iter()
            .map(|&i| self.examples[i].question.as_str())
            .collect();
        self.seed_dropout(step);
        let tokens = self.query.encoder.tokenize(&questions)?;
        let q = self.query.encoder.forward_t(&tokens, true);
        let mask = Tensor::from_slice(&mask)
            .view([b as i64, c as i64])
            .to_device(device);
        let logits =
            (q.matmul(&candidates.tr()) * self.config.scale).masked_fill(&mask, f64::NEG_INFINITY);
        let targets = Tensor::arange(b as i64, (Kind::Int64, device));
        let loss = logits.cross_entropy_for_logits(&targets);
        loss.backward();
        let value = loss.double_value(&[]);
        let lr = learning_rate(self.config.lr, step, self.config.steps);
        self.query.step(lr);
        Ok(value)
    }

    /// Dual step: re-score the stale index's candidates with the fresh document tower and
    /// maximize the marginal likelihood of each question's positives.
    fn dual_step(&mut self, step: u64) -> Result<f64> {
        let idx = batch_indices(self.config.seed, self.examples.len(), self.batch, step);
        let questions: Vec<&str> = idx
            .iter()
            .map(|&i| self.examples[i].question.as_str())
            .collect();
        let frozen = self.query.encoder.encode(&questions)?;
        let ranked = self.search.top_k(&frozen, self.config.candidates)?;
        let mut seen = HashSet::new();
        let mut passages: Vec<Passage> = Vec::new();
        for row in &ranked {
            for (id, _) in row {
                if seen.insert(*id)
                    && let Some(p) = self.search.storage().get(*id)?
                {
                    passages.push(p);
                }
            }
        }
        let (b, u) = (idx.len(), passages.len());
        let prepared: Vec<PreparedText<'_>> = passages
            .iter()
            .map(|p| PreparedText::new(&p.text))
            .collect();
        let mut positive = Vec::with_capacity(b * u);
        let mut rows_with_positive = Vec::new();
        for (r, &i) in idx.iter().enumerate() {
            let matcher = &self.examples[i].matcher;
            let before = positive.len();
            positive.extend(prepared.iter().map(|p| matcher.matches_prepared(p)));
            if positive[before..].iter().any(|&x| x) {
                rows_with_positive.push(r as i64);
            }
        }
        drop(prepared);
        if rows_with_positive.is_empty() {
            return Ok(f64::NAN);
        }
        let device = self.device();
        self.seed_dropout(step);
        let Some(document) = self.document.as_mut() else {
            return Err(Error::NoGeneration);
        };
        let q = self
            .query
            .encoder
            .forward_t(&self.query.encoder.tokenize(&questions)?, true);
        let docs: Vec<(&str, &str)> = passages
            .iter()
            .map(|p| (p.title.as_str(), p.text.as_str()))
            .collect();
        let d = document
            .encoder
            .forward_t(&document.encoder.tokenize_docs(&docs)?, true);
        let keep = Tensor::from_slice(&rows_with_positive).to_device(device);
        let scores = (q.matmul(&d.tr()) * self.config.scale).index_select(0, &keep);
        let positive = Tensor::from_slice(&positive)
            .view([b as i64, u as i64])
            .to_device(device)
            .index_select(0, &keep);
        let all = scores.logsumexp([1], false);
        let pos = scores
            .masked_fill(&positive.logical_not(), f64::NEG_INFINITY)
            .logsumexp([1], false);
        let loss = (all - pos).mean(Kind::Float);
        loss.backward();
        let value = loss.double_value(&[]);
        let lr = learning_rate(self.config.lr, step, self.config.steps);
        self.query.step(lr);
        document.step(lr);
        Ok(value)
    }

    /// ICT step: in-batch cross-entropy of pseudo-queries against their contexts.
    fn ict_step(&mut self, step: u64) -> Result<f64> {
        let seed = self.config.seed;
        let idx = batch_indices(seed, self.passages.len(), self.batch, step);
        let mut rng = StdRng::seed_from_u64(derive(seed, SALT_ICT, step));
        let pairs: Vec<_> = idx
            .iter()
            .map(|&i| sample_ict_pair(&self.passages[i].1, &mut rng))
            .collect();
        let b = idx.len();
        let mut mask = vec![false; b * b];
        for r in 0..b {
            for c in 0..b {
                mask[r * b + c] = c != r && idx[c] == idx[r];
            }
        }
        let device = self.device();
        self.seed_dropout(step);
        let queries: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
        let docs: Vec<(&str, &str)> = idx
            .iter()
            .zip(&pairs)
            .map(|(&i, p)| (self.passages[i].0.as_str(), p.context.as_str()))
            .collect();
        let Some(document) = self.document.as_mut() else {
            return Err(Error::NoGeneration);
        };
        let q = self
            .query
            .encoder
            .forward_t(&self.query.encoder.tokenize(&queries)?, true);
        let d = document
            .encoder
            .forward_t(&document.encoder.tokenize_docs(&docs)?, true);
        let mask = Tensor::from_slice(&mask)
            .view([b as i64, b as i64])
            .to_device(device);
        let logits = (q.matmul(&d.tr()) * self.config.scale).masked_fill(&mask, f64::NEG_INFINITY);
        let targets = Tensor::arange(b as i64, (Kind::Int64, device));
        let loss = logits.cross_entropy_for_logits(&targets);
        loss.backward();
        let value = loss.double_value(&[]);
        let lr = learning_rate(self.config.lr, step, self.config.steps);
        self.query.step(lr);
        document.step(lr);
        Ok(value)
    }

    /// REALM: masks one salient span of each sentence (the choice derives from `rng`);
    /// sentences whose spans were all truncated away are skipped.
    fn mask_sentences(
        &self,
        sentences: &[(u64, &str)],
        rng: &mut StdRng,
    ) -> Result<Vec<MaskedItem>> {
        let reader = &self.reader.as_ref().ok_or(Error::NoGeneration)?.reader;
        let mask_id = reader.special_token_id("[MASK]")?;
        // Half of the reader's window for the sentence, the rest for the passage.
        let room = reader.config().max_len / 2;
        let mut items = Vec::with_capacity(sentences.len());
        for &(passage, text) in sentences {
            let mut tokens = reader.tokenize_sentence(text)?;
            tokens.ids.truncate(room);
            tokens.offsets.truncate(room);
            let Some(masked) = mask_one(text, &tokens.offsets, rng) else {
                continue;
            };
            let mut ids = tokens.ids.clone();
            let mut targets = Vec::with_capacity(masked.tokens.len());
            for &t in &masked.tokens {
                targets.push((t, tokens.ids[t]));
                ids[t] = mask_id;
            }
            let masks = vec!["[MASK]"; masked.tokens.len()].join(" ");
            let query = format!(
                "{}{masks}{}",
                &text[..masked.span.0],
                &text[masked.span.1..]
            );
            items.push(MaskedItem {
                passage,
                query,
                ids,
                targets,
            });
        }
        Ok(items)
    }

    /// REALM: for each masked sentence, (log p(y|x) with retrieval, as a tensor with
    /// gradient unless disabled, and log p(y|x) with only the null document). Candidates are
    /// the top `reader_passages` of the generation in use (stale index, frozen query tower)
    /// other than the sentence's own passage, re-scored with the current towers; the null
    /// document has the fixed score 0 (its p(z|x) is then softmax-normalized with the
    /// others), so p(z = ∅|x) is large exactly when no passage scores well.
    fn realm_likelihoods(&self, items: &[MaskedItem], train: bool) -> Result<Vec<(Tensor, f64)>> {
        let k = self.config.reader_passages;
        let queries: Vec<&str> = items.iter().map(|m| m.query.as_str()).collect();
        let frozen = self.query.encoder.encode(&queries)?;
        let ranked = self.search.top_k(&frozen, k + 1)?;
        let mut candidates: Vec<Vec<Passage>> = Vec::with_capacity(items.len());
        for (item, row) in items.iter().zip(&ranked) {
            let mut passages = Vec::with_capacity(k);
            for id in realm_candidates(row, item.passage, k) {
                if let Some(p) = self.search.storage().get(id)? {
                    passages.push(p);
                }
            }
            candidates.push(passages);
        }
        let reader = &self.reader.as_ref().ok_or(Error::NoGeneration)?.reader;
        let document = self.document.as_ref().ok_or(Error::NoGeneration)?;
        let q = self
            .query
            .encoder
            .forward_t(&self.query.encoder.tokenize(&queries)?, train);
        let docs: Vec<(&str, &str)> = candidates
            .iter()
            .flatten()
            .map(|p| (p.title.as_str(), p.text.as_str()))
            .collect();
        let d = if docs.is_empty() {
            None
        } else {
            Some(
                document
                    .encoder
                    .forward_t(&document.encoder.tokenize_docs(&docs)?, train),
            )
        };
        let device = self.device();
        let mut out = Vec::with_capacity(items.len());
        let mut offset = 0i64;
        for (r, (item, passages)) in items.iter().zip(&candidates).enumerate() {
            let n = passages.len() as i64;
            let null = Tensor::zeros([1], (Kind::Float, device));
            let scores = match (&d, n) {
                (Some(d), n) if n > 0 => Tensor::cat(
                    &[
                        d.narrow(0, offset, n).matmul(&q.get(r as i64)) * self.config.scale,
                        null,
                    ],
                    0,
                ),
                _ => null,
            };
            offset += n;
            let log_p_z = scores.log_softmax(0, Kind::Float);
            let mut texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
            texts.push("");
            let log_p_y = reader.mlm_log_likelihoods(&item.ids, &item.targets, &texts, train)?;
            let null_only = log_p_y.double_value(&[n]);
            out.push(((log_p_z + log_p_y).logsumexp([0], false), null_only));
        }
        Ok(out)
    }

    /// REALM step: mask a salient span of each sentence of the batch and minimize
    /// −log Σ_z p(z|x) Π_j p(y_j|z,x) over the retrieved passages and the null document.
    /// Returns the loss (NaN, with no update, when no sentence could be masked), the
    /// sentences trained on and the mean retrieval utility.
    fn realm_step(&mut self, step: u64) -> Result<(f64, usize, f64)> {
        let seed = self.config.seed;
        let idx = batch_indices(seed, self.sentences.len(), self.batch, step);
        let mut rng = StdRng::seed_from_u64(derive(seed, SALT_REALM, step));
        let sentences: Vec<(u64, &str)> = idx
            .iter()
            .map(|&i| (self.sentences[i].passage, self.sentences[i].text.as_str()))
            .collect();
        let items = self.mask_sentences(&sentences, &mut rng)?;
        if items.is_empty() {
            return Ok((f64::NAN, 0, f64::NAN));
        }
        self.seed_dropout(step);
        let likelihoods = self.realm_likelihoods(&items, true)?;
        let mut utility = 0.0;
        let mut losses = Vec::with_capacity(likelihoods.len());
        for (with_retrieval, null_only) in likelihoods {
            utility += with_retrieval.double_value(&[]) - null_only;
            losses.push(-with_retrieval);
        }
        let n = losses.len();
        let loss = Tensor::stack(&losses, 0).mean(Kind::Float);
        loss.backward();
        let value = loss.double_value(&[]);
        let total = self.config.steps;
        let lr = learning_rate(self.config.lr, step, total);
        let reader_lr = learning_rate(self.config.reader_lr, step, total);
        let (Some(reader), Some(document)) = (self.reader.as_mut(), self.document.as_mut()) else {
            return Err(Error::NoGeneration);
        };
        reader.opt.step(reader_lr);
        document.step(lr);
        self.query.step(lr);
        Ok((value, n, utility / n as f64))
    }

    /// REALM: the mean over `sentences` ((source passage id, sentence) pairs; one salient
    /// span of each is masked, chosen from `seed`) of log p(y|x) with retrieval and of
    /// log p(y|x) with only the null document, with the current towers and reader
    /// (no dropout, no gradient), and the number of sentences scored. `None` when no
    /// sentence has a salient span, or outside REALM mode.
    pub fn realm_log_likelihood(
        &self,
        sentences: &[(u64, &str)],
        seed: u64,
    ) -> Result<Option<(f64, f64, usize)>> {
        if self.config.mode != Mode::Realm {
            return Ok(None);
        }
        let mut rng = StdRng::seed_from_u64(derive(seed, SALT_REALM, u64::MAX));
        let items = self.mask_sentences(sentences, &mut rng)?;
        if items.is_empty() {
            return Ok(None);
        }
        let likelihoods = tch::no_grad(|| self.realm_likelihoods(&items, false))?;
        let n = likelihoods.len() as f64;
        let (mut with, mut null) = (0.0, 0.0);
        for (w, z) in likelihoods {
            with += w.double_value(&[]);
            null += z;
        }
        Ok(Some((with / n, null / n, items.len())))
    }

    /// REALM: the held-out sentences (at most [`REALM_HELD_OUT_SCORED`] of them), each
    /// `(source passage id, sentence)`.
    pub fn held_out_sentences(&self) -> Vec<(u64, &str)> {
        self.held_out
            .iter()
            .take(REALM_HELD_OUT_SCORED)
            .map(|s| (s.passage, s.text.as_str()))
            .collect()
    }

    /// REALM: [`Trainer::realm_log_likelihood`] of the held-out sentences with the run's
    /// fixed masks; `None` when none is held out.
    fn realm_held_out(&self) -> Result<Option<(f64, f64, usize)>> {
        let held = self.held_out_sentences();
        if held.is_empty() {
            return Ok(None);
        }
        self.realm_log_likelihood(&held, self.config.seed)
    }

    /// Stores the towers and the optimizer state, then the state blob naming them.
    fn checkpoint(&mut self, finished: bool, em: &mut Emitter<'_>) -> Result<TrainerState> {
        let state = self.write_state(finished)?;
        em.emit(Event::Checkpoint { step: self.step });
        Ok(state)
    }

    fn put_state(&self, state: &TrainerState) -> Result<()> {
        Ok(self
            .retriever
            .db()
            .put_blob(&state_blob(&self.config.run), &state.to_bytes())?)
    }

    fn write_state(&mut self, finished: bool) -> Result<TrainerState> {
        let db = self.retriever.db();
        let query_checkpoint = self.retriever.store_encoder(&self.query.encoder)?;
        let document_checkpoint = self
            .document
            .as_ref()
            .map(|d| self.retriever.store_encoder(&d.encoder))
            .transpose()?;
        // The slot the current state does not name: a kill before the state blob is
        // written leaves the previous checkpoint whole.
        let slot = if self.slot == 'a' { 'b' } else { 'a' };
        let optimizer = optimizer_blob(&self.config.run, slot);
        let reader_checkpoint = self
            .reader
            .as_ref()
            .map(|r| store_reader(&self.retriever, &r.reader))
            .transpose()?;
        let mut towers = vec![("query", &self.query.opt)];
        if let Some(d) = &self.document {
            towers.push(("document", &d.opt));
        }
        if let Some(r) = &self.reader {
            towers.push(("reader", &r.opt));
        }
        db.put_blob(&optimizer, &encode_optimizers(&towers)?)?;
        let state = TrainerState {
            format: STATE_FORMAT,
            mode: self.config.mode,
            step: self.step,
            finished,
            config: self.config.clone(),
            generation: self.generation(),
            query_checkpoint,
            document_checkpoint,
            optimizer_blob: optimizer,
            reader_checkpoint,
        };
        self.put_state(&state)?;
        self.slot = slot;
        Ok(state)
    }

    /// Query-side and QA end: attaches the query tower to the pinned generation, unless its last
    /// version already is this tower (a run that was killed right after attaching).
    fn attach_query_encoder(&self) -> Result<(u64, u32)> {
        let generation = self.generation();
        let id = self.retriever.store_encoder(&self.query.encoder)?;
        let db = self.retriever.db();
        if let Some(last) = db.generation(generation)?.query_encoder()
            && last.checkpoint_id == id
        {
            return Ok((generation, last.version));
        }
        let label = if self.config.mode == Mode::Qa {
            QA_NOTE
        } else {
            QUERY_SIDE_NOTE
        };
        let note = format!(
            "{label} (run {:?}, {} steps, seed {})",
            self.config.run, self.step, self.config.seed
        );
        let version = db.attach_query_encoder(generation, &id, &note)?;
        Ok((generation, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_candidates_never_hold_the_source_passage() {
        let row = [(7, 0.9), (3, 0.8), (5, 0.7), (9, 0.1)];
        assert_eq!(realm_candidates(&row, 3, 2), vec![7, 5]);
        assert_eq!(realm_candidates(&row, 7, 3), vec![3, 5, 9]);
        assert_eq!(realm_candidates(&row, 1, 2), vec![7, 3]);
        assert_eq!(realm_candidates(&[(4, 1.0)], 4, 5), Vec::<u64>::new());
        for source in [7, 3, 5, 9] {
            for k in 0..5 {
                assert!(!realm_candidates(&row, source, k).contains(&source));
            }
        }
    }

    #[test]
    fn batches_visit_every_example_once_per_epoch() {
        let n = 10;
        let mut seen: Vec<usize> = (1..=5).flat_map(|s| batch_indices(3, n, 4, s)).collect();
        // Steps 1..=5 cover positions 0..20: two whole epochs.
        let (first, second) = seen.split_at_mut(10);
        first.sort_unstable();
        second.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(second, (0..10).collect::<Vec<_>>());
        // A step's batch depends only on (seed, step).
        assert_eq!(batch_indices(3, n, 4, 4), batch_indices(3, n, 4, 4));
        assert_ne!(
            (1..=3)
                .map(|s| batch_indices(3, n, 4, s))
                .collect::<Vec<_>>(),
            (1..=3)
                .map(|s| batch_indices(4, n, 4, s))
                .collect::<Vec<_>>()
        );
    }
}
