//! Automatic replication (`--replicate-from PEER`): this node follows one serving
//! peer. This module owns the replication state shown in status (phase, stop,
//! last error, last success), its persisted pause (`state_dir/replication.json`,
//! written with `write_atomic`, with who/when/why), and the task that follows the
//! source: it subscribes to the source's `WatchRoot` (reconnecting with a backoff
//! of 0.5 s doubling to 30 s), refuses to follow a source that follows this node
//! back, and runs the ordinary guarded sync (`operations::run`, who
//! `replication`) for every shared tree whose root differs from the source's,
//! once after each (re)connection and on every root update. It never confirms a
//! plan nor allows a source that is behind: a guard's refusal stops replication
//! (STOPPED, CRITICAL in `status --check`) until an operator applies a sync from
//! the source by hand or resumes it. Transient refusals (`busy`,
//! `source-not-ready`) wait for the next update; an unreachable source or a
//! failed sync is RETRYING with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use manifest::fsutil::write_atomic;
use proto::v1 as pb;
use proto::v1::peer_client::PeerClient;
use serde::{Deserialize, Serialize};
use sync::guards::names;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::node::{Node, describe_status};
use crate::operations::{self, Operation};
use crate::tree::Readiness;
use crate::unix_now;

/// The `who` of replication's syncs, in history, locks and logs.
pub const WHO: &str = "replication";

/// The name shown as `stopped_guard` when the source replicates from us. It is
/// not a sync guard: no sync is attempted.
pub const LOOP: &str = "replication-loop";

/// First delay before reconnecting to a source that went away.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest delay between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The persisted part: whether an operator paused replication, and who/when/why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRecord {
    pub paused: bool,
    pub who: String,
    pub reason: String,
    pub changed_unix: i64,
}

impl PauseRecord {
    fn initial() -> Self {
        Self { paused: false, who: String::new(), reason: String::new(), changed_unix: 0 }
    }
}

/// Where the pause record lives.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("replication.json")
}

/// Loads the pause record. An unreadable record pauses replication — loudly —
/// rather than following a source an operator may have paused on purpose.
pub fn load(state_dir: &Path) -> (PauseRecord, Option<String>) {
    let file = path(state_dir);
    let why = match std::fs::read(&file) {
        Ok(bytes) => match serde_json::from_slice::<PauseRecord>(&bytes) {
            Ok(record) => return (record, None),
            Err(e) => format!("replication state file {} is corrupt ({e})", file.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (PauseRecord::initial(), None),
        Err(e) => format!("cannot read {}: {e}", file.display()),
    };
    let record = PauseRecord {
        paused: true,
        who: "stagingd".to_owned(),
        reason: format!("{why}; started paused — resume with `stagingctl replication resume`"),
        changed_unix: unix_now(),
    };
    (record, Some(why))
}

/// Persists the pause record atomically.
pub fn save(state_dir: &Path, record: &PauseRecord) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(&path(state_dir), &bytes)
}

/// Where the task stands, apart from a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Following,
    Stopped,
    Retrying,
}

#[derive(Debug)]
struct Inner {
    pause: PauseRecord,
    phase: Phase,
    stopped_guard: String,
    last_error: String,
    tree: String,
    last_success_unix: i64,
}

/// Replication's shared state: read by status, changed by the task and by
/// `Admin.SetReplication`.
#[derive(Debug)]
pub struct Replication {
    /// The configured source, if any.
    pub source: Option<String>,
    state_dir: PathBuf,
    inner: Mutex<Inner>,
    /// Bumped on every operator pause or resume; the task wakes on it.
    operator: watch::Sender<u64>,
}

