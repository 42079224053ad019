//! The itemized plan an operator reads: one line per op, and one per entry
//! below a `NewTree` op (the lines a `MkDir` with an op per entry would have
//! given). An iterator rather than a list, so a caller can send lines as fast
//! as its reader takes them: a full copy of a million-file tree is a million
//! lines, which must not wait in memory for a slow terminal.

use manifest::{Dir, Kind, Node, Op, Plan, RelPath, WalkBelow};

/// One line of an itemized plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanLine {
    /// `create`, `update`, `mkdir`, `delete`, ... (see [`Op::tag`]).
    pub op: &'static str,
    pub path: RelPath,
    /// New content's size for creates and updates, else 0.
    pub size: u64,
    pub kind: Kind,
}

/// The lines of `plan`, in its order; each new subtree's entries follow its
/// top in preorder.
#[derive(Debug)]
pub struct PlanLines<'p> {
    ops: std::slice::Iter<'p, Op>,
    /// The new subtree being itemized, and the walk through it.
    below: Option<(&'p Dir, WalkBelow)>,
}

impl<'p> PlanLines<'p> {
    pub fn new(plan: &'p Plan) -> Self {
        Self { ops: plan.ops.iter(), below: None }
    }
}

impl Iterator for PlanLines<'_> {
    type Item = PlanLine;

    fn next(&mut self) -> Option<PlanLine> {
        if let Some((top, walk)) = &mut self.below {
            if let Some((path, node)) = walk.next_in(top) {
                let (op, size) = match node {
                    Node::File(f) => ("create", f.size),
                    Node::Dir(_) => ("mkdir", 0),
                    Node::Symlink(_) => ("symlink", 0),
                };
                return Some(PlanLine { op, path, size, kind: node.kind() });
            }
            self.below = None;
        }
        let op = self.ops.find(|op| op.is_itemized())?;
        let (kind, size) = match op {
            Op::Delete { kind, .. } => (*kind, 0),
            Op::MkDir { .. } | Op::NewTree { .. } | Op::SetDirMeta { .. } => (Kind::Dir, 0),
            Op::WriteFile { file, .. } => (Kind::File, file.size),
            Op::SetFileMeta { .. } => (Kind::File, 0),
            Op::Symlink { .. } => (Kind::Symlink, 0),
        };
        if let Op::NewTree { path, tree: Some(tree), .. } = op {
            self.below = Some((tree, WalkBelow::new(path.clone())));
        }
        Some(PlanLine { op: op.tag(), path: op.path().clone(), size, kind })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use manifest::{DirMeta, Entry, Manifest, diff};

    use super::*;
    use crate::test_support::file_of;

    fn dir(children: Vec<Entry>) -> Dir {
        Dir::new(DirMeta { mode: 0o755, ..DirMeta::default() }, children)
    }

    fn file(name: &str, content: &[u8]) -> Entry {
        Entry { name: name.as_bytes().into(), node: Node::File(file_of(content)) }
    }

    fn subdir(name: &str, children: Vec<Entry>) -> Entry {
        Entry { name: name.as_bytes().into(), node: Node::Dir(Arc::new(dir(children))) }
    }

    #[test]
    fn a_new_subtree_is_itemized_entry_by_entry_in_preorder_after_its_top() {
        let base = Manifest::new(dir(vec![file("gone", b"old"), file("kept", b"same")]));
        let target = Manifest::new(dir(vec![
            file("kept", b"same"),
            subdir("new", vec![file("a", b"12345"), subdir("sub", vec![file("b", b"xy")]), file("z", b"")]),
        ]));
        let plan = diff(&base, &target);
        assert!(plan.ops.iter().any(|op| matches!(op, Op::NewTree { .. })), "the new directory is one op: {plan:?}");
        let lines: Vec<String> =
            PlanLines::new(&plan).map(|l| format!("{} {} {}", l.op, l.path.display(), l.size)).collect();
        assert_eq!(
            lines,
            [
                "mkdir new 0",
                "create new/a 5",
                "mkdir new/sub 0",
                "create new/sub/b 2",
                "create new/z 0",
                "delete gone 0"
            ]
        );
    }
}
