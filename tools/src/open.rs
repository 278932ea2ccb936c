//! Opening databases (commands that write take the writer's lock; commands that only read
//! open as followers and never take it) and loading encoders.

use std::path::{Path, PathBuf};

use anyhow::Result;
use realm_db::{Db, Device, Encoder, EncoderConfig, Retriever, RetrieverOptions, StorageError};

use crate::cli::DeviceArg;
use crate::error::user;

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
            "another process (a trainer or an ingester, for example) holds the database at {} for writing; this command writes, so run it when that process has finished (reading commands such as search and shell can run meanwhile)",
            dir.display()
        )),
        other => explain_open(dir, other),
    })?;
    Ok(Retriever::new(db, options))
}

/// Opens a database for reading, as a follower: it takes no lock, so it never blocks a writer
/// (a trainer, an ingester) in another process, and it opens whether or not one runs. Its
/// snapshots pin their generations against every process's GC.
pub fn open_reader(dir: &Path, options: RetrieverOptions) -> Result<Retriever> {
    let db = Db::open_read_only(dir).map_err(|e| explain_open(dir, e))?;
    Ok(Retriever::new(db, options))
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
