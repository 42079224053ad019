//! Keeps a tree's manifest current as files change.
//!
//! inotify (through `notify`) reports changed paths; they are collected until
//! the tree has been quiet for [`DEBOUNCE`] (or [`MAX_DELAY`] has passed since
//! the first one), then only those paths are looked at again
//! (`manifest::scan::update_paths`: changed files rehashed, new directories
//! scanned whole, directory hashes recomputed up to the root). The result is
//! installed only if nothing else changed the manifest meanwhile; otherwise the
//! same paths are applied to the newer manifest.
//!
//! Whatever cannot be followed event by event falls back to a full, stat-cached
//! rescan, logged and shown in status: a kernel queue overflow, our own event
//! queue filling up, a watcher error. If the watch cannot be set up at all (the
//! `fs.inotify.max_user_watches` limit, typically), the tree is rescanned
//! periodically instead and status says what to set. A periodic safety rescan
//! (default hourly, jittered) catches anything missed.
//!
//! The daemon's own writes: while a sync switches files (readiness `applying`)
//! events are held back, and the paths it wrote are then found unchanged
//! against the manifest the sync installed, so they do not count as local edits.
//! Events under the reserved `.stagingd/` directory are ignored.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use manifest::{RelPath, ScanOptions};
use notify::Watcher as _;
use proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::tree::{Readiness, TreeState};

/// Quiet time that ends a burst of events.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// A burst is processed at the latest this long after its first event.
pub const MAX_DELAY: Duration = Duration::from_millis(700);
/// How often the tree is rescanned when events cannot be had at all.
pub const POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Tuning of one tree's watcher.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Events buffered between the kernel and the manifest before falling back
    /// to a full rescan.
    pub queue_events: usize,
    /// The periodic safety rescan (jittered by up to a tenth).
    pub rescan_interval: Duration,
}

