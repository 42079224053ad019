//! The live manifest: every kind of local change reaches the daemon's manifest
//! (its root in `status`) without a restart, the daemon's own writes and its
//! reserved directory are not local edits, and a watcher that loses events
//! falls back to a full rescan that gets it right.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use stagingd_tests::{Daemon, TestTree, free_port, root_of, wait_until};

fn sample() -> TestTree {
    let tree = TestTree::new();
    for i in 0..20 {
        tree.write(&format!("php-1.44/includes/F{i}.php"), format!("<?php // {i}\n"));
    }
    tree.write("wmf-config/CommonSettings.php", "<?php $x = 1;\n").symlink("w", "php-1.44");
    tree
}

fn daemon_root(daemon: &Daemon) -> String {
    daemon.status_json().expect("status")["trees"][0]["root"].as_str().unwrap_or_default().to_owned()
}

/// Waits until the daemon's root is the tree's real root (as an offline scan sees it).
fn wait_converged(daemon: &Daemon, what: &str) {
    wait_until(&format!("the manifest follows: {what}"), Duration::from_secs(10), || {
        daemon_root(daemon) == root_of(&daemon.root).to_hex()
    });
}

#[test]
fn every_kind_of_local_change_reaches_the_manifest() {
    let tree = sample();
    let daemon = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    let json = daemon.status_json().unwrap();
    assert_eq!(json["trees"][0]["watch"]["state"], "watching", "{json}");
    let root = tree.path();

    type Change<'a> = Box<dyn Fn() + 'a>;
    let changes: Vec<(&str, Change)> = vec![
        ("edit", Box::new(|| fs::write(root.join("wmf-config/CommonSettings.php"), "<?php $x = 2;\n").unwrap())),
        ("add", Box::new(|| fs::write(root.join("wmf-config/New.php"), "<?php\n").unwrap())),
        ("delete", Box::new(|| fs::remove_file(root.join("php-1.44/includes/F3.php")).unwrap())),
        (
            "rename",
            Box::new(|| fs::rename(root.join("php-1.44/includes/F4.php"), root.join("php-1.44/F4-moved.php")).unwrap()),
        ),
        (
            "chmod",
            Box::new(|| {
                fs::set_permissions(root.join("php-1.44/includes/F5.php"), fs::Permissions::from_mode(0o600)).unwrap()
            }),
        ),
        (
            "symlink retarget",
            Box::new(|| {
                fs::remove_file(root.join("w")).unwrap();
                std::os::unix::fs::symlink("php-1.45", root.join("w")).unwrap();
            }),
        ),
        (
            "new directory with files",
            Box::new(|| {
                fs::create_dir_all(root.join("php-1.45/includes")).unwrap();
                for i in 0..30 {
                    fs::write(root.join(format!("php-1.45/includes/G{i}.php")), format!("{i}")).unwrap();
                }
            }),
        ),
        ("directory removed", Box::new(|| fs::remove_dir_all(root.join("php-1.44/includes")).unwrap())),
    ];
    for (what, change) in changes {
        let before = daemon_root(&daemon);
        change();
        wait_converged(&daemon, what);
        assert_ne!(daemon_root(&daemon), before, "{what} changed the root");
    }
}

#[test]
fn the_reserved_directory_is_not_a_local_edit() {
    let tree = sample();
    let daemon = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    fs::create_dir_all(tree.path().join(".stagingd/staging/x")).unwrap();
    fs::write(tree.path().join(".stagingd/staging/x/1"), "partial").unwrap();
    // A real change after it: once that shows, the reserved write has been seen too.
    fs::write(tree.path().join("wmf-config/CommonSettings.php"), "<?php $x = 3;\n").unwrap();
    wait_converged(&daemon, "an edit next to a write in .stagingd/");
    let json = daemon.status_json().unwrap();
    assert_eq!(json["trees"][0]["files"], 21, "nothing under .stagingd/ is in the manifest: {json}");
}

#[test]
fn a_watcher_that_loses_events_rescans_and_gets_it_right() {
    let tree = sample();
    // A queue of one event: any burst overflows it.
    let daemon =
        Daemon::start("deploy1002", tree.path(), free_port(), &["--watch-queue-events".to_owned(), "1".to_owned()]);
    for i in 0..500 {
        fs::write(tree.path().join(format!("burst-{i}.php")), format!("{i}")).unwrap();
    }
    wait_converged(&daemon, "a burst that overflows the event queue");
    assert!(daemon.log().contains("watch queue overflowed: rescanning the whole tree"), "{}", daemon.log());
    assert_eq!(daemon.status_json().unwrap()["trees"][0]["files"], 521);
}

#[test]
fn changes_seen_by_the_watcher_are_in_the_stat_cache_after_a_clean_stop() {
    let tree = sample();
    let mut daemon = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    let before = daemon_root(&daemon);
    fs::write(tree.path().join("wmf-config/CommonSettings.php"), "<?php $x = 42;\n").unwrap();
    wait_converged(&daemon, "an edit before the stop");
    assert_ne!(daemon_root(&daemon), before);
    let status = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", daemon.log());
    let cache = daemon.state.join("trees/staging/stat.cache");
    let saved = manifest::cache::load(&cache, &fs::canonicalize(tree.path()).unwrap()).unwrap().unwrap();
    assert_eq!(saved.root_hash(), root_of(tree.path()), "the cache holds the watcher's view, edit included");
}
