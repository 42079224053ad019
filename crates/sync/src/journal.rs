//! The apply journal: the one file that says "a switch is under way; finish it".
//!
//! [`Journal`] is written with [`manifest::fsutil::write_atomic_with`] to
//! `<tree_state_dir>/journal` after every staged file is durable and before the
//! first change in the tree; it is removed once the switch is durable. It holds
//! the sync id (which names the staging directory), the plan's id and roots, and
//! every op with the fields a roll-forward needs, plus the content hash of each
//! file the op displaces (so it can be kept in the trash under the right name).
//!
//! Format 3 (written): one line of JSON (version, ids, roots, op count), then the
//! ops in a compact binary form, then the BLAKE3 hash of everything before it.
//! Each path is stored as the length it shares with the previous op's path and
//! the rest of its raw bytes (so non-UTF-8 names round-trip exactly); numbers are
//! LEB128 varints. A `NewTree` op keeps its top directory's metadata and the
//! subtree's hash, not the subtree: it was staged whole before the journal was
//! written, and the switch only renames it. A full copy to an empty master is a
//! few dozen ops; spelled out one per entry it was 184,313 ops and 10.8 MB, and
//! format 1's JSON with hex paths ~70 MB. Format 2 is format 3 without
//! `NewTree` ops; it and format 1 (one JSON record) are still read, so a journal
//! left by an older build is finished after an upgrade.
//!
//! On load the checksum must match and the plan id is recomputed from the ops: a
//! journal that does not describe the plan it names is refused.
//!
//! This module only encodes and decodes; [`crate::apply`] decides when to write,
//! replay and remove it.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};

use manifest::plan::plan_id;
use manifest::{DirMeta, FileMeta, Hash, Kind, Op, Owner, PlanId, RelPath, StatKey, SymlinkMeta, Timestamp};
use serde::{Deserialize, Serialize};

use crate::history::SyncId;

/// The journal's file name inside a tree's state directory.
pub const JOURNAL_FILE: &str = "journal";
/// The format written; format 2 (the same without `NewTree` ops) and format 1
/// (one JSON record) are still read.
const VERSION: u32 = 3;
const VERSION_BINARY_2: u32 = 2;
const VERSION_JSON: u32 = 1;

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
pub struct Journal<'a> {
    pub sync_id: SyncId,
    pub plan_id: PlanId,
    pub from_root: Hash,
    pub to_root: Hash,
    pub preserve_owner: bool,
    /// The plan's ops: borrowed from the plan when a sync writes its journal (a
    /// copy was ~32 MB at the peak of a 150,000-file copy), owned when read back.
    pub ops: Cow<'a, [Op]>,
    /// For each op, the hash of the file it displaces (a replaced or deleted
    /// file), if any.
    pub displaced: Vec<Option<Hash>>,
}

