//! `stagingctl rollback [--tree NAME] [--to SYNC_ID] [--reason TEXT] [--json]`:
//! undo the last applied sync or rollback of a tree, or go back to the state
//! right after a given one, through `Admin.Rollback`. The daemon answers with
//! the same event stream as a sync, so the output, the `--json` document and
//! the exit codes are those of `sync` ([`super::render`]).

use std::process::ExitCode;

use proto::v1::RollbackRequest;

use super::render::{Operation, Session};
use super::stream;
use crate::client::{self, Admin, Target, operator_name};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tree; may be left out when the daemon has only one.
    #[arg(long, value_name = "NAME")]
    tree: Option<String>,
    /// Go back to the state right after this history record (see `stagingctl history`),
    /// undoing every later change. Default: undo the last one.
    #[arg(long, value_name = "SYNC_ID")]
    to: Option<String>,
    /// Why, in your words: recorded in history and in the lock with your name.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Print one JSON document at the end instead of text (the `sync --json` document).
    #[arg(long)]
    json: bool,
}

/// The request these arguments make, `who` being the operator.
fn request(args: &Args, who: String) -> RollbackRequest {
    RollbackRequest {
        tree: args.tree.clone().unwrap_or_default(),
        to_sync_id: args.to.clone().unwrap_or_default(),
        who,
        reason: args.reason.clone().unwrap_or_default(),
    }
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    let request = request(&args, operator_name());
    let mode = stream::progress_mode();
    let session = Session::new(Operation::Rollback, args.json, mode, args.tree.clone());
    client::runtime()?.block_on(async {
        let mut admin = Admin::connect(daemon).await?;
        let events =
            admin.rollback(request).await.map_err(|status| admin.describe_or("Rollback", &status, fallback_hint))?;
        stream::follow(&admin, "Rollback", events, session, mode).await
    })
}

fn fallback_hint(code: tonic::Code) -> Option<String> {
    match code {
        tonic::Code::NotFound => Some("`stagingctl history` lists the records of a tree".to_owned()),
        tonic::Code::InvalidArgument => {
            Some("with several trees, name one with --tree (`stagingctl status` lists them)".to_owned())
        }
        tonic::Code::FailedPrecondition => {
            Some("`stagingctl history` shows which records are still restorable".to_owned())
        }
        _ => None,
    }
}
