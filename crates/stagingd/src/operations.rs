//! Syncs, rollbacks and verifies as the daemon runs them: the tree's lock,
//! readiness and manifest around the engine (`sync::engine`), events turned
//! into wire messages, one structured log line per outcome.

use std::sync::Arc;

use manifest::PlanId;
use proto::v1 as pb;
use sync::engine::{self, Event, Outcome, Report, SyncRequest, TreeSetup};
use sync::guards::{self, DeleteLimits};
use sync::itemize::PlanLines;
use sync::{RollbackTo, StatvfsProbe};
use tokio::sync::mpsc::Sender;

use crate::node::Node;
use crate::peer_client::GrpcPeer;
use crate::pool::PoolState;
use crate::tree::{Readiness, TreeState};
use crate::unix_now;

/// What to do to one tree.
#[derive(Debug, Clone)]
pub enum Operation {
    Sync { peer: String, dry_run: bool, confirm: Option<PlanId>, allow_behind: bool },
    Rollback { to: RollbackTo },
}

impl Operation {
    fn name(&self) -> &'static str {
        match self {
            Operation::Sync { dry_run: true, .. } => "diff",
            Operation::Sync { .. } => "sync",
            Operation::Rollback { .. } => "rollback",
        }
    }
}

/// Events queued for the client of an operation. Progress that finds the
/// queue full is dropped (the next report supersedes it); plan lines and
/// results wait for room, so a slow reader slows the stream, not the memory.
pub const EVENTS_QUEUED: usize = 256;

/// How long a dry run's plan lines wait for a client that has stopped reading
/// (a pager left open): after that the stream ends without its result, and the
/// plan is freed.
pub const PLAN_READER_STALL: std::time::Duration = std::time::Duration::from_secs(600);

type Events = Sender<Result<pb::SyncEvent, tonic::Status>>;

/// Runs `operation` on each tree in turn, sending events and one `TreeResult`
/// per tree on `out`. A refusal or failure of one tree stops none of the
/// others; a client that went away (or stalled on a plan) stops the rest.
pub async fn run(
    node: Arc<Node>,
    trees: Vec<Arc<TreeState>>,
    operation: Operation,
    who: String,
    reason: String,
    out: Events,
) {
    for tree in trees {
        let (result, plan) = run_tree(&node, &tree, &operation, &who, &reason, &out).await;
        // The tree's lock is released by now: a client reading a long plan
        // slowly holds no sync up.
        if let Some(plan) = plan {
            let sent = send_plan(&tree.name, &plan, &out).await;
            drop(plan);
            tokio::task::spawn_blocking(crate::memory::release_freed);
            if !sent {
                return;
            }
        }
        let event = pb::SyncEvent { event: Some(pb::sync_event::Event::TreeResult(result)) };
        if out.send(Ok(event)).await.is_err() {
            return;
        }
    }
}

/// Sends a dry run's plan, a line at a time as the client takes them. False
/// when the client went away or stopped reading for [`PLAN_READER_STALL`].
async fn send_plan(tree: &str, plan: &manifest::Plan, out: &Events) -> bool {
    for line in PlanLines::new(plan) {
        let item = pb::PlanItem {
            tree: tree.to_owned(),
            op: line.op.to_owned(),
            path: line.path.as_bytes().to_vec(),
            size: line.size,
            kind: match line.kind {
                manifest::Kind::File => pb::EntryKind::File,
                manifest::Kind::Dir => pb::EntryKind::Dir,
                manifest::Kind::Symlink => pb::EntryKind::Symlink,
            }
            .into(),
        };
        let event = pb::SyncEvent { event: Some(pb::sync_event::Event::PlanItem(item)) };
        match tokio::time::timeout(PLAN_READER_STALL, out.send(Ok(event))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                tracing::warn!(
                    %tree,
                    "the client took no line of the plan for {} s; its stream is ended",
                    PLAN_READER_STALL.as_secs()
                );
                return false;
            }
        }
    }
    true
}

