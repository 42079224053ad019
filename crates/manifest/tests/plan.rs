//! Laws of `diff`: applying `diff(a, b)` to `a` gives `b`, in memory and on a real
//! filesystem; equal trees give empty plans; plan ids are deterministic and pinned.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use manifest::{
    Dir, DirMeta, Entry, FileMeta, Hash, Manifest, Node, Op, Owner, ScanOptions, StatKey, SymlinkMeta, Timestamp, diff,
    scan,
};
use proptest::prelude::*;

/// File contents the generated trees choose from, so equal contents recur.
const CONTENTS: [&[u8]; 4] = [b"", b"<?php return 1;\n", b"{\"a\": 1}\n", b"binary\x00\xff\x01"];
/// Few names, so both trees often hold the same name with other kinds.
const NAMES: [&str; 4] = ["a", "b", "c.php", "d d"];

/// A tree as the generator describes it, before it becomes a manifest.
#[derive(Debug, Clone)]
enum Spec {
    File { content: usize, mode: u32, mtime: i64 },
    Symlink { target: &'static str },
    Dir { mode: u32, children: BTreeMap<&'static str, Spec> },
}

fn spec_strategy() -> impl Strategy<Value = BTreeMap<&'static str, Spec>> {
    let leaf = prop_oneof![
        (0..CONTENTS.len(), prop_oneof![Just(0o644u32), Just(0o755), Just(0o600)], 0..3i64)
            .prop_map(|(content, mode, mtime)| Spec::File { content, mode, mtime: 1_700_000_000 + mtime }),
        prop_oneof![Just("a"), Just("../b"), Just("missing")].prop_map(|target| Spec::Symlink { target }),
    ];
    let node = leaf.prop_recursive(3, 24, 4, |inner| {
        (prop_oneof![Just(0o755u32), Just(0o750)], proptest::collection::btree_map(name(), inner, 0..4))
            .prop_map(|(mode, children)| Spec::Dir { mode, children })
    });
    proptest::collection::btree_map(name(), node, 0..4)
}

fn name() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(NAMES.to_vec())
}

fn to_manifest(children: &BTreeMap<&'static str, Spec>) -> Manifest {
    Manifest::new(to_dir(0o755, children))
}

fn to_dir(mode: u32, children: &BTreeMap<&'static str, Spec>) -> Dir {
    let entries = children.iter().map(|(name, spec)| Entry { name: name.as_bytes().into(), node: to_node(spec) });
    Dir::new(DirMeta { mode, ..DirMeta::default() }, entries.collect())
}

fn to_node(spec: &Spec) -> Node {
    match spec {
        Spec::File { content, mode, mtime } => Node::File(FileMeta {
            size: CONTENTS[*content].len() as u64,
            mode: *mode,
            mtime: Timestamp::new(*mtime, 0),
            hash: Hash::of_content(CONTENTS[*content]),
            owner: Owner::default(),
            stat: StatKey::default(),
        }),
        Spec::Symlink { target } => Node::Symlink(SymlinkMeta {
            target: target.as_bytes().into(),
            mtime: Timestamp::default(),
            owner: Owner::default(),
        }),
        Spec::Dir { mode, children } => Node::Dir(to_dir(*mode, children).into()),
    }
}

