//! Everything a plan stages, numbered: its `WriteFile` and `Symlink` ops, and the
//! files and symlinks below its `NewTree` ops.
//!
//! A full copy to an empty master is a handful of `NewTree` ops over 150,000
//! files. [`Writes`] numbers those files without a path or a copy of their
//! metadata each: 8 bytes a file (which directory, which child), and one path
//! per directory of the new subtrees. A file's path is made when it is asked
//! for, by the stream that stages it.
//!
//! Each write names the op that stages it: its own op, or the `NewTree` op it is
//! below, whose [`crate::layout::Place`] puts it in staging at its own path.

use std::borrow::Cow;
use std::ops::Deref;

use manifest::{Dir, FileMeta, Node, Op, Plan, RelPath, SymlinkMeta};

/// What one write puts in the tree.
#[derive(Debug, Clone, Copy)]
pub enum Written<'a> {
    File(&'a FileMeta),
    Symlink(&'a SymlinkMeta),
}

/// One write: the op that stages it, its path and what it writes.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    /// The index of the `WriteFile` or `Symlink` op, or of the `NewTree` op the
    /// entry is below.
    pub op: usize,
    pub path: Cow<'a, RelPath>,
    pub written: Written<'a>,
}

impl Write<'_> {
    pub fn file(&self) -> Option<&FileMeta> {
        match self.written {
            Written::File(file) => Some(file),
            Written::Symlink(_) => None,
        }
    }
}

/// A write by position: an op of its own (`dir == OWN_OP`, `child` is the op's
/// index), or child `child` of directory `dir` of [`Writes::dirs`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    dir: u32,
    child: u32,
}

const OWN_OP: u32 = u32::MAX;

/// The writes of a plan held as `P` (an `Arc<Plan>` to share with fetch
/// streams, or a `&Plan`).
#[derive(Debug)]
pub struct Writes<P> {
    plan: P,
    /// Every directory below the plan's `NewTree` ops, their tops included:
    /// the index of the op and the directory's path.
    dirs: Vec<(u32, RelPath)>,
    slots: Vec<Slot>,
}

impl<P: Deref<Target = Plan>> Writes<P> {
    /// The writes of `plan`, in plan order (below a `NewTree` op: each
    /// directory's files and symlinks in name order, directories in the order
    /// the subtree lists them).
    ///
    /// # Panics
    /// On a `NewTree` op without its subtree (one read back from a journal) and
    /// on a plan of 2^32 ops or more: neither can come out of a diff.
    pub fn of(plan: P) -> Self {
        let (mut dirs, mut slots) = (Vec::new(), Vec::new());
        for (index, op) in plan.ops.iter().enumerate() {
            let index = u32::try_from(index).expect("a plan has < 2^32 ops");
            match op {
                Op::WriteFile { .. } | Op::Symlink { .. } => slots.push(Slot { dir: OWN_OP, child: index }),
                Op::NewTree { path, tree, .. } => {
                    let tree = tree.as_deref().expect("a plan's NewTree op holds its subtree");
                    add_dir(index, path, tree, &mut dirs, &mut slots);
                }
                _ => {}
            }
        }
        Self { plan, dirs, slots }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Write `n` (`n < len()`).
    pub fn get(&self, n: usize) -> Write<'_> {
        let slot = self.slots[n];
        if slot.dir == OWN_OP {
            let op = slot.child as usize;
            let (path, written) = match &self.plan.ops[op] {
                Op::WriteFile { path, file, .. } => (path, Written::File(file)),
                Op::Symlink { path, link, .. } => (path, Written::Symlink(link)),
                _ => unreachable!("own-op slots are WriteFile and Symlink ops"),
            };
            return Write { op, path: Cow::Borrowed(path), written };
        }
        let (op, dir_path) = &self.dirs[slot.dir as usize];
        let entry = &self.dir(slot.dir).children()[slot.child as usize];
        let written = match &entry.node {
            Node::File(file) => Written::File(file),
            Node::Symlink(link) => Written::Symlink(link),
            Node::Dir(_) => unreachable!("slots below a NewTree op are files and symlinks"),
        };
        let path = dir_path.join(&entry.name).expect("manifest names are validated on entry");
        Write { op: *op as usize, path: Cow::Owned(path), written }
    }

