//! Building a manifest from a directory on disk.
//!
//! The walk runs on rayon: the entries of every directory are handled in parallel
//! and subdirectories recurse as parallel tasks, so both the stat walk and the
//! hashing use all cores. A previous manifest serves as the stat cache: a file
//! whose size, mtime, ctime and inode are unchanged (and that had settled when it
//! was hashed) keeps its hash without being read, so rescanning an unchanged tree
//! is a stat walk. Large files are hashed with BLAKE3's multi-threaded mode.
//!
//! Blocking by design: callers on an async runtime run this on a blocking thread.
//! Entries that cannot be represented (sockets, fifos, devices) are skipped and
//! reported; entries that cannot be read are skipped and reported too, and make
//! the scan *incomplete*: its manifest does not describe the whole tree and must
//! not be served as a source.

use std::cell::RefCell;
use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::exclude::Excludes;
use crate::hash::Hash;
use crate::path::{RelPath, escape};
use crate::tree::{Dir, DirMeta, Entry, FileMeta, Manifest, Node, Owner, StatKey, SymlinkMeta, Timestamp};

/// Files at least this large are hashed with several threads.
pub const LARGE_FILE_BYTES: u64 = 4 << 20;
/// How far back a change must lie for a file's stat to be trusted later (covers
/// filesystems with coarse timestamps; see [`StatKey::settled`]).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// A file that keeps changing while it is read is retried this often, then skipped.
const HASH_ATTEMPTS: usize = 3;

/// What to scan and how.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub excludes: Excludes,
    /// A file changed less than this long before it was hashed is re-read on the
    /// next scan even if its stat is unchanged ([`DEFAULT_SETTLE`]).
    pub settle: Duration,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self { excludes: Excludes::default(), settle: DEFAULT_SETTLE }
    }
}

/// A finished scan.
#[derive(Debug)]
pub struct Scan {
    pub manifest: Manifest,
    pub report: ScanReport,
}

/// What a scan did, and what it left out.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ScanReport {
    /// Files whose contents were read and hashed.
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Files whose hash came from the stat cache without reading them.
    pub files_reused: u64,
    /// Entries left out of the manifest, with the reason.
    pub skipped: Vec<Skipped>,
}

impl ScanReport {
    /// True when every entry of the tree is in the manifest, or was left out only
    /// because it is of a kind the manifest does not carry (socket, fifo, device).
    pub fn is_complete(&self) -> bool {
        self.skipped.iter().all(|s| matches!(s.reason, SkipReason::Special(_)))
    }
}

/// An entry that is not in the manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    /// The path, escaped for display (it may not be a valid [`RelPath`]).
    pub path: String,
    #[serde(flatten)]
    pub reason: SkipReason,
}

/// Why an entry is not in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", content = "detail", rename_all = "kebab-case")]
pub enum SkipReason {
    /// A socket, fifo or device: not something a tree sync carries.
    Special(&'static str),
    /// Reading it failed (permission denied, I/O error).
    Unreadable(String),
    /// Its name or path breaks the path rules (too long, say).
    BadName(String),
    /// It kept changing while it was being hashed.
    ChangedDuringScan,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Special(kind) => write!(f, "{kind}: not carried by a tree sync"),
            SkipReason::Unreadable(e) => write!(f, "unreadable: {e}"),
            SkipReason::BadName(e) => write!(f, "bad name: {e}"),
            SkipReason::ChangedDuringScan => write!(f, "kept changing while it was read"),
        }
    }
}

/// The scan could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read tree root {}: {source}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tree root {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
}

/// The stat cache a scan consults: borrowed when the caller keeps using the old
/// manifest (a daemon serving it during a rescan), owned when it does not (a
/// restart from the persisted cache): an owned one is consumed directory by
/// directory as the walk goes, so the two manifests are not both whole in memory.
#[derive(Debug)]
pub enum Previous<'a> {
    None,
    Borrowed(&'a Manifest),
    Owned(Manifest),
}

impl<'a> From<Option<&'a Manifest>> for Previous<'a> {
    fn from(previous: Option<&'a Manifest>) -> Self {
        previous.map_or(Previous::None, Previous::Borrowed)
    }
}

