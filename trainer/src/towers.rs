//! What trains: an encoder tower or the reader, each with its own AdamW, and where a run's
//! towers come from (the generation's encoders, the database's current reader, a model
//! folder, or a checkpoint being resumed), and the phrase encoder of phrase training.

use realm_reader::{Reader, ReaderConfig};
use realm_retriever::phrase::{PhraseEncoder, PhraseEncoderConfig};
use realm_retriever::{ENCODER_BLOB_PREFIX, Encoder, Retriever};

use crate::adamw::{AdamW, WEIGHT_DECAY};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::state::TrainerState;

/// A trainable encoder and its optimizer.
pub(crate) struct Tower {
    pub encoder: Encoder,
    pub opt: AdamW,
}

impl Tower {
    /// A trainable copy of the encoder serialized in `bytes`.
    pub(crate) fn from_bytes(bytes: &[u8], retriever: &Retriever) -> Result<Tower> {
        let mut encoder =
            Encoder::from_checkpoint_bytes(bytes, None, retriever.options().encoder.clone())?;
        encoder.var_store_mut().unfreeze();
        let opt = AdamW::for_var_store(encoder.var_store(), WEIGHT_DECAY);
        Ok(Tower { encoder, opt })
    }

    /// A trainable copy of `encoder`.
    pub(crate) fn copy_of(encoder: &Encoder, retriever: &Retriever) -> Result<Tower> {
        Tower::from_bytes(&encoder.to_checkpoint_bytes()?, retriever)
    }

    /// The stored encoder checkpoint `id` (blob `encoder/<id>`), made trainable.
    pub(crate) fn stored(id: &str, retriever: &Retriever) -> Result<Tower> {
        let bytes = retriever
            .db()
            .get_blob(&format!("{ENCODER_BLOB_PREFIX}{id}"))?;
        Tower::from_bytes(&bytes, retriever)
    }

    /// One optimizer step at learning rate `lr`.
    pub(crate) fn step(&mut self, lr: f64) {
        self.opt.step(lr);
    }
}

/// The reader and its optimizer (QA, REALM).
pub(crate) struct ReaderTower {
    pub reader: Reader,
    pub opt: AdamW,
}

impl ReaderTower {
    /// Makes `reader` trainable.
    pub(crate) fn new(mut reader: Reader) -> ReaderTower {
        reader.var_store_mut().unfreeze();
        let opt = AdamW::for_var_store(reader.var_store(), WEIGHT_DECAY);
        ReaderTower { reader, opt }
    }

    /// The reader a run starts from: the checkpoint its resumed `state` names; else `given`;
    /// else the database's current reader; else one loaded from `config.reader_model` (or the
    /// default model folder) with heads initialized from the seed. Its p(z|x) temperature is
    /// set to the one the run trains with.
    pub(crate) fn start(
        retriever: &Retriever,
        config: &TrainConfig,
        resumed: Option<(&TrainerState, &str)>,
        given: Option<Reader>,
    ) -> Result<ReaderTower> {
        let device = retriever.options().encoder.device;
        let cfg = given.as_ref().map_or_else(
            || ReaderConfig {
                device,
                ..ReaderConfig::default()
            },
            |r| r.config().clone(),
        );
        let mut reader = match (resumed, given) {
            (Some((state, blob)), _) => {
                let id = state
                    .reader_checkpoint
                    .as_deref()
                    .ok_or_else(|| Error::CorruptState {
                        blob: blob.to_owned(),
                        reason: format!("a {} run's state names no reader checkpoint", config.mode),
                    })?;
                realm_reader::store::load_reader(retriever, id, cfg)?
            }
            (None, Some(r)) => r,
            (None, None) => match realm_reader::store::current_reader(retriever, cfg.clone())? {
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
        reader.set_span_normalization(config.span_normalization);
        Ok(ReaderTower::new(reader))
    }

    /// One optimizer step at learning rate `lr`.
    pub(crate) fn step(&mut self, lr: f64) {
        self.opt.step(lr);
    }
}

/// The phrase encoder and its optimizer (phrase training).
pub(crate) struct PhraseTower {
    pub encoder: PhraseEncoder,
    pub opt: AdamW,
}

impl PhraseTower {
    /// Makes `encoder` trainable.
    pub(crate) fn new(mut encoder: PhraseEncoder) -> PhraseTower {
        encoder.var_store_mut().unfreeze();
        let opt = AdamW::for_var_store(encoder.var_store(), WEIGHT_DECAY);
        PhraseTower { encoder, opt }
    }

    /// The phrase encoder a run starts from: the checkpoint its resumed `state` names; else
    /// `given`; else the encoder of the database's current phrase generation (with its
    /// filter threshold); else one loaded from `config.reader_model` (or the default model
    /// folder) with new heads.
    pub(crate) fn start(
        retriever: &Retriever,
        config: &TrainConfig,
        resumed: Option<(&TrainerState, &str)>,
        given: Option<PhraseEncoder>,
    ) -> Result<PhraseTower> {
        let cfg = PhraseEncoderConfig {
            max_len: 0,
            device: retriever.options().encoder.device,
            ..PhraseEncoderConfig::default()
        };
        let load = |id: &str, threshold: f64| -> Result<PhraseEncoder> {
            let cfg = PhraseEncoderConfig {
                filter_threshold: threshold,
                ..cfg.clone()
            };
            Ok(retriever.load_phrase_encoder(id, cfg)?)
        };
        let encoder = match (resumed, given) {
            (Some((state, blob)), _) => {
                let id = state
                    .phrase_checkpoint
                    .as_deref()
                    .ok_or_else(|| Error::CorruptState {
                        blob: blob.to_owned(),
                        reason: "a phrase run's state names no phrase encoder checkpoint"
                            .to_owned(),
                    })?;
                load(id, state.phrase_threshold.unwrap_or(0.0))?
            }
            (None, Some(encoder)) => encoder,
            (None, None) => match retriever.db().current_phrase_generation()? {
                Some(generation) => {
                    let spec = retriever.db().phrase_generation(generation)?.spec;
                    load(&spec.encoder_checkpoint_id, spec.filter_threshold)?
                }
                None => {
                    let dir = match &config.reader_model {
                        Some(dir) => dir.clone(),
                        None => realm_retriever::default_model_dir()?,
                    };
                    PhraseEncoder::load(
                        &dir,
                        None,
                        PhraseEncoderConfig {
                            max_len: PhraseEncoderConfig::default().max_len,
                            ..cfg
                        },
                    )?
                }
            },
        };
        Ok(PhraseTower::new(encoder))
    }

    /// One optimizer step at learning rate `lr`.
    pub(crate) fn step(&mut self, lr: f64) {
        self.opt.step(lr);
    }
}
