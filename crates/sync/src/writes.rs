//! Everything a plan stages, numbered: its `WriteFile` and `Symlink` ops, and the
//! files and symlinks below its `NewTree` ops.
//!
//! A full copy to an empty master is a handful of `NewTree` ops over 150,000
//! files. [`Writes`] numbers those files without a path or a copy of their
//! metadata each: 8 bytes a file (which directory, which child), and for each
//! directory of the new subtrees its path and a reference to it (shared with
//! the plan and the target: nothing below it is copied). A file's path is made
//! when it is asked for, by the stream that stages it.
//!
//! Each write names the op that stages it: its own op, or the `NewTree` op it is
//! below, whose [`crate::layout::Place`] puts it in staging at its own path.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::Arc;

use manifest::{Dir, FileMeta, Hash, Manifest, Node, Op, Plan, RelPath, SymlinkMeta};

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

/// A directory of a new subtree: the index of its `NewTree` op, its path, and
/// the directory (a hash lookup sorts the writes by the hash of each file: a
/// search down from the op's top for each took seconds).
#[derive(Debug)]
struct NewDir {
    op: u32,
    path: RelPath,
    dir: Arc<Dir>,
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
    /// Every directory below the plan's `NewTree` ops, their tops included.
    dirs: Vec<NewDir>,
    slots: Vec<Slot>,
}

impl<P: Deref<Target = Plan>> Writes<P> {
    /// The writes of `plan`, in plan order (below a `NewTree` op: each
    /// directory's files and symlinks in name order, directories in the order
    /// the subtree lists them).
    ///
    /// # Panics
    /// On a `NewTree` op without its subtree (its plan released them, see
    /// [`Plan::release_subtrees`]) and on a plan of 2^32 ops or more: neither
    /// can come out of a diff.
    pub fn of(plan: P) -> Self {
        Self::build(plan, |_, tree| tree.clone().expect("a plan's NewTree op holds its subtree"))
    }

    /// [`Writes::of`] with the subtrees below `NewTree` ops read from `target`,
    /// the manifest the plan leads to, whether or not the ops still hold them.
    ///
    /// # Panics
    /// If a `NewTree` op's path is not a directory in `target`.
    pub fn in_target(plan: P, target: &Manifest) -> Self {
        Self::build(plan, |path, _| match target.get(path) {
            Some(Node::Dir(tree)) => Arc::clone(tree),
            _ => panic!("{path}: a NewTree op's path is not a directory of the plan's target"),
        })
    }

