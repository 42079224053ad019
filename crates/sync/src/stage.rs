//! Staging: every new file and symlink of a sync, written and verified under a
//! temporary name before anything in the tree changes.
//!
//! [`Staging`] owns `<root>/.stagingd/staging/<sync-id>/`, on the tree's
//! filesystem so the switch is a `rename`. The plan's [`Layout`] says where each
//! op goes: a `WriteFile` or `Symlink` op has an entry named by its index in the
//! plan, in subdirectories of [`ENTRIES_PER_DIR`] entries ([`entry_name`]); a
//! subtree the plan creates (a `NewTree` op) is built whole under `tree/` at its
//! own paths ([`crate::layout::staged_path`]), each directory made when the first
//! entry in it is staged (the rest, empty ones, by [`Staging::finish`], which
//! also gives the directories below its top their modes and mtimes). A file is
//! created with its final mode and streamed into its entry while BLAKE3 hashes
//! it; a wrong size or hash removes the entry and fails with
//! [`StageError::HashMismatch`] / [`StageError::ShortContent`] /
//! [`StageError::TooLong`]. The owner (when asked) and mode are then set where
//! creating the inode did not give them, and the mtime last, so the rename that
//! publishes it changes nothing else. [`Staging::finish`] makes the whole set
//! durable with one `syncfs`.
//!
//! This module does not fetch from peers (the daemon feeds [`StagedWriter`] from
//! its streams) and does not switch anything into the tree ([`crate::apply`]).

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use manifest::{FileMeta, Hash, Manifest, Node, Op, Owner, Plan, RelPath, SymlinkMeta, Timestamp};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::history::SyncId;
use crate::layout::{Layout, Place, staged_path};
use crate::trash::Trash;
use crate::tree_fs::{EntryKind, EntryStat, TreeFsError, TreeRoot, io_error, mtime_only, set_inode_meta, set_meta_at};
use crate::writes::{Writes, Written};

/// Where staging directories live, relative to the tree root.
pub const STAGING_DIR: &str = ".stagingd/staging";

/// Why content could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(
        "{path}: content does not match its hash (expected {expected}, got {actual}); the staged copy was removed and \
         nothing was applied"
    )]
    HashMismatch { path: RelPath, expected: Hash, actual: Hash },
    #[error("{path}: content ended after {actual} of {expected} bytes; the staged copy was removed")]
    ShortContent { path: RelPath, expected: u64, actual: u64 },
    #[error("{path}: more content than the {expected} bytes announced; the staged copy was removed")]
    TooLong { path: RelPath, expected: u64 },
    #[error("stage {path}: cannot read its content from {source_path}: {source}")]
    ReadSource {
        path: RelPath,
        source_path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} (op {index}) has nothing staged; every file and symlink a plan writes, and every directory of a new \
         subtree, must be"
    )]
    NotStaged { index: usize, path: RelPath },
    #[error(transparent)]
    Fs(#[from] TreeFsError),
}

/// The staging directory of one sync.
#[derive(Debug)]
pub struct Staging {
    tree: TreeRoot,
    sync_id: SyncId,
    rel: RelPath,
    dir: Arc<OwnedFd>,
    preserve_owner: bool,
    layout: Layout,
    /// Every directory of the plan's new subtrees, parents first: made by
    /// [`Staging::finish`] if staging their entries did not.
    new_dirs: Vec<NewDir>,
    /// The staging directory's host path as shown in messages (made once: staged
    /// files name themselves only when something fails).
    shown_dir: Arc<str>,
    flusher: Arc<Flusher>,
    /// Set by [`Staging::finish`], cleared by any later write (staging may run on several threads).
    durable: AtomicBool,
}

/// A directory of a new subtree, as staging leaves it.
#[derive(Debug)]
struct NewDir {
    /// The `MkDir` or `NewTree` op that creates it (or the directory it is below).
    op: usize,
    /// Its name in the staging directory.
    name: Vec<u8>,
    /// The owner to give it, when owners are preserved.
    owner: Option<Owner>,
    /// Its final mode and mtime, for a directory below a `NewTree` op's top:
    /// set in staging by [`Staging::finish`], since the switch only renames the
    /// top (whose own come with a `SetDirMeta` op, like every directory in the
    /// tree).
    meta: Option<(u32, Timestamp)>,
}

