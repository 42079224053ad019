//! `sync`, `diff`, `rollback`, `history` and `verify` with the real binary
//! against a fake `Admin` server (tonic on a unix socket in a temp dir) that
//! streams canned `SyncEvent`s and records every request it gets. What the
//! daemon does is tested in the workspace's `tests/`; here: what stagingctl
//! sends, prints and exits with.

mod common;

use common::{Canned, FakeDaemon, run};
use proto::v1::{
    EntryKind, HistoryRequest, Mismatch, PlanItem, Progress, RecordKind, RollbackRequest, SyncCounts, SyncEvent,
    SyncOutcome, SyncRecord, SyncRequest, TreeResult, VerifyRequest, VerifyResult, sync_event,
};
use tonic::Status;

impl FakeDaemon {
    /// Runs `stagingctl --admin-socket <fake> ARGS` as operator `carol`;
    /// returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        run(self.stagingctl().env("SUDO_USER", "carol").args(args))
    }
}

fn event(event: sync_event::Event) -> Result<SyncEvent, Status> {
    Ok(SyncEvent { event: Some(event) })
}

fn item(op: &str, path: &[u8], size: u64, kind: EntryKind) -> Result<SyncEvent, Status> {
    event(sync_event::Event::PlanItem(PlanItem {
        tree: "staging".into(),
        op: op.into(),
        path: path.to_vec(),
        size,
        kind: kind as i32,
    }))
}

fn result(outcome: SyncOutcome, edit: impl FnOnce(&mut TreeResult)) -> Result<SyncEvent, Status> {
    let mut result = TreeResult {
        tree: "staging".into(),
        outcome: outcome as i32,
        plan_id: "0123456789abcdef".into(),
        counts: Some(SyncCounts {
            creates: 2,
            updates: 1,
            deletes: 1,
            bytes_to_write: 3072,
            bytes_fetched: 0,
            bytes_copied_locally: 0,
        }),
        root_before: vec![0xab; 32],
        root_after: vec![0xcd; 32],
        ..TreeResult::default()
    };
    edit(&mut result);
    event(sync_event::Event::TreeResult(result))
}

fn progress(phase: &str, files_done: u64) -> Result<SyncEvent, Status> {
    event(sync_event::Event::Progress(Progress {
        tree: "staging".into(),
        phase: phase.into(),
        files_done,
        files_total: 3,
        bytes_done: files_done * 1024,
        bytes_total: 3072,
    }))
}

fn dry_run_events() -> Vec<Result<SyncEvent, Status>> {
    vec![
        progress("planning", 0),
        item("create", b"php-1.44/includes/Setup.php", 1234, EntryKind::File),
        item("create", b"l10n/caf\xe9.txt", 1838, EntryKind::File),
        item("update", b"wmf-config/db.php", 0, EntryKind::File),
        item("delete", b"old/\x1b[31mred", 0, EntryKind::File),
        result(SyncOutcome::DryRun, |_| {}),
    ]
}

