//! Reading a sentence-transformers / Hugging Face model folder: `config.json`,
//! `modules.json` and the pooling module, `sentence_bert_config.json`, `tokenizer.json`,
//! and the weights in `model.safetensors`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tch::nn;
use tokenizers::Tokenizer;

use crate::bert::BertConfig;
use crate::encoder::{DocFormat, EncoderHead, Pooling};
use crate::error::{Error, Result};
use crate::tokenizer::load_tokenizer;
use crate::weights::{TensorFile, load_pretrained};

/// What a sentence-transformers / Hugging Face model folder provides.
#[derive(Debug)]
pub struct ModelFolder {
    /// The folder holding `config.json`, `model.safetensors` and `tokenizer.json` (the
    /// Transformer module's folder when `modules.json` names one).
    pub root: PathBuf,
    /// The BERT configuration from `config.json`.
    pub bert: BertConfig,
    /// The head that `modules.json` describes (mean pooling without normalization when
    /// there is no `modules.json`), with joined documents and no projection.
    pub head: EncoderHead,
    /// `max_seq_length` from `sentence_bert_config.json`, when present.
    pub max_seq_length: Option<usize>,
    /// The tokenizer from `tokenizer.json`, as stored.
    pub tokenizer: Tokenizer,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

impl ModelFolder {
    /// Reads `modules.json` (when present), the pooling module's `config.json`,
    /// `config.json`, `sentence_bert_config.json` (when present) and `tokenizer.json`.
    pub fn read(dir: &Path) -> Result<ModelFolder> {
        let modules_path = dir.join("modules.json");
        let modules: Option<Vec<ModuleEntry>> = read_json_if_present(&modules_path)?;
        let (root, head) = match modules {
            None => (dir.to_path_buf(), EncoderHead::mean(false)),
            Some(modules) => Self::head_from_modules(dir, &modules_path, &modules)?,
        };
        let bert = BertConfig::from_file(&root.join("config.json"))?;
        let sbert_path = root.join("sentence_bert_config.json");
        let sbert: Option<SentenceBertFile> = read_json_if_present(&sbert_path)?;
        if sbert.as_ref().is_some_and(|s| s.do_lower_case) {
            return Err(Error::ModelFile {
                path: sbert_path,
                reason:
                    "do_lower_case is true, and lower-casing outside the tokenizer is not supported"
                        .to_owned(),
            });
        }
        let tokenizer = load_tokenizer(&root.join("tokenizer.json"))?;
        Ok(ModelFolder {
            root,
            bert,
            head,
            max_seq_length: sbert.and_then(|s| s.max_seq_length),
            tokenizer,
        })
    }

    /// Fills the variables of `vs` that `bert_name` maps to a BERT variable name from the
    /// folder's `model.safetensors` (Hugging Face names, with or without a `bert.` prefix,
    /// TensorFlow's `gamma`/`beta` accepted); the others are left alone.
    pub fn load_weights(
        &self,
        vs: &nn::VarStore,
        bert_name: impl Fn(&str) -> Option<&str>,
    ) -> Result<()> {
        let path = self.root.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        TensorFile::parse(&bytes)
            .and_then(|file| load_pretrained(vs, &file, bert_name))
            .map_err(|e| Error::ModelFile {
                path: path.clone(),
                reason: e.to_string(),
            })
    }

    fn head_from_modules(
        dir: &Path,
        modules_path: &Path,
        modules: &[ModuleEntry],
    ) -> Result<(PathBuf, EncoderHead)> {
        let unsupported = |reason: String| Error::ModelFile {
            path: modules_path.to_path_buf(),
            reason,
        };
        let mut root = None;
        let mut pooling = None;
        let mut normalize = false;
        for module in modules {
            let kind = module.kind.rsplit('.').next().unwrap_or_default();
            match kind {
                "Transformer" => root = Some(dir.join(&module.path)),
                "Pooling" => {
                    let path = dir.join(&module.path).join("config.json");
                    let file: PoolingFile = read_json(&path)?;
                    pooling = Some(pooling_from_file(&file).ok_or_else(|| Error::ModelFile {
                        path: path.clone(),
                        reason: "only a single mean or [CLS] pooling mode is supported".to_owned(),
                    })?);
                }
                "Normalize" => normalize = true,
                _ => {
                    return Err(unsupported(format!(
                        "the module type {:?} is not supported (only Transformer, Pooling and Normalize are)",
                        module.kind
                    )));
                }
            }
        }
        let root = root.ok_or_else(|| unsupported("it lists no Transformer module".to_owned()))?;
        let pooling =
            pooling.ok_or_else(|| unsupported("it lists no Pooling module".to_owned()))?;
        let pooling = match pooling {
            Pooling::Mean { .. } => Pooling::Mean { normalize },
            Pooling::Cls if normalize => {
                return Err(unsupported(
                    "a Normalize module after [CLS] pooling is not supported".to_owned(),
                ));
            }
            Pooling::Cls => Pooling::Cls,
        };
        let head = EncoderHead {
            pooling,
            projection_dim: None,
            doc_format: DocFormat::Joined,
        };
        Ok((root, head))
    }
}

fn pooling_from_file(file: &PoolingFile) -> Option<Pooling> {
    let others = file.pooling_mode_max_tokens
        || file.pooling_mode_mean_sqrt_len_tokens
        || file.pooling_mode_weightedmean_tokens
        || file.pooling_mode_lasttoken;
    match (
        file.pooling_mode_mean_tokens,
        file.pooling_mode_cls_token,
        others,
    ) {
        (true, false, false) => Some(Pooling::Mean { normalize: false }),
        (false, true, false) => Some(Pooling::Cls),
        _ => None,
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::ModelFile {
        path: path.to_path_buf(),
        reason: format!("its JSON does not have the expected shape ({e})"),
    })
}

fn read_json_if_present<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::metadata(path) {
        Ok(_) => read_json(path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
