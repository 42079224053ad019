//! The peer a sync pulls from, as a trait, and the planner that walks its
//! Merkle tree.
//!
//! [`PeerSource`] is what the engine needs from a peer: its status, one
//! directory listing by hash, and a stream of content by hash. The daemon
//! implements it over gRPC; tests implement it in memory, honest or hostile.
//!
//! [`plan_target`] builds the peer's manifest top-down, asking only for
//! directories whose hash we do not already have somewhere in our own tree:
//! metadata traffic is proportional to what changed. Every listing is checked —
//! names against the path rules, order, and the Merkle hash recomputed from the
//! entries against the hash we asked for — so a peer cannot smuggle a path or a
//! lie past this module.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt};
use manifest::{
    Dir, DirMeta, Entry, Excludes, FileMeta, Hash, HashInput, Manifest, Name, Node, RelPath, SymlinkMeta, hash_listing,
};

use crate::guards::{SourcePool, SourceReadiness};

/// One tree of the peer, as its status reports it.
#[derive(Debug, Clone)]
pub struct RemoteTree {
    pub root: Hash,
    pub readiness: SourceReadiness,
    /// Files plus symlinks.
    pub leaves: u64,
}

/// The peer's status for the tree being synced.
#[derive(Debug, Clone)]
pub struct RemoteStatus {
    pub node: String,
    pub pool: SourcePool,
    /// `None` when the peer does not have this tree.
    pub tree: Option<RemoteTree>,
}

/// One entry of a listing, as the peer describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListedEntry {
    File(FileMeta),
    Symlink(SymlinkMeta),
    Dir { meta: DirMeta, hash: Hash },
}

/// A directory listing as the peer sent it: not trusted until checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub meta: DirMeta,
    pub entries: Vec<(Name, ListedEntry)>,
}

/// A piece of content; see the `Blob` message of the wire contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub hash: Hash,
    pub offset: u64,
    /// A slice of the message it arrived in (no copy).
    pub data: bytes::Bytes,
    pub eof: bool,
    pub total_size: u64,
    pub missing: bool,
}

/// Content pieces in the order the peer sends them.
pub type PieceStream = Pin<Box<dyn Stream<Item = Result<Vec<Piece>, RemoteError>> + Send>>;

/// A peer failed or lied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("peer unreachable or failed: {0}")]
    Unavailable(String),
    #[error("peer does not have directory {0} any more (its tree changed while we planned)")]
    DirGone(Hash),
    #[error("peer sent a bad listing for {path}: {why}")]
    BadListing { path: String, why: String },
    #[error("peer's listing for {path} hashes to {actual}, not to the {claimed} it was asked for")]
    ListingMismatch { path: String, claimed: Hash, actual: Hash },
    #[error("peer sent bad content: {0}")]
    BadContent(String),
}

/// What the engine needs from a peer, for one tree.
pub trait PeerSource: Send + Sync {
    fn status(&self) -> impl Future<Output = Result<RemoteStatus, RemoteError>> + Send;
    /// The listings of the peer's directories with these hashes, in order; each
    /// with the path the peer's parent listing showed it at (a hint: any
    /// directory with that hash will do). [`RemoteError::DirGone`] if one of
    /// them is in no directory of the peer's tree any more.
    fn read_dirs(&self, wanted: Vec<Wanted>) -> impl Future<Output = Result<Vec<Listing>, RemoteError>> + Send;
    /// Streams the content of `wanted`, in order (see `FetchContent` in the proto).
    fn fetch(&self, wanted: Vec<Wanted>) -> impl Future<Output = Result<PieceStream, RemoteError>> + Send;
    /// What changed in the peer's tree since it had root `since` (see
    /// `ReadChanges` in the proto). `Ok(None)` when the peer cannot say — it
    /// does not remember that root, too much changed, or it predates the call:
    /// the caller walks the tree instead.
    fn read_changes(&self, since: Hash) -> impl Future<Output = Result<Option<Changes>, RemoteError>> + Send;
}

/// A peer's account of what changed since a root: for each changed path, sorted,
/// the entry there now (a directory without its entries) or `None` when gone.
/// Not trusted: [`plan_target`] applies it to our manifest and keeps the result
/// only if its root hash is the one the peer's status gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub to_root: Hash,
    pub changes: Vec<(RelPath, Option<ListedEntry>)>,
}

