//! The real `stagingctl` binary against the admin socket: no daemon at all, a
//! daemon that never answers, and a tiny fake `Admin` server (tonic on a unix
//! socket in a temp dir) returning canned answers. The real daemon and its
//! end-to-end scenarios are tested in the workspace's `tests/`.

mod common;

use std::path::PathBuf;

use common::{Canned, FakeDaemon, run, stagingctl};
use proto::v1::{
    NodeStatus, PeerStatus, PeerView, PoolState, Readiness, ReplicationPhase, ReplicationState, SetPoolStateRequest,
    TreeAgreement, TreeStatus, WatchState,
};
use tonic::Status;

// ---------------------------------------------------------------------------
// No daemon
// ---------------------------------------------------------------------------

fn missing_socket() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    (dir, socket)
}

#[test]
fn check_without_a_daemon_is_one_unknown_line_and_exit_3() {
    let (_dir, socket) = missing_socket();
    let (code, stdout, stderr) = run(stagingctl().arg("--admin-socket").arg(&socket).args(["status", "--check"]));
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("STAGINGD UNKNOWN - cannot reach stagingd at {}: No such file or directory\n", socket.display())
    );
    assert_eq!(stderr, "");
}

#[test]
fn status_without_a_daemon_exits_1_with_the_hint() {
    let (_dir, socket) = missing_socket();
    // The socket comes from the environment this time.
    let (code, stdout, stderr) = run(stagingctl().env("STAGINGD_ADMIN_SOCKET", &socket).arg("status"));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "error: cannot reach stagingd at {}: No such file or directory\n\
             hint: is stagingd running? (systemctl status stagingd) — or pass --admin-socket / set STAGINGD_ADMIN_SOCKET\n",
            socket.display()
        )
    );
}

#[test]
fn pool_without_a_daemon_exits_1_with_the_hint() {
    let (_dir, socket) = missing_socket();
    let (code, _, stderr) =
        run(stagingctl().arg("--admin-socket").arg(&socket).args(["pool", "serve", "--reason", "test"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.starts_with("error: cannot reach stagingd at "), "{stderr}");
    assert!(stderr.contains("\nhint: is stagingd running?"), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "one error line and one hint, no trace: {stderr}");
}

#[test]
fn default_socket_is_the_documented_one() {
    let output = stagingctl().args(["status", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("/run/stagingd/admin.sock") && help.contains("STAGINGD_ADMIN_SOCKET"), "{help}");
}

#[test]
fn a_daemon_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    // Accepts connections and holds them open without speaking HTTP/2.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(2) {
            held.push(stream);
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    });

    let (code, stdout, stderr) =
        run(stagingctl().arg("--admin-socket").arg(&socket).args(["--timeout", "300ms", "status"]));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("did not answer") && stderr.contains("300ms"), "{stderr}");
    assert!(stderr.contains("\nhint: "), "{stderr}");

    let (code, stdout, _) =
        run(stagingctl().arg("--admin-socket").arg(&socket).args(["--timeout", "300ms", "status", "--check"]));
    assert_eq!(code, Some(3), "{stdout}");
    assert!(stdout.starts_with("STAGINGD UNKNOWN - stagingd at ") && stdout.contains("did not answer"), "{stdout}");
    drop(holder);
}

// ---------------------------------------------------------------------------
// Against a fake daemon
// ---------------------------------------------------------------------------

fn tree(name: &str, root_byte: u8) -> TreeStatus {
    TreeStatus {
        name: name.into(),
        readiness: Readiness::Ready as i32,
        root_hash: vec![root_byte; 32],
        files: 184_935,
        dirs: 12_000,
        symlinks: 150,
        bytes: 8_800_000_000,
        fs_free_bytes: 100 << 30,
        fs_free_inodes: 5_000_000,
        fs_total_bytes: 200 << 30,
        fs_total_inodes: 10_000_000,
        manifest_updated_unix: 1_714_557_000,
        watch_state: WatchState::Watching as i32,
        last_scan_unix: 1_714_540_000,
        last_scan_millis: 412,
        ..TreeStatus::default()
    }
}

