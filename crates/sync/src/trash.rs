//! The content-addressed trash: every file a sync replaces or deletes is kept.
//!
//! [`Trash`] owns `<root>/.stagingd/trash/`, one hard link per content hash,
//! named by the hash in hex. Before a file is replaced or unlinked, its inode is
//! hard-linked here (no copy, no extra bytes, and the path never disappears: the
//! new file is renamed over the old name afterwards). When an object with that
//! hash is already here no link is needed. Objects are read back by
//! [`crate::stage::Staging::stage_local_copy`] for rollbacks and local copies,
//! always verified against their hash.
//!
//! This module does not decide what to keep: [`crate::history`] computes the set
//! of hashes retained history still needs and passes it to [`Trash::expire`].

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use manifest::{Hash, RelPath};
use rustix::fs::AtFlags;
use rustix::io::Errno;

use crate::tree_fs::{EntryKind, TreeFsError, TreeRoot, io_error, lstat_at};

/// Where the trash lives, relative to the tree root.
pub const TRASH_DIR: &str = ".stagingd/trash";

/// What [`Trash::expire`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub objects: u64,
    pub bytes: u64,
}

/// The trash of one tree.
#[derive(Debug)]
pub struct Trash {
    path: PathBuf,
    dir: OwnedFd,
}

impl Trash {
    /// Opens (creating it if needed) the trash of the tree at `root`.
    pub fn open(root: &Path) -> Result<Self, TreeFsError> {
        Self::open_in(&TreeRoot::open(root)?)
    }

    pub(crate) fn open_in(tree: &TreeRoot) -> Result<Self, TreeFsError> {
        let rel = RelPath::new(TRASH_DIR).expect("constant path is valid");
        let dir = tree.create_dir_all(&rel, 0o700)?;
        Ok(Self { path: tree.path().join(TRASH_DIR), dir })
    }

    /// The host path of the object for `hash`, when there is one.
    pub fn path_of(&self, hash: &Hash) -> Option<PathBuf> {
        self.contains(hash).then(|| self.path.join(hash.to_hex()))
    }

    /// True when an object for `hash` is kept.
    pub fn contains(&self, hash: &Hash) -> bool {
        matches!(lstat_at(&self.dir, hash.to_hex().as_bytes()), Ok(Some(st)) if st.kind == EntryKind::File)
    }

    /// Hard-links the file `name` in `dir` into the trash as `hash`, unless an
    /// object for that hash is already kept. Returns true when a link was made.
    /// `linkat` without `AT_SYMLINK_FOLLOW` never follows a symlink.
    pub(crate) fn keep(&self, dir: impl AsFd, name: &[u8], hash: &Hash, shown: &str) -> Result<bool, TreeFsError> {
        let hex = hash.to_hex();
        if self.contains(hash) {
            return Ok(false);
        }
        match rustix::fs::linkat(dir, name, &self.dir, hex.as_str(), AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(io_error("keep in trash (hard link)", shown.to_owned(), e)),
        }
    }

    /// Every hash kept.
    pub fn hashes(&self) -> Result<Vec<Hash>, TreeFsError> {
        let shown = || self.path.display().to_string();
        let entries = fs_err::read_dir(&self.path).map_err(|source| TreeFsError::Io {
            op: "list trash",
            path: shown(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| TreeFsError::Io { op: "list trash", path: shown(), source })?;
            if let Some(hash) = entry.file_name().to_str().and_then(|n| n.parse::<Hash>().ok()) {
                out.push(hash);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes every object whose hash is not in `keep`.
    pub fn expire(&self, keep: &HashSet<Hash>) -> Result<Expired, TreeFsError> {
        let mut expired = Expired::default();
        for hash in self.hashes()? {
            if keep.contains(&hash) {
                continue;
            }
            let hex = hash.to_hex();
            let size = lstat_at(&self.dir, hex.as_bytes()).ok().flatten().map_or(0, |st| st.size);
            match rustix::fs::unlinkat(&self.dir, hex.as_str(), AtFlags::empty()) {
                Ok(()) => {
                    expired.objects += 1;
                    expired.bytes += size;
                }
                Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(TreeFsError::Io {
                        op: "expire trash object",
                        path: self.path.join(hex).display().to_string(),
                        source: io::Error::from(e),
                    });
                }
            }
        }
        Ok(expired)
    }
}
