//! The journaled switch: staged content becomes the tree, and a crash at any
//! point is completed on restart.
//!
//! Order (ARCHITECTURE.md, "Files are hard"):
//!
//! 1. Staging is durable already ([`Staging::finish`], one `syncfs`).
//! 2. A preflight compares every path the plan touches with the disk: the tree
//!    must still hold what the old manifest says, every parent must be reachable
//!    without following a symlink, and every directory to delete must hold only
//!    what the plan deletes. Any difference is an error *before* anything is
//!    written: the tree is untouched.
//! 3. The [`Journal`] is written (`write_atomic`). From here recovery rolls forward.
//! 4. The switch runs the ops in plan order. Files are hard-linked into the
//!    [`Trash`] before they are replaced or unlinked; new files and symlinks are
//!    `rename`d from staging over their final names, and a new subtree by one
//!    `rename` of its top directory ([`crate::layout`]). Every step is idempotent and
//!    decides from the disk whether it is done (a staged entry that is gone was
//!    renamed; a path that is gone, or holds another kind, was deleted), so
//!    [`recover`] replays the whole journal after a crash.
//! 5. `syncfs`, remove the journal, remove the staging directory.
//! 6. Every touched path is stat'ed again and checked against the target; the new
//!    manifest is `old.apply(plan)` with fresh stat keys.
//!
//! This module does not fetch or verify content ([`crate::stage`]), does not decide
//! whether a sync may run (`sync::guards`) and does not record history
//! ([`crate::history`]): the caller appends the record with what [`Applied`] says.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::Path;

use manifest::{DirMeta, FileMeta, Hash, Kind, Manifest, Node, Op, Plan, PlanError, PlanId, RelPath, StatKey};
use rustix::fs::{AtFlags, Mode};
use rustix::io::Errno;

use crate::history::SyncId;
use crate::journal::{Journal, JournalError};
use crate::layout::{Layout, Place, staged_path};
use crate::stage::{STAGING_DIR, StageError, Staging, entry_name, remove_dir_all};
use crate::trash::Trash;
use crate::tree_fs::{
    DirCursor, EntryKind, EntryStat, TreeFsError, TreeRoot, io_error, lstat_at, mtime_only, set_meta_at,
};

/// Whether to go on after a step; tests stop to simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    /// Return [`ApplyError::Stopped`] now, leaving journal and staging as a crash would.
    Stop,
}

/// How to apply.
#[derive(Default)]
pub struct ApplyOptions<'a> {
    /// Set owner and group of existing files and directories from the plan (as
    /// root). Staged inodes get theirs from [`Staging::create`]'s flag.
    pub preserve_owner: bool,
    /// Called before every step with its number: step 0 writes the journal, then
    /// one step per filesystem change of the switch, then `syncfs`, journal
    /// removal and staging removal. A test hook to simulate `kill -9` anywhere.
    pub step_hook: Option<&'a dyn Fn(usize) -> StepControl>,
}

impl std::fmt::Debug for ApplyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("preserve_owner", &self.preserve_owner)
            .field("step_hook", &self.step_hook.is_some())
            .finish()
    }
}

/// A finished apply.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The tree's manifest now: `old.apply(plan)` with fresh stat keys.
    pub manifest: Manifest,
    /// Content hashes of every file the sync replaced or deleted (all kept in the
    /// trash); history records them so retention keeps them.
    pub trashed: Vec<Hash>,
    /// How many of those needed a new trash link (the others were there already).
    pub newly_trashed: u64,
    /// Steps run (see [`ApplyOptions::step_hook`]).
    pub steps: usize,
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No journal and no staging left over.
    Clean,
    /// No journal: a sync stopped before its switch; its staging was removed and
    /// the tree is as it was.
    StagingDiscarded { dirs: usize },
    /// A journal was found and the switch completed. The caller rescans the tree
    /// (the stat cache makes that cheap) and records the sync as recovered.
    RolledForward { sync_id: SyncId, plan_id: PlanId, from_root: Hash, to_root: Hash, trashed: Vec<Hash> },
}

