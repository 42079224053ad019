//! Following a `SyncEvent` stream (`sync`, `diff`, `rollback`): read events,
//! hand them to a [`render::Session`], write what it says, and pick the exit
//! code. All the wording is in [`super::render`]; this module only does I/O.
//!
//! Progress goes to stderr: on a terminal as one line redrawn in place (`\r`,
//! erase line), cut to the terminal's width and wiped before any other output;
//! elsewhere as a plain line at most every two seconds. Ctrl-C stops following
//! the stream (exit 130); the daemon then decides what becomes of the operation,
//! which `stagingctl status` and `stagingctl history` show.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use proto::v1::SyncEvent;
use tonic::Streaming;

use super::render::{Emit, ProgressMode, Session};
use crate::client::Admin;
use crate::output::print_error;

/// Exit code after Ctrl-C, as if SIGINT had ended the process.
pub const EXIT_INTERRUPTED: u8 = 130;

/// How progress should be shown here: redrawn on a terminal, plain lines otherwise.
pub fn progress_mode() -> ProgressMode {
    if io::stderr().is_terminal() { ProgressMode::Terminal } else { ProgressMode::Lines }
}

/// Reads `stream` to its end and prints it; `rpc` names the call in errors.
pub async fn follow(
    admin: &Admin,
    rpc: &str,
    mut stream: Streaming<SyncEvent>,
    mut session: Session,
    mode: ProgressMode,
) -> anyhow::Result<ExitCode> {
    let mut printer = Printer::new(mode);
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let error = loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = &mut interrupted => {
                printer.clear()?;
                eprintln!(
                    "interrupted: stopped following the {rpc}; the daemon decides what becomes of it \
                     (see `stagingctl status` and `stagingctl history`)"
                );
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
        };
        match next {
            Ok(Some(SyncEvent { event: Some(event) })) => {
                for emit in session.on_event(event, Instant::now()) {
                    printer.emit(emit)?;
                }
            }
            // An empty message (a newer daemon's event kind): nothing to show.
            Ok(Some(SyncEvent { event: None })) => {}
            Ok(None) => break None,
            Err(status) => break Some(admin.describe(rpc, &status)),
        }
    };
    printer.clear()?;
    if let Some(error) = &error {
        print_error(error);
    }
    let finish = session.finish(error.as_ref());
    for emit in finish.emits {
        printer.emit(emit)?;
    }
    Ok(ExitCode::from(finish.code))
}

/// Writes emits, keeping a terminal's progress line out of the way of real output.
#[derive(Debug)]
struct Printer {
    mode: ProgressMode,
    /// A progress line is on the terminal now (no newline after it).
    shown: bool,
    /// Columns of the terminal, for cutting progress lines.
    width: usize,
}

impl Printer {
    fn new(mode: ProgressMode) -> Printer {
        Printer { mode, shown: false, width: terminal_width() }
    }

    fn emit(&mut self, emit: Emit) -> io::Result<()> {
        match emit {
            Emit::Stdout(text) => {
                self.clear()?;
                let mut stdout = io::stdout().lock();
                stdout.write_all(text.as_bytes())?;
                stdout.flush()
            }
            Emit::Stderr(text) => {
                self.clear()?;
                io::stderr().lock().write_all(text.as_bytes())
            }
            Emit::Progress(line) => match self.mode {
                ProgressMode::Off => Ok(()),
                ProgressMode::Lines => writeln!(io::stderr().lock(), "{line}"),
                ProgressMode::Terminal => {
                    // Never wrap: a wrapped line cannot be redrawn in place.
                    let cut: String = line.chars().take(self.width.saturating_sub(1)).collect();
                    let mut stderr = io::stderr().lock();
                    write!(stderr, "\r\x1b[K{cut}")?;
                    self.shown = true;
                    stderr.flush()
                }
            },
        }
    }

    /// Wipes the progress line, if one is shown.
    fn clear(&mut self) -> io::Result<()> {
        if !self.shown {
            return Ok(());
        }
        self.shown = false;
        let mut stderr = io::stderr().lock();
        stderr.write_all(b"\r\x1b[K")?;
        stderr.flush()
    }
}

/// The terminal's width in columns (stderr's), 80 when unknown.
fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(io::stderr())
        .ok()
        .map(|size| usize::from(size.ws_col))
        .filter(|columns| *columns > 0)
        .unwrap_or(80)
}
