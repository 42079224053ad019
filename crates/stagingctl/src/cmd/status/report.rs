//! The `stagingctl status --json` document, and the names every status view shares.
//!
//! [`StatusReport`] is built from the daemon's `NodeStatus` by a pure function
//! ([`StatusReport::from_status`]) and is the one stable shape scripts parse. It
//! owns the spelling of enum values (`receive-only`, `ready`, …), hashes
//! (64 lowercase hex digits) and times (unix seconds plus RFC 3339, UTC). It does
//! not judge health: that is [`super::check`], whose verdict it embeds.
//!
//! # Schema (`format` 1)
//!
//! Keys are never renamed or removed without bumping `format`; new keys may be
//! added at any time, so parsers must ignore keys they do not know. `null` means
//! "not known / not applicable"; daemon-provided free text that may be empty
//! (reasons, details) is a string, possibly `""`.
//!
//! ```text
//! {
//!   "format": 1,
//!   "node": {
//!     "name": "deploy1002", "version": "0.1.0",
//!     "pool": { "state": "serve" | "receive-only" | "depooled",
//!               "who": "alice" ("default" if never set), "reason": "…", "changed": TIME|null },
//!     "listen_address": "127.0.0.1:7420", "admin_socket": "/run/stagingd/admin.sock",
//!     "started": TIME|null, "now": TIME|null
//!   },
//!   "trees": [ {
//!     "name": "staging",
//!     "readiness": "ready" | "scanning" | "applying" | "incomplete",
//!     "root": HASH|null, "files": 184935, "dirs": 12000, "symlinks": 150, "bytes": 8800000000,
//!     "unreadable_files": 0,
//!     "filesystem": { "free_bytes": N, "total_bytes": N, "free_bytes_percent": 45.12|null,
//!                     "free_inodes": N, "total_inodes": N, "free_inodes_percent": 90.0|null },
//!     "watch": { "state": "watching" | "polling" | "disabled" | "failed", "detail": "…" },
//!     "manifest_updated": TIME|null, "root_changed": TIME|null,
//!     "last_scan": { "finished": TIME, "millis": 412 } | null,
//!     "last_sync": { "id": "…", "source_peer": "deploy2002" ("" for a rollback),
//!                    "finished": TIME|null, "result": "applied" | "nothing-to-do" | "refused…" | …,
//!                    "plan_id": "0123456789abcdef" or "", "guard": "delete-threshold" or "" } | null
//!   } ],
//!   "peers": [ {
//!     "name": "deploy2002", "address": "http://10.0.0.2:7420",
//!     "reachable": true, "error": null | "connection refused", "rtt_millis": 3|null,
//!     "node": "deploy2002"|null, "version": "0.1.0"|null, "pool_state": "serve"|null,
//!     "trees": [ { "tree": "staging", "present": true, "readiness": "ready"|null,
//!                  "root": HASH|null, "in_sync": true|false|null } ]
//!   } ],
//!   "replication": { "phase": "disabled" | "following" | "paused" | "stopped" | "retrying",
//!                    "source": "deploy2002" or "", "paused": false, "changed_by": "…",
//!                    "changed": TIME|null, "stopped_guard": "delete-threshold" or "",
//!                    "last_error": "…", "last_success": TIME|null, "tree": "staging" or "" } | null,
//!   "locks": [ { "tree": "staging", "operation": "sync" | "rollback" | "replication",
//!                "who": "alice", "reason": "…", "since": TIME|null } ],
//!   "check": { "state": "OK" | "WARNING" | "CRITICAL" | "UNKNOWN", "exit_code": 0..3,
//!              "summary": "…" }
//! }
//! TIME = { "unix": 1714557600, "rfc3339": "2024-05-01T10:00:00Z" }
//! HASH = 64 lowercase hex digits (BLAKE3, 32 bytes)
//! ```
//!
//! `peers[].trees` has one entry per tree of *this* node, in the order of
//! `trees`: `present` is false when the peer has no tree of that name, and
//! `in_sync` is `null` when the peer is unreachable. An enum value this
//! `stagingctl` does not know (a newer daemon) is spelled `unknown-N`.

use proto::v1::{
    LastSync, LockInfo, NodeStatus, PeerStatus, PeerView, PoolState, Readiness, ReplicationPhase, ReplicationState,
    TreeStatus, WatchState,
};
use serde::Serialize;

