//! The apply journal: the one file that says "a switch is under way; finish it".
//!
//! [`Journal`] is written with [`manifest::fsutil::write_atomic`] to
//! `<tree_state_dir>/journal` after every staged file is durable and before the
//! first change in the tree; it is removed once the switch is durable. It holds
//! the sync id (which names the staging directory), the plan's id and roots, and
//! every op with the fields a roll-forward needs, plus the content hash of each
//! file the op displaces (so it can be kept in the trash under the right name).
//!
//! Paths and symlink targets are stored as hex of their raw bytes, so non-UTF-8
//! names round-trip exactly. On load the plan id is recomputed from the ops and
//! must match: a journal that does not describe the plan it names is refused.
//!
//! This module only encodes and decodes; [`crate::apply`] decides when to write,
//! replay and remove it.

use std::io;
use std::path::{Path, PathBuf};

use manifest::plan::plan_id;
use manifest::{DirMeta, FileMeta, Hash, Kind, Op, Owner, PlanId, RelPath, StatKey, SymlinkMeta, Timestamp};
use serde::{Deserialize, Serialize};

use crate::history::SyncId;

/// The journal's file name inside a tree's state directory.
pub const JOURNAL_FILE: &str = "journal";
const VERSION: u32 = 1;
/// Ops encoded (on every core) and written at a time: a few MB of JSON.
const JOURNAL_BLOCK_OPS: usize = 16_384;

/// Why a journal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {op} journal {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "journal {path} is not usable ({why}); the tree may be half-switched: compare it with `stagingctl verify` \
         and restore with `stagingctl rollback` before removing the journal"
    )]
    Invalid { path: PathBuf, why: String },
}

/// A switch in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub sync_id: SyncId,
    pub plan_id: PlanId,
    pub from_root: Hash,
    pub to_root: Hash,
    pub preserve_owner: bool,
    /// The plan's ops, each with the hash of the file it displaces (a replaced or
    /// deleted file), if any.
    pub ops: Vec<(Op, Option<Hash>)>,
}

impl Journal {
    pub fn path(tree_state_dir: &Path) -> PathBuf {
        tree_state_dir.join(JOURNAL_FILE)
    }

    /// Writes the journal atomically and durably.
    pub fn write(&self, tree_state_dir: &Path) -> Result<(), JournalError> {
        let path = Self::path(tree_state_dir);
        let record = JournalRecordOut {
            version: VERSION,
            sync_id: self.sync_id.as_str(),
            plan_id: self.plan_id.to_string(),
            from_root: self.from_root.to_hex(),
            to_root: self.to_root.to_hex(),
            preserve_owner: self.preserve_owner,
        };
        let io_error = |source| JournalError::Io { op: "write", path: path.clone(), source };
        let mut head = serde_json::to_vec(&record).map_err(|e| io_error(e.into()))?;
        head.pop(); // the closing brace: the ops come before it
        // A full copy's journal is ~70 MB of JSON, never held whole: the ops are
        // encoded a block at a time, each block on every core (a slice each), and
        // written before the next; the file reads as one record `{..., "ops": [...]}`.
        let encode = |ops: &[(Op, Option<Hash>)]| {
            let mut json = Vec::new();
            for (i, (op, old)) in ops.iter().enumerate() {
                if i > 0 {
                    json.push(b',');
                }
                serde_json::to_writer(&mut json, &journal_op(op, *old))?;
            }
            Ok::<_, serde_json::Error>(vec![json])
        };
        manifest::fsutil::write_atomic_with(&path, |file| {
            file.write_all(&head)?;
            file.write_all(b",\"ops\":[")?;
            let mut first = true;
            for block in self.ops.chunks(JOURNAL_BLOCK_OPS) {
                for slice in crate::cores::on_every_core(block, encode)? {
                    if !first {
                        file.write_all(b",")?;
                    }
                    first = false;
                    file.write_all(&slice)?;
                }
            }
            file.write_all(b"]}")
        })
        .map_err(io_error)
    }

