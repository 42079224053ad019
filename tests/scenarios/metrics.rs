//! Monitoring with Prometheus: a master started with `--metrics-listen` serves
//! `GET /metrics` in the text format `promtool check metrics` accepts, with the
//! pool state, tree sizes, syncs by result and guard, bytes fetched and apply
//! durations.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use stagingd_tests::{Daemon, TestTree, describe, free_port, wait_until};

/// `GET path` over HTTP/1.0; returns the status line, headers and body.
fn get(addr: &str, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete HTTP response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The metrics address a daemon started with `--metrics-listen 127.0.0.1:0` logged.
fn metrics_address(daemon: &Daemon) -> String {
    let mut address = None;
    wait_until("the daemon logs its metrics address", Duration::from_secs(10), || {
        address = daemon
            .log()
            .lines()
            .filter(|l| l.contains("serving metrics"))
            .find_map(|l| l.split("127.0.0.1:").nth(1))
            .map(|rest| format!("127.0.0.1:{}", rest.chars().take_while(char::is_ascii_digit).collect::<String>()));
        address.is_some()
    });
    address.unwrap()
}

fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): apt-get install prometheus (.ci/run installs it)"));
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "promtool check metrics:\n{}\n--- metrics\n{body}", describe(&output));
}

#[test]
fn metrics_show_pool_trees_and_syncs_and_pass_promtool() {
    let source = TestTree::new();
    for i in 0..20 {
        source.write(&format!("php-1.44/includes/F{i}.php"), format!("<?php // {i}\n{}", "y".repeat(100 * i)));
    }
    source.write("wmf-config/CommonSettings.php", "<?php\n").symlink("w", "php-1.44");
    let empty = TestTree::new();
    let (port_a, port_b) = (free_port(), free_port());
    let a = Daemon::start(
        "deploy1002",
        source.path(),
        port_a,
        &["--peer".into(), format!("deploy2002=http://127.0.0.1:{port_b}")],
    );
    let b = Daemon::start(
        "deploy2002",
        empty.path(),
        port_b,
        &[
            "--peer".into(),
            format!("deploy1002=http://127.0.0.1:{port_a}"),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ],
    );
    let addr = metrics_address(&b);

    // Before any sync: the series are there, at zero.
    let (status, headers, body) = get(&addr, "/metrics", None);
    assert!(status.contains(" 200"), "{status}\n{body}");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    promtool_check(&body);
    assert_eq!(sample(&body, "stagingd_pool_state{state=\"receive-only\"}"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "stagingd_pool_state{state=\"serve\"}"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "stagingd_fetched_bytes_total{tree=\"staging\"}"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "stagingd_replication_phase{phase=\"disabled\"}"), Some(1.0), "{body}");

    // A sync applied, then one refused by a guard.
    let output = a.ctl(["pool", "serve", "--bootstrap", "--reason", "test"]);
    assert!(output.status.success(), "{}", describe(&output));
    let output = b.ctl(["sync", "--from", "deploy1002"]);
    assert!(output.status.success(), "{}", describe(&output));
    let output = a.ctl(["pool", "receive-only", "--reason", "test"]);
    assert!(output.status.success(), "{}", describe(&output));
    let output = b.ctl(["sync", "--from", "deploy1002"]);
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));

    let (_, _, body) = get(&addr, "/metrics", None);
    promtool_check(&body);
    let tree = "tree=\"staging\"";
    let applied = format!("stagingd_syncs_total{{{tree},operation=\"sync\",result=\"applied\",guard=\"\"}}");
    assert_eq!(sample(&body, &applied), Some(1.0), "{body}");
    let refused =
        format!("stagingd_syncs_total{{{tree},operation=\"sync\",result=\"refused\",guard=\"source-not-serving\"}}");
    assert_eq!(sample(&body, &refused), Some(1.0), "{body}");
    let fetched = sample(&body, &format!("stagingd_fetched_bytes_total{{{tree}}}")).unwrap();
    let copied = sample(&body, &format!("stagingd_copied_locally_bytes_total{{{tree}}}")).unwrap();
    let expected: u64 = (0..20).map(|i| format!("<?php // {i}\n{}", "y".repeat(100 * i)).len() as u64).sum::<u64>() + 6;
    assert_eq!(fetched + copied, expected as f64, "{body}");
    assert_eq!(
        sample(&body, &format!("stagingd_apply_duration_seconds_count{{{tree},operation=\"sync\"}}")),
        Some(1.0),
        "{body}"
    );
    assert_eq!(sample(&body, &format!("stagingd_tree_files{{{tree}}}")), Some(21.0), "{body}");
    assert_eq!(sample(&body, &format!("stagingd_tree_readiness{{{tree},state=\"ready\"}}")), Some(1.0), "{body}");
    assert!(sample(&body, &format!("stagingd_tree_root_age_seconds{{{tree}}}")).is_some(), "{body}");
    assert!(sample(&body, &format!("stagingd_filesystem_free_inodes{{{tree}}}")).unwrap() > 0.0, "{body}");
    assert!(sample(&body, &format!("stagingd_watch_events_total{{{tree}}}")).is_some(), "{body}");

    // OpenMetrics for scrapers that ask for it; nothing but /metrics.
    let (_, headers, body) = get(&addr, "/metrics", Some("application/openmetrics-text;version=1.0.0"));
    assert!(headers.contains("content-type: application/openmetrics-text"), "{headers}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (status, _, _) = get(&addr, "/", None);
    assert!(status.contains(" 404"), "{status}");
}
