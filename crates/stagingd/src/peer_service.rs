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
/// The connection's HTTP/2 window already holds several; a buffer of 4 messages
/// (1 MiB each) on each of 4 streams added ~24 MB to a serving daemon's peak RSS
/// during a full copy (106 → 82 MB at 150,000 files) and was no faster.
const STREAM_BUFFER: usize = 1;

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
            drop((paths, wanted, manifest));
            crate::memory::release_freed_now_and_then();
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
        let found = manifest.paths_of_contents(rest.len(), |hash| rest.contains(hash));
        paths.extend(found.into_iter().map(|(hash, path)| (hash, Located { path, entry: None })));
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
    let mut packer = Packer::new();
    let flush = |packer: &mut Packer| packer.is_empty() || tx.blocking_send(Ok(packer.take())).is_ok();
    let mut sent = manifest::hash::HashSet::default();
    for &hash in wanted {
        if shutdown.is_cancelled() {
            let _ = tx.blocking_send(Err(Status::unavailable("the daemon is shutting down")));
            return;
        }
        if !sent.insert(hash) {
            continue;
        }
        let Some(Located { path, entry }) = paths.get(&hash) else {
            packer.missing(hash);
            continue;
        };
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(root.join(path.as_path()));
        let Ok(file) = file else {
            packer.missing(hash);
            continue;
        };
        let Ok(before) = file.metadata() else {
            packer.missing(hash);
            continue;
        };
        let size = before.len();
        if size as usize <= CHUNK_BYTES {
            // Small: read into the message's buffer, verify, keep.
            if !packer.has_room(size as usize) && !flush(&mut packer) {
                return;
            }
            let packed = packer.read(hash, &file, size as usize, |data| {
                still_as_hashed(entry.as_ref(), &before, &file) || Hash::from(blake3::hash(data)) == hash
            });
            if !packed {
                packer.missing(hash);
            }
            continue;
        }
        // Big: stream in chunks, each in a message of its own, each read into a
        // buffer of its own that the message then owns.
        if !flush(&mut packer) {
            return;
        }
        let trusted = entry.as_ref().is_some_and(|entry| manifest::scan::unchanged_since_hashed(entry, &before));
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        loop {
            let mut data = Vec::with_capacity(CHUNK_BYTES);
            if let Err(e) = (&file).take(CHUNK_BYTES as u64).read_to_end(&mut data) {
                let _ = tx.blocking_send(Err(Status::aborted(format!("reading {path}: {e}"))));
                return;
            }
            let n = data.len();
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
            let blob =
                pb::Blob { hash: hash_bytes(hash), offset, data: data.into(), eof, total_size: size, missing: false };
            offset += n as u64;
            if tx.blocking_send(Ok(pb::ContentChunk { blobs: vec![blob] })).is_err() {
                return;
            }
            if eof {
                break;
            }
        }
    }
    flush(&mut packer);
}

/// Small blobs on their way into one message. Their bytes are read into one
/// buffer, allocated once per message rather than once per file, and the
/// message's blobs are slices of it.
#[derive(Debug)]
struct Packer {
    data: Vec<u8>,
    /// In order: each blob's hash and its bytes in `data`, or `None` when it
    /// goes as `missing`.
    blobs: Vec<(Hash, Option<std::ops::Range<usize>>)>,
}

impl Packer {
    fn new() -> Self {
        Self { data: Vec::with_capacity(CHUNK_BYTES), blobs: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Whether `size` more bytes keep the message within [`CHUNK_BYTES`].
    fn has_room(&self, size: usize) -> bool {
        self.data.len() + size <= CHUNK_BYTES
    }

    fn missing(&mut self, hash: Hash) {
        self.blobs.push((hash, None));
    }

    /// Reads `file` whole into the buffer and keeps it as `hash`'s blob if it
    /// held exactly `size` bytes and `intact` accepts them. Otherwise the buffer
    /// is as before and the result is false.
    fn read(&mut self, hash: Hash, mut file: &std::fs::File, size: usize, intact: impl FnOnce(&[u8]) -> bool) -> bool {
        let start = self.data.len();
        // One byte more than expected shows a file that grew.
        let read = (&mut file).take(size as u64 + 1).read_to_end(&mut self.data).is_ok();
        if read && self.data.len() - start == size && intact(&self.data[start..]) {
            self.blobs.push((hash, Some(start..self.data.len())));
            true
        } else {
            self.data.truncate(start);
            false
        }
    }

    /// The message of everything packed so far; the packer starts afresh.
    fn take(&mut self) -> pb::ContentChunk {
        let data = prost::bytes::Bytes::from(std::mem::replace(&mut self.data, Vec::with_capacity(CHUNK_BYTES)));
        let blobs = self
            .blobs
            .drain(..)
            .map(|(hash, range)| match range {
                Some(range) => pb::Blob {
                    hash: hash_bytes(hash),
                    offset: 0,
                    total_size: range.len() as u64,
                    data: data.slice(range),
                    eof: true,
                    missing: false,
                },
                None => pb::Blob { hash: hash_bytes(hash), eof: true, missing: true, ..pb::Blob::default() },
            })
            .collect();
        pb::ContentChunk { blobs }
    }
}

/// A content hash as a `Blob` field.
fn hash_bytes(hash: Hash) -> prost::bytes::Bytes {
    prost::bytes::Bytes::copy_from_slice(hash.as_bytes())
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

    #[test]
    fn small_blobs_share_one_buffer_and_a_file_of_another_size_is_not_packed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &[u8]| {
            std::fs::write(dir.path().join(name), content).unwrap();
            std::fs::File::open(dir.path().join(name)).unwrap()
        };
        let (one, two) = (write("one", b"first"), write("two", b"second blob"));
        let mut packer = Packer::new();
        let accept = |_: &[u8]| true;
        assert!(packer.read(Hash::of_content(b"first"), &one, 5, accept));
        // The file holds more (or fewer) bytes than its stat said: nothing is kept.
        assert!(!packer.read(Hash::of_content(b"second"), &write("grew", b"second blob"), 6, accept));
        assert!(!packer.read(Hash::of_content(b"second blob!"), &write("shrank", b"second blob"), 12, accept));
        // Bytes the check refuses are not kept either.
        assert!(!packer.read(Hash::of_content(b"second blob"), &write("refused", b"second blob"), 11, |_| false));
        packer.missing(Hash::of_content(b"gone"));
        assert!(packer.read(Hash::of_content(b"second blob"), &two, 11, accept));
        assert!(packer.has_room(CHUNK_BYTES - 16) && !packer.has_room(CHUNK_BYTES - 15));

        let message = packer.take();
        assert!(packer.is_empty() && packer.has_room(CHUNK_BYTES), "the packer starts afresh");
        let shown: Vec<(&[u8], bool, u64)> =
            message.blobs.iter().map(|b| (&b.data[..], b.missing, b.total_size)).collect();
        assert_eq!(shown, [(&b"first"[..], false, 5), (&b""[..], true, 0), (&b"second blob"[..], false, 11)]);
        assert_eq!(message.blobs[1].hash, hash_bytes(Hash::of_content(b"gone")));
        assert!(message.blobs.iter().all(|b| b.eof && b.offset == 0));
        // Both blobs are slices of the one buffer, side by side.
        assert_eq!(message.blobs[0].data.as_ptr().wrapping_add(5), message.blobs[2].data.as_ptr());
    }
}
