//! A direct inotify watch of one tree: one watch per directory, changes only.
//!
//! Why not the `notify` crate: its inotify mask always holds `IN_OPEN` (and it
//! reports `IN_CLOSE_NOWRITE`), so every file the daemon itself reads — hashing,
//! serving a peer's `FetchContent` — was an event, and serving a full copy of a
//! large tree overflowed the queue; and it watches recursively with no way to
//! leave a directory out, so a sync staging 150k files under `<root>/.stagingd/`
//! woke the receiver for every one of them.
//!
//! Here the mask is [`MASK`]: creations, deletions, writes, attribute changes
//! and renames, nothing about opening or reading. Watches are added to
//! directories only (`IN_ONLYDIR`), from the root down, never through a symlink
//! (`IN_DONT_FOLLOW`; a symlink to a directory is an entry, not a directory), and
//! never on the reserved `.stagingd` directory or a directory the tree's
//! excludes leave out (`Excludes::is_excluded`, as the scan decides: a walk that
//! does not descend into an excluded directory).
//!
//! A reader thread waits in poll(2) on the inotify descriptor and on a pipe whose
//! write end [`TreeWatch`] holds: dropping the `TreeWatch` ends the thread at
//! once. The thread owns the map watch descriptor → directory path and turns
//! each event into a [`Change`]:
//! - A directory created or moved in is watched at once, recursively, and
//!   reported as a whole ([`Change::NewDir`]): what was created in it before its
//!   watch existed has no event of its own, so the watcher compares everything
//!   below it with the manifest (or scans it, if the manifest has no such
//!   directory). Its entries are not listed: after a sync renamed a
//!   1,000,000-file tree into place, that list alone was ~85 MB.
//! - A directory moved away (`IN_MOVED_FROM`) loses its watches and those of
//!   its subdirectories, whose paths are stale from then on; if it was moved to
//!   a place inside the tree, the `IN_MOVED_TO` that follows adds them again
//!   under the new path. (Re-pathing them instead would need the two events
//!   paired by cookie, and a directory moved out of the tree has no second one.)
//! - `IN_IGNORED` (a watched directory deleted, or a watch removed) forgets the
//!   descriptor. Events that still arrive for a forgotten descriptor are ignored:
//!   the move or deletion that dropped it is reported through its parent.
//! - `IN_Q_OVERFLOW`: events were lost, and so may be the creations of
//!   directories that now lack a watch. Every watch is added again from the root
//!   (mark and sweep: descriptors not found again are removed) and a full
//!   rescan is asked for ([`Rescan::KernelOverflow`]).
//! - The tree root deleted, moved or unmounted, or a watch refused for the
//!   watch limit (`ENOSPC`, `fs.inotify.max_user_watches`): the reader stops
//!   and [`TreeWatch::failure`] says why; the caller polls instead.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use manifest::{Excludes, RelPath};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

/// What every directory is watched for. Nothing about opening, reading or
/// closing without writing: the daemon reads files all the time.
pub const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);

/// Bytes read from the inotify descriptor at a time (a few thousand events).
const READ_BUFFER: usize = 64 * 1024;

/// One thing the watch noticed, relative to the tree root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The entry at this path may have changed: written, created, removed,
    /// renamed from or to here, or its mode, owner or times changed.
    Path(RelPath),
    /// A directory appeared at `dir` (created or moved in) and is watched now,
    /// with everything below it. Whatever was made in it before its watch
    /// existed has no event of its own, and a directory that replaced another
    /// of the same name may hold anything: all of it is to be looked at.
    NewDir { dir: RelPath },
    /// Events were lost or cannot be told as paths: only a full rescan makes the
    /// manifest right again.
    Rescan(Rescan),
}

/// Why a [`Change::Rescan`] was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescan {
    /// `IN_Q_OVERFLOW`: the kernel's event queue overflowed.
    KernelOverflow,
    /// A name the path rules refuse: a full scan reports it.
    BadName,
    /// A new directory could not be watched (logged with its path and error).
    Unwatched,
    /// A filesystem mounted inside the tree was unmounted.
    Unmounted,
}