impl Replication {
    pub fn new(source: Option<String>, state_dir: &Path) -> Self {
        let (pause, problem) = load(state_dir);
        if let Some(problem) = problem {
            tracing::error!("REPLICATION STATE UNREADABLE: {problem}. Replication starts paused");
        }
        if source.is_some() && pause.paused {
            tracing::warn!(who = %pause.who, reason = %pause.reason, "replication is paused");
        }
        Self {
            source,
            state_dir: state_dir.to_owned(),
            inner: Mutex::new(Inner {
                pause,
                phase: Phase::Following,
                stopped_guard: String::new(),
                last_error: String::new(),
                tree: String::new(),
                last_success_unix: 0,
            }),
            operator: watch::channel(0).0,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state as status shows it.
    pub fn state(&self) -> pb::ReplicationState {
        let Some(source) = &self.source else {
            return pb::ReplicationState {
                phase: pb::ReplicationPhase::Disabled.into(),
                ..pb::ReplicationState::default()
            };
        };
        let inner = self.inner();
        let phase = match (inner.pause.paused, inner.phase) {
            (true, _) => pb::ReplicationPhase::Paused,
            (false, Phase::Following) => pb::ReplicationPhase::Following,
            (false, Phase::Stopped) => pb::ReplicationPhase::Stopped,
            (false, Phase::Retrying) => pb::ReplicationPhase::Retrying,
        };
        pb::ReplicationState {
            phase: phase.into(),
            source: source.clone(),
            paused: inner.pause.paused,
            changed_by: inner.pause.who.clone(),
            changed_unix: inner.pause.changed_unix,
            stopped_guard: inner.stopped_guard.clone(),
            last_error: inner.last_error.clone(),
            last_success_unix: inner.last_success_unix,
            tree: inner.tree.clone(),
        }
    }

    /// Pauses or resumes, persisted. Resuming also clears a stop.
    pub fn set_paused(&self, paused: bool, who: &str, reason: &str) -> std::io::Result<pb::ReplicationState> {
        {
            let mut inner = self.inner();
            let record =
                PauseRecord { paused, who: who.to_owned(), reason: reason.to_owned(), changed_unix: unix_now() };
            save(&self.state_dir, &record)?;
            inner.pause = record;
            if !paused && inner.phase == Phase::Stopped {
                tracing::info!(%who, guard = %inner.stopped_guard, tree = %inner.tree, "replication stop cleared by an operator");
                clear(&mut inner, Phase::Following);
            }
        }
        self.operator.send_modify(|n| *n += 1);
        Ok(self.state())
    }

    fn paused(&self) -> bool {
        self.inner().pause.paused
    }

    fn stopped(&self) -> bool {
        self.inner().phase == Phase::Stopped
    }

    fn following(&self) {
        clear(&mut self.inner(), Phase::Following);
    }

    fn retrying(&self, error: &str, tree: &str) {
        let mut inner = self.inner();
        inner.phase = Phase::Retrying;
        inner.stopped_guard.clear();
        inner.last_error = error.to_owned();
        inner.tree = tree.to_owned();
    }

    fn stop(&self, guard: &str, error: &str, tree: &str) {
        let mut inner = self.inner();
        inner.phase = Phase::Stopped;
        inner.stopped_guard = guard.to_owned();
        inner.last_error = error.to_owned();
        inner.tree = tree.to_owned();
    }

    /// Clears a stop because an operator applied a sync from the source.
    fn resume_after_manual_sync(&self) {
        let mut inner = self.inner();
        if inner.phase == Phase::Stopped {
            clear(&mut inner, Phase::Following);
        }
    }

    fn level(&self) {
        let mut inner = self.inner();
        inner.last_success_unix = unix_now();
    }
}

fn clear(inner: &mut Inner, phase: Phase) {
    inner.phase = phase;
    inner.stopped_guard.clear();
    inner.last_error.clear();
    inner.tree.clear();
}

/// Reconnection delays: 0.5 s doubling to 30 s, back to 0.5 s after a success.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_FIRST }
    }

    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// Why following the source ended.
#[derive(Debug)]
enum Ended {
    /// The daemon is shutting down.
    Shutdown,
    /// Paused or stopped: wait for an operator.
    Halted,
    /// The source went away or a sync failed: retry after a backoff.
    Lost { error: String, tree: String },
}

/// The replication task: runs until the node's shutdown token is cancelled.
/// Returns at once when no source is configured.
pub async fn run(node: Arc<Node>) {
    let Some(source) = node.replication.source.clone() else { return };
    let shutdown = node.shutdown.clone();
    let Some(client) = watch_client(&node, &source) else { return };
    // Our own trees first: a plan must start from a scanned tree.
    for tree in node.trees.values() {
        let mut root = tree.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            seen = root.wait_for(|info| info.readiness != Readiness::Scanning) => if seen.is_err() { return },
        }
    }
    tracing::info!(%source, paused = node.replication.paused(), "replication from {source} starts");
    let mut operator = node.replication.operator.subscribe();
    let mut backoff = Backoff::new();
    loop {
        operator.borrow_and_update();
        if node.replication.paused() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = operator.changed() => continue,
            }
        }
        if node.replication.stopped() {
            if wait_while_stopped(&node, &source, &mut operator).await {
                return;
            }
            continue;
        }
        match follow(&node, &source, client.clone(), &mut operator, &mut backoff).await {
            Ended::Shutdown => return,
            Ended::Halted => {}
            Ended::Lost { error, tree } => {
                let delay = backoff.next();
                tracing::warn!(%source, tree = %tree, retry_in_ms = delay.as_millis() as u64, "replication retrying: {error}");
                node.replication.retrying(&error, &tree);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = operator.changed() => {}
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A client of its own for the long-lived `WatchRoot` stream: no per-call
/// timeout (which would cut the stream), HTTP/2 keepalives instead, so that a
/// source that vanishes without closing the connection is noticed.
fn watch_client(node: &Node, source: &str) -> Option<PeerClient<Channel>> {
    let peer = node.config.peers.iter().find(|p| p.name == source)?;
    match crate::tls::peer_endpoint(&node.config, peer) {
        Ok(endpoint) => Some(crate::tls::peer_client(
            endpoint
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(node.config.peer_timeout)
                .keep_alive_while_idle(true)
                .connect_lazy(),
        )),
        Err(e) => {
            tracing::error!(%source, "replication cannot start: {e:#}");
            None
        }
    }
}

/// Waits, while stopped, for an operator: a resume, or a sync from the source
/// applied by hand (seen as a new `last_sync` on one of our trees). Returns true
/// on shutdown.
async fn wait_while_stopped(node: &Arc<Node>, source: &str, operator: &mut watch::Receiver<u64>) -> bool {
    let at_stop: BTreeMap<String, Option<pb::LastSync>> =
        node.trees.values().map(|t| (t.name.clone(), t.status().last_sync)).collect();
    let mut roots: Vec<_> = node.trees.values().map(|t| t.subscribe()).collect();
    // The last sync is recorded just after the new root is installed, so a root
    // change may come a moment before it; the tick catches that.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let root_changed = async {
            if roots.is_empty() {
                std::future::pending::<()>().await;
            }
            let _ = futures::future::select_all(roots.iter_mut().map(|r| Box::pin(r.changed()))).await;
        };
        tokio::select! {
            _ = node.shutdown.cancelled() => return true,
            _ = operator.changed() => return false,
            _ = root_changed => {}
            _ = tick.tick() => {}
        }
        for tree in node.trees.values() {
            let Some(last) = tree.status().last_sync else { continue };
            if at_stop.get(&tree.name).is_some_and(|before| before.as_ref() == Some(&last)) {
                continue;
            }
            if last.source_peer == source && matches!(last.result.as_str(), "applied" | "nothing-to-do") {
                tracing::info!(
                    %source,
                    tree = %tree.name,
                    sync_id = %last.id,
                    plan_id = %last.plan_id,
                    "replication resumes: a sync from {source} was applied by hand"
                );
                node.replication.resume_after_manual_sync();
                return false;
            }
        }
        if !node.replication.stopped() {
            return false;
        }
    }
}

