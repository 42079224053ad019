//! `stagingctl status [--json] [--check]`: this node, its trees and its peers,
//! from `Admin.GetStatus`.
//!
//! Three views of one answer: the human table (`table`), the stable JSON
//! document (`report`, schema in its module docs and in README.md), and one
//! monitoring-plugin line (`check`). This module only fetches and prints; the
//! views are pure functions of the `NodeStatus`, tested without a daemon.

pub mod check;
pub mod report;
pub mod table;

use std::io::Write;
use std::process::ExitCode;

use proto::v1::NodeStatus;

use crate::client::{self, Admin, Target};
use crate::output::print_json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON document instead of the table (stable keys, for scripts; see README).
    #[arg(long, conflicts_with = "check")]
    json: bool,
    /// Print one monitoring-plugin line and exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    let fetched = client::runtime().and_then(|runtime| runtime.block_on(fetch(daemon)));
    if args.check {
        // A monitoring plugin prints exactly one line and never an error
        // report: an unreachable daemon is itself the UNKNOWN verdict.
        let (line, code) = match &fetched {
            Ok(status) => {
                let (state, summary) = check::classify(status);
                (check::plugin_line(state, &summary, &check::perfdata(status)), state.exit_code())
            }
            Err(error) => {
                let state = check::CheckState::Unknown;
                (check::plugin_line(state, &format!("{error:#}"), ""), state.exit_code())
            }
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        return Ok(ExitCode::from(code));
    }
    let status = fetched?;
    if args.json {
        print_json(&report::StatusReport::from_status(&status))?;
    } else {
        std::io::stdout().lock().write_all(table::render(&status).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch(daemon: &Target) -> anyhow::Result<NodeStatus> {
    let mut admin = Admin::connect(daemon).await?;
    admin.get_status(false).await.map_err(|status| admin.describe("GetStatus", &status))
}
