//! The `Admin` service on the local unix socket: every change of state enters
//! the daemon here (pool state, syncs, rollbacks, replication pause/resume),
//! and each is logged with who asked and why — `who` as the client
//! says, and the caller's uid/gid/pid as the kernel says (SO_PEERCRED).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use manifest::PlanId;
use sync::RollbackTo;

use crate::node::{Node, PeerView, check_pool_change};
use crate::operations::{self, Operation};
use crate::pool::{PoolRecord, PoolState};
use crate::tree::TreeState;
use crate::unix_now;

#[derive(Debug, Clone)]
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Runs an operation in a task of its own — it holds the tree's lock until
    /// done, even if the client goes away — and streams its events.
    /// Every line it logs carries the caller's credentials (an `admin` span).
    fn start(
        &self,
        trees: Vec<Arc<TreeState>>,
        operation: Operation,
        who: String,
        reason: String,
        caller: Caller,
    ) -> BoxStream<pb::SyncEvent> {
        let who = if who.is_empty() { "unknown".to_owned() } else { who };
        let (tx, rx) = tokio::sync::mpsc::channel(operations::EVENTS_QUEUED);
        let span = tracing::info_span!("admin", uid = caller.uid, gid = caller.gid, pid = caller.pid);
        tokio::spawn(operations::run(Arc::clone(&self.node), trees, operation, who, reason, tx).instrument(span));
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// The trees this node and `peer` both have; all of ours when the peer
    /// cannot be asked (each then fails on its own, with the reason).
    async fn shared_trees(&self, peer: &str) -> Vec<Arc<TreeState>> {
        let mut client = self.node.peers[peer].clone();
        let theirs = client.status(pb::PeerStatusRequest { tree: String::new() }).await;
        match theirs {
            Ok(status) => {
                let status = status.into_inner();
                self.node
                    .trees
                    .values()
                    .filter(|t| status.trees.iter().any(|theirs| theirs.name == t.name))
                    .cloned()
                    .collect()
            }
            Err(_) => self.node.trees.values().cloned().collect(),
        }
    }
}

/// The admin client's process credentials, from the socket (SO_PEERCRED), not
/// from anything the client says.
#[derive(Debug, Clone, Copy, Default)]
struct Caller {
    uid: Option<u32>,
    gid: Option<u32>,
    pid: Option<i32>,
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Self {
        let cred =
            request.extensions().get::<tonic::transport::server::UdsConnectInfo>().and_then(|info| info.peer_cred);
        cred.map_or_else(Self::default, |c| Self { uid: Some(c.uid()), gid: Some(c.gid()), pid: c.pid() })
    }
}

