//! `stagingctl replication pause|resume [--reason TEXT] [--json]`: pause or
//! resume automatic replication (`--replicate-from`) through
//! `Admin.SetReplication`.
//!
//! The pause is persisted by the daemon (it survives restarts) with who, when
//! and why. Resuming also clears a replication that a guard STOPPED; the next
//! attempt is guarded again, so a plan over the threshold stops it again until
//! it is confirmed with `stagingctl sync --from SOURCE --confirm PLAN_ID`.
//! Prints the resulting state as `status` shows it (or, with `--json`, the
//! `replication` object of `status --json`). Exit codes: 0 done, 1 error (e.g.
//! no replication configured on this node).

use std::process::ExitCode;

use proto::v1::{ReplicationState, SetReplicationRequest};

use crate::client::{self, Admin, Target, operator_name};
use crate::cmd::status::report::replication_report;
use crate::cmd::status::table::replication_line;
use crate::output::{print_json, sanitize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pause (stop following the source, persisted) or resume (follow again; clears a stop).
    action: Action,
    /// Why, in your words: recorded with your name in the daemon's log and state.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Print the resulting state as JSON (the `replication` object of `status --json`).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Action {
    /// Stop following the source until resumed, across restarts.
    Pause,
    /// Follow the source again; also clears a replication stopped by a guard.
    Resume,
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    let request = SetReplicationRequest {
        paused: args.action == Action::Pause,
        who: operator_name(),
        reason: args.reason.clone().unwrap_or_default(),
    };
    let state = client::runtime()?.block_on(set(daemon, request))?;
    if args.json {
        print_json(&replication_report(&state))?;
    } else {
        println!("{}", sanitize(&summary(&state, args.reason.as_deref().unwrap_or_default())));
    }
    Ok(ExitCode::SUCCESS)
}

async fn set(daemon: &Target, request: SetReplicationRequest) -> anyhow::Result<ReplicationState> {
    let mut admin = Admin::connect(daemon).await?;
    match admin.set_replication(request).await {
        Ok(state) => Ok(state),
        Err(status) => Err(admin.describe("SetReplication", &status)),
    }
}

/// `replication: paused (from deploy1002) by alice (reason: maintenance)`.
fn summary(state: &ReplicationState, reason: &str) -> String {
    let mut line = format!("replication: {}", replication_line(Some(state), 0));
    if !reason.is_empty() {
        line.push_str(&format!(" (reason: {reason})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use proto::v1::ReplicationPhase;

    use super::*;

    #[test]
    fn summaries() {
        let paused = ReplicationState {
            phase: ReplicationPhase::Paused as i32,
            source: "deploy1002".into(),
            paused: true,
            changed_by: "alice".into(),
            ..ReplicationState::default()
        };
        assert_eq!(
            summary(&paused, "maintenance"),
            "replication: paused (from deploy1002) by alice (reason: maintenance)"
        );
        let following =
            ReplicationState { phase: ReplicationPhase::Following as i32, source: "deploy1002".into(), ..paused };
        assert_eq!(summary(&following, ""), "replication: following deploy1002");
    }
}
