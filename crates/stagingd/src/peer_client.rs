//! The engine's view of a peer ([`sync::remote::PeerSource`]) over gRPC.
//!
//! Every answer is decoded through [`crate::wire`], so malformed fields become
//! errors here, and the engine checks names, order and hashes again.

use futures::StreamExt;
use manifest::Hash;
use proto::v1 as pb;
use proto::v1::peer_client::PeerClient;
use sync::guards::{SourcePool, SourceReadiness};
use sync::remote::{Changes, Listing, PeerSource, PieceStream, RemoteError, RemoteStatus, RemoteTree, Wanted};
use tonic::transport::Channel;

use crate::node::describe_status;
use crate::wire;

/// One tree of one peer.
#[derive(Debug, Clone)]
pub struct GrpcPeer {
    pub client: PeerClient<Channel>,
    pub tree: String,
}

fn unavailable(status: &tonic::Status) -> RemoteError {
    RemoteError::Unavailable(describe_status(status))
}

pub fn source_pool(value: i32) -> SourcePool {
    match pb::PoolState::try_from(value) {
        Ok(pb::PoolState::Serve) => SourcePool::Serve,
        Ok(pb::PoolState::ReceiveOnly) => SourcePool::ReceiveOnly,
        Ok(pb::PoolState::Depooled) => SourcePool::Depooled,
        _ => SourcePool::Unknown,
    }
}

pub fn source_readiness(value: i32) -> SourceReadiness {
    match pb::Readiness::try_from(value) {
        Ok(pb::Readiness::Ready) => SourceReadiness::Ready,
        Ok(pb::Readiness::Scanning) => SourceReadiness::Scanning,
        Ok(pb::Readiness::Applying) => SourceReadiness::Applying,
        Ok(pb::Readiness::Incomplete) => SourceReadiness::Incomplete,
        _ => SourceReadiness::Unknown,
    }
}

/// The peer's state of `tree` in a status answer.
pub fn remote_status(status: &pb::PeerStatus, tree: &str) -> Result<RemoteStatus, RemoteError> {
    let tree = match status.trees.iter().find(|t| t.name == tree) {
        None => None,
        Some(t) => Some(RemoteTree {
            root: Hash::from_slice(&t.root_hash).ok_or_else(|| RemoteError::BadListing {
                path: ".".into(),
                why: "status root hash is not 32 bytes".into(),
            })?,
            readiness: source_readiness(t.readiness),
            leaves: t.files + t.symlinks,
        }),
    };
    Ok(RemoteStatus { node: status.node.clone(), pool: source_pool(status.pool_state), tree })
}

impl PeerSource for GrpcPeer {
    async fn status(&self) -> Result<RemoteStatus, RemoteError> {
        let mut client = self.client.clone();
        let status = client.status(pb::PeerStatusRequest { tree: String::new() }).await.map_err(|s| unavailable(&s))?;
        remote_status(&status.into_inner(), &self.tree)
    }

    async fn read_dirs(&self, wanted: Vec<Wanted>) -> Result<Vec<Listing>, RemoteError> {
        let mut client = self.client.clone();
        let request = pb::ReadDirsRequest {
            tree: self.tree.clone(),
            dir_hashes: wanted.iter().map(|w| w.hash.as_bytes().to_vec()).collect(),
            path_hints: wanted.iter().map(|w| w.at.as_bytes().to_vec()).collect(),
        };
        let mut stream = match client.read_dirs(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(unavailable(&status)),
        };
        let mut listings = Vec::with_capacity(wanted.len());
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    let Wanted { hash, at } = wanted.get(listings.len()).ok_or_else(|| RemoteError::BadListing {
                        path: String::new(),
                        why: format!("more listings than the {} directories asked for", wanted.len()),
                    })?;
                    let listing = wire::listing_from_proto(&response).map_err(|e| RemoteError::BadListing {
                        path: format!("{} ({})", at.display(), hash.short(16)),
                        why: e.to_string(),
                    })?;
                    listings.push(listing);
                }
                Ok(None) => return Ok(listings),
                Err(status) if status.code() == tonic::Code::NotFound => {
                    // The first directory not listed is the one the peer no longer has.
                    let hash = wanted.get(listings.len()).map_or_else(Hash::default, |w| w.hash);
                    return Err(RemoteError::DirGone(hash));
                }
                Err(status) => return Err(unavailable(&status)),
            }
        }
    }

    async fn read_changes(&self, since: Hash) -> Result<Option<Changes>, RemoteError> {
        let mut client = self.client.clone();
        let request = pb::ReadChangesRequest { tree: self.tree.clone(), since_root: since.as_bytes().to_vec() };
        let mut stream = match client.read_changes(request).await {
            Ok(response) => response.into_inner(),
            // Not remembered, or a peer that predates the call: walk instead.
            Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::Unimplemented) => {
                return Ok(None);
            }
            Err(status) => return Err(unavailable(&status)),
        };
        let mut to_root = None;
        let mut changes = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    let part = wire::changes_from_proto(&response, since).map_err(|e| RemoteError::BadListing {
                        path: "(list of changes)".into(),
                        why: e.to_string(),
                    })?;
                    if *to_root.get_or_insert(part.to_root) != part.to_root {
                        return Err(RemoteError::BadListing {
                            path: "(list of changes)".into(),
                            why: "messages of one answer lead to different roots".into(),
                        });
                    }
                    changes.extend(part.changes);
                }
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
                Err(status) => return Err(unavailable(&status)),
            }
        }
        Ok(to_root.map(|to_root| Changes { to_root, changes }))
    }

    async fn fetch(&self, wanted: Vec<Wanted>) -> Result<PieceStream, RemoteError> {
        let mut client = self.client.clone();
        let request = pb::FetchContentRequest {
            tree: self.tree.clone(),
            hashes: wanted.iter().map(|w| w.hash.as_bytes().to_vec()).collect(),
            path_hints: wanted.iter().map(|w| w.at.as_bytes().to_vec()).collect(),
        };
        let stream = client.fetch_content(request).await.map_err(|s| unavailable(&s))?.into_inner();
        Ok(Box::pin(stream.map(|chunk| {
            match chunk {
                Ok(chunk) => chunk
                    .blobs
                    .into_iter()
                    .map(|blob| wire::piece_from_proto(blob).map_err(|e| RemoteError::BadContent(e.to_string())))
                    .collect(),
                Err(status) => Err(unavailable(&status)),
            }
        })))
    }
}
