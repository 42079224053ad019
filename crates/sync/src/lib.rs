//! The sync engine: everything between "this plan is allowed" and "the tree is the
//! target, and the old one can be restored".
//!
//! The file work is blocking, synchronous code; [`engine`] runs it on tokio's
//! blocking pool and talks to the peer asynchronously.
//!
//! - [`tree_fs`]: [`TreeRoot`], reaching paths under a root without following symlinks.
//! - [`stage`]: [`Staging`], content written and verified under temporary names.
//! - [`layout`]: which ops are staged one by one and which as whole new subtrees.
//! - [`writes`]: [`Writes`], every file and symlink a plan stages, numbered.
//! - [`trash`]: [`Trash`], content-addressed hard links to every replaced or deleted file.
//! - [`journal`]: the record that makes a switch survive a crash.
//! - [`apply`]: [`apply()`](apply::apply) the journaled switch, [`recover`] after a crash.
//! - [`history`]: what each sync did, the before-manifests rollbacks need, retention.
//! - [`capacity`]: free bytes and inodes ([`CapacityProbe`]).
//! - [`lock`]: one sync or rollback per tree at a time ([`TreeLock`]).
//!
//! - [`guards`]: every rule that decides whether a sync may proceed.
//! - [`remote`]: the [`PeerSource`](remote::PeerSource) trait and the Merkle walk that plans against a peer.
//! - [`engine`]: one tree's sync, rollback and verify, end to end.

pub mod apply;
pub mod capacity;
pub mod cores;
pub mod engine;
pub mod guards;
pub mod history;
pub mod itemize;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod remote;
pub mod stage;
pub mod trash;
pub mod tree_fs;
pub mod writes;

pub use apply::{Applied, ApplyError, ApplyOptions, Recovery, StepControl, recover};
pub use capacity::{CapacityProbe, FakeProbe, Space, StatvfsProbe};
pub use history::{History, HistoryRecord, RollbackTo, SyncId};
pub use lock::{Busy, LockGuard, TreeLock};
pub use stage::{LocalSource, StageError, StagedWriter, Staging, stage_from_local};
pub use trash::Trash;
pub use tree_fs::{TreeFsError, TreeRoot};
pub use writes::{Write, Writes, Written};

/// What unit tests of several modules build their plans from.
#[cfg(test)]
pub(crate) mod test_support {
    use manifest::{FileMeta, Hash};

    /// A 0644 file holding `content`, with no times, owner or stat key.
    pub fn file_of(content: &[u8]) -> FileMeta {
        FileMeta {
            size: content.len() as u64,
            mode: 0o644,
            mtime: Default::default(),
            hash: Hash::of_content(content),
            owner: Default::default(),
            stat: Default::default(),
        }
    }
}
