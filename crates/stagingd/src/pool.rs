//! The node's pool state, persisted with who changed it, when and why.
//!
//! `receive-only` is the default for a node with no saved state, and the state a
//! node falls back to — loudly — when its saved state cannot be read: a freshly
//! reimaged master must never become a sync source by accident. The file is
//! written with `write_atomic`, so a crash leaves the old state or the new one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use manifest::fsutil::write_atomic;
use proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Whether others may sync from this node, and whether it accepts syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolState {
    /// "Sync to me, don't sync from me yet."
    ReceiveOnly,
    /// A source for its peers.
    Serve,
    /// Neither serves nor receives.
    Depooled,
}

impl PoolState {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::ReceiveOnly => "receive-only",
            PoolState::Serve => "serve",
            PoolState::Depooled => "depooled",
        }
    }

    pub fn to_proto(self) -> pb::PoolState {
        match self {
            PoolState::ReceiveOnly => pb::PoolState::ReceiveOnly,
            PoolState::Serve => pb::PoolState::Serve,
            PoolState::Depooled => pb::PoolState::Depooled,
        }
    }

    pub fn from_proto(state: pb::PoolState) -> Option<Self> {
        match state {
            pb::PoolState::ReceiveOnly => Some(PoolState::ReceiveOnly),
            pb::PoolState::Serve => Some(PoolState::Serve),
            pb::PoolState::Depooled => Some(PoolState::Depooled),
            pb::PoolState::Unspecified => None,
        }
    }
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PoolState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "receive-only" => Ok(PoolState::ReceiveOnly),
            "serve" => Ok(PoolState::Serve),
            "depooled" => Ok(PoolState::Depooled),
            other => Err(format!("{other:?} is not a pool state (serve, receive-only, depooled)")),
        }
    }
}

/// The persisted record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRecord {
    pub state: PoolState,
    pub who: String,
    pub reason: String,
    pub changed_unix: i64,
}

impl PoolRecord {
    /// The state of a node that has never been pooled.
    pub fn initial() -> Self {
        Self {
            state: PoolState::ReceiveOnly,
            who: "stagingd".to_owned(),
            reason: "no saved pool state: a new node starts receive-only".to_owned(),
            changed_unix: 0,
        }
    }
}

/// Where the record lives.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("pool.json")
}

/// Loads the record. The error, when there is one, says why the node fell back
/// to `receive-only`; the caller logs it loudly.
pub fn load(state_dir: &Path) -> (PoolRecord, Option<String>) {
    let file = path(state_dir);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (PoolRecord::initial(), None),
        Err(e) => return (fallback(&format!("cannot read {}: {e}", file.display())), Some(e.to_string())),
    };
    match serde_json::from_slice::<PoolRecord>(&bytes) {
        Ok(record) => (record, None),
        Err(e) => {
            let why = format!("pool state file {} is corrupt ({e})", file.display());
            (fallback(&why), Some(why))
        }
    }
}

fn fallback(why: &str) -> PoolRecord {
    PoolRecord {
        state: PoolState::ReceiveOnly,
        who: "stagingd".to_owned(),
        reason: format!("{why}; started receive-only — check the tree and pool again with `stagingctl pool`"),
        changed_unix: crate::unix_now(),
    }
}

/// Persists the record atomically.
pub fn save(state_dir: &Path, record: &PoolRecord) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(&path(state_dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_receive_only_and_corrupt_is_receive_only_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (record, warning) = load(dir.path());
        assert_eq!((record.state, warning), (PoolState::ReceiveOnly, None));

        let serve = PoolRecord { state: PoolState::Serve, who: "ops".into(), reason: "r".into(), changed_unix: 5 };
        save(dir.path(), &serve).unwrap();
        assert_eq!(load(dir.path()).0, serve);

        std::fs::write(path(dir.path()), b"{\"state\": \"serve\", \"who\"").unwrap();
        let (record, warning) = load(dir.path());
        assert_eq!(record.state, PoolState::ReceiveOnly);
        assert!(warning.unwrap().contains("corrupt"));
    }
}
