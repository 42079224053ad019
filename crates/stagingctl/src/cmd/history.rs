//! `stagingctl history [--tree NAME] [--limit N] [--json]`: a tree's past syncs
//! and rollbacks from `Admin.History`, newest first.
//!
//! The table and the `--json` array are pure functions of the records
//! ([`table`], [`report`]); ages are computed against this machine's clock,
//! since the answer carries no clock of the daemon's.
//!
//! `--json` prints an array, newest first, of
//! ```text
//! { "id": "s1714557600-0123456789abcdef", "tree": "staging", "kind": "sync" | "rollback",
//!   "source": "deploy2002" (for a rollback: the record whose state was restored),
//!   "time": TIME|null, "who": "alice", "reason": "…",
//!   "counts": { "creates", "updates", "deletes", "bytes_to_write", "bytes_fetched",
//!               "bytes_copied_locally" } | null,
//!   "root_before": HASH|null, "root_after": HASH|null, "plan_id": "0123456789abcdef"|null,
//!   "result": "applied" | "nothing-to-do" | "refused" | "failed" | "rolled-back" (optionally ": message"),
//!   "restorable": true }
//! ```
//! with TIME and HASH as in `status --json`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use proto::v1::{HistoryRequest, RecordKind, SyncRecord};
use serde::Serialize;

