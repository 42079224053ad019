//! A handle on a tree root that reaches every [`RelPath`] beneath it without
//! following a symlink and without leaving the root.
//!
//! Everything the engine changes in a tree goes through [`TreeRoot`]: it opens the
//! parent directory of a path with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! (or, where the kernel lacks `openat2`, walks component by component with
//! `O_NOFOLLOW | O_DIRECTORY`) and then acts on the last name relative to that
//! directory descriptor. A path whose parent is a symlink, or that would climb out
//! of the root, is an [`TreeFsError::Unsafe`] naming the path: it is never followed.
//!
//! This module owns resolution and the small primitives (lstat, mkdir, open a
//! directory, set metadata on an inode). It does not decide what to change: the
//! order and meaning of changes belong to [`crate::apply`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use manifest::{RelPath, Timestamp};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

/// Why a path inside a tree could not be reached or changed.
#[derive(Debug, thiserror::Error)]
pub enum TreeFsError {
    /// Reaching the path would follow a symlink, go through something that is not
    /// a directory, or leave the tree root. Nothing was followed.
    #[error(
        "{op} {path}: refused: a parent of this path is a symlink or not a directory, or the path leaves the tree root \
         ({why}); nothing was followed"
    )]
    Unsafe { op: &'static str, path: String, why: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl TreeFsError {
    /// True when the path (or one of its parents) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TreeFsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// How parent directories are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolver {
    /// One `openat2` call with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
    Openat2,
    /// `openat(O_NOFOLLOW | O_DIRECTORY)` per component (kernels before 5.6).
    Walk,
}

/// What `lstat` found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryStat {
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
}

/// The kind of an entry on disk; anything that is not a file, directory or symlink is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl EntryStat {
    // `struct stat` field types differ between architectures; the casts are no-ops on some.
    #[allow(clippy::unnecessary_cast)]
    pub fn from_stat(st: &Stat) -> Self {
        let kind = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        Self {
            kind,
            size: st.st_size as u64,
            mode: st.st_mode as u32 & 0o7777,
            mtime: Timestamp::new(st.st_mtime as i64, st.st_mtime_nsec as u32),
            ctime: Timestamp::new(st.st_ctime as i64, st.st_ctime_nsec as u32),
            ino: st.st_ino as u64,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
        }
    }

    /// The kind as the manifest names it, `None` for special files.
    pub fn manifest_kind(&self) -> Option<manifest::Kind> {
        match self.kind {
            EntryKind::File => Some(manifest::Kind::File),
            EntryKind::Dir => Some(manifest::Kind::Dir),
            EntryKind::Symlink => Some(manifest::Kind::Symlink),
            EntryKind::Other => None,
        }
    }
}

/// An open tree root.
#[derive(Debug)]
pub struct TreeRoot {
    path: PathBuf,
    fd: OwnedFd,
    resolver: Resolver,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl TreeRoot {
    /// Opens `root` (the root itself may be reached through a symlink: it comes
    /// from the operator's configuration, not from a peer).
    pub fn open(root: &Path) -> Result<Self, TreeFsError> {
        let mut tree = Self::open_with(root, Resolver::Openat2)?;
        // Probe once: kernels before 5.6 (or seccomp filters) refuse openat2.
        match rustix::fs::openat2(&tree.fd, ".", DIR_FLAGS, Mode::empty(), beneath()) {
            Ok(_) => {}
            Err(Errno::NOSYS) | Err(Errno::PERM) | Err(Errno::INVAL) => tree.resolver = Resolver::Walk,
            Err(e) => return Err(io_error("open tree root", root.display().to_string(), e)),
        }
        Ok(tree)
    }

    /// Opens `root` resolving by walking components, as on kernels without
    /// `openat2`; tests use it to cover that path too.
    pub fn open_walking(root: &Path) -> Result<Self, TreeFsError> {
        Self::open_with(root, Resolver::Walk)
    }

    fn open_with(root: &Path, resolver: Resolver) -> Result<Self, TreeFsError> {
        let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io_error("open tree root", root.display().to_string(), e))?;
        Ok(Self { path: root.to_path_buf(), fd, resolver })
    }

    /// The root's host path (for messages and for `manifest::scan`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The host path of `rel`, for messages only: it is never opened.
    pub fn shown(&self, rel: &RelPath) -> String {
        if rel.is_root() {
            self.path.display().to_string()
        } else {
            self.path.join(rel.as_path()).display().to_string()
        }
    }