/// Why an apply failed, and in what state it left the tree.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("staging of sync {0} was not made durable (call Staging::finish); nothing was applied")]
    NotDurable(SyncId),
    #[error("the plan does not fit the old manifest; nothing was applied: {0}")]
    Plan(#[from] PlanError),
    #[error("{0}; nothing was applied")]
    Stage(#[from] StageError),
    #[error(
        "{path}: the tree changed since the plan was made ({why}); nothing was applied\nhint: rescan and plan again"
    )]
    Changed { path: String, why: String },
    #[error(
        "a journal from an interrupted sync is pending in {0}; nothing was applied\nhint: restart the daemon so \
         `recover` completes it"
    )]
    JournalPending(String),
    #[error("before the switch: {0}; nothing was applied")]
    Preflight(TreeFsError),
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error(
        "switch step {step} ({op} {path}) failed: {source}\nthe journal is kept: the next `recover` completes the \
         switch; if it cannot, roll back with `stagingctl rollback`"
    )]
    Switch {
        step: usize,
        op: &'static str,
        path: RelPath,
        #[source]
        source: TreeFsError,
    },
    #[error("stopped by the step hook after {steps} steps (simulated crash)")]
    Stopped { steps: usize },
    #[error("after the switch, {path} is not what the plan made it: expected {expected}, found {found}")]
    Verify { path: String, expected: String, found: String },
    #[error(transparent)]
    Fs(#[from] TreeFsError),
}

struct Steps<'a> {
    done: usize,
    hook: Option<&'a dyn Fn(usize) -> StepControl>,
}

impl Steps<'_> {
    fn next(&mut self) -> Result<(), ApplyError> {
        if let Some(hook) = self.hook
            && hook(self.done) == StepControl::Stop
        {
            return Err(ApplyError::Stopped { steps: self.done });
        }
        self.done += 1;
        Ok(())
    }
}

/// Applies `plan` (made from `old`) to the tree at `root`, switching in the content
/// `staging` holds. See the module docs for the order and the crash guarantees.
pub fn apply(
    root: &Path,
    tree_state_dir: &Path,
    old: &Manifest,
    plan: &Plan,
    staging: &Staging,
    options: &ApplyOptions<'_>,
) -> Result<Applied, ApplyError> {
    let mut target = old.clone();
    target.apply(plan)?;
    apply_to(root, tree_state_dir, old, plan, target, staging, options)
}