use super::check::{Thresholds, classify};

/// The version of the document's shape (see the module docs).
pub const FORMAT: u32 = 1;

/// The whole `--json` document.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// Shape version, 1. Bumped only when a key is renamed, removed or changes meaning.
    pub format: u32,
    /// This node.
    pub node: NodeReport,
    /// This node's trees, in the daemon's order (sorted by name).
    pub trees: Vec<TreeReport>,
    /// Configured peers, in configuration order.
    pub peers: Vec<PeerReport>,
    /// Automatic replication; `null` if the daemon did not report it.
    pub replication: Option<ReplicationReport>,
    /// Sync/rollback locks held right now.
    pub locks: Vec<LockReport>,
    /// The verdict `status --check` would print.
    pub check: CheckReport,
}

/// A moment, in both forms scripts like.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Time {
    /// Unix seconds.
    pub unix: i64,
    /// The same moment in RFC 3339, UTC, whole seconds: `2024-05-01T10:00:00Z`.
    pub rfc3339: String,
}

/// This node.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// The node's name (`--name`).
    pub name: String,
    /// The daemon's version.
    pub version: String,
    /// Pool state and who set it.
    pub pool: PoolReport,
    /// The `Peer` service's address (`--listen`).
    pub listen_address: String,
    /// The admin socket the daemon listens on.
    pub admin_socket: String,
    /// When the daemon started.
    pub started: Option<Time>,
    /// The daemon's clock when it answered.
    pub now: Option<Time>,
}

/// Pool state with its who/when/why.
#[derive(Debug, Serialize)]
pub struct PoolReport {
    /// `serve`, `receive-only` or `depooled`.
    pub state: String,
    /// Who set it; `default` if it was never set.
    pub who: String,
    /// Why, in the operator's words.
    pub reason: String,
    /// When it was set.
    pub changed: Option<Time>,
}

/// One tree of this node.
#[derive(Debug, Serialize)]
pub struct TreeReport {
    /// The tree's name.
    pub name: String,
    /// `ready`, `scanning`, `applying` or `incomplete`.
    pub readiness: String,
    /// Root hash, 64 hex digits; `null` before the first manifest.
    pub root: Option<String>,
    /// Regular files.
    pub files: u64,
    /// Directories, not counting the root.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Content bytes of all files.
    pub bytes: u64,
    /// Files the last scan could not read.
    pub unreadable_files: u64,
    /// Capacity of the tree's filesystem.
    pub filesystem: FilesystemReport,
    /// How changes are noticed.
    pub watch: WatchReport,
    /// When the manifest was last confirmed to match the disk.
    pub manifest_updated: Option<Time>,
    /// When the root hash last changed.
    pub root_changed: Option<Time>,
    /// The last full scan.
    pub last_scan: Option<ScanReport>,
    /// The last sync or rollback.
    pub last_sync: Option<LastSyncReport>,
}

/// Free and total bytes and inodes (statvfs, as available to the daemon).
#[derive(Debug, Serialize)]
pub struct FilesystemReport {
    /// Free bytes.
    pub free_bytes: u64,
    /// Size in bytes.
    pub total_bytes: u64,
    /// `free_bytes / total_bytes` in percent, two decimals; `null` if the total is unknown (0).
    pub free_bytes_percent: Option<f64>,
    /// Free inodes.
    pub free_inodes: u64,
    /// Total inodes.
    pub total_inodes: u64,
    /// `free_inodes / total_inodes` in percent, two decimals; `null` if the total is unknown (0).
    pub free_inodes_percent: Option<f64>,
}

/// Watcher state.
#[derive(Debug, Serialize)]
pub struct WatchReport {
    /// `watching`, `polling`, `disabled` or `failed`.
    pub state: String,
    /// Why it is polling or failed; may be empty.
    pub detail: String,
}

/// The last full scan.
#[derive(Debug, Serialize)]
pub struct ScanReport {
    /// When it finished.
    pub finished: Time,
    /// How long it took.
    pub millis: u64,
}

