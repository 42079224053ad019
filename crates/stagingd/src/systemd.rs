//! The service manager's notification protocol (`sd_notify`), for
//! `Type=notify` units: `READY=1` once the sockets are bound and every tree's
//! first scan has finished, `WATCHDOG=1` at half the interval systemd asks for
//! (`WATCHDOG_USEC`), `STATUS=` lines for `systemctl status`, and `STOPPING=1`
//! on shutdown. Without `NOTIFY_SOCKET` every call is a no-op.
//!
//! The environment is left as it is (the daemon starts no children, and changing
//! the environment of a multi-threaded process is not sound).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::tree::Readiness;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}

/// A `STATUS=` line for `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// `STOPPING=1`, with a status line.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Waits until every sender of `scans` is dropped — each tree's start-up task
/// holds one until its recovery and first scan are over (or have failed) — then
/// sends `READY=1` with a status line naming any tree that is not ready.
pub async fn ready_after_first_scans(node: Arc<Node>, mut scans: mpsc::Receiver<()>) {
    while scans.recv().await.is_some() {}
    let mut problems = Vec::new();
    for tree in node.trees.values() {
        let readiness = tree.view().readiness;
        match readiness {
            Readiness::Ready => {}
            Readiness::Scanning => {
                problems.push(format!("{}: not scanned (recovery or scan failed, see the log)", tree.name))
            }
            other => problems.push(format!("{}: {other:?}", tree.name).to_lowercase()),
        }
    }
    let text = if problems.is_empty() {
        format!("ready: {} tree(s) scanned; pool {}", node.trees.len(), node.pool().state)
    } else {
        format!("started with problems: {}; pool {}", problems.join("; "), node.pool().state)
    };
    tracing::info!(status = %text, "first scans done: notifying the service manager (READY=1)");
    send(&[NotifyState::Ready, NotifyState::Status(&text)]);
}

/// Pings the watchdog at half the interval in `WATCHDOG_USEC` until `shutdown`;
/// returns at once when no watchdog is configured for this process.
pub async fn watchdog(shutdown: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(10));
    tracing::info!(interval_ms = usec / 1000, "systemd watchdog enabled: pinging every {} ms", period.as_millis());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => send(&[NotifyState::Watchdog]),
        }
    }
}
