//! The engine against an in-memory peer: honest, then lying in every way the
//! wire allows. Every hostile case must end with a clear error, nothing written
//! outside the root, and the tree exactly as it was.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use manifest::{Dir, FileMeta, Hash, Manifest, Node, Owner, RelPath, ScanOptions, StatKey, Timestamp};
use sync::engine::{Event, Outcome, SyncRequest, TreeSetup, sync_tree};
use sync::guards::{DeleteLimits, SourcePool, SourceReadiness};
use sync::remote::{
    Changes, ListedEntry, Listing, PeerSource, Piece, PieceStream, RemoteError, RemoteStatus, RemoteTree, Wanted,
};
use sync::{FakeProbe, Space, StatvfsProbe};

/// A rewrite of what the peer is about to send.
type Tamper<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// A peer serving a real directory's manifest and content from memory, with
/// knobs to make it lie.
struct MemoryPeer {
    manifest: Manifest,
    content: HashMap<Hash, Vec<u8>>,
    pool: SourcePool,
    readiness: SourceReadiness,
    /// Rewrites a listing before it is sent.
    tamper_listing: Tamper<Listing>,
    /// Rewrites the pieces of a fetch before they are sent.
    tamper_pieces: Tamper<Vec<Piece>>,
    read_dirs: AtomicUsize,
    /// Listing requests (each asks for one level's directories at once).
    read_dir_calls: AtomicUsize,
    fetched: Mutex<Vec<Hash>>,
    /// A listing that never arrives.
    hang_read_dir: bool,
    /// A list of changes that never arrives.
    hang_read_changes: bool,
    /// An earlier manifest of this tree, whose changes since it `read_changes` tells.
    earlier: Option<Manifest>,
    /// Rewrites a list of changes before it is sent.
    tamper_changes: Tamper<Changes>,
    read_changes_calls: AtomicUsize,
}

impl MemoryPeer {
    fn of(dir: &Path) -> Self {
        let manifest = manifest::scan(dir, &ScanOptions::default(), None).unwrap().manifest;
        let mut content = HashMap::new();
        for (path, node) in manifest.walk() {
            if let Node::File(f) = node {
                content.insert(f.hash, fs::read(dir.join(path.as_path())).unwrap());
            }
        }
        Self {
            manifest,
            content,
            pool: SourcePool::Serve,
            readiness: SourceReadiness::Ready,
            tamper_listing: Box::new(|_| {}),
            tamper_pieces: Box::new(|_| {}),
            read_dirs: AtomicUsize::new(0),
            read_dir_calls: AtomicUsize::new(0),
            fetched: Mutex::new(Vec::new()),
            hang_read_dir: false,
            hang_read_changes: false,
            earlier: None,
            tamper_changes: Box::new(|_| {}),
            read_changes_calls: AtomicUsize::new(0),
        }
    }

    /// This peer, remembering `earlier` as a manifest it had before.
    fn remembering(mut self, earlier: Manifest) -> Self {
        self.earlier = Some(earlier);
        self
    }

    fn find(dir: &Dir, hash: Hash) -> Option<&Dir> {
        if dir.hash() == hash {
            return Some(dir);
        }
        dir.children().iter().find_map(|e| match &e.node {
            Node::Dir(d) => Self::find(d, hash),
            _ => None,
        })
    }
}

impl MemoryPeer {
    async fn listing(&self, hash: Hash) -> Result<Listing, RemoteError> {
        self.read_dirs.fetch_add(1, Ordering::Relaxed);
        if self.hang_read_dir {
            futures::future::pending::<()>().await;
        }
        let dir = Self::find(self.manifest.root(), hash).ok_or(RemoteError::DirGone(hash))?;
        let mut listing = Listing {
            meta: dir.meta,
            entries: dir
                .children()
                .iter()
                .map(|e| {
                    let entry = match &e.node {
                        Node::File(f) => ListedEntry::File(f.clone()),
                        Node::Symlink(s) => ListedEntry::Symlink(s.clone()),
                        Node::Dir(d) => ListedEntry::Dir { meta: d.meta, hash: d.hash() },
                    };
                    (e.name.clone(), entry)
                })
                .collect(),
        };
        (self.tamper_listing)(&mut listing);
        Ok(listing)
    }
}

