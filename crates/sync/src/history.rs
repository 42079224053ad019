//! History of a tree: what every sync and rollback did, and what it takes to undo it.
//!
//! [`History`] owns, inside a tree's state directory:
//! - `history.jsonl`: one [`HistoryRecord`] a line, appended and fsynced, never
//!   rewritten (a torn last line from a crash is skipped when read);
//! - `before/<sync-id>.manifest`: the manifest the tree had before each applied
//!   sync or rollback, saved with [`manifest::cache::save`], so a rollback can
//!   rebuild that tree with content from the trash and the tree itself.
//!
//! [`History::rollback_target`] picks the manifest to go back to; the caller diffs
//! it against the current manifest and applies the plan like any sync (see
//! [`crate::stage::stage_from_local`]). [`History::retain`] keeps the newest N
//! before-manifests and the trash objects those syncs displaced, and never
//! expires what undoing the newest sync needs.
//!
//! This module does not apply anything and does not hold the tree lock.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use manifest::{Hash, Manifest};
use serde::{Deserialize, Serialize};

use crate::trash::{Expired, Trash};

/// A sync's id: `s<unix seconds>-<plan id>`, a single safe file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SyncId(String);

/// Why a string is not a sync id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sync id: expected 1-64 characters of [A-Za-z0-9_-], as printed by `stagingctl history`")]
pub struct ParseSyncIdError(pub String);

impl SyncId {
    pub fn new(text: String) -> Result<Self, ParseSyncIdError> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok { Ok(Self(text)) } else { Err(ParseSyncIdError(text)) }
    }

    /// The id of a sync of plan `plan_id` started at `unix_secs`.
    pub fn generate(unix_secs: i64, plan_id: manifest::PlanId) -> Self {
        Self(format!("s{unix_secs}-{plan_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SyncId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SyncId {
    type Error = ParseSyncIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SyncId> for String {
    fn from(id: SyncId) -> Self {
        id.0
    }
}

/// Whether a record is a sync from a peer or a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Sync,
    Rollback,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecordResult {
    Applied,
    /// Completed by `recover` after a crash.
    Recovered,
    Failed {
        message: String,
    },
}

/// What a sync did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub creates: u64,
    pub updates: u64,
    pub deletes: u64,
    pub bytes: u64,
}

impl From<&manifest::PlanTotals> for Counts {
    fn from(t: &manifest::PlanTotals) -> Self {
        Self { creates: t.creates(), updates: t.updates(), deletes: t.deletes(), bytes: t.bytes_to_write }
    }
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub id: SyncId,
    pub kind: RecordKind,
    /// The peer synced from, or for a rollback the sync id rolled back to.
    pub source: String,
    pub unix_time: i64,
    pub who: String,
    pub reason: String,
    pub plan_id: String,
    pub counts: Counts,
    /// Root hashes, hex.
    pub root_before: String,
    pub root_after: String,
    pub result: RecordResult,
    /// Content hashes this sync displaced (replaced or deleted files), hex: the
    /// trash objects a rollback of it needs.
    #[serde(default)]
    pub trashed: Vec<String>,
}

/// Where to roll back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTo {
    /// Undo the newest applied sync or rollback.
    Last,
    /// The tree as it was just before this sync.
    Sync(SyncId),
}

/// Why history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("before-manifest {path} is not usable: {why}")]
    BadManifest { path: PathBuf, why: String },
    #[error("nothing to roll back: no applied sync in history{}", .0.as_ref().map(|id| format!(" with id {id}")).unwrap_or_default())]
    NothingToRollBack(Option<SyncId>),
    #[error(
        "sync {0} is older than what retention keeps; its before-manifest is gone\nhint: `stagingctl history` lists \
         the syncs that can be rolled back to"
    )]
    Expired(SyncId),
}

/// The target of a rollback.
#[derive(Debug, Clone)]
pub struct RollbackTarget {
    /// The sync whose before-state is restored.
    pub sync_id: SyncId,
    pub manifest: Manifest,
}