    /// Opens the directory at `rel` (the root for the empty path) without
    /// following any symlink on the way, the last component included.
    pub fn open_dir(&self, rel: &RelPath) -> Result<OwnedFd, TreeFsError> {
        self.open_dir_as("open directory", rel, rel)
    }

    /// Opens directory `rel`; errors name `for_path` (the path the caller is after).
    fn open_dir_as(&self, op: &'static str, rel: &RelPath, for_path: &RelPath) -> Result<OwnedFd, TreeFsError> {
        if rel.is_root() {
            return rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
                .map_err(|e| io_error(op, self.shown(rel), e));
        }
        match self.resolver {
            Resolver::Openat2 => {
                // EAGAIN: a concurrent rename somewhere in the filesystem; the kernel asks us to retry.
                let mut attempts = 0;
                loop {
                    match rustix::fs::openat2(&self.fd, rel.as_path(), DIR_FLAGS, Mode::empty(), beneath()) {
                        Ok(fd) => return Ok(fd),
                        Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
                        Err(e) => return Err(self.classify(op, for_path, e)),
                    }
                }
            }
            Resolver::Walk => {
                let mut dir = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
                    .map_err(|e| io_error(op, self.shown(rel), e))?;
                for name in rel.components() {
                    dir = rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())
                        .map_err(|e| self.classify(op, for_path, e))?;
                }
                Ok(dir)
            }
        }
    }

    fn classify(&self, op: &'static str, rel: &RelPath, errno: Errno) -> TreeFsError {
        let why = match errno {
            Errno::LOOP | Errno::NOTDIR => "a component is a symlink or not a directory",
            Errno::XDEV => "the path leaves the tree root",
            _ => return io_error(op, self.shown(rel), errno),
        };
        TreeFsError::Unsafe { op, path: self.shown(rel), why: why.to_owned() }
    }

    /// Opens the parent directory of `rel` and returns it with the last name.
    /// The root has no parent: asking for it is an error.
    pub fn parent<'p>(&self, op: &'static str, rel: &'p RelPath) -> Result<(OwnedFd, &'p [u8]), TreeFsError> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(TreeFsError::Unsafe { op, path: self.shown(rel), why: "the tree root itself".to_owned() });
        };
        Ok((self.open_dir_as(op, &parent, rel)?, name))
    }

    /// `lstat` of `rel`: `Ok(None)` when it, or a parent, does not exist. A parent
    /// that is a symlink or a file is [`TreeFsError::Unsafe`].
    pub fn lstat(&self, rel: &RelPath) -> Result<Option<EntryStat>, TreeFsError> {
        if rel.is_root() {
            let st = rustix::fs::fstat(&self.fd).map_err(|e| io_error("stat", self.shown(rel), e))?;
            return Ok(Some(EntryStat::from_stat(&st)));
        }
        let (dir, name) = match self.parent("stat", rel) {
            Ok(found) => found,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        lstat_at(&dir, name).map_err(|e| io_error("stat", self.shown(rel), e))
    }

    /// Creates the directory at `rel` and every missing parent (mode `mode`), never
    /// following a symlink; used for the engine's own directories under `.stagingd/`.
    pub fn create_dir_all(&self, rel: &RelPath, mode: u32) -> Result<OwnedFd, TreeFsError> {
        let mut dir = self.open_dir(&RelPath::root())?;
        for name in rel.components() {
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io_error("create directory", self.shown(rel), e)),
            }
            dir = rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| self.classify("create directory", rel, e))?;
        }
        Ok(dir)
    }

    /// `syncfs` on the filesystem holding the tree: one call makes every write in
    /// it durable (DESIGN §4: an fsync per file is unaffordable at 150k files).
    pub fn syncfs(&self) -> Result<(), TreeFsError> {
        rustix::fs::syncfs(&self.fd).map_err(|e| io_error("syncfs", self.path.display().to_string(), e))
    }
}

/// The open directories along the last path looked up, root first. Plans, and
/// the verification after a switch, visit paths depth-first, so a parent is
/// usually open already or one `openat(O_NOFOLLOW)` below an open ancestor:
/// a symlink is never followed, as with [`TreeRoot::parent`], without
/// resolving the whole path for every entry.
pub(crate) struct DirCursor {
    stack: Vec<(RelPath, OwnedFd)>,
}

