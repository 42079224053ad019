//! `stagingctl`: the operator's command line for stagingd.
//!
//! One subcommand a module under `cmd/`. This file only parses arguments, runs
//! the command and turns its outcome into an exit code: 0 success (or nothing to
//! do), 1 error, 2 usage, 3 refused by a guard. Errors are printed with their
//! cause chain and, where there is one, a `hint:` line saying what to do next.
//! `stagingctl` never links the daemon; it talks to it over the admin socket.

mod cmd;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for an error (bad input, unreachable daemon, failed operation).
pub const EXIT_ERROR: u8 = 1;
/// Exit code for a usage error (clap uses it too).
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "stagingctl", version, about = "Operate stagingd, the staging tree sync daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scan a directory offline and print its root hash and counts (no daemon needed).
    Manifest(cmd::manifest::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Manifest(args) => cmd::manifest::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => output::report_error(&error),
    }
}
