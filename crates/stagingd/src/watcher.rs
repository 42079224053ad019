//! Keeps a tree's manifest current as files change.
//!
//! A direct inotify watch ([`crate::inotify_watch`]: one watch per directory,
//! changes only, no `IN_OPEN`, not on `.stagingd/` or excluded directories)
//! reports changed paths; they are collected until the tree has been quiet for
//! [`DEBOUNCE`] (or [`MAX_DELAY`] has passed since the first one), then only
//! those paths are looked at again (`manifest::scan::update_paths`: changed
//! files rehashed, new directories scanned whole, directory hashes recomputed up
//! to the root). A directory that appeared where the manifest already has one
//! (replaced, or made by a sync) is compared with it entry by entry on disk
//! (`manifest::scan::changed_below`), and only what differs is looked at again.
//! The result is
//! installed only if nothing else changed the manifest meanwhile; otherwise the
//! same paths are applied to the newer manifest.
//!
//! Why not the `notify` crate: it always watches `IN_OPEN` (and reports
//! `IN_CLOSE_NOWRITE`), so every file the daemon read — hashing, serving a peer's
//! `FetchContent` — was an event, and serving a full copy overflowed the queue
//! into a full rescan; and it watched `.stagingd/` too, where a sync stages every
//! file it fetches, waking the receiver for events it then threw away.
//!
//! Whatever cannot be followed event by event falls back to a full, stat-cached
//! rescan, logged and shown in status: a kernel queue overflow, our own event
//! queue filling up, a new directory that cannot be watched. If the watch cannot
//! be set up, or stops (the `fs.inotify.max_user_watches` limit, typically, also
//! when a new directory needs one more watch; or the tree root removed), the tree
//! is rescanned periodically instead and status says what to set. A periodic
//! safety rescan (default hourly, jittered) catches anything missed.
//!
//! The daemon's own writes: while a sync switches files (readiness `applying`)
//! events are held back, and the paths it wrote are then found unchanged
//! against the manifest the sync installed, so they do not count as local edits.
//! Its own reads are not events at all, and `.stagingd/` is not watched.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use manifest::{Manifest, RelPath, ScanOptions, ScanReport};
use proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::inotify_watch::{Change, Rescan, TreeWatch, WatchError};
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
    let (tx, mut rx) = mpsc::channel::<Change>(settings.queue_events.max(1));
    let overflowed = Arc::new(AtomicBool::new(false));
    let pending_tree = Arc::clone(&tree);
    let flag = Arc::clone(&overflowed);
    // Runs on the watch's reader thread, as each change is read.
    let sink = move |change: Change| {
        pending_tree.pending_events.fetch_add(1, Ordering::SeqCst);
        if tx.try_send(change).is_err() {
            // Our queue is full: the change is gone, so the manifest can only be
            // trusted again after a full rescan. It is not left counted as
            // pending (it would never be counted off): the full queue holds
            // counted changes, and the burst that takes them rescans before it
            // counts them off, so a sync still waits for that rescan.
            pending_tree.pending_events.fetch_sub(1, Ordering::SeqCst);
            flag.store(true, Ordering::SeqCst);
        }
    };
    // Adding a watch to every directory walks the tree: off the runtime's threads.
    let (name, root, excludes) = (tree.name.clone(), tree.root.clone(), tree.excludes.clone());
    let setup = tokio::task::spawn_blocking(move || TreeWatch::start(&name, &root, excludes, sink));
    let started = tokio::select! {
        _ = shutdown.cancelled() => return,
        started = setup => started.unwrap_or_else(|e| Err(WatchError::Other(format!("the watch setup failed: {e}")))),
    };
    // Dropping it (when this task ends) stops the reader thread.
    let mut watch = match started {
        Ok(watch) => {
            tree.set_watch_state(
                pb::WatchState::Watching,
                "inotify: changes reach the manifest within a second".into(),
            );
            tracing::info!(tree = %tree.name, directories = watch.dirs_watched(), "watching for changes");
            Some(watch)
        }
        Err(e) => {
            fall_back_to_polling(&tree, &e);
            None
        }
    };
    if watch.is_some() {
        // Changes made between the first scan and the watch being set up.
        full_rescan(&tree, "catching up after the first scan").await;
    }
    let mut next_safety_rescan = tokio::time::Instant::now() + jittered(settings.rescan_interval);
    loop {
        let watching = watch.is_some();
        let wait_for_rescan = if watching { next_safety_rescan } else { tokio::time::Instant::now() + POLL_INTERVAL };
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wait_for_rescan) => {
                full_rescan(&tree, if watching { "periodic safety rescan" } else { "polling" }).await;
                next_safety_rescan = tokio::time::Instant::now() + jittered(settings.rescan_interval);
                continue;
            }
            change = rx.recv(), if watching => match change {
                Some(change) => change,
                None => {
                    // The reader stopped on its own, after every change it sent.
                    let failure = watch.take().and_then(|w| w.failure()).unwrap_or_else(|| {
                        WatchError::Other("the inotify reader stopped; restart stagingd to watch again".into())
                    });
                    fall_back_to_polling(&tree, &failure);
                    full_rescan(&tree, "the watch stopped").await;
                    continue;
                }
            },
        };
        let mut burst = Burst::default();
        burst.add(first);
        let started = tokio::time::Instant::now();
        // Collect the rest of the burst. Hold it back while the first scan runs
        // (the manifest is not the tree yet) or a sync switches files: then wait
        // for the readiness to change, not for a deadline that has passed.
        let mut changes = tree.subscribe();
        let mut reader_ended = false;
        loop {
            let held = matches!(changes.borrow_and_update().readiness, Readiness::Applying | Readiness::Scanning);
            let deadline = (started + MAX_DELAY).min(tokio::time::Instant::now() + DEBOUNCE);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                change = rx.recv(), if !reader_ended => match change {
                    Some(change) => burst.add(change),
                    // Handled once this burst is in (the next receive says it again).
                    None => reader_ended = true,
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
        } else if let Some(why) = burst.rescan {
            tracing::warn!(tree = %tree.name, "{}: rescanning the whole tree", why.explain());
            full_rescan(&tree, why.reason()).await;
        } else if !burst.paths.is_empty() || !burst.new_dirs.is_empty() {
            tracing::debug!(
                tree = %tree.name,
                paths = burst.paths.len(),
                new_dirs = burst.new_dirs.len(),
                first = ?burst.paths.iter().chain(&burst.new_dirs).take(8).collect::<Vec<_>>(),
                "changed paths"
            );
            update(&tree, burst.paths, burst.new_dirs).await;
        }
        tree.pending_events.fetch_sub(taken.min(tree.pending_events.load(Ordering::SeqCst)), Ordering::SeqCst);
    }
}