impl Journal<'_> {
    /// Each op with the hash of the file it displaces.
    ///
    /// # Panics
    /// If `ops` and `displaced` differ in length: a journal that silently left
    /// out ops would finish only part of a switch.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (&Op, Option<Hash>)> {
        assert_eq!(self.ops.len(), self.displaced.len(), "a journal has one displaced hash (or none) per op");
        self.ops.iter().zip(self.displaced.iter().copied())
    }

    pub fn path(tree_state_dir: &Path) -> PathBuf {
        tree_state_dir.join(JOURNAL_FILE)
    }

    /// Writes the journal atomically and durably (format 3), a buffer of ops at
    /// a time: it is never held whole. Returns its size in bytes.
    pub fn write(&self, tree_state_dir: &Path) -> Result<u64, JournalError> {
        let path = Self::path(tree_state_dir);
        let head = JournalHead::of(self, VERSION, Some(self.ops.len() as u64));
        let io_error = |source| JournalError::Io { op: "write", path: path.clone(), source };
        let mut line = serde_json::to_vec(&head).map_err(|e| io_error(e.into()))?;
        line.push(b'\n');
        let mut size = blake3::OUT_LEN as u64;
        manifest::fsutil::write_atomic_with(&path, |file| {
            let mut hasher = blake3::Hasher::new();
            let mut put = |bytes: &[u8]| {
                hasher.update(bytes);
                size += bytes.len() as u64;
                file.write_all(bytes)
            };
            put(&line)?;
            let mut encoder = Encoder::default();
            for (op, old) in self.entries() {
                encoder.op(op, old);
                if encoder.out.len() >= WRITE_BUFFER_BYTES {
                    put(&encoder.out)?;
                    encoder.out.clear();
                }
            }
            put(&encoder.out)?;
            file.write_all(hasher.finalize().as_bytes())
        })
        .map_err(io_error)?;
        Ok(size)
    }

    /// Reads the journal, `Ok(None)` when there is none.
    pub fn read(tree_state_dir: &Path) -> Result<Option<Journal<'static>>, JournalError> {
        let path = Self::path(tree_state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(JournalError::Io { op: "read", path, source }),
        };
        let invalid = |why: String| JournalError::Invalid { path: path.clone(), why };
        // Format 1 is one JSON record with hex paths: it has no line break.
        let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
            let record: JournalRecord = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
            return record.into_journal().map(Some).map_err(invalid);
        };
        let head: JournalHead = serde_json::from_slice(&bytes[..newline]).map_err(|e| invalid(e.to_string()))?;
        if head.version != VERSION && head.version != VERSION_BINARY_2 {
            return Err(invalid(format!(
                "format version {} (this build reads {VERSION_JSON} to {VERSION})",
                head.version
            )));
        }
        let Some(body_end) = bytes.len().checked_sub(blake3::OUT_LEN).filter(|&end| end > newline) else {
            return Err(invalid("it ends before its checksum (truncated)".to_owned()));
        };
        if blake3::hash(&bytes[..body_end]).as_bytes()[..] != bytes[body_end..] {
            return Err(invalid("its checksum does not match its content (damaged or truncated)".to_owned()));
        }
        let count = head.op_count.ok_or_else(|| invalid("its head has no op count".to_owned()))?;
        let ops = Decoder::new(&bytes[newline + 1..body_end]).ops(count).map_err(invalid)?;
        head.into_journal(ops).map(Some).map_err(invalid)
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
    #[serde(flatten)]
    head: JournalHead,
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

/// Lower-case hex of `bytes`: how format 1 stored paths.
#[cfg(test)]
fn hex(bytes: &[u8]) -> String {
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

impl JournalRecord {
    fn into_journal(self) -> Result<Journal<'static>, String> {
        if self.head.version != VERSION_JSON {
            return Err(format!("format version {} (this build reads {VERSION_JSON} to {VERSION})", self.head.version));
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
        self.head.into_journal(ops)
    }
}

/// The first line of formats 2 and 3, and what every format says besides the ops.
#[derive(Serialize, Deserialize)]
struct JournalHead {
    version: u32,
    sync_id: String,
    plan_id: String,
    from_root: String,
    to_root: String,
    preserve_owner: bool,
    /// How many ops follow (formats 2 and 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op_count: Option<u64>,
}

impl JournalHead {
    fn of(journal: &Journal, version: u32, op_count: Option<u64>) -> Self {
        Self {
            version,
            sync_id: journal.sync_id.as_str().to_owned(),
            plan_id: journal.plan_id.to_string(),
            from_root: journal.from_root.to_hex(),
            to_root: journal.to_root.to_hex(),
            preserve_owner: journal.preserve_owner,
            op_count,
        }
    }

    /// The journal, once the ops are known to make the plan the head names.
    fn into_journal(self, ops: Vec<(Op, Option<Hash>)>) -> Result<Journal<'static>, String> {
        let stored: PlanId = self.plan_id.parse().map_err(|e: manifest::plan::ParsePlanIdError| e.to_string())?;
        let from_root = parse_hash(&self.from_root)?;
        let to_root = parse_hash(&self.to_root)?;
        let (ops, displaced): (Vec<Op>, Vec<Option<Hash>>) = ops.into_iter().unzip();
        let computed = plan_id(from_root, to_root, &ops);
        if computed != stored {
            return Err(format!("its ops give plan id {computed}, it names {stored}"));
        }
        Ok(Journal {
            sync_id: SyncId::new(self.sync_id).map_err(|e| e.to_string())?,
            plan_id: stored,
            from_root,
            to_root,
            preserve_owner: self.preserve_owner,
            ops: Cow::Owned(ops),
            displaced,
        })
    }
}

// ---- the ops of formats 2 and 3 ---------------------------------------------

/// Encoded ops are written once this many bytes are waiting.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

const OP_DELETE: u8 = 1;
const OP_MKDIR: u8 = 2;
const OP_WRITE_FILE: u8 = 3;
const OP_SET_FILE_META: u8 = 4;
const OP_SYMLINK: u8 = 5;
const OP_SET_DIR_META: u8 = 6;
const OP_NEW_TREE: u8 = 7;