/// What we know of the source's tree from its root stream.
#[derive(Debug, Clone)]
struct SourceRoot {
    root: Vec<u8>,
    ready: bool,
}

/// Connects to the source, checks for a loop, then syncs every shared tree that
/// differs, now and on each root update, until something ends it.
async fn follow(
    node: &Arc<Node>,
    source: &str,
    mut client: PeerClient<Channel>,
    operator: &mut watch::Receiver<u64>,
    backoff: &mut Backoff,
) -> Ended {
    let timeout = node.config.peer_timeout;
    let lost = |error: String| Ended::Lost { error, tree: String::new() };
    // The stream first: whatever changes while we check and sync queues in it.
    let request = pb::WatchRootRequest { tree: String::new() };
    let mut stream = match tokio::time::timeout(timeout, client.watch_root(request)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return lost(format!("cannot watch {source}: {}", describe_status(&status))),
        Err(_) => return lost(format!("cannot watch {source}: no answer within {} s", timeout.as_secs())),
    };
    let status = match tokio::time::timeout(timeout, client.status(pb::PeerStatusRequest::default())).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return lost(format!("cannot ask {source} for its status: {}", describe_status(&status))),
        Err(_) => return lost(format!("cannot ask {source} for its status: no answer within {} s", timeout.as_secs())),
    };
    if status.replicating_from == node.config.name {
        let message = format!(
            "replication loop: {source} replicates from this node ({me}) while {me} replicates from {source}, so \
             neither would ever be the source of truth; nothing was synced. Fix: remove replicate_from \
             (--replicate-from) on one of them and restart it, then `stagingctl replication resume` on the other",
            me = node.config.name
        );
        tracing::error!(%source, "REPLICATION STOPPED: {message}");
        node.replication.stop(LOOP, &message, "");
        return Ended::Halted;
    }
    node.replication.following();
    tracing::info!(%source, "replication connected to {source}");

    let mut roots: BTreeMap<String, SourceRoot> = BTreeMap::new();
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut first_pass = true;
    loop {
        if !pending.is_empty() || first_pass {
            if let Some(ended) = sync_pending(node, source, &roots, &mut pending).await {
                return ended;
            }
            if first_pass && !roots.is_empty() {
                first_pass = false;
                backoff.reset();
            }
            let level = node.trees.values().all(|tree| {
                roots.get(&tree.name).is_none_or(|theirs| theirs.root == tree.view().manifest.root_hash().as_bytes())
            });
            if level && !roots.is_empty() {
                node.replication.level();
            }
        }
        let item = tokio::select! {
            _ = node.shutdown.cancelled() => return Ended::Shutdown,
            _ = operator.changed() => {
                if node.replication.paused() {
                    tracing::info!(%source, "replication paused");
                    return Ended::Halted;
                }
                continue;
            }
            item = stream.next() => item,
        };
        let mut next = Some(item);
        // Take every update already here before syncing: a burst is one sync.
        while let Some(item) = next {
            match item {
                Some(Ok(update)) => {
                    if node.trees.contains_key(&update.tree) {
                        let ready = update.readiness == pb::Readiness::Ready as i32;
                        roots.insert(update.tree.clone(), SourceRoot { root: update.root_hash, ready });
                        pending.insert(update.tree);
                    }
                }
                Some(Err(status)) => return lost(format!("lost {source}'s root stream: {}", describe_status(&status))),
                None => return lost(format!("{source} closed its root stream (restarting or shutting down?)")),
            }
            next = stream.next().now_or_never();
        }
    }
}