/// What [`History::retain`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    pub manifests_removed: u64,
    pub trash: Expired,
}

/// The history of one tree.
#[derive(Debug, Clone)]
pub struct History {
    state_dir: PathBuf,
}

impl History {
    pub fn open(tree_state_dir: &Path) -> Self {
        Self { state_dir: tree_state_dir.to_path_buf() }
    }

    fn log_path(&self) -> PathBuf {
        self.state_dir.join("history.jsonl")
    }

    fn before_dir(&self) -> PathBuf {
        self.state_dir.join("before")
    }

    fn before_path(&self, id: &SyncId) -> PathBuf {
        self.before_dir().join(format!("{id}.manifest"))
    }

    /// Appends `record` and fsyncs the log.
    pub fn append(&self, record: &HistoryRecord) -> Result<(), HistoryError> {
        let path = self.log_path();
        let io = |op, source| HistoryError::Io { op, path: path.clone(), source };
        fs_err::create_dir_all(&self.state_dir).map_err(|e| io("create directory for", e))?;
        let mut line = serde_json::to_vec(record).expect("history records always serialize");
        line.push(b'\n');
        let mut file = fs_err::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io("open", e))?;
        file.write_all(&line).map_err(|e| io("append to", e))?;
        file.sync_all().map_err(|e| io("fsync", e))
    }

    /// Every record, oldest first. A line that does not parse (a torn write at a
    /// crash) is skipped with a warning.
    pub fn records(&self) -> Result<Vec<HistoryRecord>, HistoryError> {
        let path = self.log_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(HistoryError::Io { op: "read", path, source }),
        };
        Ok(text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .filter_map(|line| match serde_json::from_str(line) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "skipping unreadable history line: {e}");
                    None
                }
            })
            .collect())
    }

    /// Saves the manifest the tree had before sync `id` (call before applying it).
    /// When `saved` (the tree's stat cache) already holds a manifest with the same
    /// root, that file is hard-linked instead of writing 110 bytes per entry again:
    /// cache files are only ever replaced whole, never changed in place. (Such a
    /// copy can differ from `manifest` only in what no hash covers: owners and
    /// stat keys changed since the cache was written.)
    pub fn save_before(
        &self,
        id: &SyncId,
        manifest: &Manifest,
        root: &Path,
        saved: Option<&Path>,
    ) -> Result<(), HistoryError> {
        let dir = self.before_dir();
        fs_err::create_dir_all(&dir).map_err(|source| HistoryError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        let path = self.before_path(id);
        if let Some(saved) = saved
            && self.link_if_same(saved, &path, manifest.root_hash())
        {
            return Ok(());
        }
        manifest::cache::save(manifest, root, &path).map_err(|source| HistoryError::Io { op: "save", path, source })
    }

    /// Hard-links `saved` to `path` (durably) if it holds the manifest with root
    /// `root_hash`. False, with nothing left at `path`, otherwise.
    fn link_if_same(&self, saved: &Path, path: &Path, root_hash: Hash) -> bool {
        let _ = std::fs::remove_file(path);
        if std::fs::hard_link(saved, path).is_err() {
            return false;
        }
        // Checked on the link: the cache may have been replaced since we looked.
        let same = manifest::cache::saved_root(path).is_ok_and(|root| root == Some(root_hash))
            && std::fs::File::open(self.before_dir()).and_then(|d| d.sync_all()).is_ok();
        if !same {
            let _ = std::fs::remove_file(path);
        }
        same
    }

    /// Loads the before-manifest of sync `id`.
    pub fn load_before(&self, id: &SyncId, root: &Path) -> Result<Manifest, HistoryError> {
        let path = self.before_path(id);
        match manifest::cache::load(&path, root) {
            Ok(Some(manifest)) => Ok(manifest),
            Ok(None) => Err(HistoryError::Expired(id.clone())),
            Err(e) => Err(HistoryError::BadManifest { path, why: e.to_string() }),
        }
    }

    /// The manifest a rollback restores: the before-manifest of the newest applied
    /// record ([`RollbackTo::Last`]) or of the named sync.
    pub fn rollback_target(&self, root: &Path, to: &RollbackTo) -> Result<RollbackTarget, HistoryError> {
        let records = self.records()?;
        let applied = |r: &&HistoryRecord| matches!(r.result, RecordResult::Applied | RecordResult::Recovered);
        let record = match to {
            RollbackTo::Last => records.iter().rev().find(applied).ok_or(HistoryError::NothingToRollBack(None))?,
            RollbackTo::Sync(id) => records
                .iter()
                .rev()
                .filter(applied)
                .find(|r| &r.id == id)
                .ok_or_else(|| HistoryError::NothingToRollBack(Some(id.clone())))?,
        };
        Ok(RollbackTarget { sync_id: record.id.clone(), manifest: self.load_before(&record.id, root)? })
    }

    /// Keeps the before-manifests of the newest `keep_last` applied records (at
    /// least one: the newest rollback is always possible) and the trash objects
    /// any of them displaced; removes the rest.
    pub fn retain(&self, keep_last: usize, trash: &Trash) -> Result<Retained, HistoryError> {
        let keep_last = keep_last.max(1);
        let records = self.records()?;
        let applied: Vec<&HistoryRecord> =
            records.iter().filter(|r| matches!(r.result, RecordResult::Applied | RecordResult::Recovered)).collect();
        let kept = &applied[applied.len().saturating_sub(keep_last)..];
        let kept_ids: HashSet<String> = kept.iter().map(|r| format!("{}.manifest", r.id)).collect();
        let keep_hashes: HashSet<Hash> =
            kept.iter().flat_map(|r| r.trashed.iter()).filter_map(|h| h.parse::<Hash>().ok()).collect();

        let mut retained = Retained::default();
        let dir = self.before_dir();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.ends_with(".manifest") && !kept_ids.contains(name) {
                    fs_err::remove_file(entry.path()).map_err(|source| HistoryError::Io {
                        op: "remove",
                        path: entry.path(),
                        source,
                    })?;
                    retained.manifests_removed += 1;
                }
            }
        }
        retained.trash = trash.expire(&keep_hashes).map_err(|e| HistoryError::Io {
            op: "expire trash in",
            path: dir,
            source: io::Error::other(e.to_string()),
        })?;
        Ok(retained)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use manifest::{Node, RelPath};

    use super::*;

    fn manifest_with(content: &[u8]) -> Manifest {
        let mut m = Manifest::empty();
        let file = crate::test_support::file_of(content);
        m.insert(&RelPath::new("a").unwrap(), Node::File(file)).unwrap();
        m
    }

    #[test]
    fn a_before_manifest_equal_to_the_stat_cache_is_a_link_to_it_and_any_other_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (root, state) = (dir.path().join("tree"), dir.path().join("state"));
        let cache = state.join(manifest::cache::CACHE_FILE);
        let history = History::open(&state);
        let cached = manifest_with(b"one");
        fs_err::create_dir_all(&state).unwrap();
        manifest::cache::save(&cached, &root, &cache).unwrap();

        let same = SyncId::new("s1-same".into()).unwrap();
        history.save_before(&same, &cached, &root, Some(&cache)).unwrap();
        let linked = std::fs::metadata(history.before_path(&same)).unwrap();
        assert_eq!(linked.ino(), std::fs::metadata(&cache).unwrap().ino(), "a hard link, not a copy");
        assert_eq!(history.load_before(&same, &root).unwrap(), cached);

        let other = SyncId::new("s2-other".into()).unwrap();
        let changed = manifest_with(b"two");
        history.save_before(&other, &changed, &root, Some(&cache)).unwrap();
        let written = std::fs::metadata(history.before_path(&other)).unwrap();
        assert_ne!(written.ino(), std::fs::metadata(&cache).unwrap().ino());
        assert_eq!(history.load_before(&other, &root).unwrap(), changed);
        assert_eq!(std::fs::metadata(&cache).unwrap().nlink(), 2, "the failed link attempt was removed");
    }
}
