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

/// The root hash of the tree at `path`.
pub fn root_of(path: &Path) -> manifest::Hash {
    manifest::scan(path, &ScanOptions::default(), None).expect("scan").manifest.root_hash()
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

/// `status` flags that turn the free-space and free-inode limits off: the
/// tests run on whatever disk the machine has.
const IGNORE_HOST_DISK: [&str; 4] = ["--free-warning", "0", "--free-critical", "0"];

/// A running `stagingd` process with its own temp state dir and admin socket,
/// listening on a loopback port chosen at run time. Stopped (SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    /// The root of its first tree (its only one when started with [`Daemon::start`]).
    pub root: PathBuf,
    /// Every tree it serves, name and root, in the order given.
    pub trees: Vec<(String, PathBuf)>,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    log: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

/// A loopback port that was free a moment ago, for a daemon the test starts next
/// (its peers are told the port first, so a daemon cannot move to another).
///
/// Not a port from `bind(:0)`: that comes from the kernel's ephemeral range
/// (32768–60999 by default), where every concurrent test's outgoing connections
/// also take their local ports, so one could take it between this check and the
/// daemon's own bind (seen in CI: "Address already in use"). These come from
/// 20000–31999 instead, in a block of 20 per test process (by pid), and are
/// checked free before they are handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u32 = 20_000;
    const BLOCK: u32 = 20;
    const BLOCKS: u32 = 600;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = FIRST + (std::process::id() % BLOCKS) * BLOCK;
    for _ in 0..BLOCKS * BLOCK {
        let offset = u32::from(NEXT.fetch_add(1, Ordering::Relaxed)) % (BLOCKS * BLOCK);
        let port = FIRST + (base - FIRST + offset) % (BLOCKS * BLOCK);
        let port = u16::try_from(port).expect("ports up to 31999");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{FIRST}-{}", FIRST + BLOCKS * BLOCK - 1);
}

/// Polls `condition` every few milliseconds until it holds or `deadline` passes.
pub fn wait_until(what: &str, deadline: std::time::Duration, mut condition: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + deadline;
    while !condition() {
        assert!(std::time::Instant::now() < until, "timed out after {deadline:?} waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Daemon {
    /// Starts a daemon named `name` serving `root` as tree `staging` (`--root`), on
    /// `port`, with `extra` flags (peers, say), and waits until its first scan is done.
    pub fn start(name: &str, root: &Path, port: u16, extra: &[String]) -> Daemon {
        let tree_flags = vec!["--root".to_owned(), root.display().to_string()];
        Self::launch(name, &[("staging", root)], tree_flags, port, extra)
    }

    /// Like [`Daemon::start`], serving each of `trees` (name, root) with
    /// `--tree NAME=DIR`.
    pub fn start_trees(name: &str, trees: &[(&str, &Path)], port: u16, extra: &[String]) -> Daemon {
        let tree_flags =
            trees.iter().flat_map(|(tree, dir)| ["--tree".to_owned(), format!("{tree}={}", dir.display())]).collect();
        Self::launch(name, trees, tree_flags, port, extra)
    }

    /// The one constructor: a temp dir for state, socket and log; `tree_flags`
    /// say which trees to serve (`trees` records them for the tests).
    fn launch(name: &str, trees: &[(&str, &Path)], tree_flags: Vec<String>, port: u16, extra: &[String]) -> Daemon {
        assert!(!trees.is_empty(), "a daemon serves at least one tree");
        let dir = tempfile::tempdir().expect("daemon temp dir");
        let state = dir.path().join("state");
        let socket = dir.path().join("admin.sock");
        let log = dir.path().join("stagingd.log");
        let mut args = vec!["--name".to_owned(), name.to_owned()];
        args.extend(tree_flags);
        args.extend([
            "--state-dir".to_owned(),
            state.display().to_string(),
            "--admin-socket".to_owned(),
            socket.display().to_string(),
            "--shutdown-grace-secs".to_owned(),
            "3".to_owned(),
            "--peer-timeout-secs".to_owned(),
            "2".to_owned(),
        ]);
        args.extend(extra.iter().cloned());
        let mut daemon = Daemon {
            name: name.to_owned(),
            root: trees[0].1.to_owned(),
            trees: trees.iter().map(|(tree, dir)| ((*tree).to_owned(), dir.to_path_buf())).collect(),
            state,
            socket,
            port,
            log,
            args,
            _dir: dir,
            child: None,
        };
        daemon.restart();
        daemon
    }

    /// The root of the tree named `tree`.
    pub fn tree_root(&self, tree: &str) -> &Path {
        self.trees
            .iter()
            .find(|(name, _)| name == tree)
            .map(|(_, root)| root.as_path())
            .unwrap_or_else(|| panic!("{} serves no tree named {tree}", self.name))
    }

    /// (Re)starts the process with the same state dir, socket and port, and
    /// waits until it answers and its trees are scanned.
    pub fn restart(&mut self) {
        self.kill();
        let log = fs::File::options().create(true).append(true).open(&self.log).expect("open daemon log");
        let child = Command::new(bin("stagingd"))
            .args(&self.args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn stagingd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("stagingd {} exited early ({status}):\n{}", self.name, self.log());
            }
            if let Some(json) = self.status_json()
                && json["trees"].as_array().is_some_and(|trees| trees.iter().all(|t| t["readiness"] != "scanning"))
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "stagingd {} never became ready:\n{}", self.name, self.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `stagingctl --admin-socket <this daemon's socket> ARGS`.
    pub fn ctl<S: AsRef<std::ffi::OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Output {
        let mut command = Command::new(bin("stagingctl"));
        command.arg("--admin-socket").arg(&self.socket).args(args);
        run(&mut command)
    }

    /// `status --check` with the free-space and free-inode limits off, so that
    /// how full the test machine's disk is cannot change the verdict.
    pub fn check(&self) -> Output {
        self.ctl(["status", "--check"].into_iter().chain(IGNORE_HOST_DISK))
    }

    /// `status --json` as a value (free-space limits off, as in [`Daemon::check`]),
    /// or `None` when the daemon does not answer yet.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let output = self.ctl(["status", "--json"].into_iter().chain(IGNORE_HOST_DISK));
        output.status.success().then(|| serde_json::from_slice(&output.stdout).expect("status --json is JSON"))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits (up to `deadline`) for the exit; returns its status.
    pub fn terminate(&mut self, deadline: std::time::Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
        assert!(status.success());
        let until = std::time::Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() > until {
                let _ = child.kill();
                panic!("stagingd {} did not exit within {deadline:?} of SIGTERM:\n{}", self.name, self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `rsync -naci --delete` would change to make `to` equal `from` (the
/// reserved `.stagingd/` excluded): empty when the trees are the same in content,
/// modes, mtimes, symlinks and directory times.
pub fn rsync_differences(from: &Path, to: &Path) -> Vec<String> {
    let output = Command::new("rsync")
        .args(["-naci", "--delete", "--exclude=/.stagingd"])
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .output()
        .expect("run rsync (install it: apt-get install rsync)");
    assert!(output.status.success(), "rsync failed: {}", describe(&output));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

/// Asserts that `rsync -naci --delete` finds nothing to do between the trees.
pub fn assert_rsync_clean(from: &Path, to: &Path) {
    let differences = rsync_differences(from, to);
    assert!(differences.is_empty(), "rsync -naci --delete still finds differences:\n{}", differences.join("\n"));
}