/// Writes a spec to disk.
fn materialise(root: &Path, children: &BTreeMap<&'static str, Spec>) {
    for (name, spec) in children {
        let path = root.join(name);
        match spec {
            Spec::File { content, mode, mtime } => {
                fs::write(&path, CONTENTS[*content]).unwrap();
                set_file_meta(&path, *mode, Timestamp::new(*mtime, 0));
            }
            Spec::Symlink { target } => symlink(target, &path).unwrap(),
            Spec::Dir { mode, children } => {
                fs::create_dir(&path).unwrap();
                materialise(&path, children);
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
    }
}

fn set_file_meta(path: &Path, mode: u32, mtime: Timestamp) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    let when = UNIX_EPOCH + Duration::new(mtime.secs as u64, mtime.nanos);
    fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
}

/// The simplest faithful executor of a plan: each op in order, with std::fs.
/// The daemon's apply is journaled and crash-safe; this one checks that the
/// order a plan prescribes works on a real filesystem.
fn execute(root: &Path, ops: &[Op], content_of: &BTreeMap<Hash, &[u8]>) {
    for op in ops {
        let path = root.join(op.path().as_path());
        match op {
            Op::Delete { kind: manifest::Kind::Dir, .. } => fs::remove_dir(&path).unwrap(),
            Op::Delete { .. } => fs::remove_file(&path).unwrap(),
            Op::MkDir { .. } => fs::create_dir(&path).unwrap(),
            Op::NewTree { tree, .. } => {
                fs::create_dir(&path).unwrap();
                create_below(&path, tree.as_ref().expect("a diff's NewTree holds its subtree"), content_of);
            }
            Op::WriteFile { file, .. } => write_file(&path, file, content_of),
            Op::SetFileMeta { file, .. } => set_file_meta(&path, file.mode, file.mtime),
            Op::Symlink { link, replaces, .. } => {
                if *replaces {
                    fs::remove_file(&path).unwrap();
                }
                symlink(std::ffi::OsStr::from_bytes(&link.target), &path).unwrap();
            }
            Op::SetDirMeta { meta, .. } => fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode)).unwrap(),
        }
    }
}

/// Creates everything below `dir` at `path`; the modes of the directories below
/// it are set once they are full (the top's comes with its `SetDirMeta`).
fn create_below(path: &Path, dir: &Dir, content_of: &BTreeMap<Hash, &[u8]>) {
    for entry in dir.children() {
        let child = path.join(std::ffi::OsStr::from_bytes(&entry.name));
        match &entry.node {
            Node::File(file) => write_file(&child, file, content_of),
            Node::Symlink(link) => symlink(std::ffi::OsStr::from_bytes(&link.target), &child).unwrap(),
            Node::Dir(d) => {
                fs::create_dir(&child).unwrap();
                create_below(&child, d, content_of);
                fs::set_permissions(&child, fs::Permissions::from_mode(d.meta.mode)).unwrap();
            }
        }
    }
}