/// Staged entries per subdirectory of a staging directory. One flat directory of
/// 150,000 entries serialised every fetch stream on its lock (the kernel spun on
/// it) and made ext4 look for all those inodes near one directory's.
pub const ENTRIES_PER_DIR: usize = 1024;

/// The name of the staged entry for op `index`, relative to the staging directory:
/// `<index / ENTRIES_PER_DIR>/<index>`.
pub fn entry_name(index: usize) -> String {
    format!("{}/{index}", index / ENTRIES_PER_DIR)
}

/// Staged bytes after which a background `syncfs` starts writing them to disk.
pub const FLUSH_BYTES: u64 = 256 << 20;

/// Writes a big staging out to disk while the rest is still arriving, so the
/// `syncfs` that makes it durable before the switch has little left to do: one
/// `syncfs` on its own thread per [`FLUSH_BYTES`] staged, never two at once.
/// (Starting writeback per file with `sync_file_range` did the same at a cost:
/// in a VM every file's I/O submission is an exit; a full copy spent ~2 s of CPU
/// on it.) Only an optimisation: durability comes from [`Staging::finish`].
#[derive(Debug)]
struct Flusher {
    /// The staging directory (any descriptor on the filesystem will do).
    dir: Arc<OwnedFd>,
    unflushed: AtomicU64,
    running: AtomicBool,
}

impl Flusher {
    fn new(dir: Arc<OwnedFd>) -> Self {
        Self { dir, unflushed: AtomicU64::new(0), running: AtomicBool::new(false) }
    }

    fn staged(self: &Arc<Self>, bytes: u64) {
        if self.unflushed.fetch_add(bytes, Ordering::Relaxed) + bytes < FLUSH_BYTES
            || self.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.unflushed.store(0, Ordering::Relaxed);
        let flusher = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("stage-flush".into()).spawn(move || {
            let _ = rustix::fs::syncfs(&*flusher.dir);
            flusher.running.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.running.store(false, Ordering::Release);
        }
    }
}

/// Asks the filesystem to place `dir`'s subdirectories (and so the entries in
/// them) apart, like top-level directories (`chattr +T`; ext4's Orlov allocator).
/// Otherwise ext4 looks for every staged inode near the staging directory's own,
/// in the same few block groups: on a filesystem without a journal, where it
/// also skips recently freed inodes one by one, that search was most of a full
/// copy's kernel time. Where the flag is not supported nothing changes.
fn spread_subdirectories(dir: &OwnedFd) {
    use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
    if let Ok(flags) = ioctl_getflags(dir)
        && !flags.contains(IFlags::TOPDIR)
    {
        let _ = ioctl_setflags(dir, flags | IFlags::TOPDIR);
    }
}

/// Makes the missing directories above `name` in `dir` (0700), nearest last.
fn make_parents(dir: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let mkdir = |name: &[u8]| match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    };
    // Up from the parent until a directory exists (or is made), then down.
    let mut missing = Vec::new();
    let mut end = name.len();
    while let Some(slash) = name[..end].iter().rposition(|&b| b == b'/') {
        match mkdir(&name[..slash]) {
            Ok(()) => break,
            Err(Errno::NOENT) => missing.push(slash),
            Err(e) => return Err(e),
        }
        end = slash;
    }
    missing.iter().rev().try_for_each(|&slash| mkdir(&name[..slash]))
}