fn record_to_proto(tree: &str, record: &sync::HistoryRecord) -> pb::SyncRecord {
    let hash_bytes = |hex: &str| hex.parse::<manifest::Hash>().map(|h| h.as_bytes().to_vec()).unwrap_or_default();
    let counts = &record.counts;
    pb::SyncRecord {
        id: record.id.to_string(),
        tree: tree.to_owned(),
        kind: match record.kind {
            sync::history::RecordKind::Sync => pb::RecordKind::Sync,
            sync::history::RecordKind::Rollback => pb::RecordKind::Rollback,
        }
        .into(),
        source: record.source.clone(),
        unix: record.unix_time,
        who: record.who.clone(),
        counts: Some(pb::SyncCounts {
            creates: counts.creates,
            updates: counts.updates,
            deletes: counts.deletes,
            bytes_to_write: counts.bytes,
            ..pb::SyncCounts::default()
        }),
        root_before: hash_bytes(&record.root_before),
        root_after: hash_bytes(&record.root_after),
        plan_id: record.plan_id.clone(),
        result: match &record.result {
            sync::history::RecordResult::Applied => "applied".to_owned(),
            sync::history::RecordResult::Recovered => "recovered".to_owned(),
            sync::history::RecordResult::Failed { message } => format!("failed: {message}"),
        },
        reason: record.reason.clone(),
        restorable: matches!(
            record.result,
            sync::history::RecordResult::Applied | sync::history::RecordResult::Recovered
        ),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn set_pool_state(
        &self,
        request: Request<pb::SetPoolStateRequest>,
    ) -> Result<Response<pb::SetPoolStateResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let state = pb::PoolState::try_from(request.state)
            .ok()
            .and_then(PoolState::from_proto)
            .ok_or_else(|| Status::invalid_argument("pool state must be serve, receive-only or depooled"))?;
        let who = if request.who.is_empty() { "unknown".to_owned() } else { request.who };
        let peers =
            if state == PoolState::Serve && !request.bootstrap { self.node.peer_views().await } else { Vec::new() };
        if let Err((message, hint)) = check_pool_change(&self.node, state, request.bootstrap, &peers) {
            tracing::warn!(
                %who,
                uid = caller.uid,
                gid = caller.gid,
                pid = caller.pid,
                to = %state,
                reason = %request.reason,
                "pool change refused: {message}"
            );
            return Err(Status::failed_precondition(format!("{message}\nhint: {hint}")));
        }
        let reason = if request.bootstrap && request.reason.is_empty() {
            "bootstrap: first master of the cluster".to_owned()
        } else {
            request.reason
        };
        let record = PoolRecord { state, who: who.clone(), reason: reason.clone(), changed_unix: unix_now() };
        let previous =
            self.node.set_pool(record).map_err(|e| Status::internal(format!("cannot persist the pool state: {e}")))?;
        tracing::info!(
            %who,
            uid = caller.uid,
            gid = caller.gid,
            pid = caller.pid,
            from = %previous.state,
            to = %state,
            %reason,
            bootstrap = request.bootstrap,
            "pool state changed"
        );
        Ok(Response::new(pb::SetPoolStateResponse {
            previous: previous.state.to_proto().into(),
            state: state.to_proto().into(),
            message: format!("{}: {} → {}", self.node.config.name, previous.state, state),
        }))
    }

    async fn get_status(&self, request: Request<pb::AdminStatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        let local = self.node.peer_status("")?;
        let peers = if request.into_inner().local_only { Vec::new() } else { self.node.peer_views().await };
        let pool = self.node.pool();
        Ok(Response::new(pb::NodeStatus {
            peers: peers.iter().map(|view| peer_view_to_proto(view, &local)).collect(),
            local: Some(local),
            pool_reason: pool.reason,
            pool_who: pool.who,
            pool_changed_unix: pool.changed_unix,
            admin_socket: self.node.config.admin_socket.display().to_string(),
            listen_address: self.node.listen.to_string(),
            replication: Some(self.node.replication.state()),
            locks: self
                .node
                .trees
                .values()
                .filter_map(|tree| {
                    tree.lock.holder().map(|holder| pb::LockInfo {
                        tree: tree.name.clone(),
                        operation: holder.operation,
                        who: holder.who,
                        reason: holder.reason,
                        since_unix: holder
                            .since
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64),
                    })
                })
                .collect(),
            started_unix: self.node.started_unix,
        }))
    }

    type SyncStream = BoxStream<pb::SyncEvent>;

    async fn sync(&self, request: Request<pb::SyncRequest>) -> Result<Response<Self::SyncStream>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        if !self.node.peers.contains_key(&request.from) {
            let known = self.node.config.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(Status::not_found(format!(
                "no peer named {:?} is configured (peers: {})\nhint: peers come from --peer NAME=URL or [peer] in the config",
                request.from,
                if known.is_empty() { "none" } else { &known }
            )));
        }
        let confirm = match request.confirm_plan_id.as_str() {
            "" => None,
            id => Some(id.parse::<PlanId>().map_err(|e| Status::invalid_argument(e.to_string()))?),
        };
        let trees = if request.tree.is_empty() {
            self.shared_trees(&request.from).await
        } else {
            vec![Arc::clone(self.node.tree(&request.tree)?)]
        };
        let operation = Operation::Sync {
            peer: request.from,
            dry_run: request.dry_run,
            confirm,
            allow_behind: request.allow_behind,
        };
        Ok(Response::new(self.start(trees, operation, request.who, request.reason, caller)))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let request = request.into_inner();
        let tree = Arc::clone(self.node.tree(&request.tree)?);
        let history = sync::History::open(&tree.state_dir);
        let records = tokio::task::spawn_blocking(move || history.records())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("cannot read history: {e}")))?;
        let limit = if request.limit == 0 { 50 } else { request.limit as usize };
        let records = records.iter().rev().take(limit).map(|r| record_to_proto(&tree.name, r)).collect();
        Ok(Response::new(pb::HistoryResponse { records }))
    }

    type RollbackStream = BoxStream<pb::SyncEvent>;

    async fn rollback(&self, request: Request<pb::RollbackRequest>) -> Result<Response<Self::RollbackStream>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let tree = Arc::clone(self.node.tree(&request.tree)?);
        let to = match request.to_sync_id.as_str() {
            "" => RollbackTo::Last,
            id => {
                RollbackTo::Sync(sync::SyncId::new(id.to_owned()).map_err(|e| Status::invalid_argument(e.to_string()))?)
            }
        };
        Ok(Response::new(self.start(vec![tree], Operation::Rollback { to }, request.who, request.reason, caller)))
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let request = request.into_inner();
        let trees: Vec<_> = if request.tree.is_empty() {
            self.node.trees.values().cloned().collect()
        } else {
            vec![Arc::clone(self.node.tree(&request.tree)?)]
        };
        let mut results = Vec::new();
        for tree in trees {
            let verified = sync::engine::verify_tree(tree.root.clone(), tree.excludes.clone(), tree.view().manifest)
                .await
                .map_err(|e| Status::internal(format!("verify {}: {e}", tree.name)))?;
            tracing::info!(tree = %tree.name, files = verified.files_checked, mismatches = verified.mismatches.len(), "verify");
            results.push(pb::VerifyResult {
                tree: tree.name.clone(),
                files_checked: verified.files_checked,
                bytes_checked: verified.bytes_checked,
                mismatches: verified
                    .mismatches
                    .into_iter()
                    .map(|m| pb::Mismatch { path: m.path.as_bytes().to_vec(), expected: m.expected, actual: m.actual })
                    .collect(),
            });
        }
        Ok(Response::new(pb::VerifyResponse { results }))
    }

    async fn set_replication(
        &self,
        request: Request<pb::SetReplicationRequest>,
    ) -> Result<Response<pb::ReplicationState>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let Some(source) = self.node.replication.source.clone() else {
            return Err(Status::failed_precondition(format!(
                "{} does not replicate: no replicate_from is configured\nhint: automatic replication follows the \
                 peer named by --replicate-from PEER (config key replicate_from); restart stagingd with it",
                self.node.config.name
            )));
        };
        let who = if request.who.is_empty() { "unknown".to_owned() } else { request.who };
        let before = self.node.replication.state();
        let state = self
            .node
            .replication
            .set_paused(request.paused, &who, &request.reason)
            .map_err(|e| Status::internal(format!("cannot persist the replication state: {e}")))?;
        tracing::info!(
            %who,
            uid = caller.uid,
            gid = caller.gid,
            pid = caller.pid,
            %source,
            reason = %request.reason,
            from = before.phase().as_str_name(),
            to = state.phase().as_str_name(),
            "replication {}",
            if request.paused { "paused" } else { "resumed" }
        );
        Ok(Response::new(state))
    }
}

fn peer_view_to_proto(view: &PeerView, local: &pb::PeerStatus) -> pb::PeerView {
    let (status, error) = match &view.status {
        Ok(status) => (Some(status.clone()), String::new()),
        Err(e) => (None, e.clone()),
    };
    let trees = local
        .trees
        .iter()
        .map(|ours| pb::TreeAgreement {
            tree: ours.name.clone(),
            in_sync: status
                .as_ref()
                .and_then(|s| s.trees.iter().find(|t| t.name == ours.name))
                .is_some_and(|theirs| theirs.root_hash == ours.root_hash),
        })
        .collect();
    pb::PeerView {
        name: view.name.clone(),
        address: view.address.clone(),
        reachable: status.is_some(),
        error,
        status,
        trees,
        rtt_millis: view.rtt_millis,
    }
}
