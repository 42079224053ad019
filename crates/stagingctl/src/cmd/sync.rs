//! `stagingctl sync --from PEER [--tree NAME] [--dry-run] [--confirm PLAN_ID]
//! [--allow-behind] [--reason TEXT] [--json]`: pull a peer's tree through
//! `Admin.Sync`, and show the plan, progress and each tree's result
//! ([`super::render`]). Exits 0 when every tree applied, had nothing to do or
//! was planned (dry run), 3 when a guard refused any tree, else 1 when any tree
//! failed or the stream broke.
//!
//! The daemon does the work and decides; this command only asks and reports.
//! Errors before the stream starts (unknown peer or tree: NOT_FOUND, a malformed
//! request: INVALID_ARGUMENT, FAILED_PRECONDITION) exit 1 with a `hint:` line.

use std::process::ExitCode;

use proto::v1::SyncRequest;

use super::render::{Operation, Session};
use super::stream;
use crate::client::{self, Admin, Target, operator_name};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The peer to pull from (a configured peer name, as `stagingctl status` lists them).
    #[arg(long, value_name = "PEER")]
    pub from: String,
    /// Only this tree; default: every tree this node shares with PEER, each guarded on its own.
    #[arg(long, value_name = "NAME")]
    pub tree: Option<String>,
    /// Only plan: print the itemized plan, its totals and its plan id, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply the plan with this id (16 hex digits, from a dry run or a refusal) although it trips the delete threshold.
    #[arg(long, value_name = "PLAN_ID", value_parser = parse_plan_id)]
    pub confirm: Option<String>,
    /// Sync although PEER's tree is one this tree already had (the source is behind).
    #[arg(long)]
    pub allow_behind: bool,
    /// Why, in your words: recorded in history and in the lock with your name.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print one JSON document at the end instead of text (stable keys, for scripts; see README).
    #[arg(long)]
    pub json: bool,
}

/// A plan id: exactly 16 hex digits (taken in any case, sent in lowercase).
fn parse_plan_id(text: &str) -> Result<String, String> {
    if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err("a plan id is 16 hex digits, as printed by `stagingctl sync --dry-run` or in a refusal".to_owned())
    }
}

/// The request these arguments make, `who` being the operator.
pub fn request(args: &Args, who: String) -> SyncRequest {
    SyncRequest {
        from: args.from.clone(),
        tree: args.tree.clone().unwrap_or_default(),
        dry_run: args.dry_run,
        confirm_plan_id: args.confirm.clone().unwrap_or_default(),
        allow_behind: args.allow_behind,
        who,
        reason: args.reason.clone().unwrap_or_default(),
    }
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    let request = request(&args, operator_name());
    let op = Operation::Sync { from: args.from.clone(), allow_behind: args.allow_behind };
    let mode = stream::progress_mode();
    let session = Session::new(op, args.json, mode, args.tree.clone());
    client::runtime()?.block_on(async {
        let mut admin = Admin::connect(daemon).await?;
        let events = admin.sync(request).await.map_err(|status| admin.describe_or("Sync", &status, fallback_hint))?;
        stream::follow(&admin, "Sync", events, session, mode).await
    })
}

/// The next step for an error the daemon gave no hint for.
pub fn fallback_hint(code: tonic::Code) -> Option<String> {
    match code {
        tonic::Code::NotFound => {
            Some("`stagingctl status` lists the configured peers and this node's trees".to_owned())
        }
        tonic::Code::InvalidArgument => Some(
            "check the arguments; with several trees, name one with --tree (`stagingctl status` lists them)".to_owned(),
        ),
        tonic::Code::FailedPrecondition => {
            Some("see `stagingctl status` for this node's pool state and locks".to_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids_are_16_hex_digits() {
        assert_eq!(parse_plan_id("0123456789ABCDEF").as_deref(), Ok("0123456789abcdef"));
        assert!(parse_plan_id("0123").is_err());
        assert!(parse_plan_id("0123456789abcdeg").is_err());
    }
}
