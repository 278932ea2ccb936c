//! Opening databases (as the writer, or as a read-only follower when another process holds
//! the database) and loading encoders.

use std::path::{Path, PathBuf};

use anyhow::Result;
use realm_db::{Db, Device, Encoder, EncoderConfig, Retriever, RetrieverOptions, StorageError};

use crate::cli::DeviceArg;
use crate::error::user;

/// How a database was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Writer,
    /// Read-only: another process holds the database for writing.
    Follower,
}

/// The retriever settings for a device choice.
pub fn retriever_options(device: DeviceArg) -> Result<RetrieverOptions> {
    let mut options = RetrieverOptions::default();
    options.encoder.device = match device {
        DeviceArg::Auto => Device::cuda_if_available(),
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => match Device::cuda_if_available() {
            Device::Cpu => {
                return Err(user(
                    "--device cuda was given, but no CUDA device is available to libtorch",
                ));
            }
            cuda => cuda,
        },
    };
    Ok(options)
}

/// Turns "no database here" into a message that names the command that creates one.
fn explain_open(dir: &Path, err: StorageError) -> anyhow::Error {
    match err {
        StorageError::NotFound { .. } => user(format!(
            "no realm-db database exists at {}; create one with `realm-db init {}`",
            dir.display(),
            dir.display()
        )),
        other => anyhow::Error::new(other),
    }
}

/// Opens a database for writing. A database held by another process is a user error.
pub fn open_writer(dir: &Path, options: RetrieverOptions) -> Result<Retriever> {
    let db = Db::open(dir).map_err(|e| match e {
        StorageError::Locked { .. } => user(format!(
            "another process (a shell or a trainer, for example) holds the database at {} for writing; this command writes, so run it when that process has finished",
            dir.display()
        )),
        other => explain_open(dir, other),
    })?;
    Ok(Retriever::new(db, options))
}

/// Opens a database for reading: as the writer when it is free, else as a read-only follower
/// of the process that holds it (saying so on stderr when `announce` is set).
pub fn open_reader(
    dir: &Path,
    options: RetrieverOptions,
    announce: bool,
) -> Result<(Retriever, Access)> {
    match Db::open(dir) {
        Ok(db) => Ok((Retriever::new(db, options), Access::Writer)),
        Err(StorageError::Locked { .. }) => {
            let mut attempt = 1;
            let db = loop {
                match Db::builder(dir).follower(true).open() {
                    // The same race with the writer's compactions as in `follower_retry`.
                    Err(StorageError::Rocks { .. }) if attempt < 6 => {
                        std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
                        attempt += 1;
                    }
                    other => break other.map_err(|e| explain_open(dir, e))?,
                }
            };
            if announce {
                eprintln!(
                    "note: another process holds {} for writing; opened it as a read-only follower.",
                    dir.display()
                );
            }
            Ok((Retriever::new(db, options), Access::Follower))
        }
        Err(e) => Err(explain_open(dir, e)),
    }
}

/// The default model folder, as a user error when none is installed.
pub fn default_model() -> Result<PathBuf> {
    realm_db::default_model_dir().map_err(|e| {
        user(format!(
            "{e}; pass a model folder with --model instead of relying on the default"
        ))
    })
}

/// Loads an encoder from a Hugging Face model folder or an encoder checkpoint file (as
/// written by `Encoder::to_checkpoint_bytes`).
pub fn load_encoder(path: &Path, config: EncoderConfig) -> Result<Encoder> {
    let loaded = if path.is_dir() {
        Encoder::load(path, config)
    } else if path.is_file() {
        let bytes = std::fs::read(path).map_err(|e| {
            user(format!(
                "cannot read the checkpoint file {}: {e}",
                path.display()
            ))
        })?;
        Encoder::from_checkpoint_bytes(&bytes, None, config)
    } else {
        return Err(user(format!(
            "no model folder or encoder checkpoint file exists at {}",
            path.display()
        )));
    };
    loaded.map_err(|e| match e {
        realm_db::Error::ModelFile { .. }
        | realm_db::Error::Checkpoint { .. }
        | realm_db::Error::Tokenizer { .. }
        | realm_db::Error::Io { .. } => user(format!(
            "the encoder at {} cannot be loaded: {e}",
            path.display()
        )),
        other => anyhow::Error::new(other)
            .context(format!("cannot load the encoder at {}", path.display())),
    })
}

/// Whether the error's chain holds a RocksDB failure or data that a torn read-only view
/// can show as corrupt (a row block missing under a manifest that names it).
fn is_rocks_error(err: &anyhow::Error) -> bool {
    let torn =
        |e: &StorageError| matches!(e, StorageError::Rocks { .. } | StorageError::Corrupt { .. });
    err.chain().any(|cause| {
        cause.downcast_ref::<StorageError>().is_some_and(torn)
            || matches!(
                cause.downcast_ref::<realm_db::Error>(),
                Some(realm_db::Error::Storage(e)) if torn(e)
            )
    })
}

/// Runs `op`; on a follower, retries it a few times after a RocksDB error. A follower opens
/// a fresh read-only view for every snapshot, and that open races with the writer's
/// compactions: a table file listed in the MANIFEST it read can be deleted before it is
/// opened ("No such file or directory"), or a flush can move rows out of the log it replays
/// into a table its MANIFEST does not list yet, so a generation's manifest is seen without
/// its blocks (reported as corrupt). A moment later the view is consistent again; data
/// that stays corrupt fails after the last try.
pub fn follower_retry<T>(db: &Db, mut op: impl FnMut() -> Result<T>) -> Result<T> {
    let attempts: u32 = if db.is_follower() { 6 } else { 1 };
    let mut attempt = 1;
    loop {
        match op() {
            Err(e) if attempt < attempts && is_rocks_error(&e) => {
                std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}
