//! Several trees per daemon (DESIGN §3), told as stories with real daemons on
//! loopback: `deploy1002` (A) and `deploy2002` (B) each serve three trees,
//! `staging`, `patches` and `release`, as today's master sync carries three
//! rsync modules. Each tree is synced, guarded, rolled back and monitored on
//! its own; a tree that does not exist, or several trees where one is meant,
//! is a clear error naming the trees there are.
//!
//! The daemons watch their trees, so a change on A is noticed without a
//! restart: the stories wait (with deadlines) until A's `status` shows the
//! change before they act on it, and never sleep to synchronise.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use stagingd_tests::{
    Daemon, TestTree, assert_rsync_clean, assert_same_tree, bin, cp_a, describe, free_port, root_of, wait_until,
};

const A: &str = "deploy1002";
const B: &str = "deploy2002";

/// The three trees, in the order the daemon lists them (sorted by name).
const TREES: [&str; 3] = ["patches", "release", "staging"];

/// How long a change may take to show in `status` or reach a follower.
const DEADLINE: Duration = Duration::from_secs(15);

/// One node's three trees, each in its own temp dir.
struct Trees {
    staging: TestTree,
    patches: TestTree,
    release: TestTree,
}

impl Trees {
    /// Three trees shaped like a master's: a staging tree, a patches tree with
    /// 30 patch files, and the release values.
    fn full() -> Self {
        let staging = TestTree::new();
        for i in 0..40 {
            let dir = ["includes", "includes/api", "resources/src", "maintenance"][i % 4];
            staging.write(&format!("php-1.44.0-wmf.1/{dir}/File{i}.php"), format!("<?php\n// file {i}\n"));
        }
        staging
            .write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'x';\n")
            .write("php-1.44.0-wmf.1/maintenance/run", "#!/bin/sh\n")
            .chmod("php-1.44.0-wmf.1/maintenance/run", 0o755)
            .symlink("w", "php-1.44.0-wmf.1");
        let patches = TestTree::new();
        for i in 0..30 {
            patches.write(&patch_file(i), format!("From: dev{i}\nSubject: [PATCH] fix {i}\n"));
        }
        let release = TestTree::new();
        release
            .write("values/main.yaml", "branch: 1.44.0-wmf.1\n")
            .write("values/canary.yaml", "branch: 1.44.0-wmf.1\ncanary: true\n")
            .write("README", "release values\n");
        Self { staging, patches, release }
    }

    /// Three empty trees, as on a reimaged master.
    fn empty() -> Self {
        Self { staging: TestTree::new(), patches: TestTree::new(), release: TestTree::new() }
    }

    fn get(&self, tree: &str) -> &TestTree {
        match tree {
            "staging" => &self.staging,
            "patches" => &self.patches,
            "release" => &self.release,
            other => panic!("no test tree {other}"),
        }
    }

    fn path(&self, tree: &str) -> &Path {
        self.get(tree).path()
    }

    /// `(name, root)` for [`Daemon::start_trees`].
    fn specs(&self) -> Vec<(&'static str, &Path)> {
        TREES.iter().map(|&name| (name, self.path(name))).collect()
    }
}

fn patch_file(i: usize) -> String {
    format!("1.44.0-wmf.1/core/{i:02}-T{}.patch", 100_000 + i)
}

fn peer(name: &str, port: u16) -> Vec<String> {
    vec!["--peer".to_owned(), format!("{name}=http://127.0.0.1:{port}")]
}

/// A over `trees_a`, B over `trees_b`, knowing each other; A serves.
/// `extra_b` goes to B (`--replicate-from`, say).
fn pair(trees_a: &Trees, trees_b: &Trees, extra_b: &[String]) -> (Daemon, Daemon) {
    let (port_a, port_b) = (free_port(), free_port());
    let a = Daemon::start_trees(A, &trees_a.specs(), port_a, &peer(B, port_b));
    serve_bootstrap(&a);
    let b = Daemon::start_trees(B, &trees_b.specs(), port_b, &[peer(A, port_a), extra_b.to_vec()].concat());
    (a, b)
}

