//! Masked-language-model scoring for REALM pre-training (Guu et al. 2020, §2.3): the
//! log-likelihood log p(y|z,x) of the masked tokens y of a sentence x read together with a
//! retrieved passage z, `[CLS] x [SEP] z [SEP]`, or with the null document, `[CLS] x [SEP]`.

use realm_retriever::encoder::TokenBatch;
use tch::{Kind, Tensor};

use crate::error::{Error, Result, tokenizer_error};
use crate::reader::Reader;

/// A sentence as WordPiece tokens, without special tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentenceTokens {
    /// The token ids.
    pub ids: Vec<i64>,
    /// Each token's byte range in the sentence.
    pub offsets: Vec<(usize, usize)>,
}

impl Reader {
    /// The id of a special token such as `"[MASK]"`.
    pub fn special_token_id(&self, token: &str) -> Result<i64> {
        self.tokenizer()
            .token_to_id(token)
            .map(i64::from)
            .ok_or_else(|| Error::InvalidInput {
                reason: format!("the tokenizer has no token {token:?}"),
            })
    }

    /// Tokenizes a sentence without special tokens (truncated at the reader's `max_len`).
    pub fn tokenize_sentence(&self, text: &str) -> Result<SentenceTokens> {
        let encoding = self
            .tokenizer()
            .encode(text, false)
            .map_err(tokenizer_error)?;
        Ok(SentenceTokens {
            ids: encoding.get_ids().iter().map(|&i| i64::from(i)).collect(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// log p(y|z,x) for each passage z of `passages` (an empty passage is the null document,
    /// read as `[CLS] x [SEP]`): the sum over `targets` (position in `masked_ids`, true token
    /// id) of the MLM log-probability of the true token, as a tensor [P] with gradient (unless
    /// the caller disables it). `masked_ids` is the sentence with its masked tokens already
    /// replaced; passages are truncated so that each row fits `max_len`. `train` turns dropout
    /// on.
    pub fn mlm_log_likelihoods(
        &self,
        masked_ids: &[i64],
        targets: &[(usize, i64)],
        passages: &[&str],
        train: bool,
    ) -> Result<Tensor> {
        let max_len = self.config().max_len;
        if masked_ids.len() + 3 > max_len {
            return Err(Error::InvalidInput {
                reason: format!(
                    "a masked sentence of {} tokens does not fit max_len {max_len}",
                    masked_ids.len()
                ),
            });
        }
        if passages.is_empty() || targets.is_empty() {
            return Err(Error::InvalidInput {
                reason: "MLM scoring needs at least one passage and one masked token".to_owned(),
            });
        }
        if let Some(&(p, _)) = targets.iter().find(|(p, _)| *p >= masked_ids.len()) {
            return Err(Error::InvalidInput {
                reason: format!("the masked position {p} is outside the sentence"),
            });
        }
        let cls = self.special_token_id("[CLS]")?;
        let sep = self.special_token_id("[SEP]")?;
        let mut rows: Vec<(Vec<i64>, usize)> = Vec::with_capacity(passages.len());
        for passage in passages {
            let mut ids = Vec::with_capacity(max_len);
            ids.push(cls);
            ids.extend_from_slice(masked_ids);
            ids.push(sep);
            let first = ids.len();
            if !passage.is_empty() {
                let room = max_len - ids.len() - 1;
                let z = self.tokenize_sentence(passage)?;
                ids.extend(z.ids.iter().take(room));
                ids.push(sep);
            }
            rows.push((ids, first));
        }
        let cols = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let n = rows.len();
        let mut ids = vec![0i64; n * cols];
        let mut mask = vec![0i64; n * cols];
        let mut types = vec![0i64; n * cols];
        for (r, (row, first)) in rows.iter().enumerate() {
            for (c, &id) in row.iter().enumerate() {
                ids[r * cols + c] = id;
                mask[r * cols + c] = 1;
                types[r * cols + c] = i64::from(c >= *first);
            }
        }
        let device = self.config().device;
        let batch = TokenBatch::from_rows([n, cols], &ids, &mask, &types, device)?;
        let positions: Vec<i64> = targets.iter().map(|&(p, _)| p as i64 + 1).collect();
        let positions = Tensor::f_from_slice(&positions)?.f_to_device(device)?;
        let truth: Vec<i64> = targets.iter().map(|&(_, id)| id).collect();
        let m = targets.len() as i64;
        let picked = self
            .mlm_logits_at(
                &batch.input_ids,
                &batch.attention_mask,
                &batch.token_type_ids,
                &positions,
                train,
            )
            .f_log_softmax(-1, Kind::Float)?;
        let truth = Tensor::f_from_slice(&truth)?
            .f_to_device(device)?
            .f_view([1, m, 1])?
            .f_expand([n as i64, m, 1], false)?;
        Ok(picked
            .f_gather(2, &truth, false)?
            .f_squeeze_dim(2)?
            .f_sum_dim_intlist(1, false, Kind::Float)?)
    }
}