/// Appends ops to `out`; a path is stored after the one before it.
#[derive(Default)]
struct Encoder {
    out: Vec<u8>,
    previous: Vec<u8>,
}

impl Encoder {
    fn op(&mut self, op: &Op, old: Option<Hash>) {
        let tag = match op {
            Op::Delete { .. } => OP_DELETE,
            Op::MkDir { .. } => OP_MKDIR,
            Op::WriteFile { .. } => OP_WRITE_FILE,
            Op::SetFileMeta { .. } => OP_SET_FILE_META,
            Op::Symlink { .. } => OP_SYMLINK,
            Op::SetDirMeta { .. } => OP_SET_DIR_META,
            Op::NewTree { .. } => OP_NEW_TREE,
        };
        self.out.push(tag);
        self.path(op.path().as_bytes());
        match op {
            Op::Delete { kind, .. } => {
                self.out.push(kind.code());
                self.old_hash(old);
            }
            Op::MkDir { meta, .. } => self.dir_meta(meta),
            Op::NewTree { meta, hash, .. } => {
                self.dir_meta(meta);
                self.out.extend_from_slice(hash.as_bytes());
            }
            Op::WriteFile { file, replaces, .. } => {
                self.file_meta(file);
                self.out.push(u8::from(*replaces));
                self.old_hash(old);
            }
            Op::SetFileMeta { file, .. } => self.file_meta(file),
            Op::Symlink { link, replaces, .. } => {
                self.bytes(&link.target);
                self.time(link.mtime);
                self.owner(link.owner);
                self.out.push(u8::from(*replaces));
            }
            Op::SetDirMeta { meta, mode_changed, .. } => {
                self.dir_meta(meta);
                self.out.push(u8::from(*mode_changed));
            }
        }
    }

    fn path(&mut self, path: &[u8]) {
        let shared = path.iter().zip(&self.previous).take_while(|(a, b)| a == b).count();
        self.varint(shared as u64);
        self.bytes(&path[shared..]);
        self.previous.clear();
        self.previous.extend_from_slice(path);
    }

    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.out.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.out.push(n as u8);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.out.extend_from_slice(bytes);
    }

    fn time(&mut self, t: Timestamp) {
        // Zigzag, so a time before 1970 stays short.
        self.varint(((t.secs << 1) ^ (t.secs >> 63)) as u64);
        self.varint(u64::from(t.nanos));
    }

    fn owner(&mut self, o: Owner) {
        self.varint(u64::from(o.uid));
        self.varint(u64::from(o.gid));
    }

    fn dir_meta(&mut self, m: &DirMeta) {
        self.varint(u64::from(m.mode));
        self.time(m.mtime);
        self.owner(m.owner);
    }

    fn file_meta(&mut self, f: &FileMeta) {
        self.varint(f.size);
        self.varint(u64::from(f.mode));
        self.time(f.mtime);
        self.out.extend_from_slice(f.hash.as_bytes());
        self.owner(f.owner);
    }

    fn old_hash(&mut self, old: Option<Hash>) {
        match old {
            None => self.out.push(0),
            Some(hash) => {
                self.out.push(1);
                self.out.extend_from_slice(hash.as_bytes());
            }
        }
    }
}

/// Reads what [`Encoder`] wrote, refusing anything it could not have written.
struct Decoder<'a> {
    rest: &'a [u8],
    previous: Vec<u8>,
}

