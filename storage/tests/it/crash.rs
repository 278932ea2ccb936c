//! Crash recovery: a child process ingests, builds and publishes generations and phrase
//! generations in a loop and is killed with SIGKILL at random moments. After each kill the
//! database is reopened and checked: every write the child acknowledged (logged after it
//! returned) is present, the current generation and the current phrase generation are
//! complete, and nothing of an unfinished one of either kind is left.
//!
//! The child is this test binary again, running only the ignored test [`writer`] with
//! `REALM_CRASH_DIR` and `REALM_CRASH_SEED` set. `cargo test -p realm-storage --test it
//! crash::` runs 100 cycles; a soak run takes
//! `REALM_CRASH_CYCLES=2000 cargo test -p realm-storage --release --test it crash::`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use realm_storage::{Db, Dtype, Error, GenerationSpec, GenerationState, NewPassage};

use super::phrases::{rows_of, spec as phrase_spec};

const DIM: usize = 4;
/// The child's database folder and seed; set only in the child process.
const DIR_VAR: &str = "REALM_CRASH_DIR";
const SEED_VAR: &str = "REALM_CRASH_SEED";

#[test]
fn acknowledged_writes_survive_sigkill() {
    let cycles = realm_testing::env_or("REALM_CRASH_CYCLES", 100);
    parent(cycles);
}

/// The writer of [`acknowledged_writes_survive_sigkill`], in a child process: loops until it
/// is killed. Does nothing outside that child.
#[test]
#[ignore = "the child process of crash::acknowledged_writes_survive_sigkill"]
fn writer() {
    let (Some(dir), Some(seed)) = (std::env::var_os(DIR_VAR), std::env::var_os(SEED_VAR)) else {
        return;
    };
    let seed = seed.to_str().and_then(|s| s.parse().ok()).expect("a seed");
    child(Path::new(&dir), seed);
}

/// The libtest name of [`writer`]: its module path without the crate.
fn writer_test_name() -> String {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    format!("{module}::writer")
}

fn vector(generation: u64, passage: u64) -> [f32; DIM] {
    [generation as f32, passage as f32, 1.0, -1.0]
}

