//! Comparing two manifests into a [`Plan`]: the ordered operations that turn one
//! tree into the other, their totals, and a deterministic [`PlanId`].
//!
//! The diff descends only into directories whose hashes differ, so its cost is
//! proportional to what changed, not to the tree. Operations come in the order an
//! apply must run them:
//!
//! 1. removals of entries whose kind changes (a file that becomes a directory, a
//!    directory that becomes a symlink), children before parents;
//! 2. creations and updates in path order, parents before children: `NewTree`,
//!    `WriteFile`, `SetFileMeta`, `Symlink` (and `MkDir`, see below);
//! 3. deletions of entries that are gone from the target, children before parents;
//! 4. `SetDirMeta` for every directory that was created or whose entries changed,
//!    children before parents: modes are set last so a read-only directory can
//!    still be filled, and mtimes after the last entry in them changed.
//!
//! A directory the target has where the base has nothing (or another kind) is
//! one `NewTree` op, which names the target's subtree (shared, not copied)
//! instead of one op per entry below it: a full copy to an empty master is a
//! handful of ops, not 184,000 of ~180 bytes each. Only a subtree with a path
//! longer than [`MAX_NEW_TREE_PATH`] is spelled out as `MkDir` and one op per
//! entry.
//!
//! Ownership rides along on the operations that happen anyway; like directory
//! mtimes it is not part of any hash, so two trees with equal roots give an empty
//! plan.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::hash::Hash;
use crate::path::RelPath;
use crate::tree::{Dir, DirMeta, FileMeta, Kind, Manifest, Node, StatKey, SymlinkMeta, TreeError};

/// Domain-separation context for plan ids.
pub const PLAN_ID_CONTEXT: &str = "stagingd 2026-11 plan id v1";

/// The longest path a [`Op::NewTree`] subtree may hold. A new subtree is built
/// whole in a staging directory at its own paths, each opened from there in one
/// call, and `staging/tree/<path>` must stay under the kernel's `PATH_MAX`
/// (4,096); a subtree with a longer path is planned as one op per entry.
pub const MAX_NEW_TREE_PATH: usize = 3_072;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Remove the entry at `path` (a directory is already empty when this runs).
    Delete { path: RelPath, kind: Kind },
    /// Create a directory. Its final mode and mtime come with a later `SetDirMeta`.
    MkDir { path: RelPath, meta: DirMeta },
    /// Create the directory at `path` with everything the target has below it.
    /// `meta` and `hash` are the subtree's top directory's; its final mode and
    /// mtime come with a later `SetDirMeta`, like a `MkDir`'s.
    NewTree {
        path: RelPath,
        meta: DirMeta,
        hash: Hash,
        /// The target's subtree, shared with the target manifest. `None` in an
        /// op read back from a journal: the switch renames the subtree staged
        /// before the journal was written and needs nothing below its top.
        tree: Option<Arc<Dir>>,
    },
    /// Put a file with this content and metadata at `path`; `replaces` when a file
    /// with other content is there now.
    WriteFile { path: RelPath, file: FileMeta, replaces: bool },
    /// Same content; change mode and mtime (and owner where possible).
    SetFileMeta { path: RelPath, file: FileMeta },
    /// Create a symlink, or replace one whose target differs.
    Symlink { path: RelPath, link: SymlinkMeta, replaces: bool },
    /// Set a directory's mode, mtime and owner. `mode_changed` is false when only
    /// its entries changed and this restores its mtime.
    SetDirMeta { path: RelPath, meta: DirMeta, mode_changed: bool },
}

impl Op {
    pub fn path(&self) -> &RelPath {
        match self {
            Op::Delete { path, .. }
            | Op::MkDir { path, .. }
            | Op::NewTree { path, .. }
            | Op::WriteFile { path, .. }
            | Op::SetFileMeta { path, .. }
            | Op::Symlink { path, .. }
            | Op::SetDirMeta { path, .. } => path,
        }
    }

