//! Blob garbage collection: deletes the encoder checkpoints, phrase encoders, readers and
//! trainer blobs that nothing can use any more (see docs/format.md, "Blob garbage
//! collection"). It lives in the trainer, the lowest crate that knows every kind of blob:
//! generations name encoders, phrase generations name phrase encoders, `reader/current` names
//! a reader, and trainer states name towers and optimizer slots.

use std::collections::BTreeSet;

use realm_reader::store::{CURRENT_READER_BLOB, READER_BLOB_PREFIX};
use realm_retriever::ENCODER_BLOB_PREFIX;
use realm_retriever::phrase::PHRASE_ENCODER_BLOB_PREFIX;
use realm_storage::{BlobInfo, Db};

use crate::error::Result;
use crate::state::TrainerState;

const TRAINER_BLOB_PREFIX: &str = "trainer/";
const STATE_SUFFIX: &str = "/state";
const OPTIMIZER_SUFFIXES: [&str; 2] = ["/optimizer-a", "/optimizer-b"];

/// What [`collect_blobs`] keeps beyond what it always keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobGcOptions {
    /// Keep the states of only this many finished runs, the most recently saved (states
    /// without `saved_ms` count as the oldest), with the towers they name; `None` keeps
    /// every finished run's state.
    pub keep_runs: Option<usize>,
}

/// A blob kept because it could not be read, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableBlob {
    pub name: String,
    /// The error that reading or parsing it gave, as a sentence.
    pub reason: String,
}

/// What [`collect_blobs`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobGcReport {
    /// The blobs deleted, by name, with their lengths.
    pub collected: Vec<BlobInfo>,
    /// Bytes of the blobs kept.
    pub bytes_kept: u64,
    /// Blobs that could not be read (a trainer state, `reader/current`): they are kept, and
    /// so is every blob they might name.
    pub unreadable: Vec<UnreadableBlob>,
}

impl BlobGcReport {
    /// Bytes of the blobs deleted.
    pub fn bytes_freed(&self) -> u64 {
        self.collected.iter().map(|b| b.bytes).sum()
    }
}

/// What a blob's name says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind<'a> {
    /// `encoder/<id>`.
    Encoder,
    /// `phrase-encoder/<id>`.
    PhraseEncoder,
    /// `reader/<id>`.
    Reader,
    /// `trainer/<run>/state`.
    State { run: &'a str },
    /// `trainer/<run>/optimizer-a` or `-b`.
    Optimizer { run: &'a str },
    /// `reader/current`, other names under `trainer/<run>/`, and users' blobs: always kept.
    Kept,
}

fn kind(name: &str) -> Kind<'_> {
    if name.starts_with(ENCODER_BLOB_PREFIX) {
        return Kind::Encoder;
    }
    if name.starts_with(PHRASE_ENCODER_BLOB_PREFIX) {
        return Kind::PhraseEncoder;
    }
    if name == CURRENT_READER_BLOB {
        return Kind::Kept;
    }
    if name.starts_with(READER_BLOB_PREFIX) {
        return Kind::Reader;
    }
    let Some(rest) = name.strip_prefix(TRAINER_BLOB_PREFIX) else {
        return Kind::Kept;
    };
    let run_of = |suffix: &str| rest.strip_suffix(suffix).filter(|run| !run.is_empty());
    if let Some(run) = run_of(STATE_SUFFIX) {
        return Kind::State { run };
    }
    match OPTIMIZER_SUFFIXES.iter().find_map(|s| run_of(s)) {
        Some(run) => Kind::Optimizer { run },
        None => Kind::Kept,
    }
}

/// The blobs that must stay.
#[derive(Default)]
struct Roots {
    names: BTreeSet<String>,
    /// Runs whose state could not be read: every blob of theirs stays.
    unreadable_runs: BTreeSet<String>,
    /// Some unreadable blob may name any encoder, phrase encoder or reader.
    all_encoders: bool,
    all_phrase_encoders: bool,
    all_readers: bool,
    unreadable: Vec<UnreadableBlob>,
}

impl Roots {
    fn encoder(&mut self, id: &str) {
        self.names.insert(format!("{ENCODER_BLOB_PREFIX}{id}"));
    }

