//! The admin client: a tonic `Admin` client over the daemon's local unix socket.
//!
//! This module owns connecting (with a timeout), bounding every call by the same
//! timeout, and turning transport failures and gRPC status codes into one-line
//! errors with a `hint:` saying what to do next — an operator never sees a stack
//! trace or a raw transport error. It deliberately does not decide what a refusal
//! means for a command (exit 3 or not): callers match on [`tonic::Code`] first and
//! hand the rest to [`Admin::describe`].
//!
//! Commands that talk to the daemon build a current-thread runtime with
//! [`runtime`]; commands that do not (`manifest`) stay synchronous.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use proto::v1::admin_client::AdminClient;
use proto::v1::{
    AdminStatusRequest, HistoryRequest, HistoryResponse, NodeStatus, ReplicationState, RollbackRequest,
    SetPoolStateRequest, SetPoolStateResponse, SetReplicationRequest, SyncEvent, SyncRequest, VerifyRequest,
    VerifyResponse,
};
use tokio::net::UnixStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::output::hinted;

/// Where the daemon listens unless `--admin-socket` or `STAGINGD_ADMIN_SOCKET` say otherwise.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/stagingd/admin.sock";

/// Which daemon to talk to and how long to wait for it (from the global options).
#[derive(Debug, Clone)]
pub struct Target {
    /// The admin socket path.
    pub socket: PathBuf,
    /// Bound on connecting and on each call.
    pub timeout: Duration,
}

/// A connected admin client.
#[derive(Debug)]
pub struct Admin {
    client: AdminClient<Channel>,
    target: Target,
}

/// A runtime for one command: a single thread is plenty for one client and
/// keeps `stagingctl` light on a busy deployment host.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