/// [`apply`] for a caller that has the manifest `plan` leads to (`plan` is
/// `diff(old, target)`), which is then not rebuilt from `old` and `plan`.
pub fn apply_to(
    root: &Path,
    tree_state_dir: &Path,
    old: &Manifest,
    plan: &Plan,
    target: Manifest,
    staging: &Staging,
    options: &ApplyOptions<'_>,
) -> Result<Applied, ApplyError> {
    if old.root_hash() != plan.from_root {
        return Err(PlanError::WrongBase { id: plan.id, expected: plan.from_root, actual: old.root_hash() }.into());
    }
    if target.root_hash() != plan.to_root {
        return Err(PlanError::WrongResult { id: plan.id, expected: plan.to_root, actual: target.root_hash() }.into());
    }
    if !staging.is_durable() {
        return Err(ApplyError::NotDurable(staging.sync_id().clone()));
    }
    let timer = std::time::Instant::now();
    let lap = |what: &str| tracing::debug!(millis = timer.elapsed().as_millis() as u64, "apply: {what}");
    staging.check_complete(plan, &target)?;
    lap("staging checked");
    if Journal::read(tree_state_dir)?.is_some() {
        return Err(ApplyError::JournalPending(tree_state_dir.display().to_string()));
    }
    let tree = TreeRoot::open(root)?;
    let old_hashes = preflight(&tree, old, plan)?;
    lap("preflight");
    let trash = Trash::open_in(&tree)?;
    let journal = Journal {
        sync_id: staging.sync_id().clone(),
        plan_id: plan.id,
        from_root: plan.from_root,
        to_root: plan.to_root,
        preserve_owner: options.preserve_owner,
        ops: std::borrow::Cow::Borrowed(&plan.ops),
        displaced: old_hashes,
    };
    let mut steps = Steps { done: 0, hook: options.step_hook };

    steps.next()?;
    fs_err::create_dir_all(tree_state_dir).map_err(|source| JournalError::Io {
        op: "create directory for",
        path: tree_state_dir.to_path_buf(),
        source,
    })?;
    let journal_bytes = journal.write(tree_state_dir)?;
    tracing::debug!(bytes = journal_bytes, ops = journal.ops.len(), "apply: journal size");
    lap("journal written");

    let switched = switch(&tree, staging.dir_fd(), &trash, &journal, &mut steps)?;
    lap("switched");

    steps.next()?;
    tree.syncfs()?;
    lap("syncfs");
    steps.next()?;
    Journal::remove(tree_state_dir)?;
    steps.next()?;
    remove_dir_all(&staging.path())?;

    let manifest = verify(&tree, plan, target)?;
    lap("verified");
    Ok(Applied { manifest, trashed: switched.trashed, newly_trashed: switched.newly_trashed, steps: steps.done })
}

/// Completes a switch interrupted by a crash, or cleans up a sync that never
/// reached its switch. Call at daemon start, before the tree is scanned or served.
pub fn recover(root: &Path, tree_state_dir: &Path) -> Result<Recovery, ApplyError> {
    recover_with_hook(root, tree_state_dir, None)
}

/// [`recover`] with a step hook, so tests can crash recovery itself (steps count
/// as in [`ApplyOptions::step_hook`], from 0, without the journal write).
pub fn recover_with_hook(
    root: &Path,
    tree_state_dir: &Path,
    step_hook: Option<&dyn Fn(usize) -> StepControl>,
) -> Result<Recovery, ApplyError> {
    let tree = TreeRoot::open(root)?;
    let staging_root = tree.path().join(STAGING_DIR);
    let leftover_dirs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&staging_root)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let Some(journal) = Journal::read(tree_state_dir)? else {
        let dirs = leftover_dirs();
        for dir in &dirs {
            remove_dir_all(dir)?;
        }
        return Ok(if dirs.is_empty() { Recovery::Clean } else { Recovery::StagingDiscarded { dirs: dirs.len() } });
    };
    tracing::warn!(sync_id = %journal.sync_id, plan_id = %journal.plan_id, "completing an interrupted switch");
    // The staging directory is removed only after the journal, so it is there; if
    // someone removed it by hand, an empty one means every entry was switched.
    let staging_rel = RelPath::new(format!("{STAGING_DIR}/{}", journal.sync_id)).expect("sync ids are valid names");
    tree.create_dir_all(&staging_rel, 0o700)?;
    let staging = Staging::reopen(root, &journal.sync_id)?;
    let trash = Trash::open_in(&tree)?;
    let mut steps = Steps { done: 0, hook: step_hook };
    let switched = switch(&tree, staging.dir_fd(), &trash, &journal, &mut steps)?;
    steps.next()?;
    tree.syncfs()?;
    steps.next()?;
    Journal::remove(tree_state_dir)?;
    for dir in leftover_dirs() {
        remove_dir_all(&dir)?;
    }
    Ok(Recovery::RolledForward {
        sync_id: journal.sync_id,
        plan_id: journal.plan_id,
        from_root: journal.from_root,
        to_root: journal.to_root,
        trashed: switched.trashed,
    })
}

// ---- preflight ---------------------------------------------------------------