#[test]
fn dry_run_prints_the_plan_and_its_id_and_exits_0() {
    let daemon = FakeDaemon::start(Canned { events: dry_run_events(), ..Canned::default() });
    let (code, stdout, stderr) = daemon.run(&["sync", "--from", "deploy2002", "--tree", "staging", "--dry-run"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "staging: plan from deploy2002\n\
         \x20 create     php-1.44/includes/Setup.php  (1.2 KiB)\n\
         \x20 create     l10n/caf\\xe9.txt  (1.8 KiB)\n\
         \x20 update     wmf-config/db.php  (0 B)\n\
         \x20 delete     old/\\u{1b}[31mred\n\
         staging: dry run: 2 to create, 1 to update, 1 to delete; 3.0 KiB to write; root abababababab → cdcdcdcdcdcd\n\
         plan id: 0123456789abcdef\n\
         to apply it: stagingctl sync --from deploy2002 --tree staging\n"
    );
    // Not a terminal: the one progress event is one plain line.
    assert_eq!(stderr, "staging: planning 0/3 files, 0 B/3.0 KiB\n");
    let seen = daemon.seen();
    assert_eq!(
        seen.sync,
        [SyncRequest {
            from: "deploy2002".into(),
            tree: "staging".into(),
            dry_run: true,
            confirm_plan_id: String::new(),
            allow_behind: false,
            who: "carol".into(),
            reason: String::new(),
        }]
    );
}

#[test]
fn diff_is_sync_dry_run() {
    let daemon = FakeDaemon::start(Canned { events: dry_run_events(), ..Canned::default() });
    let (code, stdout, _) = daemon.run(&["diff", "--from", "deploy2002"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("\nplan id: 0123456789abcdef\n"), "{stdout}");
    let seen = daemon.seen();
    assert_eq!(seen.sync.len(), 1);
    assert!(seen.sync[0].dry_run);
    assert_eq!((seen.sync[0].from.as_str(), seen.sync[0].tree.as_str()), ("deploy2002", ""));
}

#[test]
fn every_flag_goes_into_the_request() {
    let applied = result(SyncOutcome::Applied, |r| {
        r.sync_id = "s1714557600-0123456789abcdef".into();
        if let Some(c) = r.counts.as_mut() {
            c.bytes_fetched = 2048;
            c.bytes_copied_locally = 1024;
        }
    });
    let daemon = FakeDaemon::start(Canned {
        events: vec![progress("fetching", 1), progress("switching", 3), applied],
        ..Canned::default()
    });
    let (code, stdout, stderr) = daemon.run(&[
        "sync",
        "--from",
        "deploy2002",
        "--tree",
        "staging",
        "--confirm",
        "0123456789ABCDEF",
        "--allow-behind",
        "--reason",
        "T123456 train",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "staging: applied sync s1714557600-0123456789abcdef: 2 created, 1 updated, 1 deleted; 2.0 KiB fetched, \
         1.0 KiB copied locally; root abababababab → cdcdcdcdcdcd\n"
    );
    // Plain progress lines are throttled: the second event comes at once.
    assert_eq!(stderr, "staging: fetching 1/3 files, 1.0 KiB/3.0 KiB\n");
    assert_eq!(
        daemon.seen().sync,
        [SyncRequest {
            from: "deploy2002".into(),
            tree: "staging".into(),
            dry_run: false,
            confirm_plan_id: "0123456789abcdef".into(),
            allow_behind: true,
            who: "carol".into(),
            reason: "T123456 train".into(),
        }]
    );
}

#[test]
fn a_malformed_plan_id_is_a_usage_error() {
    let daemon = FakeDaemon::start(Canned::default());
    let (code, _, stderr) = daemon.run(&["sync", "--from", "deploy2002", "--confirm", "xyz"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("16 hex digits"), "{stderr}");
    assert!(daemon.seen().sync.is_empty());
}

#[test]
fn a_refusal_exits_3_naming_the_guard_and_the_command_that_proceeds() {
    let refused = result(SyncOutcome::Refused, |r| {
        r.guard = "delete-threshold".into();
        r.message = "the plan deletes 12,000 of 150,000 files (8.0%), over the 5% threshold".into();
        r.hint = "stagingctl sync --from deploy2002 --tree staging --confirm 0123456789abcdef".into();
    });
    let daemon = FakeDaemon::start(Canned { events: vec![refused], ..Canned::default() });
    let (code, stdout, stderr) = daemon.run(&["sync", "--from", "deploy2002"]);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "staging: REFUSED by guard delete-threshold: the plan deletes 12,000 of 150,000 files (8.0%), over the 5% \
         threshold\nhint: stagingctl sync --from deploy2002 --tree staging --confirm 0123456789abcdef\n"
    );
}

#[test]
fn a_refusal_beats_a_failure_and_a_failure_beats_success() {
    let tree = |name: &str, outcome: SyncOutcome| {
        result(outcome, |r| {
            r.tree = name.into();
            r.message = format!("{name} went {outcome:?}");
        })
    };
    let daemon = FakeDaemon::start(Canned {
        events: vec![
            tree("patches", SyncOutcome::Failed),
            tree("staging", SyncOutcome::Applied),
            tree("values", SyncOutcome::Refused),
        ],
        ..Canned::default()
    });
    let (code, _, stderr) = daemon.run(&["sync", "--from", "deploy2002"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(stderr, "patches: FAILED: patches went Failed\nvalues: REFUSED: values went Refused\n");

    let daemon = FakeDaemon::start(Canned {
        events: vec![tree("patches", SyncOutcome::Failed), tree("staging", SyncOutcome::NothingToDo)],
        ..Canned::default()
    });
    let (code, stdout, _) = daemon.run(&["sync", "--from", "deploy2002"]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "staging: already in sync with deploy2002 (root abababababab)\n");
}

#[test]
fn a_failure_exits_1_with_the_daemons_hint() {
    let failed = result(SyncOutcome::Failed, |r| {
        r.message = "fetched content does not match its hash: php-1.44/x.php; nothing was applied\n\
                     hint: retry; if it persists, check deploy2002's disk"
            .into();
    });
    let daemon = FakeDaemon::start(Canned { events: vec![failed], ..Canned::default() });
    let (code, stdout, stderr) = daemon.run(&["sync", "--from", "deploy2002", "--reason", "r"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "staging: FAILED: fetched content does not match its hash: php-1.44/x.php; nothing was applied\n\
         hint: retry; if it persists, check deploy2002's disk\n"
    );
}

#[test]
fn errors_before_the_stream_exit_1_with_a_hint() {
    let daemon = FakeDaemon::start(Canned {
        stream_refusal: Some(Status::not_found("no peer named deploy9999; configured: deploy2002")),
        ..Canned::default()
    });
    let (code, stdout, stderr) = daemon.run(&["sync", "--from", "deploy9999"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "error: Sync failed (not-found): no peer named deploy9999; configured: deploy2002\n\
         hint: `stagingctl status` lists the configured peers and this node's trees\n"
    );

    let daemon = FakeDaemon::start(Canned {
        stream_refusal: Some(Status::invalid_argument(
            "this node has several trees: patches, staging\nhint: stagingctl rollback --tree staging",
        )),
        ..Canned::default()
    });
    let (code, _, stderr) = daemon.run(&["rollback"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: Rollback failed (invalid-argument): this node has several trees: patches, staging\n\
         hint: stagingctl rollback --tree staging\n"
    );
}

#[test]
fn a_broken_stream_exits_1_after_what_came_through() {
    let daemon = FakeDaemon::start(Canned {
        events: vec![
            result(SyncOutcome::NothingToDo, |r| r.tree = "patches".into()),
            Err(Status::internal("planner crashed")),
        ],
        ..Canned::default()
    });
    let (code, stdout, stderr) = daemon.run(&["sync", "--from", "deploy2002"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "patches: already in sync with deploy2002 (root abababababab)\n");
    assert_eq!(
        stderr,
        "error: Sync failed (internal): planner crashed\nhint: see the daemon's log: journalctl -u stagingd\n"
    );

    // Ending without any result is not success either.
    let daemon = FakeDaemon::start(Canned { events: vec![progress("planning", 0)], ..Canned::default() });
    let (code, _, stderr) = daemon.run(&["sync", "--from", "deploy2002", "--json"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("error: stagingd ended the stream without a result\n"), "{stderr}");
}

#[test]
fn sync_json_is_one_document() {
    let daemon = FakeDaemon::start(Canned { events: dry_run_events(), ..Canned::default() });
    let (code, stdout, stderr) = daemon.run(&["diff", "--from", "deploy2002", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "", "no progress with --json");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(doc["format"], 1);
    assert_eq!(doc["error"], serde_json::Value::Null);
    let tree = &doc["trees"][0];
    assert_eq!(tree["tree"], "staging");
    assert_eq!(tree["outcome"], "dry-run");
    assert_eq!(tree["plan_id"], "0123456789abcdef");
    assert_eq!(tree["guard"], serde_json::Value::Null);
    assert_eq!(tree["hint"], "stagingctl sync --from deploy2002 --tree staging");
    assert_eq!(tree["counts"]["creates"], 2);
    assert_eq!(tree["counts"]["bytes_to_write"], 3072);
    assert_eq!(tree["sync_id"], serde_json::Value::Null);
    assert_eq!(tree["root_before"], "ab".repeat(32));
    assert_eq!(tree["root_after"], "cd".repeat(32));
    let plan = doc["plan"].as_array().expect("plan");
    assert_eq!(plan.len(), 4);
    assert_eq!(
        plan[1],
        serde_json::json!({"tree": "staging", "op": "create", "path": "l10n/caf\\xe9.txt", "size": 1838, "kind": "file"})
    );
    assert_eq!(plan[3]["path"], "old/\\u{1b}[31mred");

    // A refusal: exit 3, and still only JSON on stdout.
    let daemon = FakeDaemon::start(Canned {
        events: vec![result(SyncOutcome::Refused, |r| {
            r.guard = "source-behind".into();
            r.hint = "stagingctl sync --from deploy2002 --tree staging --allow-behind".into();
        })],
        ..Canned::default()
    });
    let (code, stdout, stderr) = daemon.run(&["sync", "--from", "deploy2002", "--json"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(stderr, "");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(doc["trees"][0]["outcome"], "refused");
    assert_eq!(doc["trees"][0]["guard"], "source-behind");
    assert!(doc.get("plan").is_none(), "{doc}");
}

#[test]
fn rollback_sends_who_why_and_target_and_renders_like_sync() {
    let undone = result(SyncOutcome::Applied, |r| {
        r.sync_id = "r1714557700-fedcba9876543210".into();
        r.root_before = vec![0xcd; 32];
        r.root_after = vec![0xab; 32];
    });
    let daemon = FakeDaemon::start(Canned { events: vec![undone], ..Canned::default() });
    let (code, stdout, stderr) =
        daemon.run(&["rollback", "--tree", "staging", "--to", "s1714550000-0123456789abcdef", "--reason", "bad train"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "staging: applied rollback r1714557700-fedcba9876543210: 2 created, 1 updated, 1 deleted; 0 B copied \
         locally; root cdcdcdcdcdcd → abababababab\n"
    );
    assert_eq!(
        daemon.seen().rollback,
        [RollbackRequest {
            tree: "staging".into(),
            to_sync_id: "s1714550000-0123456789abcdef".into(),
            who: "carol".into(),
            reason: "bad train".into(),
        }]
    );

    let daemon = FakeDaemon::start(Canned {
        events: vec![result(SyncOutcome::Refused, |r| {
            r.guard = "lock".into();
            r.message = "tree is busy: sync by alice since 2024-05-01T10:00:00Z".into();
        })],
        ..Canned::default()
    });
    let (code, _, stderr) = daemon.run(&["rollback"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(stderr, "staging: REFUSED by guard lock: tree is busy: sync by alice since 2024-05-01T10:00:00Z\n");
}

fn record(id: &str, kind: RecordKind, unix: i64) -> SyncRecord {
    SyncRecord {
        id: id.into(),
        tree: "staging".into(),
        kind: kind as i32,
        source: "deploy2002".into(),
        unix,
        who: "alice".into(),
        counts: Some(SyncCounts { creates: 5, updates: 2, deletes: 1, ..SyncCounts::default() }),
        root_before: vec![0xab; 32],
        root_after: vec![0xcd; 32],
        plan_id: "0123456789abcdef".into(),
        result: "applied".into(),
        reason: "T1 train".into(),
        restorable: true,
    }
}

#[test]
fn history_json_is_an_array_newest_first() {
    let records = vec![
        record("r1714557700-fedcba9876543210", RecordKind::Rollback, 1_714_557_700),
        record("s1714557600-0123456789abcdef", RecordKind::Sync, 1_714_557_600),
    ];
    let daemon = FakeDaemon::start(Canned { history: records, ..Canned::default() });
    let (code, stdout, stderr) = daemon.run(&["history", "--tree", "staging", "--limit", "2", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    let records = doc.as_array().expect("an array");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["id"], "r1714557700-fedcba9876543210");
    assert_eq!(records[0]["kind"], "rollback");
    assert_eq!(records[1]["kind"], "sync");
    assert_eq!(records[1]["time"]["rfc3339"], "2024-05-01T10:00:00Z");
    assert_eq!(records[1]["counts"]["creates"], 5);
    assert_eq!(records[1]["root_after"], "cd".repeat(32));
    assert_eq!(records[1]["restorable"], true);
    assert_eq!(daemon.seen().history, [HistoryRequest { tree: "staging".into(), limit: 2 }]);

    let (code, stdout, _) = daemon.run(&["history"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("ID  "), "{stdout}");
    assert!(
        stdout.contains("+5 ~2 -1  abababababab → cdcdcdcdcdcd  0123456789abcdef  yes   applied  T1 train\n"),
        "{stdout}"
    );
}

#[test]
fn verify_lists_mismatches_and_exits_1() {
    let results = vec![
        VerifyResult { tree: "patches".into(), files_checked: 20, bytes_checked: 1 << 20, mismatches: Vec::new() },
        VerifyResult {
            tree: "staging".into(),
            files_checked: 150_000,
            bytes_checked: 2_040_109_465,
            mismatches: vec![Mismatch {
                path: b"w/index.php".to_vec(),
                expected: "file, 1234 bytes, blake3 ab12…".into(),
                actual: "missing".into(),
            }],
        },
    ];
    let daemon = FakeDaemon::start(Canned { verify: results, ..Canned::default() });
    let (code, stdout, stderr) = daemon.run(&["verify"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "patches: 20 files checked (1.0 MiB): OK\n\
         staging: 150,000 files checked (1.9 GiB): 1 mismatch\n\
         \x20 w/index.php: expected file, 1234 bytes, blake3 ab12…, found missing\n"
    );
    assert!(stderr.starts_with("hint: "), "{stderr}");
    assert_eq!(daemon.seen().verify, [VerifyRequest { tree: String::new() }]);

    let clean = vec![VerifyResult { tree: "staging".into(), files_checked: 3, bytes_checked: 3, mismatches: vec![] }];
    let daemon = FakeDaemon::start(Canned { verify: clean, ..Canned::default() });
    let (code, stdout, stderr) = daemon.run(&["verify", "--tree", "staging", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(doc["trees"][0]["ok"], true);
    assert_eq!(daemon.seen().verify, [VerifyRequest { tree: "staging".into() }]);
}