impl DirCursor {
    pub(crate) fn new(tree: &TreeRoot) -> Result<Self, TreeFsError> {
        let root = tree.open_dir(&RelPath::root())?;
        Ok(Self { stack: vec![(RelPath::root(), root)] })
    }

    /// The open parent directory of `path` and `path`'s last name; errors as
    /// [`TreeRoot::parent`]'s.
    pub(crate) fn parent<'p>(
        &mut self,
        tree: &TreeRoot,
        op: &'static str,
        path: &'p RelPath,
    ) -> Result<(BorrowedFd<'_>, &'p [u8]), TreeFsError> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(TreeFsError::Unsafe { op, path: tree.shown(path), why: "the tree root itself".to_owned() });
        };
        while !parent.starts_with(&self.stack.last().expect("the root is never popped").0) {
            self.stack.pop();
        }
        let open = self.stack.len() - 1;
        for component in parent.components().skip(open) {
            let (dir_path, dir) = self.stack.last().expect("the root is never popped");
            let fd =
                rustix::fs::openat(dir, component, DIR_FLAGS, Mode::empty()).map_err(|e| tree.classify(op, path, e))?;
            let child = dir_path.join(component).expect("a component of a valid path is a valid name");
            self.stack.push((child, fd));
        }
        Ok((self.stack.last().expect("the root is never popped").1.as_fd(), name))
    }

    /// `lstat` of `path` as [`TreeRoot::lstat`]: `Ok(None)` when it or a parent
    /// does not exist.
    pub(crate) fn lstat(&mut self, tree: &TreeRoot, path: &RelPath) -> Result<Option<EntryStat>, TreeFsError> {
        if path.is_root() {
            return tree.lstat(path);
        }
        let (dir, name) = match self.parent(tree, "stat", path) {
            Ok(found) => found,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        lstat_at(dir, name).map_err(|e| io_error("stat", tree.shown(path), e))
    }

    /// Closes `path` and everything open below it: it was removed or replaced.
    pub(crate) fn forget(&mut self, path: &RelPath) {
        if path.is_root() {
            self.stack.truncate(1);
            return;
        }
        while self.stack.last().expect("the root is never popped").0.starts_with(path) {
            self.stack.pop();
        }
    }
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// `lstat` of `name` in `dir`; `Ok(None)` when absent.
pub fn lstat_at(dir: impl AsFd, name: &[u8]) -> Result<Option<EntryStat>, Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(EntryStat::from_stat(&st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An `io::Error` for `op` on `path`.
pub(crate) fn io_error(op: &'static str, path: String, errno: Errno) -> TreeFsError {
    TreeFsError::Io { op, path, source: errno.into() }
}

pub(crate) fn timespec(t: Timestamp) -> Timespec {
    Timespec { tv_sec: t.secs, tv_nsec: t.nanos as _ }
}

/// Timestamps that leave the access time alone and set the modification time.
pub(crate) fn mtime_only(t: Timestamp) -> Timestamps {
    Timestamps { last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT }, last_modification: timespec(t) }
}

/// Sets owner (when `owner` is given), mode and mtime on an open inode whose
/// stat is `found`, in that order: `chown` clears set-id bits, and any change
/// moves the mtime, so the mode comes after the owner and the mtime last. An
/// owner or mode that `found` already has is not set again: each change is a
/// journaled inode update, and a staged file is usually created with both.
pub(crate) fn set_inode_meta(
    fd: impl AsFd,
    found: &EntryStat,
    mode: u32,
    mtime: Timestamp,
    owner: Option<manifest::Owner>,
) -> Result<(), Errno> {
    let chown = owner.filter(|owner| (found.uid, found.gid) != (owner.uid, owner.gid));
    if let Some(owner) = chown {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(owner.uid)),
            Some(rustix::fs::Gid::from_raw(owner.gid)),
        )?;
    }
    if chown.is_some() || found.mode != mode & 0o7777 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    }
    rustix::fs::futimens(&fd, &mtime_only(mtime))
}