    /// The file write `n` writes, without making its path; `None` for a symlink.
    pub fn file(&self, n: usize) -> Option<&FileMeta> {
        let slot = self.slots[n];
        let node = if slot.dir == OWN_OP {
            match &self.plan.ops[slot.child as usize] {
                Op::WriteFile { file, .. } => return Some(file),
                _ => return None,
            }
        } else {
            &self.dir(slot.dir).children()[slot.child as usize].node
        };
        match node {
            Node::File(file) => Some(file),
            _ => None,
        }
    }

    /// Directory `n` of `dirs`, found from its `NewTree` op's subtree.
    fn dir(&self, n: u32) -> &Dir {
        let (op, path) = &self.dirs[n as usize];
        let Op::NewTree { path: top, tree: Some(tree), .. } = &self.plan.ops[*op as usize] else {
            unreachable!("dirs are below NewTree ops that hold their subtrees")
        };
        let below = path.components().skip(top.components().count());
        tree.descend(below).expect("dirs are paths in their op's subtree")
    }
}

/// Numbers `dir` (at `path`, below op `op`) and the files and symlinks in it,
/// then the directories in it.
fn add_dir(op: u32, path: &RelPath, dir: &Dir, dirs: &mut Vec<(u32, RelPath)>, slots: &mut Vec<Slot>) {
    let n = u32::try_from(dirs.len()).expect("a plan creates < 2^32 directories");
    dirs.push((op, path.clone()));
    for (child, entry) in dir.children().iter().enumerate() {
        if !matches!(entry.node, Node::Dir(_)) {
            slots.push(Slot { dir: n, child: u32::try_from(child).expect("a directory has < 2^32 entries") });
        }
    }
    for entry in dir.children() {
        if let Node::Dir(d) = &entry.node {
            let child = path.join(&entry.name).expect("manifest names are validated on entry");
            add_dir(op, &child, d, dirs, slots);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use manifest::{DirMeta, Entry, Hash, Manifest};

    use super::*;

    fn file(content: &str) -> Node {
        Node::File(FileMeta {
            size: content.len() as u64,
            mode: 0o644,
            mtime: Default::default(),
            hash: Hash::of_content(content.as_bytes()),
            owner: Default::default(),
            stat: Default::default(),
        })
    }

    fn dir(children: Vec<(&str, Node)>) -> Node {
        let children = children.into_iter().map(|(name, node)| Entry { name: name.as_bytes().into(), node }).collect();
        Node::Dir(Arc::new(Dir::new(DirMeta::default(), children)))
    }

    #[test]
    fn every_file_and_symlink_is_numbered_with_its_path_and_the_op_that_stages_it() {
        let link = Node::Symlink(SymlinkMeta {
            target: b"a.php".to_vec().into(),
            mtime: Default::default(),
            owner: Default::default(),
        });
        let from = Manifest::new(Dir::new(DirMeta::default(), vec![]));
        let to = match dir(vec![
            ("top.txt", file("top")),
            ("new", dir(vec![("b", dir(vec![("deep.php", file("deep"))])), ("a.php", file("a")), ("l", link)])),
        ]) {
            Node::Dir(root) => Manifest::new(Arc::unwrap_or_clone(root)),
            _ => unreachable!(),
        };
        let plan = manifest::diff(&from, &to);
        let writes = Writes::of(&plan);
        let listed: Vec<(usize, String, Option<u64>)> = (0..writes.len())
            .map(|n| {
                let write = writes.get(n);
                let size = write.file().map(|f| f.size);
                assert_eq!(writes.file(n).map(|f| f.size), size);
                (write.op, write.path.to_string(), size)
            })
            .collect();
        let new_tree = plan.ops.iter().position(|op| matches!(op, Op::NewTree { .. })).unwrap();
        let top = plan.ops.iter().position(|op| matches!(op, Op::WriteFile { .. })).unwrap();
        assert_eq!(
            listed,
            [
                (new_tree, "new/a.php".to_owned(), Some(1)),
                (new_tree, "new/l".to_owned(), None),
                (new_tree, "new/b/deep.php".to_owned(), Some(4)),
                (top, "top.txt".to_owned(), Some(3)),
            ]
        );
    }
}