    fn phrase_encoder(&mut self, id: &str) {
        self.names
            .insert(format!("{PHRASE_ENCODER_BLOB_PREFIX}{id}"));
    }

    fn reader(&mut self, id: &str) {
        self.names.insert(format!("{READER_BLOB_PREFIX}{id}"));
    }

    /// A state and the towers it names (not its optimizer slot).
    fn state(&mut self, name: &str, state: &TrainerState) {
        self.names.insert(name.to_owned());
        self.encoder(&state.query_checkpoint);
        if let Some(id) = &state.document_checkpoint {
            self.encoder(id);
        }
        if let Some(id) = &state.reader_checkpoint {
            self.reader(id);
        }
        if let Some(id) = &state.phrase_checkpoint {
            self.phrase_encoder(id);
        }
    }

    fn unreadable(&mut self, name: &str, reason: String) {
        self.all_encoders = true;
        self.all_phrase_encoders = true;
        self.all_readers = true;
        self.unreadable.push(UnreadableBlob {
            name: name.to_owned(),
            reason,
        });
    }

    fn keeps(&self, name: &str) -> bool {
        if self.names.contains(name) {
            return true;
        }
        match kind(name) {
            Kind::Encoder => self.all_encoders,
            Kind::PhraseEncoder => self.all_phrase_encoders,
            Kind::Reader => self.all_readers,
            Kind::State { run } | Kind::Optimizer { run } => self.unreadable_runs.contains(run),
            Kind::Kept => true,
        }
    }
}