/// The last sync or rollback of a tree.
#[derive(Debug, Serialize)]
pub struct LastSyncReport {
    /// The history record's id.
    pub id: String,
    /// The peer synced from; empty for a rollback.
    pub source_peer: String,
    /// When it finished or was refused.
    pub finished: Option<Time>,
    /// `applied`, `nothing-to-do`, `refused`, `failed` or `rolled-back`, optionally followed by `: message`.
    pub result: String,
    /// The plan id (16 hex digits), or empty.
    pub plan_id: String,
    /// The refusing guard, or empty.
    pub guard: String,
}

/// A configured peer as this node sees it.
#[derive(Debug, Serialize)]
pub struct PeerReport {
    /// The configured name.
    pub name: String,
    /// The configured URL.
    pub address: String,
    /// Whether its status answered just now.
    pub reachable: bool,
    /// Why not; `null` when reachable.
    pub error: Option<String>,
    /// Round trip of the status call; `null` when unreachable.
    pub rtt_millis: Option<u32>,
    /// The name the peer reports for itself.
    pub node: Option<String>,
    /// The peer's daemon version.
    pub version: Option<String>,
    /// The peer's pool state.
    pub pool_state: Option<String>,
    /// One entry per tree of this node.
    pub trees: Vec<PeerTreeReport>,
}

/// One of this node's trees as a peer has it.
#[derive(Debug, Serialize)]
pub struct PeerTreeReport {
    /// The tree's name.
    pub tree: String,
    /// Whether the peer has a tree of that name (false when unreachable).
    pub present: bool,
    /// The peer's readiness for it.
    pub readiness: Option<String>,
    /// The peer's root hash.
    pub root: Option<String>,
    /// Whether both roots are present and equal; `null` when the peer is unreachable.
    pub in_sync: Option<bool>,
}

/// Automatic replication.
#[derive(Debug, Serialize)]
pub struct ReplicationReport {
    /// `disabled`, `following`, `paused`, `stopped` or `retrying`.
    pub phase: String,
    /// The source peer, or empty.
    pub source: String,
    /// Whether an operator paused it.
    pub paused: bool,
    /// Who paused or resumed it last.
    pub changed_by: String,
    /// When.
    pub changed: Option<Time>,
    /// If stopped: the guard that refused.
    pub stopped_guard: String,
    /// If stopped or retrying: what went wrong.
    pub last_error: String,
    /// When replication last brought the trees level with the source.
    pub last_success: Option<Time>,
    /// The tree the stop or error concerns; empty for all.
    pub tree: String,
}

/// A held sync/rollback lock.
#[derive(Debug, Serialize)]
pub struct LockReport {
    /// The locked tree.
    pub tree: String,
    /// `sync`, `rollback` or `replication`.
    pub operation: String,
    /// Who started it.
    pub who: String,
    /// Why; may be empty.
    pub reason: String,
    /// Since when.
    pub since: Option<Time>,
}

/// The monitoring verdict.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// `OK`, `WARNING`, `CRITICAL` or `UNKNOWN`.
    pub state: &'static str,
    /// The exit code `--check` uses for it: 0, 1, 2 or 3.
    pub exit_code: u8,
    /// The one-line reason, worst problem first.
    pub summary: String,
}

impl StatusReport {
    /// Builds the document from the daemon's answer.
    pub fn from_status(status: &NodeStatus, limits: Thresholds) -> StatusReport {
        let local = status.local.clone().unwrap_or_default();
        let (state, summary) = classify(status, limits);
        StatusReport {
            format: FORMAT,
            node: NodeReport {
                name: local.node.clone(),
                version: local.version.clone(),
                pool: PoolReport {
                    state: pool_name(local.pool_state),
                    who: status.pool_who.clone(),
                    reason: status.pool_reason.clone(),
                    changed: time(status.pool_changed_unix),
                },
                listen_address: status.listen_address.clone(),
                admin_socket: status.admin_socket.clone(),
                started: time(status.started_unix),
                now: time(local.now_unix),
            },
            trees: local.trees.iter().map(tree_report).collect(),
            peers: status.peers.iter().map(|peer| peer_report(peer, &local)).collect(),
            replication: status.replication.as_ref().map(replication_report),
            locks: status.locks.iter().map(lock_report).collect(),
            check: CheckReport { state: state.label(), exit_code: state.exit_code(), summary },
        }
    }
}