/// Checks the disk against the old manifest for every path the plan touches and
/// returns, per op, the hash of the file it displaces.
fn preflight(tree: &TreeRoot, old: &Manifest, plan: &Plan) -> Result<Vec<Option<Hash>>, ApplyError> {
    let deleted: HashSet<&RelPath> =
        plan.ops.iter().filter(|op| matches!(op, Op::Delete { .. })).map(Op::path).collect();
    let mut out = Vec::with_capacity(plan.ops.len());
    for op in &plan.ops {
        let path = op.path();
        let before = if path.is_root() { None } else { old.get(path) };
        // Every path whose parent exists before the switch must be reachable without
        // following a symlink; paths under directories the plan creates are checked
        // through those directories' own MkDir.
        let parent_exists = path.parent().is_some_and(|p| old.dir(&p).is_some());
        let on_disk = if path.is_root() || parent_exists || before.is_some() {
            tree.lstat(path).map_err(ApplyError::Preflight)?
        } else {
            None
        };
        let changed = |why: String| ApplyError::Changed { path: tree.shown(path), why };
        let mut displaced = None;
        match op {
            Op::Delete { kind, .. } => {
                let node =
                    before.filter(|n| n.kind() == *kind).ok_or_else(|| changed("not in the old manifest".into()))?;
                check_same(tree, path, node, on_disk.as_ref()).map_err(changed)?;
                if let Node::File(f) = node {
                    displaced = Some(f.hash);
                }
                if *kind == Kind::Dir {
                    check_only_deleted_inside(tree, path, &deleted)?;
                }
            }
            Op::WriteFile { replaces: true, .. } | Op::SetFileMeta { .. } | Op::Symlink { replaces: true, .. } => {
                let node = before.ok_or_else(|| changed("not in the old manifest".into()))?;
                check_same(tree, path, node, on_disk.as_ref()).map_err(changed)?;
                if let (Op::WriteFile { .. }, Node::File(f)) = (op, node) {
                    displaced = Some(f.hash);
                }
            }
            Op::MkDir { .. }
            | Op::NewTree { .. }
            | Op::WriteFile { replaces: false, .. }
            | Op::Symlink { replaces: false, .. } => {
                // A kind change removes the old entry first (its Delete is checked);
                // otherwise the name must be free.
                if before.is_none()
                    && let Some(found) = on_disk
                {
                    return Err(changed(format!("a {:?} is there, the plan creates it", found.kind)));
                }
            }
            Op::SetDirMeta { .. } => {
                // A directory created by this plan (kind changes included) is checked by its MkDir.
                let existed = path.is_root() || matches!(before, Some(Node::Dir(_)));
                if existed && on_disk.map(|s| s.kind) != Some(EntryKind::Dir) {
                    return Err(changed("not a directory on disk".into()));
                }
            }
        }
        out.push(displaced);
    }
    Ok(out)
}

/// Compares what is on disk with the old manifest's node.
fn check_same(tree: &TreeRoot, path: &RelPath, node: &Node, found: Option<&EntryStat>) -> Result<(), String> {
    let Some(found) = found else { return Err("it is gone".into()) };
    if found.manifest_kind() != Some(node.kind()) {
        return Err(format!("it is a {:?}, the manifest says {}", found.kind, node.kind().as_str()));
    }
    match node {
        Node::File(f) => {
            if found.size != f.size || found.mtime != f.mtime || (f.stat.ino != 0 && found.ino != f.stat.ino) {
                return Err("its size, mtime or inode differ from the manifest".into());
            }
        }
        Node::Symlink(s) => {
            let target = read_link(tree, path).map_err(|e| e.to_string())?;
            if *target != *s.target {
                return Err("its symlink target differs from the manifest".into());
            }
        }
        Node::Dir(_) => {}
    }
    Ok(())
}

