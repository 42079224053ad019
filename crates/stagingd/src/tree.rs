//! One managed tree: its current manifest, readiness and root-change channel.
//!
//! The manifest is immutable once built and shared as an `Arc`; a scan (or, later,
//! an apply or a watcher update) builds a new one and swaps it in. Readers —
//! status, `ReadDir`, `FetchContent` — take a snapshot and never hold the lock
//! while they work. Scans run on the blocking pool, never on the runtime threads.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use manifest::{Excludes, Hash, Manifest, ScanOptions, cache};
use proto::v1 as pb;
use tokio::sync::watch;

use crate::config::{TreeConfig, tree_state_dir};
use crate::unix_now;

/// Whether a tree's manifest describes the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The first scan has not finished: the manifest is not the tree.
    Scanning,
    Ready,
    /// A sync is switching files: the tree is between two manifests.
    Applying,
    /// The last scan could not read some entries.
    Incomplete,
}

impl Readiness {
    pub fn to_proto(self) -> pb::Readiness {
        match self {
            Readiness::Scanning => pb::Readiness::Scanning,
            Readiness::Ready => pb::Readiness::Ready,
            Readiness::Applying => pb::Readiness::Applying,
            Readiness::Incomplete => pb::Readiness::Incomplete,
        }
    }
}

/// Directory hash → the path of one directory with that hash.
pub type DirIndex = std::collections::HashMap<Hash, manifest::RelPath>;

/// What the root-change channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootInfo {
    pub root: Hash,
    pub readiness: Readiness,
    pub changed_unix: i64,
}

/// A consistent view of the tree at one moment.
#[derive(Debug, Clone)]
pub struct TreeView {
    pub manifest: Arc<Manifest>,
    pub readiness: Readiness,
    pub unreadable: u64,
    pub manifest_updated_unix: i64,
    pub root_changed_unix: i64,
    pub last_scan_unix: i64,
    pub last_scan_millis: u64,
}

#[derive(Debug)]
pub struct TreeState {
    pub name: String,
    pub root: PathBuf,
    pub excludes: Excludes,
    /// `state_dir/trees/<name>`: stat cache, journal, history.
    pub state_dir: PathBuf,
    view: RwLock<TreeView>,
    root_tx: watch::Sender<RootInfo>,
    /// One sync or rollback at a time; a second is refused (`busy`), never queued.
    pub lock: sync::TreeLock,
    /// The last sync or rollback and how it ended, for status.
    last_sync: std::sync::Mutex<Option<pb::LastSync>>,
    /// How changes are noticed (watcher state and a sentence for status).
    watch: std::sync::Mutex<(pb::WatchState, String)>,
    /// Watcher events received and not yet folded into the manifest: a sync
    /// waits for this to reach zero before it plans.
    pub pending_events: std::sync::atomic::AtomicUsize,
    /// Directory hash → path for the manifest with this root, built on the
    /// first `ReadDir` by hash and kept until the root changes: a peer planning
    /// a full copy lists every directory, and each lookup must not walk the tree.
    dir_index: std::sync::Mutex<Option<(Hash, Arc<DirIndex>)>>,
    /// What changed from one root to the next, for `ReadChanges`.
    changes: std::sync::Mutex<crate::changelog::ChangeLog>,
    /// Held while the stat cache is written (see `save_cache`).
    cache_writer: std::sync::Mutex<()>,
}

impl TreeState {
    pub fn new(config: &TreeConfig, state_dir: &std::path::Path) -> anyhow::Result<Self> {
        let dir = tree_state_dir(state_dir, &config.name);
        fs_err::create_dir_all(&dir)?;
        let manifest = Arc::new(Manifest::empty());
        let info = RootInfo { root: manifest.root_hash(), readiness: Readiness::Scanning, changed_unix: 0 };
        Ok(Self {
            name: config.name.clone(),
            root: config.root.clone(),
            excludes: config.excludes.clone(),
            state_dir: dir,
            view: RwLock::new(TreeView {
                manifest,
                readiness: Readiness::Scanning,
                unreadable: 0,
                manifest_updated_unix: 0,
                root_changed_unix: 0,
                last_scan_unix: 0,
                last_scan_millis: 0,
            }),
            root_tx: watch::channel(info).0,
            lock: sync::TreeLock::new(),
            last_sync: std::sync::Mutex::new(None),
            watch: std::sync::Mutex::new((
                pb::WatchState::Disabled,
                "not watching yet: the manifest is rebuilt at start and before each sync".to_owned(),
            )),
            pending_events: std::sync::atomic::AtomicUsize::new(0),
            dir_index: std::sync::Mutex::new(None),
            changes: std::sync::Mutex::new(crate::changelog::ChangeLog::default()),
            cache_writer: std::sync::Mutex::new(()),
        })
    }

