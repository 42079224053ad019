//! `stagingctl diff --from PEER [--tree NAME] [--json]`: what `sync` would do,
//! without doing it. Exactly `stagingctl sync --dry-run` (same request, same
//! output, same exit codes: a guard that would refuse the sync exits 3).

use std::process::ExitCode;

use super::sync;
use crate::client::Target;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The peer to compare with (a configured peer name).
    #[arg(long, value_name = "PEER")]
    from: String,
    /// Only this tree; default: every tree this node shares with PEER.
    #[arg(long, value_name = "NAME")]
    tree: Option<String>,
    /// Print one JSON document instead of text (the `sync --json` document, with `plan`).
    #[arg(long)]
    json: bool,
}

impl Args {
    /// The `sync --dry-run` these arguments stand for.
    pub fn into_sync(self) -> sync::Args {
        sync::Args {
            from: self.from,
            tree: self.tree,
            dry_run: true,
            confirm: None,
            allow_behind: false,
            reason: None,
            json: self.json,
        }
    }
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    sync::run(args.into_sync(), daemon)
}