/// A directory is removed with `rmdir`: anything in it the plan does not delete
/// (an excluded file, a file created since the scan) would stop the switch half
/// way, so it stops the apply before it starts.
fn check_only_deleted_inside(tree: &TreeRoot, path: &RelPath, deleted: &HashSet<&RelPath>) -> Result<(), ApplyError> {
    let fd = tree.open_dir(path).map_err(ApplyError::Preflight)?;
    let dir =
        rustix::fs::Dir::read_from(&fd).map_err(|e| ApplyError::Preflight(io_error("list", tree.shown(path), e)))?;
    for entry in dir {
        let entry = entry.map_err(|e| ApplyError::Preflight(io_error("list", tree.shown(path), e)))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kept = path.join(name).map(|child| !deleted.contains(&child)).unwrap_or(true);
        if kept {
            return Err(ApplyError::Changed {
                path: tree.shown(path),
                why: format!(
                    "the directory holds {} which the plan does not delete (excluded, or created since the scan)",
                    manifest::path::escape(name)
                ),
            });
        }
    }
    Ok(())
}

fn read_link(tree: &TreeRoot, path: &RelPath) -> Result<Vec<u8>, TreeFsError> {
    let (dir, name) = tree.parent("read symlink", path)?;
    rustix::fs::readlinkat(&dir, name, Vec::new())
        .map(|target| target.into_bytes())
        .map_err(|e| io_error("read symlink", tree.shown(path), e))
}

// ---- switch ------------------------------------------------------------------

struct Switched {
    trashed: Vec<Hash>,
    newly_trashed: u64,
}