    /// Reads the journal, `Ok(None)` when there is none.
    pub fn read(tree_state_dir: &Path) -> Result<Option<Self>, JournalError> {
        let path = Self::path(tree_state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(JournalError::Io { op: "read", path, source }),
        };
        let invalid = |why: String| JournalError::Invalid { path: path.clone(), why };
        let record: JournalRecord = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        record.into_journal().map(Some).map_err(invalid)
    }

    /// Removes the journal and makes the removal durable.
    pub fn remove(tree_state_dir: &Path) -> Result<(), JournalError> {
        let path = Self::path(tree_state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(JournalError::Io { op: "remove", path, source }),
        }
        std::fs::File::open(tree_state_dir).and_then(|dir| dir.sync_all()).map_err(|source| JournalError::Io {
            op: "sync directory of",
            path,
            source,
        })
    }
}

// ---- serialized form -------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct JournalRecord {
    version: u32,
    sync_id: String,
    plan_id: String,
    from_root: String,
    to_root: String,
    preserve_owner: bool,
    ops: Vec<JournalOp>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum JournalOp {
    Delete { path: String, kind: u8, old_hash: Option<String> },
    MkDir { path: String, meta: JDirMeta },
    WriteFile { path: String, file: JFileMeta, replaces: bool, old_hash: Option<String> },
    SetFileMeta { path: String, file: JFileMeta },
    Symlink { path: String, target: String, mtime: (i64, u32), owner: (u32, u32), replaces: bool },
    SetDirMeta { path: String, meta: JDirMeta, mode_changed: bool },
}

#[derive(Serialize, Deserialize)]
struct JDirMeta {
    mode: u32,
    mtime: (i64, u32),
    owner: (u32, u32),
}

#[derive(Serialize, Deserialize)]
struct JFileMeta {
    size: u64,
    mode: u32,
    mtime: (i64, u32),
    hash: String,
    owner: (u32, u32),
}

/// Lower-case hex of `bytes` (a journal of a full copy holds ~170,000 paths: one
/// allocation each, not one per byte).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

pub(crate) fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let not_hex = || format!("{text:?} is not hex");
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8).ok_or_else(not_hex);
    if !text.len().is_multiple_of(2) {
        return Err(not_hex());
    }
    text.as_bytes().chunks_exact(2).map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

fn time(t: Timestamp) -> (i64, u32) {
    (t.secs, t.nanos)
}

fn owner(o: Owner) -> (u32, u32) {
    (o.uid, o.gid)
}

impl From<&DirMeta> for JDirMeta {
    fn from(m: &DirMeta) -> Self {
        Self { mode: m.mode, mtime: time(m.mtime), owner: owner(m.owner) }
    }
}

impl From<&JDirMeta> for DirMeta {
    fn from(m: &JDirMeta) -> Self {
        DirMeta {
            mode: m.mode,
            mtime: Timestamp::new(m.mtime.0, m.mtime.1),
            owner: Owner { uid: m.owner.0, gid: m.owner.1 },
        }
    }
}

impl From<&FileMeta> for JFileMeta {
    fn from(f: &FileMeta) -> Self {
        Self { size: f.size, mode: f.mode, mtime: time(f.mtime), hash: f.hash.to_hex(), owner: owner(f.owner) }
    }
}

impl JFileMeta {
    fn to_meta(&self) -> Result<FileMeta, String> {
        Ok(FileMeta {
            size: self.size,
            mode: self.mode,
            mtime: Timestamp::new(self.mtime.0, self.mtime.1),
            hash: parse_hash(&self.hash)?,
            owner: Owner { uid: self.owner.0, gid: self.owner.1 },
            stat: StatKey::default(),
        })
    }
}

fn parse_hash(text: &str) -> Result<Hash, String> {
    text.parse::<Hash>().map_err(|e| e.to_string())
}

fn parse_path(text: &str) -> Result<RelPath, String> {
    RelPath::new(unhex(text)?).map_err(|e| e.to_string())
}

/// The journal's head as written: [`JournalRecord`] without its ops, which
/// [`Journal::write`] appends.
#[derive(Serialize)]
struct JournalRecordOut<'a> {
    version: u32,
    sync_id: &'a str,
    plan_id: String,
    from_root: String,
    to_root: String,
    preserve_owner: bool,
}

