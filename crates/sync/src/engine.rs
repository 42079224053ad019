//! One tree's sync, rollback and verify, end to end.
//!
//! [`sync_tree`]: peer status → source guards → Merkle walk ([`plan_target`]) →
//! plan → plan guards → (dry run stops here) → stage local copies → fetch the
//! rest, verifying every byte → `syncfs` → journaled apply → history. Nothing in
//! the tree changes before every guard has passed and all content is staged and
//! verified; any error before the journal leaves the tree untouched.
//!
//! The engine does not know about gRPC or the daemon's state: the caller holds
//! the tree's lock, supplies the current manifest, installs the new one, and
//! turns [`Event`]s into progress messages. Blocking file work runs on tokio's
//! blocking pool.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use manifest::{Excludes, Hash, Manifest, Op, Plan, PlanId, RelPath};

use crate::apply::{ApplyOptions, apply_to};
use crate::capacity::CapacityProbe;
use crate::guards::{self, DeleteLimits, PlanFacts, Refusal, SourceFacts, Subject};
use crate::history::{Counts, History, HistoryRecord, RecordKind, RecordResult, RollbackTo, SyncId};
use crate::remote::{PeerSource, Piece, RemoteError, Wanted, plan_target};
use crate::stage::{StagedWriter, Staging, stage_from_local};
use crate::trash::Trash;
use crate::writes::Writes;

/// Hashes per `fetch` call.
pub const FETCH_BATCH_HASHES: usize = 2000;
/// Content bytes per `fetch` call (a batch closes at whichever limit comes first).
pub const FETCH_BATCH_BYTES: u64 = 64 << 20;
/// Fetch streams in flight at once.
pub const FETCH_STREAMS: usize = 4;
/// Messages (up to 1 MiB each) received on one fetch stream and waiting for its
/// writer. The connection's HTTP/2 window already buffers 16 MiB; a deeper queue
/// (8) held ~15 MB more at the receiver's peak and was no faster.
pub const FETCH_QUEUE_MESSAGES: usize = 2;
/// A fetch stream that sends nothing for this long is abandoned (nothing applied).
pub const FETCH_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Syncs whose before-manifest and trash objects are kept for rollback.
pub const KEEP_SYNCS: usize = 10;

/// Everything about the local tree the engine needs.
#[derive(Debug, Clone)]
pub struct TreeSetup {
    pub name: String,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub excludes: Excludes,
    pub limits: DeleteLimits,
    pub preserve_owner: bool,
    pub local_depooled: bool,
    pub keep_syncs: usize,
    /// Called on a blocking thread as each fetch stream ends, its buffers
    /// freed: the daemon gives freed memory back to the system there (at most
    /// so often); tests pass a function that does nothing.
    pub after_fetch_stream: fn(),
}

/// What the operator (or replication) asked for.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub peer: String,
    pub dry_run: bool,
    pub confirm: Option<PlanId>,
    pub allow_behind: bool,
    pub who: String,
    pub reason: String,
}

/// Progress, as it happens (a dry run's plan comes with its [`Report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Progress { phase: &'static str, files_done: u64, files_total: u64, bytes_done: u64, bytes_total: u64 },
}

/// How a sync or rollback ended.
#[derive(Debug)]
pub enum Outcome {
    Applied,
    NothingToDo,
    /// A dry run; with the refusal the plan would meet if it were applied now.
    DryRun(Option<Refusal>),
    Refused(Refusal),
    Failed(String),
}

/// The result of one tree's sync or rollback.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub plan_id: Option<PlanId>,
    pub counts: Counts,
    pub bytes_fetched: u64,
    pub bytes_copied_locally: u64,
    pub sync_id: Option<SyncId>,
    pub root_before: Hash,
    /// After an apply: the new root; for a dry run or refusal: the plan's target.
    pub root_after: Option<Hash>,
    /// After an apply: the tree's new manifest, for the caller to install.
    pub manifest: Option<Manifest>,
    /// A dry run's plan, for the caller to itemize ([`crate::itemize::PlanLines`])
    /// at the pace its reader takes the lines.
    pub plan: Option<Plan>,
}

