//! Pins across processes. Every handle that pins a generation registers its pins in its own
//! file under `<db>/readers/`, which it holds with an advisory lock for as long as it lives,
//! so the writer's GC (in whichever process) sees them, and the file of a process that died
//! (its lock released by the kernel, SIGKILL included) is recognised as stale and removed.
//!
//! The GC lock, `readers/gc.lock` (`gc_lock.rs`), orders pinning against collecting: a handle takes it
//! shared while it catches up, reads the generation it pins and records the pin, and GC takes
//! it exclusively while it reads every pin file and writes its deletes. Either the pin is in
//! its file before GC reads the files, or GC's deletes are written before the pinning handle
//! reads the generation, which it then finds collected. The format is in `docs/format.md`,
//! "Pins across processes".

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::GenerationId;
use crate::error::{Error, Result};
use crate::gc_lock::{GcLock, READERS_DIR, unwritable};

const PIN_SUFFIX: &str = ".pins";

/// Who pins a generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinHolders {
    /// Live snapshots of this handle.
    pub here: usize,
    /// Other live handles (other processes, or other handles of this process) with at least
    /// one snapshot of it.
    pub elsewhere: usize,
}

impl PinHolders {
    /// Whether anything pins the generation.
    pub fn any(&self) -> bool {
        self.here > 0 || self.elsewhere > 0
    }
}

/// This handle's pins and its pin file.
pub(crate) struct PinRegistry {
    dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// Live snapshots per generation, in this handle.
    counts: BTreeMap<GenerationId, usize>,
    /// The shared lock file and this handle's pin file, opened at the first pin; `None`
    /// before, and for good where the folder cannot be written (read-only media, where no
    /// writer can run either, so there is no GC to hold off).
    files: Option<Files>,
    unwritable: bool,
}

struct Files {
    gc_lock: GcLock,
    own: File,
    own_path: PathBuf,
}

impl Files {
    /// Rewrites this handle's pin file from its counts. Callers hold the shared GC lock, so
    /// GC, which reads with the lock exclusive, never sees it half written.
    fn write(&self, counts: &BTreeMap<GenerationId, usize>) -> Result<()> {
        let text = encode(counts);
        let io = |source| Error::Io {
            path: self.own_path.clone(),
            source,
        };
        let mut file = &self.own;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.set_len(text.len() as u64).map_err(io)?;
        Ok(())
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        // The lock goes with the descriptor; a file left behind is stale and GC removes it.
        let _ = std::fs::remove_file(&self.own_path);
    }
}

impl PinRegistry {
    pub(crate) fn new(db_path: &Path) -> Self {
        PinRegistry {
            dir: db_path.join(READERS_DIR),
            state: Mutex::new(State {
                counts: BTreeMap::new(),
                files: None,
                unwritable: false,
            }),
        }
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    }

    /// Runs `take` (which catches up, reads the generation to pin and returns it with its
    /// result) under the shared GC lock, and registers the pin before the lock is released.
    pub(crate) fn pin<T>(
        &self,
        take: impl FnOnce() -> Result<(T, Option<GenerationId>)>,
    ) -> Result<T> {
        let mut state = self.state.lock();
        self.open_files(&mut state)?;
        let State { counts, files, .. } = &mut *state;
        let files = files.as_ref();
        let _guard = match files {
            Some(files) => Some(files.gc_lock.shared()?),
            None => None,
        };
        let (value, generation) = take()?;
        if let Some(g) = generation {
            *counts.entry(g).or_default() += 1;
            if let Some(files) = files
                && let Err(e) = files.write(counts)
            {
                release(counts, g);
                return Err(e);
            }
        }
        Ok(value)
    }

    /// Releases one pin of `generation`. A pin file that cannot be rewritten keeps the pin
    /// on disk until this handle closes, which only delays GC.
    pub(crate) fn unpin(&self, generation: GenerationId) {
        let mut state = self.state.lock();
        let State { counts, files, .. } = &mut *state;
        release(counts, generation);
        if let Some(files) = files
            && let Ok(_guard) = files.gc_lock.shared()
        {
            let _ = files.write(counts);
        }
    }

    /// Runs `collect` with every live pin (this handle's and every other live handle's),
    /// holding the GC lock exclusively so that no handle pins meanwhile. Stale pin files
    /// are removed on the way.
    pub(crate) fn exclusive<T>(
        &self,
        collect: impl FnOnce(&BTreeMap<GenerationId, PinHolders>) -> Result<T>,
    ) -> Result<T> {
        let mut state = self.state.lock();
        self.open_files(&mut state)?;
        let Some(files) = &state.files else {
            let holders = merge(&state.counts, Vec::new());
            return collect(&holders);
        };
        let _guard = files.gc_lock.exclusive()?;
        self.read_others(&files.own_path)
            .and_then(|others| collect(&merge(&state.counts, others)))
    }

