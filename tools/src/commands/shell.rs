//! `realm-db shell`: an interactive query loop over a pinned snapshot.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use realm_db::retriever::phrase::{PhraseSearcher, RetrievalUnit};
use realm_db::{Retriever, SearchSnapshot};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use super::Env;
use super::generations::write_generations;
use super::phrase_search::write_units;
use super::phrases::{open_searcher, train_phrase_ivf};
use super::search::{pin, write_hits};
use crate::cli::ShellArgs;
use crate::cli::{ModeArg, RetrievalArgs, UnitArg};
use crate::error::{render, user};
use crate::open;

const HELP: &str = "\
Type a question to search the pinned generation, or a command:
  .help            show this help
  .k N             return N passages per query
  .json on|off     print hits as JSON lines, or as a table
  .mode M          rank by dense, bm25 or hybrid retrieval
  .nprobe N|auto   probe N lists of the generation's IVF index, or let its size decide
  .exact           scan every row (no approximate index)
  .unit U          answer from the current phrase generation instead, listing phrases,
                   sentences, passages or documents (each scored by its best phrase)
  .unit off        search the pinned generation's passages again
  .phrase-nprobe N|off
                   find phrases through an approximate index (trained once, in memory),
                   probing N lists per side, or scan every start and end again
  .generations     list the generations
  .use G           pin generation G (time travel to a retained older generation)
  .refresh         move to the current generation and the newest passages
  .quit            leave (Ctrl-D works too)";

/// What the loop does after a line.
enum Flow {
    Continue,
    Quit,
}

/// What a query searches.
enum Target {
    /// The passages of the pinned generation (`snapshot`).
    Passages,
    /// A pinned phrase generation, loaded once, listing units of one kind (`.unit`).
    Phrases {
        searcher: Box<PhraseSearcher>,
        unit: RetrievalUnit,
    },
}

struct Shell {
    retriever: Retriever,
    snapshot: Option<SearchSnapshot>,
    target: Target,
    k: usize,
    json: bool,
    retrieval: RetrievalArgs,
    /// Pinned on purpose to a generation that is not the current one (`.use`).
    time_travel: bool,
    /// The user has been told that a newer generation exists.
    told_stale: bool,
    /// Lists probed per side of the approximate phrase index (`.phrase-nprobe`); `None`
    /// scans every start and end.
    phrase_nprobe: Option<usize>,
}

/// Where the line history lives: `$REALM_DB_HISTORY`, else `~/.realm_db_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REALM_DB_HISTORY") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".realm_db_history"))
}

