//! Automatic replication (`--replicate-from`), told as stories with real
//! daemons on loopback: `deploy2002` (B) follows `deploy1002` (A).
//!
//! Some stories change A's tree and restart A, which exercises what replication
//! must survive anyway (the source going away and coming back); the ones named
//! `..._without_a_restart` rely on A's file watcher alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stagingd_tests::{Daemon, TestTree, assert_rsync_clean, assert_same_tree, cp_a, describe, free_port, wait_until};

/// How long a change may take to reach the follower.
const FOLLOW_DEADLINE: Duration = Duration::from_secs(15);

const A: &str = "deploy1002";
const B: &str = "deploy2002";

/// A tree shaped like a staging tree, `files` PHP files across a few directories.
fn staging_tree(files: usize) -> TestTree {
    let tree = TestTree::new();
    for i in 0..files {
        tree.write(&php_file(i), format!("<?php\n// file {i}\n{}\n", "x".repeat(i % 97)));
    }
    tree.write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'x';\n")
        .write("dblists/all.dblist", "enwiki\ndewiki\n")
        .write("php-1.44.0-wmf.1/maintenance/run", "#!/bin/sh\n")
        .chmod("php-1.44.0-wmf.1/maintenance/run", 0o755)
        .symlink("w", "php-1.44.0-wmf.1");
    tree
}

fn php_file(i: usize) -> String {
    let dir = ["includes", "includes/api", "resources/src", "maintenance"][i % 4];
    format!("php-1.44.0-wmf.1/{dir}/File{i}.php")
}

fn peer(name: &str, port: u16) -> Vec<String> {
    vec!["--peer".to_owned(), format!("{name}=http://127.0.0.1:{port}")]
}

fn replicate_from(name: &str) -> Vec<String> {
    vec!["--replicate-from".to_owned(), name.to_owned()]
}

fn serve_bootstrap(daemon: &Daemon) {
    let output = daemon.ctl(["pool", "serve", "--bootstrap", "--reason", "test"]);
    assert!(output.status.success(), "{}", describe(&output));
}

/// A serving `a` over `source`, and `b` over `receiver` following it.
fn follower(source: &Path, receiver: &Path) -> (Daemon, Daemon) {
    let (port_a, port_b) = (free_port(), free_port());
    let a = Daemon::start(A, source, port_a, &peer(B, port_b));
    serve_bootstrap(&a);
    let b = Daemon::start(B, receiver, port_b, &[peer(A, port_a), replicate_from(A)].concat());
    (a, b)
}

fn status(daemon: &Daemon) -> serde_json::Value {
    daemon.status_json().unwrap_or_else(|| panic!("{} does not answer status:\n{}", daemon.name, daemon.log()))
}

fn root(daemon: &Daemon) -> serde_json::Value {
    status(daemon)["trees"][0]["root"].clone()
}

fn replication(daemon: &Daemon) -> serde_json::Value {
    status(daemon)["replication"].clone()
}

