//! Health classification for `stagingctl status --check`: one pure function from a
//! `NodeStatus` to a monitoring-plugin state and a one-line reason, plus the
//! plugin line and its perfdata.
//!
//! Rules, worst first (a status gets the worst state any rule gives it):
//!
//! - **CRITICAL** when this node is `serve` and a tree's root differs from the
//!   same tree's root on a reachable peer that is also `serve` (both roots
//!   present, neither side `scanning`): two masters serving different trees is
//!   the mixed-version incident.
//! - **CRITICAL** when replication is stopped by a guard (`phase` STOPPED or
//!   `stopped_guard` set): it names the guard. Replication never confirms a
//!   plan on anyone's behalf, so it stays stopped until an operator acts.
//! - **CRITICAL** when free bytes or free inodes of a tree's filesystem are
//!   under `--free-critical` percent (default 5), WARNING under
//!   `--free-warning` (default 10); skipped when the daemon reports no total.
//! - **WARNING** when a configured peer is unreachable.
//! - **WARNING** when a tree is not usable as a source: `scanning`,
//!   `incomplete` (unreadable files) or an unreported readiness. `applying` is
//!   a sync in progress and is fine.
//! - **WARNING** when a tree's watcher is degraded (`polling`: changes show
//!   late), `failed` (the manifest goes stale) or unreported. `disabled` is a
//!   configuration choice and is fine.
//! - **WARNING** when replication is retrying after a transient failure.
//! - **UNKNOWN** when the daemon sent no node status at all; `run` also prints
//!   UNKNOWN when the daemon cannot be reached.
//!
//! It deliberately knows nothing of sockets or printing: `super::run` does that.

use proto::v1::{NodeStatus, PoolState, Readiness, ReplicationPhase, TreeStatus, WatchState};

use super::report::{hash_short, percent};
use crate::output::{human_bytes, thousands};

/// Free space or inodes under this percentage of the filesystem is CRITICAL by default.
pub const CRITICAL_FREE_PERCENT: f64 = 5.0;
/// Free space or inodes under this percentage of the filesystem is WARNING by default.
pub const WARNING_FREE_PERCENT: f64 = 10.0;

/// The free-space and free-inode limits, in percent of the filesystem:
/// under `critical` is CRITICAL, under `warning` WARNING.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub warning: f64,
    pub critical: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { warning: WARNING_FREE_PERCENT, critical: CRITICAL_FREE_PERCENT }
    }
}

impl Thresholds {
    /// The limits, or why they make no sense together: a critical limit above
    /// the warning one would never warn before it is critical.
    pub fn new(warning: f64, critical: f64) -> Result<Thresholds, String> {
        if critical > warning {
            return Err(format!(
                "--free-critical {critical} is above --free-warning {warning}; \
                 give a critical limit at or under the warning one (defaults: {WARNING_FREE_PERCENT} and {CRITICAL_FREE_PERCENT})"
            ));
        }
        Ok(Thresholds { warning, critical })
    }
}

/// A monitoring-plugin state, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckState {
    /// Exit 0.
    Ok,
    /// Exit 1.
    Warning,
    /// Exit 3: the state cannot be determined.
    Unknown,
    /// Exit 2.
    Critical,
}

impl CheckState {
    /// The plugin's word for the state.
    pub fn label(self) -> &'static str {
        match self {
            CheckState::Ok => "OK",
            CheckState::Warning => "WARNING",
            CheckState::Critical => "CRITICAL",
            CheckState::Unknown => "UNKNOWN",
        }
    }

    /// The monitoring-plugin exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            CheckState::Ok => 0,
            CheckState::Warning => 1,
            CheckState::Critical => 2,
            CheckState::Unknown => 3,
        }
    }
}

/// One finding: its state and what to say about it.
#[derive(Debug)]
struct Problem {
    state: CheckState,
    text: String,
}

