//! Shared output helpers: error reporting, number formatting, JSON printing.

use std::io::{self, Write};
use std::process::ExitCode;

use crate::{EXIT_ERROR, EXIT_REFUSED};

/// An error that carries the next step for the operator.
#[derive(Debug)]
pub struct Hinted {
    pub message: String,
    pub hint: String,
    pub code: u8,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

/// Builds an error with a `hint:` line.
pub fn hinted(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    Hinted { message: message.into(), hint: hint.into(), code: EXIT_ERROR }.into()
}

/// Builds an error for a request the daemon refused by policy: printed like
/// [`hinted`], but the command exits 3.
pub fn refused(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    Hinted { message: message.into(), hint: hint.into(), code: EXIT_REFUSED }.into()
}

/// Prints `error` with its cause chain (and hint) to stderr, and picks the exit code.
pub fn report_error(error: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(error) {
        return ExitCode::SUCCESS;
    }
    ExitCode::from(print_error(error))
}

/// Prints `error: …` and, for a [`Hinted`] error, `hint: …` to stderr, and
/// returns the exit code the error stands for (1, or 3 for a refusal). For
/// commands that report an error and still go on (a broken sync stream after
/// some trees already finished).
pub fn print_error(error: &anyhow::Error) -> u8 {
    let mut stderr = io::stderr().lock();
    let _ = write!(stderr, "{}", error_text(error));
    error.downcast_ref::<Hinted>().map_or(EXIT_ERROR, |h| h.code)
}

/// The text [`print_error`] prints: `error: …\n` and, if there is one, `hint: …\n`.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = format!("error: {error:#}\n");
    if let Some(h) = error.downcast_ref::<Hinted>() {
        text.push_str(&format!("hint: {}\n", h.hint));
    }
    text
}

/// Whether `error` is a closed stdout (`stagingctl history | head`): not worth reporting.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind)
                == Some(io::ErrorKind::BrokenPipe)
    })
}

/// Writes `value` as pretty JSON and a newline to stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

/// Daemon-provided free text made safe for a terminal: control characters
/// other than newline and tab are escaped (`\u{1b}`), so that a name that came
/// from a peer cannot move the cursor or recolour the operator's terminal.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units with one decimal: `1.9 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(2 * 1024 * 1024 * 1024), "2.0 GiB");
    }

    #[test]
    fn sanitize_escapes_terminal_controls_but_keeps_lines() {
        assert_eq!(sanitize("a\u{1b}[31mred\r\nnext\tcol"), "a\\u{1b}[31mred\\r\nnext\tcol");
        assert_eq!(sanitize("plain → text"), "plain → text");
    }
}