impl From<Manifest> for Previous<'_> {
    fn from(previous: Manifest) -> Self {
        Previous::Owned(previous)
    }
}

impl Previous<'_> {
    /// An owned previous manifest, if there is one.
    pub fn owned(previous: Option<Manifest>) -> Self {
        previous.map_or(Previous::None, Previous::Owned)
    }
}

/// One directory's previous contents, borrowed or owned (see [`Previous`]).
enum PreviousDir<'a> {
    Borrowed(&'a Dir),
    Owned(Dir),
}

/// One entry's previous state, borrowed or owned.
enum PreviousNode<'a> {
    Borrowed(&'a Node),
    Owned(Node),
}

impl PreviousNode<'_> {
    fn node(&self) -> &Node {
        match self {
            PreviousNode::Borrowed(node) => node,
            PreviousNode::Owned(node) => node,
        }
    }
}

/// Scans `root`. `previous` (the last manifest of the same root, e.g. loaded from
/// the stat cache) lets unchanged files keep their hashes without being read.
pub fn scan<'a>(root: &Path, options: &ScanOptions, previous: impl Into<Previous<'a>>) -> Result<Scan, ScanError> {
    let root_error = |source| ScanError::Root { path: root.to_path_buf(), source };
    let meta = fs::metadata(root).map_err(root_error)?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory { path: root.to_path_buf() });
    }
    let walker = Walker {
        options,
        files_hashed: AtomicU64::new(0),
        bytes_hashed: AtomicU64::new(0),
        files_reused: AtomicU64::new(0),
        skipped: Mutex::new(Vec::new()),
    };
    let previous = match previous.into() {
        Previous::None => None,
        Previous::Borrowed(m) => Some(PreviousDir::Borrowed(m.root())),
        Previous::Owned(m) => Some(PreviousDir::Owned(m.into_root())),
    };
    let root_dir = walker.scan_dir(root, &RelPath::root(), dir_meta(&meta), previous).map_err(root_error)?;
    let mut skipped = walker.skipped.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Scan {
        manifest: Manifest::new(root_dir),
        report: ScanReport {
            files_hashed: walker.files_hashed.into_inner(),
            bytes_hashed: walker.bytes_hashed.into_inner(),
            files_reused: walker.files_reused.into_inner(),
            skipped,
        },
    })
}

/// Reads one file and returns its metadata as a manifest entry would hold it,
/// hashing its content. Used by scans and by anything that must look at one path
/// (a watcher event, a verify) without walking the tree.
pub fn hash_file(path: &Path, settle: Duration) -> Result<FileMeta, HashFileError> {
    for _ in 0..HASH_ATTEMPTS {
        if let Some(meta) = hash_once(path, settle)? {
            return Ok(meta);
        }
    }
    Err(HashFileError::KeptChanging)
}

/// Why one file could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashFileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the file kept changing while it was read")]
    KeptChanging,
}

impl HashFileError {
    fn is_not_found(&self) -> bool {
        matches!(self, HashFileError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// One attempt: `Ok(None)` when the file changed between the two `fstat`s.
fn hash_once(path: &Path, settle: Duration) -> io::Result<Option<FileMeta>> {
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)?;
    let before = file.metadata()?;
    if !before.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let hash = if before.len() >= LARGE_FILE_BYTES { hash_large(&mut file)? } else { hash_streamed(&mut file)? };
    let after = file.metadata()?;
    let unchanged = |m: &Metadata| (m.len(), mtime(m), m.ctime(), m.ctime_nsec(), m.ino());
    if unchanged(&before) != unchanged(&after) {
        return Ok(None);
    }
    Ok(Some(file_meta(&after, hash, settle)))
}

/// The read buffer of [`hash_streamed`]. Small, so that each thread that ever hashed
/// a file (rayon's, tokio's blocking pool) keeps only this much resident afterwards;
/// most files of a staging tree fit in one read.
const READ_BUFFER_BYTES: usize = 128 << 10;

thread_local! {
    /// One read buffer per worker thread, reused across files.
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_BUFFER_BYTES].into_boxed_slice());
}