    /// Every live pin, as [`PinRegistry::exclusive`] sees it.
    pub(crate) fn holders(&self) -> Result<BTreeMap<GenerationId, PinHolders>> {
        self.exclusive(|holders| Ok(holders.clone()))
    }

    fn open_files(&self, state: &mut State) -> Result<()> {
        if state.files.is_some() || state.unwritable {
            return Ok(());
        }
        let Some(gc_lock) = GcLock::open(self.dir.parent().unwrap_or(&self.dir))? else {
            state.unwritable = true;
            return Ok(());
        };
        let own_path = self.dir.join(unique_name());
        let own = {
            // Created and locked under the shared GC lock, so GC never sees it unlocked.
            let _guard = gc_lock.shared()?;
            let own = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&own_path)
            {
                Ok(own) => own,
                // Read-only media (or another user's folder): pins stay in this process.
                Err(e) if unwritable(&e) => {
                    state.unwritable = true;
                    return Ok(());
                }
                Err(e) => return Err(self.io(&own_path)(e)),
            };
            own.lock().map_err(self.io(&own_path))?;
            own
        };
        state.files = Some(Files {
            gc_lock,
            own,
            own_path,
        });
        Ok(())
    }

    /// The pins of every other live handle; files of dead ones are removed.
    fn read_others(&self, own: &Path) -> Result<Vec<BTreeMap<GenerationId, usize>>> {
        let entries = std::fs::read_dir(&self.dir).map_err(self.io(&self.dir))?;
        let mut others = Vec::new();
        for entry in entries {
            let path = entry.map_err(self.io(&self.dir))?.path();
            let is_pins = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(PIN_SUFFIX));
            if !is_pins || path == own {
                continue;
            }
            let mut file = match File::open(&path) {
                Ok(file) => file,
                // Its handle closed meanwhile.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(&path)(e)),
            };
            match file.try_lock() {
                Ok(()) => {
                    // No live handle holds it: its process died without removing it.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(self.io(&path)(e)),
            }
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(self.io(&path))?;
            others.push(decode(&text, &path)?);
        }
        Ok(others)
    }
}

fn release(counts: &mut BTreeMap<GenerationId, usize>, generation: GenerationId) {
    if let Some(n) = counts.get_mut(&generation) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&generation);
        }
    }
}

/// `<pid>-<nanoseconds>-<counter>.pins`: unique among live handles of every process.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}{PIN_SUFFIX}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One line per pinned generation: `<generation> <snapshots>`.
fn encode(counts: &BTreeMap<GenerationId, usize>) -> String {
    counts.iter().map(|(g, n)| format!("{g} {n}\n")).collect()
}

fn decode(text: &str, path: &Path) -> Result<BTreeMap<GenerationId, usize>> {
    let corrupt = || Error::Corrupt {
        what: format!("the pin file {}", path.display()),
    };
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(g), Some(n), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(corrupt());
        };
        let g: GenerationId = g.parse().map_err(|_| corrupt())?;
        let n: usize = n.parse().map_err(|_| corrupt())?;
        counts.insert(g, n);
    }
    Ok(counts)
}

fn merge(
    local: &BTreeMap<GenerationId, usize>,
    others: impl IntoIterator<Item = BTreeMap<GenerationId, usize>>,
) -> BTreeMap<GenerationId, PinHolders> {
    let mut holders: BTreeMap<GenerationId, PinHolders> = BTreeMap::new();
    for (&g, &n) in local {
        holders.entry(g).or_default().here = n;
    }
    for counts in others {
        for (&g, &n) in &counts {
            if n > 0 {
                holders.entry(g).or_default().elsewhere += 1;
            }
        }
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_files_round_trip_and_reject_garbage() {
        let counts = BTreeMap::from([(3, 2), (7, 1)]);
        let path = Path::new("x.pins");
        assert_eq!(decode(&encode(&counts), path).unwrap(), counts);
        assert_eq!(decode("", path).unwrap(), BTreeMap::new());
        assert!(matches!(decode("3\n", path), Err(Error::Corrupt { .. })));
        assert!(matches!(decode("3 x\n", path), Err(Error::Corrupt { .. })));
    }
}
