//! The node: configuration, pool state, trees and connections to peers, shared by
//! every service and task of the daemon.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use proto::v1 as pb;
use proto::v1::peer_client::PeerClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::Config;
use crate::pool::{self, PoolRecord, PoolState};
use crate::replication::Replication;
use crate::tree::TreeState;
use crate::unix_now;

#[derive(Debug)]
pub struct Node {
    pub config: Config,
    pool: Mutex<PoolRecord>,
    pub trees: BTreeMap<String, Arc<TreeState>>,
    pub peers: BTreeMap<String, PeerClient<Channel>>,
    pub started_unix: i64,
    /// The address the peer port is bound to (the configured one may say port 0).
    pub listen: SocketAddr,
    /// Cancelled when the daemon shuts down; long-lived streams end on it.
    pub shutdown: CancellationToken,
    /// Automatic replication (`--replicate-from`): its state and pause.
    pub replication: Replication,
}

impl Node {
    pub fn new(config: Config, listen: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<Self> {
        fs_err::create_dir_all(&config.state_dir)?;
        let (record, problem) = pool::load(&config.state_dir);
        if let Some(problem) = problem {
            tracing::error!(
                "POOL STATE UNREADABLE: {problem}. This node starts receive-only and serves no peer \
                 until an operator pools it again with `stagingctl pool serve`"
            );
        }
        tracing::info!(state = %record.state, who = %record.who, reason = %record.reason, "pool state loaded");
        let mut trees = BTreeMap::new();
        for tree in &config.trees {
            trees.insert(tree.name.clone(), Arc::new(TreeState::new(tree, &config.state_dir)?));
        }
        let mut peers = BTreeMap::new();
        for peer in &config.peers {
            let endpoint = crate::tls::peer_endpoint(&config, peer)?.timeout(config.peer_timeout);
            peers.insert(peer.name.clone(), crate::tls::peer_client(endpoint.connect_lazy()));
        }
        let replication = Replication::new(config.replicate_from.clone(), &config.state_dir);
        Ok(Self {
            config,
            pool: Mutex::new(record),
            trees,
            peers,
            started_unix: unix_now(),
            listen,
            shutdown,
            replication,
        })
    }

    pub fn pool(&self) -> PoolRecord {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Persists and installs a new pool record; returns the previous one.
    pub fn set_pool(&self, record: PoolRecord) -> std::io::Result<PoolRecord> {
        let mut current = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool::save(&self.config.state_dir, &record)?;
        Ok(std::mem::replace(&mut *current, record))
    }

    /// The tree named `name`, or the only tree when `name` is empty.
    pub fn tree(&self, name: &str) -> Result<&Arc<TreeState>, tonic::Status> {
        if name.is_empty() {
            if self.trees.len() == 1 {
                return Ok(self.trees.values().next().expect("one tree"));
            }
            return Err(tonic::Status::invalid_argument(format!(
                "this node has several trees; name one with --tree ({})",
                self.tree_names()
            )));
        }
        self.trees.get(name).ok_or_else(|| {
            tonic::Status::not_found(format!("no tree named {name:?} here (trees: {})", self.tree_names()))
        })
    }

    pub fn tree_names(&self) -> String {
        self.trees.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// This node's status as peers see it; `tree` limits it to one tree.
    pub fn peer_status(&self, tree: &str) -> Result<pb::PeerStatus, tonic::Status> {
        let trees = if tree.is_empty() {
            self.trees.values().map(|t| t.status()).collect()
        } else {
            vec![self.tree(tree)?.status()]
        };
        Ok(pb::PeerStatus {
            node: self.config.name.clone(),
            pool_state: self.pool().state.to_proto().into(),
            trees,
            now_unix: unix_now(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            replicating_from: self.config.replicate_from.clone().unwrap_or_default(),
        })
    }

    /// Asks every configured peer for its status, concurrently, each bounded by
    /// the peer timeout.
    pub async fn peer_views(&self) -> Vec<PeerView> {
        let asks = self.config.peers.iter().map(|peer| {
            let mut client = self.peers[&peer.name].clone();
            let timeout = self.config.peer_timeout;
            async move {
                let started = std::time::Instant::now();
                let answer =
                    tokio::time::timeout(timeout, client.status(pb::PeerStatusRequest { tree: String::new() })).await;
                let status = match answer {
                    Ok(Ok(response)) => Ok(response.into_inner()),
                    Ok(Err(status)) => Err(describe_status(&status)),
                    Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
                };
                PeerView {
                    name: peer.name.clone(),
                    address: peer.url.clone(),
                    status,
                    rtt_millis: started.elapsed().as_millis() as u32,
                }
            }
        });
        futures::future::join_all(asks).await
    }
}

/// One peer as seen from here.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub name: String,
    pub address: String,
    pub status: Result<pb::PeerStatus, String>,
    pub rtt_millis: u32,
}

impl PeerView {
    pub fn serving(&self) -> bool {
        matches!(&self.status, Ok(s) if s.pool_state == pb::PoolState::Serve as i32)
    }
}

/// A short reason from a failed call, without tonic's debug noise.
pub fn describe_status(status: &tonic::Status) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !status.message().is_empty() {
        parts.push(status.message().to_owned());
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() { format!("{:?}", status.code()) } else { parts.join(": ") }
}

/// Whether moving to `state` is allowed, given this node's trees and its peers.
/// Pooling to `serve` needs every tree scanned and non-empty, and — unless
/// `bootstrap` — a reachable serving peer whose roots equal ours for every tree
/// it has in common with us.
pub fn check_pool_change(
    node: &Node,
    state: PoolState,
    bootstrap: bool,
    peers: &[PeerView],
) -> Result<(), (String, String)> {
    if state != PoolState::Serve {
        return Ok(());
    }
    for tree in node.trees.values() {
        let view = tree.view();
        if view.readiness != crate::tree::Readiness::Ready {
            return Err((
                format!("tree {:?} is not ready to serve ({:?})", tree.name, view.readiness),
                "wait for the scan to finish (`stagingctl status`), then pool again".to_owned(),
            ));
        }
        if view.manifest.totals().leaves() == 0 {
            return Err((
                format!(
                    "tree {:?} at {} is empty: an empty master must never become a sync source",
                    tree.name,
                    tree.root.display()
                ),
                "sync it from a serving master first: `stagingctl sync --from PEER`".to_owned(),
            ));
        }
    }
    if bootstrap {
        return Ok(());
    }
    let mut seen = Vec::new();
    for peer in peers {
        let status = match &peer.status {
            Ok(status) if peer.serving() => status,
            Ok(status) => {
                seen.push(format!("{} is {}", peer.name, pool_name(status.pool_state)));
                continue;
            }
            Err(e) => {
                seen.push(format!("{} unreachable ({e})", peer.name));
                continue;
            }
        };
        let mut shared = 0;
        let mut differing = Vec::new();
        for tree in node.trees.values() {
            if let Some(theirs) = status.trees.iter().find(|t| t.name == tree.name) {
                shared += 1;
                if theirs.root_hash != tree.view().manifest.root_hash().as_bytes() {
                    differing.push(tree.name.clone());
                }
            }
        }
        if shared > 0 && differing.is_empty() {
            return Ok(());
        }
        if shared == 0 {
            seen.push(format!("{} serves none of our trees", peer.name));
        } else {
            seen.push(format!("{} serves other content for {}", peer.name, differing.join(", ")));
        }
    }
    let peers_seen = if seen.is_empty() { "no peers are configured".to_owned() } else { seen.join("; ") };
    Err((
        format!("refusing to serve: no reachable serving peer has the same tree ({peers_seen})"),
        "make the tree match a serving master with `stagingctl sync --from PEER`, or, for the first master \
         of a cluster, `stagingctl pool serve --bootstrap --reason \"...\"`"
            .to_owned(),
    ))
}

fn pool_name(value: i32) -> &'static str {
    match pb::PoolState::try_from(value) {
        Ok(state) => PoolState::from_proto(state).map_or("unknown", PoolState::as_str),
        Err(_) => "unknown",
    }
}
