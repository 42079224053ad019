//! The incidents of DESIGN §6, told as stories with real daemons on loopback.
//! After every successful sync, `rsync -naci --delete` between the two roots
//! finds nothing to do.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use stagingd_tests::{
    Daemon, TestTree, assert_rsync_clean, assert_same_tree, cp_a, describe, free_port, root_of, wait_until,
};

/// A tree shaped like a staging tree, `files` PHP files across a few directories.
fn staging_tree(files: usize) -> TestTree {
    let tree = TestTree::new();
    for i in 0..files {
        let dir = ["includes", "includes/api", "resources/src", "maintenance"][i % 4];
        tree.write(
            &format!("php-1.44.0-wmf.1/{dir}/File{i}.php"),
            format!("<?php\n// file {i}\n{}\n", "x".repeat(i % 97)),
        );
    }
    tree.write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'x';\n")
        .write("dblists/all.dblist", "enwiki\ndewiki\n")
        .write("php-1.44.0-wmf.1/maintenance/run", "#!/bin/sh\n")
        .chmod("php-1.44.0-wmf.1/maintenance/run", 0o755)
        .symlink("w", "php-1.44.0-wmf.1")
        .symlink("docroot", "dangling/target");
    tree
}

/// Two masters that know each other: `a` serves `tree_a`, `b` holds `tree_b`.
struct Pair {
    a: Daemon,
    b: Daemon,
}

fn pair(tree_a: &Path, tree_b: &Path) -> Pair {
    let (port_a, port_b) = (free_port(), free_port());
    let peer = |name: &str, port: u16| vec!["--peer".to_owned(), format!("{name}=http://127.0.0.1:{port}")];
    let a = Daemon::start("deploy1002", tree_a, port_a, &peer("deploy2002", port_b));
    let b = Daemon::start("deploy2002", tree_b, port_b, &peer("deploy1002", port_a));
    Pair { a, b }
}

fn serve_bootstrap(daemon: &Daemon) {
    let output = daemon.ctl(["pool", "serve", "--bootstrap", "--reason", "test"]);
    assert!(output.status.success(), "{}", describe(&output));
}

/// `sync --json` on `daemon` with `args`; returns the exit code and the first
/// tree's result.
fn sync(daemon: &Daemon, args: &[&str]) -> (Option<i32>, serde_json::Value, Output) {
    let mut all = vec!["sync", "--json"];
    all.extend_from_slice(args);
    let output = daemon.ctl(&all);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("sync --json printed no JSON ({e}):\n{}", describe(&output)));
    let tree = json["trees"][0].clone();
    (output.status.code(), tree, output)
}

fn snapshot(tree: &Path) -> TestTree {
    let copy = TestTree::new();
    cp_a(tree, &copy.path().join("t"));
    copy
}

fn dir_of(snapshot: &TestTree) -> PathBuf {
    snapshot.path().join("t")
}

#[test]
fn a_reimaged_master_is_never_a_source() {
    let good = staging_tree(40);
    let reimaged = TestTree::new();
    let Pair { a, b } = pair(good.path(), reimaged.path());
    serve_bootstrap(&a);
    let before = snapshot(good.path());

    let (code, result, output) = sync(&a, &["--from", "deploy2002"]);
    assert_eq!(code, Some(3), "{}", describe(&output));
    assert_eq!(result["outcome"], "refused");
    assert_eq!(result["guard"], "source-not-serving");
    assert_same_tree(&dir_of(&before), good.path());
    assert_rsync_clean(&dir_of(&before), good.path());
    drop(b);
}

#[test]
fn an_empty_master_pooled_by_hand_is_refused_by_the_empty_source_and_delete_guards() {
    let good = staging_tree(40);
    let reimaged = TestTree::new();
    let Pair { a, mut b } = pair(good.path(), reimaged.path());
    serve_bootstrap(&a);
    // The daemon refuses to pool an empty tree; an operator edits the state file.
    let pooled_by_hand = r#"{"state": "serve", "who": "root", "reason": "by hand", "changed_unix": 1}"#;
    fs::write(b.state.join("pool.json"), pooled_by_hand).unwrap();
    b.restart();
    let before = snapshot(good.path());

    let (code, result, output) = sync(&a, &["--from", "deploy2002"]);
    assert_eq!(code, Some(3), "{}", describe(&output));
    assert_eq!(result["guard"], "source-empty", "{result}");

    // Not quite empty: one file. Syncing would delete nearly everything.
    fs::write(reimaged.path().join("index.php"), "<?php\n").unwrap();
    b.restart();
    let (code, result, output) = sync(&a, &["--from", "deploy2002"]);
    assert_eq!(code, Some(3), "{}", describe(&output));
    assert_eq!(result["guard"], "delete-threshold", "{result}");
    let plan_id = result["plan_id"].as_str().unwrap();
    assert_eq!(plan_id.len(), 16);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        result["hint"].as_str().unwrap_or_default().contains(&format!("--confirm {plan_id}"))
            || stderr.contains(plan_id),
        "the refusal gives the command that proceeds: {result}"
    );
    assert_same_tree(&dir_of(&before), good.path());
}