impl Admin {
    /// Connects to the daemon at `target.socket`.
    ///
    /// The socket is connected here, before tonic sees it, so that a missing
    /// socket or a permission problem is reported as the plain `io::Error` it is
    /// rather than buried in a transport error chain. If the channel has to
    /// reconnect later, it connects to the same path again.
    pub async fn connect(target: &Target) -> anyhow::Result<Admin> {
        let stream = match tokio::time::timeout(target.timeout, UnixStream::connect(&target.socket)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(connect_error(&target.socket, &error)),
            Err(_elapsed) => return Err(timeout_error(&target.socket, "connecting", target.timeout)),
        };
        let first = Arc::new(Mutex::new(Some(stream)));
        let path = target.socket.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let first = Arc::clone(&first);
            let path = path.clone();
            async move {
                let ready = first.lock().map(|mut slot| slot.take()).unwrap_or(None);
                let stream = match ready {
                    Some(stream) => stream,
                    None => UnixStream::connect(&path).await?,
                };
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        });
        // The URI is required by the API but unused: the connector ignores it.
        let endpoint = Endpoint::from_static("http://[::]:50051").connect_timeout(target.timeout);
        let channel = match tokio::time::timeout(target.timeout, endpoint.connect_with_connector(connector)).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => {
                return Err(hinted(
                    format!("cannot reach stagingd at {}: {}", target.socket.display(), error_chain(&error)),
                    not_running_hint(),
                ));
            }
            Err(_elapsed) => return Err(timeout_error(&target.socket, "connecting", target.timeout)),
        };
        // The daemon's limit (`MAX_MESSAGE_BYTES` in stagingd's `tls.rs`): 8 MiB.
        let client = AdminClient::new(channel).max_decoding_message_size(8 << 20).max_encoding_message_size(8 << 20);
        Ok(Admin { client, target: target.clone() })
    }

    /// `Admin.GetStatus`.
    pub async fn get_status(&mut self, local_only: bool) -> Result<NodeStatus, tonic::Status> {
        let timeout = self.target.timeout;
        bounded(timeout, self.client.get_status(AdminStatusRequest { local_only })).await
    }

    /// `Admin.SetPoolState`.
    pub async fn set_pool_state(
        &mut self,
        request: SetPoolStateRequest,
    ) -> Result<SetPoolStateResponse, tonic::Status> {
        let timeout = self.target.timeout;
        bounded(timeout, self.client.set_pool_state(request)).await
    }

    /// `Admin.SetReplication`.
    pub async fn set_replication(&mut self, request: SetReplicationRequest) -> Result<ReplicationState, tonic::Status> {
        let timeout = self.target.timeout;
        bounded(timeout, self.client.set_replication(request)).await
    }

    /// `Admin.Sync`. Only the start of the call is bounded by the timeout (the
    /// daemon answers NOT_FOUND or INVALID_ARGUMENT at once, or starts the
    /// stream); the stream itself lasts as long as the sync does.
    pub async fn sync(&mut self, request: SyncRequest) -> Result<Streaming<SyncEvent>, tonic::Status> {
        let timeout = self.target.timeout;
        bounded(timeout, self.client.sync(request)).await
    }

    /// `Admin.Rollback`, bounded like [`Admin::sync`].
    pub async fn rollback(&mut self, request: RollbackRequest) -> Result<Streaming<SyncEvent>, tonic::Status> {
        let timeout = self.target.timeout;
        bounded(timeout, self.client.rollback(request)).await
    }

    /// `Admin.History`.
    pub async fn history(&mut self, request: HistoryRequest) -> Result<HistoryResponse, tonic::Status> {
        let timeout = self.target.timeout;
        bounded(timeout, self.client.history(request)).await
    }

    /// `Admin.Verify`. Not bounded by the timeout: the daemon rehashes every
    /// byte of the tree before it answers, which takes minutes on a large tree.
    pub async fn verify(&mut self, request: VerifyRequest) -> Result<VerifyResponse, tonic::Status> {
        self.client.verify(request).await.map(tonic::Response::into_inner)
    }

    /// Turns a failed call of `rpc` into an operator-facing error with a hint.
    pub fn describe(&self, rpc: &str, status: &tonic::Status) -> anyhow::Error {
        describe_status(&self.target, rpc, status, None)
    }

    /// Like [`Admin::describe`], but when the daemon gave no `hint:` line, the
    /// hint is `fallback(code)` if that has one (the caller knows which next
    /// step fits its command, e.g. "name one with --tree").
    pub fn describe_or(
        &self,
        rpc: &str,
        status: &tonic::Status,
        fallback: impl Fn(tonic::Code) -> Option<String>,
    ) -> anyhow::Error {
        describe_status(&self.target, rpc, status, fallback(status.code()))
    }
}

/// Runs one call under `timeout`, turning an expiry into DEADLINE_EXCEEDED.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_elapsed) => {
            Err(tonic::Status::deadline_exceeded(format!("no answer within {}", humantime::format_duration(timeout))))
        }
    }
}

fn describe_status(target: &Target, rpc: &str, status: &tonic::Status, fallback: Option<String>) -> anyhow::Error {
    let socket = target.socket.display();
    let (message, hint) = split_hint(status.message());
    match status.code() {
        tonic::Code::DeadlineExceeded => timeout_error(&target.socket, rpc, target.timeout),
        tonic::Code::Unavailable | tonic::Code::Unknown if message.is_empty() || is_transport_noise(&message) => {
            hinted(format!("lost the connection to stagingd at {socket} during {rpc}: {message}"), not_running_hint())
        }
        tonic::Code::Unimplemented => hinted(
            format!("stagingd at {socket} does not implement {rpc}"),
            "stagingd and stagingctl are of different versions: upgrade stagingd (or use the stagingctl that came with it)",
        ),
        code => hinted(
            format!("{rpc} failed ({}): {message}", code_name(code)),
            hint.or(fallback).unwrap_or_else(|| "see the daemon's log: journalctl -u stagingd".to_owned()),
        ),
    }
}

/// Whether a status message looks like a transport failure rather than an
/// answer from the daemon (tonic reports both as UNAVAILABLE/UNKNOWN).
fn is_transport_noise(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    ["transport", "connection", "broken pipe", "h2 protocol"].iter().any(|needle| lower.contains(needle))
}

/// The lowercase gRPC code name, e.g. `failed-precondition`.
fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").chars().fold(String::new(), |mut out, c| {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
        out
    })
}

