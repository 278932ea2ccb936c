//! Generation matrices resident on the compute device.
//!
//! A [`DeviceMatrix`] holds one generation's vectors in storage (block) order: on the CPU as
//! host rows plus a tensor view of them, elsewhere as a device tensor. The [`MatrixCache`]
//! keeps the current generation's matrix loaded between snapshots and older generations only
//! while a snapshot uses them; a matrix loaded from an older snapshot of the same generation
//! is extended by the blocks written since instead of being reloaded.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use realm_storage::{GenerationId, Snapshot};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::retriever::{Compute, Retriever};

/// A tensor that is never written after construction, shared by searching threads.
#[derive(Debug)]
pub(crate) struct ReadOnlyTensor(pub(crate) Tensor);

// Safety: libtorch tensors may be read from several threads at once. A `ReadOnlyTensor` is
// only ever an input of out-of-place operations (narrow, matmul, masked_fill, index_select,
// to_kind, to_device), which allocate their results and never write to their inputs, and the
// wrapper hands out no mutable access after construction.
#[allow(unsafe_code)]
unsafe impl Sync for ReadOnlyTensor {}

impl std::ops::Deref for ReadOnlyTensor {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        &self.0
    }
}

/// A CPU matrix's rows in host memory, which its tensor aliases.
#[derive(Debug)]
pub(crate) enum HostRows {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl HostRows {
    fn new(compute: Compute, values: Vec<f32>) -> Self {
        match compute {
            Compute::F32 => HostRows::F32(values),
            Compute::F16 => HostRows::F16(values.iter().map(|v| half::f16::from_f32(*v)).collect()),
        }
    }

    fn extended(&self, more: &[f32]) -> Self {
        match self {
            HostRows::F32(v) => HostRows::F32([v.as_slice(), more].concat()),
            HostRows::F16(v) => {
                let mut out = Vec::with_capacity(v.len() + more.len());
                out.extend_from_slice(v);
                out.extend(more.iter().map(|x| half::f16::from_f32(*x)));
                HostRows::F16(out)
            }
        }
    }

    /// A tensor viewing these rows without copying them.
    fn view(&self, rows: usize, dim: usize) -> Tensor {
        let (ptr, kind) = match self {
            HostRows::F32(v) => (v.as_ptr().cast::<u8>(), Kind::Float),
            HostRows::F16(v) => (v.as_ptr().cast::<u8>(), Kind::Half),
        };
        let (rows, dim) = (rows as i64, dim as i64);
        // Safety: `ptr` points at `rows * dim` initialized elements of `kind`, contiguous and
        // row-major. The buffer is never written or reallocated after this point, and the
        // tensor is stored next to it in a `DeviceMatrix` whose field order drops the tensor
        // (and with it every view libtorch made of it inside this crate) before the buffer.
        #[allow(unsafe_code)]
        unsafe {
            Tensor::from_blob(ptr, &[rows, dim], &[dim, 1], kind, Device::Cpu)
        }
    }
}

/// A generation's vectors on the device. Rows are in storage (block) order.
#[derive(Debug)]
pub(crate) struct DeviceMatrix {
    pub(crate) generation: GenerationId,
    /// Declared before `host`, so it is dropped before the rows it may alias.
    pub(crate) tensor: ReadOnlyTensor,
    /// On the CPU, the rows themselves (the tensor is a view of them).
    pub(crate) host: Option<HostRows>,
    pub(crate) dim: usize,
    /// The passage id of each row.
    pub(crate) ids: Vec<u64>,
    /// `rows_after[b]`: rows in blocks `0..=b`.
    rows_after: Vec<usize>,
    /// The row of each passage id, built on first use.
    rows_by_id: OnceLock<HashMap<u64, usize>>,
}

impl DeviceMatrix {
    /// Rows visible to a snapshot that sees `blocks` blocks.
    pub(crate) fn rows_for(&self, blocks: u64) -> usize {
        if blocks == 0 {
            0
        } else {
            self.rows_after[blocks as usize - 1]
        }
    }

    fn blocks(&self) -> u64 {
        self.rows_after.len() as u64
    }

    /// The row holding passage `id`'s vector, if the matrix has one.
    pub(crate) fn row_of(&self, id: u64) -> Option<usize> {
        self.rows_by_id
            .get_or_init(|| {
                self.ids
                    .iter()
                    .enumerate()
                    .map(|(r, &id)| (id, r))
                    .collect()
            })
            .get(&id)
            .copied()
    }

