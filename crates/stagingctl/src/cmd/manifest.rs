//! `stagingctl manifest DIR`: scan a directory offline and print its root hash.
//!
//! Operators compare trees across hosts with it, without a daemon. Entries that
//! could not be read are listed with what was done about them; when any exist the
//! root hash does not cover the whole tree and the command exits 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use manifest::scan::Previous;
use manifest::{Excludes, ScanOptions, SkipReason, cache};

use crate::output::{hinted, human_bytes, print_json, thousands};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The directory to scan.
    dir: PathBuf,
    /// Print one JSON object instead of the table (stable keys, for scripts).
    #[arg(long)]
    json: bool,
    /// Stat cache file: reused when valid (unchanged files are not read), then rewritten.
    #[arg(long, value_name = "FILE")]
    cache: Option<PathBuf>,
    /// Leave out paths matching this glob (repeatable), as the daemon's `exclude` does.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
}

/// The `--json` document.
#[derive(Debug, serde::Serialize)]
struct Report {
    dir: String,
    root: String,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    scan_seconds: f64,
    files_hashed: u64,
    bytes_hashed: u64,
    files_reused: u64,
    /// False when some entries could not be read: the root does not cover them.
    complete: bool,
    /// `none`, `used`, `created`, or `discarded: <why>`.
    cache: String,
    skipped: Vec<manifest::Skipped>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = match std::fs::canonicalize(&args.dir) {
        Ok(dir) => dir,
        Err(e) => {
            return Err(hinted(
                format!("cannot scan {}: {e}", args.dir.display()),
                "give the path of an existing directory, e.g. `stagingctl manifest /srv/mediawiki-staging`",
            ));
        }
    };
    let excludes = Excludes::new(&args.exclude).map_err(|e| hinted(e.to_string(), "fix or remove that --exclude"))?;
    let options = ScanOptions { excludes, ..ScanOptions::default() };

    let (previous, mut cache_state) = match &args.cache {
        None => (None, "none".to_owned()),
        Some(path) => match cache::load(path, &dir) {
            Ok(Some(m)) => (Some(m), "used".to_owned()),
            Ok(None) => (None, "created".to_owned()),
            Err(e) => {
                eprintln!("warning: {e}");
                (None, format!("discarded: {e}"))
            }
        },
    };

    let started = Instant::now();
    // The cached manifest is handed over by value: the scan consumes it as it
    // goes, so the old and new manifests are never both whole in memory.
    let scan = manifest::scan(&dir, &options, Previous::owned(previous))
        .map_err(|e| hinted(e.to_string(), "check that the directory exists and is readable by this user"))?;
    let scan_seconds = started.elapsed().as_secs_f64();

    if let Some(path) = &args.cache
        && let Err(e) = cache::save(&scan.manifest, &dir, path)
    {
        eprintln!("warning: could not write stat cache: {e}");
        cache_state = format!("not written: {e}");
    }

    let totals = scan.manifest.totals();
    let report = Report {
        dir: dir.display().to_string(),
        root: scan.manifest.root_hash().to_hex(),
        files: totals.files,
        dirs: totals.dirs,
        symlinks: totals.symlinks,
        bytes: totals.bytes,
        scan_seconds,
        files_hashed: scan.report.files_hashed,
        bytes_hashed: scan.report.bytes_hashed,
        files_reused: scan.report.files_reused,
        complete: scan.report.is_complete(),
        cache: cache_state,
        skipped: scan.report.skipped.clone(),
    };

    if args.json {
        print_json(&report)?;
    } else {
        print_table(&report).context("writing the report")?;
    }
    for skipped in &report.skipped {
        let action = match skipped.reason {
            SkipReason::Special(_) => "skipped",
            _ => "left out of the manifest",
        };
        eprintln!("warning: {}: {} ({action})", skipped.path, skipped.reason);
    }
    if report.complete {
        Ok(ExitCode::SUCCESS)
    } else {
        let unreadable = report.skipped.iter().filter(|s| !matches!(s.reason, SkipReason::Special(_))).count();
        Err(hinted(
            format!("{unreadable} entries could not be read; the root hash above does not cover them"),
            "fix their permissions (or run as a user who can read them) and scan again",
        ))
    }
}

fn print_table(r: &Report) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "dir       {}", r.dir)?;
    writeln!(out, "root      {}", r.root)?;
    writeln!(out, "files     {} ({})", thousands(r.files), human_bytes(r.bytes))?;
    writeln!(out, "dirs      {}", thousands(r.dirs))?;
    writeln!(out, "symlinks  {}", thousands(r.symlinks))?;
    writeln!(
        out,
        "scanned   in {:.3} s: {} files read ({}), {} reused from the stat cache ({})",
        r.scan_seconds,
        thousands(r.files_hashed),
        human_bytes(r.bytes_hashed),
        thousands(r.files_reused),
        r.cache
    )?;
    Ok(())
}