impl Report {
    fn new(root_before: Hash) -> Self {
        Self {
            outcome: Outcome::NothingToDo,
            plan_id: None,
            counts: Counts::default(),
            bytes_fetched: 0,
            bytes_copied_locally: 0,
            sync_id: None,
            root_before,
            root_after: None,
            manifest: None,
            plan: None,
        }
    }

    fn with_plan(mut self, plan: &Plan) -> Self {
        self.plan_id = Some(plan.id);
        self.counts = Counts::from(&plan.totals);
        self.root_after = Some(plan.to_root);
        self
    }

    fn ending(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }
}

/// Pulls `peer`'s version of the tree into `setup.root`.
pub async fn sync_tree<P: PeerSource>(
    peer: &P,
    setup: &TreeSetup,
    local: Arc<Manifest>,
    capacity: &dyn CapacityProbe,
    request: &SyncRequest,
    events: &(dyn Fn(Event) + Send + Sync),
) -> Report {
    let report = Report::new(local.root_hash());
    let subject = Subject { tree: &setup.name, peer: &request.peer };
    progress(events, "checking the source", 0, 0);
    let status = match peer.status().await {
        Ok(status) => status,
        Err(e) => return report.ending(Outcome::Failed(format!("cannot get {}'s status: {e}", request.peer))),
    };
    let Some(remote) = status.tree else {
        return report.ending(Outcome::Failed(format!("{} has no tree named {}", request.peer, setup.name)));
    };
    let facts = SourceFacts {
        local_depooled: setup.local_depooled,
        source_pool: status.pool,
        source_readiness: remote.readiness,
        source_leaves: remote.leaves,
        local_leaves: local.totals().leaves(),
    };
    if let Err(refusal) = guards::check_source(&subject, &facts) {
        return report.ending(Outcome::Refused(refusal));
    }
    if remote.root == local.root_hash() {
        return report.ending(Outcome::NothingToDo);
    }

    progress(events, "planning", 0, 0);
    let phase = Instant::now();
    let target = match plan_target(peer, &local, remote.root, &setup.excludes).await {
        Ok(target) => target,
        Err(e) => return report.ending(Outcome::Failed(e.to_string())),
    };
    let listed = phase.elapsed();
    let plan = manifest::diff(&local, &target);
    tracing::debug!(
        tree = %setup.name,
        listing_millis = listed.as_millis() as u64,
        diff_millis = (phase.elapsed() - listed).as_millis() as u64,
        "planned"
    );
    if plan.is_empty() {
        return report.ending(Outcome::NothingToDo);
    }
    let report = report.with_plan(&plan);

    let history = History::open(&setup.state_dir);
    let behind_since = match history.records() {
        Ok(records) => {
            let to = plan.to_root.to_hex();
            records.iter().rev().find(|r| r.root_before == to).map(|r| {
                format!("before sync {} at {}", r.id, humantime::format_rfc3339_seconds(unix_to_system(r.unix_time)))
            })
        }
        Err(e) => return report.ending(Outcome::Failed(format!("cannot read history: {e}"))),
    };
    let space = match capacity.free(&setup.root) {
        Ok(space) => space,
        Err(e) => return report.ending(Outcome::Failed(format!("cannot measure free space: {e}"))),
    };
    let plan_facts = PlanFacts {
        plan: &plan,
        local_leaves: local.totals().leaves(),
        limits: setup.limits,
        confirmed: request.confirm,
        allow_behind: request.allow_behind,
        behind_since,
        space,
    };
    let verdict = guards::check_plan(&subject, &plan_facts);
    if request.dry_run {
        // A dry run shows the plan even when a guard would refuse it: that is
        // how an operator reviews a plan before confirming it.
        let mut report = report.ending(Outcome::DryRun(verdict.err()));
        report.plan = Some(plan);
        return report;
    }
    if let Err(refusal) = verdict {
        return report.ending(Outcome::Refused(refusal));
    }

    let record = RecordDraft { kind: RecordKind::Sync, source: request.peer.clone(), request };
    apply_plan(setup, local, Planned { plan, target }, record, Some(peer), events, report).await
}

