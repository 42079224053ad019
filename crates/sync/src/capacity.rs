//! Free space and free inodes of a tree's filesystem.
//!
//! [`CapacityProbe`] is the one question the capacity guard asks; [`StatvfsProbe`]
//! answers it with `statvfs` (counting what an unprivileged writer may use) and
//! [`FakeProbe`] answers with fixed numbers so "full disk" and "no inodes" are
//! tested without filling a disk.
//!
//! This module measures; whether a plan fits (with what margin) is decided by the
//! guards.

use std::io;
use std::path::Path;
use std::sync::Mutex;

/// Space on a filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Space {
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub free_inodes: u64,
    pub total_inodes: u64,
}

/// Asks how much room the filesystem holding `root` has.
pub trait CapacityProbe: Send + Sync {
    fn free(&self, root: &Path) -> io::Result<Space>;
}

/// The real probe: `statvfs(2)`. Free counts are those available to unprivileged
/// users (`f_bavail`, `f_favail`), the conservative choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatvfsProbe;

impl CapacityProbe for StatvfsProbe {
    fn free(&self, root: &Path) -> io::Result<Space> {
        let st = rustix::fs::statvfs(root)
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("statvfs {}: {e}", root.display())))?;
        let unit = if st.f_frsize > 0 { st.f_frsize } else { st.f_bsize };
        Ok(Space {
            free_bytes: st.f_bavail.saturating_mul(unit),
            total_bytes: st.f_blocks.saturating_mul(unit),
            free_inodes: st.f_favail,
            total_inodes: st.f_files,
        })
    }
}

/// A probe that reports whatever a test sets.
#[derive(Debug, Default)]
pub struct FakeProbe {
    space: Mutex<Space>,
}

impl FakeProbe {
    pub fn new(space: Space) -> Self {
        Self { space: Mutex::new(space) }
    }

    pub fn set(&self, space: Space) {
        *self.space.lock().unwrap_or_else(|p| p.into_inner()) = space;
    }
}

impl CapacityProbe for FakeProbe {
    fn free(&self, _root: &Path) -> io::Result<Space> {
        Ok(*self.space.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_reports_plausible_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let space = StatvfsProbe.free(dir.path()).unwrap();
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes, "{space:?}");
        assert!(space.free_inodes <= space.total_inodes || space.total_inodes == 0, "{space:?}");
        let error = StatvfsProbe.free(Path::new("/nonexistent/stagingd")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/stagingd"), "{error}");
    }

    #[test]
    fn fake_probe_reports_what_it_is_told() {
        let probe = FakeProbe::new(Space { free_bytes: 1, total_bytes: 2, free_inodes: 3, total_inodes: 4 });
        assert_eq!(probe.free(Path::new("/x")).unwrap().free_inodes, 3);
        probe.set(Space::default());
        assert_eq!(probe.free(Path::new("/x")).unwrap(), Space::default());
    }
}
