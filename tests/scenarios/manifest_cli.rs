//! `stagingctl manifest` compares trees across hosts without a daemon: a faithful
//! copy has the same root, and every kind of change shows.

use std::fs;
use std::path::Path;

use stagingd_tests::{TestTree, cp_a, describe, run, stagingctl};

fn root_of(dir: &Path) -> String {
    let output = run(stagingctl(["manifest", "--json"]).arg(dir));
    assert!(output.status.success(), "{}", describe(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    json["root"].as_str().expect("root is a string").to_owned()
}

fn sample() -> TestTree {
    let tree = TestTree::new();
    tree.write("php-1.44.0-wmf.1/includes/Setup.php", "<?php\n// setup\n")
        .write("php-1.44.0-wmf.1/maintenance/run", "#!/bin/sh\nexec php \"$@\"\n")
        .chmod("php-1.44.0-wmf.1/maintenance/run", 0o755)
        .write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'x';\n")
        .write("dblists/all.dblist", "enwiki\ndewiki\n")
        .symlink("w", "php-1.44.0-wmf.1")
        .symlink("docroot-link", "wmf-config/CommonSettings.php");
    tree
}

#[test]
fn a_cp_a_copy_has_the_same_root_and_every_change_shows() {
    let original = sample();
    let base = root_of(original.path());
    let scratch = TestTree::new();

    // Each change is made on a fresh `cp -a` copy, which must first match.
    type Change = Box<dyn Fn(&Path)>;
    let changes: Vec<(&str, Change)> = vec![
        ("one-byte change", Box::new(|d| fs::write(d.join("dblists/all.dblist"), "enwiki\ndewikj\n").unwrap())),
        (
            "mode change",
            Box::new(|d| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(d.join("wmf-config/CommonSettings.php"), fs::Permissions::from_mode(0o600)).unwrap()
            }),
        ),
        (
            "symlink target change",
            Box::new(|d| {
                fs::remove_file(d.join("w")).unwrap();
                std::os::unix::fs::symlink("php-1.45.0-wmf.2", d.join("w")).unwrap();
            }),
        ),
        ("rename", Box::new(|d| fs::rename(d.join("dblists/all.dblist"), d.join("dblists/all2.dblist")).unwrap())),
        ("added empty directory", Box::new(|d| fs::create_dir(d.join("php-1.44.0-wmf.1/cache")).unwrap())),
    ];
    for (i, (what, change)) in changes.iter().enumerate() {
        let copy = scratch.path().join(format!("copy-{i}"));
        cp_a(original.path(), &copy);
        assert_eq!(root_of(&copy), base, "a cp -a copy must have the same root");
        change(&copy);
        assert_ne!(root_of(&copy), base, "{what} must change the root");
    }
}

#[test]
fn human_output_and_json_agree() {
    let tree = sample();
    let output = run(stagingctl(["manifest"]).arg(tree.path()));
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let root = root_of(tree.path());
    assert!(text.contains(&format!("root      {root}")), "{text}");
    assert!(text.contains("files     4 "), "{text}");
    assert!(text.contains("symlinks  2"), "{text}");

    let json: serde_json::Value =
        serde_json::from_slice(&run(stagingctl(["manifest", "--json"]).arg(tree.path())).stdout).unwrap();
    for key in
        ["root", "files", "dirs", "symlinks", "bytes", "scan_seconds", "files_hashed", "files_reused", "complete"]
    {
        assert!(json.get(key).is_some(), "--json lacks {key}: {json}");
    }
    assert_eq!(json["dirs"], 5);
    assert_eq!(json["complete"], true);
}

#[test]
fn the_cache_makes_a_rescan_read_nothing_and_a_corrupt_cache_is_discarded() {
    let tree = sample();
    let state = TestTree::new();
    let cache = state.path().join("stat.cache");
    let json = |extra: &[&str]| -> serde_json::Value {
        let output = run(stagingctl(["manifest", "--json", "--cache"]).arg(&cache).args(extra).arg(tree.path()));
        assert!(output.status.success(), "{}", describe(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let first = json(&[]);
    assert_eq!(first["cache"], "created");
    // Files written within the settle window are re-read once more: poll until a
    // scan finds every file settled, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let again = json(&[]);
        assert_eq!(again["root"], first["root"]);
        if again["files_hashed"] == 0 {
            assert_eq!(again["files_reused"], 4);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the stat cache never took effect: {again}");
    }
    fs::write(&cache, b"garbage that is not a cache at all, long enough to have a checksum").unwrap();
    let output = run(stagingctl(["manifest", "--json", "--cache"]).arg(&cache).arg(tree.path()));
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: stat cache") && stderr.contains("not usable"), "{stderr}");
    let after: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(after["root"], first["root"]);
    assert_eq!(after["files_hashed"], 4, "a discarded cache means every file is read");
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let output = run(&mut stagingctl(["manifest", "/nonexistent/srv/mediawiki-staging"]));
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: cannot scan /nonexistent/srv/mediawiki-staging"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
}

#[test]
fn unreadable_files_are_named_and_the_scan_says_it_is_incomplete() {
    let tree = sample();
    tree.write("private/PrivateSettings.php", "<?php $secret = 1;\n").chmod("private/PrivateSettings.php", 0o000);
    // Root reads everything: run the scan as an unprivileged user when we are root.
    let mut command = stagingctl(["manifest", "--json"]);
    command.arg(tree.path());
    if is_root() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        fs::set_permissions(tree.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for parent in tree.path().ancestors().skip(1) {
            let mode = fs::metadata(parent).unwrap().permissions().mode();
            assert!(mode & 0o001 != 0, "{} must be traversable by others for this test", parent.display());
        }
        command.uid(65534).gid(65534);
    }
    let output = run(&mut command);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["complete"], false);
    assert_eq!(json["skipped"][0]["path"], "private/PrivateSettings.php");
    assert_eq!(json["skipped"][0]["reason"], "unreadable");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("private/PrivateSettings.php: unreadable"), "{stderr}");
    assert!(stderr.contains("left out of the manifest"), "{stderr}");
    assert!(stderr.contains("does not cover them"), "{stderr}");
}

fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}
