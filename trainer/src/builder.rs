//! The index-builder thread of dual, ICT and REALM training: it rebuilds the corpus with a
//! copy of the towers into a new generation and publishes it while training goes on
//! against the previous one (REALM's asynchronous index refresh, as MVCC).

use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use realm_retriever::{BuildOptions, Encoder, IvfConfig, Retriever};
use realm_storage::Provenance;

use crate::error::{Error, Result};

/// A request to the index builder: both towers' checkpoints and the step of their weights.
pub(crate) struct RefreshRequest {
    pub query: Vec<u8>,
    pub document: Vec<u8>,
    pub step: u64,
}

/// A generation the builder published.
pub(crate) struct Published {
    pub generation: u64,
    pub weights_step: u64,
    pub seconds: f64,
}

/// The index-builder thread: it builds and publishes a generation for each request it
/// receives; at most one request waits while it builds.
pub(crate) struct Builder {
    requests: Option<Sender<RefreshRequest>>,
    /// The receiving end, kept to replace a waiting request by a newer one.
    pending: Receiver<RefreshRequest>,
    results: Receiver<Result<Published>>,
    handle: Option<JoinHandle<()>>,
}

impl Builder {
    pub(crate) fn spawn(retriever: Retriever, note: &'static str) -> Builder {
        let (tx, rx) = crossbeam_channel::bounded::<RefreshRequest>(1);
        let (res_tx, res_rx) = crossbeam_channel::unbounded();
        let worker_rx = rx.clone();
        let handle = std::thread::spawn(move || {
            for request in worker_rx.iter() {
                let result = build_refresh(&retriever, &request, note);
                let failed = result.is_err();
                if res_tx.send(result).is_err() || failed {
                    break;
                }
            }
        });
        Builder {
            requests: Some(tx),
            pending: rx,
            results: res_rx,
            handle: Some(handle),
        }
    }

    /// Queues a request, replacing one that is still waiting.
    pub(crate) fn request(&self, mut request: RefreshRequest) {
        let Some(tx) = &self.requests else { return };
        loop {
            match tx.try_send(request) {
                Ok(()) => return,
                Err(TrySendError::Full(r)) => {
                    let _ = self.pending.try_recv();
                    request = r;
                }
                // The builder stopped after a failure; its error waits in `results`.
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// Results reported so far.
    pub(crate) fn poll(&self) -> Vec<Result<Published>> {
        self.results.try_iter().collect()
    }

    /// Drops a waiting request.
    pub(crate) fn cancel_pending(&self) {
        while self.pending.try_recv().is_ok() {}
    }

    /// Lets the builder finish its queue and waits for it; returns the remaining results.
    pub(crate) fn finish(&mut self) -> Result<Vec<Result<Published>>> {
        self.requests = None;
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            return Err(Error::BuilderPanicked);
        }
        Ok(self.poll())
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        self.requests = None;
        self.cancel_pending();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn build_refresh(retriever: &Retriever, request: &RefreshRequest, note: &str) -> Result<Published> {
    let started = Instant::now();
    let cfg = retriever.options().encoder.clone();
    let document = Encoder::from_checkpoint_bytes(&request.document, None, cfg.clone())?;
    let query = Encoder::from_checkpoint_bytes(&request.query, None, cfg)?;
    let parent = retriever.db().current_generation()?;
    // A refresh keeps the parent's approximate index: the new generation is published with
    // an index of the same shape, trained on its own vectors, in the same commit.
    let passages = retriever.db().stats()?.passages.max(1) as usize;
    let index = match parent {
        Some(p) => retriever
            .db()
            .indexes(p)?
            .into_iter()
            .rfind(|i| i.state == realm_storage::ivf::IndexState::Ready)
            .map(|i| IvfConfig {
                nlist: (i.nlist as usize).min(passages),
                codes: i.codes,
                note: format!("refresh at step {}", request.step),
                ..IvfConfig::default()
            }),
        None => None,
    };
    let generation = retriever.build_generation(
        &document,
        BuildOptions {
            provenance: Provenance {
                training_step: Some(request.step),
                checkpoint_id: None,
                parent,
                note: note.to_owned(),
            },
            query_encoder: Some(&query),
            index,
            ..BuildOptions::default()
        },
    )?;
    Ok(Published {
        generation,
        weights_step: request.step,
        seconds: started.elapsed().as_secs_f64(),
    })
}