    /// A short rsync-like tag for itemized output.
    pub fn tag(&self) -> &'static str {
        match self {
            Op::Delete { kind: Kind::Dir, .. } => "delete-dir",
            Op::Delete { .. } => "delete",
            Op::MkDir { .. } | Op::NewTree { .. } => "mkdir",
            Op::WriteFile { replaces: false, .. } => "create",
            Op::WriteFile { replaces: true, .. } => "update",
            Op::SetFileMeta { .. } => "meta",
            Op::Symlink { replaces: false, .. } => "symlink",
            Op::Symlink { replaces: true, .. } => "relink",
            Op::SetDirMeta { .. } => "dir-meta",
        }
    }

    /// True for operations an operator reads in an itemized plan; a `SetDirMeta`
    /// that only restores an mtime is bookkeeping.
    pub fn is_itemized(&self) -> bool {
        !matches!(self, Op::SetDirMeta { mode_changed: false, .. })
    }
}

/// What a plan does, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanTotals {
    pub files_created: u64,
    pub files_updated: u64,
    /// Files whose mode or mtime change with the same content, and directories
    /// whose mode changes.
    pub meta_updated: u64,
    pub symlinks_created: u64,
    pub symlinks_updated: u64,
    pub dirs_created: u64,
    pub files_deleted: u64,
    pub symlinks_deleted: u64,
    pub dirs_deleted: u64,
    /// Content bytes the new and updated files hold.
    pub bytes_to_write: u64,
}

impl PlanTotals {
    pub fn creates(&self) -> u64 {
        self.files_created + self.symlinks_created + self.dirs_created
    }
    pub fn updates(&self) -> u64 {
        self.files_updated + self.symlinks_updated + self.meta_updated
    }
    pub fn deletes(&self) -> u64 {
        self.files_deleted + self.symlinks_deleted + self.dirs_deleted
    }
    /// Deleted entries that are not directories: what the delete threshold counts.
    pub fn leaves_deleted(&self) -> u64 {
        self.files_deleted + self.symlinks_deleted
    }
    /// New inodes the apply needs at its peak (every new entry, plus one temporary
    /// inode per updated file while the old one waits in the trash).
    pub fn inodes_needed(&self) -> u64 {
        self.creates() + self.files_updated + self.symlinks_updated
    }
}

/// A plan's identity: the first 8 bytes of a BLAKE3 hash over its base and target
/// roots and every operation. Shown as 16 hex digits; an operator confirms a plan
/// by quoting it, and any change on either side gives another id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanId(pub [u8; 8]);

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlanId({self})")
    }
}

/// Why a string is not a plan id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a plan id: expected 16 hex digits as printed by `stagingctl sync --dry-run`")]
pub struct ParsePlanIdError(pub String);

impl FromStr for PlanId {
    type Err = ParsePlanIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePlanIdError(s.to_owned());
        if s.len() != 16 || !s.is_ascii() {
            return Err(err());
        }
        let mut out = [0u8; 8];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Self(out))
    }
}

impl serde::Serialize for PlanId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The operations that turn the tree with root `from_root` into the one with
/// root `to_root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub from_root: Hash,
    pub to_root: Hash,
    pub ops: Vec<Op>,
    pub totals: PlanTotals,
    pub id: PlanId,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Drops the `NewTree` ops' references to the target's subtrees, keeping
    /// their paths, metadata and hashes (and so the plan id). Once a subtree is
    /// staged, the switch needs only its top's name, and what is below it can be
    /// read from the target manifest, which can then record stat keys in place:
    /// while the plan shared them, doing so copied every directory below.
    pub fn release_subtrees(&mut self) {
        for op in &mut self.ops {
            if let Op::NewTree { tree, .. } = op {
                *tree = None;
            }
        }
    }
}

/// The plan that turns `from` into `to`.
pub fn diff(from: &Manifest, to: &Manifest) -> Plan {
    let mut builder = Builder::default();
    if from.root_hash() != to.root_hash() {
        builder.dir(&RelPath::root(), from.root(), to.root());
    }
    builder.finish(from.root_hash(), to.root_hash())
}

/// True when [`Builder::node`] would find nothing to do.
fn unchanged(from: &Node, to: &Node) -> bool {
    match (from, to) {
        (Node::File(a), Node::File(b)) => {
            a.hash == b.hash && a.size == b.size && a.mode == b.mode && a.mtime == b.mtime
        }
        (Node::Symlink(a), Node::Symlink(b)) => a.target == b.target,
        (Node::Dir(a), Node::Dir(b)) => a.hash() == b.hash() && a.meta.mode == b.meta.mode,
        _ => false,
    }
}

