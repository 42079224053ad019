//! Running under systemd: the unit in `systemd/` passes `systemd-analyze verify`,
//! its sysusers/tmpfiles files make the user, group and directories, and the
//! daemon speaks the notify protocol — `READY=1` only once every tree's first
//! scan is done, `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stagingd_tests::{TestTree, bin, describe, run, stagingctl};

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// A tool from the `systemd` package, or a failure that says how to get it.
fn systemd_tool(name: &str) -> Command {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().expect("run sh");
    assert!(found.status.success(), "{name} is missing: apt-get install systemd (.ci/run installs it)");
    Command::new(name)
}

/// `systemd-analyze verify` on a copy of the unit whose `ExecStart=` points at
/// the binary cargo built (verify checks that the binary exists). A unit file
/// warning (`stagingd.service:LINE: ...`) fails the test as an error would.
fn verify(unit_text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("stagingd.service");
    std::fs::write(&unit, unit_text).unwrap();
    let output = run(systemd_tool("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .env("SYSTEMD_LOG_COLOR", "0"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("stagingd.service")).collect();
    (output.status.success() && warnings.is_empty(), describe(&output))
}

fn unit_for_test() -> String {
    let text = std::fs::read_to_string(systemd_dir().join("stagingd.service")).unwrap();
    let exec = "ExecStart=/usr/bin/stagingd ";
    assert!(text.contains(exec), "the unit starts /usr/bin/stagingd");
    text.replace(exec, &format!("ExecStart={} ", bin("stagingd").display()))
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let text = unit_for_test();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "User=stagingd",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/stagingd",
        "RuntimeDirectory=stagingd",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=\n",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "TimeoutStopSec=",
        " --config /etc/stagingd/stagingd.toml",
    ] {
        assert!(text.contains(key), "stagingd.service lacks {key:?}");
    }
    let (ok, output) = verify(&text);
    assert!(ok, "systemd-analyze verify found problems:\n{output}");

    // The check has teeth: a typo in a key is reported and fails it.
    let (ok, _) = verify(&text.replace("ProtectHome=yes", "ProtectHomee=yes"));
    assert!(!ok, "a misspelt key must fail the check");
}

#[test]
fn sysusers_and_tmpfiles_make_the_user_group_and_directories() {
    let id = run(Command::new("id").arg("-u"));
    if String::from_utf8_lossy(&id.stdout).trim() != "0" {
        eprintln!("skipped: systemd-tmpfiles can only chown as root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let output = run(systemd_tool("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(systemd_dir().join("stagingd.sysusers")));
    assert!(output.status.success(), "{}", describe(&output));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let field = |text: &str, name: &str, index: usize| -> String {
        let line = text.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("no {name}"));
        line.split(':').nth(index).unwrap().to_owned()
    };
    let uid: u32 = field(&passwd, "stagingd", 2).parse().unwrap();
    let gid: u32 = field(&group, "deployment", 2).parse().unwrap();
    assert!(field(&group, "deployment", 3).split(',').any(|m| m == "stagingd"), "{group}");

    let output = run(systemd_tool("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg(systemd_dir().join("stagingd.tmpfiles")));
    assert!(output.status.success(), "{}", describe(&output));
    for dir in ["var/lib/stagingd", "run/stagingd"] {
        let meta = std::fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750, "{dir}");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{dir} is stagingd:deployment");
    }
}

/// The daemon under test, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Datagrams received on `socket` until `until` holds for one (returned) or
/// `deadline` passes (panics with what came).
fn wait_for(socket: &UnixDatagram, seen: &mut Vec<String>, deadline: Duration, until: &str) -> String {
    let end = Instant::now() + deadline;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {until:?} within {deadline:?}; got {seen:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(message.clone());
                if message.lines().any(|l| l == until) {
                    return message;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }
}

#[test]
fn ready_is_notified_only_after_every_first_scan_and_the_watchdog_is_fed() {
    // Two trees, one big enough that its first (cold) scan takes a while.
    let small = TestTree::new();
    small.write("dblists/all.dblist", "enwiki\n");
    let big = TestTree::new();
    for i in 0..3000 {
        big.write(&format!("php-1.44/d{}/f{i}.php", i % 30), format!("<?php // {i}\n{}", "x".repeat(2000 + i)));
    }
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let admin = dir.path().join("admin.sock");
    let log = std::fs::File::create(dir.path().join("stagingd.log")).unwrap();
    // `exec` keeps the shell's pid, so WATCHDOG_PID names the daemon.
    let child = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(bin("stagingd"))
        .args(["--name", "deploy1002", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--admin-socket")
        .arg(&admin)
        .arg("--tree")
        .arg(format!("small={}", small.path().display()))
        .arg("--tree")
        .arg(format!("big={}", big.path().display()))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "300000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn stagingd");
    let mut daemon = Running(child);

    let mut seen = Vec::new();
    let ready = wait_for(&socket, &mut seen, Duration::from_secs(60), "READY=1");
    // At this moment, status must already show every tree scanned.
    let output = run(stagingctl(["--admin-socket"]).arg(&admin).args(["status", "--json"]));
    assert!(output.status.success(), "the admin socket answers once READY=1 is sent: {}", describe(&output));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for tree in status["trees"].as_array().unwrap() {
        assert_eq!(tree["readiness"], "ready", "READY=1 came before the first scan of {}", tree["name"]);
        assert!(!tree["last_scan"].is_null(), "{tree}");
    }
    assert_eq!(status["trees"].as_array().unwrap().len(), 2);
    assert!(ready.lines().any(|l| l.starts_with("STATUS=ready")), "{ready:?}");
    assert!(
        seen.iter().any(|m| m.contains("STATUS=recovering and scanning")),
        "a status line while scanning: {seen:?}"
    );
    assert!(!seen[..seen.len() - 1].iter().any(|m| m.contains("READY=1")), "READY=1 once: {seen:?}");
    // And in the daemon's own words: both first scans completed before it notified.
    let log = std::fs::read_to_string(dir.path().join("stagingd.log")).unwrap();
    let line_of = |needle: &str| log.lines().position(|l| l.contains(needle));
    let notified = line_of("READY=1").unwrap_or_else(|| panic!("no READY=1 line in the log:\n{log}"));
    for tree in ["tree=small", "tree=big"] {
        let scanned = log.lines().position(|l| l.contains("scan complete") && l.contains(tree));
        assert!(scanned.is_some_and(|at| at < notified), "{tree}: scan complete after READY=1:\n{log}");
    }

    // The watchdog is pinged every 150 ms.
    let from = seen.len();
    let started = Instant::now();
    wait_for(&socket, &mut seen, Duration::from_secs(5), "WATCHDOG=1");
    wait_for(&socket, &mut seen, Duration::from_secs(5), "WATCHDOG=1");
    wait_for(&socket, &mut seen, Duration::from_secs(5), "WATCHDOG=1");
    assert!(started.elapsed() < Duration::from_secs(3), "3 pings took {:?}", started.elapsed());
    assert!(seen[from..].iter().all(|m| m == "WATCHDOG=1\n"), "{:?}", &seen[from..]);

    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = daemon.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    wait_for(&socket, &mut seen, Duration::from_secs(10), "STOPPING=1");
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "stagingd did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