/// Watches `tree` until `shutdown`.
pub async fn run(tree: Arc<TreeState>, settings: WatchSettings, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<notify::Result<notify::Event>>(settings.queue_events.max(1));
    let overflowed = Arc::new(AtomicBool::new(false));
    let pending_tree = Arc::clone(&tree);
    let flag = Arc::clone(&overflowed);
    let handler = move |event: notify::Result<notify::Event>| {
        if event.as_ref().is_ok_and(is_read_only) {
            return;
        }
        pending_tree.pending_events.fetch_add(1, Ordering::SeqCst);
        if tx.try_send(event).is_err() {
            // Our queue is full: the events are gone, so the manifest can only be
            // trusted again after a full rescan.
            flag.store(true, Ordering::SeqCst);
        }
    };
    // Never follow symlinks: a link to a directory inside the tree would be
    // watched twice and report changes under the link's path, which is not a
    // directory in the manifest (and a link out of the tree is not ours to watch).
    let config = notify::Config::default().with_follow_symlinks(false);
    let watcher = notify::RecommendedWatcher::new(handler, config).and_then(|mut watcher| {
        watcher.watch(&tree.root, notify::RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    let _watcher = match watcher {
        Ok(watcher) => {
            tree.set_watch_state(
                pb::WatchState::Watching,
                "inotify: changes reach the manifest within a second".into(),
            );
            tracing::info!(tree = %tree.name, "watching for changes");
            Some(watcher)
        }
        Err(e) => {
            let detail = match e.kind {
                notify::ErrorKind::MaxFilesWatch => format!(
                    "the inotify watch limit is too low for this tree ({} directories): set \
                     `sysctl fs.inotify.max_user_watches={}` (and in /etc/sysctl.d/) and restart stagingd; \
                     until then the tree is rescanned every {} s",
                    tree.view().manifest.totals().dirs + 1,
                    watches_to_set(tree.view().manifest.totals().dirs),
                    POLL_INTERVAL.as_secs()
                ),
                _ => format!("cannot watch the tree ({e}); rescanning every {} s instead", POLL_INTERVAL.as_secs()),
            };
            tracing::error!(tree = %tree.name, "{detail}");
            tree.set_watch_state(pb::WatchState::Polling, detail);
            None
        }
    };
    let watching = _watcher.is_some();
    if watching {
        // Changes made between the first scan and the watch being set up.
        full_rescan(&tree, "catching up after the first scan").await;
    }
    let mut next_safety_rescan = tokio::time::Instant::now() + jittered(settings.rescan_interval);
    loop {
        let wait_for_rescan = if watching { next_safety_rescan } else { tokio::time::Instant::now() + POLL_INTERVAL };
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wait_for_rescan) => {
                full_rescan(&tree, if watching { "periodic safety rescan" } else { "polling" }).await;
                next_safety_rescan = tokio::time::Instant::now() + jittered(settings.rescan_interval);
                continue;
            }
            event = rx.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let mut burst = Burst::default();
        burst.add(&tree.root, first);
        let started = tokio::time::Instant::now();
        // Collect the rest of the burst. Hold it back while the first scan runs
        // (the manifest is not the tree yet) or a sync switches files: then wait
        // for the readiness to change, not for a deadline that has passed.
        let mut changes = tree.subscribe();
        loop {
            let held = matches!(changes.borrow_and_update().readiness, Readiness::Applying | Readiness::Scanning);
            let deadline = (started + MAX_DELAY).min(tokio::time::Instant::now() + DEBOUNCE);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = rx.recv() => match event {
                    Some(event) => burst.add(&tree.root, event),
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline), if !held => break,
                changed = changes.changed(), if held => if changed.is_err() { return },
            }
        }
        let taken = burst.events;
        crate::metrics::global().watch_events(&tree.name, taken);
        if overflowed.swap(false, Ordering::SeqCst) {
            tracing::warn!(tree = %tree.name, "watch queue overflowed: rescanning the whole tree");
            full_rescan(&tree, "event queue overflow").await;
        } else if burst.rescan {
            tracing::warn!(tree = %tree.name, "the kernel dropped events (inotify queue overflow): rescanning the whole tree");
            full_rescan(&tree, "kernel event overflow").await;
        } else if !burst.paths.is_empty() {
            tracing::debug!(
                tree = %tree.name,
                paths = burst.paths.len(),
                first = ?burst.paths.iter().take(8).collect::<Vec<_>>(),
                "changed paths"
            );
            update(&tree, burst.paths).await;
        }
        tree.pending_events.fetch_sub(taken.min(tree.pending_events.load(Ordering::SeqCst)), Ordering::SeqCst);
    }
}

/// Opening, reading or closing a file without writing it changes nothing — and
/// the daemon itself reads files (hashing, serving peers), so counting those
/// would make every read look like a local edit.
fn is_read_only(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(event.kind, EventKind::Access(access) if !matches!(access, AccessKind::Close(AccessMode::Write)))
}

/// Paths changed in one burst, relative to the tree root.
#[derive(Default)]
struct Burst {
    paths: BTreeSet<RelPath>,
    rescan: bool,
    events: usize,
}

impl Burst {
    fn add(&mut self, root: &Path, event: notify::Result<notify::Event>) {
        self.events += 1;
        match event {
            Ok(event) if event.need_rescan() => self.rescan = true,
            Ok(event) => {
                for path in event.paths {
                    let Ok(relative) = path.strip_prefix(root) else { continue };
                    use std::os::unix::ffi::OsStrExt;
                    match RelPath::new(relative.as_os_str().as_bytes()) {
                        Ok(rel) if rel.is_root() => {}
                        Ok(rel) if rel.components().next() == Some(manifest::RESERVED_DIR.as_bytes()) => {}
                        Ok(rel) => {
                            self.paths.insert(rel);
                        }
                        // A name the path rules refuse: let a full scan report it.
                        Err(_) => self.rescan = true,
                    }
                }
            }
            Err(e) => {
                tracing::warn!("watcher error: {e}");
                self.rescan = true;
            }
        }
    }
}

/// Applies one burst of changed paths to the manifest.
async fn update(tree: &Arc<TreeState>, paths: BTreeSet<RelPath>) {
    for _attempt in 0..5 {
        let base = tree.view().manifest;
        let (root, excludes, changed) = (tree.root.clone(), tree.excludes.clone(), paths.clone());
        let base_for_work = Arc::clone(&base);
        let result = tokio::task::spawn_blocking(move || {
            let mut next = (*base_for_work).clone();
            let options = ScanOptions { excludes, ..ScanOptions::default() };
            let report = manifest::scan::update_paths(&root, &options, &mut next, changed);
            (next, report)
        })
        .await;
        let Ok((next, report)) = result else {
            tracing::error!(tree = %tree.name, "watcher update failed; rescanning");
            full_rescan(tree, "watcher update failed").await;
            return;
        };
        let readiness = tree.view().readiness;
        let root_before = base.root_hash();
        let root_after = next.root_hash();
        if tree.install_if(Some(&base), Arc::new(next), readiness, |_| {}) {
            if root_before != root_after {
                tracing::info!(
                    tree = %tree.name,
                    paths = paths.len(),
                    hashed = report.files_hashed,
                    root = %root_after,
                    "local change"
                );
            }
            return;
        }
        // A sync or rescan installed a newer manifest meanwhile: apply the same
        // paths to that one.
    }
    full_rescan(tree, "the manifest kept changing under the watcher").await;
}

async fn full_rescan(tree: &Arc<TreeState>, why: &str) {
    if matches!(tree.view().readiness, Readiness::Applying | Readiness::Scanning) {
        return;
    }
    tracing::info!(tree = %tree.name, why, "rescanning the tree");
    crate::metrics::global().rescan(&tree.name, why);
    if let Err(e) = tree.rescan().await {
        tracing::error!(tree = %tree.name, "rescan failed: {e:#}");
    }
}

/// The interval plus up to a tenth more, so masters do not rescan in step.
fn jittered(interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    interval + interval.mul_f64(f64::from(nanos % 1000) / 10_000.0)
}

/// A watch limit with room for growth: twice the directories, at least 65,536.
fn watches_to_set(dirs: u64) -> u64 {
    (dirs * 2).max(65_536)
}