pub fn run(args: &ShellArgs, env: &Env) -> Result<()> {
    let retriever = open::open_reader(&args.dir, env.retriever_options()?)?;
    let snapshot = retriever.snapshot()?;
    let snapshot = snapshot.generation_id().is_some().then_some(snapshot);
    let mut shell = Shell {
        retriever,
        snapshot,
        target: Target::Passages,
        k: args.k as usize,
        json: args.json,
        retrieval: args.retrieval,
        time_travel: false,
        told_stale: false,
        phrase_nprobe: None,
    };
    let mut editor = DefaultEditor::new()?;
    let history = history_path();
    if let Some(path) = &history {
        // A missing history file is normal on first use.
        let _ = editor.load_history(path);
    }
    shell.banner(&args.dir)?;
    loop {
        match editor.readline("realm-db> ") {
            Ok(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                // A history that cannot grow is not worth stopping the session for.
                let _ = editor.add_history_entry(line);
                match shell.handle(line) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Quit) => break,
                    Err(e) => eprintln!("error: {}", render(&e)),
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(path) = &history
        && let Err(e) = editor.save_history(path)
    {
        eprintln!(
            "note: the shell history could not be saved to {}: {e}.",
            path.display()
        );
    }
    Ok(())
}

/// Prints to stdout and flushes.
fn print(text: impl std::fmt::Display) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

impl Shell {
    fn banner(&self, dir: &std::path::Path) -> Result<()> {
        let pinned = match &self.snapshot {
            Some(s) => format!(
                "generation {}, {} passages",
                s.generation_id().unwrap_or_default(),
                s.storage().passage_count()?
            ),
            None => "no generation yet".into(),
        };
        print(format_args!(
            "realm-db shell on {} ({pinned}; read-only, other processes may write meanwhile). Type .help for commands.",
            dir.display()
        ))
    }

    fn handle(&mut self, line: &str) -> Result<Flow> {
        let Some(command) = line.strip_prefix('.') else {
            self.query(line)?;
            return Ok(Flow::Continue);
        };
        let mut words = command.split_whitespace();
        let name = words.next().unwrap_or_default();
        let arg = words.next();
        match (name, arg) {
            ("quit" | "exit" | "q", _) => return Ok(Flow::Quit),
            ("help" | "h", _) => print(HELP)?,
            ("k", Some(n)) => match n.parse::<usize>() {
                Ok(k) if k > 0 => {
                    self.k = k;
                    let noun = match &self.target {
                        Target::Phrases { unit, .. } => unit.name(),
                        Target::Passages => "passage",
                    };
                    let plural = if k == 1 { "" } else { "s" };
                    print(format_args!("Queries now return {k} {noun}{plural}."))?;
                }
                _ => {
                    return Err(user(format!(
                        "`.k` takes a positive whole number, not {n:?}"
                    )));
                }
            },
            ("mode", Some(m)) => {
                self.retrieval.mode = ModeArg::from_str(m, true)
                    .map_err(|_| user(format!("`.mode` takes dense, bm25 or hybrid, not {m:?}")))?;
                print(format_args!(
                    "Queries now use {} retrieval.",
                    self.retrieval.mode().name()
                ))?;
            }
            ("nprobe", Some("auto")) => {
                self.retrieval.index.nprobe = None;
                self.retrieval.index.exact = false;
                print(
                    "Dense queries use the index when the generation is large enough to need it.",
                )?;
            }
            ("nprobe", Some(n)) => match n.parse::<u32>() {
                Ok(n) if n > 0 => {
                    self.retrieval.index.nprobe = Some(n);
                    self.retrieval.index.exact = false;
                    print(format_args!(
                        "Dense queries probe {n} lists of the index (exact search where there is none)."
                    ))?;
                }
                _ => {
                    return Err(user(format!(
                        "`.nprobe` takes a positive whole number or auto, not {n:?}"
                    )));
                }
            },
            ("exact", _) => {
                self.retrieval.index.exact = true;
                self.retrieval.index.nprobe = None;
                print("Dense queries scan every row.")?;
            }
            ("json", Some("on")) => {
                self.json = true;
                print("JSON output is on.")?;
            }
            ("json", Some("off")) => {
                self.json = false;
                print("JSON output is off.")?;
            }
            ("generations" | "gens", _) => {
                let mut out = std::io::stdout().lock();
                write_generations(self.retriever.db(), self.json, &mut out)?;
                out.flush()?;
            }
            ("use", Some(g)) => {
                let generation: u64 = g
                    .parse()
                    .map_err(|_| user(format!("`.use` takes a generation id, not {g:?}")))?;
                self.use_generation(generation)?;
            }
            ("unit", Some("off")) => {
                self.target = Target::Passages;
                print("Queries now search the pinned generation's passages.")?;
            }
            ("unit", Some(u)) => {
                let unit = UnitArg::from_str(u, true)
                    .map_err(|_| {
                        user(format!(
                            "`.unit` takes phrase, sentence, passage, document or off, not {u:?}"
                        ))
                    })?
                    .unit();
                self.use_unit(unit)?;
            }
            ("phrase-nprobe", Some("off")) => {
                self.phrase_nprobe = None;
                print("Phrase queries scan every start and end.")?;
            }
            ("phrase-nprobe", Some(n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => {
                    self.phrase_nprobe = Some(n);
                    if let Target::Phrases { searcher, .. } = &mut self.target
                        && searcher.index().ivf_lists().is_none()
                    {
                        print(train_phrase_ivf(searcher)?)?;
                    }
                    print(format_args!(
                        "Phrase queries probe {n} lists per side of the approximate phrase index."
                    ))?;
                }
                _ => {
                    return Err(user(format!(
                        "`.phrase-nprobe` takes a positive whole number or off, not {n:?}"
                    )));
                }
            },
            ("refresh", _) => self.refresh()?,
            _ => {
                return Err(user(format!(
                    "`.{command}` is not a shell command; type .help for the list"
                )));
            }
        }
        Ok(Flow::Continue)
    }

    fn use_generation(&mut self, generation: u64) -> Result<()> {
        let snapshot = pin(&self.retriever, Some(generation))?;
        let current = self.retriever.db().current_generation()?;
        self.time_travel = current != Some(generation);
        self.told_stale = false;
        self.snapshot = Some(snapshot);
        if self.time_travel {
            print(format_args!(
                "Pinned generation {generation} (time travel; `.refresh` returns to the current generation)."
            ))
        } else {
            print(format_args!(
                "Pinned generation {generation}, the current one."
            ))
        }
    }

    /// Switches queries to phrase retrieval at `unit`, loading the current phrase generation
    /// unless one is loaded already.
    fn use_unit(&mut self, unit: RetrievalUnit) -> Result<()> {
        let mut searcher = match std::mem::replace(&mut self.target, Target::Passages) {
            Target::Phrases { searcher, .. } => searcher,
            Target::Passages => Box::new(open_searcher(&self.retriever, None)?),
        };
        if self.phrase_nprobe.is_some() && searcher.index().ivf_lists().is_none() {
            print(train_phrase_ivf(&mut searcher)?)?;
        }
        let message = format!(
            "Queries now list {}s from phrase generation {} ({} stored tokens).",
            unit.name(),
            searcher.generation(),
            searcher.index().token_count()
        );
        self.target = Target::Phrases { searcher, unit };
        print(message)
    }

    fn refresh(&mut self) -> Result<()> {
        if let Target::Phrases { unit, .. } = self.target {
            self.target = Target::Passages;
            self.use_unit(unit)?;
        }
        let snapshot = self.retriever.snapshot()?;
        self.time_travel = false;
        self.told_stale = false;
        match snapshot.generation_id() {
            Some(g) => {
                let passages = snapshot.storage().passage_count()?;
                self.snapshot = Some(snapshot);
                print(format_args!(
                    "Now on generation {g} with {passages} passages."
                ))
            }
            None => {
                self.snapshot = None;
                print("The database still has no generation.")
            }
        }
    }

    fn query(&mut self, text: &str) -> Result<()> {
        if let Target::Phrases { searcher, unit } = &self.target {
            let mut out = std::io::stdout().lock();
            write_units(
                searcher,
                text,
                *unit,
                self.k,
                self.phrase_nprobe,
                self.json,
                &mut out,
            )?;
            out.flush()?;
            return Ok(());
        }
        let Some(snapshot) = &self.snapshot else {
            return Err(user(
                "the database has no generation to search yet; build one (realm-db reindex) and type .refresh",
            ));
        };
        if !self.time_travel && !self.told_stale && snapshot.storage().is_stale()? {
            self.told_stale = true;
            let current = self.retriever.db().current_generation()?;
            print(format_args!(
                "note: generation {} has been published since this shell pinned generation {}; type .refresh to move to it.",
                current.map_or_else(|| "?".into(), |g| g.to_string()),
                snapshot.generation_id().unwrap_or_default()
            ))?;
        }
        snapshot.set_search_options(self.retrieval.index.options());
        let hits = snapshot.search_with(text, self.k, self.retrieval.mode())?;
        let mut out = std::io::stdout().lock();
        write_hits(snapshot, &hits, self.json, &mut out)?;
        out.flush()?;
        Ok(())
    }
}