#[derive(Default)]
struct Builder {
    kind_change_removals: Vec<Op>,
    creates_and_updates: Vec<Op>,
    deletions: Vec<Op>,
    dir_metas: Vec<Op>,
    totals: PlanTotals,
}

impl Builder {
    /// Compares two directories at the same path whose hashes or modes differ.
    fn dir(&mut self, path: &RelPath, from: &Dir, to: &Dir) {
        let contents_differ = from.hash() != to.hash();
        if contents_differ {
            let (mut a, mut b) = (from.children().iter().peekable(), to.children().iter().peekable());
            loop {
                let order = match (a.peek(), b.peek()) {
                    (None, None) => break,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(x), Some(y)) => x.name.cmp(&y.name),
                };
                match order {
                    Ordering::Less => {
                        let old = a.next().expect("peeked");
                        let child = join(path, &old.name);
                        remove_subtree(&child, &old.node, &mut self.deletions, &mut self.totals);
                    }
                    Ordering::Greater => {
                        let new = b.next().expect("peeked");
                        self.create_subtree(&join(path, &new.name), &new.node);
                    }
                    Ordering::Equal => {
                        let (old, new) = (a.next().expect("peeked"), b.next().expect("peeked"));
                        // Most entries of a changed directory are not changed: no path for them.
                        if !unchanged(&old.node, &new.node) {
                            self.node(&join(path, &old.name), &old.node, &new.node);
                        }
                    }
                }
            }
        }
        let mode_changed = from.meta.mode != to.meta.mode;
        if mode_changed {
            self.totals.meta_updated += 1;
        }
        self.dir_metas.push(Op::SetDirMeta { path: path.clone(), meta: to.meta, mode_changed });
    }

    fn node(&mut self, path: &RelPath, from: &Node, to: &Node) {
        match (from, to) {
            (Node::File(a), Node::File(b)) => {
                if a.hash != b.hash || a.size != b.size {
                    self.totals.files_updated += 1;
                    self.totals.bytes_to_write = self.totals.bytes_to_write.saturating_add(b.size);
                    self.creates_and_updates.push(Op::WriteFile {
                        path: path.clone(),
                        file: portable(b),
                        replaces: true,
                    });
                } else if a.mode != b.mode || a.mtime != b.mtime {
                    self.totals.meta_updated += 1;
                    self.creates_and_updates.push(Op::SetFileMeta { path: path.clone(), file: portable(b) });
                }
            }
            (Node::Symlink(a), Node::Symlink(b)) => {
                if a.target != b.target {
                    self.totals.symlinks_updated += 1;
                    self.creates_and_updates.push(Op::Symlink { path: path.clone(), link: b.clone(), replaces: true });
                }
            }
            (Node::Dir(a), Node::Dir(b)) => {
                if a.hash() != b.hash() || a.meta.mode != b.meta.mode {
                    self.dir(path, a, b);
                }
            }
            (old, new) => {
                remove_subtree(path, old, &mut self.kind_change_removals, &mut self.totals);
                self.create_subtree(path, new);
            }
        }
    }

    fn create_subtree(&mut self, path: &RelPath, node: &Node) {
        match node {
            Node::File(f) => {
                self.totals.files_created += 1;
                self.totals.bytes_to_write = self.totals.bytes_to_write.saturating_add(f.size);
                self.creates_and_updates.push(Op::WriteFile { path: path.clone(), file: portable(f), replaces: false });
            }
            Node::Symlink(s) => {
                self.totals.symlinks_created += 1;
                self.creates_and_updates.push(Op::Symlink { path: path.clone(), link: s.clone(), replaces: false });
            }
            Node::Dir(d) => {
                self.totals.dirs_created += 1;
                if fits_new_tree(path.as_bytes().len(), d) {
                    let below = d.totals();
                    self.totals.dirs_created += below.dirs;
                    self.totals.files_created += below.files;
                    self.totals.symlinks_created += below.symlinks;
                    self.totals.bytes_to_write = self.totals.bytes_to_write.saturating_add(below.bytes);
                    self.creates_and_updates.push(Op::NewTree {
                        path: path.clone(),
                        meta: d.meta,
                        hash: d.hash(),
                        tree: Some(Arc::clone(d)),
                    });
                } else {
                    self.creates_and_updates.push(Op::MkDir { path: path.clone(), meta: d.meta });
                    for child in d.children() {
                        self.create_subtree(&join(path, &child.name), &child.node);
                    }
                }
                self.dir_metas.push(Op::SetDirMeta { path: path.clone(), meta: d.meta, mode_changed: false });
            }
        }
    }

    fn finish(self, from_root: Hash, to_root: Hash) -> Plan {
        // One allocation of the exact size: grown step by step, a full copy's
        // 184,000 ops got room for 335,000 (17 MB unused for the whole sync).
        let parts = [self.kind_change_removals, self.creates_and_updates, self.deletions, self.dir_metas];
        let mut ops = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in parts {
            ops.extend(part);
        }
        let id = plan_id(from_root, to_root, &ops);
        Plan { from_root, to_root, ops, totals: self.totals, id }
    }
}