/// Syncs the pending trees whose source root is ready and differs from ours.
/// `None` to keep following; otherwise why following ends.
async fn sync_pending(
    node: &Arc<Node>,
    source: &str,
    roots: &BTreeMap<String, SourceRoot>,
    pending: &mut BTreeSet<String>,
) -> Option<Ended> {
    for name in std::mem::take(pending) {
        let (Some(tree), Some(theirs)) = (node.trees.get(&name), roots.get(&name)) else { continue };
        // Not ready (scanning, applying, incomplete): its next update says when.
        if !theirs.ready || theirs.root == tree.view().manifest.root_hash().as_bytes() {
            continue;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(operations::EVENTS_QUEUED);
        let operation = Operation::Sync { peer: source.to_owned(), dry_run: false, confirm: None, allow_behind: false };
        let reason = format!("automatic replication from {source}");
        let run = operations::run(Arc::clone(node), vec![Arc::clone(tree)], operation, WHO.to_owned(), reason, tx);
        // Read the events while the sync runs (it waits for room to send its
        // result); only the result matters here.
        let result = async {
            let mut result = None;
            while let Some(event) = rx.recv().await {
                if let Ok(pb::SyncEvent { event: Some(pb::sync_event::Event::TreeResult(r)) }) = event {
                    result = Some(r);
                }
            }
            result
        };
        let ((), result) = tokio::join!(run, result);
        let Some(result) = result else {
            return Some(Ended::Lost { error: "the sync ended without a result".to_owned(), tree: name });
        };
        match result.outcome() {
            pb::SyncOutcome::Applied | pb::SyncOutcome::NothingToDo | pb::SyncOutcome::DryRun => {}
            pb::SyncOutcome::Refused if result.guard == names::BUSY || result.guard == names::SOURCE_NOT_READY => {
                tracing::info!(%source, tree = %name, guard = %result.guard, "replication waits for the next update: {}", result.message);
            }
            pb::SyncOutcome::Refused => {
                // The plan id, unless the guard's message already names it.
                let plan = if result.plan_id.is_empty() || result.message.contains(&result.plan_id) {
                    String::new()
                } else {
                    format!(" (plan {})", result.plan_id)
                };
                let hint =
                    if result.hint.is_empty() { String::new() } else { format!("; to proceed: {}", result.hint) };
                let error = format!(
                    "sync from {source} refused by guard {}{plan}: {}{hint}; or resume with \
                     `stagingctl replication resume` once the source is right",
                    result.guard, result.message
                );
                tracing::error!(%source, tree = %name, guard = %result.guard, plan_id = %result.plan_id, "REPLICATION STOPPED: {error}");
                node.replication.stop(&result.guard, &error, &name);
                return Some(Ended::Halted);
            }
            pb::SyncOutcome::Failed | pb::SyncOutcome::Unspecified => {
                let error = format!("sync from {source} failed: {}", result.message);
                return Some(Ended::Lost { error, tree: name });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..9).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        backoff.reset();
        assert_eq!(backoff.next(), BACKOFF_FIRST);
    }

    #[test]
    fn pause_is_persisted_and_an_unreadable_record_pauses() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), (PauseRecord::initial(), None));

        let replication = Replication::new(Some("deploy2002".into()), dir.path());
        let state = replication.set_paused(true, "alice", "maintenance").unwrap();
        assert_eq!(state.phase, pb::ReplicationPhase::Paused as i32);
        assert_eq!((state.paused, state.changed_by.as_str()), (true, "alice"));
        let again = Replication::new(Some("deploy2002".into()), dir.path());
        assert!(again.state().paused);
        assert_eq!(load(dir.path()).0.reason, "maintenance");

        std::fs::write(path(dir.path()), b"{\"paused\": fal").unwrap();
        let (record, problem) = load(dir.path());
        assert!(record.paused);
        assert!(problem.unwrap().contains("corrupt"));
    }

    #[test]
    fn phases_as_status_shows_them() {
        let dir = tempfile::tempdir().unwrap();
        let disabled = Replication::new(None, dir.path());
        assert_eq!(disabled.state().phase, pb::ReplicationPhase::Disabled as i32);

        let replication = Replication::new(Some("deploy2002".into()), dir.path());
        assert_eq!(replication.state().phase, pb::ReplicationPhase::Following as i32);
        replication.retrying("connection refused", "");
        assert_eq!(replication.state().phase, pb::ReplicationPhase::Retrying as i32);
        replication.stop("delete-threshold", "tree staging: plan 0123456789abcdef …", "staging");
        let stopped = replication.state();
        assert_eq!(stopped.phase, pb::ReplicationPhase::Stopped as i32);
        assert_eq!((stopped.stopped_guard.as_str(), stopped.tree.as_str()), ("delete-threshold", "staging"));
        // Resuming clears the stop.
        let resumed = replication.set_paused(false, "bob", "").unwrap();
        assert_eq!(resumed.phase, pb::ReplicationPhase::Following as i32);
        assert!(resumed.stopped_guard.is_empty() && resumed.last_error.is_empty());
    }
}