fn write_file(path: &Path, file: &FileMeta, content_of: &BTreeMap<Hash, &[u8]>) {
    fs::write(path, content_of[&file.hash]).unwrap();
    set_file_meta(path, file.mode, file.mtime);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn applying_the_diff_of_a_and_b_to_a_gives_b(a in spec_strategy(), b in spec_strategy()) {
        let (from, to) = (to_manifest(&a), to_manifest(&b));
        let plan = diff(&from, &to);
        let mut applied = from.clone();
        applied.apply(&plan).unwrap();
        prop_assert_eq!(applied.root_hash(), to.root_hash());
        prop_assert_eq!(&applied, &to);
        prop_assert_eq!(plan.id, diff(&from, &to).id, "plan ids are deterministic");
        prop_assert_eq!(plan.is_empty(), from.root_hash() == to.root_hash());
        prop_assert!(diff(&to, &to).is_empty());
        // A plan lives for the whole sync: no room beyond its ops.
        prop_assert_eq!(plan.ops.capacity(), plan.ops.len());
    }

    #[test]
    fn the_nodes_of_b_at_the_changed_paths_turn_a_into_b(a in spec_strategy(), b in spec_strategy()) {
        let (from, to) = (to_manifest(&a), to_manifest(&b));
        let paths = manifest::changed_paths(&from, &to, usize::MAX).unwrap();
        prop_assert_eq!(paths.is_empty(), from == to);
        let changes = paths.into_iter().map(|path| {
            let node = to.get(&path).map(|node| match node {
                Node::Dir(d) => Node::Dir(Dir::empty(d.meta).into()),
                other => other.clone(),
            });
            (path, node)
        });
        let mut applied = from.clone();
        applied.apply_changes(changes).unwrap();
        prop_assert_eq!(applied.root_hash(), to.root_hash());
        prop_assert_eq!(&applied, &to);
        let all = manifest::changed_paths(&Manifest::empty(), &to, usize::MAX).unwrap();
        prop_assert_eq!(all.len() as u64, to.totals().files + to.totals().dirs + to.totals().symlinks);
        if all.len() > 1 {
            prop_assert!(manifest::changed_paths(&Manifest::empty(), &to, all.len() - 1).is_none(), "the limit holds");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_plan_order_works_on_a_real_filesystem(a in spec_strategy(), b in spec_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        materialise(dir.path(), &a);
        let options = ScanOptions::default();
        let from = scan(dir.path(), &options, None).unwrap().manifest;
        prop_assert_eq!(from.root_hash(), to_manifest(&a).root_hash(), "scan agrees with the model");
        let to = to_manifest(&b);
        let content_of: BTreeMap<Hash, &[u8]> = CONTENTS.iter().map(|c| (Hash::of_content(c), *c)).collect();
        execute(dir.path(), &diff(&from, &to).ops, &content_of);
        let after = scan(dir.path(), &options, None).unwrap().manifest;
        prop_assert_eq!(after.root_hash(), to.root_hash());
    }
}

/// The encodings are a wire contract: these values must not change by accident,
/// on any platform. A deliberate change bumps the hash contexts' version.
#[test]
fn root_hash_and_plan_id_are_pinned() {
    let file = |content: usize| Spec::File { content, mode: 0o644, mtime: 1_700_000_000 };
    let a = BTreeMap::from([
        ("a", file(1)),
        ("b", Spec::Dir { mode: 0o755, children: BTreeMap::from([("c.php", file(2))]) }),
    ]);
    let b = BTreeMap::from([("a", file(3)), ("d d", Spec::Symlink { target: "a" })]);
    let (from, to) = (to_manifest(&a), to_manifest(&b));
    assert_eq!(Manifest::empty().root_hash().to_hex(), EMPTY_ROOT);
    assert_eq!(from.root_hash().to_hex(), PINNED_ROOT);
    let plan = diff(&from, &to);
    let tags: Vec<String> = plan.ops.iter().map(|op| format!("{} {}", op.tag(), op.path())).collect();
    assert_eq!(tags, ["update a", "symlink d d", "delete b/c.php", "delete-dir b", "dir-meta ."]);
    assert_eq!(plan.totals.leaves_deleted(), 1);
    assert_eq!(plan.totals.bytes_to_write, CONTENTS[3].len() as u64);
    assert_eq!(plan.id.to_string(), PINNED_PLAN_ID);
    assert_eq!(PINNED_PLAN_ID.parse::<manifest::PlanId>().unwrap(), plan.id);
}

const EMPTY_ROOT: &str = "0f9a078e87e699f5fec880313eac9ef6d6ecbe1caa7b0401a235632485e30323";
const PINNED_ROOT: &str = "57676719ad134b47fc6ea209f0fd716353c3f0e413cee6cf0367c402006998b6";
const PINNED_PLAN_ID: &str = "af654509e53f6a2f";

#[test]
fn kind_changes_remove_before_they_create() {
    let file = Spec::File { content: 1, mode: 0o644, mtime: 1_700_000_000 };
    let a = BTreeMap::from([
        ("a", file.clone()),
        ("b", Spec::Dir { mode: 0o755, children: BTreeMap::from([("c.php", file.clone())]) }),
    ]);
    let b = BTreeMap::from([
        ("a", Spec::Dir { mode: 0o755, children: BTreeMap::from([("c.php", file.clone())]) }),
        ("b", Spec::Symlink { target: "a" }),
    ]);
    let plan = diff(&to_manifest(&a), &to_manifest(&b));
    let tags: Vec<String> = plan.ops.iter().map(|op| format!("{} {}", op.tag(), op.path())).collect();
    assert_eq!(
        tags,
        ["delete a", "delete b/c.php", "delete-dir b", "mkdir a", "symlink b", "dir-meta a", "dir-meta ."]
    );
}

#[test]
fn a_new_subtree_is_one_op_that_shares_the_targets_subtree() {
    let file = |content: usize| Spec::File { content, mode: 0o644, mtime: 1_700_000_000 };
    let release = BTreeMap::from([
        ("c.php", file(1)),
        ("d d", Spec::Dir { mode: 0o750, children: BTreeMap::from([("a", file(2)), ("b", file(3))]) }),
        ("b", Spec::Symlink { target: "c.php" }),
    ]);
    let to = to_manifest(&BTreeMap::from([("a", Spec::Dir { mode: 0o755, children: release }), ("b", file(1))]));
    let plan = diff(&Manifest::empty(), &to);
    let tags: Vec<String> = plan.ops.iter().map(|op| format!("{} {}", op.tag(), op.path())).collect();
    assert_eq!(tags, ["mkdir a", "create b", "dir-meta a", "dir-meta ."]);
    let Op::NewTree { tree: Some(tree), hash, .. } = &plan.ops[0] else { panic!("{:?}", plan.ops[0]) };
    let Some(Node::Dir(target)) = to.get(&manifest::RelPath::new("a").unwrap()) else { unreachable!() };
    assert!(std::sync::Arc::ptr_eq(tree, target), "the plan shares the target's subtree, it does not copy it");
    assert_eq!(*hash, target.hash());
    let t = plan.totals;
    assert_eq!((t.files_created, t.symlinks_created, t.dirs_created), (4, 1, 2));
    assert_eq!(t.bytes_to_write, (CONTENTS[1].len() * 2 + CONTENTS[2].len() + CONTENTS[3].len()) as u64);
    assert_eq!(t.inodes_needed(), 7);
    assert_eq!(plan.id.to_string(), PINNED_NEW_TREE_PLAN_ID);

    // A plan read back without its subtree cannot be applied in memory.
    let mut without = plan.clone();
    if let Op::NewTree { tree, .. } = &mut without.ops[0] {
        *tree = None;
    }
    let error = Manifest::empty().apply(&without).unwrap_err();
    assert!(error.to_string().contains("names no subtree"), "{error}");
}

const PINNED_NEW_TREE_PLAN_ID: &str = "2790c117cbb05c67";

#[test]
fn a_subtree_with_a_path_too_long_to_stage_at_its_own_path_is_spelled_out() {
    let deep = "d".repeat(254);
    let mut children = BTreeMap::new();
    let file = Spec::File { content: 1, mode: 0o644, mtime: 1_700_000_000 };
    // 13 levels of 255-byte names: a path of 3,338 bytes, past MAX_NEW_TREE_PATH.
    let names: Vec<&'static str> = (0..13).map(|i| &*format!("{i:x}{deep}").leak()).collect();
    let mut spec = BTreeMap::from([("c.php", file.clone())]);
    for name in names.iter().rev() {
        spec = BTreeMap::from([(*name, Spec::Dir { mode: 0o755, children: spec })]);
    }
    children.insert("long", Spec::Dir { mode: 0o755, children: spec });
    children.insert("short", Spec::Dir { mode: 0o755, children: BTreeMap::from([("c.php", file)]) });
    let plan = diff(&Manifest::empty(), &to_manifest(&children));
    assert!(plan.ops.iter().any(|op| op.path().as_bytes().len() > manifest::plan::MAX_NEW_TREE_PATH));
    let new_trees: Vec<String> =
        plan.ops.iter().filter(|op| matches!(op, Op::NewTree { .. })).map(|op| op.path().to_string()).collect();
    assert_eq!(new_trees, ["short"]);
    assert_eq!(plan.totals.dirs_created, 15);
    let mut applied = Manifest::empty();
    applied.apply(&plan).unwrap();
    assert_eq!(applied, to_manifest(&children));
}