/// Hashes a file below [`LARGE_FILE_BYTES`] on this thread through its reused buffer.
fn hash_streamed(file: &mut fs::File) -> io::Result<Hash> {
    READ_BUFFER.with_borrow_mut(|buffer| {
        let mut hasher = blake3::Hasher::new();
        loop {
            let n = match file.read(buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buffer[..n]);
        }
        Ok(hasher.finalize().into())
    })
}

fn hash_large(file: &mut fs::File) -> io::Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        hasher.update_rayon(&chunk[..n]);
    }
    Ok(hasher.finalize().into())
}

struct Walker<'a> {
    options: &'a ScanOptions,
    files_hashed: AtomicU64,
    bytes_hashed: AtomicU64,
    files_reused: AtomicU64,
    skipped: Mutex<Vec<Skipped>>,
}

impl Walker<'_> {
    fn skip(&self, path: String, reason: SkipReason) {
        self.skipped.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Skipped { path, reason });
    }

    fn scan_dir(&self, abs: &Path, rel: &RelPath, meta: DirMeta, previous: Option<PreviousDir<'_>>) -> io::Result<Dir> {
        let mut entries = fs::read_dir(abs)?.collect::<io::Result<Vec<fs::DirEntry>>>()?;
        let paired: Vec<(fs::DirEntry, Option<PreviousNode<'_>>)> = match previous {
            None => entries.into_iter().map(|entry| (entry, None)).collect(),
            Some(PreviousDir::Borrowed(dir)) => entries
                .into_iter()
                .map(|entry| {
                    let old = dir.child(entry.file_name().as_bytes()).map(PreviousNode::Borrowed);
                    (entry, old)
                })
                .collect(),
            Some(PreviousDir::Owned(dir)) => {
                // Both sides sorted by name bytes: a merge hands each new entry its
                // old self by value, and the old directory is gone when this ends.
                entries.sort_by_key(|entry| entry.file_name());
                let mut old = dir.into_children().into_iter().peekable();
                entries
                    .into_iter()
                    .map(|entry| {
                        let name = entry.file_name();
                        while old.next_if(|o| &*o.name < name.as_bytes()).is_some() {}
                        let previous =
                            old.next_if(|o| &*o.name == name.as_bytes()).map(|o| PreviousNode::Owned(o.node));
                        (entry, previous)
                    })
                    .collect()
            }
        };
        let children: Vec<Entry> = paired
            .into_par_iter()
            .filter_map(|(entry, previous)| self.scan_entry(abs, rel, &entry, previous))
            .collect();
        Ok(Dir::new(meta, children))
    }

    fn scan_entry(
        &self,
        parent_abs: &Path,
        parent: &RelPath,
        entry: &fs::DirEntry,
        previous: Option<PreviousNode<'_>>,
    ) -> Option<Entry> {
        let file_name = entry.file_name();
        let name = file_name.as_bytes();
        let path = match parent.join(name) {
            Ok(path) => path,
            Err(e) => {
                self.skip(shown_join(parent, name), SkipReason::BadName(e.to_string()));
                return None;
            }
        };
        if self.options.excludes.is_excluded(&path) {
            return None;
        }
        let abs = parent_abs.join(&file_name);
        let metadata = match entry.metadata() {
            Ok(m) => m,
            // Removed between the listing and the stat: it is simply not there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.skip(path.display(), SkipReason::Unreadable(e.to_string()));
                return None;
            }
        };
        let file_type = metadata.file_type();
        let node = if file_type.is_dir() {
            let previous_dir = match previous {
                Some(PreviousNode::Borrowed(Node::Dir(d))) => Some(PreviousDir::Borrowed(d)),
                Some(PreviousNode::Owned(Node::Dir(d))) => Some(PreviousDir::Owned(std::sync::Arc::unwrap_or_clone(d))),
                _ => None,
            };
            match self.scan_dir(&abs, &path, dir_meta(&metadata), previous_dir) {
                Ok(dir) => Node::Dir(dir.into()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
                Err(e) => {
                    self.skip(path.display(), SkipReason::Unreadable(e.to_string()));
                    return None;
                }
            }
        } else if file_type.is_file() {
            match self.scan_file(&abs, &metadata, previous.as_ref().map(PreviousNode::node)) {
                Ok(meta) => Node::File(meta),
                Err(e) if e.is_not_found() => return None,
                Err(HashFileError::KeptChanging) => {
                    self.skip(path.display(), SkipReason::ChangedDuringScan);
                    return None;
                }
                Err(e) => {
                    self.skip(path.display(), SkipReason::Unreadable(e.to_string()));
                    return None;
                }
            }
        } else if file_type.is_symlink() {
            match fs::read_link(&abs) {
                Ok(target) => Node::Symlink(SymlinkMeta {
                    target: target.as_os_str().as_bytes().into(),
                    mtime: mtime(&metadata),
                    owner: owner(&metadata),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
                Err(e) => {
                    self.skip(path.display(), SkipReason::Unreadable(e.to_string()));
                    return None;
                }
            }
        } else {
            self.skip(path.display(), SkipReason::Special(special_kind(&metadata)));
            return None;
        };
        Some(Entry { name: name.into(), node })
    }

    fn scan_file(&self, abs: &Path, metadata: &Metadata, previous: Option<&Node>) -> Result<FileMeta, HashFileError> {
        if let Some(Node::File(old)) = previous
            && unchanged_since_hashed(old, metadata)
        {
            self.files_reused.fetch_add(1, Ordering::Relaxed);
            let mut reused = file_meta(metadata, old.hash, self.options.settle);
            reused.stat.settled = true;
            return Ok(reused);
        }
        let meta = hash_file(abs, self.options.settle)?;
        self.files_hashed.fetch_add(1, Ordering::Relaxed);
        self.bytes_hashed.fetch_add(meta.size, Ordering::Relaxed);
        Ok(meta)
    }
}

fn shown_join(parent: &RelPath, name: &[u8]) -> String {
    if parent.is_root() { escape(name) } else { format!("{}/{}", parent.display(), escape(name)) }
}

fn special_kind(metadata: &Metadata) -> &'static str {
    let t = metadata.file_type();
    if t.is_socket() {
        "socket"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "unknown file type"
    }
}