/// Restores the tree as it was before the last sync (or before `to`), from the
/// trash and the tree itself: nothing is fetched.
pub async fn rollback_tree(
    setup: &TreeSetup,
    local: Arc<Manifest>,
    capacity: &dyn CapacityProbe,
    to: RollbackTo,
    who: &str,
    reason: &str,
    events: &(dyn Fn(Event) + Send + Sync),
) -> Report {
    let report = Report::new(local.root_hash());
    if setup.local_depooled {
        return report.ending(Outcome::Refused(Refusal {
            guard: guards::names::DEPOOLED,
            message: "this node is depooled: it neither serves nor receives".to_owned(),
            hint: "pool it to receive first: `stagingctl pool receive-only --reason \"...\"`".to_owned(),
        }));
    }
    let history = History::open(&setup.state_dir);
    let root = setup.root.clone();
    let target = match blocking(move || history.rollback_target(&root, &to).map_err(|e| e.to_string())).await {
        Ok(target) => target,
        Err(e) => return report.ending(Outcome::Failed(format!("nothing to roll back to: {e}"))),
    };
    let plan = manifest::diff(&local, &target.manifest);
    if plan.is_empty() {
        return report.ending(Outcome::NothingToDo);
    }
    let report = report.with_plan(&plan);
    let space = match capacity.free(&setup.root) {
        Ok(space) => space,
        Err(e) => return report.ending(Outcome::Failed(format!("cannot measure free space: {e}"))),
    };
    // A rollback is an operator's explicit choice of an earlier tree: only
    // capacity can stop it.
    let facts = PlanFacts {
        plan: &plan,
        local_leaves: local.totals().leaves(),
        limits: DeleteLimits { max_files: u64::MAX, max_ratio: 1.0 },
        confirmed: None,
        allow_behind: true,
        behind_since: None,
        space,
    };
    let subject = Subject { tree: &setup.name, peer: "rollback" };
    if let Err(refusal) = guards::check_plan(&subject, &facts) {
        return report.ending(Outcome::Refused(refusal));
    }
    let request =
        SyncRequest { peer: String::new(), who: who.to_owned(), reason: reason.to_owned(), ..SyncRequest::default() };
    let record = RecordDraft { kind: RecordKind::Rollback, source: target.sync_id.to_string(), request: &request };
    apply_plan::<NoPeer>(setup, local, Planned { plan, target: target.manifest }, record, None, events, report).await
}

struct RecordDraft<'a> {
    kind: RecordKind,
    source: String,
    request: &'a SyncRequest,
}

/// A plan and the manifest it leads to: `plan` is `diff(local, target)`.
struct Planned {
    plan: Plan,
    target: Manifest,
}