/// A content or directory hash to ask the peer for, with the path at which the
/// peer's own listings showed it: the peer can look there directly instead of
/// searching its manifest. Only a hint — the peer checks it, and what it sends
/// is verified here anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub hash: Hash,
    pub at: RelPath,
}

/// Listing requests in flight at once while planning.
pub const PLAN_CONCURRENCY: usize = 4;
/// Directories asked for in one listing request.
pub const READ_DIRS_BATCH: usize = 512;
/// A listing (or list of changes) that has not arrived after this long ends the
/// plan: a peer that never finishes answering cannot hold a sync (and its lock)
/// forever.
pub const READ_DIR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Builds the manifest of the peer's tree with root `remote_root`, reusing every
/// directory of `local` whose hash matches, and leaving out what `excludes`
/// excludes here (the reserved `.stagingd/` included: a peer cannot write into
/// our staging area). The result's root equals `remote_root` unless something
/// was excluded.
pub async fn plan_target<P: PeerSource>(
    peer: &P,
    local: &Manifest,
    remote_root: Hash,
    excludes: &Excludes,
) -> Result<Manifest, RemoteError> {
    if remote_root == local.root_hash() {
        return Ok(local.clone());
    }
    let timer = std::time::Instant::now();
    let changes = in_time(|| "list of changes".to_owned(), peer.read_changes(local.root_hash())).await?;
    if let Some(changes) = changes {
        let count = changes.changes.len();
        match target_from_changes(local, remote_root, changes, excludes) {
            Ok(target) => {
                tracing::debug!(
                    changes = count,
                    millis = timer.elapsed().as_millis() as u64,
                    "peer tree from its changes"
                );
                return Ok(target);
            }
            Err(why) => tracing::warn!("the peer's list of changes was not usable ({why}); walking its tree instead"),
        }
    }
    let mut known: HashMap<Hash, &Arc<Dir>> = HashMap::new();
    index_dirs(local.root(), &mut known);
    let indexed = timer.elapsed();
    let listings = list_new_dirs(peer, &known, remote_root).await?;
    let listed = timer.elapsed();
    let dirs_listed = listings.len();
    let mut uses: HashMap<Hash, usize> = HashMap::from([(remote_root, 1)]);
    for listing in listings.values() {
        for (_, entry) in &listing.entries {
            if let ListedEntry::Dir { hash, .. } = entry
                && listings.contains_key(hash)
                && !known.contains_key(hash)
            {
                *uses.entry(*hash).or_default() += 1;
            }
        }
    }
    let listings = listings.into_iter().map(|(hash, listing)| (hash, (uses.get(&hash).copied().unwrap_or(1), listing)));
    let builder = Builder { known, listings: std::cell::RefCell::new(listings.collect()), excludes };
    // The root's own metadata comes from its listing (it has no parent entry).
    let root = builder.dir(&RelPath::root(), remote_root, None);
    tracing::debug!(
        dirs_listed,
        index_millis = indexed.as_millis() as u64,
        list_millis = (listed - indexed).as_millis() as u64,
        build_millis = (timer.elapsed() - listed).as_millis() as u64,
        "peer tree planned"
    );
    Ok(Manifest::new(Arc::unwrap_or_clone(root)))
}

/// The peer's `answer`, or [`RemoteError::Unavailable`] naming `what` when it has
/// not come within [`READ_DIR_TIMEOUT`].
async fn in_time<T>(
    what: impl FnOnce() -> String,
    answer: impl Future<Output = Result<T, RemoteError>>,
) -> Result<T, RemoteError> {
    tokio::time::timeout(READ_DIR_TIMEOUT, answer).await.map_err(|_| {
        RemoteError::Unavailable(format!(
            "no {} within {} s: the peer stalled; nothing was applied",
            what(),
            READ_DIR_TIMEOUT.as_secs()
        ))
    })?
}