pub(crate) fn mtime(metadata: &Metadata) -> Timestamp {
    Timestamp::new(metadata.mtime(), metadata.mtime_nsec() as u32)
}

fn ctime(metadata: &Metadata) -> Timestamp {
    Timestamp::new(metadata.ctime(), metadata.ctime_nsec() as u32)
}

pub(crate) fn owner(metadata: &Metadata) -> Owner {
    Owner { uid: metadata.uid(), gid: metadata.gid() }
}

pub(crate) fn dir_meta(metadata: &Metadata) -> DirMeta {
    DirMeta { mode: metadata.mode() & 0o7777, mtime: mtime(metadata), owner: owner(metadata) }
}

/// The stat cache's rule: a file whose entry had settled when it was hashed, and
/// whose size, mtime, ctime and inode are still the entry's, still has the
/// entry's content. (Any write moves the ctime, which no one can set back.) Both
/// rescans and the content a daemon serves rely on it.
pub fn unchanged_since_hashed(entry: &FileMeta, metadata: &Metadata) -> bool {
    entry.stat.settled
        && entry.size == metadata.len()
        && entry.mtime == mtime(metadata)
        && entry.stat.ctime == ctime(metadata)
        && entry.stat.ino == metadata.ino()
}

fn stat_key(metadata: &Metadata, settle: Duration) -> StatKey {
    let ctime = ctime(metadata);
    let changed = UNIX_EPOCH + Duration::new(ctime.secs.max(0) as u64, ctime.nanos);
    let settled = SystemTime::now().duration_since(changed).is_ok_and(|age| age > settle);
    StatKey { ctime, ino: metadata.ino(), settled }
}

/// The manifest entry for a file with `metadata` and content `hash`; `settle` as
/// in [`ScanOptions::settle`].
pub fn file_meta(metadata: &Metadata, hash: Hash, settle: Duration) -> FileMeta {
    FileMeta {
        size: metadata.len(),
        mode: metadata.mode() & 0o7777,
        mtime: mtime(metadata),
        hash,
        owner: owner(metadata),
        stat: stat_key(metadata, settle),
    }
}