/// True when no path in `dir`, a directory whose own path is `len` bytes long,
/// is longer than [`MAX_NEW_TREE_PATH`].
fn fits_new_tree(len: usize, dir: &Dir) -> bool {
    len <= MAX_NEW_TREE_PATH
        && dir.children().iter().all(|child| {
            let child_len = len + 1 + child.name.len();
            match &child.node {
                Node::Dir(d) => fits_new_tree(child_len, d),
                _ => child_len <= MAX_NEW_TREE_PATH,
            }
        })
}

/// Appends the removal of `node` at `path` and everything below it, children first.
fn remove_subtree(path: &RelPath, node: &Node, out: &mut Vec<Op>, totals: &mut PlanTotals) {
    match node {
        Node::File(_) => totals.files_deleted += 1,
        Node::Symlink(_) => totals.symlinks_deleted += 1,
        Node::Dir(d) => {
            for child in d.children() {
                remove_subtree(&join(path, &child.name), &child.node, out, totals);
            }
            totals.dirs_deleted += 1;
        }
    }
    out.push(Op::Delete { path: path.clone(), kind: node.kind() });
}

fn join(parent: &RelPath, name: &[u8]) -> RelPath {
    parent.join(name).expect("names inside a manifest are validated when it is built")
}

/// A file entry without the local stat facts, as it goes into a plan.
fn portable(file: &FileMeta) -> FileMeta {
    FileMeta { stat: StatKey::default(), ..file.clone() }
}

/// The id of a plan with these roots and operations (see [`PlanId`]).
pub fn plan_id(from_root: Hash, to_root: Hash, ops: &[Op]) -> PlanId {
    let mut h = blake3::Hasher::new_derive_key(PLAN_ID_CONTEXT);
    h.update(from_root.as_bytes());
    h.update(to_root.as_bytes());
    h.update(&(ops.len() as u64).to_le_bytes());
    for op in ops {
        let code: u8 = match op {
            Op::Delete { .. } => 1,
            Op::MkDir { .. } => 2,
            Op::WriteFile { .. } => 3,
            Op::SetFileMeta { .. } => 4,
            Op::Symlink { .. } => 5,
            Op::SetDirMeta { .. } => 6,
            Op::NewTree { .. } => 7,
        };
        h.update(&[code]);
        let path = op.path().as_bytes();
        h.update(&(path.len() as u32).to_le_bytes());
        h.update(path);
        let mut dir_meta = |meta: &DirMeta| {
            h.update(&meta.mode.to_le_bytes());
            h.update(&meta.mtime.secs.to_le_bytes());
            h.update(&meta.mtime.nanos.to_le_bytes());
            h.update(&meta.owner.uid.to_le_bytes());
            h.update(&meta.owner.gid.to_le_bytes());
        };
        match op {
            Op::Delete { kind, .. } => {
                h.update(&[kind.code()]);
            }
            Op::MkDir { meta, .. } => dir_meta(meta),
            // The subtree's hash stands for everything below its top: what a
            // manifest hashes (names, kinds, content, sizes, modes, file mtimes,
            // symlink targets). Directory mtimes and owners below the top are not
            // in any hash, and so not in the id.
            Op::NewTree { meta, hash, .. } => {
                dir_meta(meta);
                h.update(hash.as_bytes());
            }
            Op::SetDirMeta { meta, mode_changed, .. } => {
                dir_meta(meta);
                h.update(&[u8::from(*mode_changed)]);
            }
            Op::WriteFile { file, replaces, .. } => {
                hash_file_fields(&mut h, file);
                h.update(&[u8::from(*replaces)]);
            }
            Op::SetFileMeta { file, .. } => hash_file_fields(&mut h, file),
            Op::Symlink { link, replaces, .. } => {
                h.update(&(link.target.len() as u32).to_le_bytes());
                h.update(&link.target);
                h.update(&link.owner.uid.to_le_bytes());
                h.update(&link.owner.gid.to_le_bytes());
                h.update(&[u8::from(*replaces)]);
            }
        }
    }
    let digest = h.finalize();
    PlanId(digest.as_bytes()[..8].try_into().expect("8 of 32 bytes"))
}