/// Classifies a status: the worst state any rule gives (see the module docs)
/// and a one-line summary naming the worst problem first (then the others,
/// `; `-separated), or a short all-clear.
pub fn classify(status: &NodeStatus, limits: Thresholds) -> (CheckState, String) {
    let Some(local) = &status.local else {
        return (CheckState::Unknown, "stagingd answered without a node status".to_owned());
    };
    let mut problems = Vec::new();
    let serving = local.pool_state == PoolState::Serve as i32;

    for tree in &local.trees {
        check_drift(status, tree, serving, &mut problems);
        check_capacity(tree, limits, &mut problems);
        check_readiness(tree, &mut problems);
        check_watch(tree, &mut problems);
    }
    for peer in &status.peers {
        if !peer.reachable {
            let why = if peer.error.is_empty() { "no answer" } else { peer.error.as_str() };
            problems
                .push(Problem { state: CheckState::Warning, text: format!("peer {} unreachable: {why}", peer.name) });
        }
    }
    check_replication(status, &mut problems);

    // A stable sort keeps rule order among problems of the same state, so the
    // summary is deterministic.
    problems.sort_by_key(|p| std::cmp::Reverse(p.state));
    match problems.first() {
        None => (CheckState::Ok, all_clear(status)),
        Some(worst) => {
            let summary = problems.iter().map(|p| p.text.as_str()).collect::<Vec<_>>().join("; ");
            (worst.state, summary)
        }
    }
}

fn check_drift(status: &NodeStatus, tree: &TreeStatus, serving: bool, problems: &mut Vec<Problem>) {
    if !serving || tree.root_hash.is_empty() || tree.readiness == Readiness::Scanning as i32 {
        return;
    }
    for peer in status.peers.iter().filter(|p| p.reachable) {
        let Some(remote) = &peer.status else { continue };
        if remote.pool_state != PoolState::Serve as i32 {
            continue;
        }
        let Some(theirs) = remote.trees.iter().find(|t| t.name == tree.name) else { continue };
        if theirs.root_hash.is_empty() || theirs.readiness == Readiness::Scanning as i32 {
            continue;
        }
        if theirs.root_hash != tree.root_hash {
            problems.push(Problem {
                state: CheckState::Critical,
                text: format!(
                    "{}: root {} differs from serving peer {} ({})",
                    tree.name,
                    hash_short(&tree.root_hash),
                    peer.name,
                    hash_short(&theirs.root_hash)
                ),
            });
        }
    }
}

fn check_capacity(tree: &TreeStatus, limits: Thresholds, problems: &mut Vec<Problem>) {
    let measures = [
        ("free space", tree.fs_free_bytes, tree.fs_total_bytes, human_bytes(tree.fs_free_bytes)),
        ("free inodes", tree.fs_free_inodes, tree.fs_total_inodes, thousands(tree.fs_free_inodes)),
    ];
    for (what, free, total, shown) in measures {
        let Some(pct) = percent(free, total) else { continue };
        let (state, limit) = if pct < limits.critical {
            (CheckState::Critical, limits.critical)
        } else if pct < limits.warning {
            (CheckState::Warning, limits.warning)
        } else {
            continue;
        };
        problems.push(Problem { state, text: format!("{}: {what} {shown} ({pct:.1}%), under {limit}%", tree.name) });
    }
}

fn check_readiness(tree: &TreeStatus, problems: &mut Vec<Problem>) {
    let text = match Readiness::try_from(tree.readiness) {
        Ok(Readiness::Ready | Readiness::Applying) => return,
        Ok(Readiness::Scanning) => format!("{}: scanning, manifest not ready", tree.name),
        Ok(Readiness::Incomplete) => {
            format!("{}: incomplete scan, {} unreadable files", tree.name, thousands(tree.unreadable_files))
        }
        Ok(Readiness::Unspecified) | Err(_) => format!("{}: readiness not reported", tree.name),
    };
    problems.push(Problem { state: CheckState::Warning, text });
}

fn check_watch(tree: &TreeStatus, problems: &mut Vec<Problem>) {
    let what = match WatchState::try_from(tree.watch_state) {
        Ok(WatchState::Watching | WatchState::Disabled) => return,
        Ok(WatchState::Polling) => "watch degraded to polling",
        Ok(WatchState::Failed) => "watch failed, manifest going stale",
        Ok(WatchState::Unspecified) | Err(_) => "watch state not reported",
    };
    let text = if tree.watch_detail.is_empty() {
        format!("{}: {what}", tree.name)
    } else {
        format!("{}: {what} ({})", tree.name, tree.watch_detail)
    };
    problems.push(Problem { state: CheckState::Warning, text });
}