fn serving_peer(name: &str, root_byte: u8, ours: u8) -> PeerView {
    PeerView {
        name: name.into(),
        address: "http://127.0.0.1:7421".into(),
        reachable: true,
        error: String::new(),
        status: Some(PeerStatus {
            node: name.into(),
            pool_state: PoolState::Serve as i32,
            trees: vec![tree("staging", root_byte)],
            now_unix: 1_714_557_600,
            version: "0.1.0".into(),
            replicating_from: String::new(),
        }),
        trees: vec![TreeAgreement { tree: "staging".into(), in_sync: root_byte == ours }],
        rtt_millis: 2,
    }
}

/// A serving `deploy1002` with one tree whose root is 32 × `root_byte`.
fn node(root_byte: u8, peers: Vec<PeerView>) -> NodeStatus {
    NodeStatus {
        local: Some(PeerStatus {
            node: "deploy1002".into(),
            pool_state: PoolState::Serve as i32,
            trees: vec![tree("staging", root_byte)],
            now_unix: 1_714_557_600,
            version: "0.1.0".into(),
            replicating_from: String::new(),
        }),
        pool_reason: "bootstrap".into(),
        pool_who: "alice".into(),
        pool_changed_unix: 1_714_550_000,
        admin_socket: "/run/stagingd/admin.sock".into(),
        listen_address: "127.0.0.1:7420".into(),
        replication: Some(ReplicationState { phase: ReplicationPhase::Disabled as i32, ..Default::default() }),
        peers,
        locks: Vec::new(),
        started_unix: 1_714_540_000,
    }
}

fn check(status: NodeStatus) -> (Option<i32>, String) {
    let daemon = FakeDaemon::start(Canned { status, ..Canned::default() });
    let (code, stdout, stderr) = run(daemon.stagingctl().args(["status", "--check"]));
    assert_eq!(stderr, "");
    assert_eq!(stdout.lines().count(), 1, "exactly one line: {stdout}");
    (code, stdout)
}

#[test]
fn check_is_ok_when_serving_masters_agree() {
    let (code, stdout) = check(node(0xab, vec![serving_peer("deploy2002", 0xab, 0xab)]));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with("STAGINGD OK - deploy1002 serve: staging ready abababababab; 1/1 peers reachable | "));
    assert!(stdout.contains("staging_files=184935;;;0"), "{stdout}");
}

#[test]
fn check_warns_when_a_peer_is_unreachable() {
    let mut down = serving_peer("deploy2003", 0xab, 0xab);
    down.reachable = false;
    down.status = None;
    down.error = "connection refused".into();
    let (code, stdout) = check(node(0xab, vec![serving_peer("deploy2002", 0xab, 0xab), down]));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.starts_with("STAGINGD WARNING - peer deploy2003 unreachable: connection refused | "), "{stdout}");
}

#[test]
fn check_is_critical_when_serving_masters_differ() {
    let (code, stdout) = check(node(0xab, vec![serving_peer("deploy2002", 0xcd, 0xab)]));
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stdout.starts_with(
            "STAGINGD CRITICAL - staging: root abababababab differs from serving peer deploy2002 (cdcdcdcdcdcd) | "
        ),
        "{stdout}"
    );
}