fn switch(
    tree: &TreeRoot,
    staging: &OwnedFd,
    trash: &Trash,
    journal: &Journal<'_>,
    steps: &mut Steps<'_>,
) -> Result<Switched, ApplyError> {
    let mut parents = DirCursor::new(tree).map_err(|source| ApplyError::Switch {
        step: steps.done,
        op: "open",
        path: RelPath::root(),
        source,
    })?;
    let mut trashed = Vec::new();
    let mut newly_trashed = 0;
    let owner_of = |owner: manifest::Owner| journal.preserve_owner.then_some(owner);
    let layout = Layout::of(journal.ops.iter());
    for (index, (op, displaced)) in journal.entries().enumerate() {
        let displaced = displaced.as_ref();
        let path = op.path();
        match layout.place(index) {
            Place::Entry => {}
            // Published with its subtree's top directory.
            Place::InNewTree => continue,
            Place::NewTree => {
                let staged = staged_path(path);
                let staged_here = lstat_at(staging, &staged)
                    .map_err(|e| fail_at(steps.done, op, io_error("stat staged directory", tree.shown(path), e)))?;
                if staged_here.is_none() {
                    continue; // Already renamed into place.
                }
                let (dir, name) = parents.parent(tree, "switch", path).map_err(|e| fail_at(steps.done, op, e))?;
                steps.next()?;
                // Never over anything: the preflight saw the name free, and a
                // directory renamed over an empty one would replace it silently.
                rustix::fs::renameat_with(staging, staged.as_slice(), dir, name, rustix::fs::RenameFlags::NOREPLACE)
                    .map_err(|e| {
                        fail_at(steps.done, op, io_error("rename new directory into place", tree.shown(path), e))
                    })?;
                continue;
            }
        }
        let fail = |step: usize, source: TreeFsError| fail_at(step, op, source);
        let shown = || tree.shown(path);
        if let Some(hash) = displaced {
            trashed.push(*hash);
        }
        match op {
            Op::Delete { kind, .. } => {
                let (dir, name) = match parents.parent(tree, "delete", path) {
                    Ok(found) => found,
                    // Nothing reachable there: a parent is already gone or was
                    // replaced by this plan's kind change. Done.
                    Err(e) if e.is_not_found() || matches!(e, TreeFsError::Unsafe { .. }) => continue,
                    Err(e) => return Err(fail(steps.done, e)),
                };
                let found = lstat_at(dir, name).map_err(|e| fail(steps.done, io_error("stat", shown(), e)))?;
                if found.and_then(|s| s.manifest_kind()) != Some(*kind) {
                    continue; // Already deleted (or already replaced by the new kind).
                }
                if let (Kind::File, Some(hash)) = (kind, displaced) {
                    steps.next()?;
                    if trash.keep(dir, name, hash, &shown()).map_err(|e| fail(steps.done, e))? {
                        newly_trashed += 1;
                    }
                }
                steps.next()?;
                let flags = if *kind == Kind::Dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
                match rustix::fs::unlinkat(dir, name, flags) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(fail(steps.done, io_error("delete", shown(), e))),
                }
                if *kind == Kind::Dir {
                    parents.forget(path);
                }
            }
            Op::MkDir { .. } => {
                let (dir, name) = parents.parent(tree, "mkdir", path).map_err(|e| fail(steps.done, e))?;
                match lstat_at(dir, name).map_err(|e| fail(steps.done, io_error("stat", shown(), e)))? {
                    Some(found) if found.kind == EntryKind::Dir => continue,
                    Some(found) => {
                        return Err(fail(
                            steps.done,
                            io_error("mkdir", format!("{} (a {:?} is there)", shown(), found.kind), Errno::EXIST),
                        ));
                    }
                    None => {}
                }
                steps.next()?;
                match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail(steps.done, io_error("mkdir", shown(), e))),
                }
            }
            Op::WriteFile { replaces: true, .. } | Op::Symlink { replaces: true, .. } => {
                // The old file goes to the trash first, under its old hash: whether
                // an interrupted switch already did this op must be known before.
                let staged = entry_name(index);
                let staged_here = lstat_at(staging, staged.as_bytes())
                    .map_err(|e| fail(steps.done, io_error("stat staged entry", staged.clone(), e)))?;
                if staged_here.is_none() {
                    continue; // Already renamed into place.
                }
                let (dir, name) = parents.parent(tree, "switch", path).map_err(|e| fail(steps.done, e))?;
                if let (Some(hash), Op::WriteFile { .. }) = (displaced, op) {
                    let current = lstat_at(dir, name).map_err(|e| fail(steps.done, io_error("stat", shown(), e)))?;
                    if current.map(|s| s.kind) == Some(EntryKind::File) {
                        steps.next()?;
                        if trash.keep(dir, name, hash, &shown()).map_err(|e| fail(steps.done, e))? {
                            newly_trashed += 1;
                        }
                    }
                }
                steps.next()?;
                rustix::fs::renameat(staging, staged.as_str(), dir, name)
                    .map_err(|e| fail(steps.done, io_error("rename into place", shown(), e)))?;
            }
            Op::WriteFile { replaces: false, .. } | Op::Symlink { replaces: false, .. } => {
                // A new name: rename at once (a full copy has 150,000 of these); only
                // when that fails is it worth asking whether an interrupted switch
                // already moved the staged entry into place.
                let staged = entry_name(index);
                let staged_gone = || -> Result<bool, TreeFsError> {
                    lstat_at(staging, staged.as_bytes())
                        .map(|found| found.is_none())
                        .map_err(|e| io_error("stat staged entry", staged.clone(), e))
                };
                let (dir, name) = match parents.parent(tree, "switch", path) {
                    Ok(found) => found,
                    Err(e) => match staged_gone() {
                        Ok(true) => continue,
                        Ok(false) => return Err(fail(steps.done, e)),
                        Err(stat) => return Err(fail(steps.done, stat)),
                    },
                };
                steps.next()?;
                match rustix::fs::renameat(staging, staged.as_str(), dir, name) {
                    Ok(()) => {}
                    Err(Errno::NOENT) if staged_gone().map_err(|e| fail(steps.done, e))? => {}
                    Err(e) => return Err(fail(steps.done, io_error("rename into place", shown(), e))),
                }
            }
            Op::NewTree { .. } => unreachable!("a NewTree op is always placed NewTree"),
            Op::SetFileMeta { file, .. } => {
                let (dir, name) = parents.parent(tree, "set metadata", path).map_err(|e| fail(steps.done, e))?;
                steps.next()?;
                set_meta_at(dir, name, EntryKind::File, file.mode, file.mtime, owner_of(file.owner))
                    .map_err(|e| fail(steps.done, io_error("set file metadata", shown(), e)))?;
            }
            Op::SetDirMeta { meta, .. } => {
                steps.next()?;
                if path.is_root() {
                    // The root's own mode and owner belong to the host, not to the
                    // tree (they are not hashed); only its mtime follows the source.
                    rustix::fs::futimens(tree.fd(), &mtime_only(meta.mtime))
                        .map_err(|e| fail(steps.done, io_error("set directory mtime", shown(), e)))?;
                } else {
                    let (dir, name) = parents.parent(tree, "set metadata", path).map_err(|e| fail(steps.done, e))?;
                    set_meta_at(dir, name, EntryKind::Dir, meta.mode, meta.mtime, owner_of(meta.owner))
                        .map_err(|e| fail(steps.done, io_error("set directory metadata", shown(), e)))?;
                }
            }
        }
    }
    trashed.sort();
    trashed.dedup();
    Ok(Switched { trashed, newly_trashed })
}