/// Stages (locally, then from `peer`), applies, and records a plan.
async fn apply_plan<P: PeerSource>(
    setup: &TreeSetup,
    local: Arc<Manifest>,
    Planned { plan, target }: Planned,
    record: RecordDraft<'_>,
    peer: Option<&P>,
    events: &(dyn Fn(Event) + Send + Sync),
    mut report: Report,
) -> Report {
    let sync_id = SyncId::generate(unix_now(), plan.id);
    report.sync_id = Some(sync_id.clone());
    let plan = Arc::new(plan);
    // The before-manifest (what a rollback of this sync restores) is written and
    // made durable while content is staged and fetched; the switch waits for it.
    // If the sync stops before its switch, the next retention removes the file.
    let saving_before = {
        let (state_dir, root, local, sync_id) =
            (setup.state_dir.clone(), setup.root.clone(), Arc::clone(&local), sync_id.clone());
        tokio::task::spawn_blocking(move || {
            let cache = state_dir.join(manifest::cache::CACHE_FILE);
            History::open(&state_dir).save_before(&sync_id, &local, &root, Some(&cache)).map_err(|e| e.to_string())
        })
    };
    progress(events, "copying local content", 0, plan.totals.bytes_to_write);

    let phase = Instant::now();
    let staged = {
        let (setup, plan, local, sync_id) = (setup.clone(), Arc::clone(&plan), Arc::clone(&local), sync_id.clone());
        blocking(move || -> Result<StagedLocally, String> {
            let staging =
                Staging::create(&setup.root, &sync_id, setup.preserve_owner, &plan.ops).map_err(|e| e.to_string())?;
            let writes = Writes::of(plan);
            let trash = Trash::open(&setup.root).map_err(|e| e.to_string())?;
            let missing = stage_from_local(&staging, &writes, &local, &trash).map_err(|e| e.to_string());
            match missing {
                Ok(missing) => Ok(StagedLocally { staging, writes, missing }),
                Err(e) => {
                    let _ = staging.discard();
                    Err(e)
                }
            }
        })
        .await
    };
    let StagedLocally { staging, writes, missing } = match staged {
        Ok(staged) => staged,
        Err(e) => return report.ending(Outcome::Failed(format!("staging content: {e}"))),
    };
    tracing::debug!(tree = %setup.name, millis = phase.elapsed().as_millis() as u64, "staged local copies");
    let phase = Instant::now();
    let staging = Arc::new(staging);
    let missing_bytes: u64 = missing.iter().map(|&n| file_size(&writes, n as usize)).sum();
    report.bytes_copied_locally = plan.totals.bytes_to_write - missing_bytes;

    if missing.is_empty() {
        drop(writes);
    } else {
        let fetched = match peer {
            Some(peer) => fetch_missing(peer, &staging, writes, missing, setup.after_fetch_stream, events).await,
            None => Err(format!(
                "{} files are neither in the tree nor in the trash any more (retention expired?)",
                missing.len()
            )),
        };
        match fetched {
            Ok(bytes) => report.bytes_fetched = bytes,
            Err(e) => {
                discard(staging).await;
                return report.ending(Outcome::Failed(e));
            }
        }
    }

    tracing::debug!(tree = %setup.name, millis = phase.elapsed().as_millis() as u64, "fetched");
    // Everything is staged: the switch renames each new subtree by its top, and
    // the verify reads what is below it from the target, recording stat keys in
    // place. Holding on to the subtrees here would make that copy every directory.
    let plan = match Arc::try_unwrap(plan) {
        Ok(mut plan) => {
            plan.release_subtrees();
            Arc::new(plan)
        }
        Err(shared) => shared,
    };
    let phase = Instant::now();
    let saved_before = match saving_before.await {
        Ok(saved) => saved,
        Err(e) => Err(format!("the task writing it failed: {e}")),
    };
    if let Err(e) = saved_before {
        discard(staging).await;
        return report.ending(Outcome::Failed(format!("saving the before-manifest a rollback needs: {e}")));
    }
    let waited_for_before = phase.elapsed();
    progress(events, "switching", 0, plan.ops.len() as u64);
    let applied = {
        let (setup, plan, local, staging) =
            (setup.clone(), Arc::clone(&plan), Arc::clone(&local), Arc::clone(&staging));
        blocking(move || -> Result<crate::Applied, String> {
            let timer = Instant::now();
            staging.finish().map_err(|e| e.to_string())?;
            let synced = timer.elapsed();
            let options = ApplyOptions { preserve_owner: setup.preserve_owner, step_hook: None };
            let applied = apply_to(&setup.root, &setup.state_dir, &local, &plan, target, &staging, &options)
                .map_err(|e| e.to_string());
            tracing::debug!(
                tree = %setup.name,
                syncfs_millis = synced.as_millis() as u64,
                waited_for_before_millis = waited_for_before.as_millis() as u64,
                apply_millis = (timer.elapsed() - synced).as_millis() as u64,
                "apply phases"
            );
            applied
        })
        .await
    };
    let applied = match applied {
        Ok(applied) => applied,
        Err(e) => {
            discard(staging).await;
            return report.ending(Outcome::Failed(format!("apply: {e}")));
        }
    };

    let history_record = HistoryRecord {
        id: sync_id,
        kind: record.kind,
        source: record.source,
        unix_time: unix_now(),
        who: record.request.who.clone(),
        reason: record.request.reason.clone(),
        plan_id: plan.id.to_string(),
        counts: Counts::from(&plan.totals),
        root_before: plan.from_root.to_hex(),
        root_after: applied.manifest.root_hash().to_hex(),
        result: RecordResult::Applied,
        trashed: applied.trashed.iter().map(Hash::to_hex).collect(),
    };
    let (state_dir, root, keep) = (setup.state_dir.clone(), setup.root.clone(), setup.keep_syncs);
    let recorded = blocking(move || -> Result<(), String> {
        let history = History::open(&state_dir);
        history.append(&history_record).map_err(|e| e.to_string())?;
        let trash = Trash::open(&root).map_err(|e| e.to_string())?;
        history.retain(keep, &trash).map_err(|e| e.to_string())?;
        Ok(())
    })
    .await;
    if let Err(e) = recorded {
        tracing::error!(tree = %setup.name, "the sync was applied but recording it failed: {e}");
    }
    report.root_after = Some(applied.manifest.root_hash());
    report.manifest = Some(applied.manifest);
    report.ending(Outcome::Applied)
}