/// Waits until B's root is A's (both scanned), then checks the trees on disk.
fn wait_level(a: &Daemon, b: &Daemon) {
    let until = Instant::now() + FOLLOW_DEADLINE;
    loop {
        let want = root(a);
        if !want.is_null() && root(b) == want {
            break;
        }
        assert!(
            Instant::now() < until,
            "{B} did not follow {A} within {FOLLOW_DEADLINE:?}: replication {}\n--- {B} log\n{}",
            replication(b),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_rsync_clean(&a.root, &b.root);
}

fn wait_phase(daemon: &Daemon, phase: &str) -> serde_json::Value {
    let until = Instant::now() + FOLLOW_DEADLINE;
    loop {
        let last = replication(daemon);
        if last["phase"] == phase {
            return last;
        }
        assert!(
            Instant::now() < until,
            "{}'s replication never became {phase}: {last}\n--- log\n{}",
            daemon.name,
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn snapshot(tree: &Path) -> (TestTree, PathBuf) {
    let copy = TestTree::new();
    let dir = copy.path().join("t");
    cp_a(tree, &dir);
    (copy, dir)
}

/// The 16-hex-digit id after `--confirm ` in `text`.
fn confirm_id(text: &str) -> String {
    let at = text.find("--confirm ").unwrap_or_else(|| panic!("no `--confirm PLAN_ID` in {text:?}"));
    let id: String = text[at + "--confirm ".len()..].chars().take_while(char::is_ascii_hexdigit).collect();
    assert_eq!(id.len(), 16, "plan id in {text:?}");
    id
}

#[test]
fn a_change_on_the_source_reaches_the_follower() {
    let source = staging_tree(40);
    let receiver = TestTree::new();
    let (mut a, b) = follower(source.path(), receiver.path());
    // An empty follower catches up on its own.
    wait_level(&a, &b);
    let state = wait_phase(&b, "following");
    assert_eq!(state["source"], A);
    assert!(state["last_success"].is_object(), "{state}");

    // Edit, add, delete, chmod, symlink.
    source
        .write(&php_file(1), "<?php\n// edited\n")
        .write("php-1.44.0-wmf.2/includes/New.php", "<?php\n// new branch\n")
        .chmod("php-1.44.0-wmf.1/maintenance/run", 0o700)
        .symlink("docroot", "php-1.44.0-wmf.2");
    fs::remove_file(source.path().join(php_file(2))).unwrap();
    a.restart();
    wait_level(&a, &b);

    let history = b.ctl(["history", "--json"]);
    assert!(history.status.success(), "{}", describe(&history));
    let records: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert!(
        records.as_array().unwrap().iter().all(|r| r["who"] == "replication" && r["source"] == A),
        "every sync was replication's: {records}"
    );
}

#[test]
fn deleting_a_third_of_the_source_stops_replication_instead_of_applying() {
    let source = staging_tree(60);
    let receiver = TestTree::new();
    let (mut a, b) = follower(source.path(), receiver.path());
    wait_level(&a, &b);
    let (_keep, before) = snapshot(receiver.path());

    for i in (0..60).step_by(3) {
        fs::remove_file(source.path().join(php_file(i))).unwrap();
    }
    a.restart();

    let stopped = wait_phase(&b, "stopped");
    assert_eq!(stopped["stopped_guard"], "delete-threshold", "{stopped}");
    assert_eq!(stopped["tree"], "staging", "{stopped}");
    let error = stopped["last_error"].as_str().unwrap();
    let plan_id = confirm_id(error);
    assert!(error.contains(&format!("plan {plan_id}")), "the stop names the plan: {error}");
    // The receiver is untouched, and monitoring says so loudly.
    assert_same_tree(&before, receiver.path());
    let check = b.check();
    assert_eq!(check.status.code(), Some(2), "{}", describe(&check));
    let line = String::from_utf8_lossy(&check.stdout);
    assert!(line.contains("CRITICAL") && line.contains("delete-threshold"), "{line}");
    // The plan a dry run makes now is the one replication refused.
    let dry = b.ctl(["sync", "--from", A, "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("sync --json");
    assert_eq!(dry["trees"][0]["plan_id"], plan_id.as_str(), "{dry}");

    // The operator confirms that exact plan: applied, and replication resumes.
    let confirmed = b.ctl(["sync", "--from", A, "--confirm", &plan_id]);
    assert!(confirmed.status.success(), "{}", describe(&confirmed));
    assert_rsync_clean(source.path(), receiver.path());
    wait_phase(&b, "following");
    let check = b.check();
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));

    // It follows the next change again.
    source.write("wmf-config/InitialiseSettings.php", "<?php\n");
    a.restart();
    wait_level(&a, &b);
    // One stop, one log line: nothing retried the refused plan in a loop.
    assert_eq!(b.log().matches("REPLICATION STOPPED").count(), 1, "{}", b.log());
}

#[test]
fn the_follower_reconnects_when_the_source_restarts() {
    let source = staging_tree(20);
    let receiver = TestTree::new();
    let (mut a, b) = follower(source.path(), receiver.path());
    wait_level(&a, &b);

    assert!(a.terminate(Duration::from_secs(10)).success());
    let retrying = wait_phase(&b, "retrying");
    assert!(!retrying["last_error"].as_str().unwrap().is_empty(), "{retrying}");
    let check = b.check();
    assert_eq!(check.status.code(), Some(1), "retrying is a WARNING: {}", describe(&check));

    source.write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'while you were away';\n");
    a.restart();
    wait_level(&a, &b);
    wait_phase(&b, "following");
}

#[test]
fn two_nodes_replicating_from_each_other_is_a_loop_and_nothing_is_synced() {
    let tree_a = staging_tree(20);
    let tree_b = staging_tree(8);
    tree_b.write("only-on-b.txt", "b\n");
    let (port_a, port_b) = (free_port(), free_port());
    let a = Daemon::start(A, tree_a.path(), port_a, &[peer(B, port_b), replicate_from(B)].concat());
    serve_bootstrap(&a);
    let b = Daemon::start(B, tree_b.path(), port_b, &[peer(A, port_a), replicate_from(A)].concat());
    serve_bootstrap(&b);
    let (_keep_a, before_a) = snapshot(tree_a.path());
    let (_keep_b, before_b) = snapshot(tree_b.path());

    for (daemon, other) in [(&a, B), (&b, A)] {
        let stopped = wait_phase(daemon, "stopped");
        let error = stopped["last_error"].as_str().unwrap();
        assert!(error.contains("replication loop") && error.contains(other), "{stopped}");
        assert!(error.contains("remove replicate_from"), "the stop says how to fix it: {error}");
        assert_eq!(stopped["stopped_guard"], "replication-loop");
        assert!(daemon.log().contains("REPLICATION STOPPED: replication loop"), "{}", daemon.log());
        let check = daemon.check();
        assert_eq!(check.status.code(), Some(2), "{}", describe(&check));
        let history = daemon.ctl(["history", "--json"]);
        assert_eq!(String::from_utf8_lossy(&history.stdout).trim(), "[]", "nothing synced: {}", describe(&history));
    }
    assert_same_tree(&before_a, tree_a.path());
    assert_same_tree(&before_b, tree_b.path());
}

#[test]
fn a_paused_replication_does_not_follow_until_resumed() {
    let source = staging_tree(20);
    let receiver = TestTree::new();
    let (mut a, mut b) = follower(source.path(), receiver.path());
    wait_level(&a, &b);

    let output = b.ctl(["replication", "pause", "--reason", "maintenance"]);
    assert!(output.status.success(), "{}", describe(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("paused") && printed.contains("maintenance"), "{printed}");
    // The pause survives a restart.
    b.restart();
    let paused = wait_phase(&b, "paused");
    assert_eq!(paused["paused"], true);
    assert!(!paused["changed_by"].as_str().unwrap().is_empty(), "{paused}");
    assert!(paused["changed"].is_object(), "{paused}");
    let level_root = root(&b);

    source.write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'changed while paused';\n");
    a.restart();
    let new_root = root(&a);
    assert_ne!(new_root, level_root);
    // B sees A's new root, and leaves it be.
    wait_until("B sees A's new root", FOLLOW_DEADLINE, || status(&b)["peers"][0]["trees"][0]["root"] == new_root);
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(2) {
        assert_eq!(root(&b), level_root, "a paused replication synced");
        assert_eq!(replication(&b)["phase"], "paused");
    }

    let output = b.ctl(["replication", "resume", "--reason", "done"]);
    assert!(output.status.success(), "{}", describe(&output));
    wait_level(&a, &b);
    wait_phase(&b, "following");
}

#[test]
fn pausing_a_node_that_does_not_replicate_is_an_error() {
    let tree = staging_tree(4);
    let a = Daemon::start(A, tree.path(), free_port(), &[]);
    assert_eq!(replication(&a)["phase"], "disabled");
    let output = a.ctl(["replication", "pause"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("replicate_from") && stderr.contains("hint:"), "{stderr}");
}

/// Every kind of change on A, with A left running: its watcher notices, its
/// root moves, and B follows within 5 s each time.
#[test]
fn every_kind_of_change_reaches_the_follower_within_seconds_without_a_restart() {
    let source = staging_tree(40);
    let receiver = TestTree::new();
    cp_a(source.path(), &receiver.path().join("t"));
    let receiver_root = receiver.path().join("t");
    let (a, b) = follower(source.path(), &receiver_root);
    wait_level(&a, &b);
    let root_a = source.path();
    type Change<'a> = Box<dyn Fn() + 'a>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "edit",
            Box::new(|| fs::write(root_a.join("wmf-config/CommonSettings.php"), "<?php $wgSitename = 'y';\n").unwrap()),
        ),
        ("add", Box::new(|| fs::write(root_a.join("wmf-config/New.php"), "<?php\n").unwrap())),
        ("delete", Box::new(|| fs::remove_file(root_a.join(php_file(3))).unwrap())),
        (
            "rename",
            Box::new(|| fs::rename(root_a.join(php_file(5)), root_a.join("php-1.44.0-wmf.1/Moved.php")).unwrap()),
        ),
        (
            "chmod",
            Box::new(|| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(root_a.join(php_file(6)), fs::Permissions::from_mode(0o600)).unwrap()
            }),
        ),
        (
            "symlink",
            Box::new(|| {
                fs::remove_file(root_a.join("w")).unwrap();
                std::os::unix::fs::symlink("php-1.45.0-wmf.2", root_a.join("w")).unwrap();
            }),
        ),
    ];
    for (what, change) in changes {
        let before = root(&a);
        change();
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let (now_a, now_b) = (root(&a), root(&b));
            if now_a != before && now_a == now_b {
                break;
            }
            assert!(Instant::now() < until, "{what} on A did not reach B within 5 s:\n{}\n--- A\n{}", b.log(), a.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_rsync_clean(source.path(), &receiver_root);
    }
    // B's watcher saw every file the syncs wrote; none of it is a local edit.
    assert!(!b.log().contains("local change"), "B's own writes were taken for local edits:\n{}", b.log());
}

/// Ten thousand new files written as fast as possible: B converges, with a
/// handful of syncs rather than one per file: at most one per window in which
/// A's watcher folds events into a new root (`MAX_DELAY`, 700 ms) while the
/// files are written, and one or two after. (On a loaded machine the writing
/// takes several seconds, and as many windows.)
#[test]
fn a_burst_of_ten_thousand_changes_converges_with_few_syncs() {
    let source = staging_tree(20);
    let receiver = TestTree::new();
    cp_a(source.path(), &receiver.path().join("t"));
    let receiver_root = receiver.path().join("t");
    let (a, b) = follower(source.path(), &receiver_root);
    wait_level(&a, &b);
    let writing = Instant::now();
    fs::create_dir_all(source.path().join("cache/l10n")).unwrap();
    for i in 0..10_000 {
        fs::write(source.path().join(format!("cache/l10n/msg-{i}.json")), format!("{{\"i\": {i}}}")).unwrap();
    }
    let windows = (writing.elapsed().as_millis() / 700) as usize + 1;
    let expected = stagingd_tests::root_of(source.path()).to_hex();
    wait_until("B converges on A after the burst", Duration::from_secs(60), || {
        root(&b).as_str() == Some(expected.as_str())
    });
    assert_rsync_clean(source.path(), &receiver_root);
    let history = b.ctl(["history", "--json"]);
    let records: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let syncs = records.as_array().unwrap().len();
    let most = windows.max(8) + 2;
    assert!((1..=most).contains(&syncs), "{syncs} syncs for one burst written in {windows} windows: {records}");
}