fn tree_report(tree: &TreeStatus) -> TreeReport {
    TreeReport {
        name: tree.name.clone(),
        readiness: readiness_name(tree.readiness),
        root: hash_hex(&tree.root_hash),
        files: tree.files,
        dirs: tree.dirs,
        symlinks: tree.symlinks,
        bytes: tree.bytes,
        unreadable_files: tree.unreadable_files,
        filesystem: FilesystemReport {
            free_bytes: tree.fs_free_bytes,
            total_bytes: tree.fs_total_bytes,
            free_bytes_percent: percent(tree.fs_free_bytes, tree.fs_total_bytes).map(two_decimals),
            free_inodes: tree.fs_free_inodes,
            total_inodes: tree.fs_total_inodes,
            free_inodes_percent: percent(tree.fs_free_inodes, tree.fs_total_inodes).map(two_decimals),
        },
        watch: WatchReport { state: watch_name(tree.watch_state), detail: tree.watch_detail.clone() },
        manifest_updated: time(tree.manifest_updated_unix),
        root_changed: time(tree.root_changed_unix),
        last_scan: time(tree.last_scan_unix).map(|finished| ScanReport { finished, millis: tree.last_scan_millis }),
        last_sync: tree.last_sync.as_ref().map(last_sync_report),
    }
}

fn last_sync_report(last: &LastSync) -> LastSyncReport {
    LastSyncReport {
        id: last.id.clone(),
        source_peer: last.source_peer.clone(),
        finished: time(last.unix),
        result: last.result.clone(),
        plan_id: last.plan_id.clone(),
        guard: last.guard.clone(),
    }
}

fn peer_report(peer: &PeerView, local: &PeerStatus) -> PeerReport {
    let remote = peer.status.as_ref().filter(|_| peer.reachable);
    let trees = local
        .trees
        .iter()
        .map(|tree| {
            let Some(remote) = remote else {
                return PeerTreeReport {
                    tree: tree.name.clone(),
                    present: false,
                    readiness: None,
                    root: None,
                    in_sync: None,
                };
            };
            let theirs = remote.trees.iter().find(|t| t.name == tree.name);
            PeerTreeReport {
                tree: tree.name.clone(),
                present: theirs.is_some(),
                readiness: theirs.map(|t| readiness_name(t.readiness)),
                root: theirs.and_then(|t| hash_hex(&t.root_hash)),
                in_sync: Some(in_sync(peer, tree, theirs)),
            }
        })
        .collect();
    PeerReport {
        name: peer.name.clone(),
        address: peer.address.clone(),
        reachable: peer.reachable,
        error: (!peer.reachable)
            .then(|| if peer.error.is_empty() { "unreachable".to_owned() } else { peer.error.clone() }),
        rtt_millis: peer.reachable.then_some(peer.rtt_millis),
        node: remote.map(|r| r.node.clone()),
        version: remote.map(|r| r.version.clone()),
        pool_state: remote.map(|r| pool_name(r.pool_state)),
        trees,
    }
}

/// Whether `ours` agrees with the peer: the daemon's own `TreeAgreement` when it
/// sent one, else both roots present and equal.
pub fn in_sync(peer: &PeerView, ours: &TreeStatus, theirs: Option<&TreeStatus>) -> bool {
    if let Some(agreement) = peer.trees.iter().find(|a| a.tree == ours.name) {
        return agreement.in_sync;
    }
    theirs.is_some_and(|t| !t.root_hash.is_empty() && t.root_hash == ours.root_hash)
}

pub(crate) fn replication_report(r: &ReplicationState) -> ReplicationReport {
    ReplicationReport {
        phase: phase_name(r.phase),
        source: r.source.clone(),
        paused: r.paused,
        changed_by: r.changed_by.clone(),
        changed: time(r.changed_unix),
        stopped_guard: r.stopped_guard.clone(),
        last_error: r.last_error.clone(),
        last_success: time(r.last_success_unix),
        tree: r.tree.clone(),
    }
}

fn lock_report(lock: &LockInfo) -> LockReport {
    LockReport {
        tree: lock.tree.clone(),
        operation: lock.operation.clone(),
        who: lock.who.clone(),
        reason: lock.reason.clone(),
        since: time(lock.since_unix),
    }
}