/// The writer: loops forever until killed, logging each acknowledged write.
fn child(dir: &Path, seed: u64) {
    let db = Db::builder(dir.join("db"))
        .create_if_missing(true)
        .open()
        .expect("child opens the database");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("acks.log"))
        .expect("ack log");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut round = 0u64;
    loop {
        round += 1;
        let batch: Vec<NewPassage> = (0..rng.random_range(1..20))
            .map(|i| {
                NewPassage::new(format!("t{seed}-{round}-{i}"), "crash test text")
                    .with_external_id(format!("{seed}-{round}-{i}"))
            })
            .collect();
        db.insert(&batch).expect("insert");
        let mut acks = String::new();
        for p in &batch {
            acks += &format!("P {}\n", p.external_id.as_ref().unwrap());
        }
        ack(&mut log, &acks);
        match rng.random_range(0..12) {
            0..=2 => {
                // Build and publish a generation, in several blocks, catching up at the end.
                let spec = GenerationSpec::new("crash", DIM as u32, Dtype::F32);
                let mut w = db.begin_generation(spec).expect("begin");
                loop {
                    let missing = w.missing().expect("missing");
                    for chunk in missing.chunks(7) {
                        let values: Vec<f32> =
                            chunk.iter().flat_map(|&p| vector(w.id(), p)).collect();
                        w.write(chunk, &values).expect("write");
                    }
                    match w.commit() {
                        Ok(g) => {
                            ack(&mut log, &format!("G {g}\n"));
                            break;
                        }
                        Err(Error::CoverageGap { .. }) => continue,
                        Err(e) => panic!("commit: {e}"),
                    }
                }
            }
            3 => {
                // A generation that is never finished: abandoned mid-way (and leaked, so
                // that the kill, not the writer's drop, ends it).
                let spec = GenerationSpec::new("crash", DIM as u32, Dtype::F32);
                let mut w = db.begin_generation(spec).expect("begin");
                let missing = w.missing().expect("missing");
                let part: Vec<u64> = missing.into_iter().take(5).collect();
                let values: Vec<f32> = part.iter().flat_map(|&p| vector(w.id(), p)).collect();
                w.write(&part, &values).expect("write");
                std::mem::forget(w);
            }
            4 => {
                if let Some(g) = db.current_generation().expect("current") {
                    let pending = db.snapshot().expect("snapshot").pending().expect("pending");
                    let values: Vec<f32> = pending.iter().flat_map(|&p| vector(g, p)).collect();
                    db.put_vectors(g, &pending, &values).expect("append");
                }
            }
            5 => {
                let snap = db.snapshot().expect("snapshot");
                if let Some(p) = snap.passages().next() {
                    let p = p.expect("passage");
                    let ext = p.external_id.unwrap();
                    // The intent first: a kill after the delete commits but before its
                    // acknowledgement leaves the passage legitimately gone.
                    ack(&mut log, &format!("d {ext}\n"));
                    db.delete(&[p.id]).expect("delete");
                    ack(&mut log, &format!("D {ext}\n"));
                }
            }
            6 => {
                db.gc(1).expect("gc");
            }
            7 => {
                // Build and publish a phrase generation whose rows derive from its id.
                let mut w = db
                    .begin_phrase_generation(phrase_spec(Dtype::F32))
                    .expect("begin phrases");
                loop {
                    let missing = w.missing().expect("missing phrases");
                    for chunk in missing.chunks(5) {
                        w.write(&rows_of(&db, chunk, w.id()))
                            .expect("write phrases");
                    }
                    match w.commit() {
                        Ok(g) => {
                            ack(&mut log, &format!("F {g}\n"));
                            break;
                        }
                        Err(Error::CoverageGap { .. }) => continue,
                        Err(e) => panic!("commit phrases: {e}"),
                    }
                }
            }
            8 => {
                // An abandoned phrase generation (leaked, like the generation above), or
                // rows for the passages ingested since the current one.
                if rng.random_bool(0.5) {
                    let mut w = db
                        .begin_phrase_generation(phrase_spec(Dtype::F32))
                        .expect("begin phrases");
                    let part: Vec<u64> =
                        w.missing().expect("missing").into_iter().take(3).collect();
                    w.write(&rows_of(&db, &part, w.id()))
                        .expect("write phrases");
                    std::mem::forget(w);
                } else if let Ok(snap) = db.phrase_snapshot() {
                    let g = snap.generation();
                    let pending = snap.pending().expect("pending phrases");
                    db.put_phrase_rows(g, &rows_of(&db, &pending, g))
                        .expect("append phrases");
                }
            }
            _ => {}
        }
    }
}

/// Appends acknowledgement lines with one `write` call, so a kill tears at most the last line.
fn ack(log: &mut std::fs::File, lines: &str) {
    log.write_all(lines.as_bytes()).expect("ack log write");
}

fn parent(cycles: usize) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let test = writer_test_name();
    // The first child creates the database; a kill inside that create is recovered by the
    // next open (`api::a_create_cut_short_is_finished_by_the_next_writer`).
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked = Acked::default();
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                &test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .env(SEED_VAR, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(30..250)));
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "cycle {cycle}: the child exited on its own ({status}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked = verify(dir.path(), cycle, acked);
    }
    println!("crash: {cycles} kill-and-reopen cycles passed");
}