/// A staging after its local copies: the plan's writes, and the numbers of the
/// file writes no local copy staged, sorted by hash.
struct StagedLocally {
    staging: Staging,
    writes: Writes<Arc<Plan>>,
    missing: Vec<u32>,
}

/// Fetches the content of the file writes numbered `missing` from `peer` into
/// `staging`, several streams at once; returns the bytes received.
async fn fetch_missing<P: PeerSource>(
    peer: &P,
    staging: &Arc<Staging>,
    writes: Writes<Arc<Plan>>,
    missing: Vec<u32>,
    after_stream: fn(),
    events: &(dyn Fn(Event) + Send + Sync),
) -> Result<u64, String> {
    // One fetch per distinct hash; every write of that hash is made from it.
    let files_total = missing.len() as u64;
    let writes_by_hash = Arc::new(WritesByHash::new(writes, missing));
    let size_of = |first: usize| file_size(&writes_by_hash.writes, first);
    let total_bytes: u64 = writes_by_hash.first_writes().map(size_of).sum();
    // Batches are made as streams start, not all at once: each hash goes with the
    // path the peer listed it at (the first write of it: the target is the
    // peer's tree), so the peer opens that file without a search.
    let (by_hash, mut next) = (Arc::clone(&writes_by_hash), 0);
    let batches = std::iter::from_fn(move || {
        let mut batch: Vec<Wanted> = Vec::new();
        let mut batch_bytes = 0;
        while let Some(first) = by_hash.first_write(next) {
            let size = file_size(&by_hash.writes, first);
            if !batch.is_empty() && (batch.len() >= FETCH_BATCH_HASHES || batch_bytes + size > FETCH_BATCH_BYTES) {
                break;
            }
            let (_, path, file) = by_hash.written(first);
            batch.push(Wanted { hash: file.hash, at: path.into_owned() });
            batch_bytes += size;
            next += 1;
        }
        (!batch.is_empty()).then_some(batch)
    });
    let received = Arc::new(AtomicU64::new(0));
    let files_done = Arc::new(AtomicU64::new(0));
    let last_report = std::sync::Mutex::new(Instant::now());
    let report_progress = || {
        let mut last = last_report.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= Duration::from_millis(250) {
            *last = Instant::now();
            events(Event::Progress {
                phase: "fetching",
                files_done: files_done.load(Ordering::Relaxed),
                files_total,
                bytes_done: received.load(Ordering::Relaxed),
                bytes_total: total_bytes,
            });
        }
    };
    let results = futures::stream::iter(batches)
        .map(|batch| {
            let (staging, writes_by_hash) = (Arc::clone(staging), Arc::clone(&writes_by_hash));
            let (received, files_done) = (Arc::clone(&received), Arc::clone(&files_done));
            let report_progress = &report_progress;
            async move {
                let hashes: Vec<Hash> = batch.iter().map(|w| w.hash).collect();
                let mut stream = peer.fetch(batch).await.map_err(|e| e.to_string())?;
                let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Piece>>(FETCH_QUEUE_MESSAGES);
                let writer = tokio::task::spawn_blocking(move || {
                    let written = write_pieces(rx, &staging, &writes_by_hash, &hashes, &received, &files_done);
                    drop(hashes);
                    after_stream();
                    written
                });
                let streamed: Result<(), String> = async {
                    loop {
                        let next = tokio::time::timeout(FETCH_IDLE_TIMEOUT, stream.next()).await.map_err(|_| {
                            format!("the peer sent nothing for {} s: transfer abandoned", FETCH_IDLE_TIMEOUT.as_secs())
                        })?;
                        match next {
                            None => return Ok(()),
                            Some(Err(e)) => return Err(e.to_string()),
                            Some(Ok(pieces)) => {
                                if tx.send(pieces).await.is_err() {
                                    // The writer stopped: its own error says why.
                                    return Ok(());
                                }
                                report_progress();
                            }
                        }
                    }
                }
                .await;
                drop(tx);
                let written = writer.await.map_err(|e| format!("content writer failed: {e}"))?;
                streamed?;
                written
            }
        })
        .buffer_unordered(FETCH_STREAMS)
        .collect::<Vec<Result<(), String>>>()
        .await;
    for result in results {
        result?;
    }
    Ok(received.load(Ordering::Relaxed))
}