/// A unix time as [`Time`]; `None` for 0 ("never or unknown") and negatives.
pub fn time(unix: i64) -> Option<Time> {
    let seconds = u64::try_from(unix).ok().filter(|s| *s > 0)?;
    let moment = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    Some(Time { unix, rfc3339: humantime::format_rfc3339_seconds(moment).to_string() })
}

/// A 32-byte hash as 64 hex digits; `None` when empty (no manifest yet).
pub fn hash_hex(hash: &[u8]) -> Option<String> {
    if hash.is_empty() {
        return None;
    }
    Some(hash.iter().map(|b| format!("{b:02x}")).collect())
}

/// The first 12 hex digits of a hash, as tables and check lines show it; `-` when empty.
pub fn hash_short(hash: &[u8]) -> String {
    hash_hex(hash).map_or_else(|| "-".to_owned(), |hex| hex.chars().take(12).collect())
}

/// `part / whole` in percent; `None` when `whole` is 0 (unknown).
pub fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

fn two_decimals(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// `serve`, `receive-only`, `depooled`.
pub fn pool_name(value: i32) -> String {
    match PoolState::try_from(value) {
        Ok(PoolState::Serve) => "serve".to_owned(),
        Ok(PoolState::ReceiveOnly) => "receive-only".to_owned(),
        Ok(PoolState::Depooled) => "depooled".to_owned(),
        Ok(PoolState::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown-{value}"),
    }
}

/// `ready`, `scanning`, `applying`, `incomplete`.
pub fn readiness_name(value: i32) -> String {
    match Readiness::try_from(value) {
        Ok(Readiness::Ready) => "ready".to_owned(),
        Ok(Readiness::Scanning) => "scanning".to_owned(),
        Ok(Readiness::Applying) => "applying".to_owned(),
        Ok(Readiness::Incomplete) => "incomplete".to_owned(),
        Ok(Readiness::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown-{value}"),
    }
}

/// `watching`, `polling`, `disabled`, `failed`.
pub fn watch_name(value: i32) -> String {
    match WatchState::try_from(value) {
        Ok(WatchState::Watching) => "watching".to_owned(),
        Ok(WatchState::Polling) => "polling".to_owned(),
        Ok(WatchState::Disabled) => "disabled".to_owned(),
        Ok(WatchState::Failed) => "failed".to_owned(),
        Ok(WatchState::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown-{value}"),
    }
}

/// `disabled`, `following`, `paused`, `stopped`, `retrying`.
pub fn phase_name(value: i32) -> String {
    match ReplicationPhase::try_from(value) {
        Ok(ReplicationPhase::Disabled) => "disabled".to_owned(),
        Ok(ReplicationPhase::Following) => "following".to_owned(),
        Ok(ReplicationPhase::Paused) => "paused".to_owned(),
        Ok(ReplicationPhase::Stopped) => "stopped".to_owned(),
        Ok(ReplicationPhase::Retrying) => "retrying".to_owned(),
        Ok(ReplicationPhase::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown-{value}"),
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::{LastSync, LockInfo, PoolState, ReplicationPhase, ReplicationState};
    use serde_json::json;

    use super::super::check::tests::{node, peer, tree, unreachable};
    use super::*;

    /// The whole document for a hand-made status, pinned key by key: a change
    /// here is a change of the documented contract (README, module docs).
    #[test]
    fn json_document_snapshot() {
        let mut staging = tree("staging", 0xab);
        staging.last_sync = Some(LastSync {
            id: "20240501-095500-staging".into(),
            source_peer: "deploy2002".into(),
            unix: 1_714_557_300,
            result: "applied".into(),
            plan_id: "0123456789abcdef".into(),
            guard: String::new(),
        });
        let ours = vec![staging];
        let mut status = node(
            PoolState::Serve,
            ours.clone(),
            vec![
                peer("deploy2002", PoolState::Serve, vec![tree("staging", 0xab)], &ours),
                unreachable("deploy2003", "connection refused"),
            ],
        );
        status.replication = Some(ReplicationState {
            phase: ReplicationPhase::Following as i32,
            source: "deploy2002".into(),
            last_success_unix: 1_714_557_588,
            ..ReplicationState::default()
        });
        status.locks.push(LockInfo {
            tree: "staging".into(),
            operation: "sync".into(),
            who: "bob".into(),
            reason: String::new(),
            since_unix: 1_714_557_540,
        });

        let actual = serde_json::to_value(StatusReport::from_status(&status, Thresholds::default())).unwrap();
        let t = |unix: i64, rfc3339: &str| json!({ "unix": unix, "rfc3339": rfc3339 });
        let expected = json!({
            "format": 1,
            "node": {
                "name": "deploy1002",
                "version": "0.1.0",
                "pool": { "state": "serve", "who": "alice", "reason": "after reimage, T123456",
                          "changed": t(1_714_550_000, "2024-05-01T07:53:20Z") },
                "listen_address": "127.0.0.1:7420",
                "admin_socket": "/run/stagingd/admin.sock",
                "started": t(1_714_540_000, "2024-05-01T05:06:40Z"),
                "now": t(1_714_557_600, "2024-05-01T10:00:00Z"),
            },
            "trees": [{
                "name": "staging",
                "readiness": "ready",
                "root": "ab".repeat(32),
                "files": 184_935, "dirs": 12_000, "symlinks": 150, "bytes": 8_800_000_000u64,
                "unreadable_files": 0,
                "filesystem": {
                    "free_bytes": 107_374_182_400u64, "total_bytes": 214_748_364_800u64, "free_bytes_percent": 50.0,
                    "free_inodes": 5_000_000, "total_inodes": 10_000_000, "free_inodes_percent": 50.0,
                },
                "watch": { "state": "watching", "detail": "" },
                "manifest_updated": t(1_714_557_000, "2024-05-01T09:50:00Z"),
                "root_changed": t(1_714_550_000, "2024-05-01T07:53:20Z"),
                "last_scan": { "finished": t(1_714_540_000, "2024-05-01T05:06:40Z"), "millis": 412 },
                "last_sync": {
                    "id": "20240501-095500-staging", "source_peer": "deploy2002",
                    "finished": t(1_714_557_300, "2024-05-01T09:55:00Z"), "result": "applied",
                    "plan_id": "0123456789abcdef", "guard": "",
                },
            }],
            "peers": [
                {
                    "name": "deploy2002", "address": "http://deploy2002.eqiad.wmnet:7420",
                    "reachable": true, "error": null, "rtt_millis": 3,
                    "node": "deploy2002", "version": "0.1.0", "pool_state": "serve",
                    "trees": [{ "tree": "staging", "present": true, "readiness": "ready",
                                "root": "ab".repeat(32), "in_sync": true }],
                },
                {
                    "name": "deploy2003", "address": "http://deploy2003.eqiad.wmnet:7420",
                    "reachable": false, "error": "connection refused", "rtt_millis": null,
                    "node": null, "version": null, "pool_state": null,
                    "trees": [{ "tree": "staging", "present": false, "readiness": null,
                                "root": null, "in_sync": null }],
                },
            ],
            "replication": {
                "phase": "following", "source": "deploy2002", "paused": false, "changed_by": "",
                "changed": null, "stopped_guard": "", "last_error": "",
                "last_success": t(1_714_557_588, "2024-05-01T09:59:48Z"), "tree": "",
            },
            "locks": [{ "tree": "staging", "operation": "sync", "who": "bob", "reason": "",
                        "since": t(1_714_557_540, "2024-05-01T09:59:00Z") }],
            "check": { "state": "WARNING", "exit_code": 1,
                       "summary": "peer deploy2003 unreachable: connection refused" },
        });
        assert_eq!(actual, expected, "\n{}", serde_json::to_string_pretty(&actual).unwrap());
    }

    #[test]
    fn hashes_times_and_unknown_enums() {
        assert_eq!(hash_hex(&[]), None);
        assert_eq!(hash_hex(&[0x0f; 32]).unwrap().len(), 64);
        assert_eq!(hash_short(&[0x0f; 32]), "0f0f0f0f0f0f");
        assert_eq!(hash_short(&[]), "-");
        assert_eq!(time(0), None);
        assert_eq!(time(-5), None);
        assert_eq!(time(1).unwrap().rfc3339, "1970-01-01T00:00:01Z");
        assert_eq!(pool_name(2), "serve");
        assert_eq!(pool_name(42), "unknown-42");
        assert_eq!(readiness_name(4), "incomplete");
    }
}