fn fail_at(step: usize, op: &Op, source: TreeFsError) -> ApplyError {
    ApplyError::Switch { step, op: op.tag(), path: op.path().clone(), source }
}

// ---- verify ------------------------------------------------------------------

/// Paths the verify stats at a time (its results stay small).
const VERIFY_BLOCK_PATHS: usize = 16_384;

/// Stats every touched path again, checks it against `target` and refreshes the
/// stat keys and owners of the entries the switch wrote.
///
/// The paths below `NewTree` ops are read from `target` a block at a time, and
/// their stat keys recorded in place: once the plan has released its subtrees
/// ([`Plan::release_subtrees`]), nothing else holds them, so no directory is
/// copied. (A list of every path, and the copy of each directory the plan
/// still shared, took a 1,000,000-file copy's receiver from 268 to 553 MB.)
fn verify(tree: &TreeRoot, plan: &Plan, mut target: Manifest) -> Result<Manifest, ApplyError> {
    let mut seen = HashSet::new();
    let op_paths: Vec<&RelPath> = plan.ops.iter().map(Op::path).filter(|p| seen.insert(*p)).collect();
    for block in op_paths.chunks(VERIFY_BLOCK_PATHS) {
        verify_block(tree, block, &mut target)?;
    }
    for op in &plan.ops {
        let Op::NewTree { path: top, .. } = op else { continue };
        let mut below = manifest::WalkBelow::new(top.clone());
        loop {
            let block: Vec<RelPath> =
                std::iter::from_fn(|| below.next(&target).map(|(path, _)| path)).take(VERIFY_BLOCK_PATHS).collect();
            if block.is_empty() {
                break;
            }
            verify_block(tree, &block, &mut target)?;
        }
    }
    Ok(target)
}