impl Rescan {
    /// The reason as the rescan metric labels it.
    pub fn reason(self) -> &'static str {
        match self {
            Rescan::KernelOverflow => "kernel event overflow",
            Rescan::BadName => "unnamed change",
            Rescan::Unwatched => "unwatched directory",
            Rescan::Unmounted => "unmounted filesystem",
        }
    }

    /// A sentence for the log.
    pub fn explain(self) -> &'static str {
        match self {
            Rescan::KernelOverflow => "the kernel dropped events (inotify queue overflow)",
            Rescan::BadName => "a change under a name the path rules refuse",
            Rescan::Unwatched => "a new directory could not be watched",
            Rescan::Unmounted => "a filesystem inside the tree was unmounted",
        }
    }
}

/// Why the tree cannot be watched (any more).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// `inotify_add_watch` said `ENOSPC`: `fs.inotify.max_user_watches` is reached.
    #[error("the inotify watch limit (fs.inotify.max_user_watches) is reached")]
    Limit,
    #[error("{0}")]
    Other(String),
}

/// A running watch of one tree. Dropping it stops the reader thread.
#[derive(Debug)]
pub struct TreeWatch {
    /// The pipe's write end, held only to be closed when the watch is
    /// dropped: that wakes the reader, which then ends.
    _stop: io::PipeWriter,
    /// Why the reader stopped on its own, set before it drops the sink.
    ended: Arc<Mutex<Option<WatchError>>>,
    dirs: usize,
}

impl TreeWatch {
    /// Watches every directory of the tree at `root` (except `.stagingd` and
    /// excluded ones) and starts the reader thread, which hands each change to
    /// `sink`. Walks every directory: call it on a blocking thread. `name`
    /// names the thread.
    pub fn start(
        name: &str,
        root: &Path,
        excludes: Excludes,
        mut sink: impl FnMut(Change) + Send + 'static,
    ) -> Result<Self, WatchError> {
        let inotify = Inotify::init().map_err(|e| {
            let hint = if Errno::from_io_error(&e) == Some(Errno::MFILE) {
                ": too many inotify instances; raise `sysctl fs.inotify.max_user_instances`"
            } else {
                ""
            };
            WatchError::Other(format!("cannot create an inotify instance ({e}){hint}"))
        })?;
        let mut dirs = Dirs {
            root: root.to_path_buf(),
            excludes,
            watches: inotify.watches(),
            by_wd: HashMap::new(),
            generation: 0,
        };
        // The root must be there (below it, a directory gone meanwhile is skipped).
        dirs.watches.add(root, MASK).map_err(|e| match Errno::from_io_error(&e) {
            Some(Errno::NOSPC) => WatchError::Limit,
            _ => WatchError::Other(format!("cannot watch the tree root {}: {e}", root.display())),
        })?;
        let added = dirs.add_tree(&RelPath::root())?;
        if let Some((dir, e)) = added.problems.first() {
            let more = match added.problems.len() {
                1 => String::new(),
                n => format!(" (and {} more directories)", n - 1),
            };
            return Err(WatchError::Other(format!(
                "cannot watch directory {}: {e}{more}; make it readable by stagingd or exclude it",
                dirs.abs(dir).display()
            )));
        }
        let watched = dirs.by_wd.len();
        let (stop_reader, stop) =
            io::pipe().map_err(|e| WatchError::Other(format!("cannot create the watcher's stop pipe: {e}")))?;
        let ended = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&ended);
        std::thread::Builder::new()
            .name(format!("inotify {name}"))
            .spawn(move || {
                let end = read_events(inotify, dirs, &stop_reader, &mut sink);
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = end;
                // Only now: the caller learns of the end by its channel closing.
                drop(sink);
            })
            .map_err(|e| WatchError::Other(format!("cannot start the watcher thread: {e}")))?;
        Ok(Self { _stop: stop, ended, dirs: watched })
    }

    /// Directories watched when the watch started.
    pub fn dirs_watched(&self) -> usize {
        self.dirs
    }

    /// Why the reader stopped on its own, once it has.
    pub fn failure(&self) -> Option<WatchError> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The reader: waits for events or the stop pipe, hands changes to `sink`.