fn hash_file_fields(h: &mut blake3::Hasher, file: &FileMeta) {
    h.update(&file.size.to_le_bytes());
    h.update(&file.mode.to_le_bytes());
    h.update(&file.mtime.secs.to_le_bytes());
    h.update(&file.mtime.nanos.to_le_bytes());
    h.update(file.hash.as_bytes());
    h.update(&file.owner.uid.to_le_bytes());
    h.update(&file.owner.gid.to_le_bytes());
}

/// Why a plan could not be applied to a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan {id} was made for root {expected}, this manifest's root is {actual}")]
    WrongBase { id: PlanId, expected: Hash, actual: Hash },
    #[error("{op} at {path}: {why}")]
    Step { op: &'static str, path: RelPath, why: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("after plan {id} the root is {actual}, the plan promised {expected}")]
    WrongResult { id: PlanId, expected: Hash, actual: Hash },
}

impl Manifest {
    /// Applies `plan` to this manifest in memory, checking each step against the
    /// entries it expects and the final root against the plan's target.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), PlanError> {
        if self.root_hash() != plan.from_root {
            return Err(PlanError::WrongBase { id: plan.id, expected: plan.from_root, actual: self.root_hash() });
        }
        self.batch(|m| -> Result<(), PlanError> {
            for op in &plan.ops {
                let step = |why: &str| PlanError::Step { op: op.tag(), path: op.path().clone(), why: why.to_owned() };
                match op {
                    Op::Delete { path, kind } => {
                        match m.get(path) {
                            Some(node) if node.kind() == *kind => {}
                            _ => return Err(step("the entry to delete is not there")),
                        }
                        m.remove(path, false)?;
                    }
                    Op::MkDir { path, meta } => {
                        if m.get(path).is_some() {
                            return Err(step("something is already there"));
                        }
                        m.insert(path, Node::Dir(Dir::empty(*meta).into()))?;
                    }
                    Op::NewTree { path, hash, tree, .. } => {
                        let Some(tree) = tree else {
                            return Err(step("the op names no subtree (it was read back from a journal)"));
                        };
                        if tree.hash() != *hash {
                            return Err(step("the subtree's hash is not the op's"));
                        }
                        if m.get(path).is_some() {
                            return Err(step("something is already there"));
                        }
                        m.insert(path, Node::Dir(Arc::clone(tree)))?;
                    }
                    Op::WriteFile { path, file, replaces } => {
                        match (m.get(path), replaces) {
                            (None, false) | (Some(Node::File(_)), true) => {}
                            _ => return Err(step("the path does not hold what the plan expects")),
                        }
                        m.insert(path, Node::File(file.clone()))?;
                    }
                    Op::SetFileMeta { path, file } => {
                        let Some(Node::File(old)) = m.get(path) else {
                            return Err(step("no file there"));
                        };
                        if old.hash != file.hash {
                            return Err(step("the file's content is not what the plan expects"));
                        }
                        m.insert(path, Node::File(file.clone()))?;
                    }
                    Op::Symlink { path, link, replaces } => {
                        match (m.get(path), replaces) {
                            (None, false) | (Some(Node::Symlink(_)), true) => {}
                            _ => return Err(step("the path does not hold what the plan expects")),
                        }
                        m.insert(path, Node::Symlink(link.clone()))?;
                    }
                    Op::SetDirMeta { path, meta, .. } => {
                        if m.dir(path).is_none() {
                            return Err(step("no directory there"));
                        }
                        m.set_dir_meta(path, *meta)?;
                    }
                }
            }
            Ok(())
        })?;
        if self.root_hash() != plan.to_root {
            return Err(PlanError::WrongResult { id: plan.id, expected: plan.to_root, actual: self.root_hash() });
        }
        Ok(())
    }
}
