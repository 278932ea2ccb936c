//! Where the default pretrained encoder lives.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The folder of the default pretrained encoder, sentence-transformers all-MiniLM-L6-v2 as
/// installed by `scripts/setup.sh`: `$REALM_DB_MODEL` if set when running, else the folder
/// the build was configured with (`.cargo/config.toml`).
pub fn default_model_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("REALM_DB_MODEL")
        .map(PathBuf::from)
        .or_else(|| option_env!("REALM_DB_MODEL").map(PathBuf::from))
        .ok_or_else(|| Error::ModelFile {
            path: PathBuf::from("$REALM_DB_MODEL"),
            reason: "no default model is configured; run scripts/setup.sh or set REALM_DB_MODEL to a model folder".into(),
        })?;
    if !dir.join("config.json").is_file() {
        return Err(Error::ModelFile {
            path: dir,
            reason: "the folder holds no config.json; run scripts/setup.sh or point REALM_DB_MODEL at a Hugging Face model folder".into(),
        });
    }
    Ok(dir)
}
