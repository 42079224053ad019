//! The command-line contract: usage errors exit 2 with clap's message, `--help`
//! documents every subcommand.

use std::process::Command;

fn stagingctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stagingctl"))
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["manifest"],
        &["manifest", "--bogus", "/tmp"],
        &["sync"],
        &["diff", "--from", "deploy2002", "--confirm", "0123456789abcdef"],
        &["history", "--limit", "-1"],
    ] {
        let output = stagingctl().args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

#[test]
fn help_lists_the_subcommands() {
    let output = stagingctl().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["manifest", "status", "pool", "sync", "diff", "history", "rollback", "verify"] {
        assert!(help.contains(command), "{command}: {help}");
    }
}
