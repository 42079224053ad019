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
    /// WARNING when a tree's filesystem has less than this percent of its space or inodes free
    /// (`0` turns it off). Used by --check, and by the check line of the table and JSON.
    #[arg(long, value_name = "PERCENT", default_value_t = check::WARNING_FREE_PERCENT, value_parser = percent_arg)]
    free_warning: f64,
    /// CRITICAL when a tree's filesystem has less than this percent of its space or inodes free
    /// (`0` turns it off; at most --free-warning).
    #[arg(long, value_name = "PERCENT", default_value_t = check::CRITICAL_FREE_PERCENT, value_parser = percent_arg)]
    free_critical: f64,
}

/// A percentage from 0 to 100.
fn percent_arg(text: &str) -> Result<f64, String> {
    match text.trim_end_matches('%').parse::<f64>() {
        Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
        _ => Err(format!("`{text}` is not a percentage from 0 to 100 (e.g. 10)")),
    }
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    let limits = check::Thresholds::new(args.free_warning, args.free_critical);
    if args.check {
        // A monitoring plugin prints exactly one line and never an error
        // report: an unusable command line or an unreachable daemon is itself
        // the UNKNOWN verdict.
        let judged = limits.map_err(anyhow::Error::msg).and_then(|limits| {
            let status = client::runtime().and_then(|runtime| runtime.block_on(fetch(daemon)))?;
            let (state, summary) = check::classify(&status, limits);
            Ok((state, check::plugin_line(state, &summary, &check::perfdata(&status, limits))))
        });
        let (state, line) = judged.unwrap_or_else(|error| {
            let state = check::CheckState::Unknown;
            (state, check::plugin_line(state, &format!("{error:#}"), ""))
        });
        writeln!(std::io::stdout().lock(), "{line}")?;
        return Ok(ExitCode::from(state.exit_code()));
    }
    let limits = limits.map_err(anyhow::Error::msg)?;
    let status = client::runtime().and_then(|runtime| runtime.block_on(fetch(daemon)))?;
    if args.json {
        print_json(&report::StatusReport::from_status(&status, limits))?;
    } else {
        std::io::stdout().lock().write_all(table::render(&status, limits).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch(daemon: &Target) -> anyhow::Result<NodeStatus> {
    let mut admin = Admin::connect(daemon).await?;
    admin.get_status(false).await.map_err(|status| admin.describe("GetStatus", &status))
}
