//! Followers and pins across handles and processes: followers reuse caught-up views instead
//! of reopening, a held follower snapshot never changes, followers see whole generations
//! while the writer flushes, the pins of other handles (other
//! processes included) hold off the writer's GC, and the pins of a process that exited or
//! was killed do not.
//!
//! The reader process is this test binary again, running only the ignored test
//! [`pinning_reader`] with `REALM_PIN_DIR` and `REALM_PIN_GENERATION` set.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use realm_storage::{Db, Dtype, GenerationId, GenerationSpec, NewPassage, Snapshot};
use realm_testing::temp_db;

const DIM: usize = 3;
const DIR_VAR: &str = "REALM_PIN_DIR";
const GENERATION_VAR: &str = "REALM_PIN_GENERATION";

fn passages(from: usize, n: usize) -> Vec<NewPassage> {
    (from..from + n)
        .map(|i| NewPassage::new(format!("title {i}"), format!("text number {i}")))
        .collect()
}

/// Commits a generation over every passage; each row is `[generation, passage, 1]`, so a
/// row read through a snapshot names the generation it belongs to.
fn commit_all(db: &Db) -> GenerationId {
    commit_all_with(db, false)
}

/// [`commit_all`]; with `flush_between`, the writer's memtables are flushed between writing
/// the rows and publishing, so the rows and the publish land in different write-ahead logs
/// and the rows' log becomes obsolete (deletable) right away.
fn commit_all_with(db: &Db, flush_between: bool) -> GenerationId {
    let mut w = db
        .begin_generation(GenerationSpec::new("test-encoder", DIM as u32, Dtype::F32))
        .unwrap();
    let g = w.id();
    let ids = w.missing().unwrap();
    let values: Vec<f32> = ids
        .iter()
        .flat_map(|&id| [g as f32, id as f32, 1.0])
        .collect();
    w.write(&ids, &values).unwrap();
    if flush_between {
        db.stats().unwrap();
    }
    w.commit().unwrap()
}

/// A thread that ingests, deletes, publishes and collects in rounds (idling after
/// `max_rounds`) until told to stop.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u32>,
}

impl Writer {
    fn spawn(db: Db, max_rounds: u32, flush_between: bool) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next = 8;
            let mut rounds = 0u32;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if rounds == max_rounds {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                db.insert(&passages(next, 3)).unwrap();
                next += 3;
                db.delete(&[next as u64 - 5]).unwrap();
                commit_all_with(&db, flush_between);
                db.gc(0).unwrap();
                rounds += 1;
            }
            rounds
        });
        Writer { stop, thread }
    }

    /// Stops the thread; the rounds it ran.
    fn finish(self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Everything a snapshot shows: its generation, passage texts and rows.
fn contents(snapshot: &Snapshot) -> (Option<GenerationId>, Vec<String>, Vec<f32>) {
    let texts = snapshot.passages().map(|p| p.unwrap().text).collect();
    let values = match snapshot.generation_id() {
        Some(_) => snapshot.vectors().unwrap().values,
        None => Vec::new(),
    };
    (snapshot.generation_id(), texts, values)
}

/// Checks that every row of a snapshot belongs to its generation and to a passage it shows.
fn assert_consistent(snapshot: &Snapshot) {
    let g = snapshot.generation_id().expect("a generation");
    let matrix = snapshot.vectors().unwrap();
    let manifest = snapshot.generation().unwrap();
    assert_eq!(
        matrix.rows() as u64,
        manifest.live_vectors(),
        "generation {g}"
    );
    for (i, &id) in matrix.ids.iter().enumerate() {
        assert_eq!(matrix.row(i), [g as f32, id as f32, 1.0], "generation {g}");
        assert!(snapshot.get(id).unwrap().is_some(), "passage {id} of {g}");
    }
}

#[test]
fn a_held_follower_snapshot_never_changes_and_views_are_reused() {
    let (dir, db) = temp_db();
    db.insert(&passages(0, 5)).unwrap();
    let g1 = commit_all(&db);
    let follower = Db::open_read_only(dir.path()).unwrap();
    let held = follower.snapshot().unwrap();
    let before = contents(&held);
    assert_eq!(before.0, Some(g1));

    // The writer inserts, deletes a passage the held snapshot shows, publishes and compacts.
    db.insert(&passages(5, 3)).unwrap();
    db.delete(&[0]).unwrap();
    let g2 = commit_all(&db);
    db.stats().unwrap();
    for _ in 0..20 {
        let fresh = follower.snapshot().unwrap();
        assert_eq!(fresh.generation_id(), Some(g2));
        assert_eq!(fresh.passage_count().unwrap(), 7);
        assert_consistent(&fresh);
    }
    // The held snapshot's view plus one view, caught up for each new snapshot in turn.
    assert_eq!(follower.testing_follower_views(), 2);
    assert_eq!(contents(&held), before);
    assert_consistent(&held);

    // Holding two snapshots needs two views; dropping them makes both reusable.
    let a = follower.snapshot().unwrap();
    let b = follower.snapshot().unwrap();
    assert_eq!(follower.testing_follower_views(), 3);
    drop((a, b, held));
    for _ in 0..5 {
        follower.snapshot().unwrap();
    }
    assert!(follower.testing_follower_views() <= 3);
}

#[test]
fn another_handles_pins_hold_off_gc_until_released() {
    let (dir, db) = temp_db();
    db.insert(&passages(0, 4)).unwrap();
    let g1 = commit_all(&db);
    let follower = Db::open_read_only(dir.path()).unwrap();
    let pinned = follower.snapshot().unwrap();
    let before = contents(&pinned);
    let g2 = commit_all(&db);
    let g3 = commit_all(&db);

    let listed = db.generations().unwrap();
    let g1_info = listed.iter().find(|g| g.manifest.id == g1).unwrap();
    assert_eq!((g1_info.pins, g1_info.pinned_elsewhere), (0, 1));
    let report = db.gc(0).unwrap();
    assert_eq!(report.pinned, vec![g1]);
    assert_eq!(report.collected, vec![g2]);
    assert_eq!(contents(&pinned), before);
    // Time travel from the follower to the collected generation fails; to g1 it works.
    assert!(follower.snapshot_at(g2).is_err());
    assert_eq!(contents(&follower.snapshot_at(g1).unwrap()), before);

    drop(pinned);
    assert_eq!(db.gc(0).unwrap().collected, vec![g1]);
    let ids: Vec<_> = db.generations().unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].manifest.id, g3);
}

