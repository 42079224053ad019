//! Pool states and status, with real daemons: a new node is receive-only, only an
//! operator pools it, and only onto a tree that matches a serving master (or with
//! `--bootstrap` for the first one); `status --check` speaks the monitoring
//! plugin protocol.

use std::fs;

use stagingd_tests::{Daemon, TestTree, cp_a, describe, free_port};

fn sample_tree() -> TestTree {
    let tree = TestTree::new();
    tree.write("php-1.44/includes/Setup.php", "<?php // setup\n")
        .write("wmf-config/CommonSettings.php", "<?php $x = 1;\n")
        .symlink("w", "php-1.44");
    tree
}

fn pool_state(daemon: &Daemon) -> String {
    let json = daemon.status_json().expect("status --json");
    json["node"]["pool"]["state"].as_str().expect("pool state").to_owned()
}

#[test]
fn a_reimaged_node_is_receive_only_and_cannot_pool_itself_without_a_matching_master() {
    let tree = sample_tree();
    let mut node = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    assert_eq!(pool_state(&node), "receive-only");

    let refused = node.ctl(["pool", "serve", "--reason", "reimaged"]);
    assert_eq!(refused.status.code(), Some(3), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no reachable serving peer has the same tree"), "{stderr}");
    assert!(stderr.contains("hint: ") && stderr.contains("--bootstrap"), "{stderr}");
    assert_eq!(pool_state(&node), "receive-only");

    let bootstrapped = node.ctl(["pool", "serve", "--bootstrap", "--reason", "first master"]);
    assert!(bootstrapped.status.success(), "{}", describe(&bootstrapped));
    assert_eq!(pool_state(&node), "serve");

    node.restart();
    let json = node.status_json().unwrap();
    assert_eq!(json["node"]["pool"]["state"], "serve", "pool state survives a restart");
    assert_eq!(json["node"]["pool"]["reason"], "first master");

    // A corrupt state file must never leave a node serving.
    fs::write(node.state.join("pool.json"), b"{\"state\": \"serve\", \"who\": tru").unwrap();
    node.restart();
    assert_eq!(pool_state(&node), "receive-only");
    assert!(node.log().contains("POOL STATE UNREADABLE"), "the fallback is loud:\n{}", node.log());
}

#[test]
fn an_empty_tree_cannot_be_pooled_even_with_bootstrap() {
    let empty = TestTree::new();
    let node = Daemon::start("deploy2002", empty.path(), free_port(), &[]);
    let refused = node.ctl(["pool", "serve", "--bootstrap"]);
    assert_eq!(refused.status.code(), Some(3), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is empty"), "{}", describe(&refused));
    assert_eq!(pool_state(&node), "receive-only");
}

#[test]
fn pooling_to_serve_needs_a_serving_peer_with_the_same_tree() {
    let good = sample_tree();
    let (port_a, port_b) = (free_port(), free_port());
    let a = Daemon::start("deploy1002", good.path(), port_a, &[]);
    assert!(a.ctl(["pool", "serve", "--bootstrap"]).status.success());

    let copy = TestTree::new();
    cp_a(good.path(), &copy.path().join("tree"));
    let peer = vec!["--peer".to_owned(), format!("deploy1002=http://127.0.0.1:{port_a}")];
    let mut b = Daemon::start("deploy2002", &copy.path().join("tree"), port_b, &peer);
    let pooled = b.ctl(["pool", "serve", "--reason", "matches deploy1002"]);
    assert!(pooled.status.success(), "{}", describe(&pooled));
    assert!(String::from_utf8_lossy(&pooled.stdout).contains("receive-only → serve"), "{}", describe(&pooled));

    // Back to receive-only, change one byte: the trees differ and serve is refused.
    assert!(b.ctl(["pool", "receive-only"]).status.success());
    fs::write(copy.path().join("tree/wmf-config/CommonSettings.php"), "<?php $x = 2;\n").unwrap();
    b.restart();
    let refused = b.ctl(["pool", "serve"]);
    assert_eq!(refused.status.code(), Some(3), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("serves other content"), "{}", describe(&refused));
}

fn check(daemon: &Daemon) -> (Option<i32>, String) {
    let output = daemon.check();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 1, "--check prints one line: {stdout}");
    (output.status.code(), stdout)
}

#[test]
fn status_check_is_ok_warning_critical_or_unknown() {
    let tree_a = sample_tree();
    let tree_b = TestTree::new();
    tree_b.write("other.php", "<?php // another tree\n");
    let (port_a, port_b) = (free_port(), free_port());
    let a = Daemon::start("deploy1002", tree_a.path(), port_a, &[]);
    assert!(a.ctl(["pool", "serve", "--bootstrap"]).status.success());
    let (code, line) = check(&a);
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("STAGINGD OK - "), "{line}");

    // The free-space limits are the operator's: every real filesystem has
    // less than 100 % free.
    let limits = |warning: &str, critical: &str| {
        let output = a.ctl(["status", "--check", "--free-warning", warning, "--free-critical", critical]);
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (code, line) = limits("100", "0");
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("staging: free space") && line.contains("under 100%"), "{line}");
    let (code, line) = limits("100", "100%");
    assert_eq!(code, Some(2), "{line}");
    let (code, line) = limits("5", "10");
    assert_eq!(code, Some(3), "limits that make no sense are UNKNOWN: {line}");
    assert!(line.starts_with("STAGINGD UNKNOWN - --free-critical 10 is above --free-warning 5"), "{line}");

    // A peer that is not running: WARNING.
    let dead = format!("deploy9999=http://127.0.0.1:{}", free_port());
    let b = Daemon::start(
        "deploy2002",
        tree_b.path(),
        port_b,
        &["--peer".to_owned(), format!("deploy1002=http://127.0.0.1:{port_a}"), "--peer".to_owned(), dead],
    );
    let (code, line) = check(&b);
    assert_eq!(code, Some(1), "{line}");
    assert!(line.starts_with("STAGINGD WARNING - ") && line.contains("deploy9999"), "{line}");

    // Both serving, different content: CRITICAL.
    assert!(b.ctl(["pool", "serve", "--bootstrap"]).status.success());
    let (code, line) = check(&b);
    assert_eq!(code, Some(2), "{line}");
    assert!(line.starts_with("STAGINGD CRITICAL - ") && line.contains("deploy1002"), "{line}");

    // The table names both nodes, and --json carries the disagreement.
    let table = b.ctl(["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("deploy2002") && text.contains("deploy1002") && text.contains("deploy9999"), "{text}");
    let json = b.status_json().unwrap();
    let peer = json["peers"].as_array().unwrap().iter().find(|p| p["name"] == "deploy1002").unwrap().clone();
    assert_eq!(peer["reachable"], true);
    assert_eq!(peer["trees"][0]["in_sync"], false);
    assert_eq!(json["trees"][0]["files"], 1);

    // No daemon behind the socket: UNKNOWN, exit 3.
    let mut gone = b;
    gone.kill();
    let (code, line) = check(&gone);
    assert_eq!(code, Some(3), "{line}");
    assert!(line.starts_with("STAGINGD UNKNOWN - "), "{line}");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_daemon_is_never_displaced() {
    let tree = sample_tree();
    let mut node = Daemon::start("deploy1002", tree.path(), free_port(), &[]);
    node.kill();
    assert!(node.socket.exists(), "kill -9 leaves the socket file behind");
    node.restart();
    assert!(node.status_json().is_some());

    // A second daemon with the same admin socket (and its own state dir) refuses to start.
    let output = std::process::Command::new(stagingd_tests::bin("stagingd"))
        .args(["--name", "intruder", "--root"])
        .arg(tree.path())
        .arg("--state-dir")
        .arg(node.state.parent().unwrap().join("other-state"))
        .arg("--admin-socket")
        .arg(&node.socket)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("another stagingd is running"), "{}", describe(&output));
    assert!(node.status_json().is_some(), "the live daemon still answers");
}

#[test]
fn bad_configuration_names_the_key() {
    let tree = sample_tree();
    let dir = TestTree::new();
    let config = dir.path().join("stagingd.toml");
    fs::write(&config, format!("name = \"deploy1002\"\nroot = \"{}\"\nmax_delet_files = 3\n", tree.path().display()))
        .unwrap();
    let output =
        std::process::Command::new(stagingd_tests::bin("stagingd")).arg("--config").arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_delet_files"), "{}", describe(&output));
}