#[test]
fn a_plan_over_the_delete_threshold_applies_only_with_its_exact_id() {
    let source = staging_tree(60);
    let receiver = TestTree::new();
    let Pair { mut a, b } = pair(source.path(), receiver.path());
    serve_bootstrap(&a);
    // The full copy's plan names each new subtree once; its dry run still
    // itemizes every entry: 63 files, 8 directories, 2 symlinks.
    let (code, _, output) = sync(&b, &["--from", "deploy1002", "--dry-run"]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let count = |op: &str| json["plan"].as_array().unwrap().iter().filter(|item| item["op"] == op).count();
    assert_eq!((count("create"), count("mkdir"), count("symlink")), (63, 8, 2), "{json}");
    let (code, result, output) = sync(&b, &["--from", "deploy1002"]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(result["outcome"], "applied");
    assert_rsync_clean(source.path(), receiver.path());

    // Delete 30% of the source's files.
    let mut deleted = 0;
    for i in (0..60).step_by(3) {
        let dir = ["includes", "includes/api", "resources/src", "maintenance"][i % 4];
        fs::remove_file(source.path().join(format!("php-1.44.0-wmf.1/{dir}/File{i}.php"))).unwrap();
        deleted += 1;
    }
    assert_eq!(deleted, 20);
    a.restart();
    let before = snapshot(receiver.path());

    let (code, refused, output) = sync(&b, &["--from", "deploy1002"]);
    assert_eq!(code, Some(3), "{}", describe(&output));
    assert_eq!(refused["guard"], "delete-threshold");
    assert!(refused["message"].as_str().unwrap().contains("deletes 20 of"), "{refused}");
    let plan_id = refused["plan_id"].as_str().unwrap().to_owned();
    assert_same_tree(&dir_of(&before), receiver.path());

    // The dry run shows the plan (what will be deleted) with the same id, and
    // says the guard would refuse it.
    let (code, dry, output) = sync(&b, &["--from", "deploy1002", "--dry-run"]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(dry["outcome"], "dry-run");
    assert_eq!(dry["plan_id"], plan_id.as_str());
    assert!(dry["message"].as_str().unwrap().contains("delete-threshold"), "{dry}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let deletes = json["plan"].as_array().unwrap().iter().filter(|item| item["op"] == "delete").count();
    assert_eq!(deletes, 20, "the itemized plan lists every deletion");

    // A stale id (the source changed since) is refused.
    fs::remove_file(source.path().join("dblists/all.dblist")).unwrap();
    a.restart();
    let (code, stale, _) = sync(&b, &["--from", "deploy1002", "--confirm", &plan_id]);
    assert_eq!(code, Some(3));
    assert_eq!(stale["guard"], "delete-threshold");
    assert!(stale["message"].as_str().unwrap().contains("is not this plan"), "{stale}");
    let new_id = stale["plan_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, plan_id);
    assert_same_tree(&dir_of(&before), receiver.path());

    // Confirmed with the current id: applied.
    let (code, applied, output) = sync(&b, &["--from", "deploy1002", "--confirm", &new_id]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(applied["outcome"], "applied");
    assert_rsync_clean(source.path(), receiver.path());
}

#[test]
fn a_source_that_is_behind_needs_allow_behind() {
    let source = staging_tree(20);
    let receiver = TestTree::new();
    let Pair { mut a, b } = pair(source.path(), receiver.path());
    serve_bootstrap(&a);
    let old = snapshot(source.path());
    assert_eq!(sync(&b, &["--from", "deploy1002"]).0, Some(0));

    // The source moves forward, the receiver follows.
    fs::write(source.path().join("wmf-config/CommonSettings.php"), "<?php $wgSitename = 'y';\n").unwrap();
    a.restart();
    assert_eq!(sync(&b, &["--from", "deploy1002"]).0, Some(0));

    // The source goes back to the old tree: the receiver had that root before.
    fs::remove_dir_all(source.path().join("wmf-config")).unwrap();
    cp_a(&dir_of(&old).join("wmf-config"), &source.path().join("wmf-config"));
    let mtime = fs::metadata(dir_of(&old)).unwrap().modified().unwrap();
    fs::File::open(source.path()).unwrap().set_modified(mtime).unwrap();
    a.restart();
    let (code, result, output) = sync(&b, &["--from", "deploy1002"]);
    assert_eq!(code, Some(3), "{}", describe(&output));
    assert_eq!(result["guard"], "source-behind", "{result}");
    assert!(result["hint"].as_str().unwrap_or_default().contains("--allow-behind"), "{result}");
    let (code, result, output) = sync(&b, &["--from", "deploy1002", "--allow-behind"]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(result["outcome"], "applied");
    assert_rsync_clean(source.path(), receiver.path());
}

#[test]
fn a_second_sync_while_one_runs_is_refused_with_who_holds_the_lock() {
    let source = staging_tree(10);
    let receiver = TestTree::new();
    let Pair { a, b } = pair(source.path(), receiver.path());
    serve_bootstrap(&a);
    // Freeze the source: a sync then holds the receiver's lock while it waits
    // (up to the 2 s peer timeout) for the source's status. Two syncs started
    // together: whichever takes the lock second must be refused, never queued.
    let stop = Command::new("kill").args(["-STOP", &a.pid().to_string()]).status().unwrap();
    assert!(stop.success());
    let start = |reason: &str| {
        Command::new(stagingd_tests::bin("stagingctl"))
            .arg("--admin-socket")
            .arg(&b.socket)
            .args(["sync", "--json", "--from", "deploy1002", "--tree", "staging", "--reason", reason])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start("backport 111"), start("backport 222"));
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    let resumed = Command::new("kill").args(["-CONT", &a.pid().to_string()]).status().unwrap();
    assert!(resumed.success());
    let result = |output: &Output| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()["trees"][0].clone()
    };
    let (busy, other, holder_reason) = if first.status.code() == Some(3) {
        (result(&first), &second, "backport 222")
    } else {
        (result(&second), &first, "backport 111")
    };
    assert_eq!(busy["guard"], "busy", "one of the two is refused: {busy}\n{}", describe(other));
    let message = busy["message"].as_str().unwrap();
    assert!(message.contains(holder_reason) && message.contains("sync by"), "names who holds the lock: {message}");
    assert_eq!(other.status.code(), Some(1), "the other fails on the frozen source: {}", describe(other));
}

#[test]
fn a_tree_copied_into_an_empty_master_is_watched_all_the_way_down() {
    // The copy arrives as whole subtrees renamed into place: the receiver's
    // watcher must still see edits deep inside them afterwards.
    let source = staging_tree(30);
    let receiver = TestTree::new();
    let Pair { a, b } = pair(source.path(), receiver.path());
    serve_bootstrap(&a);
    let (code, tree, output) = sync(&b, &["--from", "deploy1002"]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_eq!(tree["outcome"], "applied", "{tree}");
    assert_rsync_clean(source.path(), receiver.path());

    fs::write(receiver.path().join("php-1.44.0-wmf.1/includes/api/File1.php"), "<?php // edited by hand\n").unwrap();
    fs::write(receiver.path().join("php-1.44.0-wmf.1/resources/src/New.js"), "// new\n").unwrap();
    fs::create_dir(receiver.path().join("php-1.44.0-wmf.1/maintenance/more")).unwrap();
    fs::write(receiver.path().join("php-1.44.0-wmf.1/maintenance/more/x.php"), "<?php\n").unwrap();
    let on_disk = root_of(receiver.path()).to_hex();
    let mut seen = String::new();
    wait_until("b's watcher has every edit", Duration::from_secs(20), || {
        seen = b
            .status_json()
            .map(|json| json["trees"][0]["root"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        seen == on_disk
    });
}

#[test]
fn rollback_restores_the_previous_tree_exactly() {
    let source = staging_tree(30);
    let receiver = TestTree::new();
    let Pair { mut a, b } = pair(source.path(), receiver.path());
    serve_bootstrap(&a);
    assert_eq!(sync(&b, &["--from", "deploy1002"]).0, Some(0));
    let before = snapshot(receiver.path());

    // A bad change on the source: content, a deletion, an addition, a mode, a symlink.
    fs::write(source.path().join("wmf-config/CommonSettings.php"), "<?php broken(\n").unwrap();
    fs::remove_file(source.path().join("dblists/all.dblist")).unwrap();
    fs::write(source.path().join("wmf-config/New.php"), "<?php // new\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(source.path().join("php-1.44.0-wmf.1/maintenance/run"), fs::Permissions::from_mode(0o700))
        .unwrap();
    fs::remove_file(source.path().join("w")).unwrap();
    std::os::unix::fs::symlink("php-1.45.0-wmf.2", source.path().join("w")).unwrap();
    a.restart();
    let (code, _, output) = sync(&b, &["--from", "deploy1002"]);
    assert_eq!(code, Some(0), "{}", describe(&output));
    assert_rsync_clean(source.path(), receiver.path());

    let output = b.ctl(["rollback", "--reason", "bad deploy"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_same_tree(&dir_of(&before), receiver.path());
    assert_rsync_clean(&dir_of(&before), receiver.path());

    let history = b.ctl(["history", "--json"]);
    assert!(history.status.success(), "{}", describe(&history));
    let records: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let kinds: Vec<&str> = records.as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rollback", "sync", "sync"], "newest first: {records}");
}

#[test]
fn verify_reports_files_that_no_longer_match() {
    let source = staging_tree(10);
    let receiver = TestTree::new();
    let Pair { a, b } = pair(source.path(), receiver.path());
    serve_bootstrap(&a);
    assert_eq!(sync(&b, &["--from", "deploy1002"]).0, Some(0));
    assert_rsync_clean(source.path(), receiver.path());
    let clean = b.ctl(["verify"]);
    assert!(clean.status.success(), "{}", describe(&clean));
    fs::write(receiver.path().join("wmf-config/CommonSettings.php"), "<?php tampered();\n").unwrap();
    let dirty = b.ctl(["verify"]);
    assert_eq!(dirty.status.code(), Some(1), "{}", describe(&dirty));
    assert!(String::from_utf8_lossy(&dirty.stdout).contains("wmf-config/CommonSettings.php"), "{}", describe(&dirty));
}

/// A filesystem too small for the plan: a tmpfs with few inodes.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, inodes: u32) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size=8m,nr_inodes={inodes}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "this test mounts a small tmpfs and needs root (CI runs as root)");
        SmallFs(dir.to_owned())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn too_few_inodes_is_refused_before_anything_is_written() {
    let source = staging_tree(200);
    let holder = TestTree::new();
    let small = holder.path().join("small");
    fs::create_dir(&small).unwrap();
    let _fs = SmallFs::mount(&small, 64);
    let before = snapshot(&small);
    let Pair { a, b } = pair(source.path(), &small);
    serve_bootstrap(&a);
    let (code, result, output) = sync(&b, &["--from", "deploy1002"]);
    assert_eq!(code, Some(3), "{}", describe(&output));
    assert_eq!(result["guard"], "capacity", "{result}");
    assert!(result["message"].as_str().unwrap().contains("inodes"), "{result}");
    assert_same_tree(&dir_of(&before), &small);
    let staging = small.join(".stagingd/staging");
    assert!(!staging.exists() || fs::read_dir(&staging).unwrap().count() == 0);
}

#[test]
fn kill_9_during_a_sync_leaves_the_old_or_the_new_tree_never_a_mix() {
    let source = staging_tree(3000);
    let receiver = TestTree::new();
    let Pair { a, mut b } = pair(source.path(), receiver.path());
    serve_bootstrap(&a);
    let empty = snapshot(receiver.path());
    let journal = b.state.join("trees/staging/journal");
    let staging = receiver.path().join(".stagingd/staging");

    // Kill at observable points: while content is being staged, once the switch
    // has begun (journal written), and when the first final names have appeared.
    type Point = Box<dyn Fn() -> bool>;
    let staging_probe = staging.clone();
    let journal_probe = journal.clone();
    let journal_probe2 = journal.clone();
    let first_file = receiver.path().join("dblists/all.dblist");
    let points: Vec<(&str, Point)> = vec![
        ("staging", Box::new(move || fs::read_dir(&staging_probe).is_ok_and(|mut d| d.next().is_some()))),
        ("journal", Box::new(move || journal_probe.exists())),
        ("switching", Box::new(move || journal_probe2.exists() && first_file.exists())),
    ];
    for (name, reached) in points {
        let mut child = Command::new(stagingd_tests::bin("stagingctl"))
            .arg("--admin-socket")
            .arg(&b.socket)
            .args(["sync", "--from", "deploy1002"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut hit = false;
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < until {
            if reached() {
                hit = true;
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
        }
        b.kill();
        let _ = child.wait();
        b.restart();
        let now = stagingd_tests::root_of(receiver.path());
        let (old, new) = (stagingd_tests::root_of(&dir_of(&empty)), stagingd_tests::root_of(source.path()));
        assert!(now == old || now == new, "after kill -9 at {name} (reached: {hit}) the tree is neither old nor new");
        let leftovers = fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
        assert_eq!(leftovers, 0, "no staged files left after recovery ({name})");
        assert!(!journal.exists(), "no journal left after recovery ({name})");
        if now == new {
            let differences = stagingd_tests::rsync_differences(source.path(), receiver.path());
            assert!(differences.is_empty(), "after kill -9 at {name} (reached: {hit}): {differences:?}");
            // Start over from empty for the next kill point.
            for entry in fs::read_dir(receiver.path()).unwrap() {
                let entry = entry.unwrap();
                if entry.file_name() != ".stagingd" {
                    let path = entry.path();
                    if fs::symlink_metadata(&path).unwrap().is_dir() {
                        fs::remove_dir_all(&path).unwrap();
                    } else {
                        fs::remove_file(&path).unwrap();
                    }
                }
            }
            b.restart();
        }
    }
}