impl PeerSource for MemoryPeer {
    async fn status(&self) -> Result<RemoteStatus, RemoteError> {
        let totals = self.manifest.totals();
        Ok(RemoteStatus {
            node: "memory".into(),
            pool: self.pool,
            tree: Some(RemoteTree {
                root: self.manifest.root_hash(),
                readiness: self.readiness,
                leaves: totals.files + totals.symlinks,
            }),
        })
    }

    async fn read_dirs(&self, wanted: Vec<Wanted>) -> Result<Vec<Listing>, RemoteError> {
        self.read_dir_calls.fetch_add(1, Ordering::Relaxed);
        let mut listings = Vec::with_capacity(wanted.len());
        for Wanted { hash, .. } in wanted {
            listings.push(self.listing(hash).await?);
        }
        Ok(listings)
    }

    async fn read_changes(&self, since: Hash) -> Result<Option<Changes>, RemoteError> {
        self.read_changes_calls.fetch_add(1, Ordering::Relaxed);
        if self.hang_read_changes {
            futures::future::pending::<()>().await;
        }
        let Some(earlier) = self.earlier.as_ref().filter(|m| m.root_hash() == since) else {
            return Ok(None);
        };
        let paths = manifest::changed_paths(earlier, &self.manifest, usize::MAX).unwrap();
        let node = |path: &RelPath| match path.is_root() {
            true => Some(ListedEntry::Dir { meta: self.manifest.root().meta, hash: self.manifest.root_hash() }),
            false => self.manifest.get(path).map(|node| match node {
                Node::File(f) => ListedEntry::File(f.clone()),
                Node::Symlink(s) => ListedEntry::Symlink(s.clone()),
                Node::Dir(d) => ListedEntry::Dir { meta: d.meta, hash: d.hash() },
            }),
        };
        let changes = paths.into_iter().map(|path| (path.clone(), node(&path))).collect();
        let mut changes = Changes { to_root: self.manifest.root_hash(), changes };
        (self.tamper_changes)(&mut changes);
        Ok(Some(changes))
    }

    async fn fetch(&self, wanted: Vec<Wanted>) -> Result<PieceStream, RemoteError> {
        let hashes: Vec<Hash> = wanted.iter().map(|w| w.hash).collect();
        self.fetched.lock().unwrap().extend(hashes.iter().copied());
        let mut pieces = Vec::new();
        for hash in hashes {
            let data = self.content.get(&hash).cloned();
            pieces.push(match data {
                Some(data) => Piece {
                    hash,
                    offset: 0,
                    total_size: data.len() as u64,
                    data: data.into(),
                    eof: true,
                    missing: false,
                },
                None => Piece { hash, offset: 0, data: Default::default(), eof: true, total_size: 0, missing: true },
            });
        }
        (self.tamper_pieces)(&mut pieces);
        let chunks: Vec<Result<Vec<Piece>, RemoteError>> = pieces.into_iter().map(|p| Ok(vec![p])).collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn source_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..30 {
        write(dir.path(), &format!("php-1.44/includes/F{i}.php"), format!("<?php // {i}\n").as_bytes());
    }
    write(dir.path(), "wmf-config/CommonSettings.php", b"<?php $x = 1;\n");
    write(dir.path(), "dblists/all.dblist", b"enwiki\n");
    std::os::unix::fs::symlink("php-1.44", dir.path().join("w")).unwrap();
    dir
}

struct Receiver {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    state: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn receiver() -> Receiver {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let state = dir.path().join("state");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&state).unwrap();
    fs::create_dir_all(&outside).unwrap();
    Receiver { _dir: dir, root, state, outside }
}

impl Receiver {
    fn setup(&self) -> TreeSetup {
        TreeSetup {
            name: "staging".into(),
            root: self.root.clone(),
            state_dir: self.state.clone(),
            excludes: manifest::Excludes::default(),
            limits: DeleteLimits::default(),
            preserve_owner: false,
            local_depooled: false,
            keep_syncs: 5,
            after_fetch_stream: || {},
        }
    }

    fn manifest(&self) -> Manifest {
        manifest::scan(&self.root, &ScanOptions::default(), None).unwrap().manifest
    }

