//! The law of `diff`: for any two manifests a and b, `a.apply(&diff(a, b))`
//! succeeds and gives b's root hash — the fuzzing counterpart of the proptest
//! in crates/manifest/tests/plan.rs. The two small trees are built from the
//! input by a byte-driven builder over `arbitrary::Unstructured`.
//!
//! The first input byte chooses between two modes. In the strict mode only what
//! is hashed varies (names, kinds, file modes, sizes, mtimes and contents,
//! symlink targets, directory modes), and the applied manifest must equal b in
//! full, as the proptest checks. In the loose mode what is not hashed varies too
//! (owners, directory and symlink mtimes, stat facts, the root's mode): equal
//! roots then mean an empty plan by design, so only the root hash must match.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use manifest::{
    Dir, DirMeta, Entry, FileMeta, Hash, Manifest, Node, Owner, PlanError, RelPath, StatKey, SymlinkMeta, Timestamp,
    diff,
};

/// Few names, so both trees often hold the same name with other kinds; chosen
/// to sort closely (' ' < '-' < '.' < letters < non-ASCII).
const NAMES: [&[u8]; 8] = [b"a", b"b", b"a b", b"a-", b"a.b", b"ab", b"\xff", "\u{e9}".as_bytes()];
const CONTENTS: [&[u8]; 4] = [b"", b"<?php return 1;\n", b"{\"a\": 1}\n", b"binary\x00\xff\x01"];
const TARGETS: [&[u8]; 4] = [b"a", b"../b", b"missing", b"/etc/passwd"];
const FILE_MODES: [u32; 5] = [0o644, 0o755, 0o600, 0o4755, 0o000];
const DIR_MODES: [u32; 4] = [0o755, 0o750, 0o500, 0o1777];
const MAX_DEPTH: usize = 4;
const MAX_CHILDREN: usize = 5;

struct Builder<'a> {
    u: Unstructured<'a>,
    /// Vary what is not part of any hash (the loose mode).
    loose: bool,
}

impl Builder<'_> {
    fn pick<T: Copy>(&mut self, from: &[T]) -> Result<T> {
        Ok(*self.u.choose(from)?)
    }

    fn unhashed<T: Default + for<'b> arbitrary::Arbitrary<'b>>(&mut self) -> Result<T> {
        if self.loose { self.u.arbitrary() } else { Ok(T::default()) }
    }

    fn owner(&mut self) -> Result<Owner> {
        Ok(Owner { uid: self.unhashed()?, gid: self.unhashed()? })
    }

    fn unhashed_time(&mut self) -> Result<Timestamp> {
        Ok(Timestamp::new(self.unhashed()?, self.unhashed::<u32>()? % 1_000_000_000))
    }

    fn name(&mut self) -> Result<Box<[u8]>> {
        // Now and then a name from the input itself, when it is a valid name.
        if self.u.ratio(1, 8)? {
            let len = self.u.int_in_range(1..=3)?;
            let bytes = self.u.bytes(len)?;
            if RelPath::check_name(bytes).is_ok() {
                return Ok(bytes.into());
            }
        }
        Ok(self.pick(&NAMES)?.into())
    }

    fn dir(&mut self, mode: u32, depth: usize) -> Result<Dir> {
        let meta = DirMeta { mode, mtime: self.unhashed_time()?, owner: self.owner()? };
        let count = if depth >= MAX_DEPTH { 0 } else { self.u.int_in_range(0..=MAX_CHILDREN)? };
        let mut children = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.name()?;
            let node = match self.u.int_in_range(0..=2u8)? {
                0 => {
                    let content = self.pick(&CONTENTS)?;
                    // A size that disagrees with the content now and then, but
                    // below 2^32: sums of sizes near u64::MAX overflow `Totals`
                    // (the cache_decode and wire_listing regressions), which is
                    // not what this target is about.
                    let size =
                        if self.u.ratio(1, 16)? { u64::from(self.u.arbitrary::<u32>()?) } else { content.len() as u64 };
                    Node::File(FileMeta {
                        size,
                        mode: self.pick(&FILE_MODES)?,
                        mtime: Timestamp::new(
                            1_700_000_000 + i64::from(self.u.int_in_range(0..=2u8)?),
                            self.pick(&[0, 1, 999_999_999])?,
                        ),
                        hash: Hash::of_content(content),
                        owner: self.owner()?,
                        stat: StatKey {
                            ctime: self.unhashed_time()?,
                            ino: self.unhashed()?,
                            settled: self.unhashed()?,
                        },
                    })
                }
                1 => Node::Symlink(SymlinkMeta {
                    target: self.pick(&TARGETS)?.into(),
                    mtime: self.unhashed_time()?,
                    owner: self.owner()?,
                }),
                _ => {
                    let mode = self.pick(&DIR_MODES)?;
                    Node::Dir(self.dir(mode, depth + 1)?.into())
                }
            };
            children.push(Entry { name: name.into(), node });
        }
        // Dir::new sorts the children and keeps the last of a repeated name.
        Ok(Dir::new(meta, children))
    }

    fn manifest(&mut self) -> Result<Manifest> {
        let root_mode = if self.loose { self.pick(&DIR_MODES)? } else { 0o755 };
        Ok(Manifest::new(self.dir(root_mode, 0)?))
    }
}

fn build(data: &[u8]) -> Result<(bool, Manifest, Manifest)> {
    let mut u = Unstructured::new(data);
    let loose = u.arbitrary::<u8>()? % 2 == 1;
    let mut builder = Builder { u, loose };
    let a = builder.manifest()?;
    let b = builder.manifest()?;
    Ok((loose, a, b))
}

fuzz_target!(|data: &[u8]| {
    let Ok((loose, from, to)) = build(data) else { return };
    let plan = diff(&from, &to);
    let mut applied = from.clone();
    if let Err(e) = applied.apply(&plan) {
        panic!("applying diff(a, b) to a failed: {e}\na = {from:#?}\nb = {to:#?}\nplan = {:#?}", plan.ops);
    }
    assert_eq!(applied.root_hash(), to.root_hash(), "apply(diff(a, b)) gives b's root");
    assert_eq!(applied.totals(), to.totals());
    if !loose {
        assert_eq!(applied, to, "with only hashed fields varying, apply(diff(a, b)) is b");
    }
    assert!(diff(&applied, &to).is_empty(), "nothing is left to do after the plan");
    assert_eq!(plan.id, diff(&from, &to).id, "plan ids are deterministic");
    assert_eq!(plan.is_empty(), from.root_hash() == to.root_hash());
    assert!(diff(&to, &to).is_empty());
    // A plan applies only to the tree it was made for.
    if from.root_hash() != to.root_hash() {
        let mut wrong = to.clone();
        assert!(matches!(wrong.apply(&plan), Err(PlanError::WrongBase { .. })));
        assert_eq!(wrong, to, "a refused plan leaves the manifest alone");
    }
});
