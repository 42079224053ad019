//! The per-tree sync lock: one sync or rollback at a time, and a second one is
//! refused with who holds it, never queued.
//!
//! [`TreeLock`] is cheap to clone (one per tree, shared by the daemon's handlers);
//! [`TreeLock::try_acquire`] returns an RAII [`LockGuard`] or
//! [`Busy`] naming the holder, its operation, reason and since when (as
//! `scap lock` does). The lock lives in memory: one daemon owns a tree.
//!
//! This module does not persist anything and never waits.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Who holds a tree's lock, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub who: String,
    /// `sync`, `rollback`, ...
    pub operation: String,
    pub reason: String,
    pub since: SystemTime,
}

/// A second acquire while the lock is held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tree is busy: {} by {} since {} ({})\nhint: wait for it to finish; `stagingctl status` shows progress",
    holder.operation, holder.who, humantime::format_rfc3339_seconds(holder.since), holder.reason
)]
pub struct Busy {
    pub holder: LockHolder,
}

/// The lock of one tree.
#[derive(Debug, Clone, Default)]
pub struct TreeLock {
    holder: Arc<Mutex<Option<LockHolder>>>,
}

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct LockGuard {
    holder: Arc<Mutex<Option<LockHolder>>>,
}

impl TreeLock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the lock, or says who has it. Never waits.
    pub fn try_acquire(&self, who: &str, operation: &str, reason: &str) -> Result<LockGuard, Busy> {
        let mut slot = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = slot.as_ref() {
            return Err(Busy { holder: holder.clone() });
        }
        *slot = Some(LockHolder {
            who: who.to_owned(),
            operation: operation.to_owned(),
            reason: reason.to_owned(),
            since: SystemTime::now(),
        });
        Ok(LockGuard { holder: Arc::clone(&self.holder) })
    }

    /// The current holder, for status.
    pub fn holder(&self) -> Option<LockHolder> {
        self.holder.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        *self.holder.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_sync_is_refused_with_the_holder_not_queued() {
        let lock = TreeLock::new();
        let guard = lock.try_acquire("alice", "sync", "backport 123").unwrap();
        let busy = lock.clone().try_acquire("bob", "rollback", "oops").unwrap_err();
        assert_eq!(busy.holder.who, "alice");
        let message = busy.to_string();
        assert!(message.contains("alice") && message.contains("sync") && message.contains("backport 123"), "{message}");
        assert_eq!(lock.holder().unwrap().operation, "sync");
        drop(guard);
        assert_eq!(lock.holder(), None);
        lock.try_acquire("bob", "rollback", "oops").unwrap();
    }
}
