//! `stagingctl verify [--tree NAME] [--json]`: have the daemon rehash every file
//! of a tree (or of all trees) through `Admin.Verify`, and list every path whose
//! state on disk no longer matches the manifest. Exits 1 when any does.
//!
//! The call reads every byte of the tree, so it is not bounded by `--timeout`
//! (only connecting is).
//!
//! `--json` prints
//! ```text
//! { "format": 1,
//!   "trees": [ { "tree": "staging", "ok": true, "files_checked": 150000, "bytes_checked": 2040109465,
//!                "mismatches": [ { "path": "…", "expected": "…", "found": "…" } ] } ] }
//! ```
//! where `path` is escaped as in the `sync --json` plan, and `expected`/`found`
//! are the daemon's descriptions (e.g. `file, 1234 bytes, blake3 ab12…` or `missing`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use proto::v1::{VerifyRequest, VerifyResponse, VerifyResult};
use serde::Serialize;

use super::render::FORMAT;
use crate::EXIT_ERROR;
use crate::client::{self, Admin, Target};
use crate::output::{human_bytes, print_json, sanitize, thousands};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this tree; default: every tree.
    #[arg(long, value_name = "NAME")]
    tree: Option<String>,
    /// Print one JSON document instead of text (stable keys, for scripts; see README).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    let request = VerifyRequest { tree: args.tree.clone().unwrap_or_default() };
    let waiting = !args.json && std::io::stderr().is_terminal();
    let response = client::runtime()?.block_on(async {
        let mut admin = Admin::connect(daemon).await?;
        if waiting {
            eprint!("verifying: stagingd is rehashing every file, this takes a while…");
        }
        let answer = admin.verify(request).await;
        if waiting {
            eprint!("\r\x1b[K");
        }
        answer.map_err(|status| admin.describe_or("Verify", &status, fallback_hint))
    })?;
    let clean = response.results.iter().all(|r| r.mismatches.is_empty());
    if args.json {
        print_json(&report(&response))?;
    } else {
        std::io::stdout().lock().write_all(text(&response).as_bytes())?;
        if !clean {
            eprintln!(
                "hint: these paths changed on disk without stagingd noticing (or the disk is failing): find out \
                 why before this node serves or receives a sync"
            );
        }
    }
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(EXIT_ERROR) })
}

fn fallback_hint(code: tonic::Code) -> Option<String> {
    match code {
        tonic::Code::NotFound => Some("`stagingctl status` lists this node's trees".to_owned()),
        _ => None,
    }
}

/// `staging: 150,000 files checked (1.9 GiB): OK`, or the count of mismatches
/// and one `  path: expected …, found …` line each.
pub fn text(response: &VerifyResponse) -> String {
    let mut out = String::new();
    if response.results.is_empty() {
        out.push_str("no trees verified\n");
    }
    for result in &response.results {
        let verdict = match result.mismatches.len() {
            0 => "OK".to_owned(),
            1 => "1 mismatch".to_owned(),
            n => format!("{} mismatches", thousands(n as u64)),
        };
        out.push_str(&format!(
            "{}: {} files checked ({}): {verdict}\n",
            sanitize(&result.tree),
            thousands(result.files_checked),
            human_bytes(result.bytes_checked)
        ));
        for m in &result.mismatches {
            out.push_str(&format!(
                "  {}: expected {}, found {}\n",
                manifest::path::escape(&m.path),
                sanitize(&m.expected),
                sanitize(&m.actual)
            ));
        }
    }
    out
}

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub format: u32,
    pub trees: Vec<TreeVerifyReport>,
}

#[derive(Debug, Serialize)]
pub struct TreeVerifyReport {
    pub tree: String,
    /// No mismatches.
    pub ok: bool,
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub mismatches: Vec<MismatchReport>,
}

#[derive(Debug, Serialize)]
pub struct MismatchReport {
    pub path: String,
    pub expected: String,
    pub found: String,
}

pub fn report(response: &VerifyResponse) -> VerifyReport {
    VerifyReport { format: FORMAT, trees: response.results.iter().map(tree_report).collect() }
}

fn tree_report(result: &VerifyResult) -> TreeVerifyReport {
    TreeVerifyReport {
        tree: result.tree.clone(),
        ok: result.mismatches.is_empty(),
        files_checked: result.files_checked,
        bytes_checked: result.bytes_checked,
        mismatches: result
            .mismatches
            .iter()
            .map(|m| MismatchReport {
                path: manifest::path::escape(&m.path),
                expected: m.expected.clone(),
                found: m.actual.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::Mismatch;

    use super::*;

    #[test]
    fn clean_and_damaged_trees() {
        let response = VerifyResponse {
            results: vec![
                VerifyResult {
                    tree: "patches".into(),
                    files_checked: 2,
                    bytes_checked: 2048,
                    mismatches: vec![
                        Mismatch {
                            path: b"1.44/caf\xe9.patch".to_vec(),
                            expected: "file, 1234 bytes, blake3 ab12…".into(),
                            actual: "file, 1200 bytes, blake3 cd34…".into(),
                        },
                        Mismatch { path: b"gone".to_vec(), expected: "file, 1 bytes".into(), actual: "missing".into() },
                    ],
                },
                VerifyResult {
                    tree: "staging".into(),
                    files_checked: 150_000,
                    bytes_checked: 2_040_109_465,
                    mismatches: Vec::new(),
                },
            ],
        };
        assert_eq!(
            text(&response),
            "patches: 2 files checked (2.0 KiB): 2 mismatches\n\
             \x20 1.44/caf\\xe9.patch: expected file, 1234 bytes, blake3 ab12…, found file, 1200 bytes, blake3 cd34…\n\
             \x20 gone: expected file, 1 bytes, found missing\n\
             staging: 150,000 files checked (1.9 GiB): OK\n"
        );
        let doc = serde_json::to_value(report(&response)).unwrap();
        assert_eq!(doc["format"], 1);
        assert_eq!(doc["trees"][0]["ok"], false);
        assert_eq!(doc["trees"][0]["mismatches"][0]["path"], "1.44/caf\\xe9.patch");
        assert_eq!(doc["trees"][0]["mismatches"][1]["found"], "missing");
        assert_eq!(doc["trees"][1]["ok"], true);
        assert_eq!(doc["trees"][1]["bytes_checked"], 2_040_109_465u64);
    }
}