/// Status and log when events cannot be had: the tree is rescanned every
/// [`POLL_INTERVAL`] instead, and the detail says what would fix it.
fn fall_back_to_polling(tree: &TreeState, e: &WatchError) {
    let detail = match e {
        WatchError::Limit => format!(
            "the inotify watch limit is too low for this tree ({} directories): set \
             `sysctl fs.inotify.max_user_watches={}` (and in /etc/sysctl.d/) and restart stagingd; \
             until then the tree is rescanned every {} s",
            tree.view().manifest.totals().dirs + 1,
            watches_to_set(tree.view().manifest.totals().dirs),
            POLL_INTERVAL.as_secs()
        ),
        WatchError::Other(why) => {
            format!("cannot watch the tree ({why}); rescanning every {} s instead", POLL_INTERVAL.as_secs())
        }
    };
    tracing::error!(tree = %tree.name, "{detail}");
    tree.set_watch_state(pb::WatchState::Polling, detail);
}

/// Paths changed in one burst, relative to the tree root.
#[derive(Default)]
struct Burst {
    paths: BTreeSet<RelPath>,
    /// Directories that appeared (created or moved in).
    new_dirs: BTreeSet<RelPath>,
    rescan: Option<Rescan>,
    events: usize,
}

impl Burst {
    fn add(&mut self, change: Change) {
        self.events += 1;
        match change {
            // The root's own metadata is not in the manifest's hashes.
            Change::Path(path) if path.is_root() => {}
            Change::Path(path) => {
                self.paths.insert(path);
            }
            Change::NewDir { dir } => {
                self.new_dirs.insert(dir);
            }
            Change::Rescan(why) => {
                self.rescan.get_or_insert(why);
            }
        }
    }
}

