//! The `Admin` service on the local unix socket: every change of state enters
//! the daemon here (pool state now; syncs, rollbacks and replication as they
//! arrive), and each is logged with who asked and why.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::node::{Node, PeerView, check_pool_change};
use crate::pool::{PoolRecord, PoolState};
use crate::unix_now;

#[derive(Debug, Clone)]
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn set_pool_state(
        &self,
        request: Request<pb::SetPoolStateRequest>,
    ) -> Result<Response<pb::SetPoolStateResponse>, Status> {
        let request = request.into_inner();
        let state = pb::PoolState::try_from(request.state)
            .ok()
            .and_then(PoolState::from_proto)
            .ok_or_else(|| Status::invalid_argument("pool state must be serve, receive-only or depooled"))?;
        let who = if request.who.is_empty() { "unknown".to_owned() } else { request.who };
        let peers =
            if state == PoolState::Serve && !request.bootstrap { self.node.peer_views().await } else { Vec::new() };
        if let Err((message, hint)) = check_pool_change(&self.node, state, request.bootstrap, &peers) {
            tracing::warn!(%who, to = %state, reason = %request.reason, "pool change refused: {message}");
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
            replication: None,
            locks: Vec::new(),
            started_unix: self.node.started_unix,
        }))
    }

    type SyncStream = BoxStream<pb::SyncEvent>;

    async fn sync(&self, _request: Request<pb::SyncRequest>) -> Result<Response<Self::SyncStream>, Status> {
        Err(Status::unimplemented("sync is not built yet (issue [M3])"))
    }

    async fn history(&self, _request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        Err(Status::unimplemented("history is not built yet (issue [M3])"))
    }

    type RollbackStream = BoxStream<pb::SyncEvent>;

    async fn rollback(&self, _request: Request<pb::RollbackRequest>) -> Result<Response<Self::RollbackStream>, Status> {
        Err(Status::unimplemented("rollback is not built yet (issue [M3])"))
    }

    async fn verify(&self, _request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        Err(Status::unimplemented("verify is not built yet (issue [M3])"))
    }

    async fn set_replication(
        &self,
        _request: Request<pb::SetReplicationRequest>,
    ) -> Result<Response<pb::ReplicationState>, Status> {
        Err(Status::unimplemented("replication is not built yet (issue [M4])"))
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
