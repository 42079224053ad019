//! The human view of `stagingctl status`: this node, a row per tree, a row per
//! peer × tree, replication, locks, and the `--check` verdict at the bottom.
//!
//! Rendering is a pure function of the daemon's `NodeStatus` into a `String`, so
//! the layout is pinned by tests. Ages ("5m ago") are computed against the
//! daemon's clock (`now_unix`), not ours. Scripts should parse `--json`, never
//! this text.

use std::fmt::Write as _;

use proto::v1::{NodeStatus, PeerStatus, PeerView, ReplicationPhase, ReplicationState, TreeStatus};

use super::check::{Thresholds, classify};
use super::report::{hash_short, in_sync, percent, phase_name, pool_name, readiness_name, time, watch_name};
use crate::output::{human_bytes, thousands};

/// Renders the whole status as text, ending with a newline.
pub fn render(status: &NodeStatus, limits: Thresholds) -> String {
    let local = status.local.clone().unwrap_or_default();
    let now = local.now_unix;
    let mut out = String::new();

    let mut node = local.node.clone();
    if !local.version.is_empty() {
        node.push_str(&format!(" (stagingd {}", local.version));
        if let Some(started) = time(status.started_unix) {
            node.push_str(&format!(", started {}", started.rfc3339));
        }
        node.push(')');
    }
    field(&mut out, "node", &node);
    field(&mut out, "pool", &pool_line(status, &local, now));
    field(&mut out, "listen", if status.listen_address.is_empty() { "-" } else { &status.listen_address });
    out.push('\n');

    out.push_str(&tree_table(&local.trees, now));
    for tree in &local.trees {
        if !tree.watch_detail.is_empty() {
            let _ = writeln!(out, "  {}: watch {}: {}", tree.name, watch_name(tree.watch_state), tree.watch_detail);
        }
        if let Some(result) = tree.last_sync.as_ref().filter(|l| !l.guard.is_empty()) {
            let _ = writeln!(out, "  {}: last sync refused by guard {}: {}", tree.name, result.guard, result.result);
        }
    }
    out.push('\n');

    if status.peers.is_empty() {
        out.push_str("no peers configured\n");
    } else {
        out.push_str(&peer_table(&status.peers, &local));
    }
    out.push('\n');

    field(&mut out, "replication", &replication_line(status.replication.as_ref(), now));
    if status.locks.is_empty() {
        field(&mut out, "locks", "none");
    }
    for lock in &status.locks {
        let mut text = format!("{}: {} by {}", lock.tree, lock.operation, lock.who);
        if let Some(since) = time(lock.since_unix) {
            text.push_str(&format!(" since {}{}", since.rfc3339, ago(now, lock.since_unix)));
        }
        if !lock.reason.is_empty() {
            text.push_str(&format!(": \"{}\"", lock.reason));
        }
        field(&mut out, "lock", &text);
    }
    let (state, summary) = classify(status, limits);
    field(&mut out, "check", &format!("{} - {}", state.label(), summary.replace('\n', " ")));
    out
}

/// `label` padded to the width of the longest label, then `value`.
fn field(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "{label:<12} {value}");
}

fn pool_line(status: &NodeStatus, local: &PeerStatus, now: i64) -> String {
    let state = pool_name(local.pool_state);
    let Some(changed) = time(status.pool_changed_unix).filter(|_| status.pool_who != "default") else {
        return format!("{state} (default: never set by an operator)");
    };
    let mut line = format!("{state}, set by {} at {}{}", status.pool_who, changed.rfc3339, ago(now, changed.unix));
    if !status.pool_reason.is_empty() {
        line.push_str(&format!(": \"{}\"", status.pool_reason));
    }
    line
}

fn tree_table(trees: &[TreeStatus], now: i64) -> String {
    let header = ["TREE", "STATE", "ROOT", "FILES", "BYTES", "FREE SPACE", "FREE INODES", "WATCH", "LAST SYNC"];
    let rows = trees
        .iter()
        .map(|t| {
            let mut state = readiness_name(t.readiness);
            if t.unreadable_files > 0 {
                state.push_str(&format!(" ({} unreadable)", thousands(t.unreadable_files)));
            }
            vec![
                t.name.clone(),
                state,
                hash_short(&t.root_hash),
                thousands(t.files),
                human_bytes(t.bytes),
                with_percent(human_bytes(t.fs_free_bytes), t.fs_free_bytes, t.fs_total_bytes),
                with_percent(thousands(t.fs_free_inodes), t.fs_free_inodes, t.fs_total_inodes),
                watch_name(t.watch_state),
                last_sync_cell(t, now),
            ]
        })
        .collect();
    columns(&header, rows, &[3, 4, 5, 6])
}