fn check_replication(status: &NodeStatus, problems: &mut Vec<Problem>) {
    let Some(replication) = &status.replication else { return };
    let source = if replication.source.is_empty() { "its source" } else { replication.source.as_str() };
    let tree = if replication.tree.is_empty() { String::new() } else { format!(" (tree {})", replication.tree) };
    let error = if replication.last_error.is_empty() { String::new() } else { format!(": {}", replication.last_error) };
    let stopped = replication.phase == ReplicationPhase::Stopped as i32;
    if stopped || !replication.stopped_guard.is_empty() {
        let guard = if replication.stopped_guard.is_empty() { "unknown" } else { replication.stopped_guard.as_str() };
        problems.push(Problem {
            state: CheckState::Critical,
            text: format!("replication from {source} stopped by guard {guard}{tree}{error}"),
        });
    } else if replication.phase == ReplicationPhase::Retrying as i32 {
        problems.push(Problem {
            state: CheckState::Warning,
            text: format!("replication from {source} retrying{tree}{error}"),
        });
    }
}

/// The OK summary: node, pool state, each tree's readiness and short root, peers.
fn all_clear(status: &NodeStatus) -> String {
    let local = status.local.as_ref().expect("classify checked local");
    let trees = if local.trees.is_empty() {
        "no trees".to_owned()
    } else {
        local
            .trees
            .iter()
            .map(|t| format!("{} {} {}", t.name, super::report::readiness_name(t.readiness), hash_short(&t.root_hash)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let peers = if status.peers.is_empty() {
        "no peers configured".to_owned()
    } else {
        format!("{}/{} peers reachable", status.peers.iter().filter(|p| p.reachable).count(), status.peers.len())
    };
    format!("{} {}: {trees}; {peers}", local.node, super::report::pool_name(local.pool_state))
}

/// Perfdata for every tree: files, bytes, free bytes and free inodes, the free
/// figures with WARNING/CRITICAL thresholds (`N:` = alert below N) and the
/// filesystem's total as max.
pub fn perfdata(status: &NodeStatus, limits: Thresholds) -> String {
    let Some(local) = &status.local else { return String::new() };
    let mut items = Vec::new();
    for tree in &local.trees {
        let label = perf_label(&tree.name);
        items.push(format!("{label}_files={};;;0", tree.files));
        items.push(format!("{label}_bytes={}B;;;0", tree.bytes));
        items.push(free_perf(&format!("{label}_free_bytes"), "B", tree.fs_free_bytes, tree.fs_total_bytes, limits));
        items.push(free_perf(&format!("{label}_free_inodes"), "", tree.fs_free_inodes, tree.fs_total_inodes, limits));
    }
    items.join(" ")
}

fn free_perf(label: &str, unit: &str, free: u64, total: u64, limits: Thresholds) -> String {
    if total == 0 {
        return format!("{label}={free}{unit};;;0");
    }
    let at = |pct: f64| (total as f64 * pct / 100.0).ceil() as u64;
    format!("{label}={free}{unit};{}:;{}:;0;{total}", at(limits.warning), at(limits.critical))
}

/// Perfdata labels may not contain `'`, `=` or spaces; tree names rarely do,
/// but a label that breaks the line would hide every figure after it.
fn perf_label(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

/// The one monitoring-plugin line: `STAGINGD <STATE> - <summary> | <perfdata>`.
/// The summary is flattened to one line and may not contain `|`, which starts perfdata.
pub fn plugin_line(state: CheckState, summary: &str, perfdata: &str) -> String {
    let summary: String = summary
        .chars()
        .map(|c| match c {
            '|' => '/',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect();
    if perfdata.is_empty() {
        format!("STAGINGD {} - {summary}", state.label())
    } else {
        format!("STAGINGD {} - {summary} | {perfdata}", state.label())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proto::v1::{PeerStatus, PeerView, ReplicationState, TreeAgreement};

    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    /// A healthy, ready, watched tree whose root is 32 × `root_byte`, on a
    /// filesystem half full.
    pub(crate) fn tree(name: &str, root_byte: u8) -> TreeStatus {
        TreeStatus {
            name: name.to_owned(),
            readiness: Readiness::Ready as i32,
            root_hash: vec![root_byte; 32],
            files: 184_935,
            dirs: 12_000,
            symlinks: 150,
            bytes: 8_800_000_000,
            fs_free_bytes: 100 * GIB,
            fs_free_inodes: 5_000_000,
            fs_total_bytes: 200 * GIB,
            fs_total_inodes: 10_000_000,
            manifest_updated_unix: 1_714_557_000,
            root_changed_unix: 1_714_550_000,
            last_sync: None,
            unreadable_files: 0,
            watch_state: WatchState::Watching as i32,
            watch_detail: String::new(),
            last_scan_unix: 1_714_540_000,
            last_scan_millis: 412,
        }
    }

    pub(crate) fn peer_status(node: &str, pool: PoolState, trees: Vec<TreeStatus>) -> PeerStatus {
        PeerStatus {
            node: node.to_owned(),
            pool_state: pool as i32,
            trees,
            now_unix: 1_714_557_600,
            version: "0.1.0".into(),
            replicating_from: String::new(),
        }
    }

    /// A reachable peer; agreement computed from the roots as the daemon would.
    pub(crate) fn peer(name: &str, pool: PoolState, trees: Vec<TreeStatus>, ours: &[TreeStatus]) -> PeerView {
        let agreements = ours
            .iter()
            .filter_map(|o| {
                let theirs = trees.iter().find(|t| t.name == o.name)?;
                Some(TreeAgreement {
                    tree: o.name.clone(),
                    in_sync: !o.root_hash.is_empty() && o.root_hash == theirs.root_hash,
                })
            })
            .collect();
        PeerView {
            name: name.to_owned(),
            address: format!("http://{name}.eqiad.wmnet:7420"),
            reachable: true,
            error: String::new(),
            status: Some(peer_status(name, pool, trees)),
            trees: agreements,
            rtt_millis: 3,
        }
    }

    pub(crate) fn unreachable(name: &str, error: &str) -> PeerView {
        PeerView {
            name: name.to_owned(),
            address: format!("http://{name}.eqiad.wmnet:7420"),
            reachable: false,
            error: error.to_owned(),
            status: None,
            trees: Vec::new(),
            rtt_millis: 0,
        }
    }

    /// A serving node `deploy1002` with `trees` and `peers`, replication disabled.
    pub(crate) fn node(pool: PoolState, trees: Vec<TreeStatus>, peers: Vec<PeerView>) -> NodeStatus {
        NodeStatus {
            local: Some(peer_status("deploy1002", pool, trees)),
            pool_reason: "after reimage, T123456".into(),
            pool_who: "alice".into(),
            pool_changed_unix: 1_714_550_000,
            admin_socket: "/run/stagingd/admin.sock".into(),
            listen_address: "127.0.0.1:7420".into(),
            replication: Some(ReplicationState {
                phase: ReplicationPhase::Disabled as i32,
                ..ReplicationState::default()
            }),
            peers,
            locks: Vec::new(),
            started_unix: 1_714_540_000,
        }
    }

    fn two_serving_masters_in_sync() -> NodeStatus {
        let ours = vec![tree("staging", 0xab)];
        let peers = vec![peer("deploy2002", PoolState::Serve, vec![tree("staging", 0xab)], &ours)];
        node(PoolState::Serve, ours, peers)
    }

    #[test]
    fn ok_when_serving_masters_agree() {
        let (state, summary) = classify(&two_serving_masters_in_sync(), Thresholds::default());
        assert_eq!(state, CheckState::Ok);
        assert_eq!(summary, "deploy1002 serve: staging ready abababababab; 1/1 peers reachable");
    }

    #[test]
    fn critical_when_a_serving_peer_has_another_root() {
        let ours = vec![tree("staging", 0xab), tree("patches", 0x11)];
        let peers =
            vec![peer("deploy2002", PoolState::Serve, vec![tree("staging", 0xcd), tree("patches", 0x11)], &ours)];
        let (state, summary) = classify(&node(PoolState::Serve, ours, peers), Thresholds::default());
        assert_eq!(state, CheckState::Critical);
        assert_eq!(summary, "staging: root abababababab differs from serving peer deploy2002 (cdcdcdcdcdcd)");
    }

    #[test]
    fn drift_matters_only_between_two_serving_nodes() {
        // A receive-only peer that differs is catching up, not drifting.
        let ours = vec![tree("staging", 0xab)];
        let peers = vec![peer("deploy2002", PoolState::ReceiveOnly, vec![tree("staging", 0xcd)], &ours)];
        assert_eq!(
            classify(&node(PoolState::Serve, ours.clone(), peers.clone()), Thresholds::default()).0,
            CheckState::Ok
        );
        // And a receive-only node that differs from a serving peer is waiting for a sync.
        let peers = vec![peer("deploy2002", PoolState::Serve, vec![tree("staging", 0xcd)], &ours)];
        assert_eq!(classify(&node(PoolState::ReceiveOnly, ours, peers), Thresholds::default()).0, CheckState::Ok);
    }

    #[test]
    fn critical_when_replication_is_stopped_by_a_guard() {
        let mut status = two_serving_masters_in_sync();
        status.replication = Some(ReplicationState {
            phase: ReplicationPhase::Stopped as i32,
            source: "deploy2002".into(),
            stopped_guard: "delete-threshold".into(),
            last_error: "plan deletes 184935 of 184935 files".into(),
            tree: "staging".into(),
            ..ReplicationState::default()
        });
        let (state, summary) = classify(&status, Thresholds::default());
        assert_eq!(state, CheckState::Critical);
        assert_eq!(
            summary,
            "replication from deploy2002 stopped by guard delete-threshold (tree staging): plan deletes 184935 of 184935 files"
        );
    }

    #[test]
    fn critical_under_five_percent_free_inodes_warning_under_ten_percent_free_bytes() {
        let mut staging = tree("staging", 0xab);
        staging.fs_free_inodes = 400_000; // 4 %
        staging.fs_free_bytes = 16 * GIB; // 8 %
        let (state, summary) = classify(&node(PoolState::Serve, vec![staging], Vec::new()), Thresholds::default());
        assert_eq!(state, CheckState::Critical);
        assert_eq!(
            summary,
            "staging: free inodes 400,000 (4.0%), under 5%; staging: free space 16.0 GiB (8.0%), under 10%"
        );
    }

    #[test]
    fn critical_under_five_percent_free_bytes() {
        let mut staging = tree("staging", 0xab);
        staging.fs_free_bytes = 2 * GIB; // 1 %
        assert_eq!(
            classify(&node(PoolState::Serve, vec![staging], Vec::new()), Thresholds::default()).0,
            CheckState::Critical
        );
    }

    #[test]
    fn the_limits_are_the_operators() {
        // 50 % free (the test tree's filesystem is half full).
        let status = node(PoolState::Serve, vec![tree("staging", 0xab)], Vec::new());
        let strict = Thresholds::new(60.0, 20.0).unwrap();
        let (state, summary) = classify(&status, strict);
        assert_eq!(state, CheckState::Warning);
        assert!(summary.contains("free space 100.0 GiB (50.0%), under 60%"), "{summary}");
        assert_eq!(classify(&status, Thresholds::new(60.0, 55.0).unwrap()).0, CheckState::Critical);
        // Zero turns the limits off, and the perfdata carries the limits used.
        let mut full = tree("staging", 0xab);
        full.fs_free_bytes = 0;
        let full = node(PoolState::Serve, vec![full], Vec::new());
        let off = Thresholds::new(0.0, 0.0).unwrap();
        assert_eq!(classify(&full, off).0, CheckState::Ok);
        assert!(perfdata(&status, strict).contains("staging_free_inodes=5000000;6000000:;2000000:;0;10000000"));
        // A critical limit above the warning one is refused, naming both flags.
        let refused = Thresholds::new(5.0, 10.0).unwrap_err();
        assert!(refused.contains("--free-critical 10") && refused.contains("--free-warning 5"), "{refused}");
    }

    #[test]
    fn unknown_totals_are_not_judged() {
        let mut staging = tree("staging", 0xab);
        staging.fs_total_bytes = 0;
        staging.fs_free_bytes = 0;
        assert_eq!(
            classify(&node(PoolState::Serve, vec![staging], Vec::new()), Thresholds::default()).0,
            CheckState::Ok
        );
    }

    #[test]
    fn warning_when_a_peer_is_unreachable() {
        let mut status = two_serving_masters_in_sync();
        status.peers.push(unreachable("deploy2003", "connection refused"));
        let (state, summary) = classify(&status, Thresholds::default());
        assert_eq!(state, CheckState::Warning);
        assert_eq!(summary, "peer deploy2003 unreachable: connection refused");
    }

    #[test]
    fn warning_when_a_tree_is_not_ready() {
        let mut scanning = tree("staging", 0xab);
        scanning.readiness = Readiness::Scanning as i32;
        let mut incomplete = tree("patches", 0x11);
        incomplete.readiness = Readiness::Incomplete as i32;
        incomplete.unreadable_files = 3;
        let (state, summary) =
            classify(&node(PoolState::Serve, vec![incomplete, scanning], Vec::new()), Thresholds::default());
        assert_eq!(state, CheckState::Warning);
        assert_eq!(summary, "patches: incomplete scan, 3 unreadable files; staging: scanning, manifest not ready");
    }

    #[test]
    fn applying_is_not_a_problem() {
        let mut applying = tree("staging", 0xab);
        applying.readiness = Readiness::Applying as i32;
        assert_eq!(
            classify(&node(PoolState::Serve, vec![applying], Vec::new()), Thresholds::default()).0,
            CheckState::Ok
        );
    }

    #[test]
    fn warning_when_watching_is_degraded_or_failed() {
        let mut polling = tree("staging", 0xab);
        polling.watch_state = WatchState::Polling as i32;
        polling.watch_detail = "inotify watch limit reached".into();
        let (state, summary) = classify(&node(PoolState::Serve, vec![polling], Vec::new()), Thresholds::default());
        assert_eq!(state, CheckState::Warning);
        assert_eq!(summary, "staging: watch degraded to polling (inotify watch limit reached)");

        let mut failed = tree("staging", 0xab);
        failed.watch_state = WatchState::Failed as i32;
        assert_eq!(
            classify(&node(PoolState::Serve, vec![failed], Vec::new()), Thresholds::default()).0,
            CheckState::Warning
        );

        let mut disabled = tree("staging", 0xab);
        disabled.watch_state = WatchState::Disabled as i32;
        assert_eq!(
            classify(&node(PoolState::Serve, vec![disabled], Vec::new()), Thresholds::default()).0,
            CheckState::Ok
        );
    }

    #[test]
    fn warning_when_replication_retries() {
        let mut status = two_serving_masters_in_sync();
        status.replication = Some(ReplicationState {
            phase: ReplicationPhase::Retrying as i32,
            source: "deploy2002".into(),
            last_error: "deploy2002 unreachable".into(),
            ..ReplicationState::default()
        });
        let (state, summary) = classify(&status, Thresholds::default());
        assert_eq!(state, CheckState::Warning);
        assert_eq!(summary, "replication from deploy2002 retrying: deploy2002 unreachable");
    }

    #[test]
    fn worst_problem_comes_first() {
        let ours = vec![tree("staging", 0xab)];
        let mut status = node(
            PoolState::Serve,
            ours.clone(),
            vec![
                unreachable("deploy2003", "timeout"),
                peer("deploy2002", PoolState::Serve, vec![tree("staging", 0xcd)], &ours),
            ],
        );
        status.local.as_mut().unwrap().trees[0].watch_state = WatchState::Polling as i32;
        let (state, summary) = classify(&status, Thresholds::default());
        assert_eq!(state, CheckState::Critical);
        assert_eq!(
            summary,
            "staging: root abababababab differs from serving peer deploy2002 (cdcdcdcdcdcd); \
             staging: watch degraded to polling; peer deploy2003 unreachable: timeout"
        );
    }

    #[test]
    fn unknown_without_a_node_status() {
        let status = NodeStatus::default();
        assert_eq!(classify(&status, Thresholds::default()).0, CheckState::Unknown);
    }

    #[test]
    fn plugin_line_with_perfdata() {
        let status = two_serving_masters_in_sync();
        let (state, summary) = classify(&status, Thresholds::default());
        assert_eq!(
            plugin_line(state, &summary, &perfdata(&status, Thresholds::default())),
            "STAGINGD OK - deploy1002 serve: staging ready abababababab; 1/1 peers reachable | \
             staging_files=184935;;;0 staging_bytes=8800000000B;;;0 \
             staging_free_bytes=107374182400B;21474836480:;10737418240:;0;214748364800 \
             staging_free_inodes=5000000;1000000:;500000:;0;10000000"
        );
        assert_eq!(plugin_line(CheckState::Unknown, "a | b\nc", ""), "STAGINGD UNKNOWN - a / b c");
    }
}