/// Brings `manifest` up to date for paths that changed (a watcher's events):
/// each path is looked at on disk and its entry replaced, added or removed. A
/// directory the manifest does not hold yet is scanned whole (it may have been
/// moved in with contents, or filled before anyone watched it); for a directory
/// it already holds only its own metadata is refreshed, its entries' changes
/// being paths of their own. Paths that are excluded, or whose parent is not a
/// directory on disk any more, are handled at the nearest level that makes
/// sense. Files whose stat is unchanged (and settled) keep their hash unread.
pub fn update_paths(
    root: &Path,
    options: &ScanOptions,
    manifest: &mut Manifest,
    changed: impl IntoIterator<Item = RelPath>,
) -> ScanReport {
    let walker = Walker {
        options,
        files_hashed: AtomicU64::new(0),
        bytes_hashed: AtomicU64::new(0),
        files_reused: AtomicU64::new(0),
        skipped: Mutex::new(Vec::new()),
    };
    // Parents first; a path inside a directory scanned whole is covered by it.
    let mut paths: Vec<RelPath> = changed
        .into_iter()
        .filter(|p| !p.is_root() && !options.excludes.is_excluded_or_inside_excluded(p))
        .map(|p| climb_to_known_parent(manifest, p))
        .collect();
    // A directory's mtime moves when an entry in it is added, removed or renamed,
    // and no event names the directory itself: look at each parent again too.
    let parents: Vec<RelPath> = paths.iter().filter_map(RelPath::parent).collect();
    paths.extend(parents);
    paths.sort();
    paths.dedup();
    let mut scanned_whole: Vec<RelPath> = Vec::new();
    let _ = manifest.batch(|batch| -> Result<(), crate::tree::TreeError> {
        for path in paths {
            if scanned_whole.iter().any(|dir| path.starts_with(dir)) {
                continue;
            }
            if path.is_root() {
                if let Ok(metadata) = fs::metadata(root) {
                    let _ = batch.set_dir_meta(&path, dir_meta(&metadata));
                }
                continue;
            }
            let abs = root.join(path.as_path());
            let metadata = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                    if batch.get(&path).is_some() {
                        let _ = batch.remove(&path, true);
                    }
                    continue;
                }
                Err(e) => {
                    walker.skip(path.display(), SkipReason::Unreadable(e.to_string()));
                    continue;
                }
            };
            let file_type = metadata.file_type();
            let node = if file_type.is_dir() {
                match batch.get(&path) {
                    Some(Node::Dir(_)) => {
                        let _ = batch.set_dir_meta(&path, dir_meta(&metadata));
                        continue;
                    }
                    _ => match walker.scan_dir(&abs, &path, dir_meta(&metadata), None) {
                        Ok(dir) => {
                            scanned_whole.push(path.clone());
                            Node::Dir(dir.into())
                        }
                        Err(e) => {
                            walker.skip(path.display(), SkipReason::Unreadable(e.to_string()));
                            continue;
                        }
                    },
                }
            } else if file_type.is_file() {
                match walker.scan_file(&abs, &metadata, batch.get(&path)) {
                    Ok(meta) => Node::File(meta),
                    Err(e) if e.is_not_found() => {
                        let _ = batch.remove(&path, true);
                        continue;
                    }
                    Err(HashFileError::KeptChanging) => {
                        walker.skip(path.display(), SkipReason::ChangedDuringScan);
                        continue;
                    }
                    Err(e) => {
                        walker.skip(path.display(), SkipReason::Unreadable(e.to_string()));
                        continue;
                    }
                }
            } else if file_type.is_symlink() {
                match fs::read_link(&abs) {
                    Ok(target) => Node::Symlink(SymlinkMeta {
                        target: target.as_os_str().as_bytes().into(),
                        mtime: mtime(&metadata),
                        owner: owner(&metadata),
                    }),
                    Err(_) => continue,
                }
            } else {
                walker.skip(path.display(), SkipReason::Special(special_kind(&metadata)));
                if batch.get(&path).is_some() {
                    let _ = batch.remove(&path, true);
                }
                continue;
            };
            if let Err(e) = batch.insert(&path, node) {
                walker.skip(path.display(), SkipReason::Unreadable(e.to_string()));
            }
        }
        Ok(())
    });
    let mut skipped = walker.skipped.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    ScanReport {
        files_hashed: walker.files_hashed.into_inner(),
        bytes_hashed: walker.bytes_hashed.into_inner(),
        files_reused: walker.files_reused.into_inner(),
        skipped,
    }
}