/// A blob's bytes, or why they cannot be read (a damaged blob); other storage errors stop
/// the collection.
fn read(db: &Db, name: &str) -> Result<Result<Vec<u8>, String>> {
    match db.get_blob(name) {
        Ok(bytes) => Ok(Ok(bytes)),
        Err(e @ realm_storage::Error::Corrupt { .. }) => Ok(Err(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the blobs that nothing can use any more, and reports what it deleted and kept.
///
/// Kept (the roots): the encoder checkpoints that any stored generation names (its document
/// encoder and every query-encoder version: run [`Db::gc`] first to drop old generations);
/// the phrase encoders of every stored phrase generation (its spec's and every query-encoder
/// version's);
/// `reader/current` and the reader it names; for each unfinished run, its state, the
/// optimizer slot the state names and the towers it names; for each finished run, its state
/// and towers (a phrase run's phrase encoder among them), unless
/// [`BlobGcOptions::keep_runs`] leaves it out. Collected: every other `encoder/<id>`,
/// `phrase-encoder/<id>` and `reader/<id>`, both optimizer slots of finished runs, the slot an
/// unfinished run's state does not name, and states left out by `keep_runs`. Blobs outside
/// `encoder/`, `phrase-encoder/`, `reader/` and `trainer/`, and other names under
/// `trainer/<run>/`, are kept.
/// A state or `reader/current` that cannot be read is kept and reported, and then no
/// encoder, phrase encoder or reader is collected (nor any blob of that run): what cannot be accounted for
/// is never deleted.
///
/// It must not run while this process trains or builds a generation: a tower is stored
/// just before the state that names it, and a generation's encoder just before its
/// manifest, so a collection in between would delete it. Other processes cannot interfere:
/// collecting needs the writer's handle, which only one process holds (`realm-db gc`).
pub fn collect_blobs(db: &Db, options: &BlobGcOptions) -> Result<BlobGcReport> {
    if db.is_follower() {
        return Err(realm_storage::Error::ReadOnly { path: db.path() }.into());
    }
    let blobs = db.blobs()?;
    let roots = roots(db, &blobs, options)?;
    let mut report = BlobGcReport {
        unreadable: roots.unreadable.clone(),
        ..BlobGcReport::default()
    };
    for blob in blobs {
        if roots.keeps(&blob.name) {
            report.bytes_kept += blob.bytes;
        } else {
            report.collected.push(blob);
        }
    }
    let names: Vec<String> = report.collected.iter().map(|b| b.name.clone()).collect();
    db.delete_blobs(&names)?;
    Ok(report)
}

fn roots(db: &Db, blobs: &[BlobInfo], options: &BlobGcOptions) -> Result<Roots> {
    let mut roots = Roots::default();
    for info in db.generations()? {
        let manifest = info.manifest;
        if let Some(id) = &manifest.spec.provenance.checkpoint_id {
            roots.encoder(id);
        }
        for version in &manifest.query_encoders {
            roots.encoder(&version.checkpoint_id);
        }
    }
    for info in db.phrase_generations()? {
        let manifest = info.manifest;
        roots.phrase_encoder(&manifest.spec.encoder_checkpoint_id);
        for version in &manifest.query_encoders {
            roots.phrase_encoder(&version.checkpoint_id);
        }
    }
    if blobs.iter().any(|b| b.name == CURRENT_READER_BLOB) {
        let id = read(db, CURRENT_READER_BLOB)?.and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_owned())
        });
        match id {
            Ok(id) => roots.reader(id.trim()),
            Err(reason) => {
                roots.all_readers = true;
                roots.unreadable.push(UnreadableBlob {
                    name: CURRENT_READER_BLOB.to_owned(),
                    reason,
                });
            }
        }
    }
    let mut finished = Vec::new();
    for blob in blobs {
        let Kind::State { run } = kind(&blob.name) else {
            continue;
        };
        let state = read(db, &blob.name)?
            .and_then(|bytes| TrainerState::parse(&bytes, &blob.name).map_err(|e| e.to_string()));
        match state {
            Err(reason) => {
                roots.unreadable_runs.insert(run.to_owned());
                roots.unreadable(&blob.name, reason);
            }
            Ok(state) if state.finished => finished.push((blob.name.as_str(), state)),
            Ok(state) => {
                roots.state(&blob.name, &state);
                roots.names.insert(state.optimizer_blob.clone());
            }
        }
    }
    // Newest first; states without a time are the oldest, ties broken by name.
    finished.sort_by(|(a, x), (b, y)| y.saved_ms.cmp(&x.saved_ms).then(a.cmp(b)));
    let keep = options.keep_runs.unwrap_or(usize::MAX);
    for (name, state) in finished.iter().take(keep) {
        roots.state(name, state);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use realm_storage::phrase_rows::PhraseRows;
    use realm_storage::{Dtype, NewPassage, PhraseGenerationSpec};

    #[test]
    fn the_query_encoder_versions_of_phrase_generations_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(dir.path().join("db")).unwrap();
        let id = db.insert(&[NewPassage::new("T", "some text")]).unwrap()[0].id();
        let spec = PhraseGenerationSpec::new("built", 2, Dtype::F32);
        let mut writer = db.begin_phrase_generation(spec).unwrap();
        writer
            .write(&[(id, PhraseRows::empty(2).unwrap())])
            .unwrap();
        let generation = writer.commit().unwrap();
        db.attach_phrase_query_encoder(generation, "tuned", "")
            .unwrap();
        let blob = |id: &str| format!("{PHRASE_ENCODER_BLOB_PREFIX}{id}");
        for id in ["built", "tuned", "orphan"] {
            db.put_blob(&blob(id), b"weights").unwrap();
        }
        let report = collect_blobs(&db, &BlobGcOptions::default()).unwrap();
        let collected: Vec<&str> = report.collected.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(collected, [blob("orphan")]);
        assert!(db.has_blob(&blob("built")).unwrap());
        assert!(db.has_blob(&blob("tuned")).unwrap());
    }

    #[test]
    fn names_are_classified_by_prefix_and_suffix() {
        assert_eq!(kind("encoder/abc"), Kind::Encoder);
        assert_eq!(kind("phrase-encoder/abc"), Kind::PhraseEncoder);
        assert_eq!(kind("reader/abc"), Kind::Reader);
        assert_eq!(kind("reader/current"), Kind::Kept);
        assert_eq!(kind("trainer/r/state"), Kind::State { run: "r" });
        assert_eq!(kind("trainer/a/b/state"), Kind::State { run: "a/b" });
        assert_eq!(kind("trainer/r/optimizer-a"), Kind::Optimizer { run: "r" });
        assert_eq!(kind("trainer/r/optimizer-b"), Kind::Optimizer { run: "r" });
        for kept in [
            "trainer/r/optimizer-c",
            "trainer/r/notes",
            "trainer//state",
            "trainer/state",
            "notes/x",
            "encoder",
            "readers/x",
        ] {
            assert_eq!(kind(kept), Kind::Kept, "{kept}");
        }
    }
}