fn serve_bootstrap(daemon: &Daemon) {
    let output = daemon.ctl(["pool", "serve", "--bootstrap", "--reason", "test"]);
    assert!(output.status.success(), "{}", describe(&output));
}

fn status(daemon: &Daemon) -> serde_json::Value {
    daemon.status_json().unwrap_or_else(|| panic!("{} does not answer status:\n{}", daemon.name, daemon.log()))
}

/// The daemon's root of each tree, by name, from `status --json` `trees[]`.
fn roots(daemon: &Daemon) -> Vec<(String, String)> {
    let json = status(daemon);
    json["trees"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has no trees[]: {json}"))
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t["root"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn daemon_root(daemon: &Daemon, tree: &str) -> String {
    let all = roots(daemon);
    all.iter().find(|(name, _)| name == tree).unwrap_or_else(|| panic!("no tree {tree} in {all:?}")).1.clone()
}

/// Waits until the daemon's manifest of every tree is what is on disk (its
/// watcher has noticed the last change).
fn wait_noticed(daemon: &Daemon) {
    for (tree, dir) in &daemon.trees {
        let until = std::time::Instant::now() + DEADLINE;
        loop {
            let (theirs, disk) = (daemon_root(daemon, tree), root_of(dir).to_hex());
            if theirs == disk {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "{}'s {tree} did not show the change on disk within {DEADLINE:?}: root {theirs}, on disk {disk}\n\
                 verify: {}\nstatus: {}\n--- log\n{}",
                daemon.name,
                describe(&daemon.ctl(["verify", "--tree", tree])),
                status(daemon)["trees"],
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `sync --json ARGS` on `daemon`: the exit code, the document, and the output.
fn sync(daemon: &Daemon, args: &[&str]) -> (Option<i32>, serde_json::Value, Output) {
    let mut all = vec!["sync", "--json"];
    all.extend_from_slice(args);
    let output = daemon.ctl(&all);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("sync --json printed no JSON ({e}):\n{}", describe(&output)));
    (output.status.code(), json, output)
}

/// The result for `tree` in a `sync --json` document.
fn result<'a>(json: &'a serde_json::Value, tree: &str) -> &'a serde_json::Value {
    json["trees"]
        .as_array()
        .and_then(|trees| trees.iter().find(|t| t["tree"] == tree))
        .unwrap_or_else(|| panic!("no result for tree {tree}: {json}"))
}

/// The tree names in a `sync --json` document, sorted.
fn result_trees(json: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> =
        json["trees"].as_array().unwrap().iter().map(|t| t["tree"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

fn history(daemon: &Daemon, tree: &str) -> Vec<serde_json::Value> {
    let output = daemon.ctl(["history", "--json", "--tree", tree]);
    assert!(output.status.success(), "{}", describe(&output));
    let records: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    records.as_array().unwrap().clone()
}

/// A copy of a tree (`cp -a`) kept for comparison; the copy is at `.1`.
fn snapshot(tree: &Path) -> (TestTree, std::path::PathBuf) {
    let copy = TestTree::new();
    let dir = copy.path().join("t");
    cp_a(tree, &dir);
    (copy, dir)
}

/// A and B level on all three trees after one `sync --from A` on B.
fn level_pair() -> (Trees, Trees, Daemon, Daemon) {
    let (trees_a, trees_b) = (Trees::full(), Trees::empty());
    let (a, b) = pair(&trees_a, &trees_b, &[]);
    let (code, json, output) = sync(&b, &["--from", A]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    for tree in TREES {
        assert_eq!(result(&json, tree)["outcome"], "applied", "{json}");
        assert_rsync_clean(trees_a.path(tree), trees_b.path(tree));
    }
    (trees_a, trees_b, a, b)
}

#[test]
fn syncing_one_tree_leaves_the_other_trees_untouched() {
    let (trees_a, trees_b) = (Trees::full(), Trees::empty());
    let (a, b) = pair(&trees_a, &trees_b, &[]);

    // Only patches.
    let (code, json, output) = sync(&b, &["--from", A, "--tree", "patches"]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(result_trees(&json), ["patches"], "only the named tree: {json}");
    assert_eq!(result(&json, "patches")["outcome"], "applied", "{json}");
    assert_rsync_clean(trees_a.path("patches"), trees_b.path("patches"));
    for tree in ["staging", "release"] {
        let left: Vec<_> = fs::read_dir(trees_b.path(tree)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|name| name == ".stagingd"), "{tree} was not asked for and is untouched: {left:?}");
        assert!(history(&b, tree).is_empty(), "no history for {tree}");
    }
    assert_eq!(history(&b, "patches").len(), 1);

    // Every shared tree: the two others are applied, patches has nothing to do.
    let (code, json, output) = sync(&b, &["--from", A]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(result_trees(&json), TREES, "one result per shared tree: {json}");
    assert_eq!(result(&json, "patches")["outcome"], "nothing-to-do", "{json}");
    for tree in ["staging", "release"] {
        assert_eq!(result(&json, tree)["outcome"], "applied", "{json}");
    }
    for tree in TREES {
        assert_rsync_clean(trees_a.path(tree), trees_b.path(tree));
        assert_eq!(daemon_root(&b, tree), daemon_root(&a, tree), "{tree}");
    }

    // A change to one tree on A: only that tree has anything to do.
    trees_a.release.write("values/main.yaml", "branch: 1.44.0-wmf.2\n");
    wait_noticed(&a);
    let (code, json, output) = sync(&b, &["--from", A]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(result(&json, "release")["outcome"], "applied", "{json}");
    assert_eq!(result(&json, "release")["counts"]["updates"], 1, "{json}");
    for tree in ["staging", "patches"] {
        assert_eq!(result(&json, tree)["outcome"], "nothing-to-do", "{json}");
    }
    assert_rsync_clean(trees_a.path("release"), trees_b.path("release"));
    // Each tree keeps its own history: the release sync is not in staging's.
    let staging_history = history(&b, "staging");
    assert!(staging_history.iter().all(|r| r["tree"] == "staging"), "{staging_history:?}");
    let release_history = history(&b, "release");
    assert!(release_history.iter().all(|r| r["tree"] == "release"), "{release_history:?}");
    assert!(
        release_history.len() > staging_history.len(),
        "release: {release_history:?}\nstaging: {staging_history:?}"
    );
}

#[test]
fn a_delete_refusal_on_one_tree_stops_neither_of_the_others() {
    let (trees_a, trees_b, a, b) = level_pair();
    let (_keep, patches_before) = snapshot(trees_b.path("patches"));

    // On A: a third of the patches go (over the delete threshold), and the two
    // other trees change in ordinary ways.
    for i in (0..30).step_by(3) {
        fs::remove_file(trees_a.path("patches").join(patch_file(i))).unwrap();
    }
    trees_a.staging.write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'y';\n");
    trees_a.staging.write("php-1.44.0-wmf.1/includes/New.php", "<?php\n// new\n");
    trees_a.release.write("values/main.yaml", "branch: 1.44.0-wmf.2\n");
    wait_noticed(&a);

    let (code, json, output) = sync(&b, &["--from", A]);
    assert_eq!(code, Some(3), "a refusal of any tree exits 3: {}", describe(&output));
    let refused = result(&json, "patches");
    assert_eq!(refused["outcome"], "refused", "{json}");
    assert_eq!(refused["guard"], "delete-threshold", "{json}");
    assert!(refused["message"].as_str().unwrap().contains("deletes 10 of"), "{refused}");
    for tree in ["staging", "release"] {
        assert_eq!(result(&json, tree)["outcome"], "applied", "{json}");
        assert_rsync_clean(trees_a.path(tree), trees_b.path(tree));
    }
    assert_same_tree(&patches_before, trees_b.path("patches"));
    assert_rsync_clean(&patches_before, trees_b.path("patches"));

    // In text, the refusal names its tree (and only that tree is refused).
    let output = b.ctl(["sync", "--from", A]);
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("patches: REFUSED by guard delete-threshold"), "{}", describe(&output));
    assert!(!stderr.contains("staging: REFUSED") && !stderr.contains("release: REFUSED"), "{}", describe(&output));
    assert_same_tree(&patches_before, trees_b.path("patches"));

    // Confirmed, by its plan id and for that tree: applied.
    let plan_id = refused["plan_id"].as_str().unwrap();
    let (code, json, output) = sync(&b, &["--from", A, "--tree", "patches", "--confirm", plan_id]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(result(&json, "patches")["outcome"], "applied", "{json}");
    for tree in TREES {
        assert_rsync_clean(trees_a.path(tree), trees_b.path(tree));
    }
}

#[test]
fn rolling_back_one_tree_leaves_the_other_trees_alone() {
    let (trees_a, trees_b, a, b) = level_pair();
    let (_keep, patches_before) = snapshot(trees_b.path("patches"));

    // A bad change on all three trees, synced to B.
    trees_a.patches.write(&patch_file(0), "From: dev0\nSubject: [PATCH] broken\n");
    trees_a.patches.write("1.44.0-wmf.1/core/99-T199999.patch", "From: dev99\n");
    fs::remove_file(trees_a.path("patches").join(patch_file(1))).unwrap();
    trees_a.staging.write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'y';\n");
    trees_a.release.write("values/main.yaml", "branch: 1.44.0-wmf.2\n");
    wait_noticed(&a);
    let (code, json, output) = sync(&b, &["--from", A]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    for tree in TREES {
        assert_eq!(result(&json, tree)["outcome"], "applied", "{json}");
        assert_rsync_clean(trees_a.path(tree), trees_b.path(tree));
    }
    let (_keep_s, staging_synced) = snapshot(trees_b.path("staging"));
    let (_keep_r, release_synced) = snapshot(trees_b.path("release"));
    let staging_history = history(&b, "staging");
    let release_history = history(&b, "release");

    let output = b.ctl(["rollback", "--tree", "patches", "--json", "--reason", "bad patch"]);
    assert!(output.status.success(), "{}", describe(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result_trees(&json), ["patches"], "{json}");
    assert_same_tree(&patches_before, trees_b.path("patches"));
    assert_rsync_clean(&patches_before, trees_b.path("patches"));

    // The two others are as the sync left them, and their history is unchanged.
    assert_same_tree(&staging_synced, trees_b.path("staging"));
    assert_rsync_clean(&staging_synced, trees_b.path("staging"));
    assert_same_tree(&release_synced, trees_b.path("release"));
    assert_rsync_clean(&release_synced, trees_b.path("release"));
    assert_eq!(history(&b, "staging"), staging_history);
    assert_eq!(history(&b, "release"), release_history);
    let kinds: Vec<_> = history(&b, "patches").iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["rollback", "sync", "sync"], "newest first");
    // The daemon's manifests agree: only patches moved.
    wait_noticed(&b);
    assert_eq!(daemon_root(&b, "staging"), daemon_root(&a, "staging"));
    assert_eq!(daemon_root(&b, "release"), daemon_root(&a, "release"));
    assert_ne!(daemon_root(&b, "patches"), daemon_root(&a, "patches"));
}

/// Waits until B's root of every tree is A's, A having noticed its own disk.
fn wait_follows(a: &Daemon, b: &Daemon) {
    wait_noticed(a);
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let want = roots(a);
        if want.iter().all(|(_, root)| !root.is_empty()) && roots(b) == want {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{B} did not follow {A} within {DEADLINE:?}: A {want:?}, B {:?}; replication {}\n--- {B} log\n{}",
            roots(b),
            status(b)["replication"],
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (tree, dir) in &a.trees {
        assert_rsync_clean(dir, b.tree_root(tree));
    }
}

#[test]
fn replication_follows_changes_in_every_tree() {
    let (trees_a, trees_b) = (Trees::full(), Trees::empty());
    let (a, b) = pair(&trees_a, &trees_b, &["--replicate-from".to_owned(), A.to_owned()]);
    // An empty follower catches up on all three.
    wait_follows(&a, &b);

    // A change in each tree, A left running.
    trees_a.staging.write("php-1.44.0-wmf.2/includes/New.php", "<?php\n// new branch\n");
    trees_a.patches.write("1.44.0-wmf.2/core/01-T200001.patch", "From: dev\n");
    fs::remove_file(trees_a.path("patches").join(patch_file(4))).unwrap();
    trees_a.release.write("values/main.yaml", "branch: 1.44.0-wmf.2\n");
    wait_follows(&a, &b);

    // A change in one tree syncs that tree alone.
    let counts: Vec<usize> = TREES.iter().map(|tree| history(&b, tree).len()).collect();
    trees_a.release.write("values/canary.yaml", "branch: 1.44.0-wmf.2\ncanary: true\n");
    wait_follows(&a, &b);
    let after: Vec<usize> = TREES.iter().map(|tree| history(&b, tree).len()).collect();
    // (The write may reach A's manifest as more than one change, hence `>`.)
    assert!(
        after[0] == counts[0] && after[1] > counts[1] && after[2] == counts[2],
        "only release was synced: (patches, release, staging) went from {counts:?} to {after:?}"
    );
    for tree in TREES {
        assert!(history(&b, tree).iter().all(|r| r["who"] == "replication" && r["source"] == A), "{tree}");
    }
    assert_eq!(status(&b)["replication"]["phase"], "following");
}

/// Runs `stagingd ARGS`, which must exit (within [`DEADLINE`]); its output.
fn stagingd_exits(args: &[String]) -> Output {
    let mut child = Command::new(bin("stagingd"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stagingd");
    let until = std::time::Instant::now() + DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("stagingd {args:?} did not exit: {}", describe(&child.wait_with_output().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn overlapping_tree_roots_refuse_to_start() {
    let dir = TestTree::new();
    let outer = dir.path().join("x");
    let inner = outer.join("sub");
    fs::create_dir_all(&inner).unwrap();
    let other = dir.path().join("elsewhere");
    fs::create_dir_all(&other).unwrap();
    let flags = |trees: &[(&str, &Path)]| -> Vec<String> {
        let mut args = vec![
            "--name".to_owned(),
            A.to_owned(),
            "--state-dir".to_owned(),
            dir.path().join("state").display().to_string(),
            "--admin-socket".to_owned(),
            dir.path().join("admin.sock").display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
        ];
        for (name, root) in trees {
            args.extend(["--tree".to_owned(), format!("{name}={}", root.display())]);
        }
        args
    };
    // Either order, and among other trees that do not overlap.
    for trees in [
        vec![("a", outer.as_path()), ("b", inner.as_path())],
        vec![("b", inner.as_path()), ("c", other.as_path()), ("a", outer.as_path())],
    ] {
        let output = stagingd_exits(&flags(&trees));
        assert_eq!(output.status.code(), Some(2), "{trees:?}: {}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("overlap"), "{trees:?}: {stderr}");
        assert!(stderr.contains("\"a\"") && stderr.contains("\"b\""), "names both trees: {stderr}");
        assert!(!stderr.contains("\"c\""), "not the tree that does not overlap: {stderr}");
    }
    assert!(!dir.path().join("admin.sock").exists(), "nothing was started");
    // The same two roots side by side are fine.
    let daemon = Daemon::start_trees(A, &[("a", inner.as_path()), ("c", other.as_path())], free_port(), &[]);
    assert_eq!(roots(&daemon).len(), 2);
}

/// Asserts that `output` is an error exit 1 whose stderr names all three trees.
fn assert_error_naming_the_trees(what: &str, output: &Output) {
    assert_eq!(output.status.code(), Some(1), "{what}: {}", describe(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for tree in TREES {
        assert!(stderr.contains(tree), "{what} names tree {tree}: {}", describe(output));
    }
}

#[test]
fn a_tree_that_does_not_exist_is_an_error_naming_the_trees_there_are() {
    let (trees_a, trees_b, a, b) = level_pair();
    // A change waiting on A: a sync that ignored the bad name would apply it.
    trees_a.release.write("values/main.yaml", "branch: 1.44.0-wmf.2\n");
    wait_noticed(&a);
    let (_keep, before) = snapshot(trees_b.path("release"));

    for args in [
        vec!["sync", "--from", A, "--tree", "nope"],
        vec!["sync", "--from", A, "--tree", "nope", "--json"],
        vec!["diff", "--from", A, "--tree", "nope"],
        vec!["history", "--tree", "nope"],
        vec!["rollback", "--tree", "nope"],
        vec!["verify", "--tree", "nope"],
    ] {
        let output = b.ctl(&args);
        assert_error_naming_the_trees(&args.join(" "), &output);
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("nope"),
            "names what was asked: {}",
            describe(&output)
        );
    }
    // Nothing was synced or rolled back.
    for tree in TREES {
        assert_eq!(history(&b, tree).len(), 1, "{tree}");
    }
    assert_same_tree(&before, trees_b.path("release"));
}

#[test]
fn a_per_tree_command_without_tree_on_a_node_with_several_is_an_error_listing_them() {
    let (_trees_a, trees_b, _a, b) = level_pair();
    let (_keep, before) = snapshot(trees_b.path("staging"));
    for args in [vec!["history"], vec!["history", "--json"], vec!["rollback"]] {
        let output = b.ctl(&args);
        assert_error_naming_the_trees(&args.join(" "), &output);
        assert!(String::from_utf8_lossy(&output.stderr).contains("--tree"), "says how: {}", describe(&output));
    }
    // Nothing was rolled back.
    for tree in TREES {
        assert_eq!(history(&b, tree).len(), 1, "{tree}");
    }
    assert_same_tree(&before, trees_b.path("staging"));
}

#[test]
fn status_has_one_entry_per_tree_and_check_names_the_tree_that_differs() {
    let (trees_a, trees_b, a, b) = level_pair();
    let output = b.ctl(["pool", "serve", "--reason", "level with deploy1002"]);
    assert!(output.status.success(), "{}", describe(&output));

    for daemon in [&a, &b] {
        let json = status(daemon);
        let names: Vec<_> = json["trees"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, TREES, "one entry per tree: {json}");
        for (tree, dir) in &daemon.trees {
            assert_eq!(daemon_root(daemon, tree), root_of(dir).to_hex(), "{tree}");
        }
        let peer_trees = json["peers"][0]["trees"].as_array().unwrap();
        assert_eq!(peer_trees.len(), 3, "{json}");
        assert!(peer_trees.iter().all(|t| t["present"] == true && t["in_sync"] == true), "{json}");
        let check = daemon.check();
        assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    }

    // Both serve; B's release changes by hand.
    trees_b.release.write("values/main.yaml", "branch: hand-edited\n");
    wait_noticed(&b);
    for daemon in [&a, &b] {
        let mut last = None;
        wait_until(&format!("{} sees release differ", daemon.name), DEADLINE, || {
            let check = daemon.check();
            let critical = check.status.code() == Some(2);
            last = Some(check);
            critical
        });
        let check = last.unwrap();
        let line = String::from_utf8_lossy(&check.stdout).into_owned();
        let summary = line.split(" | ").next().unwrap();
        assert!(summary.starts_with("STAGINGD CRITICAL - release: root"), "names the tree first: {line}");
        assert!(summary.contains("differs from serving peer"), "{line}");
        assert!(!summary.contains("staging:") && !summary.contains("patches:"), "only release differs: {line}");
        let json = status(daemon);
        assert_eq!(json["check"]["state"], "CRITICAL", "{json}");
        let in_sync: Vec<_> = json["peers"][0]["trees"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["tree"].clone(), t["in_sync"].clone()))
            .collect();
        assert_eq!(
            in_sync,
            [("patches".into(), true.into()), ("release".into(), false.into()), ("staging".into(), true.into())],
            "{json}"
        );
    }
    assert_rsync_clean(trees_a.path("staging"), trees_b.path("staging"));
}