    fn build(plan: P, subtree: impl Fn(&RelPath, &Option<Arc<Dir>>) -> Arc<Dir>) -> Self {
        let (mut dirs, mut slots) = (Vec::new(), Vec::new());
        for (index, op) in plan.ops.iter().enumerate() {
            let index = u32::try_from(index).expect("a plan has < 2^32 ops");
            match op {
                Op::WriteFile { .. } | Op::Symlink { .. } => slots.push(Slot { dir: OWN_OP, child: index }),
                Op::NewTree { path, tree, .. } => add_dir(index, path, &subtree(path, tree), &mut dirs, &mut slots),
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
        let (op, at, written) = self.locate(n);
        let path = match at {
            At::Path(path) => Cow::Borrowed(path),
            At::In(dir, name) => Cow::Owned(dir.join(name).expect("manifest names are validated on entry")),
        };
        Write { op, path, written }
    }

    /// The file write `n` writes, without making its path; `None` for a symlink.
    pub fn file(&self, n: usize) -> Option<&FileMeta> {
        match self.locate(n).2 {
            Written::File(file) => Some(file),
            Written::Symlink(_) => None,
        }
    }

    /// The file writes among `numbers`, sorted by content hash (then by
    /// number): 4 bytes a write, where a set of the hashes themselves would
    /// take 32 and more.
    ///
    /// # Panics
    /// On a write number of 2^32 or more (a plan cannot have so many).
    pub fn files_by_hash(&self, numbers: impl IntoIterator<Item = usize>) -> Vec<u32> {
        // Sorted with the hash's first 8 bytes beside each number (12 bytes a
        // write while sorting): looking the whole hash up through the plan on
        // every comparison took a second at a million writes. The whole hash
        // decides only between equal prefixes.
        let numbers = numbers.into_iter();
        let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(numbers.size_hint().0);
        keyed.extend(numbers.filter_map(|n| {
            let file = self.file(n)?;
            let prefix = u64::from_be_bytes(file.hash.0[..8].try_into().expect("8 bytes"));
            Some((prefix, u32::try_from(n).expect("a plan writes < 2^32 files")))
        }));
        keyed.sort_unstable_by(|&(a_prefix, a), &(b_prefix, b)| {
            a_prefix.cmp(&b_prefix).then_with(|| (self.file_hash(a), a).cmp(&(self.file_hash(b), b)))
        });
        keyed.into_iter().map(|(_, n)| n).collect()
    }

    /// The content hash of file write `n`, one of [`Writes::files_by_hash`]'s.
    pub fn file_hash(&self, n: u32) -> Hash {
        self.file(n as usize).expect("a file write").hash
    }

    /// Write `n`'s op, where it is, and what it writes.
    fn locate(&self, n: usize) -> (usize, At<'_>, Written<'_>) {
        let slot = self.slots[n];
        if slot.dir == OWN_OP {
            let op = slot.child as usize;
            return match &self.plan.ops[op] {
                Op::WriteFile { path, file, .. } => (op, At::Path(path), Written::File(file)),
                Op::Symlink { path, link, .. } => (op, At::Path(path), Written::Symlink(link)),
                _ => unreachable!("own-op slots are WriteFile and Symlink ops"),
            };
        }
        let NewDir { op, path, dir } = &self.dirs[slot.dir as usize];
        let entry = &dir.children()[slot.child as usize];
        let written = match &entry.node {
            Node::File(file) => Written::File(file),
            Node::Symlink(link) => Written::Symlink(link),
            Node::Dir(_) => unreachable!("slots below a NewTree op are files and symlinks"),
        };
        (*op as usize, At::In(path, &entry.name), written)
    }
}

/// Where a write is: its own op's path, or a name in a directory of a new subtree.
enum At<'a> {
    Path(&'a RelPath),
    In(&'a RelPath, &'a [u8]),
}

/// Numbers `dir` (at `path`, below op `op`) and the files and symlinks in it,
/// then the directories in it.
fn add_dir(op: u32, path: &RelPath, dir: &Arc<Dir>, dirs: &mut Vec<NewDir>, slots: &mut Vec<Slot>) {
    let n = u32::try_from(dirs.len()).expect("a plan creates < 2^32 directories");
    dirs.push(NewDir { op, path: path.clone(), dir: Arc::clone(dir) });
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

    use manifest::{DirMeta, Entry, Manifest};

    use super::*;

    fn file(content: &str) -> Node {
        Node::File(crate::test_support::file_of(content.as_bytes()))
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
        // The same writes with the subtrees read from the target, after the plan let go of them.
        let mut released = plan.clone();
        released.release_subtrees();
        let from_target = Writes::in_target(&released, &to);
        let paths =
            |writes: &Writes<&Plan>| (0..writes.len()).map(|n| writes.get(n).path.to_string()).collect::<Vec<_>>();
        assert_eq!(paths(&from_target), paths(&writes));
        let new_tree = plan.ops.iter().position(|op| matches!(op, Op::NewTree { .. })).unwrap();
        let top = plan.ops.iter().position(|op| matches!(op, Op::WriteFile { .. })).unwrap();
        // The file writes by hash: the symlink is not one of them.
        let by_hash = writes.files_by_hash(0..writes.len());
        let mut expected: Vec<(Hash, u32)> =
            [0, 2, 3].into_iter().map(|n| (writes.file(n).unwrap().hash, n as u32)).collect();
        expected.sort();
        assert_eq!(by_hash, expected.iter().map(|&(_, n)| n).collect::<Vec<_>>());
        assert_eq!(writes.files_by_hash([3, 1]), [3]);
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
