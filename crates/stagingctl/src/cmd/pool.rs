//! `stagingctl pool serve|receive-only|depooled [--reason TEXT] [--bootstrap]`:
//! change this node's pool state through `Admin.SetPoolState`.
//!
//! The daemon decides whether the change is allowed (pooling to `serve` needs a
//! serving peer with the same trees, or `--bootstrap` for a cluster's first
//! master) and records who, when and why. A refusal (FAILED_PRECONDITION) exits
//! 3 with the daemon's reason and a `hint:` naming the command that proceeds;
//! any other failure exits 1.

use std::process::ExitCode;

use proto::v1::{PoolState, SetPoolStateRequest, SetPoolStateResponse};

use crate::client::{self, Admin, Target, operator_name, split_hint};
use crate::cmd::status::report::pool_name;
use crate::output::refused;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pool state to move to.
    state: Wanted,
    /// Why, in your words: recorded with your name and shown by `stagingctl status`.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Pool to `serve` although no serving peer has the same trees (the first master of a cluster).
    #[arg(long)]
    bootstrap: bool,
}

/// The pool states an operator can ask for, spelled as `status` shows them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Wanted {
    /// Others may sync from this node (conftool pooled=yes).
    Serve,
    /// Sync to this node, not from it (conftool pooled=no).
    ReceiveOnly,
    /// Neither serve nor receive (conftool inactive).
    Depooled,
}

impl Wanted {
    fn to_proto(self) -> PoolState {
        match self {
            Wanted::Serve => PoolState::Serve,
            Wanted::ReceiveOnly => PoolState::ReceiveOnly,
            Wanted::Depooled => PoolState::Depooled,
        }
    }
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    let reason = args.reason.unwrap_or_default();
    let request = SetPoolStateRequest {
        state: args.state.to_proto() as i32,
        reason: reason.clone(),
        bootstrap: args.bootstrap,
        who: operator_name(),
    };
    let (node, response) = client::runtime()?.block_on(set(daemon, request))?;
    println!("{}", transition_line(&node, &response, &reason));
    Ok(ExitCode::SUCCESS)
}

/// Sets the pool state and, best effort, reads the node's name back for the
/// confirmation line (the response does not carry it).
async fn set(daemon: &Target, request: SetPoolStateRequest) -> anyhow::Result<(String, SetPoolStateResponse)> {
    let wanted = pool_name(request.state);
    let mut admin = Admin::connect(daemon).await?;
    let response = match admin.set_pool_state(request).await {
        Ok(response) => response,
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            let (message, hint) = split_hint(status.message());
            let message = if message.is_empty() { format!("stagingd refused to pool as {wanted}") } else { message };
            return Err(refused(message, hint.unwrap_or_else(|| refusal_hint(&wanted))));
        }
        Err(status) => return Err(admin.describe("SetPoolState", &status)),
    };
    let node = match admin.get_status(true).await {
        Ok(status) => status.local.map(|local| local.node).unwrap_or_default(),
        Err(_) => String::new(),
    };
    Ok((node, response))
}

/// The next step when the daemon refused without saying one.
fn refusal_hint(wanted: &str) -> String {
    if wanted == "serve" {
        "make the tree match a serving peer with `stagingctl sync --from PEER`, or for the first master of a \
         cluster: `stagingctl pool serve --bootstrap --reason ...`"
            .to_owned()
    } else {
        "see `stagingctl status` and the daemon's log (journalctl -u stagingd)".to_owned()
    }
}

/// `deploy1002: receive-only → serve (reason: after reimage)`, then the
/// daemon's own account of what it checked, if it gave one.
fn transition_line(node: &str, response: &SetPoolStateResponse, reason: &str) -> String {
    let node = if node.is_empty() { "stagingd" } else { node };
    let mut line = if response.previous == response.state {
        format!("{node}: already {}", pool_name(response.state))
    } else {
        format!("{node}: {} → {}", pool_name(response.previous), pool_name(response.state))
    };
    if !reason.is_empty() {
        line.push_str(&format!(" (reason: {reason})"));
    }
    if !response.message.is_empty() {
        line.push_str(&format!("\n  {}", response.message));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_lines() {
        let response = SetPoolStateResponse {
            previous: PoolState::ReceiveOnly as i32,
            state: PoolState::Serve as i32,
            message: "pooled as serve: trees match deploy2002".into(),
        };
        assert_eq!(
            transition_line("deploy1002", &response, "after reimage"),
            "deploy1002: receive-only → serve (reason: after reimage)\n  pooled as serve: trees match deploy2002"
        );
        let same = SetPoolStateResponse { previous: 2, state: 2, message: String::new() };
        assert_eq!(transition_line("", &same, ""), "stagingd: already serve");
    }
}