/// Stats `paths` on every core, checks each against `target`, and records the
/// stat keys and owners found.
fn verify_block<P: std::borrow::Borrow<RelPath> + Sync>(
    tree: &TreeRoot,
    paths: &[P],
    target: &mut Manifest,
) -> Result<(), ApplyError> {
    let settle = manifest::scan::DEFAULT_SETTLE;
    /// What the target says of a path, without cloning a directory's subtree.
    enum Expected {
        File(FileMeta),
        Dir(DirMeta),
        Symlink(Box<[u8]>),
    }
    /// What the target says of a path and what `lstat` found there.
    type Check = (Option<Expected>, Option<EntryStat>);
    // What the target says of each path and what `lstat` finds there, looked up
    // and stat'ed on every core; `None` for a path with nothing to check. What
    // `lstat` adds (owner, stat key) is in no hash: nothing is rehashed.
    let checks = {
        let target = &*target;
        crate::cores::on_every_core(paths, |paths| {
            let mut cursor = DirCursor::new(tree)?;
            let mut check = |path: &RelPath| -> Result<Option<Check>, TreeFsError> {
                if path.is_root() {
                    return Ok(None);
                }
                let expected = match target.get(path) {
                    // Gone with its parent, which the target replaced by a file or
                    // symlink: that parent is a touched path of its own, checked there.
                    None if path.parent().is_some_and(|p| target.dir(&p).is_none()) => return Ok(None),
                    None => None,
                    Some(Node::File(f)) => Some(Expected::File(f.clone())),
                    Some(Node::Dir(d)) => Some(Expected::Dir(d.meta)),
                    Some(Node::Symlink(l)) => Some(Expected::Symlink(l.target.clone())),
                };
                Ok(Some((expected, cursor.lstat(tree, path)?)))
            };
            paths.iter().map(|path| check(path.borrow())).collect::<Result<Vec<_>, TreeFsError>>()
        })?
    };
    for (path, check) in paths.iter().zip(checks) {
        let path: &RelPath = path.borrow();
        let Some((expected, found)) = check else { continue };
        // Paths are shown only when something does not match.
        let mismatch = |expected: String, found: String| ApplyError::Verify { path: tree.shown(path), expected, found };
        let describe = |s: &Option<EntryStat>| match s {
            None => "nothing".to_owned(),
            Some(s) => format!("{:?} size {} mode {:o} mtime {:?}", s.kind, s.size, s.mode, s.mtime),
        };
        match (expected, found) {
            (None, None) => {}
            (Some(Expected::File(f)), Some(s))
                if s.kind == EntryKind::File && s.size == f.size && s.mode == f.mode && s.mtime == f.mtime =>
            {
                let stat = StatKey { ctime: s.ctime, ino: s.ino, settled: settled(s.ctime, settle) };
                target
                    .set_local_facts(path, manifest::Owner { uid: s.uid, gid: s.gid }, Some(stat))
                    .map_err(|e| mismatch("a file".into(), e.to_string()))?;
            }
            (Some(Expected::Dir(meta)), Some(s))
                if s.kind == EntryKind::Dir && s.mode == meta.mode && s.mtime == meta.mtime =>
            {
                target
                    .set_local_facts(path, manifest::Owner { uid: s.uid, gid: s.gid }, None)
                    .map_err(|e| mismatch("a directory".into(), e.to_string()))?;
            }
            (Some(Expected::Symlink(link)), Some(s)) if s.kind == EntryKind::Symlink => {
                let actual = read_link(tree, path)?;
                if *actual != *link {
                    return Err(mismatch(
                        format!("symlink to {}", manifest::path::escape(&link)),
                        format!("symlink to {}", manifest::path::escape(&actual)),
                    ));
                }
            }
            (expected, found) => {
                let expected = match expected {
                    None => "nothing".to_owned(),
                    Some(Expected::File(f)) => {
                        format!("File size {} mode {:o} mtime {:?}", f.size, f.mode, f.mtime)
                    }
                    Some(Expected::Dir(meta)) => format!("Dir mode {:o} mtime {:?}", meta.mode, meta.mtime),
                    Some(Expected::Symlink(_)) => "Symlink".to_owned(),
                };
                return Err(mismatch(expected, describe(&found)));
            }
        }
    }
    Ok(())
}

fn settled(ctime: manifest::Timestamp, settle: std::time::Duration) -> bool {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let changed = UNIX_EPOCH + Duration::new(ctime.secs.max(0) as u64, ctime.nanos);
    SystemTime::now().duration_since(changed).is_ok_and(|age| age > settle)
}
