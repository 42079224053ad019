//! What the integration tests share: running the real `stagingctl` binary, and
//! a fake `Admin` server (tonic on a unix socket in a temp dir) that gives
//! canned answers and records every request it gets.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use proto::v1::admin_server::{Admin, AdminServer};
use proto::v1::{
    AdminStatusRequest, HistoryRequest, HistoryResponse, NodeStatus, PoolState, ReplicationState, RollbackRequest,
    SetPoolStateRequest, SetPoolStateResponse, SetReplicationRequest, SyncEvent, SyncRecord, SyncRequest,
    VerifyRequest, VerifyResponse, VerifyResult,
};
use tokio::net::UnixListener;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

pub fn stagingctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stagingctl"));
    // The tests choose the socket; an operator's environment must not.
    command.env_remove("STAGINGD_ADMIN_SOCKET");
    command
}

/// Runs `command`; returns (exit code, stdout, stderr).
pub fn run(command: &mut Command) -> (Option<i32>, String, String) {
    let Output { status, stdout, stderr } = command.output().expect("stagingctl runs");
    (status.code(), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

/// What the fake answers; each test sets what it exercises.
#[derive(Debug, Clone, Default)]
pub struct Canned {
    /// `GetStatus` returns this.
    pub status: NodeStatus,
    /// `SetPoolState` fails with this; without it, it moves from
    /// `receive-only` to the state asked for.
    pub pool_refusal: Option<Status>,
    /// `Sync` and `Rollback` fail with this before any event; without it,
    /// they stream `events` (an `Err` item breaks the stream there).
    pub stream_refusal: Option<Status>,
    pub events: Vec<Result<SyncEvent, Status>>,
    /// `History` returns these records.
    pub history: Vec<SyncRecord>,
    /// `Verify` returns these results.
    pub verify: Vec<VerifyResult>,
}

/// Every request the fake received, for the tests to inspect.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub pool: Vec<SetPoolStateRequest>,
    pub sync: Vec<SyncRequest>,
    pub rollback: Vec<RollbackRequest>,
    pub history: Vec<HistoryRequest>,
    pub verify: Vec<VerifyRequest>,
}

#[derive(Debug, Clone)]
struct FakeAdmin {
    canned: Canned,
    seen: Arc<Mutex<Seen>>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SyncEvent, Status>> + Send>>;

impl FakeAdmin {
    fn events(&self) -> Result<Response<EventStream>, Status> {
        match &self.canned.stream_refusal {
            Some(status) => Err(status.clone()),
            None => Ok(Response::new(Box::pin(tokio_stream::iter(self.canned.events.clone())))),
        }
    }
}

#[tonic::async_trait]
impl Admin for FakeAdmin {
    async fn set_pool_state(
        &self,
        request: Request<SetPoolStateRequest>,
    ) -> Result<Response<SetPoolStateResponse>, Status> {
        let request = request.into_inner();
        self.seen.lock().unwrap().pool.push(request.clone());
        match &self.canned.pool_refusal {
            None => Ok(Response::new(SetPoolStateResponse {
                previous: PoolState::ReceiveOnly as i32,
                state: request.state,
                message: "pooled as serve: bootstrap".into(),
            })),
            Some(status) => Err(status.clone()),
        }
    }

    async fn get_status(&self, _request: Request<AdminStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        Ok(Response::new(self.canned.status.clone()))
    }

    type SyncStream = EventStream;

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<Self::SyncStream>, Status> {
        self.seen.lock().unwrap().sync.push(request.into_inner());
        self.events()
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        self.seen.lock().unwrap().history.push(request.into_inner());
        Ok(Response::new(HistoryResponse { records: self.canned.history.clone() }))
    }

    type RollbackStream = EventStream;

    async fn rollback(&self, request: Request<RollbackRequest>) -> Result<Response<Self::RollbackStream>, Status> {
        self.seen.lock().unwrap().rollback.push(request.into_inner());
        self.events()
    }

    async fn verify(&self, request: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        self.seen.lock().unwrap().verify.push(request.into_inner());
        Ok(Response::new(VerifyResponse { results: self.canned.verify.clone() }))
    }

    async fn set_replication(
        &self,
        _request: Request<SetReplicationRequest>,
    ) -> Result<Response<ReplicationState>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A fake daemon serving on `<tempdir>/admin.sock` until dropped.
#[derive(Debug)]
pub struct FakeDaemon {
    // Field order is drop order: stop the server before removing its directory.
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Arc<Mutex<Seen>>,
}

impl FakeDaemon {
    pub fn start(canned: Canned) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let admin = FakeAdmin { canned, seen: Arc::clone(&seen) };
        // Bound before the server task starts, so the socket exists as soon as
        // `start` returns and no test has to wait for it.
        let listener = runtime.block_on(async { UnixListener::bind(&socket) }).unwrap();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(admin))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        FakeDaemon { _runtime: runtime, _dir: dir, socket, seen }
    }

    /// `stagingctl --admin-socket <fake>`.
    pub fn stagingctl(&self) -> Command {
        let mut command = stagingctl();
        command.arg("--admin-socket").arg(&self.socket);
        command
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}
