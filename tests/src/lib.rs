//! Harness for the end-to-end scenarios: the real binaries, temp trees, and
//! comparisons that print a readable difference.
//!
//! The binaries are the ones cargo built for this workspace (`target/<profile>/`);
//! `cargo nextest run --workspace` builds them because the binary crates have
//! integration tests of their own.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use manifest::{Manifest, ScanOptions};

/// The path of a workspace binary, next to the test executable's `deps/` dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo nextest run --workspace` (or `cargo build --workspace` first)",
        path.display()
    );
    path
}

/// A command for `stagingctl` with the given arguments.
pub fn stagingctl<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(bin("stagingctl"));
    command.args(args);
    command
}

/// Runs a command and returns its output, with stdout/stderr shown on failure of
/// the caller's assertions through [`describe`].
pub fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// stdout, stderr and the exit code, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A tree in a fresh temporary directory.
#[derive(Debug)]
pub struct TestTree {
    dir: tempfile::TempDir,
}

impl Default for TestTree {
    fn default() -> Self {
        Self::new()
    }
}

impl TestTree {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `content` at `rel`, creating parent directories.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().expect("rel has a parent")).expect("create parents");
        fs::write(&path, content).expect("write file");
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        symlink(target, self.path().join(rel)).expect("symlink");
        self
    }

    pub fn chmod(&self, rel: &str, mode: u32) -> &Self {
        fs::set_permissions(self.path().join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    pub fn manifest(&self) -> Manifest {
        manifest::scan(self.path(), &ScanOptions::default(), None).expect("scan").manifest
    }
}

/// Asserts that two directories hold the same tree, printing the plan that would
/// turn `actual` into `expected` when they differ.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let scan = |p: &Path| manifest::scan(p, &ScanOptions::default(), None).expect("scan").manifest;
    let (want, have) = (scan(expected), scan(actual));
    if want.root_hash() != have.root_hash() {
        let plan = manifest::diff(&have, &want);
        let lines: Vec<String> =
            plan.ops.iter().filter(|op| op.is_itemized()).map(|op| format!("  {} {}", op.tag(), op.path())).collect();
        panic!("{} differs from {}; to make them equal:\n{}", actual.display(), expected.display(), lines.join("\n"));
    }
}

/// Copies a tree the way an operator would (`cp -a`), preserving everything.
pub fn cp_a(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "cp -a {} {} failed", from.display(), to.display());
}