fn with_percent(shown: String, free: u64, total: u64) -> String {
    match percent(free, total) {
        Some(pct) => format!("{shown} {pct:.1}%"),
        None => shown,
    }
}

fn last_sync_cell(tree: &TreeStatus, now: i64) -> String {
    let Some(last) = &tree.last_sync else { return "never".to_owned() };
    let mut cell = last.result.split(": ").next().unwrap_or_default().to_owned();
    if !last.source_peer.is_empty() {
        cell.push_str(&format!(" from {}", last.source_peer));
    }
    if let Some(at) = time(last.unix) {
        cell.push_str(&format!(", {}{}", at.rfc3339, ago(now, at.unix)));
    }
    cell
}

fn peer_table(peers: &[PeerView], local: &PeerStatus) -> String {
    let header = ["PEER", "ADDRESS", "TREE", "REACHABLE", "POOL", "ROOT", "IN SYNC"];
    let mut rows = Vec::new();
    for peer in peers {
        let remote = peer.status.as_ref().filter(|_| peer.reachable);
        let Some(remote) = remote else {
            let error = if peer.error.is_empty() { "no answer" } else { peer.error.as_str() };
            rows.push(vec![peer.name.clone(), peer.address.clone(), "-".into(), format!("no: {error}")]);
            continue;
        };
        for ours in &local.trees {
            let theirs = remote.trees.iter().find(|t| t.name == ours.name);
            let root = match theirs {
                Some(t) if t.readiness != proto::v1::Readiness::Ready as i32 => {
                    format!("{} ({})", hash_short(&t.root_hash), readiness_name(t.readiness))
                }
                Some(t) => hash_short(&t.root_hash),
                None => "(no such tree)".to_owned(),
            };
            let agree = if in_sync(peer, ours, theirs) { "yes" } else { "no" };
            rows.push(vec![
                peer.name.clone(),
                peer.address.clone(),
                ours.name.clone(),
                format!("yes, {} ms", peer.rtt_millis),
                pool_name(remote.pool_state),
                root,
                agree.to_owned(),
            ]);
        }
    }
    columns(&header, rows, &[])
}

pub(crate) fn replication_line(replication: Option<&ReplicationState>, now: i64) -> String {
    let Some(r) = replication else { return "not reported".to_owned() };
    let phase = ReplicationPhase::try_from(r.phase).unwrap_or(ReplicationPhase::Unspecified);
    let mut line = match phase {
        ReplicationPhase::Disabled => return "disabled (no --replicate-from)".to_owned(),
        ReplicationPhase::Following => format!("following {}", r.source),
        ReplicationPhase::Paused => format!("paused (from {}) by {}", r.source, r.changed_by),
        ReplicationPhase::Stopped => {
            format!(
                "STOPPED (from {}) by guard {}",
                r.source,
                if r.stopped_guard.is_empty() { "?" } else { &r.stopped_guard }
            )
        }
        ReplicationPhase::Retrying => format!("retrying {}", r.source),
        ReplicationPhase::Unspecified => format!("{} (from {})", phase_name(r.phase), r.source),
    };
    if !r.tree.is_empty() {
        line.push_str(&format!(", tree {}", r.tree));
    }
    if !r.last_error.is_empty() {
        line.push_str(&format!(": {}", r.last_error));
    }
    if let Some(level) = time(r.last_success_unix) {
        line.push_str(&format!("; last level {}{}", level.rfc3339, ago(now, level.unix)));
    }
    line
}

/// ` (5m ago)`, on the daemon's clock; empty when either time is unknown.
pub fn ago(now: i64, then: i64) -> String {
    if now <= 0 || then <= 0 {
        return String::new();
    }
    let seconds = now.saturating_sub(then).max(0);
    let text = match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    format!(" ({text} ago)")
}