/// Returns why it stopped on its own, `None` when asked to stop.
fn read_events(
    mut inotify: Inotify,
    mut dirs: Dirs,
    stop: &io::PipeReader,
    sink: &mut impl FnMut(Change),
) -> Option<WatchError> {
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut changes = Vec::new();
    loop {
        let (events_ready, stop_ready) = {
            let mut fds = [PollFd::new(&inotify, PollFlags::IN), PollFd::new(stop, PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Some(WatchError::Other(format!("waiting for inotify events failed: {e}"))),
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
        };
        // The write end closed (or, never, written to): the watch was dropped.
        if stop_ready {
            return None;
        }
        if !events_ready {
            continue;
        }
        let events = match inotify.read_events(&mut buffer) {
            Ok(events) => events,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            Err(e) => return Some(WatchError::Other(format!("reading inotify events failed: {e}"))),
        };
        let mut failure = None;
        for event in events {
            if let Err(e) = dirs.handle(event.wd, event.mask, event.name, &mut changes) {
                failure = Some(e);
                break;
            }
        }
        // One change per path and read: writing a file is a create, modifies and
        // a close, and they mean the same thing.
        let mut seen = HashSet::new();
        for change in changes.drain(..) {
            if let Change::Path(path) = &change
                && !seen.insert(path.clone())
            {
                continue;
            }
            sink(change);
        }
        if failure.is_some() {
            return failure;
        }
    }
}

/// The watched directories of one tree.
struct Dirs {
    root: PathBuf,
    excludes: Excludes,
    watches: Watches,
    /// Watch descriptor → the directory's path and the walk that last saw it.
    by_wd: HashMap<i32, Watched>,
    /// Bumped by each walk from the root after an overflow (mark and sweep).
    generation: u64,
}

struct Watched {
    wd: WatchDescriptor,
    path: RelPath,
    generation: u64,
}

/// What adding the watches of a subtree ran into, short of the watch limit.
#[derive(Default)]
struct Added {
    /// Directories that could not be watched or listed, with why.
    problems: Vec<(RelPath, io::Error)>,
    /// An entry whose name the path rules refuse was left out.
    bad_name: bool,
}

impl Dirs {
    fn abs(&self, path: &RelPath) -> PathBuf {
        if path.is_root() { self.root.clone() } else { self.root.join(path.as_path()) }
    }

    /// Turns one event into changes (and watches added or dropped).
    fn handle(
        &mut self,
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<&OsStr>,
        out: &mut Vec<Change>,
    ) -> Result<(), WatchError> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            out.push(Change::Rescan(Rescan::KernelOverflow));
            return self.rewatch_all(out);
        }
        let id = wd.get_watch_descriptor_id();
        if mask.contains(EventMask::IGNORED) {
            self.by_wd.remove(&id);
            return Ok(());
        }
        // A descriptor already forgotten: its directory was moved away, and the
        // move is reported through the parent.
        let Some(dir) = self.by_wd.get(&id).map(|watched| watched.path.clone()) else {
            return Ok(());
        };
        let Some(name) = name else {
            return self.handle_self(dir, mask, out);
        };
        let Ok(path) = dir.join(name.as_bytes()) else {
            out.push(Change::Rescan(Rescan::BadName));
            return Ok(());
        };
        if self.excludes.is_excluded(&path) {
            return Ok(());
        }
        if mask.contains(EventMask::ISDIR) {
            if mask.contains(EventMask::MOVED_FROM) {
                self.forget_under(&path);
            }
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                let added = self.add_tree(&path)?;
                self.report_problems(added, out);
                out.push(Change::NewDir { dir: path });
                return Ok(());
            }
        }
        out.push(Change::Path(path));
        Ok(())
    }

    /// An event about a watched directory itself.
    fn handle_self(&mut self, dir: RelPath, mask: EventMask, out: &mut Vec<Change>) -> Result<(), WatchError> {
        if dir.is_root() && mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::UNMOUNT) {
            let what = if mask.contains(EventMask::UNMOUNT) {
                "unmounted"
            } else if mask.contains(EventMask::MOVE_SELF) {
                "moved away"
            } else {
                "deleted"
            };
            return Err(WatchError::Other(format!(
                "the tree root {} was {what}; restart stagingd once it is in place again",
                self.root.display()
            )));
        }
        if mask.contains(EventMask::UNMOUNT) {
            // IN_IGNORED follows and forgets the watch.
            out.push(Change::Rescan(Rescan::Unmounted));
        } else if mask.contains(EventMask::MOVE_SELF) {
            // Normally its parent's IN_MOVED_FROM came first and this watch is
            // forgotten already; either way its path is stale now.
            self.forget_under(&dir);
            out.push(Change::Path(dir));
        } else {
            // IN_ATTRIB, or IN_DELETE_SELF (IN_IGNORED follows).
            out.push(Change::Path(dir));
        }
        Ok(())
    }

    /// Logs what could not be watched below a new directory and asks for a
    /// rescan (which sees what the watch cannot).
    fn report_problems(&self, added: Added, out: &mut Vec<Change>) {
        for (dir, e) in &added.problems {
            tracing::warn!(
                "cannot watch {} ({e}): changes in it are seen only by full rescans; \
                 make it readable by stagingd or exclude it",
                self.abs(dir).display()
            );
        }
        if !added.problems.is_empty() {
            out.push(Change::Rescan(Rescan::Unwatched));
        }
        if added.bad_name {
            out.push(Change::Rescan(Rescan::BadName));
        }
    }

    /// Watches `top` and every directory below it, watch first and listing
    /// second, so that nothing made meanwhile is missed by both. Only the watch
    /// limit is an error; directories gone meanwhile are skipped, other problems
    /// are returned.
    fn add_tree(&mut self, top: &RelPath) -> Result<Added, WatchError> {
        let mut added = Added::default();
        let mut stack = vec![top.clone()];
        while let Some(dir) = stack.pop() {
            let abs = self.abs(&dir);
            match self.watches.add(&abs, MASK) {
                Ok(wd) => {
                    // The same directory already watched under another path (moved,
                    // its events not read yet) keeps its descriptor: the path is
                    // updated here.
                    let watched = Watched { wd, path: dir.clone(), generation: self.generation };
                    self.by_wd.insert(watched.wd.get_watch_descriptor_id(), watched);
                }
                Err(e) if is_gone(&e) => continue,
                Err(e) if Errno::from_io_error(&e) == Some(Errno::NOSPC) => return Err(WatchError::Limit),
                Err(e) => {
                    added.problems.push((dir, e));
                    continue;
                }
            }
            let entries = match std::fs::read_dir(&abs) {
                Ok(entries) => entries,
                Err(e) if is_gone(&e) => continue,
                Err(e) => {
                    added.problems.push((dir, e));
                    continue;
                }
            };
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        added.problems.push((dir.clone(), e));
                        break;
                    }
                };
                let Ok(path) = dir.join(entry.file_name().as_bytes()) else {
                    added.bad_name = true;
                    continue;
                };
                if self.excludes.is_excluded(&path) {
                    continue;
                }
                // The entry's own type (d_type or lstat): a symlink is never a directory here.
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir {
                    stack.push(path);
                }
            }
        }
        Ok(added)
    }

    /// Drops the watches of `path` and every directory below it.
    fn forget_under(&mut self, path: &RelPath) {
        let ids: Vec<i32> =
            self.by_wd.iter().filter(|(_, watched)| watched.path.starts_with(path)).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(watched) = self.by_wd.remove(&id) {
                // Fails only if the kernel dropped it already (directory deleted).
                let _ = self.watches.remove(watched.wd);
            }
        }
    }

    /// After lost events: watches every directory again from the root (a
    /// directory watched already keeps its descriptor, under its current path)
    /// and drops the watches the walk did not find.
    fn rewatch_all(&mut self, out: &mut Vec<Change>) -> Result<(), WatchError> {
        self.generation += 1;
        let added = self.add_tree(&RelPath::root())?;
        self.report_problems(added, out);
        let generation = self.generation;
        let stale: Vec<i32> =
            self.by_wd.iter().filter(|(_, watched)| watched.generation != generation).map(|(id, _)| *id).collect();
        for id in stale {
            if let Some(watched) = self.by_wd.remove(&id) {
                let _ = self.watches.remove(watched.wd);
            }
        }
        Ok(())
    }
}