/// Sets owner, mode and mtime on `name` in `dir`, which must be of `kind`
/// (file or directory). The inode is opened with `O_NOFOLLOW`; when it cannot be
/// opened for reading (mode 000 and we are not root) the `*at` calls are used on
/// the name after checking it is not a symlink.
pub(crate) fn set_meta_at(
    dir: impl AsFd,
    name: &[u8],
    kind: EntryKind,
    mode: u32,
    mtime: Timestamp,
    owner: Option<manifest::Owner>,
) -> Result<(), Errno> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let flags = if kind == EntryKind::Dir { flags | OFlags::DIRECTORY } else { flags };
    match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
        Ok(fd) => {
            let found = EntryStat::from_stat(&rustix::fs::fstat(&fd)?);
            if found.kind != kind {
                return Err(Errno::NOTDIR);
            }
            set_inode_meta(fd, &found, mode, mtime, owner)
        }
        Err(Errno::ACCESS) => {
            match lstat_at(&dir, name)? {
                Some(found) if found.kind == kind => {}
                Some(_) => return Err(Errno::NOTDIR),
                None => return Err(Errno::NOENT),
            }
            if let Some(owner) = owner {
                rustix::fs::chownat(
                    &dir,
                    name,
                    Some(rustix::fs::Uid::from_raw(owner.uid)),
                    Some(rustix::fs::Gid::from_raw(owner.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            rustix::fs::chmodat(&dir, name, Mode::from_raw_mode(mode), AtFlags::empty())?;
            rustix::fs::utimensat(&dir, name, &mtime_only(mtime), AtFlags::SYMLINK_NOFOLLOW)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn symlinked_parent_is_refused_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a")).unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::os::unix::fs::symlink("..", root.path().join("d/up")).unwrap();
        for tree in [TreeRoot::open(root.path()).unwrap(), TreeRoot::open_walking(root.path()).unwrap()] {
            for path in ["a/secret", "d/up/a/secret", "a/new"] {
                let error = tree.lstat(&rel(path)).unwrap_err();
                assert!(matches!(error, TreeFsError::Unsafe { .. }), "{path}: {error}");
                assert!(error.to_string().contains(path), "the error names the path: {error}");
            }
            assert!(matches!(tree.open_dir(&rel("a")), Err(TreeFsError::Unsafe { .. })));
            // The symlink itself is an entry and can be looked at.
            assert_eq!(tree.lstat(&rel("a")).unwrap().unwrap().kind, EntryKind::Symlink);
            assert_eq!(tree.lstat(&rel("missing/x")).unwrap(), None);
        }
    }

    #[test]
    fn dir_cursor_never_follows_a_symlink_and_forgets_what_was_replaced() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::create_dir_all(root.path().join("d/e")).unwrap();
        std::fs::write(root.path().join("d/e/f"), b"12").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a")).unwrap();
        std::os::unix::fs::symlink("..", root.path().join("d/up")).unwrap();
        let tree = TreeRoot::open(root.path()).unwrap();
        let mut cursor = DirCursor::new(&tree).unwrap();
        // Deep, then up and sideways into a symlink: refused, not followed.
        assert_eq!(cursor.lstat(&tree, &rel("d/e/f")).unwrap().unwrap().size, 2);
        for path in ["a/secret", "d/up/a/secret", "d/up/d/e/f"] {
            let error = cursor.lstat(&tree, &rel(path)).unwrap_err();
            assert!(matches!(error, TreeFsError::Unsafe { .. }), "{path}: {error}");
        }
        assert_eq!(cursor.lstat(&tree, &rel("d/missing/x")).unwrap(), None);
        // `d/e` swapped for a symlink to the outside: a cursor that forgot it
        // refuses the new path instead of using the old directory's descriptor.
        assert_eq!(cursor.lstat(&tree, &rel("d/e/f")).unwrap().unwrap().size, 2);
        std::fs::rename(root.path().join("d/e"), root.path().join("old-e")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("d/e")).unwrap();
        cursor.forget(&rel("d/e"));
        assert!(matches!(cursor.lstat(&tree, &rel("d/e/secret")), Err(TreeFsError::Unsafe { .. })));
        assert_eq!(cursor.lstat(&tree, &rel("old-e/f")).unwrap().unwrap().size, 2);
    }

    #[test]
    fn file_in_the_middle_of_a_path_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), b"x").unwrap();
        let tree = TreeRoot::open(root.path()).unwrap();
        assert!(matches!(tree.lstat(&rel("f/x")), Err(TreeFsError::Unsafe { .. })));
    }

    #[test]
    fn create_dir_all_never_goes_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join(".stagingd")).unwrap();
        let tree = TreeRoot::open(root.path()).unwrap();
        assert!(tree.create_dir_all(&rel(".stagingd/staging"), 0o700).is_err());
        assert!(!outside.path().join("staging").exists());
    }
}