use super::render::CountsReport;
use super::status::report::{Time, hash_hex, hash_short, time};
use super::status::table::{ago, columns};
use crate::client::{self, Admin, Target};
use crate::output::{print_json, sanitize, thousands};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tree; may be left out when the daemon has only one.
    #[arg(long, value_name = "NAME")]
    tree: Option<String>,
    /// Show at most this many records (default: the daemon's, 50).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Print a JSON array instead of the table (stable keys, for scripts; see README).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, daemon: &Target) -> anyhow::Result<ExitCode> {
    let request = HistoryRequest { tree: args.tree.clone().unwrap_or_default(), limit: args.limit.unwrap_or(0) };
    let records = client::runtime()?.block_on(async {
        let mut admin = Admin::connect(daemon).await?;
        admin.history(request).await.map_err(|status| admin.describe_or("History", &status, fallback_hint))
    })?;
    let records = records.records;
    if args.json {
        print_json(&records.iter().map(report).collect::<Vec<_>>())?;
    } else {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        std::io::stdout().lock().write_all(table(&records, args.tree.as_deref(), now).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn fallback_hint(code: tonic::Code) -> Option<String> {
    match code {
        tonic::Code::NotFound | tonic::Code::InvalidArgument => {
            Some("name a tree with --tree; `stagingctl status` lists them".to_owned())
        }
        _ => None,
    }
}

/// `sync`, `rollback`, or `unknown-N`.
pub fn kind_name(value: i32) -> String {
    match RecordKind::try_from(value) {
        Ok(RecordKind::Sync) => "sync".to_owned(),
        Ok(RecordKind::Rollback) => "rollback".to_owned(),
        Ok(RecordKind::Unspecified) | Err(_) => format!("unknown-{value}"),
    }
}

/// The table, newest first as the daemon sent it; `now` (unix seconds) for ages.
pub fn table(records: &[SyncRecord], tree: Option<&str>, now: i64) -> String {
    if records.is_empty() {
        return match tree {
            Some(tree) => format!("{}: no syncs or rollbacks recorded\n", sanitize(tree)),
            None => "no syncs or rollbacks recorded\n".to_owned(),
        };
    }
    let several_trees = records.iter().any(|r| r.tree != records[0].tree);
    let mut header = vec!["ID"];
    if several_trees {
        header.push("TREE");
    }
    header.extend(["KIND", "SOURCE", "TIME", "WHO", "CHANGES", "ROOT", "PLAN", "UNDO", "RESULT", "REASON"]);
    let rows = records
        .iter()
        .map(|r| {
            let mut row = vec![sanitize(&r.id)];
            if several_trees {
                row.push(sanitize(&r.tree));
            }
            let when = time(r.unix).map_or_else(|| "-".to_owned(), |t| format!("{}{}", t.rfc3339, ago(now, r.unix)));
            let counts = r.counts.unwrap_or_default();
            row.extend([
                kind_name(r.kind),
                dash(&sanitize(&r.source)),
                when,
                dash(&sanitize(&r.who)),
                format!("+{} ~{} -{}", thousands(counts.creates), thousands(counts.updates), thousands(counts.deletes)),
                format!("{} → {}", hash_short(&r.root_before), hash_short(&r.root_after)),
                dash(&sanitize(&r.plan_id)),
                if r.restorable { "yes" } else { "no" }.to_owned(),
                dash(&sanitize(&r.result).replace('\n', " ")),
                sanitize(&r.reason).replace('\n', " "),
            ]);
            row
        })
        .collect();
    columns(&header, rows, &[])
}

fn dash(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

/// One record of the `--json` array.
#[derive(Debug, Serialize)]
pub struct RecordReport {
    pub id: String,
    pub tree: String,
    /// `sync` or `rollback`.
    pub kind: String,
    /// The peer synced from; for a rollback, the id of the record whose state was restored.
    pub source: String,
    pub time: Option<Time>,
    pub who: String,
    pub reason: String,
    pub counts: Option<CountsReport>,
    pub root_before: Option<String>,
    pub root_after: Option<String>,
    pub plan_id: Option<String>,
    /// As in `status --json` `last_sync.result`.
    pub result: String,
    /// Whether the trash still holds what it replaced, so it can be rolled back.
    pub restorable: bool,
}

pub fn report(r: &SyncRecord) -> RecordReport {
    RecordReport {
        id: r.id.clone(),
        tree: r.tree.clone(),
        kind: kind_name(r.kind),
        source: r.source.clone(),
        time: time(r.unix),
        who: r.who.clone(),
        reason: r.reason.clone(),
        counts: r.counts.as_ref().map(CountsReport::from),
        root_before: hash_hex(&r.root_before),
        root_after: hash_hex(&r.root_after),
        plan_id: (!r.plan_id.is_empty()).then(|| r.plan_id.clone()),
        result: r.result.clone(),
        restorable: r.restorable,
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::SyncCounts;

    use super::*;

    pub fn record(id: &str, kind: RecordKind, unix: i64) -> SyncRecord {
        SyncRecord {
            id: id.into(),
            tree: "staging".into(),
            kind: kind as i32,
            source: "deploy2002".into(),
            unix,
            who: "alice".into(),
            counts: Some(SyncCounts { creates: 1200, updates: 3, deletes: 1, ..SyncCounts::default() }),
            root_before: vec![0xab; 32],
            root_after: vec![0xcd; 32],
            plan_id: "0123456789abcdef".into(),
            result: "applied".into(),
            reason: "T123456 train".into(),
            restorable: true,
        }
    }

    #[test]
    fn table_is_newest_first_with_age_counts_and_roots() {
        let mut undo = record("r1714557000-fedcba9876543210", RecordKind::Rollback, 1_714_557_000);
        undo.source = "s1714550000-0123456789abcdef".into();
        undo.root_before = vec![0xcd; 32];
        undo.root_after = vec![0xab; 32];
        undo.counts = Some(SyncCounts { deletes: 1200, ..SyncCounts::default() });
        undo.plan_id = String::new();
        undo.reason = String::new();
        undo.result = "rolled-back".into();
        undo.restorable = false;
        let sync = record("s1714550000-0123456789abcdef", RecordKind::Sync, 1_714_550_000);
        let text = table(&[undo, sync], None, 1_714_557_600);
        assert_eq!(
            text,
            "ID                            KIND      SOURCE                        TIME                            WHO    CHANGES       ROOT                         PLAN              UNDO  RESULT       REASON\n\
             r1714557000-fedcba9876543210  rollback  s1714550000-0123456789abcdef  2024-05-01T09:50:00Z (10m ago)  alice  +0 ~0 -1,200  cdcdcdcdcdcd → abababababab  -                 no    rolled-back\n\
             s1714550000-0123456789abcdef  sync      deploy2002                    2024-05-01T07:53:20Z (2h ago)   alice  +1,200 ~3 -1  abababababab → cdcdcdcdcdcd  0123456789abcdef  yes   applied      T123456 train\n"
        );
        assert_eq!(table(&[], Some("patches"), 0), "patches: no syncs or rollbacks recorded\n");
    }

    #[test]
    fn json_records() {
        let value =
            serde_json::to_value(report(&record("s1-0123456789abcdef", RecordKind::Sync, 1_714_557_600))).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "id": "s1-0123456789abcdef", "tree": "staging", "kind": "sync", "source": "deploy2002",
                "time": { "unix": 1_714_557_600, "rfc3339": "2024-05-01T10:00:00Z" },
                "who": "alice", "reason": "T123456 train",
                "counts": { "creates": 1200, "updates": 3, "deletes": 1, "bytes_to_write": 0,
                            "bytes_fetched": 0, "bytes_copied_locally": 0 },
                "root_before": "ab".repeat(32), "root_after": "cd".repeat(32),
                "plan_id": "0123456789abcdef", "result": "applied", "restorable": true
            })
        );
    }
}