/// Our manifest with the peer's changes applied, if that is the peer's tree
/// (root `remote_root`), minus what `excludes` leaves out here.
fn target_from_changes(
    local: &Manifest,
    remote_root: Hash,
    changes: Changes,
    excludes: &Excludes,
) -> Result<Manifest, String> {
    if changes.to_root != remote_root {
        return Err(format!("they lead to {}, and the peer's tree is now {remote_root}", changes.to_root));
    }
    let mut target = local.clone();
    let mut excluded = Vec::new();
    let nodes = changes.changes.into_iter().map(|(path, entry)| {
        if excludes.is_excluded(&path) {
            excluded.push(path.clone());
        }
        let node = entry.map(|entry| match entry {
            ListedEntry::File(f) => Node::File(f),
            ListedEntry::Symlink(s) => Node::Symlink(s),
            ListedEntry::Dir { meta, .. } => Node::Dir(Arc::new(Dir::empty(meta))),
        });
        (path, node)
    });
    target.apply_changes(nodes).map_err(|e| e.to_string())?;
    if target.root_hash() != remote_root {
        return Err(format!("applied to our tree they give root {}, not the peer's {remote_root}", target.root_hash()));
    }
    if !excluded.is_empty() {
        target
            .batch(|m| -> Result<(), manifest::tree::TreeError> {
                for path in &excluded {
                    if m.get(path).is_some() {
                        m.remove(path, true)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(target)
}

/// Every directory below `dir` by hash: the peer's directories with one of these
/// hashes are shared with our manifest, not listed (nor copied: an `Arc`).
fn index_dirs<'a>(dir: &'a Dir, known: &mut HashMap<Hash, &'a Arc<Dir>>) {
    for entry in dir.children() {
        if let Node::Dir(d) = &entry.node {
            known.entry(d.hash()).or_insert(d);
            index_dirs(d, known);
        }
    }
}

/// The listings of every directory of the peer's tree (root `remote_root`) that
/// we do not have, walking down level by level: one round trip per level of the
/// tree (in batches of [`READ_DIRS_BATCH`]), each listing checked before its
/// subdirectories are asked for.
async fn list_new_dirs<P: PeerSource>(
    peer: &P,
    known: &HashMap<Hash, &Arc<Dir>>,
    remote_root: Hash,
) -> Result<HashMap<Hash, Listing>, RemoteError> {
    let mut listings: HashMap<Hash, Listing> = HashMap::new();
    let mut asked: std::collections::HashSet<Hash> = std::collections::HashSet::from([remote_root]);
    let mut level = vec![Wanted { hash: remote_root, at: RelPath::root() }];
    let mut levels = Vec::new();
    while !level.is_empty() {
        let level_started = std::time::Instant::now();
        let level_len = level.len();
        let batches: Vec<Vec<Wanted>> = level.chunks(READ_DIRS_BATCH).map(<[_]>::to_vec).collect();
        let answered: Vec<(Vec<Wanted>, Vec<Listing>)> = futures::stream::iter(batches)
            .map(|batch| async move {
                let listings =
                    in_time(|| format!("listing of {}", batch[0].at.display()), peer.read_dirs(batch.clone())).await?;
                if listings.len() != batch.len() {
                    return Err(RemoteError::BadListing {
                        path: batch[0].at.display(),
                        why: format!("{} listings for {} directories asked for", listings.len(), batch.len()),
                    });
                }
                Ok((batch, listings))
            })
            .buffer_unordered(PLAN_CONCURRENCY)
            .try_collect()
            .await?;
        let mut next = Vec::new();
        for (batch, batch_listings) in answered {
            for (Wanted { hash, at: path }, listing) in batch.into_iter().zip(batch_listings) {
                check_listing(&path, hash, &listing)?;
                for (name, entry) in &listing.entries {
                    if let ListedEntry::Dir { hash: child, .. } = entry
                        && !known.contains_key(child)
                        && asked.insert(*child)
                    {
                        let child_path = path
                            .join(name)
                            .map_err(|e| RemoteError::BadListing { path: path.display(), why: e.to_string() })?;
                        next.push(Wanted { hash: *child, at: child_path });
                    }
                }
                listings.insert(hash, listing);
            }
        }
        level = next;
        levels.push((level_len, level_started.elapsed().as_micros() as u64));
    }
    tracing::debug!(?levels, "levels listed (directories, microseconds)");
    Ok(listings)
}

/// Checks a listing's names, order, sizes and modes, and that it hashes to the
/// hash we asked for: a lying peer is caught here, before it can make us ask
/// for anything below it or fetch anything at all.
fn check_listing(path: &RelPath, hash: Hash, listing: &Listing) -> Result<(), RemoteError> {
    let shown = path.display();
    let bad = |why: String| RemoteError::BadListing { path: shown.clone(), why };
    let mut previous: Option<&[u8]> = None;
    for (name, entry) in &listing.entries {
        RelPath::check_name(name).map_err(|e| bad(e.to_string()))?;
        path.join(name).map_err(|e| bad(e.to_string()))?;
        match entry {
            ListedEntry::File(f) if f.size > manifest::path::MAX_FILE_BYTES => {
                return Err(bad(format!(
                    "{} claims {} bytes, over the {} a file may have",
                    manifest::path::escape(name),
                    f.size,
                    manifest::path::MAX_FILE_BYTES
                )));
            }
            ListedEntry::File(f) if f.mode > 0o7777 => return Err(bad(format!("bad mode {:o}", f.mode))),
            ListedEntry::Dir { meta, .. } if meta.mode > 0o7777 => {
                return Err(bad(format!("bad mode {:o}", meta.mode)));
            }
            ListedEntry::Symlink(link) if link.target.is_empty() || link.target.contains(&0) => {
                return Err(bad(format!("bad symlink target for {}", manifest::path::escape(name))));
            }
            _ => {}
        }
        if previous.is_some_and(|p| p >= &name[..]) {
            return Err(bad(format!("entries out of order or repeated at {}", manifest::path::escape(name))));
        }
        previous = Some(name);
    }
    let actual = hash_listing(listing.entries.iter().map(|(name, entry)| {
        let input = match entry {
            ListedEntry::File(f) => HashInput::File(f),
            ListedEntry::Symlink(s) => HashInput::Symlink(&s.target),
            ListedEntry::Dir { meta, hash } => HashInput::Dir { mode: meta.mode, hash: *hash },
        };
        (&name[..], input)
    }));
    if actual != hash {
        return Err(RemoteError::ListingMismatch { path: shown, claimed: hash, actual });
    }
    Ok(())
}

/// Assembles the peer's tree from checked listings and our own directories.
struct Builder<'a> {
    known: HashMap<Hash, &'a Arc<Dir>>,
    /// Each listing with the number of directories still to build from it:
    /// the last one takes it, the others copy it.
    listings: std::cell::RefCell<HashMap<Hash, (usize, Listing)>>,
    excludes: &'a Excludes,
}

impl Builder<'_> {
    /// The peer's directory at `path` with hash `hash`. `meta` is what the
    /// parent's listing says of it (its mode is covered by the parent's hash);
    /// `None` for the root, whose metadata only its own listing carries.
    fn dir(&self, path: &RelPath, hash: Hash, meta: Option<DirMeta>) -> Arc<Dir> {
        if let (Some(local), Some(meta)) = (self.known.get(&hash), meta) {
            if local.meta == meta {
                return Arc::clone(local);
            }
            // Same content, other mode or mtime: a copy of this one level.
            let mut dir = Dir::clone(local);
            dir.meta = meta;
            return Arc::new(dir);
        }
        // Taken, not copied (a big directory's listing is most of a small
        // change's plan); a second directory with the same hash copies the first.
        let listing = {
            let mut listings = self.listings.borrow_mut();
            let (uses, _) = listings.get_mut(&hash).expect("every directory we do not have was listed");
            *uses -= 1;
            if *uses == 0 { listings.remove(&hash).expect("just seen").1 } else { listings[&hash].1.clone() }
        };
        let children = listing
            .entries
            .into_iter()
            .map(|(name, entry)| {
                let node = match entry {
                    ListedEntry::File(f) => Node::File(f),
                    ListedEntry::Symlink(s) => Node::Symlink(s),
                    ListedEntry::Dir { meta, hash } => {
                        let child = path.join(&name).expect("names were checked with the listing");
                        Node::Dir(self.dir(&child, hash, Some(meta)))
                    }
                };
                Entry { name, node }
            })
            .collect();
        let meta = meta.unwrap_or(listing.meta);
        Arc::new(self.without_excluded(path, Dir::new(meta, children)))
    }

    /// The directory minus entries this node excludes: they are neither written
    /// nor deleted here, whatever the peer has.
    fn without_excluded(&self, path: &RelPath, dir: Dir) -> Dir {
        let excluded = |entry: &Entry| path.join(&entry.name).is_ok_and(|p| self.excludes.is_excluded(&p));
        if !dir.children().iter().any(excluded) {
            return dir;
        }
        let meta = dir.meta;
        let kept = dir.into_children().into_iter().filter(|e| !excluded(e)).collect();
        Dir::new(meta, kept)
    }
}