impl Staging {
    /// Creates (or reopens) `<root>/.stagingd/staging/<sync_id>/` for the plan
    /// with these `ops`. `preserve_owner`: set each staged inode's owner and group
    /// from the plan (only possible as root).
    ///
    /// The directories of the subtrees the plan creates are not made here, so
    /// the fetch starts at once: each is made (0700) when the first entry inside
    /// it is staged, by whichever stream stages it, and [`Staging::finish`]
    /// makes the rest (empty ones), sets their owners, and the modes and mtimes
    /// of those below a `NewTree` op's top. The tops' modes and mtimes are set
    /// in the tree, by the switch.
    ///
    /// # Panics
    /// On a `NewTree` op whose plan has released its subtree
    /// ([`Plan::release_subtrees`]): that is done once staging is over.
    pub fn create(root: &Path, sync_id: &SyncId, preserve_owner: bool, ops: &[Op]) -> Result<Self, StageError> {
        let tree = TreeRoot::open(root)?;
        let rel = Self::rel_dir(sync_id);
        let dir = tree.create_dir_all(&rel, 0o700)?;
        spread_subdirectories(&dir);
        let mut staging = Self::with_dir(tree, sync_id, rel, dir, preserve_owner, false);
        staging.layout = Layout::of(ops.iter());
        let mut new_dirs = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            if staging.layout.place(index) == Place::Entry {
                continue;
            }
            match op {
                Op::MkDir { path, meta } => {
                    new_dirs.push(NewDir {
                        op: index,
                        name: staged_path(path),
                        owner: staging.owner(meta.owner),
                        meta: None,
                    });
                }
                Op::NewTree { path, meta, tree, .. } => {
                    new_dirs.push(NewDir {
                        op: index,
                        name: staged_path(path),
                        owner: staging.owner(meta.owner),
                        meta: None,
                    });
                    let tree = tree.as_ref().expect("a plan's NewTree op holds its subtree until it is staged");
                    tree.for_each_below(path, &mut |path, node| {
                        if let Node::Dir(d) = node {
                            new_dirs.push(NewDir {
                                op: index,
                                name: staged_path(path),
                                owner: staging.owner(d.meta.owner),
                                meta: Some((d.meta.mode, d.meta.mtime)),
                            });
                        }
                    });
                }
                _ => {}
            }
        }
        staging.new_dirs = new_dirs;
        Ok(staging)
    }

    /// Makes every directory of the plan's new subtrees that staging their
    /// entries did not (parents first, as the plan lists them), and sets the
    /// owners of all of them; then, children first, the modes and mtimes of
    /// those below a `NewTree` op's top. Nothing else in a sync touches these
    /// directories before the switch.
    fn make_new_dirs(&self) -> Result<(), StageError> {
        for NewDir { name, owner, .. } in &self.new_dirs {
            match self.creating(name, || rustix::fs::mkdirat(&*self.dir, name.as_slice(), Mode::from_raw_mode(0o700))) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io_error("create staged directory", self.shown(name), e).into()),
            }
            let Some(owner) = owner else { continue };
            let shown = || self.shown(name);
            let found = crate::tree_fs::lstat_at(&self.dir, name)
                .map_err(|e| io_error("stat staged directory", shown(), e))?
                .ok_or_else(|| io_error("stat staged directory", shown(), Errno::NOENT))?;
            if (found.uid, found.gid) != (owner.uid, owner.gid) {
                rustix::fs::chownat(
                    &*self.dir,
                    name.as_slice(),
                    Some(rustix::fs::Uid::from_raw(owner.uid)),
                    Some(rustix::fs::Gid::from_raw(owner.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_error("set owner of staged directory", shown(), e))?;
            }
        }
        for NewDir { name, owner, meta, .. } in self.new_dirs.iter().rev() {
            let Some((mode, mtime)) = *meta else { continue };
            set_meta_at(&*self.dir, name, EntryKind::Dir, mode, mtime, *owner)
                .map_err(|e| io_error("set metadata of staged directory", self.shown(name), e))?;
        }
        Ok(())
    }

    /// The host path of `name` in the staging directory, for messages.
    fn shown(&self, name: &[u8]) -> String {
        shown_in(&self.shown_dir, name)
    }

    /// Where op `index` (at `path`) is staged, relative to the staging directory.
    fn staged_name(&self, index: usize, path: &RelPath) -> Vec<u8> {
        match self.layout.place(index) {
            Place::Entry => entry_name(index).into_bytes(),
            Place::NewTree | Place::InNewTree => staged_path(path),
        }
    }

    /// Runs `create` (which makes the staged entry `name`), first making the
    /// directories above it if `create` finds them missing.
    fn creating<T>(&self, name: &[u8], create: impl Fn() -> Result<T, Errno>) -> Result<T, Errno> {
        match create() {
            Err(Errno::NOENT) => {
                make_parents(&self.dir, name)?;
                create()
            }
            other => other,
        }
    }

    fn with_dir(
        tree: TreeRoot,
        sync_id: &SyncId,
        rel: RelPath,
        dir: OwnedFd,
        preserve_owner: bool,
        durable: bool,
    ) -> Self {
        let dir = Arc::new(dir);
        let shown_dir = tree.path().join(rel.as_path()).display().to_string().into();
        Self {
            shown_dir,
            tree,
            sync_id: sync_id.clone(),
            rel,
            flusher: Arc::new(Flusher::new(Arc::clone(&dir))),
            dir,
            preserve_owner,
            layout: Layout::default(),
            new_dirs: Vec::new(),
            durable: AtomicBool::new(durable),
        }
    }

    /// Reopens the staging directory a journal names, for recovery. Everything in
    /// it was made durable before the journal was written.
    pub(crate) fn reopen(root: &Path, sync_id: &SyncId) -> Result<Self, TreeFsError> {
        let tree = TreeRoot::open(root)?;
        let rel = Self::rel_dir(sync_id);
        let dir = tree.open_dir(&rel)?;
        Ok(Self::with_dir(tree, sync_id, rel, dir, false, true))
    }

    fn rel_dir(sync_id: &SyncId) -> RelPath {
        RelPath::new(format!("{STAGING_DIR}/{}", sync_id.as_str())).expect("sync ids are single valid names")
    }

    pub fn sync_id(&self) -> &SyncId {
        &self.sync_id
    }

    /// The staging directory's host path.
    pub fn path(&self) -> PathBuf {
        self.tree.path().join(self.rel.as_path())
    }

    pub(crate) fn dir_fd(&self) -> &OwnedFd {
        &self.dir
    }

    /// True once [`Staging::finish`] has made every staged entry durable.
    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::SeqCst)
    }

    fn owner(&self, owner: Owner) -> Option<Owner> {
        self.preserve_owner.then_some(owner)
    }

    /// Opens op `index`'s entry for content that arrives in chunks.
    pub fn writer(&self, index: usize, path: &RelPath, file: &FileMeta) -> Result<StagedWriter, StageError> {
        self.durable.store(false, Ordering::SeqCst);
        let name = self.staged_name(index, path);
        let dir = Arc::clone(&self.dir);
        // A new inode with its final permission bits (less the umask): usually
        // nothing is left for `finish` to change but the mtime. Set-id bits wait
        // until the content is verified. Nobody else can reach the inode: staging
        // directories are 0700. What is already there (an earlier attempt) goes.
        let create = || {
            rustix::fs::openat(
                &dir,
                name.as_slice(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(file.mode & 0o777),
            )
        };
        let fd = match self.creating(&name, create) {
            Err(Errno::EXIST) => rustix::fs::unlinkat(&dir, name.as_slice(), AtFlags::empty()).and_then(|()| create()),
            created => created,
        }
        .map_err(|e| io_error("create staged file", self.shown(&name), e))?;
        Ok(StagedWriter {
            dir,
            flusher: Arc::clone(&self.flusher),
            name,
            shown_dir: Arc::clone(&self.shown_dir),
            file: Some(std::fs::File::from(fd)),
            hasher: blake3::Hasher::new(),
            written: 0,
            path: path.clone(),
            expected: file.clone(),
            owner: self.owner(file.owner),
        })
    }

    /// Streams `reader` into op `index`'s entry, verifying size and hash.
    /// Returns the bytes written.
    pub fn stage_file(
        &self,
        index: usize,
        path: &RelPath,
        file: &FileMeta,
        mut reader: impl Read,
    ) -> Result<u64, StageError> {
        let mut writer = self.writer(index, path, file)?;
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(StageError::ReadSource { path: path.clone(), source_path: "(stream)".into(), source });
                }
            };
            writer.write_chunk(&buffer[..n])?;
        }
        writer.finish()
    }

    /// Copies a local file (another path in the tree, or a trash object) into op
    /// `index`'s entry. The source is read with `O_NOFOLLOW` and verified like any
    /// fetched content: it may have changed since it was hashed.
    pub fn stage_local_copy(
        &self,
        index: usize,
        path: &RelPath,
        file: &FileMeta,
        source: &LocalSource,
    ) -> Result<u64, StageError> {
        let (dir, name, shown) = match source {
            LocalSource::Tree(from) => {
                let (dir, name) = self.tree.parent("read local copy", from)?;
                (dir, name.to_vec(), self.tree.shown(from))
            }
            LocalSource::Trash => {
                let rel = RelPath::new(crate::trash::TRASH_DIR).expect("constant path is valid");
                let dir = self.tree.open_dir(&rel)?;
                let hex = file.hash.to_hex();
                let shown = format!("{}/{hex}", self.tree.shown(&rel));
                (dir, hex.into_bytes(), shown)
            }
        };
        let fd = rustix::fs::openat(
            &dir,
            name.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StageError::ReadSource {
            path: path.clone(),
            source_path: shown.clone(),
            source: e.into(),
        })?;
        let reader = std::fs::File::from(fd);
        self.stage_file(index, path, file, reader).map_err(|e| match e {
            StageError::ReadSource { path, source, .. } => StageError::ReadSource { path, source_path: shown, source },
            other => other,
        })
    }

    /// Creates op `index`'s entry as a symlink to `link.target`, with its mtime (and owner).
    pub fn stage_symlink(&self, index: usize, path: &RelPath, link: &SymlinkMeta) -> Result<(), StageError> {
        self.durable.store(false, Ordering::SeqCst);
        let name = self.staged_name(index, path);
        let shown = self.shown(&name);
        match rustix::fs::unlinkat(&self.dir, name.as_slice(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_error("stage symlink", shown, e).into()),
        }
        let target = std::ffi::OsStr::from_bytes(&link.target);
        self.creating(&name, || rustix::fs::symlinkat(target, &self.dir, name.as_slice()))
            .map_err(|e| io_error("stage symlink", format!("{shown} (for {path})"), e))?;
        if let Some(owner) = self.owner(link.owner) {
            rustix::fs::chownat(
                &self.dir,
                name.as_slice(),
                Some(rustix::fs::Uid::from_raw(owner.uid)),
                Some(rustix::fs::Gid::from_raw(owner.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_error("set owner of staged symlink", shown.clone(), e))?;
        }
        rustix::fs::utimensat(&self.dir, name.as_slice(), &mtime_only(link.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_error("set mtime of staged symlink", shown, e))?;
        Ok(())
    }

    /// Makes the new subtrees' remaining directories, then every staged entry
    /// durable with one `syncfs` of the tree's filesystem.
    pub fn finish(&self) -> Result<(), StageError> {
        self.make_new_dirs()?;
        self.tree.syncfs()?;
        self.durable.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Checks that every file and symlink `plan` writes, and every directory of
    /// a new subtree, has a staged entry of the right kind (and size), before
    /// the journal commits to them. The subtrees are read from `target`, the
    /// manifest `plan` leads to.
    pub fn check_complete(&self, plan: &Plan, target: &Manifest) -> Result<(), StageError> {
        let lstat = |name: &[u8]| {
            crate::tree_fs::lstat_at(&self.dir, name).map_err(|e| io_error("check staged entry", self.shown(name), e))
        };
        let writes = Writes::in_target(plan, target);
        let numbers: Vec<usize> = (0..writes.len()).collect();
        crate::cores::on_every_core(&numbers, |numbers| {
            for &n in numbers {
                let write = writes.get(n);
                let (kind, size) = match write.written {
                    Written::File(file) => (EntryKind::File, file.size),
                    Written::Symlink(_) => (EntryKind::Symlink, 0),
                };
                let name = self.staged_name(write.op, &write.path);
                match lstat(&name)? {
                    Some(st) if st.kind == kind && (kind != EntryKind::File || st.size == size) => {}
                    _ => return Err(StageError::NotStaged { index: write.op, path: write.path.into_owned() }),
                }
            }
            Ok(Vec::<()>::new())
        })?;
        for NewDir { op, name, .. } in &self.new_dirs {
            if lstat(name)?.map(|st| st.kind) != Some(EntryKind::Dir) {
                let path = RelPath::new(&name[crate::layout::TREE_DIR.len() + 1..]).expect("staged from a RelPath");
                return Err(StageError::NotStaged { index: *op, path });
            }
        }
        Ok(())
    }

    /// Removes the staging directory and everything in it.
    pub fn discard(self) -> Result<(), StageError> {
        Ok(remove_dir_all(&self.path())?)
    }
}

/// `dir/name` for messages, `name` escaped as manifest paths are.
fn shown_in(dir: &str, name: &[u8]) -> String {
    format!("{dir}/{}", manifest::path::escape(name))
}

/// `remove_dir_all` that tolerates a missing directory (std's never follows
/// symlinks). The directories below a new subtree's top get their final modes
/// in staging; where one is not writable and the daemon is not root, every
/// directory is made writable by its owner and the removal tried again.
pub(crate) fn remove_dir_all(path: &Path) -> Result<(), TreeFsError> {
    let remove = || match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    let removed = match remove() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => open_up_dirs(path).and_then(|()| remove()),
        other => other,
    };
    removed.map_err(|source| TreeFsError::Io {
        op: "remove staging directory",
        path: path.display().to_string(),
        source,
    })
}

/// Adds the owner's read, write and search bits to every directory below
/// `path`, never following a symlink.
fn open_up_dirs(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.is_dir() {
            let mode = meta.permissions().mode();
            if mode & 0o700 != 0o700 {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode | 0o700))?;
            }
            open_up_dirs(&entry.path())?;
        }
    }
    Ok(())
}