/// The file writes a fetch makes, by content hash: their numbers sorted by the
/// hash each writes (then by number), so the writes of a hash are a range found
/// by binary search through [`Writes`]. 4 bytes a write; `(hash, index)` pairs
/// took 36, and their `Vec`, grown by doubling as it was collected, 11.5 MB at
/// the peak of a 150,000-file copy.
struct WritesByHash {
    writes: Writes<Arc<Plan>>,
    by_hash: Vec<u32>,
    /// The first write of each distinct hash, in plan order: what is fetched, in order.
    firsts: Vec<u32>,
}

impl WritesByHash {
    /// `by_hash`: file writes sorted by hash, as [`Writes::files_by_hash`] and
    /// [`stage_from_local`] give them.
    fn new(writes: Writes<Arc<Plan>>, by_hash: Vec<u32>) -> Self {
        let hash_at = |n: u32| writes.file_hash(n);
        debug_assert!(by_hash.is_sorted_by_key(|&n| (hash_at(n), n)), "file writes sorted by hash");
        let mut firsts: Vec<u32> = by_hash.chunk_by(|&a, &b| hash_at(a) == hash_at(b)).map(|same| same[0]).collect();
        firsts.sort_unstable();
        Self { writes, by_hash, firsts }
    }

    /// The staging op, path and file of write `n`, one of the file writes indexed here.
    fn written(&self, n: usize) -> (usize, std::borrow::Cow<'_, RelPath>, &manifest::FileMeta) {
        let write = self.writes.get(n);
        (write.op, write.path, file_of(&self.writes, n))
    }

    /// The first write of each distinct hash, ascending.
    fn first_writes(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.firsts.iter().map(|&n| n as usize)
    }

    fn first_write(&self, nth: usize) -> Option<usize> {
        self.firsts.get(nth).map(|&n| n as usize)
    }

    /// The numbers of the writes of `hash`, ascending; none for a hash not fetched.
    fn writes_of(&self, hash: Hash) -> impl Iterator<Item = usize> + '_ {
        let hash_at = |n: u32| file_of(&self.writes, n as usize).hash;
        let start = self.by_hash.partition_point(|&n| hash_at(n) < hash);
        self.by_hash[start..].iter().take_while(move |&&n| hash_at(n) == hash).map(|&n| n as usize)
    }
}

/// The file of write `n`, one known to write a file.
fn file_of(writes: &Writes<Arc<Plan>>, n: usize) -> &manifest::FileMeta {
    writes.file(n).expect("only file writes are fetched")
}

