//! The daemon's command line: help, and configuration errors that name the
//! problem and exit 2 before anything is bound or written.

use std::process::Command;

fn stagingd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stagingd"))
}

#[test]
fn help_documents_every_flag() {
    let output = stagingd().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--config",
        "--name",
        "--root",
        "--tree",
        "--state-dir",
        "--listen",
        "--admin-socket",
        "--peer",
        "--replicate-from",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn configuration_errors_exit_2_and_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--name", "n"], "no tree configured"),
        (&["--name", "n", "--root", "/nonexistent/stagingd-test-root"], "cannot be opened"),
        (&["--name", "n", "--tree", "staging"], "expected NAME=DIR"),
        (&["--name", "n", "--root", "{dir}", "--max-delete-ratio", "7"], "max_delete_ratio"),
        (&["--name", "n", "--root", "{dir}", "--listen", "0.0.0.0:7420"], "without TLS"),
    ];
    std::fs::create_dir(dir.path().join("tree")).unwrap();
    let root = dir.path().join("tree").display().to_string();
    for (args, expected) in cases {
        let args: Vec<String> = args.iter().map(|a| a.replace("{dir}", &root)).collect();
        let output = stagingd().args(&args).arg("--state-dir").arg(dir.path().join("state")).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
}