/// The directory went away (or became something else) before we got to it:
/// its removal is an event of its own.
fn is_gone(e: &io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::NOENT | Errno::NOTDIR))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    /// A watch whose changes arrive on a channel.
    struct Harness {
        root: PathBuf,
        watch: TreeWatch,
        rx: mpsc::Receiver<Change>,
        sentinels: usize,
    }

    impl Harness {
        fn start(root: &Path, excludes: Excludes) -> Harness {
            let (tx, rx) = mpsc::channel();
            let watch = TreeWatch::start("test", root, excludes, move |change| {
                let _ = tx.send(change);
            })
            .expect("watch starts");
            Harness { root: root.to_path_buf(), watch, rx, sentinels: 0 }
        }

        /// Every change until one covers `path` (names it, or a new directory
        /// above it), which must come within the deadline.
        fn until(&mut self, path: &RelPath) -> Vec<Change> {
            self.until_change(path, |change| covers(change, path))
        }

        /// Every change until `Change::Path(path)`, which must come within the deadline.
        fn until_named(&mut self, path: &RelPath) -> Vec<Change> {
            self.until_change(path, |change| *change == Change::Path(path.clone()))
        }

        fn until_change(&mut self, path: &RelPath, last: impl Fn(&Change) -> bool) -> Vec<Change> {
            let until = Instant::now() + DEADLINE;
            let mut changes = Vec::new();
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(change) => {
                        let done = last(&change);
                        changes.push(change);
                        if done {
                            return changes;
                        }
                    }
                    Err(e) => panic!("no change naming {} within {DEADLINE:?} ({e}); got {changes:?}", path.display()),
                }
            }
        }

        /// Writes a new file at the root and returns every change up to its own:
        /// events arrive in order, so anything caused before it is among them.
        fn settle(&mut self) -> Vec<Change> {
            self.sentinels += 1;
            let name = format!("sentinel-{}", self.sentinels);
            fs::write(self.root.join(&name), "s").unwrap();
            self.until(&p(&name))
        }
    }

    /// True when `change` says `path` is to be looked at: it names it, or a
    /// new directory above it.
    fn covers(change: &Change, path: &RelPath) -> bool {
        match change {
            Change::Path(changed) => changed == path,
            Change::NewDir { dir } => path.starts_with(dir),
            Change::Rescan(_) => false,
        }
    }

    /// Every path a change names.
    fn names(change: &Change) -> Vec<RelPath> {
        match change {
            Change::Path(path) => vec![path.clone()],
            Change::NewDir { dir } => vec![dir.clone()],
            Change::Rescan(_) => Vec::new(),
        }
    }

    fn mentions(changes: &[Change], prefix: &RelPath) -> bool {
        changes.iter().flat_map(names).any(|path| path.starts_with(prefix))
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f.php"), "<?php\n").unwrap();
        fs::write(dir.path().join("top.txt"), "top").unwrap();
        dir
    }

    #[test]
    fn the_mask_names_no_read() {
        for read in [WatchMask::OPEN, WatchMask::ACCESS, WatchMask::CLOSE_NOWRITE] {
            assert!(!MASK.intersects(read), "{read:?} would make the daemon's own reads events");
        }
    }

    #[test]
    fn reading_a_file_is_not_a_change() {
        let dir = tree();
        let mut harness = Harness::start(dir.path(), Excludes::default());
        for _ in 0..3 {
            assert_eq!(fs::read(dir.path().join("a/b/f.php")).unwrap(), b"<?php\n");
            let _ = fs::read_dir(dir.path().join("a")).unwrap().count();
        }
        let changes = harness.settle();
        assert!(!mentions(&changes, &p("a")), "reads were reported: {changes:?}");
        // A write is, of course.
        fs::write(dir.path().join("a/b/f.php"), "<?php // 2\n").unwrap();
        harness.until(&p("a/b/f.php"));
    }

    #[test]
    fn nothing_under_the_reserved_directory_is_watched() {
        let dir = tree();
        fs::create_dir_all(dir.path().join(".stagingd/staging/old")).unwrap();
        let mut harness = Harness::start(dir.path(), Excludes::default());
        assert_eq!(harness.watch.dirs_watched(), 3, "the root, a and a/b; not .stagingd/");
        fs::write(dir.path().join(".stagingd/staging/old/1"), "partial").unwrap();
        fs::create_dir_all(dir.path().join(".stagingd/staging/new/deep")).unwrap();
        fs::write(dir.path().join(".stagingd/staging/new/deep/2"), "partial").unwrap();
        let changes = harness.settle();
        assert!(!mentions(&changes, &p(".stagingd")), "{changes:?}");
    }

    #[test]
    fn a_reserved_directory_made_after_the_start_is_not_watched_either() {
        let dir = tree();
        let mut harness = Harness::start(dir.path(), Excludes::default());
        fs::create_dir_all(dir.path().join(".stagingd/staging/x")).unwrap();
        fs::write(dir.path().join(".stagingd/staging/x/1"), "partial").unwrap();
        let changes = harness.settle();
        assert!(!mentions(&changes, &p(".stagingd")), "{changes:?}");
        fs::write(dir.path().join(".stagingd/staging/x/2"), "partial").unwrap();
        let changes = harness.settle();
        assert!(!mentions(&changes, &p(".stagingd")), "{changes:?}");
    }

    #[test]
    fn excluded_directories_are_not_watched() {
        let dir = tree();
        fs::create_dir_all(dir.path().join("a/node_modules/x")).unwrap();
        let excludes = Excludes::new(["node_modules"]).unwrap();
        let mut harness = Harness::start(dir.path(), excludes);
        assert_eq!(harness.watch.dirs_watched(), 3);
        fs::write(dir.path().join("a/node_modules/x/1.js"), "1").unwrap();
        fs::create_dir(dir.path().join("node_modules")).unwrap();
        fs::write(dir.path().join("node_modules/2.js"), "2").unwrap();
        let changes = harness.settle();
        assert!(!changes.iter().flat_map(names).any(|path| path.as_bytes().ends_with(b"node_modules")), "{changes:?}");
        assert!(!mentions(&changes, &p("a/node_modules")) && !mentions(&changes, &p("node_modules")), "{changes:?}");
    }

    #[test]
    fn a_file_in_a_new_directory_is_seen() {
        let dir = tree();
        let mut harness = Harness::start(dir.path(), Excludes::default());
        fs::create_dir_all(dir.path().join("new/deeper")).unwrap();
        // Made right away: maybe before the watch on new/deeper exists.
        fs::write(dir.path().join("new/deeper/early.php"), "1").unwrap();
        let changes = harness.until(&p("new/deeper/early.php"));
        assert!(changes.contains(&Change::NewDir { dir: p("new") }), "{changes:?}");
        // The creation of new/deeper may still be queued (made after new/ was
        // watched); events arrive in order, so once a later one is seen it is
        // watched too, and a later file is an event of its own.
        harness.settle();
        fs::write(dir.path().join("new/deeper/late.php"), "2").unwrap();
        let changes = harness.until_named(&p("new/deeper/late.php"));
        assert!(changes.contains(&Change::Path(p("new/deeper/late.php"))), "{changes:?}");
    }

    #[test]
    fn a_symlink_to_a_directory_is_not_followed() {
        let dir = tree();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("alias")).unwrap();
        let mut harness = Harness::start(dir.path(), Excludes::default());
        assert_eq!(harness.watch.dirs_watched(), 3, "the root, a and a/b; no symlink");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out2")).unwrap();
        let changes = harness.settle();
        assert!(changes.contains(&Change::Path(p("out2"))), "the link itself is an entry: {changes:?}");
        assert!(!changes.iter().any(|c| matches!(c, Change::NewDir { .. })), "{changes:?}");
        fs::write(outside.path().join("x"), "x").unwrap();
        fs::write(dir.path().join("a/y"), "y").unwrap();
        let changes = harness.settle();
        assert!(changes.contains(&Change::Path(p("a/y"))), "{changes:?}");
        for link in ["out", "out2", "alias"] {
            assert!(!mentions(&changes, &p(link)), "changes reported through the link {link}: {changes:?}");
        }
    }

    #[test]
    fn a_directory_moved_inside_the_tree_is_watched_under_its_new_path() {
        let dir = tree();
        let mut harness = Harness::start(dir.path(), Excludes::default());
        fs::rename(dir.path().join("a/b"), dir.path().join("c")).unwrap();
        let changes = harness.until(&p("c"));
        assert!(changes.contains(&Change::Path(p("a/b"))), "{changes:?}");
        assert!(changes.contains(&Change::NewDir { dir: p("c") }), "{changes:?}");
        fs::write(dir.path().join("c/g.php"), "g").unwrap();
        let changes = harness.until(&p("c/g.php"));
        assert!(!mentions(&changes, &p("a/b")), "a stale path: {changes:?}");
    }

    #[test]
    fn a_directory_moved_out_of_the_tree_is_not_watched_any_more() {
        let dir = tree();
        let outside = tempfile::tempdir().unwrap();
        let mut harness = Harness::start(dir.path(), Excludes::default());
        fs::rename(dir.path().join("a"), outside.path().join("a")).unwrap();
        let changes = harness.until(&p("a"));
        assert!(changes.contains(&Change::Path(p("a"))), "{changes:?}");
        fs::write(outside.path().join("a/b/f.php"), "changed outside").unwrap();
        let changes = harness.settle();
        assert!(!mentions(&changes, &p("a")), "{changes:?}");
    }

    #[test]
    fn dropping_the_watch_ends_the_reader_and_closes_the_sink() {
        let dir = tree();
        let (tx, rx) = mpsc::channel::<Change>();
        let watch = TreeWatch::start("test", dir.path(), Excludes::default(), move |change| {
            let _ = tx.send(change);
        })
        .unwrap();
        drop(watch);
        // The thread owns the sender: the channel disconnects when it has ended.
        let until = Instant::now() + DEADLINE;
        loop {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the reader thread did not end within {DEADLINE:?}"),
                Ok(_) => {}
            }
        }
    }

    #[test]
    fn a_deleted_root_stops_the_watch_and_says_so() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("tree");
        fs::create_dir(&root).unwrap();
        let (tx, rx) = mpsc::channel::<Change>();
        let watch = TreeWatch::start("test", &root, Excludes::default(), move |change| {
            let _ = tx.send(change);
        })
        .unwrap();
        fs::remove_dir(&root).unwrap();
        let until = Instant::now() + DEADLINE;
        while !matches!(
            rx.recv_timeout(until.saturating_duration_since(Instant::now())),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ) {
            assert!(Instant::now() < until, "the watch went on without its root");
        }
        let failure = watch.failure().expect("a reason");
        assert!(failure.to_string().contains("was deleted") && failure.to_string().contains("restart"), "{failure}");
    }

    #[test]
    fn a_missing_root_cannot_be_watched() {
        let parent = tempfile::tempdir().unwrap();
        let err = TreeWatch::start("test", &parent.path().join("nope"), Excludes::default(), |_| {}).unwrap_err();
        // Gone while walking is fine below the root, but the root itself must be there.
        assert!(err.to_string().starts_with("cannot watch the tree root") && err.to_string().contains("nope"), "{err}");
    }
}