async fn run_tree(
    node: &Arc<Node>,
    tree: &Arc<TreeState>,
    operation: &Operation,
    who: &str,
    reason: &str,
    out: &Events,
) -> (pb::TreeResult, Option<manifest::Plan>) {
    let started = std::time::Instant::now();
    let guard = match tree.lock.try_acquire(who, operation.name(), reason) {
        Ok(guard) => guard,
        Err(busy) => {
            let refusal = guards::busy(&tree.name, &busy);
            let result = refused_result(tree, &refusal);
            log_outcome(node, tree, operation, who, &result, started);
            return (result, None);
        }
    };
    // The plan must start from the tree as it is now. With a working watcher the
    // manifest is current once the events already received are folded in;
    // without one (or if they do not drain quickly), rescan — the stat cache
    // makes that a stat walk.
    if !watcher_caught_up(tree).await
        && let Err(e) = tree.rescan().await
    {
        let result = failed_result(tree, format!("cannot rescan the tree before syncing: {e:#}"));
        log_outcome(node, tree, operation, who, &result, started);
        return (result, None);
    }
    let local = tree.view().manifest;
    tracing::debug!(tree = %tree.name, millis = started.elapsed().as_millis() as u64, "manifest current");
    let setup = TreeSetup {
        name: tree.name.clone(),
        root: tree.root.clone(),
        state_dir: tree.state_dir.clone(),
        excludes: tree.excludes.clone(),
        limits: DeleteLimits {
            max_files: node.config.delete_limits.max_files,
            max_ratio: node.config.delete_limits.max_ratio,
        },
        preserve_owner: rustix::process::geteuid().is_root(),
        local_depooled: node.pool().state == PoolState::Depooled,
        keep_syncs: engine::KEEP_SYNCS,
        after_fetch_stream: crate::memory::release_freed_now_and_then,
    };
    let tree_name = tree.name.clone();
    let sender = out.clone();
    let events = move |event: Event| {
        let Event::Progress { phase, files_done, files_total, bytes_done, bytes_total } = event;
        let progress = pb::Progress {
            tree: tree_name.clone(),
            phase: phase.to_owned(),
            files_done,
            files_total,
            bytes_done,
            bytes_total,
        };
        let _ = sender.try_send(Ok(pb::SyncEvent { event: Some(pb::sync_event::Event::Progress(progress)) }));
    };
    let applying = !matches!(operation, Operation::Sync { dry_run: true, .. });
    if applying {
        tree.set_readiness(Readiness::Applying);
    }
    let mut report = match operation {
        Operation::Sync { peer, dry_run, confirm, allow_behind } => {
            let Some(client) = node.peers.get(peer) else {
                unreachable!("the admin service checks the peer name before starting");
            };
            let remote = GrpcPeer { client: client.clone(), tree: tree.name.clone() };
            let request = SyncRequest {
                peer: peer.clone(),
                dry_run: *dry_run,
                confirm: *confirm,
                allow_behind: *allow_behind,
                who: who.to_owned(),
                reason: reason.to_owned(),
            };
            engine::sync_tree(&remote, &setup, Arc::clone(&local), &StatvfsProbe, &request, &events).await
        }
        Operation::Rollback { to } => {
            engine::rollback_tree(&setup, Arc::clone(&local), &StatvfsProbe, to.clone(), who, reason, &events).await
        }
    };
    let source = match operation {
        Operation::Sync { peer, .. } => peer.clone(),
        Operation::Rollback { .. } => "rollback".to_owned(),
    };
    let stale = std::sync::atomic::AtomicBool::new(false);
    let plan = report.plan.take();
    let result = finish(tree, report, local, source, &stale);
    if stale.load(std::sync::atomic::Ordering::SeqCst)
        && let Err(e) = tree.rescan().await
    {
        tracing::error!(tree = %tree.name, "rescan after the sync failed: {e:#}");
    }
    drop(guard);
    log_outcome(node, tree, operation, who, &result, started);
    // The target and the staging bookkeeping are freed by now (a dry run's
    // plan once it is sent).
    tokio::task::spawn_blocking(crate::memory::release_freed);
    (result, plan)
}

/// An outcome as status, logs and metrics spell it — the same words as
/// `stagingctl --json`: `applied`, `nothing-to-do`, `dry-run`, `refused`, `failed`.
pub fn outcome_name(outcome: pb::SyncOutcome) -> String {
    outcome.as_str_name().trim_start_matches("SYNC_OUTCOME_").to_lowercase().replace('_', "-")
}