    pub fn cache_path(&self) -> PathBuf {
        self.state_dir.join(cache::CACHE_FILE)
    }

    /// Writes `manifest` as this tree's stat cache (blocking). One writer at a
    /// time: they share the temporary file name.
    pub fn save_cache(&self, manifest: &Manifest) -> std::io::Result<()> {
        let _one_writer = self.cache_writer.lock().unwrap_or_else(|p| p.into_inner());
        cache::save(manifest, &self.root, &self.cache_path())
    }

    /// Saves the current manifest as the stat cache in the background, after a
    /// sync or rollback: the next sync's before-manifest (what its rollback
    /// restores) is then a hard link to it, not 110 bytes per entry written again.
    pub fn save_cache_later(self: &Arc<Self>) {
        let tree = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let manifest = tree.view().manifest;
            if let Err(e) = tree.save_cache(&manifest) {
                tracing::warn!(tree = %tree.name, "cannot write stat cache {}: {e}", tree.cache_path().display());
            }
            // Again, now that the sync's and this save's temporary memory is free too:
            // after a full copy that is more than half the heap.
            crate::memory::release_freed();
        });
    }

    /// A snapshot of the current view.
    pub fn view(&self) -> TreeView {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<RootInfo> {
        self.root_tx.subscribe()
    }

    /// The index of `manifest`'s directories by hash (see `dir_index`).
    pub fn dir_index(&self, manifest: &Manifest) -> Arc<DirIndex> {
        let root = manifest.root_hash();
        let mut slot = self.dir_index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((indexed, index)) = slot.as_ref()
            && *indexed == root
        {
            return Arc::clone(index);
        }
        fn visit(
            dir: &manifest::Dir,
            path: &manifest::RelPath,
            out: &mut std::collections::HashMap<Hash, manifest::RelPath>,
        ) {
            out.entry(dir.hash()).or_insert_with(|| path.clone());
            for entry in dir.children() {
                if let manifest::Node::Dir(child) = &entry.node
                    && let Ok(child_path) = path.join(&entry.name)
                {
                    visit(child, &child_path, out);
                }
            }
        }
        let mut index = std::collections::HashMap::with_capacity(manifest.totals().dirs as usize + 1);
        visit(manifest.root(), &manifest::RelPath::root(), &mut index);
        let index = Arc::new(index);
        *slot = Some((root, Arc::clone(&index)));
        index
    }

    /// The paths changed since this tree had root `since`, up to the manifest
    /// with root `current` (see `changelog`).
    pub fn changes_since(&self, since: Hash, current: Hash) -> Option<Vec<manifest::RelPath>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).since(since, current)
    }

    pub fn watch_state(&self) -> (pb::WatchState, String) {
        self.watch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_watch_state(&self, state: pb::WatchState, detail: String) {
        *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = (state, detail);
    }

    /// Scans the tree (reusing the current manifest, or the stat cache on the
    /// first scan) and installs the result unless another change to the manifest
    /// was installed meanwhile; persists the stat cache.
    pub async fn rescan(self: &Arc<Self>) -> anyhow::Result<()> {
        let tree = Arc::clone(self);
        let base = self.view().manifest;
        let previous = (self.view().readiness != Readiness::Scanning).then(|| Arc::clone(&base));
        let (scan, elapsed) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let started = Instant::now();
            let options = ScanOptions { excludes: tree.excludes.clone(), ..ScanOptions::default() };
            let scan = match &previous {
                Some(current) => manifest::scan(&tree.root, &options, Some(&**current))?,
                None => {
                    // First scan: the persisted stat cache, consumed as the walk goes.
                    let cached = cache::load(&tree.cache_path(), &tree.root).unwrap_or_else(|e| {
                        tracing::warn!(tree = %tree.name, "{e}");
                        None
                    });
                    manifest::scan(&tree.root, &options, manifest::scan::Previous::owned(cached))?
                }
            };
            if let Err(e) = tree.save_cache(&scan.manifest) {
                tracing::warn!(tree = %tree.name, "cannot write stat cache {}: {e}", tree.cache_path().display());
            }
            Ok((scan, started.elapsed()))
        })
        .await??;
        let report = &scan.report;
        for skipped in report.skipped.iter().take(20) {
            tracing::warn!(tree = %self.name, path = %skipped.path, "left out of the manifest: {}", skipped.reason);
        }
        let unreadable =
            report.skipped.iter().filter(|s| !matches!(s.reason, manifest::SkipReason::Special(_))).count();
        tracing::info!(
            tree = %self.name,
            root = %scan.manifest.root_hash(),
            files = scan.manifest.totals().files,
            hashed = report.files_hashed,
            reused = report.files_reused,
            unreadable,
            millis = elapsed.as_millis() as u64,
            "scan complete"
        );
        let readiness = if report.is_complete() { Readiness::Ready } else { Readiness::Incomplete };
        let installed = self.install_if(Some(&base), Arc::new(scan.manifest), readiness, |view| {
            view.unreadable = unreadable as u64;
            view.last_scan_unix = unix_now();
            view.last_scan_millis = elapsed.as_millis() as u64;
        });
        if !installed {
            tracing::debug!(tree = %self.name, "a newer manifest was installed during the scan; keeping it");
        }
        drop(base);
        tokio::task::spawn_blocking(crate::memory::release_freed);
        Ok(())
    }

    /// Swaps in a new manifest and tells root subscribers when the root moved —
    /// only if the current manifest is still `base` (the one the new manifest was
    /// computed from), so a watcher update, a rescan and a sync never overwrite
    /// each other's newer result. `None` installs unconditionally.
    pub fn install_if(
        &self,
        base: Option<&Arc<Manifest>>,
        manifest: Arc<Manifest>,
        readiness: Readiness,
        extra: impl FnOnce(&mut TreeView),
    ) -> bool {
        let now = unix_now();
        let new = Arc::clone(&manifest);
        let (info, old) = {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            if base.is_some_and(|base| !Arc::ptr_eq(base, &view.manifest)) {
                return false;
            }
            if view.manifest.root_hash() != manifest.root_hash() || view.root_changed_unix == 0 {
                view.root_changed_unix = now;
            }
            let old = std::mem::replace(&mut view.manifest, manifest);
            view.readiness = readiness;
            view.manifest_updated_unix = now;
            extra(&mut view);
            (RootInfo { root: view.manifest.root_hash(), readiness, changed_unix: view.root_changed_unix }, old)
        };
        if old.root_hash() != new.root_hash() {
            let paths = manifest::changed_paths(&old, &new, crate::changelog::MAX_PATHS);
            self.changes.lock().unwrap_or_else(|p| p.into_inner()).record(old.root_hash(), new.root_hash(), paths);
        }
        self.root_tx.send_if_modified(|current| {
            let changed = current.root != info.root || current.readiness != info.readiness;
            *current = info;
            changed
        });
        true
    }

    /// Marks the tree as mid-apply (or back), for `source-not-ready` on peers.
    pub fn set_readiness(&self, readiness: Readiness) {
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.readiness = readiness;
        let info = RootInfo { root: view.manifest.root_hash(), readiness, changed_unix: view.root_changed_unix };
        drop(view);
        self.root_tx.send_replace(info);
    }

    pub fn set_last_sync(&self, last: pb::LastSync) {
        *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
    }

    /// This tree's entry in a status answer.
    pub fn status(&self) -> pb::TreeStatus {
        let view = self.view();
        let totals = view.manifest.totals();
        let space = crate::space::probe(&self.root);
        let watch = self.watch_state();
        pb::TreeStatus {
            name: self.name.clone(),
            readiness: view.readiness.to_proto().into(),
            root_hash: view.manifest.root_hash().as_bytes().to_vec(),
            files: totals.files,
            dirs: totals.dirs,
            symlinks: totals.symlinks,
            bytes: totals.bytes,
            fs_free_bytes: space.free_bytes,
            fs_free_inodes: space.free_inodes,
            fs_total_bytes: space.total_bytes,
            fs_total_inodes: space.total_inodes,
            manifest_updated_unix: view.manifest_updated_unix,
            root_changed_unix: view.root_changed_unix,
            last_sync: self.last_sync.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            unreadable_files: view.unreadable,
            watch_state: watch.0.into(),
            watch_detail: watch.1,
            last_scan_unix: view.last_scan_unix,
            last_scan_millis: view.last_scan_millis,
        }
    }
}