impl<'a> Decoder<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self { rest: body, previous: Vec::new() }
    }

    fn ops(mut self, count: u64) -> Result<Vec<(Op, Option<Hash>)>, String> {
        // The count is checked against the bytes before it sizes anything: every op
        // takes at least two.
        if count > self.rest.len() as u64 / 2 {
            return Err(format!("its head counts {count} ops in {} bytes", self.rest.len()));
        }
        let mut ops = Vec::with_capacity(count as usize);
        for index in 0..count {
            ops.push(self.op().map_err(|why| format!("op {index}: {why}"))?);
        }
        if !self.rest.is_empty() {
            return Err(format!("{} bytes follow its {count} ops", self.rest.len()));
        }
        Ok(ops)
    }

    fn op(&mut self) -> Result<(Op, Option<Hash>), String> {
        let tag = self.byte()?;
        let path = self.path()?;
        Ok(match tag {
            OP_DELETE => {
                let code = self.byte()?;
                let kind = Kind::from_code(code).ok_or_else(|| format!("unknown kind {code}"))?;
                (Op::Delete { path, kind }, self.old_hash()?)
            }
            OP_MKDIR => (Op::MkDir { path, meta: self.dir_meta()? }, None),
            OP_NEW_TREE => {
                let meta = self.dir_meta()?;
                (Op::NewTree { path, meta, hash: self.hash()?, tree: None }, None)
            }
            OP_WRITE_FILE => {
                let file = self.file_meta()?;
                let replaces = self.flag()?;
                (Op::WriteFile { path, file, replaces }, self.old_hash()?)
            }
            OP_SET_FILE_META => (Op::SetFileMeta { path, file: self.file_meta()? }, None),
            OP_SYMLINK => {
                let target = self.bytes()?.into();
                let (mtime, owner) = (self.time()?, self.owner()?);
                (Op::Symlink { path, link: SymlinkMeta { target, mtime, owner }, replaces: self.flag()? }, None)
            }
            OP_SET_DIR_META => {
                let meta = self.dir_meta()?;
                (Op::SetDirMeta { path, meta, mode_changed: self.flag()? }, None)
            }
            other => return Err(format!("unknown op {other}")),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err("the journal ends inside it".to_owned());
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("flag {other} is neither 0 nor 1")),
        }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("a number longer than 64 bits".to_owned())
    }

    fn u32(&mut self) -> Result<u32, String> {
        let n = self.varint()?;
        u32::try_from(n).map_err(|_| format!("{n} does not fit 32 bits"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        self.take(usize::try_from(len).map_err(|_| format!("length {len}"))?)
    }

    fn path(&mut self) -> Result<RelPath, String> {
        let shared = self.varint()?;
        let shared = usize::try_from(shared)
            .ok()
            .filter(|&n| n <= self.previous.len())
            .ok_or_else(|| format!("it shares {shared} bytes with a path of {}", self.previous.len()))?;
        let rest = self.bytes()?;
        self.previous.truncate(shared);
        self.previous.extend_from_slice(rest);
        RelPath::new(self.previous.clone()).map_err(|e| e.to_string())
    }

    fn time(&mut self) -> Result<Timestamp, String> {
        let zigzag = self.varint()?;
        let secs = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        Ok(Timestamp::new(secs, self.u32()?))
    }

    fn owner(&mut self) -> Result<Owner, String> {
        Ok(Owner { uid: self.u32()?, gid: self.u32()? })
    }

    fn dir_meta(&mut self) -> Result<DirMeta, String> {
        Ok(DirMeta { mode: self.u32()?, mtime: self.time()?, owner: self.owner()? })
    }

    fn hash(&mut self) -> Result<Hash, String> {
        let bytes: [u8; 32] = self.take(32)?.try_into().expect("32 bytes taken");
        Ok(Hash(bytes))
    }

    fn file_meta(&mut self) -> Result<FileMeta, String> {
        Ok(FileMeta {
            size: self.varint()?,
            mode: self.u32()?,
            mtime: self.time()?,
            hash: self.hash()?,
            owner: self.owner()?,
            stat: StatKey::default(),
        })
    }

    fn old_hash(&mut self) -> Result<Option<Hash>, String> {
        if self.flag()? { self.hash().map(Some) } else { Ok(None) }
    }
}

#[cfg(test)]
mod tests {
    use manifest::Node;

    use super::*;

    /// Writes `journal` as format 1 did (one JSON record, hex paths): what an
    /// older build leaves behind.
    fn write_format_1(journal: &Journal, tree_state_dir: &Path) {
        let ops: Vec<JournalOp> = journal.entries().map(|(op, old)| journal_op(op, old)).collect();
        let record = JournalRecord { head: JournalHead::of(journal, VERSION_JSON, None), ops };
        std::fs::write(Journal::path(tree_state_dir), serde_json::to_vec(&record).unwrap()).unwrap();
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
            Op::NewTree { .. } => unreachable!("format 1 was written by builds that had no NewTree op"),
        }
    }

    /// A journal of `ops` that names the plan they make.
    fn journal_of(sync_id: &str, ops: Vec<(Op, Option<Hash>)>, preserve_owner: bool) -> Journal<'static> {
        let (ops, displaced): (Vec<Op>, Vec<Option<Hash>>) = ops.into_iter().unzip();
        let (from_root, to_root) = (Hash::of_content(b"from"), Hash::of_content(b"to"));
        Journal {
            sync_id: SyncId::new(sync_id.to_owned()).unwrap(),
            plan_id: plan_id(from_root, to_root, &ops),
            from_root,
            to_root,
            preserve_owner,
            ops: Cow::Owned(ops),
            displaced,
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

    /// Ops of every kind at paths that share prefixes the way a plan's do.
    fn many_ops(count: u32) -> Vec<(Op, Option<Hash>)> {
        (0..count)
            .map(|i| {
                let path = RelPath::new(format!("d{}/f{i}", i % 97)).unwrap();
                let file = FileMeta {
                    size: u64::from(i) << 20,
                    mode: 0o644,
                    mtime: Timestamp::new(1_700_000_000 - i64::from(i) * 99_991, i * 7),
                    hash: Hash::of_content(&i.to_be_bytes()),
                    owner: Owner { uid: i, gid: u32::MAX - i },
                    stat: StatKey::default(),
                };
                let op = match i % 4 {
                    0 => Op::Delete { path, kind: Kind::File },
                    1 => Op::MkDir { path, meta: DirMeta { mode: 0o755, ..Default::default() } },
                    2 => Op::WriteFile { path, file, replaces: i % 8 == 2 },
                    _ => Op::SetDirMeta { path, meta: DirMeta::default(), mode_changed: false },
                };
                // Only a delete or a file write displaces a file.
                let old = matches!(op, Op::Delete { .. } | Op::WriteFile { replaces: true, .. })
                    .then(|| Hash::of_content(&i.to_le_bytes()));
                (op, old)
            })
            .collect()
    }

    #[test]
    fn a_large_journal_reads_back_whole_and_in_order() {
        // More ops than one write buffer holds.
        let journal = journal_of("s2-test", many_ops(40_000), false);
        let dir = tempfile::tempdir().unwrap();
        let size = journal.write(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(Journal::path(dir.path())).unwrap().len(), size);
        assert!(size > WRITE_BUFFER_BYTES as u64);
        let read = Journal::read(dir.path()).unwrap().unwrap();
        assert!(read == journal, "the journal read back differs from the one written");
        // And an empty plan still makes a valid journal.
        let empty = journal_of("s2-test", Vec::new(), false);
        empty.write(dir.path()).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap().unwrap(), empty);
    }

    #[test]
    fn a_journal_written_from_borrowed_ops_reads_back_the_same_ops_and_displaced_hashes() {
        let owned = journal_of("s5-test", many_ops(1_000), true);
        let borrowed = Journal { ops: Cow::Borrowed(&owned.ops[..]), ..owned.clone() };
        let dir = tempfile::tempdir().unwrap();
        borrowed.write(dir.path()).unwrap();
        let read = Journal::read(dir.path()).unwrap().unwrap();
        assert!(matches!(read.ops, Cow::Owned(_)));
        assert!(read == owned, "the journal read back differs from the one written");
        assert!(read.entries().eq(owned.entries()));
    }

    #[test]
    #[should_panic(expected = "one displaced hash (or none) per op")]
    fn a_journal_whose_displaced_hashes_do_not_pair_with_its_ops_is_never_written() {
        let mut journal = journal_of("s6-test", many_ops(10), false);
        journal.displaced.pop();
        let dir = tempfile::tempdir().unwrap();
        let _ = journal.write(dir.path());
    }

    #[test]
    fn a_new_tree_op_is_journaled_by_its_top_and_hash_and_read_back_without_its_subtree() {
        let file = FileMeta {
            size: 5,
            mode: 0o644,
            mtime: Timestamp::new(1_700_000_000, 0),
            hash: Hash::of_content(b"hello"),
            owner: Owner::default(),
            stat: StatKey::default(),
        };
        let files: Vec<manifest::Entry> = (0..1_000)
            .map(|i| manifest::Entry { name: format!("f{i}.php").as_bytes().into(), node: Node::File(file.clone()) })
            .collect();
        let meta = DirMeta { mode: 0o2775, mtime: Timestamp::new(5, 6), owner: Owner { uid: 7, gid: 8 } };
        let tree = std::sync::Arc::new(manifest::Dir::new(meta, files));
        let path = RelPath::new("php-1.45").unwrap();
        let op = Op::NewTree { path: path.clone(), meta, hash: tree.hash(), tree: Some(tree.clone()) };
        let dir_meta = Op::SetDirMeta { path: path.clone(), meta, mode_changed: false };
        let journal = journal_of("s7-test", vec![(op, None), (dir_meta.clone(), None)], false);
        let dir = tempfile::tempdir().unwrap();
        let size = journal.write(dir.path()).unwrap();
        assert!(size < 1_000, "a subtree of 1,000 files is journaled in {size} bytes");
        // The plan id is recomputed from what the journal holds: it matches.
        let read = Journal::read(dir.path()).unwrap().unwrap();
        let expected = Op::NewTree { path, meta, hash: tree.hash(), tree: None };
        assert_eq!(read.ops.as_ref(), [expected, dir_meta]);
        assert_eq!(read.plan_id, journal.plan_id);
    }

    #[test]
    fn a_journal_left_by_a_build_that_wrote_format_2_is_still_read() {
        let journal = journal_of("s8-test", many_ops(300), true);
        let dir = tempfile::tempdir().unwrap();
        journal.write(dir.path()).unwrap();
        // Format 2 is format 3 without NewTree ops, under another version number.
        let path = Journal::path(dir.path());
        let written = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&written[..written.iter().position(|&b| b == b'\n').unwrap()]).to_string();
        let head = text.replace("\"version\":3", "\"version\":2");
        assert_ne!(head, text);
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&written[text.len()..written.len() - blake3::OUT_LEN]);
        let checksum = blake3::hash(&bytes);
        bytes.extend_from_slice(checksum.as_bytes());
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(Journal::read(dir.path()).unwrap().unwrap(), journal);
    }

    #[test]
    fn a_journal_left_by_a_build_that_wrote_format_1_is_still_read() {
        let journal = journal_of("s3-test", many_ops(300), true);
        let dir = tempfile::tempdir().unwrap();
        write_format_1(&journal, dir.path());
        assert_eq!(Journal::read(dir.path()).unwrap().unwrap(), journal);
    }

    #[test]
    fn a_damaged_or_truncated_journal_is_refused_with_what_to_do() {
        let journal = journal_of("s4-test", many_ops(50), false);
        let dir = tempfile::tempdir().unwrap();
        journal.write(dir.path()).unwrap();
        let path = Journal::path(dir.path());
        let good = std::fs::read(&path).unwrap();
        let body = good.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut flipped = good.clone();
        flipped[body + 40] ^= 0x10;
        for (what, bytes) in [("a flipped bit", flipped), ("a cut", good[..good.len() - 100].to_vec())] {
            std::fs::write(&path, bytes).unwrap();
            let error = Journal::read(dir.path()).unwrap_err();
            assert!(matches!(error, JournalError::Invalid { .. }), "{what}: {error}");
            assert!(error.to_string().contains("stagingctl verify"), "{what}: {error}");
        }
    }

    #[test]
    fn the_decoder_refuses_every_cut_and_stray_byte_without_panicking() {
        let mut encoder = Encoder::default();
        let ops = many_ops(12);
        for (op, old) in &ops {
            encoder.op(op, *old);
        }
        let body = encoder.out;
        assert_eq!(Decoder::new(&body).ops(ops.len() as u64).unwrap(), ops);
        for cut in 0..body.len() {
            assert!(Decoder::new(&body[..cut]).ops(ops.len() as u64).is_err(), "cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(Decoder::new(&longer).ops(ops.len() as u64).is_err());
        // A path cannot share more than the previous one has, nor the first any.
        let mut shares = vec![OP_DELETE, 3];
        shares.extend_from_slice(&[1, b'a', 1, 0]);
        assert!(Decoder::new(&shares).ops(1).unwrap_err().contains("shares 3 bytes"));
        // A count the bytes cannot hold is refused before anything is sized by it.
        assert!(Decoder::new(&body).ops(u64::MAX).is_err());
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
        let journal = Journal {
            sync_id: SyncId::new("s1-test".to_owned()).unwrap(),
            plan_id: PlanId([0; 8]),
            from_root,
            to_root,
            preserve_owner: false,
            ops: Cow::Owned(vec![Op::Delete { path: RelPath::new("a").unwrap(), kind: Kind::Symlink }]),
            displaced: vec![None],
        };
        journal.write(dir.path()).unwrap();
        let error = Journal::read(dir.path()).unwrap_err();
        assert!(matches!(error, JournalError::Invalid { .. }), "{error}");
    }
}