/// Splits a daemon message into its text and the `hint:` line the daemon may
/// append (see the proto: refusals name the command that proceeds).
pub fn split_hint(message: &str) -> (String, Option<String>) {
    let mut text = Vec::new();
    let mut hint = None;
    for line in message.lines() {
        match line.trim_start().strip_prefix("hint:") {
            Some(rest) if hint.is_none() => hint = Some(rest.trim().to_owned()),
            _ => text.push(line),
        }
    }
    (text.join("\n").trim().to_owned(), hint.filter(|h| !h.is_empty()))
}

/// The error for a socket that could not be connected, with the next step.
pub fn connect_error(socket: &Path, error: &io::Error) -> anyhow::Error {
    let message = format!("cannot reach stagingd at {}: {}", socket.display(), io_reason(error));
    match error.kind() {
        io::ErrorKind::PermissionDenied => hinted(
            message,
            format!(
                "run this as a member of the socket's group, or with sudo (see who may: ls -l {})",
                socket.display()
            ),
        ),
        _ => hinted(message, not_running_hint()),
    }
}

fn timeout_error(socket: &Path, what: &str, timeout: Duration) -> anyhow::Error {
    hinted(
        format!(
            "stagingd at {} did not answer {what} within {}",
            socket.display(),
            humantime::format_duration(timeout)
        ),
        "the daemon may be stuck or overloaded: check `systemctl status stagingd` and `journalctl -u stagingd`, or allow more time with --timeout",
    )
}

fn not_running_hint() -> String {
    "is stagingd running? (systemctl status stagingd) — or pass --admin-socket / set STAGINGD_ADMIN_SOCKET".to_owned()
}

/// An `io::Error`'s text without the ` (os error N)` suffix: the operator
/// needs "No such file or directory", not the errno.
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = match cause.downcast_ref::<io::Error>() {
            Some(io_error) => io_reason(io_error),
            None => cause.to_string(),
        };
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The operator's name for `who` fields: `SUDO_USER` if set (the person behind
/// sudo), else `USER`, else `LOGNAME`, else `uid N`. The daemon records the
/// socket's peer credentials next to it, so this is for humans, not for trust.
pub fn operator_name() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|name| !name.trim().is_empty())
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_socket_says_so_and_hints_at_the_daemon() {
        let error = connect_error(
            Path::new("/run/x.sock"),
            &io::Error::from_raw_os_error(rustix::io::Errno::NOENT.raw_os_error()),
        );
        let hinted = error.downcast_ref::<crate::output::Hinted>().expect("hinted");
        assert_eq!(hinted.message, "cannot reach stagingd at /run/x.sock: No such file or directory");
        assert!(hinted.hint.starts_with("is stagingd running? (systemctl status stagingd)"), "{}", hinted.hint);
        assert_eq!(hinted.code, crate::EXIT_ERROR);
    }

    #[test]
    fn permission_denied_hints_at_the_group() {
        let error = connect_error(Path::new("/run/x.sock"), &io::Error::from(io::ErrorKind::PermissionDenied));
        let hinted = error.downcast_ref::<crate::output::Hinted>().expect("hinted");
        assert!(hinted.message.starts_with("cannot reach stagingd at /run/x.sock: "), "{}", hinted.message);
        assert!(hinted.hint.contains("socket's group") && hinted.hint.contains("sudo"), "{}", hinted.hint);
        assert!(hinted.hint.contains("ls -l /run/x.sock"), "{}", hinted.hint);
    }

    #[test]
    fn daemon_hint_lines_are_split_off() {
        let (text, hint) = split_hint("no serving peer has the same root\nhint: stagingctl sync --from deploy2002");
        assert_eq!(text, "no serving peer has the same root");
        assert_eq!(hint.as_deref(), Some("stagingctl sync --from deploy2002"));
        assert_eq!(split_hint("plain"), ("plain".to_owned(), None));
    }

    #[test]
    fn code_names_are_kebab_case() {
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "failed-precondition");
        assert_eq!(code_name(tonic::Code::NotFound), "not-found");
    }
}