fn journal_op(op: &Op, old: Option<Hash>) -> JournalOp {
    let old_hash = old.map(|h| h.to_hex());
    match op {
        Op::Delete { path, kind } => JournalOp::Delete { path: hex(path.as_bytes()), kind: kind.code(), old_hash },
        Op::MkDir { path, meta } => JournalOp::MkDir { path: hex(path.as_bytes()), meta: meta.into() },
        Op::WriteFile { path, file, replaces } => {
            JournalOp::WriteFile { path: hex(path.as_bytes()), file: file.into(), replaces: *replaces, old_hash }
        }
        Op::SetFileMeta { path, file } => JournalOp::SetFileMeta { path: hex(path.as_bytes()), file: file.into() },
        Op::Symlink { path, link, replaces } => JournalOp::Symlink {
            path: hex(path.as_bytes()),
            target: hex(&link.target),
            mtime: time(link.mtime),
            owner: owner(link.owner),
            replaces: *replaces,
        },
        Op::SetDirMeta { path, meta, mode_changed } => {
            JournalOp::SetDirMeta { path: hex(path.as_bytes()), meta: meta.into(), mode_changed: *mode_changed }
        }
    }
}

impl JournalRecord {
    fn into_journal(self) -> Result<Journal, String> {
        if self.version != VERSION {
            return Err(format!("format version {} (this build reads {VERSION})", self.version));
        }
        let old = |h: &Option<String>| h.as_deref().map(parse_hash).transpose();
        let mut ops = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            ops.push(match op {
                JournalOp::Delete { path, kind, old_hash } => (
                    Op::Delete {
                        path: parse_path(path)?,
                        kind: Kind::from_code(*kind).ok_or_else(|| format!("unknown kind {kind}"))?,
                    },
                    old(old_hash)?,
                ),
                JournalOp::MkDir { path, meta } => (Op::MkDir { path: parse_path(path)?, meta: meta.into() }, None),
                JournalOp::WriteFile { path, file, replaces, old_hash } => (
                    Op::WriteFile { path: parse_path(path)?, file: file.to_meta()?, replaces: *replaces },
                    old(old_hash)?,
                ),
                JournalOp::SetFileMeta { path, file } => {
                    (Op::SetFileMeta { path: parse_path(path)?, file: file.to_meta()? }, None)
                }
                JournalOp::Symlink { path, target, mtime, owner, replaces } => (
                    Op::Symlink {
                        path: parse_path(path)?,
                        link: SymlinkMeta {
                            target: unhex(target)?.into(),
                            mtime: Timestamp::new(mtime.0, mtime.1),
                            owner: Owner { uid: owner.0, gid: owner.1 },
                        },
                        replaces: *replaces,
                    },
                    None,
                ),
                JournalOp::SetDirMeta { path, meta, mode_changed } => {
                    (Op::SetDirMeta { path: parse_path(path)?, meta: meta.into(), mode_changed: *mode_changed }, None)
                }
            });
        }
        let plan_id_text = self.plan_id;
        let stored: PlanId = plan_id_text.parse().map_err(|e: manifest::plan::ParsePlanIdError| e.to_string())?;
        let from_root = parse_hash(&self.from_root)?;
        let to_root = parse_hash(&self.to_root)?;
        let plain: Vec<Op> = ops.iter().map(|(op, _)| op.clone()).collect();
        let computed = plan_id(from_root, to_root, &plain);
        if computed != stored {
            return Err(format!("its ops give plan id {computed}, it names {stored}"));
        }
        Ok(Journal {
            sync_id: SyncId::new(self.sync_id).map_err(|e| e.to_string())?,
            plan_id: stored,
            from_root,
            to_root,
            preserve_owner: self.preserve_owner,
            ops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal of `ops` that names the plan they make.
    fn journal_of(sync_id: &str, ops: Vec<(Op, Option<Hash>)>, preserve_owner: bool) -> Journal {
        let plain: Vec<Op> = ops.iter().map(|(op, _)| op.clone()).collect();
        let (from_root, to_root) = (Hash::of_content(b"from"), Hash::of_content(b"to"));
        Journal {
            sync_id: SyncId::new(sync_id.to_owned()).unwrap(),
            plan_id: plan_id(from_root, to_root, &plain),
            from_root,
            to_root,
            preserve_owner,
            ops,
        }
    }

    #[test]
    fn non_utf8_paths_and_targets_round_trip_exactly() {
        let path = RelPath::new(b"dir/caf\xe9\x01").unwrap();
        let file = FileMeta {
            size: 3,
            mode: 0o4755,
            mtime: Timestamp::new(-5, 999_999_999),
            hash: Hash::of_content(b"abc"),
            owner: Owner { uid: 7, gid: 8 },
            stat: StatKey::default(),
        };
        let ops = vec![
            (Op::Delete { path: path.clone(), kind: Kind::File }, Some(Hash::of_content(b"old"))),
            (Op::MkDir { path: path.clone(), meta: DirMeta { mode: 0o2775, ..Default::default() } }, None),
            (Op::WriteFile { path: path.clone(), file: file.clone(), replaces: true }, Some(Hash::of_content(b"x"))),
            (Op::SetFileMeta { path: path.clone(), file }, None),
            (
                Op::Symlink {
                    path: path.clone(),
                    link: SymlinkMeta {
                        target: (*b"../\xff\xfe").into(),
                        mtime: Timestamp::new(1, 2),
                        owner: Owner::default(),
                    },
                    replaces: false,
                },
                None,
            ),
            (Op::SetDirMeta { path: RelPath::root(), meta: DirMeta::default(), mode_changed: true }, None),
        ];
        let journal = journal_of("s1-test", ops, true);
        let dir = tempfile::tempdir().unwrap();
        journal.write(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap().unwrap(), journal);
        Journal::remove(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_journal_encoded_on_several_cores_reads_back_whole_and_in_order() {
        // Enough ops that `write` encodes them in slices on several threads.
        let ops: Vec<(Op, Option<Hash>)> = (0..20_000u32)
            .map(|i| {
                let path = RelPath::new(format!("d{}/f{i}", i % 97)).unwrap();
                let op = match i % 3 {
                    0 => Op::Delete { path, kind: Kind::File },
                    1 => Op::MkDir { path, meta: DirMeta { mode: 0o755, ..Default::default() } },
                    _ => Op::SetDirMeta { path, meta: DirMeta::default(), mode_changed: false },
                };
                // Only a delete (or a file write) displaces a file.
                let old = matches!(op, Op::Delete { .. }).then(|| Hash::of_content(&i.to_le_bytes()));
                (op, old)
            })
            .collect();
        let journal = journal_of("s2-test", ops, false);
        let dir = tempfile::tempdir().unwrap();
        journal.write(dir.path()).unwrap();
        let read = Journal::read(dir.path()).unwrap().unwrap();
        assert!(read == journal, "the journal read back differs from the one written");
        // And an empty plan still makes a valid record.
        let empty = journal_of("s2-test", Vec::new(), false);
        empty.write(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap().unwrap(), empty);
    }

    #[test]
    fn hex_round_trips_every_byte_and_refuses_what_is_not_hex() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(&hex(&all)[..8], "00010203");
        assert_eq!(unhex(&hex(&all)).unwrap(), all);
        assert_eq!(unhex("ABff").unwrap(), vec![0xab, 0xff]);
        for bad in ["a", "0g", "é1", "+1"] {
            assert!(unhex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn journal_whose_ops_do_not_match_its_plan_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (from_root, to_root) = (Hash::of_content(b"from"), Hash::of_content(b"to"));
        let ops = vec![(Op::Delete { path: RelPath::new("a").unwrap(), kind: Kind::Symlink }, None)];
        let journal = Journal {
            sync_id: SyncId::new("s1-test".to_owned()).unwrap(),
            plan_id: PlanId([0; 8]),
            from_root,
            to_root,
            preserve_owner: false,
            ops,
        };
        journal.write(dir.path()).unwrap();
        let error = Journal::read(dir.path()).unwrap_err();
        assert!(matches!(error, JournalError::Invalid { .. }), "{error}");
    }
}
