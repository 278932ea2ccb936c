//! Checkpoints and resume: every checkpoint stores the towers (encoder blobs, reader blob),
//! AdamW's moments in one of two optimizer slots and, last, the state blob that names them
//! (see docs/format.md, "Trainer state"). A kill before the state blob is written leaves
//! the previous checkpoint whole.

use realm_storage::Db;

use crate::adamw::AdamW;
use crate::config::TrainConfig;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::state::{
    STATE_FORMAT, TrainerState, decode_optimizers, encode_optimizers, optimizer_blob, state_blob,
};

/// The unfinished checkpoint of a run that a new trainer resumes.
pub(crate) struct Resume {
    pub state: TrainerState,
    /// The state blob's name.
    pub blob: String,
}

impl Resume {
    /// The unfinished state of run `config.run` in `config.mode`; `None` when there is none
    /// (a finished run, or one of another mode, starts afresh).
    pub(crate) fn find(db: &Db, config: &TrainConfig) -> Result<Option<Resume>> {
        let blob = state_blob(&config.run);
        if !db.has_blob(&blob)? {
            return Ok(None);
        }
        let state = TrainerState::parse(&db.get_blob(&blob)?, &blob)?;
        Ok((state.mode == config.mode && !state.finished).then_some(Resume { state, blob }))
    }

    /// The document tower's checkpoint id, which a two-tower run's state must name.
    pub(crate) fn document_checkpoint(&self) -> Result<&str> {
        self.state
            .document_checkpoint
            .as_deref()
            .ok_or_else(|| Error::CorruptState {
                blob: self.blob.clone(),
                reason: format!(
                    "a {} run's state names no document checkpoint",
                    self.state.mode
                ),
            })
    }

    /// The optimizer slot the state names; the next checkpoint writes the other one.
    pub(crate) fn slot(&self) -> char {
        if self.state.optimizer_blob.ends_with('a') {
            'a'
        } else {
            'b'
        }
    }

    /// Restores AdamW's moments into `towers` (`(name, optimizer)` of every tower the run
    /// trains); an error when the blob holds a tower the run does not have, or moments that
    /// do not fit.
    pub(crate) fn restore_optimizers(
        &self,
        db: &Db,
        towers: Vec<(&str, &mut AdamW)>,
    ) -> Result<()> {
        let blob = &self.state.optimizer_blob;
        let corrupt = |reason: String| Error::CorruptState {
            blob: blob.clone(),
            reason,
        };
        let mut towers = towers;
        for (name, steps, moments) in decode_optimizers(&db.get_blob(blob)?, blob)? {
            let Some((_, opt)) = towers.iter_mut().find(|(n, _)| *n == name) else {
                return Err(corrupt(format!(
                    "it holds moments of an unexpected tower {name:?}"
                )));
            };
            opt.restore(steps, moments)
                .map_err(|r| corrupt(format!("the {name} tower: {r}")))?;
        }
        Ok(())
    }
}

/// The checkpoints of a run's towers, for its state blob.
pub(crate) struct TowerCheckpoints {
    pub document: Option<String>,
    pub reader: Option<String>,
    /// The phrase encoder's checkpoint id and filter threshold.
    pub phrase: Option<(String, f64)>,
    /// The pinned phrase generation (phrase query-side).
    pub phrase_generation: Option<u64>,
}

/// Unix milliseconds now (0 on a clock before 1970).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes a checkpoint at `step`: the optimizer blob in the slot after `slot` holding
/// `optimizers` (`(name, optimizer)` of every tower), then the state blob naming the
/// query tower (stored here) and `towers`. Returns the state and the slot written.
pub(crate) fn write(
    ctx: &Context,
    step: u64,
    slot: char,
    finished: bool,
    towers: TowerCheckpoints,
    optimizers: &[(&str, &AdamW)],
) -> Result<(TrainerState, char)> {
    let db = ctx.retriever.db();
    let query_checkpoint = ctx.retriever.store_encoder(&ctx.query.encoder)?;
    let slot = if slot == 'a' { 'b' } else { 'a' };
    let optimizer = optimizer_blob(&ctx.config.run, slot);
    db.put_blob(&optimizer, &encode_optimizers(optimizers)?)?;
    let mut state = TrainerState {
        format: STATE_FORMAT,
        mode: ctx.config.mode,
        step,
        finished,
        config: ctx.config.clone(),
        generation: ctx.generation(),
        query_checkpoint,
        document_checkpoint: towers.document,
        optimizer_blob: optimizer,
        reader_checkpoint: towers.reader,
        phrase_threshold: towers.phrase.as_ref().map(|p| p.1),
        phrase_checkpoint: towers.phrase.map(|p| p.0),
        phrase_generation: towers.phrase_generation,
        saved_ms: None,
    };
    put_state(ctx, &mut state)?;
    Ok((state, slot))
}

/// Writes `state` as the run's state blob, stamped with the time of writing.
pub(crate) fn put_state(ctx: &Context, state: &mut TrainerState) -> Result<()> {
    state.saved_ms = Some(now_ms());
    Ok(ctx
        .retriever
        .db()
        .put_blob(&state_blob(&ctx.config.run), &state.to_bytes())?)
}