#[test]
fn follower_snapshots_stay_consistent_while_a_writer_ingests_publishes_and_collects() {
    let (dir, db) = temp_db();
    db.insert(&passages(0, 8)).unwrap();
    commit_all(&db);
    let path = dir.path().to_path_buf();
    let writer = Writer::spawn(db, 150, false);
    let follower = Db::open_read_only(&path).unwrap();
    let mut generations = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let snapshot = follower.snapshot().unwrap();
        generations.insert(snapshot.generation_id());
        assert_consistent(&snapshot);
    }
    assert!(writer.finish() > 0);
    assert!(generations.len() > 1, "the follower saw publishes");
    assert!(follower.testing_follower_views() <= 3);
}

/// The reader process: pins the generation it is given, says so, then waits to be killed
/// or told to exit. Does nothing outside that child.
#[test]
#[ignore = "the child process of the pin tests"]
fn pinning_reader() {
    let (Some(dir), Some(g)) = (std::env::var_os(DIR_VAR), std::env::var_os(GENERATION_VAR)) else {
        return;
    };
    let dir = Path::new(&dir);
    let g: GenerationId = g
        .to_str()
        .and_then(|s| s.parse().ok())
        .expect("a generation");
    let db = Db::open_read_only(dir.join("db")).unwrap();
    let snapshot = db.snapshot_at(g).unwrap();
    let first = contents(&snapshot);
    std::fs::write(dir.join("ready"), b"").unwrap();
    while !dir.join("exit").exists() {
        std::thread::sleep(Duration::from_millis(20));
        // The pinned generation reads the same while the writer publishes and collects.
        assert_eq!(contents(&snapshot), first);
    }
}

/// The reader process, killed if the test fails before it is told to exit.
struct Reader(Child);

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_reader(dir: &Path, g: GenerationId) -> Reader {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &format!("{module}::pinning_reader"), "--ignored"])
        .env(DIR_VAR, dir)
        .env(GENERATION_VAR, g.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("ready").exists() {
        assert!(Instant::now() < deadline, "the reader process never pinned");
        std::thread::sleep(Duration::from_millis(10));
    }
    Reader(child)
}

/// Process A pins G; this process publishes two generations and collects with `keep 0`:
/// G stays. Once A is gone (exited, or killed with SIGKILL), the next GC collects G and
/// removes A's pin file.
fn pins_of_a_reader_process(kill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create(dir.path().join("db")).unwrap();
    db.insert(&passages(0, 6)).unwrap();
    let g = commit_all(&db);
    let mut reader = spawn_reader(dir.path(), g);
    let child_pid = reader.0.id();
    let reader_files = || {
        let prefix = format!("{}-", child_pid);
        std::fs::read_dir(dir.path().join("db/readers"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(&prefix)
            })
            .count()
    };
    let later = [commit_all(&db), commit_all(&db)];
    assert_eq!(reader_files(), 1);
    let report = db.gc(0).unwrap();
    assert_eq!(report.pinned, vec![g]);
    assert_eq!(report.collected, vec![later[0]]);
    let info = db.generations().unwrap();
    assert_eq!(info[0].manifest.id, g);
    assert_eq!(info[0].pinned_elsewhere, 1);
    if kill {
        reader.0.kill().unwrap();
    } else {
        std::fs::write(dir.path().join("exit"), b"").unwrap();
    }
    let status = reader.0.wait().unwrap();
    assert_eq!(status.success(), !kill, "{status}");
    assert_eq!(db.gc(0).unwrap().collected, vec![g]);
    assert_eq!(reader_files(), 0, "the reader's pin file is gone");
}

#[test]
fn a_reader_process_pins_until_it_exits() {
    pins_of_a_reader_process(false);
}

#[test]
fn a_killed_reader_process_pins_nothing() {
    pins_of_a_reader_process(true);
}

/// A writer that flushes between writing a generation's rows and publishing it, with fresh
/// followers opening and a long-lived one catching up meanwhile: every snapshot shows whole
/// generations (before the writer's purges were ordered against followers, a fresh follower
/// missed whole write-ahead logs, and a caught-up one saw a `current` without its manifest or
/// rows).
#[test]
fn followers_opened_while_the_writer_flushes_see_whole_generations() {
    let (dir, db) = temp_db();
    db.insert(&passages(0, 8)).unwrap();
    commit_all(&db);
    let path = dir.path().to_path_buf();
    let writer = Writer::spawn(db, u32::MAX, true);
    // Fresh followers (opening) and one long-lived follower (catching up) alike.
    let snapshots = realm_testing::env_or("REALM_FLUSH_RACE_SNAPSHOTS", 300usize);
    let held = Db::open_read_only(&path).unwrap();
    for i in 0..snapshots {
        if i % 5 == 0 {
            let follower = Db::open_read_only(&path).unwrap();
            assert_consistent(&follower.snapshot().unwrap());
        }
        assert_consistent(&held.snapshot().unwrap());
    }
    let rounds = writer.finish();
    assert!(rounds > 1, "{rounds}");
}