    /// Device memory held, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// The device matrices of a [`Retriever`], by generation.
#[derive(Default)]
pub(crate) struct MatrixCache {
    /// The current generation's matrix stays loaded between snapshots.
    current: Option<Arc<DeviceMatrix>>,
    /// Older generations live only while a snapshot uses them.
    others: HashMap<GenerationId, Weak<DeviceMatrix>>,
    /// Matrices loaded or extended from storage.
    pub(crate) loads: u64,
}

impl Retriever {
    /// The device matrix for a snapshot's generation, loading or extending it as needed.
    pub(crate) fn matrix_for(&self, snapshot: &Snapshot) -> Result<Arc<DeviceMatrix>> {
        let manifest = snapshot
            .generation()
            .ok_or(Error::Storage(realm_storage::Error::NoCurrentGeneration))?;
        let generation = manifest.id;
        let current = self.db().current_generation()? == Some(generation);
        let mut cache = self.inner.matrices.lock();
        let cached = match &cache.current {
            Some(m) if m.generation == generation => Some(m.clone()),
            _ => cache.others.get(&generation).and_then(Weak::upgrade),
        };
        let matrix = match cached {
            Some(m) if m.blocks() >= manifest.blocks => return Ok(m),
            Some(m) => self.extend(&m, snapshot)?,
            None => self.load(snapshot)?,
        };
        cache.loads += 1;
        let matrix = Arc::new(matrix);
        if current {
            if let Some(old) = cache.current.replace(matrix.clone())
                && old.generation != generation
            {
                cache.others.insert(old.generation, Arc::downgrade(&old));
            }
        } else {
            cache.others.insert(generation, Arc::downgrade(&matrix));
        }
        cache.others.retain(|_, w| w.strong_count() > 0);
        Ok(matrix)
    }

    fn device_kind(&self) -> Kind {
        match self.inner.options.compute {
            Compute::F32 => Kind::Float,
            Compute::F16 => Kind::Half,
        }
    }

    fn load(&self, snapshot: &Snapshot) -> Result<DeviceMatrix> {
        let raw = snapshot.vector_blocks(0)?;
        let rows_after = block_rows(&[], &raw.block_sizes);
        let rows = raw.rows();
        let (tensor, host) = self.place(None, raw.values, rows, raw.dim);
        Ok(DeviceMatrix {
            generation: raw.generation,
            tensor,
            host,
            dim: raw.dim,
            ids: raw.ids,
            rows_after,
            rows_by_id: OnceLock::new(),
        })
    }

    fn extend(&self, base: &DeviceMatrix, snapshot: &Snapshot) -> Result<DeviceMatrix> {
        let raw = snapshot.vector_blocks(base.blocks())?;
        let rows_after = block_rows(&base.rows_after, &raw.block_sizes);
        let mut ids = base.ids.clone();
        ids.extend(raw.ids);
        let (tensor, host) = self.place(Some(base), raw.values, ids.len(), raw.dim);
        Ok(DeviceMatrix {
            generation: base.generation,
            tensor,
            host,
            dim: raw.dim,
            ids,
            rows_after,
            rows_by_id: OnceLock::new(),
        })
    }

    /// Puts rows on the device: on the CPU as host rows plus a tensor view of them, else as a
    /// device tensor. `base` holds the rows that come first, if any.
    fn place(
        &self,
        base: Option<&DeviceMatrix>,
        more: Vec<f32>,
        rows: usize,
        dim: usize,
    ) -> (ReadOnlyTensor, Option<HostRows>) {
        let device = self.inner.options.encoder.device;
        if device == Device::Cpu && self.inner.options.host_scan {
            let host = match base.and_then(|b| b.host.as_ref()) {
                Some(h) => h.extended(&more),
                None => HostRows::new(self.inner.options.compute, more),
            };
            let tensor = host.view(rows, dim);
            return (ReadOnlyTensor(tensor), Some(host));
        }
        let fresh = Tensor::from_slice(&more)
            .view([(more.len() / dim.max(1)) as i64, dim as i64])
            .to_kind(self.device_kind())
            .to_device(device);
        let tensor = match base {
            Some(b) => Tensor::cat(&[&*b.tensor, &fresh], 0),
            None => fresh,
        };
        (ReadOnlyTensor(tensor), None)
    }
}

/// Cumulative row counts after each block: `base` extended by freshly read block sizes.
fn block_rows(base: &[usize], sizes: &[usize]) -> Vec<usize> {
    let mut rows_after = base.to_vec();
    let mut total = base.last().copied().unwrap_or(0);
    for size in sizes {
        total += size;
        rows_after.push(total);
    }
    rows_after
}

/// A [N, D] tensor as row-major f32 values on the CPU.
pub fn tensor_rows(t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view(-1);
    Ok(Vec::<f32>::try_from(&t)?)
}
