//! The sync engine: everything between "this plan is allowed" and "the tree is the
//! target, and the old one can be restored".
//!
//! Blocking, synchronous code: the daemon runs it on `spawn_blocking`.
//!
//! - [`tree_fs`]: [`TreeRoot`], reaching paths under a root without following symlinks.
//! - [`stage`]: [`Staging`], content written and verified under temporary names.
//! - [`trash`]: [`Trash`], content-addressed hard links to every replaced or deleted file.
//! - [`journal`]: the record that makes a switch survive a crash.
//! - [`apply`]: [`apply()`](apply::apply) the journaled switch, [`recover`] after a crash.
//! - [`history`]: what each sync did, the before-manifests rollbacks need, retention.
//! - [`capacity`]: free bytes and inodes ([`CapacityProbe`]).
//! - [`lock`]: one sync or rollback per tree at a time ([`TreeLock`]).
//!
//! Policy (whether a sync may run at all) lives in `guards`, written separately.

pub mod apply;
pub mod capacity;
pub mod history;
pub mod journal;
pub mod lock;
pub mod stage;
pub mod trash;
pub mod tree_fs;

pub use apply::{Applied, ApplyError, ApplyOptions, Recovery, StepControl, recover};
pub use capacity::{CapacityProbe, FakeProbe, Space, StatvfsProbe};
pub use history::{History, HistoryRecord, RollbackTo, SyncId};
pub use lock::{Busy, LockGuard, TreeLock};
pub use stage::{LocalSource, StageError, StagedWriter, Staging, stage_from_local};
pub use trash::Trash;
pub use tree_fs::{TreeFsError, TreeRoot};