/// Where a local copy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalSource {
    /// Another path in the tree that holds the same content.
    Tree(RelPath),
    /// The trash object named by the content hash.
    Trash,
}

/// A staged file being written chunk by chunk. Dropped without
/// [`StagedWriter::finish`], the partial file is removed.
#[derive(Debug)]
pub struct StagedWriter {
    dir: Arc<OwnedFd>,
    flusher: Arc<Flusher>,
    name: Vec<u8>,
    shown_dir: Arc<str>,
    file: Option<std::fs::File>,
    hasher: blake3::Hasher,
    written: u64,
    path: RelPath,
    expected: FileMeta,
    owner: Option<Owner>,
}

impl StagedWriter {
    /// Appends `bytes`, hashing them. More bytes than announced fail at once.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), StageError> {
        if self.written + bytes.len() as u64 > self.expected.size {
            return Err(StageError::TooLong { path: self.path.clone(), expected: self.expected.size });
        }
        self.hasher.update(bytes);
        let file = self.file.as_mut().expect("the file is open until finish");
        file.write_all(bytes).map_err(|source| TreeFsError::Io {
            op: "write staged file",
            path: shown_in(&self.shown_dir, &self.name),
            source,
        })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Verifies size and hash, then sets owner, mode and mtime on the staged inode.
    pub fn finish(mut self) -> Result<u64, StageError> {
        if self.written != self.expected.size {
            return Err(StageError::ShortContent {
                path: self.path.clone(),
                expected: self.expected.size,
                actual: self.written,
            });
        }
        let actual: Hash = self.hasher.finalize().into();
        if actual != self.expected.hash {
            return Err(StageError::HashMismatch { path: self.path.clone(), expected: self.expected.hash, actual });
        }
        let file = self.file.take().expect("the file is open until finish");
        rustix::fs::fstat(&file)
            .and_then(|st| {
                set_inode_meta(&file, &EntryStat::from_stat(&st), self.expected.mode, self.expected.mtime, self.owner)
            })
            .map_err(|e| io_error("set metadata of staged file", shown_in(&self.shown_dir, &self.name), e))?;
        self.flusher.staged(self.written);
        // Done: keep the entry (Drop removes it only while `file` is still open).
        self.name.clear();
        Ok(self.written)
    }
}