/// Checks the database after a kill; returns the highest acknowledged generation.
fn verify(dir: &Path, cycle: usize, acked: Acked) -> Acked {
    let Acked {
        generation: mut max_generation,
        phrase_generation: mut max_phrase_generation,
    } = acked;
    let log = std::fs::read_to_string(dir.join("acks.log")).unwrap_or_default();
    let mut present = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    // Deletes that were started; those not acknowledged may or may not have committed.
    let mut deleting = BTreeSet::new();
    // A kill can cut the last line short: only newline-terminated lines count.
    let whole = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
    for line in whole.lines().filter(|l| !l.is_empty()) {
        let (kind, value) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "P" => {
                present.insert(value.to_string());
            }
            "d" => {
                deleting.insert(value.to_string());
            }
            "D" => {
                deleted.insert(value.to_string());
            }
            "G" => {
                if let Ok(g) = value.parse::<u64>() {
                    max_generation = max_generation.max(g);
                }
            }
            "F" => {
                if let Ok(g) = value.parse::<u64>() {
                    max_phrase_generation = max_phrase_generation.max(g);
                }
            }
            _ => {}
        }
    }
    // The first child may die before it creates the database, or while it does.
    let db = Db::builder(dir.join("db"))
        .create_if_missing(true)
        .open()
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen: {e}"));
    let report = db.verify().unwrap();
    assert!(
        report.problems.is_empty(),
        "cycle {cycle}: {:?}",
        report.problems
    );
    let snap = db.snapshot().unwrap();
    for ext in present.difference(&deleting) {
        assert!(
            snap.get_by_external_id(ext).unwrap().is_some(),
            "cycle {cycle}: acknowledged passage {ext} is missing"
        );
    }
    for ext in &deleted {
        assert!(
            snap.get_by_external_id(ext).unwrap().is_none(),
            "cycle {cycle}: acknowledged delete of {ext} was lost"
        );
    }
    assert!(
        db.generations()
            .unwrap()
            .iter()
            .all(|g| g.manifest.state != GenerationState::Building),
        "cycle {cycle}: an unfinished generation survived reopen"
    );
    if max_generation > 0 {
        let current = snap.generation_id().expect("a generation was acknowledged");
        assert!(
            current >= max_generation,
            "cycle {cycle}: publish of {max_generation} lost"
        );
        // The current generation is complete: every visible passage has its exact vector,
        // or is pending (ingested after the publish).
        let matrix = snap.vectors().unwrap();
        for (i, &id) in matrix.ids.iter().enumerate() {
            assert_eq!(
                matrix.row(i),
                vector(current, id),
                "cycle {cycle}: wrong row"
            );
        }
        let visible = snap.passage_count().unwrap() as usize;
        assert_eq!(matrix.rows() + snap.pending().unwrap().len(), visible);
    }
    assert!(
        db.phrase_generations()
            .unwrap()
            .iter()
            .all(|g| g.manifest.state != GenerationState::Building),
        "cycle {cycle}: an unfinished phrase generation survived reopen"
    );
    if max_phrase_generation > 0 {
        let phrases = db
            .phrase_snapshot()
            .expect("a phrase generation was acknowledged");
        let current = phrases.generation();
        assert!(
            current >= max_phrase_generation,
            "cycle {cycle}: publish of phrase generation {max_phrase_generation} lost"
        );
        // Complete: every visible passage has exactly the rows written for it, or is pending.
        let rows = phrases.all_rows().unwrap();
        let ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
        let expected = rows_of(&db, &ids, current);
        if let Some((got, _)) = rows.iter().zip(&expected).find(|(a, b)| a != b) {
            panic!("cycle {cycle}: wrong phrase rows for passage {}", got.0);
        }
        let visible = phrases.db().snapshot().unwrap().passage_count().unwrap() as usize;
        assert_eq!(rows.len() + phrases.pending().unwrap().len(), visible);
    }
    Acked {
        generation: max_generation,
        phrase_generation: max_phrase_generation,
    }
}

/// The highest generation and phrase generation whose publish was acknowledged so far.
#[derive(Clone, Copy, Debug, Default)]
struct Acked {
    generation: u64,
    phrase_generation: u64,
}