/// The size of the file of write `n` (0 for a symlink).
fn file_size(writes: &Writes<Arc<Plan>>, n: usize) -> u64 {
    writes.file(n).map_or(0, |file| file.size)
}

/// Writes the pieces of one fetch batch into staged files, checking that each
/// piece belongs to a requested hash and continues its blob exactly.
fn write_pieces(
    mut rx: tokio::sync::mpsc::Receiver<Vec<Piece>>,
    staging: &Staging,
    writes_by_hash: &WritesByHash,
    batch: &[Hash],
    received: &AtomicU64,
    files_done: &AtomicU64,
) -> Result<(), String> {
    let wanted: manifest::hash::HashSet = batch.iter().copied().collect();
    let mut open: manifest::hash::HashMap<(u64, Vec<StagedWriter>)> = Default::default();
    let mut done = manifest::hash::HashSet::default();
    while let Some(pieces) = rx.blocking_recv() {
        for piece in pieces {
            if !wanted.contains(&piece.hash) || done.contains(&piece.hash) {
                return Err(format!("peer sent content {} that was not asked for", piece.hash.short(16)));
            }
            if piece.missing {
                return Err(format!(
                    "peer no longer has content {} (its tree changed since the plan was made); sync again",
                    piece.hash.short(16)
                ));
            }
            let (offset, writers) = match open.entry(piece.hash) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let mut writers = Vec::new();
                    for n in writes_by_hash.writes_of(piece.hash) {
                        let (op, path, file) = writes_by_hash.written(n);
                        writers.push(staging.writer(op, &path, file).map_err(|e| e.to_string())?);
                    }
                    entry.insert((0, writers))
                }
            };
            if piece.offset != *offset {
                return Err(format!(
                    "peer sent content {} out of order (offset {}, expected {offset})",
                    piece.hash.short(16),
                    piece.offset
                ));
            }
            for writer in writers.iter_mut() {
                writer.write_chunk(&piece.data).map_err(|e| e.to_string())?;
            }
            *offset += piece.data.len() as u64;
            received.fetch_add(piece.data.len() as u64, Ordering::Relaxed);
            if piece.eof {
                let (_, writers) = open.remove(&piece.hash).expect("open");
                for writer in writers {
                    writer.finish().map_err(|e| e.to_string())?;
                    files_done.fetch_add(1, Ordering::Relaxed);
                }
                done.insert(piece.hash);
            }
        }
    }
    if let Some(unfinished) = wanted.iter().find(|h| !done.contains(h)) {
        return Err(format!(
            "peer's content stream ended before content {} was complete (of {} asked for, {} arrived)",
            unfinished.short(16),
            wanted.len(),
            done.len()
        ));
    }
    Ok(())
}

/// Rehashes the tree and lists every path that differs from `manifest`.
pub async fn verify_tree(root: PathBuf, excludes: Excludes, manifest: Arc<Manifest>) -> Result<Verified, String> {
    blocking(move || {
        let options = manifest::ScanOptions { excludes, ..manifest::ScanOptions::default() };
        let scan = manifest::scan(&root, &options, None).map_err(|e| e.to_string())?;
        let plan = manifest::diff(&scan.manifest, &manifest);
        let mismatches = plan
            .ops
            .iter()
            .filter(|op| op.is_itemized())
            .map(|op| Mismatch {
                path: op.path().clone(),
                expected: describe_expected(op),
                actual: describe_actual(&scan.manifest, op.path()),
            })
            .collect();
        Ok(Verified {
            files_checked: scan.manifest.totals().files,
            bytes_checked: scan.report.bytes_hashed,
            mismatches,
        })
    })
    .await
}

/// The result of [`verify_tree`].
#[derive(Debug, Clone)]
pub struct Verified {
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub mismatches: Vec<Mismatch>,
}

/// One path that is not what the manifest says.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub path: RelPath,
    pub expected: String,
    pub actual: String,
}

