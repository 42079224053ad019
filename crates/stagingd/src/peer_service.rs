//! The `Peer` service on the network port: status, directory listings, content
//! and root changes. Read-only by construction: no method here takes `&mut` of
//! anything, and nothing it calls writes to a tree, the pool state or history.
//!
//! Content is read on the blocking pool and sent through a bounded channel, so a
//! slow reader slows the reading down instead of making the daemon buffer.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use manifest::hash::HashMap;
use manifest::{FileMeta, Hash, Manifest, Node, RelPath};
use proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tonic::{Request, Response, Status};

use crate::node::Node as DaemonNode;
use crate::pool::PoolState;
use crate::tree::TreeState;
use crate::unix_now;

/// Data bytes per `ContentChunk` message (see the proto).
pub const CHUNK_BYTES: usize = 1 << 20;
/// Hashes one `FetchContent` request may ask for.
pub const MAX_HASHES_PER_FETCH: usize = 20_000;
/// Directories one `ReadDirs` call may ask for.
pub const MAX_DIRS_PER_READ: usize = 4096;
/// Changes per `ReadChanges` message (a change is ~100 bytes; far below the message limit).
const CHANGES_PER_MESSAGE: usize = 4096;
/// Messages buffered per content stream before the reader waits for the network.
const STREAM_BUFFER: usize = 4;

#[derive(Debug, Clone)]
pub struct PeerService {
    node: Arc<DaemonNode>,
}

impl PeerService {
    pub fn new(node: Arc<DaemonNode>) -> Self {
        Self { node }
    }

    /// A depooled node serves nothing but its status.
    fn refuse_if_depooled(&self) -> Result<(), Status> {
        if self.node.pool().state == PoolState::Depooled {
            return Err(Status::failed_precondition(format!(
                "{} is depooled and serves no content",
                self.node.config.name
            )));
        }
        Ok(())
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn status(&self, request: Request<pb::PeerStatusRequest>) -> Result<Response<pb::PeerStatus>, Status> {
        Ok(Response::new(self.node.peer_status(&request.into_inner().tree)?))
    }

    async fn read_dir(&self, request: Request<pb::ReadDirRequest>) -> Result<Response<pb::ReadDirResponse>, Status> {
        self.refuse_if_depooled()?;
        let request = request.into_inner();
        let tree = self.node.tree(&request.tree)?;
        let manifest = tree.view().manifest;
        let dir = match request.target {
            None => return Err(Status::invalid_argument("ReadDir needs a path or a dir_hash")),
            Some(pb::read_dir_request::Target::Path(path)) => {
                let path = RelPath::new(&path).map_err(|e| Status::invalid_argument(e.to_string()))?;
                manifest
                    .dir(&path)
                    .ok_or_else(|| Status::not_found(format!("no directory {path} in tree {}", tree.name)))?
            }
            Some(pb::read_dir_request::Target::DirHash(hash)) => {
                let hash =
                    Hash::from_slice(&hash).ok_or_else(|| Status::invalid_argument("dir_hash must be 32 bytes"))?;
                find_dir(tree, &manifest, hash, &request.path_hint)?
            }
        };
        Ok(Response::new(crate::wire::dir_to_proto(dir, manifest.root_hash())))
    }

    type ReadDirsStream = BoxStream<pb::ReadDirResponse>;

    async fn read_dirs(&self, request: Request<pb::ReadDirsRequest>) -> Result<Response<Self::ReadDirsStream>, Status> {
        self.refuse_if_depooled()?;
        let request = request.into_inner();
        let hashes = hashes_of(&request.dir_hashes, MAX_DIRS_PER_READ, "dir_hash")?;
        let hints =
            if request.path_hints.len() == hashes.len() { request.path_hints } else { vec![Vec::new(); hashes.len()] };
        let tree = Arc::clone(self.node.tree(&request.tree)?);
        let manifest = tree.view().manifest;
        // Answered from one manifest, so the listings are of one version of the tree.
        let listings: Vec<Result<pb::ReadDirResponse, Status>> = hashes
            .iter()
            .zip(&hints)
            .map(|(&hash, hint)| {
                find_dir(&tree, &manifest, hash, hint).map(|dir| crate::wire::dir_to_proto(dir, manifest.root_hash()))
            })
            .scan(false, |failed, item| {
                // Nothing after the first NOT_FOUND: it ends the stream.
                if *failed {
                    return None;
                }
                *failed = item.is_err();
                Some(item)
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(listings))))
    }

