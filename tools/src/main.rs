//! `realm-db`: the command-line tool of realm-db. See `realm-db --help`.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod corpus;
mod error;
mod ingest;
mod open;
mod output;
mod plot;
mod progress;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {}", error::render_clap(&e));
            return ExitCode::from(error::EXIT_USER);
        }
    };
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`realm-db export DIR | head`): not an error.
        Err(e) if error::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error::render(&e));
            ExitCode::from(error::exit_code(&e))
        }
    }
}