fn describe_expected(op: &Op) -> String {
    match op {
        Op::Delete { kind, .. } => format!("no {} here", kind.as_str()),
        Op::MkDir { .. } | Op::NewTree { .. } => "a directory".to_owned(),
        Op::WriteFile { file, .. } | Op::SetFileMeta { file, .. } => {
            format!("file {} bytes, mode {:o}, content {}", file.size, file.mode, file.hash.short(16))
        }
        Op::Symlink { link, .. } => format!("symlink to {}", manifest::path::escape(&link.target)),
        Op::SetDirMeta { meta, .. } => format!("directory mode {:o}", meta.mode),
    }
}

fn describe_actual(actual: &Manifest, path: &RelPath) -> String {
    match actual.get(path) {
        None => "missing".to_owned(),
        Some(manifest::Node::File(f)) => {
            format!("file {} bytes, mode {:o}, content {}", f.size, f.mode, f.hash.short(16))
        }
        Some(manifest::Node::Dir(d)) => format!("directory mode {:o}", d.meta.mode),
        Some(manifest::Node::Symlink(s)) => format!("symlink to {}", manifest::path::escape(&s.target)),
    }
}

fn progress(events: &(dyn Fn(Event) + Send + Sync), phase: &'static str, files_total: u64, bytes_total: u64) {
    events(Event::Progress { phase, files_done: 0, files_total, bytes_done: 0, bytes_total });
}

async fn discard(staging: Arc<Staging>) {
    let _ = blocking(move || {
        if let Ok(staging) = Arc::try_unwrap(staging) {
            let _ = staging.discard();
        }
    })
    .await;
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn unix_to_system(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// The peer type of a rollback, which never fetches.
enum NoPeer {}

impl PeerSource for NoPeer {
    async fn status(&self) -> Result<crate::remote::RemoteStatus, RemoteError> {
        match *self {}
    }
    async fn read_dirs(&self, _wanted: Vec<Wanted>) -> Result<Vec<crate::remote::Listing>, RemoteError> {
        match *self {}
    }
    async fn fetch(&self, _wanted: Vec<crate::remote::Wanted>) -> Result<crate::remote::PieceStream, RemoteError> {
        match *self {}
    }
    async fn read_changes(&self, _since: Hash) -> Result<Option<crate::remote::Changes>, RemoteError> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use manifest::PlanTotals;

    use super::*;

    fn write(path: &str, content: &str) -> Op {
        let file = crate::test_support::file_of(content.as_bytes());
        Op::WriteFile { path: RelPath::new(path).unwrap(), file, replaces: false }
    }

    #[test]
    fn each_content_is_fetched_once_in_plan_order_and_written_to_every_op_that_holds_it() {
        let ops = vec![
            write("z", "shared"),
            Op::MkDir { path: RelPath::new("d").unwrap(), meta: Default::default() },
            write("d/a", "only a"),
            write("d/b", "shared"),
            write("d/c", "local copy"),
            write("e", "shared"),
        ];
        let plan = Plan {
            from_root: Hash::default(),
            to_root: Hash::default(),
            ops,
            totals: PlanTotals::default(),
            id: manifest::PlanId([0; 8]),
        };
        // Writes: z 0, d/a 1, d/b 2, d/c 3, e 4. Write 3 was copied locally: it is not fetched.
        let writes = Writes::of(Arc::new(plan));
        let fetched = writes.files_by_hash([0, 1, 2, 4]);
        let by_hash = WritesByHash::new(writes, fetched);
        assert_eq!(by_hash.first_writes().collect::<Vec<_>>(), [0, 1]);
        let writes_of = |content: &str| by_hash.writes_of(Hash::of_content(content.as_bytes())).collect::<Vec<_>>();
        assert_eq!(writes_of("shared"), [0, 2, 4]);
        assert_eq!(writes_of("only a"), [1]);
        let (op, path, _) = by_hash.written(2);
        assert_eq!((op, path.to_string()), (3, "d/b".to_owned()));
        assert_eq!(writes_of("local copy"), Vec::<usize>::new());
        assert_eq!(writes_of("never planned"), Vec::<usize>::new());
    }
}
