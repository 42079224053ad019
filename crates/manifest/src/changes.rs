//! Changes between two manifests as a set of paths, and a manifest rebuilt from
//! another plus such changes.
//!
//! A serving daemon records, for each manifest it installs, the paths that differ
//! from the one before ([`changed_paths`]). A peer whose tree equals one of those
//! earlier manifests can then be told, in one answer, the current node at each
//! path changed since (or that it is gone), and rebuild the whole current manifest
//! from its own with [`Manifest::apply_changes`] — checked, like every other way a
//! peer's tree is learnt, by recomputing the root hash.

use crate::path::RelPath;
use crate::tree::{Dir, Manifest, Node};

/// The paths at which `from` and `to` differ, sorted (a directory before what is
/// in it), or `None` as soon as there are more than `limit`. A path is listed
/// when its entry was added, removed, or changed in kind, content or metadata;
/// everything below a directory that `to` adds is listed too, so the current
/// node at each path, taken from `to`, describes all of `to` that `from` lacks.
/// Subtrees with equal hashes are not descended into.
pub fn changed_paths(from: &Manifest, to: &Manifest, limit: usize) -> Option<Vec<RelPath>> {
    let mut out = Vec::new();
    if from.root().meta != to.root().meta {
        out.push(RelPath::root());
    }
    if from.root_hash() != to.root_hash() {
        compare_dirs(from.root(), to.root(), &RelPath::root(), &mut out, limit)?;
    }
    (out.len() <= limit).then(|| {
        out.sort();
        out
    })
}

fn compare_dirs(from: &Dir, to: &Dir, path: &RelPath, out: &mut Vec<RelPath>, limit: usize) -> Option<()> {
    let (mut old, mut new) = (from.children().iter().peekable(), to.children().iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return Some(()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.name.cmp(&b.name),
        };
        let (a, b) = match order {
            std::cmp::Ordering::Less => (old.next(), None),
            std::cmp::Ordering::Greater => (None, new.next()),
            std::cmp::Ordering::Equal => (old.next(), new.next()),
        };
        // Most entries of a changed directory are not changed: no path for them.
        let child = || path.join(&a.or(b).expect("one side has an entry").name).ok();
        match (a.map(|e| &e.node), b.map(|e| &e.node)) {
            (Some(Node::Dir(x)), Some(Node::Dir(y))) => {
                if x.meta != y.meta || x.hash() != y.hash() {
                    let child = child()?;
                    if x.hash() != y.hash() {
                        compare_dirs(x, y, &child, out, limit)?;
                    }
                    out.push(child);
                }
            }
            (Some(x), Some(y)) if same_node(x, y) => {}
            (_, Some(Node::Dir(added))) => {
                let child = child()?;
                push_all(added, &child, out, limit)?;
                out.push(child);
            }
            _ => out.push(child()?),
        }
        if out.len() > limit {
            return None;
        }
    }
}

/// Equal as a peer sees them: the local stat facts (inode, ctime) do not count.
fn same_node(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (Node::File(x), Node::File(y)) => {
            (x.size, x.mode, x.mtime, x.hash, x.owner) == (y.size, y.mode, y.mtime, y.hash, y.owner)
        }
        (Node::Symlink(x), Node::Symlink(y)) => x == y,
        _ => false,
    }
}

fn push_all(dir: &Dir, path: &RelPath, out: &mut Vec<RelPath>, limit: usize) -> Option<()> {
    for entry in dir.children() {
        let child = path.join(&entry.name).ok()?;
        out.push(child.clone());
        if out.len() > limit {
            return None;
        }
        if let Node::Dir(d) = &entry.node {
            push_all(d, &child, out, limit)?;
        }
    }
    Some(())
}

/// Why [`Manifest::apply_changes`] could not use a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("changes are not sorted: {0} comes after a later path")]
    Unsorted(RelPath),
    #[error("{0}: the parent of this path is not a directory after the changes before it")]
    NoParent(RelPath),
    #[error("{0}: a new directory must come without entries (they follow as changes of their own)")]
    DirWithEntries(RelPath),
}

impl Manifest {
    /// Applies changes as [`changed_paths`] lists them, each with the node now at
    /// that path or `None` when nothing is there any more: a node replaces
    /// whatever is at its path, except that a directory already there only takes
    /// the new directory's metadata and keeps its entries (new directories come
    /// empty; what is in them follows). `None` removes the entry and everything
    /// below it, if it is there. Paths must be sorted, so a parent comes first.
    /// Hashes are recomputed once at the end; the caller compares the root hash
    /// with the one it expects.
    pub fn apply_changes(
        &mut self,
        changes: impl IntoIterator<Item = (RelPath, Option<Node>)>,
    ) -> Result<(), ChangeError> {
        self.batch(|m| {
            let mut previous: Option<RelPath> = None;
            for (path, node) in changes {
                if previous.as_ref().is_some_and(|p| *p >= path) {
                    return Err(ChangeError::Unsorted(path));
                }
                let parent_ok = path.parent().is_none_or(|parent| m.dir(&parent).is_some());
                match node {
                    None => {
                        if m.get(&path).is_some() {
                            m.remove(&path, true).map_err(|_| ChangeError::NoParent(path.clone()))?;
                        }
                    }
                    Some(Node::Dir(dir)) => {
                        if !dir.children().is_empty() {
                            return Err(ChangeError::DirWithEntries(path));
                        }
                        if m.dir(&path).is_some() {
                            m.set_dir_meta(&path, dir.meta).map_err(|_| ChangeError::NoParent(path.clone()))?;
                        } else if !parent_ok {
                            return Err(ChangeError::NoParent(path));
                        } else {
                            m.insert(&path, Node::Dir(dir)).map_err(|_| ChangeError::NoParent(path.clone()))?;
                        }
                    }
                    Some(node) => {
                        if !parent_ok {
                            return Err(ChangeError::NoParent(path));
                        }
                        m.insert(&path, node).map_err(|_| ChangeError::NoParent(path.clone()))?;
                    }
                }
                previous = Some(path);
            }
            Ok(())
        })
    }
}
