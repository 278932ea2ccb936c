//! The trainer state stored in the database: a JSON state blob naming the tower
//! checkpoints and an optimizer blob with AdamW's moments (see docs/format.md, "Trainer
//! state").

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::adamw::{AdamW, f32_values};
use crate::config::{Mode, TrainConfig};
use crate::error::{Error, Result};

/// The version of the state and optimizer blob formats.
pub const STATE_FORMAT: u32 = 1;

const OPTIMIZER_MAGIC: &[u8; 8] = b"REALMOPT";

/// The name of a run's state blob.
pub fn state_blob(run: &str) -> String {
    format!("trainer/{run}/state")
}

/// The name of one of a run's two optimizer blob slots (`a` or `b`).
pub fn optimizer_blob(run: &str, slot: char) -> String {
    format!("trainer/{run}/optimizer-{slot}")
}

/// The JSON state blob `trainer/<run>/state`, written last at every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// [`STATE_FORMAT`].
    pub format: u32,
    pub mode: Mode,
    /// The step the stored weights are at.
    pub step: u64,
    /// Whether the run completed (a finished run is not resumed).
    pub finished: bool,
    pub config: TrainConfig,
    /// The generation the run trains against (query-side: the pinned one).
    pub generation: u64,
    /// The query tower's checkpoint id (blob `encoder/<id>`).
    pub query_checkpoint: String,
    /// The document tower's checkpoint id (dual, ICT).
    pub document_checkpoint: Option<String>,
    /// The optimizer blob holding AdamW's state of `step`.
    pub optimizer_blob: String,
    /// QA: the reader's checkpoint id (blob `reader/<id>`); absent from other modes' states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_checkpoint: Option<String>,
    /// Phrase training: the phrase encoder's checkpoint id (blob `phrase-encoder/<id>`) and
    /// the filter threshold it builds phrase generations with; absent from other modes'
    /// states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phrase_checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phrase_threshold: Option<f64>,
    /// Phrase query-side training: the phrase generation the run trains against (pinned);
    /// absent from other modes' states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phrase_generation: Option<u64>,
    /// When the state was last written (Unix milliseconds); absent from states written before
    /// it was recorded. Blob GC's `keep_runs` keeps the most recently saved finished runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_ms: Option<u64>,
}

impl TrainerState {
    /// Parses a state blob.
    pub fn parse(bytes: &[u8], blob: &str) -> Result<TrainerState> {
        let state: TrainerState =
            serde_json::from_slice(bytes).map_err(|e| Error::CorruptState {
                blob: blob.to_owned(),
                reason: format!("it is not trainer-state JSON ({e})"),
            })?;
        if state.format != STATE_FORMAT {
            return Err(Error::CorruptState {
                blob: blob.to_owned(),
                reason: format!(
                    "it has format {}, but this build reads only format {STATE_FORMAT}",
                    state.format
                ),
            });
        }
        Ok(state)
    }