#[test]
fn status_json_is_the_documented_document() {
    let daemon = FakeDaemon::start(Canned {
        status: node(0xab, vec![serving_peer("deploy2002", 0xcd, 0xab)]),
        ..Canned::default()
    });
    let (code, stdout, stderr) = run(daemon.stagingctl().args(["status", "--json"]));
    assert_eq!(code, Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(doc["format"], 1);
    assert_eq!(doc["node"]["name"], "deploy1002");
    assert_eq!(doc["node"]["pool"]["state"], "serve");
    assert_eq!(doc["node"]["pool"]["who"], "alice");
    assert_eq!(doc["node"]["pool"]["changed"]["unix"], 1_714_550_000);
    assert_eq!(doc["node"]["pool"]["changed"]["rfc3339"], "2024-05-01T07:53:20Z");
    let tree = &doc["trees"][0];
    assert_eq!(tree["name"], "staging");
    assert_eq!(tree["readiness"], "ready");
    assert_eq!(tree["root"], "ab".repeat(32));
    assert_eq!(tree["files"], 184_935);
    assert_eq!(tree["filesystem"]["free_bytes_percent"], 50.0);
    assert_eq!(tree["watch"]["state"], "watching");
    assert_eq!(tree["last_sync"], serde_json::Value::Null);
    let peer = &doc["peers"][0];
    assert_eq!(peer["reachable"], true);
    assert_eq!(peer["error"], serde_json::Value::Null);
    assert_eq!(peer["pool_state"], "serve");
    assert_eq!(peer["trees"][0]["root"], "cd".repeat(32));
    assert_eq!(peer["trees"][0]["in_sync"], false);
    assert_eq!(doc["replication"]["phase"], "disabled");
    assert_eq!(doc["locks"], serde_json::json!([]));
    assert_eq!(doc["check"]["state"], "CRITICAL");
    assert_eq!(doc["check"]["exit_code"], 2);
}

#[test]
fn status_table_names_the_node_and_its_trees() {
    let daemon = FakeDaemon::start(Canned {
        status: node(0xab, vec![serving_peer("deploy2002", 0xab, 0xab)]),
        ..Canned::default()
    });
    let (code, stdout, stderr) = run(daemon.stagingctl().arg("status"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("node         deploy1002 (stagingd 0.1.0"), "{stdout}");
    assert!(stdout.contains("\nstaging  ready  abababababab  184,935"), "{stdout}");
    assert!(stdout.contains("\ncheck        OK - "), "{stdout}");
}

#[test]
fn pool_change_prints_the_transition_and_records_who_and_why() {
    let daemon = FakeDaemon::start(Canned { status: node(0xab, Vec::new()), ..Canned::default() });
    let (code, stdout, stderr) = run(daemon.stagingctl().env("SUDO_USER", "carol").args([
        "pool",
        "serve",
        "--bootstrap",
        "--reason",
        "first master",
    ]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "deploy1002: receive-only → serve (reason: first master)\n  pooled as serve: bootstrap\n");
    assert_eq!(
        daemon.seen().pool,
        [SetPoolStateRequest {
            state: PoolState::Serve as i32,
            reason: "first master".into(),
            bootstrap: true,
            who: "carol".into()
        }]
    );
}

#[test]
fn pool_refused_by_the_daemon_exits_3_with_its_hint() {
    let refusal = "no reachable serving peer has this node's root for tree staging\n\
                   hint: stagingctl sync --from deploy2002, then stagingctl pool serve";
    let daemon = FakeDaemon::start(Canned {
        status: node(0xab, Vec::new()),
        pool_refusal: Some(Status::failed_precondition(refusal)),
        ..Canned::default()
    });
    let (code, stdout, stderr) = run(daemon.stagingctl().args(["pool", "serve", "--reason", "r"]));
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "error: no reachable serving peer has this node's root for tree staging\n\
         hint: stagingctl sync --from deploy2002, then stagingctl pool serve\n"
    );
}

#[test]
fn pool_refused_without_a_hint_gets_one() {
    let daemon = FakeDaemon::start(Canned {
        status: node(0xab, Vec::new()),
        pool_refusal: Some(Status::failed_precondition("no serving peer matches")),
        ..Canned::default()
    });
    let (code, _, stderr) = run(daemon.stagingctl().args(["pool", "serve"]));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.starts_with("error: no serving peer matches\nhint: make the tree match a serving peer"), "{stderr}");
    assert!(stderr.contains("stagingctl pool serve --bootstrap --reason"), "{stderr}");
}

#[test]
fn pool_rejects_unknown_states_as_usage_errors() {
    let (code, _, stderr) = run(stagingctl().args(["pool", "pooled"]));
    assert_eq!(code, Some(2), "{stderr}");
}
