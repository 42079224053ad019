//! The manifest of a staging tree: what is in it, and how two trees differ.
//!
//! This crate is pure: values in, values out. It walks and reads files (that is
//! what a manifest is made of) but it never opens a socket, spawns a task or
//! keeps global state; the daemon and the CLI are thin edges over it.
//!
//! - [`path`]: [`RelPath`], the only form in which a path inside a tree travels.
//! - [`tree`]: [`Manifest`], a Merkle tree of directories.
//! - [`scan`]: build a manifest from disk, in parallel, reusing a previous one as
//!   the stat cache; [`cache`] persists it between runs.
//! - [`exclude`]: the reserved directory and configured glob excludes.
//! - [`plan`]: `diff(from, to)` → [`Plan`] with a deterministic [`PlanId`].
//!
//! # Hash encoding (wire contract)
//!
//! All hashes are BLAKE3, 32 bytes.
//!
//! - A **file's content hash** is `BLAKE3(content)`: what `b3sum` prints.
//! - A **directory's hash** is BLAKE3 in `derive_key` mode with the context
//!   [`DIR_HASH_CONTEXT`] over the concatenation, for every child in ascending
//!   byte order of its name, of:
//!   `u32le name_len ‖ name ‖ u8 kind` followed by
//!   - file (kind 1): `u32le mode ‖ u64le size ‖ i64le mtime_secs ‖ u32le mtime_nanos ‖ content_hash[32]`
//!   - directory (kind 2): `u32le mode ‖ dir_hash[32]`
//!   - symlink (kind 3): `u32le target_len ‖ target`
//!
//!   `mode` is the permission bits (`st_mode & 0o7777`). An empty directory
//!   hashes the empty input.
//! - The **root hash** of a tree is the hash of its root directory. The root's own
//!   mode, directory mtimes, symlink mtimes and ownership are carried but not
//!   hashed (see [`DirMeta`] and [`Owner`] for why).
//!
//! So two trees have equal root hashes exactly when they hold the same names with
//! the same kinds, permission bits, file contents and mtimes, and symlink targets;
//! and two directories with equal hashes need not be compared further.

pub mod cache;
pub mod changes;
pub mod exclude;
pub mod fsutil;
pub mod hash;
pub mod name;
pub mod path;
pub mod plan;
pub mod scan;
pub mod tree;

pub use changes::{ChangeError, changed_paths};
pub use exclude::{Excludes, RESERVED_DIR};
pub use hash::Hash;
pub use name::Name;
pub use path::{PathError, RelPath};
pub use plan::{Op, Plan, PlanError, PlanId, PlanTotals, diff};
pub use scan::{Scan, ScanError, ScanOptions, ScanReport, SkipReason, Skipped, scan};
pub use tree::{
    Batch, DIR_HASH_CONTEXT, Dir, DirMeta, Entry, FileMeta, HashInput, Kind, Manifest, Node, Owner, StatKey,
    SymlinkMeta, Timestamp, Totals, WalkBelow, hash_listing,
};
