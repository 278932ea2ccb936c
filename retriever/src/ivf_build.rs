//! Building approximate (IVF) indexes: k-means coarse centroids trained on a sample of a
//! generation's rows, an 8-bit scalar quantizer fitted on the same sample, then every row
//! assigned to its list on the compute device and written through the store's
//! [`IndexWriter`](realm_storage::IndexWriter), which publishes the index atomically.

use realm_storage::ivf::{Codes, IndexInfo, IvfParams, Sq8};
use realm_storage::{GenerationId, RowBlocks};
use tch::{Device, Tensor};

use crate::build::Progress;
use crate::error::{Error, Result};
use crate::kmeans::{self, KMeans};
use crate::random::SplitMix64;
use crate::retriever::Retriever;

/// Vector blocks read and assigned per step of a build.
const BLOCKS_PER_STEP: u64 = 64;

/// How to build an IVF index.
#[derive(Clone, Debug, PartialEq)]
pub struct IvfConfig {
    /// Inverted lists (coarse centroids); 0 picks about 4·√rows.
    pub nlist: usize,
    /// How entries encode their rows.
    pub codes: Codes,
    /// Training rows per list (FAISS uses up to 256); the sample is capped at the rows there are.
    pub train_per_list: usize,
    /// k-means iterations.
    pub iterations: usize,
    /// Seed of the training sample and of k-means.
    pub seed: u64,
    /// Free-form text stored with the index.
    pub note: String,
}

impl Default for IvfConfig {
    fn default() -> Self {
        IvfConfig {
            nlist: 0,
            codes: Codes::Sq8,
            train_per_list: 64,
            iterations: 10,
            seed: 0x1f5,
            note: String::new(),
        }
    }
}

impl IvfConfig {
    /// The list count for `rows` rows: the configured one, or about 4·√rows.
    pub fn lists_for(&self, rows: u64) -> usize {
        if self.nlist > 0 {
            return self.nlist;
        }
        ((4.0 * (rows as f64).sqrt()).round() as usize).clamp(1, 65_536)
    }
}

impl Retriever {
    /// Builds an IVF index of `generation` (building or committed) and publishes it as the
    /// generation's next index version: new snapshots search it, held ones keep what they
    /// had. Rows ingested while it is built are covered before it is published.
    pub fn build_index(
        &self,
        generation: GenerationId,
        config: &IvfConfig,
        mut progress: Option<&mut dyn FnMut(Progress)>,
    ) -> Result<IndexInfo> {
        let db = self.db();
        let manifest = db.generation(generation)?;
        let rows = manifest.vector_count;
        let nlist = config.lists_for(rows);
        if rows == 0 || nlist as u64 > rows {
            return Err(Error::InvalidInput {
                reason: format!(
                    "an index of {nlist} lists needs at least as many rows, but generation {generation} has {rows}"
                ),
            });
        }
        let dim = manifest.spec.dim as usize;
        let device = self.options().encoder.device;
        let sample = self.training_sample(generation, manifest.blocks, nlist, config)?;
        let centroids = KMeans {
            clusters: nlist,
            iterations: config.iterations,
            seed: config.seed,
            device,
        }
        .train(&sample, dim)?;
        let params = IvfParams {
            dim: dim as u32,
            nlist: nlist as u32,
            quantizer: Sq8::fit(&sample, dim),
            centroids,
        };
        drop(sample);
        let centroid_tensor = tch::no_grad(|| -> Result<Tensor> {
            Ok(Tensor::f_from_slice(&params.centroids)?
                .f_view([nlist as i64, dim as i64])?
                .f_to_device(device)?)
        })?;
        let mut writer = db.begin_index(generation, params, &config.note)?;
        let mut done = 0u64;
        while let Some(rows) = writer.next_rows(BLOCKS_PER_STEP)? {
            let lists = assign_rows(&rows, &centroid_tensor, device)?;
            writer.write(&rows, &lists)?;
            done += rows.ids.len() as u64;
            if let Some(p) = progress.as_mut() {
                let total = db.generation(generation)?.vector_count.max(done);
                p(Progress { done, total });
            }
        }
        Ok(writer.publish()?)
    }

    /// Rows of randomly chosen whole blocks, about `train_per_list` per list.
    fn training_sample(
        &self,
        generation: GenerationId,
        blocks: u64,
        nlist: usize,
        config: &IvfConfig,
    ) -> Result<Vec<f32>> {
        let want = nlist
            .saturating_mul(config.train_per_list.max(1))
            .max(nlist);
        let mut order: Vec<u64> = (0..blocks).collect();
        let mut rng = SplitMix64::new(config.seed ^ 0x005a_4d50_4c45);
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut sample = Vec::new();
        let mut taken = 0usize;
        for block in order {
            if taken >= want {
                break;
            }
            let rows = self.db().read_blocks(generation, block, 1)?;
            taken += rows.ids.len();
            sample.extend_from_slice(&rows.values);
        }
        Ok(sample)
    }
}

/// Each row's list, computed on `device`.
fn assign_rows(rows: &RowBlocks, centroids: &Tensor, device: Device) -> Result<Vec<u32>> {
    if rows.ids.is_empty() {
        return Ok(Vec::new());
    }
    tch::no_grad(|| -> Result<Vec<u32>> {
        let x = Tensor::f_from_slice(&rows.values)?
            .f_view([rows.ids.len() as i64, rows.dim as i64])?
            .f_to_device(device)?;
        let lists: Vec<i64> =
            Vec::try_from(&kmeans::assign(&x, centroids)?.f_to_device(Device::Cpu)?)?;
        Ok(lists.into_iter().map(|l| l as u32).collect())
    })
}