    type ReadChangesStream = BoxStream<pb::ReadChangesResponse>;

    async fn read_changes(
        &self,
        request: Request<pb::ReadChangesRequest>,
    ) -> Result<Response<Self::ReadChangesStream>, Status> {
        self.refuse_if_depooled()?;
        let request = request.into_inner();
        let since = Hash::from_slice(&request.since_root)
            .ok_or_else(|| Status::invalid_argument("since_root must be 32 bytes"))?;
        let tree = self.node.tree(&request.tree)?;
        let manifest = tree.view().manifest;
        let current = manifest.root_hash();
        let paths = tree.changes_since(since, current).ok_or_else(|| {
            Status::not_found(format!(
                "tree {}: no record of the changes from root {since} to {current}; walk it with ReadDirs",
                tree.name
            ))
        })?;
        let (from_root, to_root) = (since.as_bytes().to_vec(), current.as_bytes().to_vec());
        let messages: Vec<Result<pb::ReadChangesResponse, Status>> = paths
            .chunks(CHANGES_PER_MESSAGE)
            .map(|chunk| {
                Ok(pb::ReadChangesResponse {
                    from_root: from_root.clone(),
                    to_root: to_root.clone(),
                    changes: chunk.iter().map(|path| crate::wire::change_to_proto(&manifest, path)).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    type FetchContentStream = BoxStream<pb::ContentChunk>;

    async fn fetch_content(
        &self,
        request: Request<pb::FetchContentRequest>,
    ) -> Result<Response<Self::FetchContentStream>, Status> {
        self.refuse_if_depooled()?;
        let request = request.into_inner();
        let wanted = hashes_of(&request.hashes, MAX_HASHES_PER_FETCH, "hash")?;
        let hints = if request.path_hints.len() == wanted.len() { request.path_hints } else { Vec::new() };
        let tree = self.node.tree(&request.tree)?;
        let root = tree.root.clone();
        let manifest = tree.view().manifest;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shutdown = self.node.shutdown.clone();
        tokio::task::spawn_blocking(move || {
            let paths = locate(&manifest, &wanted, &hints);
            send_content(&root, &wanted, &paths, &tx, &shutdown);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchRootStream = BoxStream<pb::RootUpdate>;

    async fn watch_root(
        &self,
        request: Request<pb::WatchRootRequest>,
    ) -> Result<Response<Self::WatchRootStream>, Status> {
        let request = request.into_inner();
        let trees: Vec<_> = if request.tree.is_empty() {
            self.node.trees.values().cloned().collect()
        } else {
            vec![Arc::clone(self.node.tree(&request.tree)?)]
        };
        let node = Arc::clone(&self.node);
        let streams = trees.into_iter().map(move |tree| {
            let node = Arc::clone(&node);
            WatchStream::new(tree.subscribe()).map(move |info| {
                Ok(pb::RootUpdate {
                    tree: tree.name.clone(),
                    root_hash: info.root.as_bytes().to_vec(),
                    readiness: info.readiness.to_proto().into(),
                    unix: if info.changed_unix == 0 { unix_now() } else { info.changed_unix },
                    pool_state: node.pool().state.to_proto().into(),
                })
            })
        });
        let merged = futures::stream::select_all(streams);
        // The stream ends when the daemon shuts down, so a graceful shutdown
        // does not wait on subscribers that would otherwise listen forever.
        let stream = merged.take_until(self.node.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The hashes of a request, at most `limit` of them, each 32 bytes (`field`
/// names them in the error).
fn hashes_of(raw: &[Vec<u8>], limit: usize, field: &str) -> Result<Vec<Hash>, Status> {
    if raw.len() > limit {
        return Err(Status::invalid_argument(format!("{} {field}es in one request; the limit is {limit}", raw.len())));
    }
    raw.iter()
        .map(|h| Hash::from_slice(h).ok_or_else(|| Status::invalid_argument(format!("every {field} must be 32 bytes"))))
        .collect()
}

/// The directory of `manifest` with hash `hash`: at `hint` when it is there (a
/// lookup by path), else any directory with that hash (the tree's index by hash,
/// built once per manifest, walks every directory).
fn find_dir<'m>(
    tree: &TreeState,
    manifest: &'m Manifest,
    hash: Hash,
    hint: &[u8],
) -> Result<&'m manifest::Dir, Status> {
    let hinted = RelPath::new(hint).ok().and_then(|path| manifest.dir(&path)).filter(|dir| dir.hash() == hash);
    match hinted {
        Some(dir) => Ok(dir),
        None => tree
            .dir_index(manifest)
            .get(&hash)
            .and_then(|path| manifest.dir(path))
            .ok_or_else(|| Status::not_found(format!("no directory with hash {hash} in tree {}", tree.name))),
    }
}

/// Where a wanted blob is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    path: RelPath,
    /// The manifest's entry at `path`, when the lookup had it at hand: while the
    /// file's stat still matches it, the content is the entry's and is sent
    /// without being hashed again.
    entry: Option<FileMeta>,
}

/// A path of `manifest` holding each wanted hash: the client's hint where the
/// manifest confirms it (a lookup by path), a search of the whole manifest for
/// the rest (at most one walk per request, none when every hint holds).
fn locate(manifest: &Manifest, wanted: &[Hash], hints: &[Vec<u8>]) -> HashMap<Located> {
    let mut paths = HashMap::with_capacity_and_hasher(wanted.len(), Default::default());
    for (hash, hint) in wanted.iter().zip(hints) {
        if let Ok(path) = RelPath::new(hint.as_slice())
            && let Some(Node::File(entry)) = manifest.get(&path)
            && entry.hash == *hash
        {
            let entry = Some(entry.clone());
            paths.insert(*hash, Located { path, entry });
        }
    }
    let rest: manifest::hash::HashSet = wanted.iter().filter(|h| !paths.contains_key(*h)).copied().collect();
    if !rest.is_empty() {
        paths.extend(
            manifest.paths_of_contents(&rest).into_iter().map(|(hash, path)| (hash, Located { path, entry: None })),
        );
    }
    paths
}

/// True when `file` (open, with `before` its stat when it was opened) still
/// holds `entry`'s content by the stat cache's rule, checked again after the
/// read so that a write during it is seen. The receiver hashes everything it
/// gets; this only spares the source a second hash of what it hashed at its scan.
fn still_as_hashed(entry: Option<&FileMeta>, before: &std::fs::Metadata, file: &std::fs::File) -> bool {
    entry.is_some_and(|entry| {
        manifest::scan::unchanged_since_hashed(entry, before)
            && file.metadata().is_ok_and(|after| manifest::scan::unchanged_since_hashed(entry, &after))
    })
}

/// Reads each wanted blob and sends it in order, packing small blobs together and
/// splitting big ones. A blob whose file is gone or no longer has that content is
/// sent as `missing` (a big one found changed only at its end aborts the stream).
/// Stops when the receiver goes away or the daemon shuts down.
fn send_content(
    root: &std::path::Path,
    wanted: &[Hash],
    paths: &HashMap<Located>,
    tx: &mpsc::Sender<Result<pb::ContentChunk, Status>>,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    let mut message = pb::ContentChunk::default();
    let mut message_bytes = 0usize;
    let mut sent = manifest::hash::HashSet::default();
    let flush = |message: &mut pb::ContentChunk, bytes: &mut usize| -> bool {
        if message.blobs.is_empty() {
            return true;
        }
        *bytes = 0;
        tx.blocking_send(Ok(std::mem::take(message))).is_ok()
    };
    for &hash in wanted {
        if shutdown.is_cancelled() {
            let _ = tx.blocking_send(Err(Status::unavailable("the daemon is shutting down")));
            return;
        }
        if !sent.insert(hash) {
            continue;
        }
        let missing = pb::Blob { hash: hash.as_bytes().to_vec(), eof: true, missing: true, ..pb::Blob::default() };
        let Some(Located { path, entry }) = paths.get(&hash) else {
            message.blobs.push(missing);
            continue;
        };
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(root.join(path.as_path()));
        let Ok(mut file) = file else {
            message.blobs.push(missing);
            continue;
        };
        let Ok(before) = file.metadata() else {
            message.blobs.push(missing);
            continue;
        };
        let size = before.len();
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        if size as usize <= CHUNK_BYTES {
            // Small: read whole, verify, then pack.
            let mut data = Vec::with_capacity(size as usize);
            let read = file.read_to_end(&mut data).is_ok();
            if !read || !(still_as_hashed(entry.as_ref(), &before, &file) || Hash::from(blake3::hash(&data)) == hash) {
                message.blobs.push(missing);
                continue;
            }
            if message_bytes + data.len() > CHUNK_BYTES && !flush(&mut message, &mut message_bytes) {
                return;
            }
            message_bytes += data.len();
            let total_size = data.len() as u64;
            message.blobs.push(pb::Blob {
                hash: hash.as_bytes().to_vec(),
                offset: 0,
                data,
                eof: true,
                total_size,
                missing: false,
            });
            continue;
        }
        // Big: stream in chunks, each in a message of its own, each read into a
        // buffer of its own that the message then owns.
        if !flush(&mut message, &mut message_bytes) {
            return;
        }
        let trusted = entry.as_ref().is_some_and(|entry| manifest::scan::unchanged_since_hashed(entry, &before));
        loop {
            let mut data = vec![0u8; CHUNK_BYTES];
            let n = match read_full(&mut file, &mut data) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::aborted(format!("reading {path}: {e}"))));
                    return;
                }
            };
            data.truncate(n);
            if !trusted {
                hasher.update(&data);
            }
            let eof = n < CHUNK_BYTES || offset + n as u64 >= size;
            let intact = || {
                if trusted {
                    still_as_hashed(entry.as_ref(), &before, &file)
                } else {
                    Hash::from(hasher.finalize()) == hash
                }
            };
            if eof && !intact() {
                let _ = tx.blocking_send(Err(Status::aborted(format!("{path} changed while it was being sent"))));
                return;
            }
            let blob = pb::Blob { hash: hash.as_bytes().to_vec(), offset, data, eof, total_size: size, missing: false };
            offset += n as u64;
            if tx.blocking_send(Ok(pb::ContentChunk { blobs: vec![blob] })).is_err() {
                return;
            }
            if eof {
                break;
            }
        }
    }
    flush(&mut message, &mut message_bytes);
}

/// Reads until `buffer` is full or the file ends.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use manifest::{Dir, DirMeta, FileMeta};

    use super::*;

    fn file(content: &[u8]) -> Node {
        Node::File(FileMeta {
            size: content.len() as u64,
            mode: 0o644,
            mtime: manifest::Timestamp::default(),
            hash: Hash::of_content(content),
            owner: manifest::Owner::default(),
            stat: manifest::StatKey::default(),
        })
    }

    #[test]
    fn locate_uses_hints_the_manifest_confirms_and_searches_for_the_rest() {
        let mut manifest = Manifest::new(Dir::new(DirMeta::default(), Vec::new()));
        let rel = |s: &str| RelPath::new(s).unwrap();
        manifest.insert(&rel("a"), Node::Dir(Dir::new(DirMeta::default(), Vec::new()).into())).unwrap();
        manifest.insert(&rel("a/one"), file(b"1")).unwrap();
        manifest.insert(&rel("a/one-again"), file(b"1")).unwrap();
        manifest.insert(&rel("two"), file(b"2")).unwrap();
        let (one, two, three) = (Hash::of_content(b"1"), Hash::of_content(b"2"), Hash::of_content(b"3"));
        let wanted = [one, two, three];

        // A confirmed hint wins over the first path a search would find.
        let hints = [b"a/one-again".to_vec(), b"two".to_vec(), b"nowhere".to_vec()];
        let found = locate(&manifest, &wanted, &hints);
        let path_of = |found: &HashMap<Located>, hash| found.get(&hash).map(|l| l.path.clone());
        assert_eq!(path_of(&found, one), Some(rel("a/one-again")));
        assert_eq!(path_of(&found, two), Some(rel("two")));
        assert_eq!(path_of(&found, three), None, "content the tree does not have is not located");
        assert!(found[&one].entry.is_some(), "a confirmed hint carries the manifest's entry");

        // Wrong, stale, malformed or absent hints fall back to the search.
        for hints in [vec![b"two".to_vec(), b"a/one".to_vec(), Vec::new()], vec![b"../x".to_vec(); 3], Vec::new()] {
            let found = locate(&manifest, &wanted, &hints);
            assert_eq!(path_of(&found, one), Some(rel("a/one")));
            assert_eq!(path_of(&found, two), Some(rel("two")));
        }
    }

    /// What `send_content` sends for `hash`, read from `root/name` with `entry`
    /// as the manifest's entry: the blob's pieces concatenated, or `None` when it
    /// was sent as missing or the stream was aborted.
    fn sent(root: &std::path::Path, name: &str, hash: Hash, entry: Option<FileMeta>) -> Option<Vec<u8>> {
        let located = Located { path: RelPath::new(name).unwrap(), entry };
        let paths = HashMap::from_iter([(hash, located)]);
        let (tx, mut rx) = mpsc::channel(64);
        send_content(root, &[hash], &paths, &tx, &tokio_util::sync::CancellationToken::new());
        drop(tx);
        let mut data = Vec::new();
        while let Some(message) = rx.blocking_recv() {
            for blob in message.ok()?.blobs {
                if blob.missing {
                    return None;
                }
                data.extend_from_slice(&blob.data);
            }
        }
        Some(data)
    }

    #[test]
    fn content_whose_stat_still_matches_its_entry_is_sent_without_hashing_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; CHUNK_BYTES * 2 + 5];
        for (name, content) in [("small", &b"<?php // hashed at the scan"[..]), ("big", &big)] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let metadata = std::fs::metadata(&path).unwrap();
            // The entry a scan made, told apart from the content by a hash that is
            // not the content's: only a sender that trusts the stat sends it.
            let other = Hash::of_content(b"what the scan saw");
            let mut entry = manifest::scan::file_meta(&metadata, other, std::time::Duration::ZERO);
            entry.stat.settled = true;
            assert_eq!(sent(dir.path(), name, other, Some(entry.clone())).as_deref(), Some(content), "{name}");

            // Without an entry, an unsettled one, or one whose stat no longer
            // matches, the content is hashed and found not to be that blob.
            let mut unsettled = entry.clone();
            unsettled.stat.settled = false;
            let mut moved = entry.clone();
            moved.stat.ctime = manifest::Timestamp::new(1, 0);
            for entry in [None, Some(unsettled), Some(moved)] {
                assert_eq!(sent(dir.path(), name, other, entry.clone()), None, "{name}: {entry:?}");
            }
            // The real hash is always sent.
            assert_eq!(sent(dir.path(), name, Hash::of_content(content), None).as_deref(), Some(content));
        }
    }
}