    /// Nothing was written outside the root, no staging or journal is left,
    /// and the tree is still `before`.
    fn assert_untouched(&self, before: Hash) {
        assert_eq!(self.manifest().root_hash(), before, "the tree must be exactly as it was");
        assert_eq!(fs::read_dir(&self.outside).unwrap().count(), 0, "nothing written outside the root");
        let staging = self.root.join(".stagingd/staging");
        let left = fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "no staging left behind");
        assert!(!self.state.join("journal").exists(), "no journal left behind");
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn request() -> SyncRequest {
    SyncRequest { peer: "deploy1002".into(), who: "test".into(), ..SyncRequest::default() }
}

fn run(peer: &MemoryPeer, receiver: &Receiver, request: &SyncRequest) -> sync::engine::Report {
    let local = std::sync::Arc::new(receiver.manifest());
    rt().block_on(sync_tree(peer, &receiver.setup(), local, &StatvfsProbe, request, &|_: Event| {}))
}

#[test]
fn an_honest_peer_is_copied_exactly_and_a_small_change_lists_only_what_changed() {
    let source = source_tree();
    let receiver = receiver();
    let peer = MemoryPeer::of(source.path());
    let report = run(&peer, &receiver, &request());
    assert!(matches!(report.outcome, Outcome::Applied), "{:?}", report.outcome);
    assert_eq!(receiver.manifest().root_hash(), peer.manifest.root_hash());
    assert_eq!(report.manifest.unwrap().root_hash(), peer.manifest.root_hash());
    // Every directory listed once, one request per level of the tree, not per directory.
    let dirs = peer.manifest.totals().dirs as usize + 1;
    assert_eq!(peer.read_dirs.load(Ordering::Relaxed), dirs);
    let depth = peer.manifest.walk().iter().map(|(path, _)| path.depth()).max().unwrap();
    assert!(
        peer.read_dir_calls.load(Ordering::Relaxed) <= depth + 1,
        "{} calls",
        peer.read_dir_calls.load(Ordering::Relaxed)
    );

    // One file changes deep down: only the directories on its path are listed.
    write(source.path(), "php-1.44/includes/F7.php", b"<?php // changed\n");
    let peer = MemoryPeer::of(source.path());
    let report = run(&peer, &receiver, &request());
    assert!(matches!(report.outcome, Outcome::Applied), "{:?}", report.outcome);
    assert_eq!(receiver.manifest().root_hash(), peer.manifest.root_hash());
    assert_eq!(peer.read_dirs.load(Ordering::Relaxed), 3, "root, php-1.44, includes");
    assert_eq!(peer.fetched.lock().unwrap().len(), 1, "only the changed file's content is fetched");
}

/// A source large enough that the deletions of [`change_everything`] stay below
/// the default delete threshold.
fn larger_source_tree() -> tempfile::TempDir {
    let source = source_tree();
    for i in 0..40 {
        write(source.path(), &format!("php-1.44/languages/L{i}.php"), format!("<?php // L{i}\n").as_bytes());
    }
    source
}

/// The source after a change of every kind: a file modified, one added in a new
/// directory, one deleted, a directory deleted, a file turned into a directory.
fn change_everything(source: &Path) {
    write(source, "wmf-config/CommonSettings.php", b"<?php $x = 2;\n");
    write(source, "php-1.44/extensions/New/New.php", b"<?php // new\n");
    fs::remove_file(source.join("php-1.44/includes/F3.php")).unwrap();
    fs::remove_dir_all(source.join("dblists")).unwrap();
    fs::remove_file(source.join("php-1.44/includes/F4.php")).unwrap();
    write(source, "php-1.44/includes/F4.php/inside.php", b"<?php // was a file\n");
}

#[test]
fn a_peer_that_remembers_our_tree_tells_what_changed_and_nothing_is_listed() {
    let source = larger_source_tree();
    let receiver = receiver();
    let before = MemoryPeer::of(source.path());
    run(&before, &receiver, &request());
    change_everything(source.path());
    let peer = MemoryPeer::of(source.path()).remembering(before.manifest.clone());
    let report = run(&peer, &receiver, &request());
    assert!(matches!(report.outcome, Outcome::Applied), "{:?}", report.outcome);
    assert_eq!(receiver.manifest().root_hash(), peer.manifest.root_hash());
    assert_eq!(peer.read_changes_calls.load(Ordering::Relaxed), 1);
    assert_eq!(peer.read_dirs.load(Ordering::Relaxed), 0, "no directory listed");
    assert_eq!(peer.fetched.lock().unwrap().len(), 3, "the changed, the new and the moved-down file");

    // A peer that does not remember our root: the walk, as before.
    write(source.path(), "wmf-config/CommonSettings.php", b"<?php $x = 3;\n");
    let peer = MemoryPeer::of(source.path()).remembering(before.manifest.clone());
    let report = run(&peer, &receiver, &request());
    assert!(matches!(report.outcome, Outcome::Applied), "{:?}", report.outcome);
    assert_eq!(receiver.manifest().root_hash(), peer.manifest.root_hash());
    assert_eq!(peer.read_dirs.load(Ordering::Relaxed), 2, "root and wmf-config");
}

#[test]
fn a_list_of_changes_that_does_not_lead_to_the_peers_root_is_not_used() {
    type Lie = fn(&mut Changes);
    let lies: [(&str, Lie); 4] = [
        ("drops a change", |c| {
            c.changes.pop();
        }),
        ("alters a file", |c| {
            for (_, entry) in &mut c.changes {
                if let Some(ListedEntry::File(f)) = entry {
                    f.hash = Hash::of_content(b"something else");
                }
            }
        }),
        ("claims another root", |c| c.to_root = Hash::of_content(b"elsewhere")),
        ("sends paths out of order", |c| c.changes.reverse()),
    ];
    for (lie, tamper) in lies {
        let source = larger_source_tree();
        let receiver = receiver();
        let before = MemoryPeer::of(source.path());
        run(&before, &receiver, &request());
        change_everything(source.path());
        let mut peer = MemoryPeer::of(source.path()).remembering(before.manifest.clone());
        peer.tamper_changes = Box::new(tamper);
        let report = run(&peer, &receiver, &request());
        // Caught by the root check, and the walk gives the peer's real tree.
        assert!(matches!(report.outcome, Outcome::Applied), "{lie}: {:?}", report.outcome);
        assert_eq!(receiver.manifest().root_hash(), peer.manifest.root_hash(), "{lie}");
        assert!(peer.read_dirs.load(Ordering::Relaxed) > 0, "{lie}: walked instead");
    }
}

#[test]
fn content_we_already_have_is_copied_locally_not_fetched() {
    let source = source_tree();
    let receiver = receiver();
    run(&MemoryPeer::of(source.path()), &receiver, &request());
    // A new branch directory holding the old branch's files plus one new file.
    for i in 0..30 {
        write(source.path(), &format!("php-1.45/includes/F{i}.php"), format!("<?php // {i}\n").as_bytes());
    }
    write(source.path(), "php-1.45/includes/New.php", b"<?php // new in 1.45\n");
    let peer = MemoryPeer::of(source.path());
    let report = run(&peer, &receiver, &request());
    assert!(matches!(report.outcome, Outcome::Applied), "{:?}", report.outcome);
    assert_eq!(peer.fetched.lock().unwrap().len(), 1);
    assert_eq!(report.bytes_fetched, b"<?php // new in 1.45\n".len() as u64);
    assert!(report.bytes_copied_locally > 0);
    assert_eq!(receiver.manifest().root_hash(), peer.manifest.root_hash());
}

/// Runs a hostile sync into a receiver that holds a good tree, and checks that
/// it failed with `expect` in its message and changed nothing.
fn assert_hostile_sync_fails(peer: MemoryPeer, expect: &str) {
    let good = source_tree();
    let receiver = receiver();
    run(&MemoryPeer::of(good.path()), &receiver, &request());
    write(&receiver.root, "local-only.txt", b"mine");
    let before = receiver.manifest().root_hash();
    let report = run(&peer, &receiver, &request());
    match &report.outcome {
        Outcome::Failed(message) => assert!(message.contains(expect), "expected {expect:?} in: {message}"),
        other => panic!("a hostile peer must make the sync fail, got {other:?}"),
    }
    receiver.assert_untouched(before);
}

fn changed_source() -> tempfile::TempDir {
    let source = source_tree();
    write(source.path(), "wmf-config/CommonSettings.php", b"<?php $x = 2;\n");
    write(source.path(), "php-1.44/includes/New.php", b"<?php // new\n");
    source
}

#[test]
fn a_peer_naming_a_path_with_dot_dot_is_refused() {
    let mut peer = MemoryPeer::of(changed_source().path());
    peer.tamper_listing = Box::new(|listing| {
        if let Some((name, _)) = listing.entries.first_mut() {
            *name = (*b"..").into();
        }
    });
    assert_hostile_sync_fails(peer, "bad listing");
}

#[test]
fn a_peer_naming_an_absolute_path_is_refused() {
    let mut peer = MemoryPeer::of(changed_source().path());
    peer.tamper_listing = Box::new(|listing| {
        if let Some((name, _)) = listing.entries.first_mut() {
            *name = (*b"/etc/passwd").into();
        }
    });
    assert_hostile_sync_fails(peer, "bad listing");
}

#[test]
fn a_listing_that_does_not_match_its_hash_is_refused() {
    let mut peer = MemoryPeer::of(changed_source().path());
    // Adds an entry the hash does not cover: an extra file at the root.
    peer.tamper_listing = Box::new(|listing| {
        let extra = FileMeta {
            size: 4,
            mode: 0o644,
            mtime: Timestamp::default(),
            hash: Hash::of_content(b"evil"),
            owner: Owner::default(),
            stat: StatKey::default(),
        };
        listing.entries.push((manifest::Name::new(b"zz-injected.php"), ListedEntry::File(extra)));
    });
    assert_hostile_sync_fails(peer, "hashes to");
}

#[test]
fn content_that_does_not_match_its_hash_is_refused() {
    let mut peer = MemoryPeer::of(changed_source().path());
    peer.tamper_pieces = Box::new(|pieces| {
        for piece in pieces.iter_mut() {
            let mut data = piece.data.to_vec();
            if let Some(byte) = data.first_mut() {
                *byte ^= 0xff;
            }
            piece.data = data.into();
        }
    });
    assert_hostile_sync_fails(peer, "hash");
}

#[test]
fn a_stream_that_stops_mid_file_is_refused() {
    let mut peer = MemoryPeer::of(changed_source().path());
    peer.tamper_pieces = Box::new(|pieces| {
        if let Some(last) = pieces.last_mut() {
            last.data.truncate(last.data.len() / 2);
            last.eof = false;
        }
    });
    assert_hostile_sync_fails(peer, "ended before");
}

#[test]
fn content_that_was_not_asked_for_is_refused() {
    let mut peer = MemoryPeer::of(changed_source().path());
    peer.tamper_pieces = Box::new(|pieces| {
        pieces.insert(
            0,
            Piece {
                hash: Hash::of_content(b"x"),
                offset: 0,
                data: bytes::Bytes::from_static(b"x"),
                eof: true,
                total_size: 1,
                missing: false,
            },
        );
    });
    assert_hostile_sync_fails(peer, "not asked for");
}

#[test]
fn a_local_symlink_where_the_peer_has_a_directory_is_replaced_never_followed() {
    let source = source_tree();
    write(source.path(), "cache/l10n/en.json", b"{}");
    let receiver = receiver();
    run(&MemoryPeer::of(source_tree().path()), &receiver, &request());
    // Locally, `cache` is a symlink pointing outside the tree.
    std::os::unix::fs::symlink(&receiver.outside, receiver.root.join("cache")).unwrap();
    let peer = MemoryPeer::of(source.path());
    let report = run(&peer, &receiver, &request());
    assert!(matches!(report.outcome, Outcome::Applied), "{:?}", report.outcome);
    assert_eq!(fs::read_dir(&receiver.outside).unwrap().count(), 0, "nothing written through the symlink");
    assert!(fs::symlink_metadata(receiver.root.join("cache")).unwrap().is_dir());
    assert_eq!(receiver.manifest().root_hash(), peer.manifest.root_hash());
}

#[test]
fn an_enormous_declared_size_is_stopped_by_the_capacity_guard() {
    let source = source_tree();
    let mut peer = MemoryPeer::of(source.path());
    let mut huge = peer.manifest.clone();
    let file = FileMeta {
        size: 1 << 39,
        mode: 0o644,
        mtime: Timestamp::default(),
        hash: Hash::of_content(b"never sent"),
        owner: Owner::default(),
        stat: StatKey::default(),
    };
    huge.insert(&RelPath::new("huge.bin").unwrap(), Node::File(file)).unwrap();
    peer.manifest = huge;
    let receiver = receiver();
    let before = receiver.manifest().root_hash();
    let local = std::sync::Arc::new(receiver.manifest());
    let probe = FakeProbe::new(Space {
        free_bytes: 1 << 30,
        total_bytes: 1 << 31,
        free_inodes: 1 << 20,
        total_inodes: 1 << 21,
    });
    let report = rt().block_on(sync_tree(&peer, &receiver.setup(), local, &probe, &request(), &|_: Event| {}));
    match report.outcome {
        Outcome::Refused(refusal) => assert_eq!(refusal.guard, "capacity"),
        other => panic!("{other:?}"),
    }
    assert!(peer.fetched.lock().unwrap().is_empty(), "nothing fetched before the guard");
    receiver.assert_untouched(before);
}

#[test]
fn a_peer_that_is_not_serving_or_not_ready_is_refused_before_planning() {
    let source = source_tree();
    let receiver = receiver();
    for (pool, readiness, guard) in [
        (SourcePool::ReceiveOnly, SourceReadiness::Ready, "source-not-serving"),
        (SourcePool::Serve, SourceReadiness::Scanning, "source-not-ready"),
        (SourcePool::Serve, SourceReadiness::Applying, "source-not-ready"),
    ] {
        let mut peer = MemoryPeer::of(source.path());
        peer.pool = pool;
        peer.readiness = readiness;
        match run(&peer, &receiver, &request()).outcome {
            Outcome::Refused(refusal) => assert_eq!(refusal.guard, guard),
            other => panic!("{other:?}"),
        }
        assert_eq!(peer.read_dirs.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn a_peer_symlink_pointing_outside_is_copied_as_a_link_and_never_written_through() {
    let receiver = receiver();
    let source = source_tree();
    // The peer serves a symlink to a directory outside any tree, and files next to
    // it; a receiver that followed links while writing would write outside.
    std::os::unix::fs::symlink(&receiver.outside, source.path().join("escape")).unwrap();
    write(source.path(), "escape-sibling/file.php", b"<?php\n");
    let peer = MemoryPeer::of(source.path());
    let report = run(&peer, &receiver, &request());
    assert!(matches!(report.outcome, Outcome::Applied), "{:?}", report.outcome);
    assert_eq!(fs::read_dir(&receiver.outside).unwrap().count(), 0, "nothing written outside the root");
    assert_eq!(fs::read_link(receiver.root.join("escape")).unwrap(), receiver.outside, "faithful copy of the link");
    assert_eq!(receiver.manifest().root_hash(), peer.manifest.root_hash());
}

#[test]
fn a_listing_or_list_of_changes_that_never_arrives_ends_the_sync_with_nothing_applied() {
    for hang_changes in [false, true] {
        let mut peer = MemoryPeer::of(changed_source().path());
        peer.hang_read_dir = !hang_changes;
        peer.hang_read_changes = hang_changes;
        let good = source_tree();
        let receiver = receiver();
        run(&MemoryPeer::of(good.path()), &receiver, &request());
        let before = receiver.manifest().root_hash();
        let local = std::sync::Arc::new(receiver.manifest());
        // Paused time: the 60 s timeout elapses as soon as nothing else can run.
        let paused = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let report =
            paused.block_on(sync_tree(&peer, &receiver.setup(), local, &StatvfsProbe, &request(), &|_: Event| {}));
        match &report.outcome {
            Outcome::Failed(message) => assert!(message.contains("stalled"), "{message}"),
            other => panic!("a stalled peer must fail the sync (hanging changes: {hang_changes}), got {other:?}"),
        }
        receiver.assert_untouched(before);
    }
}

#[test]
fn a_peer_claiming_an_impossible_file_size_is_refused() {
    let mut peer = MemoryPeer::of(changed_source().path());
    peer.tamper_listing = Box::new(|listing| {
        for (_, entry) in listing.entries.iter_mut() {
            if let ListedEntry::File(f) = entry {
                f.size = u64::MAX;
            }
        }
    });
    assert_hostile_sync_fails(peer, "over the");
}