/// The paths below the directory `dir` (one `manifest` holds) where the tree on
/// disk is not what `manifest` says, by the stat cache's rule: names on disk the
/// manifest does not hold (or holds as another kind), names it holds that are
/// gone, files whose stat key, size, mtime or mode moved (or that had not
/// settled when hashed), symlinks whose target or mtime moved, directories whose
/// mode or mtime moved. Feed them to [`update_paths`].
///
/// What a watcher needs when a directory it already knows appears anew (a sync
/// renamed it into place): one `lstat` an entry and a list of what differs,
/// where the path of every entry below it, listed and passed on, was hundreds of
/// megabytes after a 1,000,000-file copy. Excluded names, and below a directory
/// that differs in kind, nothing, are looked at.
pub fn changed_below(root: &Path, options: &ScanOptions, manifest: &Manifest, dir: &RelPath) -> Vec<RelPath> {
    let mut changed = Vec::new();
    match manifest.dir(dir) {
        Some(known) => compare_dir(&root.join(dir.as_path()), dir, known, options, &mut changed),
        None => changed.push(dir.clone()),
    }
    changed
}

fn compare_dir(abs: &Path, rel: &RelPath, known: &Dir, options: &ScanOptions, changed: &mut Vec<RelPath>) {
    let Ok(entries) = fs::read_dir(abs) else {
        changed.push(rel.clone());
        return;
    };
    // Which of the manifest's entries are on disk (of any kind): the others are gone.
    let children = known.children();
    let mut seen = vec![false; children.len()];
    for entry in entries {
        let Ok(entry) = entry else {
            changed.push(rel.clone());
            return;
        };
        let name = entry.file_name();
        let Ok(path) = rel.join(name.as_bytes()) else { continue };
        if options.excludes.is_excluded(&path) {
            continue;
        }
        let abs = entry.path();
        let child = known.position(name.as_bytes()).ok().map(|i| {
            seen[i] = true;
            &children[i].node
        });
        let Ok(metadata) = fs::symlink_metadata(&abs) else {
            changed.push(path);
            continue;
        };
        let file_type = metadata.file_type();
        match child {
            Some(Node::File(f)) if file_type.is_file() => {
                if !unchanged_since_hashed(f, &metadata) || f.mode != metadata.mode() & 0o7777 {
                    changed.push(path);
                }
            }
            Some(Node::Symlink(l)) if file_type.is_symlink() => {
                let same = l.mtime == mtime(&metadata)
                    && fs::read_link(&abs).is_ok_and(|target| target.as_os_str().as_bytes() == &*l.target);
                if !same {
                    changed.push(path);
                }
            }
            Some(Node::Dir(d)) if file_type.is_dir() => {
                let meta = dir_meta(&metadata);
                if meta.mode != d.meta.mode || meta.mtime != d.meta.mtime {
                    changed.push(path.clone());
                }
                compare_dir(&abs, &path, d, options, changed);
            }
            _ => changed.push(path),
        }
    }
    for (entry, _) in children.iter().zip(&seen).filter(|(_, seen)| !**seen) {
        if let Ok(path) = rel.join(&entry.name)
            && !options.excludes.is_excluded(&path)
        {
            changed.push(path);
        }
    }
}

/// `path`, or its highest ancestor whose parent is a directory in the manifest:
/// a change below a directory the manifest does not know yet means that
/// directory is new as a whole.
fn climb_to_known_parent(manifest: &Manifest, path: RelPath) -> RelPath {
    let mut current = path;
    loop {
        match current.parent() {
            Some(parent) if manifest.dir(&parent).is_none() => current = parent,
            _ => return current,
        }
    }
}
