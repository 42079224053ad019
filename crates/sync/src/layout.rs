//! Where each op of a plan is staged, and so how the switch publishes it.
//!
//! A `NewTree` op creates a whole new subtree. Nobody can be looking inside it
//! yet, so it is built whole in staging, under `tree/<its path>`, and published
//! with one `rename` of its top directory: a full copy to an empty master
//! switches a handful of directories instead of 150,000 files. Everything else
//! is staged as one entry per op and switched op by op.
//!
//! Journals of older builds spell a new subtree out as a `MkDir` with one op
//! per entry below it; their layout is the same: the `MkDir` of a directory
//! under one that exists is [`Place::NewTree`], everything below it
//! [`Place::InNewTree`]. A plan spells out a subtree only when a path in it is
//! too long to stage at its own path, and such a plan is staged per entry
//! (its `NewTree` ops aside).
//!
//! The layout is a pure function of the op list, so recovery, which has only the
//! journal's ops, computes the same one the staging used.

use std::collections::HashSet;

use manifest::{Op, RelPath};

/// How one op is staged and switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `WriteFile` and `Symlink`: staged at [`crate::stage::entry_name`]`(index)`
    /// and renamed over their final name. Other ops: done by the switch in the tree.
    Entry,
    /// A `NewTree` op, or (in an older build's journal) a `MkDir` under a
    /// directory that exists before the switch: made in staging at
    /// [`staged_path`], filled there, and renamed into place by the switch.
    NewTree,
    /// A `MkDir`, or a new file or symlink, inside a [`Place::NewTree`]: made in
    /// staging at [`staged_path`]; its top directory's rename publishes it.
    InNewTree,
}

/// Paths longer than this keep the per-entry layout for the whole plan (but for
/// its `NewTree` ops, which hold no such path): a staged path `tree/<path>` is
/// opened from the staging directory in one call, and must stay under the
/// kernel's `PATH_MAX` (4,096).
pub const MAX_TREE_PATH: usize = manifest::plan::MAX_NEW_TREE_PATH;

/// The staging subdirectory that holds new subtrees at their own paths.
pub const TREE_DIR: &str = "tree";

/// The place of every op of a plan, by index.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    places: Vec<Place>,
}

impl Layout {
    /// The layout of `ops` (a plan's, or a journal's, in plan order).
    pub fn of<'a>(ops: impl Iterator<Item = &'a Op> + Clone) -> Layout {
        let new_dirs: HashSet<&RelPath> =
            ops.clone().filter(|op| matches!(op, Op::MkDir { .. })).map(Op::path).collect();
        let mut places = Vec::new();
        for op in ops.clone() {
            let path = op.path();
            if path.as_bytes().len() > MAX_TREE_PATH {
                return Layout::per_entry(ops);
            }
            let in_new_dir = path.parent().is_some_and(|parent| new_dirs.contains(&parent));
            let place = match op {
                Op::MkDir { .. } | Op::WriteFile { replaces: false, .. } | Op::Symlink { replaces: false, .. }
                    if in_new_dir =>
                {
                    Place::InNewTree
                }
                Op::MkDir { .. } | Op::NewTree { .. } => Place::NewTree,
                // A directory's mode and mtime are set by the switch, in the tree,
                // once everything in it is there. (Those of the directories below
                // a `NewTree` op's top are set in staging when it is finished.)
                Op::SetDirMeta { .. } => Place::Entry,
                // Nothing else can be under a directory the plan creates; a plan
                // that says otherwise is switched op by op, which checks each one.
                _ if in_new_dir => return Layout::per_entry(ops),
                _ => Place::Entry,
            };
            places.push(place);
        }
        Layout { places }
    }

    /// Every op an entry of its own, but for `NewTree` ops.
    fn per_entry<'a>(ops: impl Iterator<Item = &'a Op>) -> Layout {
        let place = |op: &Op| if matches!(op, Op::NewTree { .. }) { Place::NewTree } else { Place::Entry };
        Layout { places: ops.map(place).collect() }
    }

    /// The place of op `index` ([`Place::Entry`] beyond the ops it was made from).
    pub fn place(&self, index: usize) -> Place {
        self.places.get(index).copied().unwrap_or(Place::Entry)
    }
}

/// Where a [`Place::NewTree`] or [`Place::InNewTree`] op's entry is, relative to
/// the staging directory: `tree/<path>`.
pub fn staged_path(path: &RelPath) -> Vec<u8> {
    let mut staged = Vec::with_capacity(TREE_DIR.len() + 1 + path.as_bytes().len());
    staged.extend_from_slice(TREE_DIR.as_bytes());
    staged.push(b'/');
    staged.extend_from_slice(path.as_bytes());
    staged
}

#[cfg(test)]
mod tests {
    use manifest::{DirMeta, Kind, SymlinkMeta};

    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }
    fn mkdir(p: &str) -> Op {
        Op::MkDir { path: rel(p), meta: DirMeta::default() }
    }
    fn write(p: &str, replaces: bool) -> Op {
        Op::WriteFile { path: rel(p), file: crate::test_support::file_of(p.as_bytes()), replaces }
    }
    fn symlink(p: &str) -> Op {
        Op::Symlink {
            path: rel(p),
            link: SymlinkMeta { target: b"x".to_vec().into(), mtime: Default::default(), owner: Default::default() },
            replaces: false,
        }
    }
    fn dir_meta(p: &str) -> Op {
        Op::SetDirMeta { path: rel(p), meta: DirMeta::default(), mode_changed: false }
    }

    #[test]
    fn a_new_subtree_is_staged_whole_under_its_top_directory() {
        let ops = [
            Op::Delete { path: rel("was_file"), kind: Kind::File },
            write("changed.txt", true),
            write("new.txt", false),
            mkdir("new"),
            mkdir("new/deep"),
            write("new/deep/a.php", false),
            symlink("new/link"),
            mkdir("old/sub"),
            write("old/sub/b.php", false),
            mkdir("was_file"),
            dir_meta("new/deep"),
            dir_meta("new"),
            dir_meta(""),
        ];
        let layout = Layout::of(ops.iter());
        use Place::*;
        let places: Vec<_> = (0..ops.len()).map(|i| layout.place(i)).collect();
        assert_eq!(
            places,
            [
                Entry, Entry, Entry, NewTree, InNewTree, InNewTree, InNewTree, NewTree, InNewTree, NewTree, Entry,
                Entry, Entry
            ]
        );
        assert_eq!(layout.place(99), Entry);
        assert_eq!(staged_path(&rel("new/deep/a.php")), b"tree/new/deep/a.php");
    }

    #[test]
    fn anything_odd_keeps_the_per_entry_layout() {
        // A replacement under a directory the plan creates cannot be: switch it op by op.
        let odd = [mkdir("new"), write("new/a", true)];
        let layout = Layout::of(odd.iter());
        assert!((0..odd.len()).all(|i| layout.place(i) == Place::Entry));
        // A path too long to open from the staging directory in one call.
        let long = "d/".repeat(MAX_TREE_PATH / 2) + "f";
        let ops = [mkdir("d"), write(&long, false)];
        let layout = Layout::of(ops.iter());
        assert!((0..ops.len()).all(|i| layout.place(i) == Place::Entry));
    }
}