/// True when the watcher is running and has folded in every event received so
/// far (waiting up to two seconds for it).
async fn watcher_caught_up(tree: &TreeState) -> bool {
    if tree.watch_state().0 != pb::WatchState::Watching {
        return false;
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while tree.pending_events.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        if std::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}

/// Installs the new manifest (or restores readiness) and builds the result.
fn finish(
    tree: &Arc<TreeState>,
    mut report: Report,
    local: Arc<manifest::Manifest>,
    source: String,
    stale: &std::sync::atomic::AtomicBool,
) -> pb::TreeResult {
    let readiness_now = if tree.view().unreadable > 0 { Readiness::Incomplete } else { Readiness::Ready };
    match report.manifest.take() {
        Some(manifest) => {
            if tree.install_if(Some(&local), Arc::new(manifest), readiness_now, |_| {}) {
                tree.save_cache_later();
            } else {
                // The watcher folded in a local change while we planned: our result
                // is based on an older manifest, so look at the tree again.
                stale.store(true, std::sync::atomic::Ordering::SeqCst);
                tree.set_readiness(readiness_now);
            }
        }
        None => tree.set_readiness(readiness_now),
    }
    let (outcome, guard, message, hint) = match &report.outcome {
        Outcome::Applied => (pb::SyncOutcome::Applied, "", String::new(), String::new()),
        Outcome::NothingToDo => (pb::SyncOutcome::NothingToDo, "", "already in sync".to_owned(), String::new()),
        Outcome::DryRun(None) => (pb::SyncOutcome::DryRun, "", String::new(), String::new()),
        Outcome::DryRun(Some(r)) => (
            pb::SyncOutcome::DryRun,
            "",
            format!("applying this plan now would be refused by guard {}: {}", r.guard, r.message),
            r.hint.clone(),
        ),
        Outcome::Refused(r) => (pb::SyncOutcome::Refused, r.guard, r.message.clone(), r.hint.clone()),
        Outcome::Failed(e) => (pb::SyncOutcome::Failed, "", e.clone(), String::new()),
    };
    let result = pb::TreeResult {
        tree: tree.name.clone(),
        outcome: outcome.into(),
        plan_id: report.plan_id.map(|id| id.to_string()).unwrap_or_default(),
        guard: guard.to_owned(),
        message,
        hint,
        counts: Some(pb::SyncCounts {
            creates: report.counts.creates,
            updates: report.counts.updates,
            deletes: report.counts.deletes,
            bytes_to_write: report.counts.bytes,
            bytes_fetched: report.bytes_fetched,
            bytes_copied_locally: report.bytes_copied_locally,
        }),
        sync_id: report.sync_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        root_before: report.root_before.as_bytes().to_vec(),
        root_after: report.root_after.map(|h| h.as_bytes().to_vec()).unwrap_or_default(),
    };
    if outcome != pb::SyncOutcome::DryRun {
        tree.set_last_sync(pb::LastSync {
            id: result.sync_id.clone(),
            source_peer: source,
            unix: unix_now(),
            result: outcome_name(outcome),
            plan_id: result.plan_id.clone(),
            guard: result.guard.clone(),
        });
    }
    result
}

fn refused_result(tree: &TreeState, refusal: &guards::Refusal) -> pb::TreeResult {
    pb::TreeResult {
        tree: tree.name.clone(),
        outcome: pb::SyncOutcome::Refused.into(),
        guard: refusal.guard.to_owned(),
        message: refusal.message.clone(),
        hint: refusal.hint.clone(),
        root_before: tree.view().manifest.root_hash().as_bytes().to_vec(),
        ..pb::TreeResult::default()
    }
}

fn failed_result(tree: &TreeState, message: String) -> pb::TreeResult {
    pb::TreeResult {
        tree: tree.name.clone(),
        outcome: pb::SyncOutcome::Failed.into(),
        message,
        root_before: tree.view().manifest.root_hash().as_bytes().to_vec(),
        ..pb::TreeResult::default()
    }
}

/// One structured line per sync, rollback or refusal, with what an operator
/// greps for.
fn log_outcome(
    node: &Node,
    tree: &TreeState,
    operation: &Operation,
    who: &str,
    result: &pb::TreeResult,
    started: std::time::Instant,
) {
    let counts = result.counts.unwrap_or_default();
    let peer = match operation {
        Operation::Sync { peer, .. } => peer.as_str(),
        Operation::Rollback { .. } => "",
    };
    let outcome = outcome_name(result.outcome());
    crate::metrics::global().record_outcome(&tree.name, operation.name(), result, started.elapsed());
    tracing::info!(
        node = %node.config.name,
        tree = %tree.name,
        operation = operation.name(),
        peer,
        who,
        outcome = %outcome,
        guard = %result.guard,
        plan_id = %result.plan_id,
        sync_id = %result.sync_id,
        creates = counts.creates,
        updates = counts.updates,
        deletes = counts.deletes,
        bytes_fetched = counts.bytes_fetched,
        bytes_copied_locally = counts.bytes_copied_locally,
        millis = started.elapsed().as_millis() as u64,
        message = %result.message,
        "{} {outcome}",
        operation.name()
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use manifest::{Dir, DirMeta, Entry, FileMeta, Hash, Manifest, Node, Plan};

    use super::*;

    /// The plan of a full copy of a tree of `files` files in one directory:
    /// one new-subtree op, `files + 1` lines.
    fn full_copy(files: usize) -> Plan {
        let file = |i: usize| Entry {
            name: format!("f{i:05}").as_bytes().into(),
            node: Node::File(FileMeta {
                size: 1,
                mode: 0o644,
                mtime: Default::default(),
                hash: Hash::of_content(&[i as u8]),
                owner: Default::default(),
                stat: Default::default(),
            }),
        };
        let top = Dir::new(DirMeta::default(), (0..files).map(file).collect());
        let target =
            Dir::new(DirMeta::default(), vec![Entry { name: b"d".as_slice().into(), node: Node::Dir(Arc::new(top)) }]);
        manifest::diff(&Manifest::empty(), &Manifest::new(target))
    }

    fn is_plan_item(event: &Result<pb::SyncEvent, tonic::Status>) -> bool {
        matches!(event, Ok(pb::SyncEvent { event: Some(pb::sync_event::Event::PlanItem(_)) }))
    }

    #[tokio::test]
    async fn a_plan_is_sent_no_faster_than_its_reader_takes_it() {
        let plan = Arc::new(full_copy(10 * EVENTS_QUEUED));
        let (tx, mut rx) = tokio::sync::mpsc::channel(EVENTS_QUEUED);
        let sending = tokio::spawn({
            let plan = Arc::clone(&plan);
            async move { send_plan("staging", &plan, &tx).await }
        });
        // The queue fills and the sender waits: the plan is not queued whole.
        let mut received = vec![rx.recv().await.expect("a first line")];
        while rx.len() < EVENTS_QUEUED {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!sending.is_finished(), "the sender waits for room");
        assert_eq!(rx.len(), EVENTS_QUEUED, "no more than the queue holds is waiting");
        while let Some(event) = rx.recv().await {
            received.push(event);
        }
        assert!(sending.await.expect("no panic"), "the whole plan was sent");
        assert_eq!(received.len(), PlanLines::new(&plan).count());
        assert!(received.len() > 10 * EVENTS_QUEUED);
        assert!(received.iter().all(is_plan_item));
    }

    #[tokio::test]
    async fn a_plan_stops_when_its_reader_goes_away() {
        let plan = full_copy(10 * EVENTS_QUEUED);
        let (tx, rx) = tokio::sync::mpsc::channel(EVENTS_QUEUED);
        drop(rx);
        assert!(!send_plan("staging", &plan, &tx).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plan_is_abandoned_when_its_reader_stops_reading() {
        let plan = full_copy(10 * EVENTS_QUEUED);
        let (tx, rx) = tokio::sync::mpsc::channel(EVENTS_QUEUED);
        let started = tokio::time::Instant::now();
        // The reader holds the stream open and reads nothing; the paused clock
        // jumps to the stall deadline once nothing else can run.
        assert!(!send_plan("staging", &plan, &tx).await);
        assert!(started.elapsed() >= PLAN_READER_STALL);
        assert_eq!(rx.len(), EVENTS_QUEUED);
    }
}
