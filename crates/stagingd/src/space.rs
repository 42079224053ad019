//! Free space and inodes of the filesystem a tree lives on.

use std::path::Path;

/// Bytes and inodes, free (to an unprivileged user) and total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub free_inodes: u64,
    pub total_inodes: u64,
}

/// `statvfs` of `path`; all zeros when it fails (status then shows 0 free, which
/// monitoring flags, rather than hiding the problem).
pub fn probe(path: &Path) -> Space {
    match rustix::fs::statvfs(path) {
        Ok(s) => Space {
            free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
            free_inodes: s.f_favail,
            total_inodes: s.f_files,
        },
        Err(e) => {
            tracing::warn!(path = %path.display(), "statvfs failed: {e}");
            Space::default()
        }
    }
}