impl Drop for StagedWriter {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = rustix::fs::unlinkat(&self.dir, self.name.as_slice(), AtFlags::empty());
        }
    }
}

/// Stages every file and symlink `writes` lists from local content only: the
/// trash first, then any path of `current` with the same hash. Rollback uses it
/// (all its content is local); a sync uses it before fetching the rest.
/// Returns the numbers of the file writes that had no usable local copy,
/// sorted by content hash as [`Writes::files_by_hash`] gives them: the fetch
/// indexes them in that order without sorting them again.
pub fn stage_from_local<P: std::ops::Deref<Target = Plan>>(
    staging: &Staging,
    writes: &Writes<P>,
    current: &Manifest,
    trash: &Trash,
) -> Result<Vec<u32>, StageError> {
    // One path per content the plan writes: a walk that builds a path only for
    // the files whose content is wanted (a small plan on a big tree allocates a
    // handful, not one per file). The wanted hashes are the file writes sorted
    // by hash, 4 bytes each: a set of a full copy's million hashes took ~70 MB,
    // and ~100 MB while it grew.
    let mut files = writes.files_by_hash(0..writes.len());
    let distinct = files.chunk_by(|&a, &b| writes.file_hash(a) == writes.file_hash(b)).count();
    let is_wanted = |hash: &Hash| files.binary_search_by_key(hash, |&n| writes.file_hash(n)).is_ok();
    let by_hash = current.paths_of_contents(distinct, is_wanted);
    // One listing of the trash rather than a lookup per file (a full copy writes
    // 150,000); a listed object that is not a usable file fails its copy below.
    let in_trash: std::collections::HashSet<Hash> = trash.hashes()?.into_iter().collect();
    let mut missing = vec![false; writes.len()];
    for (n, unstaged) in missing.iter_mut().enumerate() {
        let write = writes.get(n);
        let (index, path) = (write.op, &*write.path);
        match write.written {
            Written::Symlink(link) => staging.stage_symlink(index, path, link)?,
            Written::File(file) => {
                let mut sources = Vec::new();
                if in_trash.contains(&file.hash) {
                    sources.push(LocalSource::Trash);
                }
                if let Some(from) = by_hash.get(&file.hash) {
                    sources.push(LocalSource::Tree(from.clone()));
                }
                let mut staged = false;
                for source in &sources {
                    match staging.stage_local_copy(index, path, file, source) {
                        Ok(_) => {
                            staged = true;
                            break;
                        }
                        Err(
                            e @ (StageError::HashMismatch { .. }
                            | StageError::ShortContent { .. }
                            | StageError::TooLong { .. }
                            | StageError::ReadSource { .. }),
                        ) => {
                            tracing::warn!(%path, ?source, "local copy unusable: {e}");
                        }
                        Err(e) => return Err(e),
                    }
                }
                *unstaged = !staged;
            }
        }
    }
    files.retain(|&n| missing[n as usize]);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn staging_directories_left_without_write_or_search_permission_are_opened_up_for_removal() {
        // Staging gives the directories below a new subtree's top their final
        // modes; a daemon that is not root must still be able to remove them.
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("s1-x");
        let deep = staging.join("tree/new/ro/none");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"x").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, staging.join("tree/new/link")).unwrap();
        let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777;
        let set =
            |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        set(&outside, 0o500);
        set(&deep, 0o000);
        set(deep.parent().unwrap(), 0o555);
        open_up_dirs(&staging).unwrap();
        assert_eq!(mode(deep.parent().unwrap()), 0o755);
        assert_eq!(mode(&deep), 0o700);
        assert_eq!(mode(&outside), 0o500, "symlinks are not followed");
        remove_dir_all(&staging).unwrap();
        assert!(!staging.exists());
        remove_dir_all(&staging).unwrap();
    }
}