/// Aligns `rows` under `header`, two spaces apart; columns listed in
/// `right_aligned` (numbers) are right-aligned. Rows may be shorter than the
/// header (an unreachable peer has no pool or root); the last cell of a row is
/// never padded.
pub fn columns(header: &[&str], rows: Vec<Vec<String>>, right_aligned: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            // A short row's last cell may overflow freely: it does not set a width.
            if i + 1 < row.len() || row.len() == header.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let header_row: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let last = i + 1 == row.len();
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            if right_aligned.contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if !last {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use proto::v1::{LastSync, LockInfo, PoolState, ReplicationPhase, ReplicationState, WatchState};

    use super::super::check::tests::{node, peer, tree, unreachable};
    use super::*;

    #[test]
    fn renders_a_serving_master_with_peers_replication_and_a_lock() {
        let mut staging = tree("staging", 0xab);
        staging.last_sync = Some(LastSync {
            id: "20240501-100000-staging".into(),
            source_peer: "deploy2002".into(),
            unix: 1_714_557_300,
            result: "applied".into(),
            plan_id: "0123456789abcdef".into(),
            guard: String::new(),
        });
        let mut patches = tree("patches", 0x11);
        patches.files = 12;
        patches.bytes = 40_960;
        patches.watch_state = WatchState::Polling as i32;
        patches.watch_detail = "inotify watch limit reached".into();
        let ours = vec![patches, staging];
        let peers = vec![
            peer("deploy2002", PoolState::Serve, vec![tree("staging", 0xab), tree("patches", 0x22)], &ours),
            unreachable("deploy2003", "connection refused"),
        ];
        let mut status = node(PoolState::Serve, ours, peers);
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
            reason: "backport".into(),
            since_unix: 1_714_557_540,
        });

        let expected = "\
node         deploy1002 (stagingd 0.1.0, started 2024-05-01T05:06:40Z)
pool         serve, set by alice at 2024-05-01T07:53:20Z (2h ago): \"after reimage, T123456\"
listen       127.0.0.1:7420

TREE     STATE  ROOT            FILES     BYTES       FREE SPACE      FREE INODES  WATCH     LAST SYNC
patches  ready  111111111111       12  40.0 KiB  100.0 GiB 50.0%  5,000,000 50.0%  polling   never
staging  ready  abababababab  184,935   8.2 GiB  100.0 GiB 50.0%  5,000,000 50.0%  watching  applied from deploy2002, 2024-05-01T09:55:00Z (5m ago)
  patches: watch polling: inotify watch limit reached

PEER        ADDRESS                             TREE     REACHABLE  POOL   ROOT          IN SYNC
deploy2002  http://deploy2002.eqiad.wmnet:7420  patches  yes, 3 ms  serve  222222222222  no
deploy2002  http://deploy2002.eqiad.wmnet:7420  staging  yes, 3 ms  serve  abababababab  yes
deploy2003  http://deploy2003.eqiad.wmnet:7420  -        no: connection refused

replication  following deploy2002; last level 2024-05-01T09:59:48Z (12s ago)
lock         staging: sync by bob since 2024-05-01T09:59:00Z (60s ago): \"backport\"
check        CRITICAL - patches: root 111111111111 differs from serving peer deploy2002 (222222222222); patches: watch degraded to polling (inotify watch limit reached); peer deploy2003 unreachable: connection refused
";
        let actual = render(&status, Thresholds::default());
        assert_eq!(actual, expected, "\n--- actual ---\n{actual}");
    }

    #[test]
    fn renders_a_fresh_receive_only_node_without_peers() {
        let mut staging = tree("staging", 0);
        staging.root_hash.clear();
        staging.readiness = proto::v1::Readiness::Scanning as i32;
        staging.files = 0;
        staging.bytes = 0;
        let mut status = node(PoolState::ReceiveOnly, vec![staging], Vec::new());
        status.pool_who = "default".into();
        status.pool_reason.clear();
        let text = render(&status, Thresholds::default());
        assert!(text.contains("pool         receive-only (default: never set by an operator)\n"), "{text}");
        assert!(text.contains("staging  scanning  -"), "{text}");
        assert!(text.contains("no peers configured\n"), "{text}");
        assert!(text.contains("replication  disabled (no --replicate-from)\n"), "{text}");
        assert!(text.contains("locks        none\n"), "{text}");
        assert!(text.ends_with("check        WARNING - staging: scanning, manifest not ready\n"), "{text}");
    }
}
