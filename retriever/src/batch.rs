//! Padded token batches: what the encoder and the reader feed BERT.

use tch::{Device, Tensor};
use tokenizers::Encoding;

use crate::error::Result;

/// A tokenized, padded batch on a model's device. All three tensors are [B, T] int64,
/// `T` being the longest sequence in the batch (dynamic padding).
#[derive(Debug)]
pub struct TokenBatch {
    /// The token ids, padded with the model's padding id.
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// 0 for the first segment, 1 for the second (title/body or question/passage pairs).
    pub token_type_ids: Tensor,
}

impl TokenBatch {
    /// A batch from row-major `[rows, cols]` buffers of ids, mask and token types, moved to
    /// `device`.
    pub fn from_rows(
        shape: [usize; 2],
        ids: &[i64],
        mask: &[i64],
        types: &[i64],
        device: Device,
    ) -> Result<TokenBatch> {
        let shape = [shape[0] as i64, shape[1] as i64];
        let tensor = |v: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(v)?
                .f_view(shape)?
                .f_to_device(device)?)
        };
        Ok(TokenBatch {
            input_ids: tensor(ids)?,
            attention_mask: tensor(mask)?,
            token_type_ids: tensor(types)?,
        })
    }

    /// Pads encodings with `pad_id` (mask 0, token type 0) to the longest one, on `device`.
    pub fn from_encodings(
        encodings: &[&Encoding],
        pad_id: i64,
        device: Device,
    ) -> Result<TokenBatch> {
        let rows = encodings.len();
        let cols = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; rows * cols];
        let mut mask = vec![0i64; rows * cols];
        let mut types = vec![0i64; rows * cols];
        for (row, encoding) in encodings.iter().enumerate() {
            let start = row * cols;
            let tokens = encoding
                .get_ids()
                .iter()
                .zip(encoding.get_type_ids())
                .zip(encoding.get_attention_mask());
            for (col, ((&id, &type_id), &m)) in tokens.enumerate() {
                ids[start + col] = i64::from(id);
                types[start + col] = i64::from(type_id);
                mask[start + col] = i64::from(m);
            }
        }
        Self::from_rows([rows, cols], &ids, &mask, &types, device)
    }

    /// The number of sequences, B.
    pub fn len(&self) -> usize {
        self.input_ids.size().first().map_or(0, |&b| b as usize)
    }

    /// Whether the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The padded length, T.
    pub fn seq_len(&self) -> usize {
        self.input_ids.size().get(1).map_or(0, |&t| t as usize)
    }

    /// A copy of the batch on `device`.
    pub fn to_device(&self, device: Device) -> TokenBatch {
        TokenBatch {
            input_ids: self.input_ids.to_device(device),
            attention_mask: self.attention_mask.to_device(device),
            token_type_ids: self.token_type_ids.to_device(device),
        }
    }
}
