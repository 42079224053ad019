//! `stagingctl`: the operator's command line for stagingd.
//!
//! One subcommand a module under `cmd/`. This file only parses arguments, runs
//! the command and turns its outcome into an exit code: 0 success (or nothing to
//! do), 1 error, 2 usage, 3 refused by a guard. Errors are printed with their
//! cause chain and, where there is one, a `hint:` line saying what to do next.
//! `stagingctl` never links the daemon; it talks to it over the admin socket
//! (`client.rs`).

mod client;
mod cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit code for an error (bad input, unreachable daemon, failed operation).
pub const EXIT_ERROR: u8 = 1;
/// Exit code for a usage error (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a request the daemon refused by policy (a guard, or pooling
/// to `serve` without a matching serving peer).
pub const EXIT_REFUSED: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "stagingctl", version, about = "Operate stagingd, the staging tree sync daemon")]
struct Cli {
    /// The local daemon's admin socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "STAGINGD_ADMIN_SOCKET",
        default_value = client::DEFAULT_ADMIN_SOCKET
    )]
    admin_socket: PathBuf,
    /// Give up on connecting to the daemon, and on a call it does not answer, after this long (e.g. `10s`,
    /// `1m`). A running sync or verify is not cut short.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scan a directory offline and print its root hash and counts (no daemon needed).
    Manifest(cmd::manifest::Args),
    /// Show this node, its trees and its peers; `--check` for monitoring.
    Status(cmd::status::Args),
    /// Change this node's pool state: serve, receive-only or depooled.
    Pool(cmd::pool::Args),
    /// Pull a peer's trees (guarded; `--dry-run` prints the plan and its id).
    Sync(cmd::sync::Args),
    /// What `sync` would change, without changing it (= `sync --dry-run`).
    Diff(cmd::diff::Args),
    /// Past syncs and rollbacks of a tree, newest first.
    History(cmd::history::Args),
    /// Undo the last sync of a tree, or go back to the state after a given one.
    Rollback(cmd::rollback::Args),
    /// Rehash a tree and list every file that no longer matches its manifest.
    Verify(cmd::verify::Args),
    /// Pause or resume automatic replication (`--replicate-from`).
    Replication(cmd::replication::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = client::Target { socket: cli.admin_socket, timeout: cli.timeout };
    let result = match cli.command {
        Command::Manifest(args) => cmd::manifest::run(args),
        Command::Status(args) => cmd::status::run(args, &daemon),
        Command::Pool(args) => cmd::pool::run(args, &daemon),
        Command::Sync(args) => cmd::sync::run(args, &daemon),
        Command::Diff(args) => cmd::diff::run(args, &daemon),
        Command::History(args) => cmd::history::run(args, &daemon),
        Command::Rollback(args) => cmd::rollback::run(args, &daemon),
        Command::Verify(args) => cmd::verify::run(args, &daemon),
        Command::Replication(args) => cmd::replication::run(args, &daemon),
    };
    match result {
        Ok(code) => code,
        Err(error) => output::report_error(&error),
    }
}