/// Applies one burst of changed paths to the manifest.
async fn update(tree: &Arc<TreeState>, paths: BTreeSet<RelPath>, new_dirs: BTreeSet<RelPath>) {
    for _attempt in 0..5 {
        let base = tree.view().manifest;
        let (root, excludes) = (tree.root.clone(), tree.excludes.clone());
        let (changed, appeared) = (paths.clone(), new_dirs.clone());
        let base_for_work = Arc::clone(&base);
        let result = tokio::task::spawn_blocking(move || {
            let options = ScanOptions { excludes, ..ScanOptions::default() };
            apply_changes(&root, &options, &base_for_work, changed, &appeared)
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
            // What only the replaced manifest held (the changed directories' old
            // versions) is free now: give its pages back.
            drop(base);
            tokio::task::spawn_blocking(crate::memory::release_freed);
            return;
        }
        // A sync or rescan installed a newer manifest meanwhile: apply the same
        // paths to that one.
    }
    full_rescan(tree, "the manifest kept changing under the watcher").await;
}

/// `base` brought up to date for `paths` and the directories that appeared.
///
/// `update_paths` scans a directory whole only if the manifest does not hold
/// it; one that appeared where the manifest has a directory already (the old
/// one moved away or deleted and a new one made, or made by a sync that
/// installed it) is only refreshed itself. So what is below it is compared with
/// the manifest on disk, an `lstat` an entry, and the paths that differ (new,
/// gone or changed; after a sync, usually none) are looked at too.
fn apply_changes(
    root: &Path,
    options: &ScanOptions,
    base: &Manifest,
    mut paths: BTreeSet<RelPath>,
    new_dirs: &BTreeSet<RelPath>,
) -> (Manifest, ScanReport) {
    let mut listed: HashSet<&RelPath> = HashSet::new();
    for dir in new_dirs {
        paths.insert(dir.clone());
        // A directory inside one compared (or to be scanned) already: the set is sorted, parents first.
        if std::iter::successors(dir.parent(), RelPath::parent).any(|above| listed.contains(&above)) {
            continue;
        }
        // Below one the manifest does not hold, `update_paths` scans it whole.
        paths.extend(manifest::scan::changed_below(root, options, base, dir));
        listed.insert(dir);
    }
    let mut next = base.clone();
    let report = manifest::scan::update_paths(root, options, &mut next, paths);
    (next, report)
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Instant;

    use manifest::Excludes;

    use super::*;
    use crate::config::TreeConfig;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn scanned(root: &Path) -> Manifest {
        manifest::scan(root, &ScanOptions::default(), None::<&Manifest>).unwrap().manifest
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let until = Instant::now() + DEADLINE;
        while !condition() {
            assert!(Instant::now() < until, "timed out after {DEADLINE:?} waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A directory moved away and a new one made under its name, filled at
    /// once: the manifest held the old one, so without looking at every path
    /// below it the old files would stay and the new ones made before the
    /// watch on the new directory existed would be missing.
    #[test]
    fn a_replaced_directory_is_brought_up_to_date_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d/s")).unwrap();
        fs::write(root.join("d/a.php"), "a").unwrap();
        fs::write(root.join("d/b.php"), "b").unwrap();
        fs::write(root.join("d/s/c.php"), "c").unwrap();
        let base = scanned(root);
        let (tx, rx) = std::sync::mpsc::channel();
        let _watch = TreeWatch::start("test", root, Excludes::default(), move |change| {
            let _ = tx.send(change);
        })
        .unwrap();

        fs::rename(root.join("d"), root.join("d.old")).unwrap();
        fs::create_dir_all(root.join("d/s")).unwrap();
        fs::write(root.join("d/new.php"), "new").unwrap();
        fs::write(root.join("d/s/c.php"), "c, but another file").unwrap();
        fs::write(root.join("sentinel"), "s").unwrap();
        let mut burst = Burst::default();
        let until = Instant::now() + DEADLINE;
        loop {
            let change =
                rx.recv_timeout(until.saturating_duration_since(Instant::now())).expect("the sentinel's event");
            let done = change == Change::Path(RelPath::new("sentinel").unwrap());
            burst.add(change);
            if done {
                break;
            }
        }
        assert_eq!(burst.rescan, None);
        assert!(burst.new_dirs.contains(&RelPath::new("d").unwrap()), "{:?}", burst.new_dirs);
        let (updated, _) = apply_changes(root, &ScanOptions::default(), &base, burst.paths, &burst.new_dirs);
        let expected = scanned(root);
        assert_eq!(
            updated.walk().iter().map(|(path, _)| path.display()).collect::<Vec<_>>(),
            expected.walk().iter().map(|(path, _)| path.display()).collect::<Vec<_>>()
        );
        assert_eq!(updated.root_hash(), expected.root_hash());
    }

    fn tree_state(root: &Path, state: &Path) -> Arc<TreeState> {
        let config = TreeConfig { name: "staging".into(), root: root.to_path_buf(), excludes: Excludes::default() };
        Arc::new(TreeState::new(&config, state).unwrap())
    }

    /// A queue of one change overflows at once: the manifest still converges
    /// (full rescan), and the changes that did not fit are not left counted as
    /// pending, which would make every later sync wait and rescan.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_overflowing_queue_rescans_and_leaves_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.php"), "a").unwrap();
        let tree = tree_state(dir.path(), state.path());
        tree.rescan().await.unwrap();
        let shutdown = CancellationToken::new();
        let settings = WatchSettings { queue_events: 1, rescan_interval: Duration::from_secs(3600) };
        let task = tokio::spawn(run(Arc::clone(&tree), settings, shutdown.clone()));
        let watching = Arc::clone(&tree);
        tokio::task::spawn_blocking(move || {
            wait_for("the watch is set up", || watching.watch_state().0 == pb::WatchState::Watching);
        })
        .await
        .unwrap();
        for i in 0..300 {
            fs::write(dir.path().join(format!("burst-{i}.php")), format!("{i}")).unwrap();
        }
        let (converged, root) = (Arc::clone(&tree), dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            wait_for("the manifest has every file and nothing is pending", || {
                converged.view().manifest.root_hash() == scanned(&root).root_hash()
                    && converged.pending_events.load(Ordering::SeqCst) == 0
            });
        })
        .await
        .unwrap();
        assert_eq!(tree.view().manifest.totals().files, 301);
        shutdown.cancel();
        task.await.unwrap();
    }

    /// The root deleted under a running watch: status says the tree is polled,
    /// and why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_that_stops_falls_back_to_polling_and_says_why() {
        let parent = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let root = parent.path().join("tree");
        fs::create_dir(&root).unwrap();
        let tree = tree_state(&root, state.path());
        tree.rescan().await.unwrap();
        let shutdown = CancellationToken::new();
        let settings = WatchSettings { queue_events: 64, rescan_interval: Duration::from_secs(3600) };
        let task = tokio::spawn(run(Arc::clone(&tree), settings, shutdown.clone()));
        let observed = Arc::clone(&tree);
        tokio::task::spawn_blocking(move || {
            wait_for("the watch is set up", || observed.watch_state().0 == pb::WatchState::Watching);
            fs::remove_dir(&root).unwrap();
            wait_for("the tree is polled", || observed.watch_state().0 == pb::WatchState::Polling);
        })
        .await
        .unwrap();
        let detail = tree.watch_state().1;
        assert!(detail.contains("was deleted") && detail.contains("rescanning every 30 s"), "{detail}");
        shutdown.cancel();
        task.await.unwrap();
    }
}