    /// The blob's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and enums always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize)]
struct OptimizerHeader {
    format: u32,
    towers: Vec<TowerHeader>,
}

#[derive(Serialize, Deserialize)]
struct TowerHeader {
    tower: String,
    step: u64,
    params: Vec<ParamHeader>,
}

#[derive(Serialize, Deserialize)]
struct ParamHeader {
    name: String,
    shape: Vec<i64>,
}

/// One tower's restored optimizer state: its name, step count and `(name, m, v)`.
pub type TowerMoments = (String, u64, Vec<(String, Tensor, Tensor)>);

/// Serializes optimizers: `b"REALMOPT"`, a little-endian u64 header length, a JSON header
/// (per tower: its name, step count, and each variable's name and shape), then for every
/// tower and variable in header order `m` and then `v` as little-endian f32.
pub fn encode_optimizers(towers: &[(&str, &AdamW)]) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut header = OptimizerHeader {
        format: STATE_FORMAT,
        towers: Vec::new(),
    };
    for (tower, opt) in towers {
        let mut params = Vec::new();
        for (name, m, v) in opt.moments() {
            params.push(ParamHeader {
                name: name.to_owned(),
                shape: m.size(),
            });
            for t in [m, v] {
                for x in f32_values(t)? {
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        header.towers.push(TowerHeader {
            tower: (*tower).to_owned(),
            step: opt.steps(),
            params,
        });
    }
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(16 + header.len() + data.len());
    out.extend_from_slice(OPTIMIZER_MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Parses [`encode_optimizers`]' bytes into CPU tensors.
pub fn decode_optimizers(bytes: &[u8], blob: &str) -> Result<Vec<TowerMoments>> {
    let corrupt = |reason: String| Error::CorruptState {
        blob: blob.to_owned(),
        reason,
    };
    let rest = bytes
        .strip_prefix(OPTIMIZER_MAGIC)
        .ok_or_else(|| corrupt("it does not start with the optimizer magic bytes".into()))?;
    let (len, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("it ends before its header length".into()))?;
    let len = usize::try_from(u64::from_le_bytes(*len)).unwrap_or(usize::MAX);
    if len > rest.len() {
        return Err(corrupt(format!(
            "its header claims {len} bytes but only {} remain",
            rest.len()
        )));
    }
    let (header, mut data) = rest.split_at(len);
    let header: OptimizerHeader = serde_json::from_slice(header)
        .map_err(|e| corrupt(format!("its header is not the expected JSON ({e})")))?;
    if header.format != STATE_FORMAT {
        return Err(corrupt(format!(
            "it has format {}, but this build reads only format {STATE_FORMAT}",
            header.format
        )));
    }
    let mut out = Vec::new();
    for tower in header.towers {
        let mut moments = Vec::new();
        for p in tower.params {
            let numel = p
                .shape
                .iter()
                .try_fold(1usize, |acc, &d| {
                    usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
                })
                .ok_or_else(|| corrupt(format!("the shape of {:?} is invalid", p.name)))?;
            let mut take = || -> Result<Tensor> {
                let bytes = numel
                    .checked_mul(4)
                    .filter(|&b| b <= data.len())
                    .ok_or_else(|| {
                        corrupt(format!("it ends inside the moments of {:?}", p.name))
                    })?;
                let (head, tail) = data.split_at(bytes);
                data = tail;
                let values: Vec<f32> = head
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Ok(Tensor::from_slice(&values).view(p.shape.as_slice()))
            };
            let m = take()?;
            let v = take()?;
            moments.push((p.name, m, v));
        }
        out.push((tower.tower, tower.step, moments));
    }
    if !data.is_empty() {
        return Err(corrupt(format!(
            "it has {} unexpected bytes after its last moments",
            data.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn state_blobs_without_qa_fields_still_parse() {
        let mut state = TrainerState {
            format: STATE_FORMAT,
            mode: Mode::QuerySide,
            step: 3,
            finished: false,
            config: TrainConfig::default(),
            generation: 1,
            query_checkpoint: "q".to_owned(),
            document_checkpoint: None,
            optimizer_blob: "trainer/r/optimizer-a".to_owned(),
            reader_checkpoint: None,
            phrase_checkpoint: None,
            phrase_threshold: None,
            phrase_generation: None,
            saved_ms: None,
        };
        let mut json: serde_json::Value = serde_json::from_slice(&state.to_bytes()).unwrap();
        assert!(json.get("reader_checkpoint").is_none());
        assert!(json.get("saved_ms").is_none());
        let config = json["config"].as_object_mut().unwrap();
        for key in ["reader_lr", "reader_passages", "reader_model"] {
            assert!(config.remove(key).is_some());
        }
        let old = serde_json::to_vec(&json).unwrap();
        assert_eq!(TrainerState::parse(&old, "x").unwrap(), state);
        state.mode = Mode::Qa;
        state.config.mode = Mode::Qa;
        state.reader_checkpoint = Some("r".to_owned());
        state.saved_ms = Some(1_700_000_000_000);
        assert_eq!(TrainerState::parse(&state.to_bytes(), "x").unwrap(), state);
        assert_eq!("qa".parse::<Mode>().unwrap(), Mode::Qa);
        assert_eq!(Mode::Qa.to_string(), "qa");
    }

    #[test]
    fn optimizer_state_round_trips_exactly() {
        let w = Tensor::from_slice(&[0.5f32, -1.25, 3.0, 0.1])
            .view([2, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[0.3f32]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![
                ("w".to_owned(), w.shallow_clone()),
                ("b".to_owned(), b.shallow_clone()),
            ],
            0.01,
        );
        ((&w * &w).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float)).backward();
        opt.step(0.01);
        let bytes = encode_optimizers(&[("query", &opt)]).unwrap();
        let towers = decode_optimizers(&bytes, "x").unwrap();
        assert_eq!(towers.len(), 1);
        let (name, step, moments) = towers.into_iter().next().unwrap();
        assert_eq!((name.as_str(), step), ("query", 1));
        let mut copy = AdamW::new(
            vec![
                ("w".to_owned(), w.shallow_clone()),
                ("b".to_owned(), b.shallow_clone()),
            ],
            0.01,
        );
        copy.restore(step, moments).unwrap();
        for ((n1, m1, v1), (n2, m2, v2)) in opt.moments().zip(copy.moments()) {
            assert_eq!(n1, n2);
            assert!(m1.equal(m2) && v1.equal(v2));
        }
        assert!(decode_optimizers(&bytes[..bytes.len() - 1], "x").is_err());
        assert!(matches!(
            decode_optimizers(b"nonsense", "trainer/r/optimizer-a"),
            Err(Error::CorruptState { blob, .. }) if blob == "trainer/r/optimizer-a"
        ));
    }
}
