//! Conversions between manifest types and wire messages.
//!
//! Outgoing: a manifest directory becomes a `ReadDirResponse`. Incoming: a
//! `ReadDirResponse` becomes a manifest `Dir` only after every name passes the
//! path rules, every field has its exact size, the entries are strictly sorted,
//! and the recomputed Merkle hash equals the one the response claims — so a
//! peer can lie about nothing without being caught here.

use manifest::{Dir, DirMeta, Entry, FileMeta, Hash, Node, Owner, RelPath, StatKey, SymlinkMeta, Timestamp};
use proto::v1 as pb;
use sync::remote::{Changes, ListedEntry, Listing, Piece};

/// A manifest directory as a `ReadDir` answer.
pub fn dir_to_proto(dir: &Dir, root: Hash) -> pb::ReadDirResponse {
    pb::ReadDirResponse {
        hash: dir.hash().as_bytes().to_vec(),
        mode: dir.meta.mode,
        mtime_secs: dir.meta.mtime.secs,
        mtime_nanos: dir.meta.mtime.nanos,
        uid: dir.meta.owner.uid,
        gid: dir.meta.owner.gid,
        entries: dir.children().iter().map(entry_to_proto).collect(),
        root_hash: root.as_bytes().to_vec(),
    }
}

fn entry_to_proto(entry: &Entry) -> pb::DirEntry {
    node_to_proto(&entry.name, &entry.node)
}

/// One entry; a directory is described by its metadata and hash, not its entries.
fn node_to_proto(name: &[u8], node: &Node) -> pb::DirEntry {
    let base = pb::DirEntry { name: name.to_vec(), ..pb::DirEntry::default() };
    match node {
        Node::File(f) => pb::DirEntry {
            kind: pb::EntryKind::File.into(),
            mode: f.mode,
            size: f.size,
            mtime_secs: f.mtime.secs,
            mtime_nanos: f.mtime.nanos,
            hash: f.hash.as_bytes().to_vec(),
            uid: f.owner.uid,
            gid: f.owner.gid,
            ..base
        },
        Node::Dir(d) => dir_entry_to_proto(name, d),
        Node::Symlink(s) => pb::DirEntry {
            kind: pb::EntryKind::Symlink.into(),
            mtime_secs: s.mtime.secs,
            mtime_nanos: s.mtime.nanos,
            symlink_target: s.target.to_vec(),
            uid: s.owner.uid,
            gid: s.owner.gid,
            ..base
        },
    }
}

/// Why a peer's answer was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("peer sent a bad name: {0}")]
    Name(String),
    #[error("peer sent a {field} of {len} bytes (expected 32) for {name}")]
    Hash { field: &'static str, len: usize, name: String },
    #[error("peer sent an entry of unknown kind {kind} for {name}")]
    Kind { kind: i32, name: String },
    #[error("peer sent a bad {field} for {name}")]
    Field { field: &'static str, name: String },
}

/// Decodes one `ReadDir` answer into a listing. Field sizes, kinds, modes and
/// names are checked here; order and the Merkle hash are checked by the planner
/// (`sync::remote`), which trusts nothing a peer says either.
pub fn listing_from_proto(response: &pb::ReadDirResponse) -> Result<Listing, WireError> {
    let mut entries = Vec::with_capacity(response.entries.len());
    for entry in &response.entries {
        RelPath::check_name(&entry.name).map_err(|e| WireError::Name(e.to_string()))?;
        let listed = listed_from_proto(entry, manifest::path::escape(&entry.name))?;
        entries.push((manifest::Name::new(&entry.name), listed));
    }
    let meta = DirMeta {
        mode: mode(response.mode, ".")?,
        mtime: timestamp(response.mtime_secs, response.mtime_nanos, ".")?,
        owner: Owner { uid: response.uid, gid: response.gid },
    };
    Ok(Listing { meta, entries })
}

/// The fields of one entry, each checked (its name is the caller's to check).
fn listed_from_proto(entry: &pb::DirEntry, shown: String) -> Result<ListedEntry, WireError> {
    let owner = Owner { uid: entry.uid, gid: entry.gid };
    let mtime = timestamp(entry.mtime_secs, entry.mtime_nanos, &shown)?;
    let mode = mode(entry.mode, &shown)?;
    let listed = match pb::EntryKind::try_from(entry.kind) {
        Ok(pb::EntryKind::File) if entry.size > manifest::path::MAX_FILE_BYTES => {
            return Err(WireError::Field { field: "size", name: shown });
        }
        Ok(pb::EntryKind::File) => ListedEntry::File(FileMeta {
            size: entry.size,
            mode,
            mtime,
            hash: hash32(&entry.hash, "content hash", &shown)?,
            owner,
            stat: StatKey::default(),
        }),
        Ok(pb::EntryKind::Dir) => ListedEntry::Dir {
            meta: DirMeta { mode, mtime, owner },
            hash: hash32(&entry.hash, "directory hash", &shown)?,
        },
        Ok(pb::EntryKind::Symlink) => {
            if entry.symlink_target.is_empty() || entry.symlink_target.contains(&0) {
                return Err(WireError::Field { field: "symlink target", name: shown });
            }
            ListedEntry::Symlink(SymlinkMeta { target: entry.symlink_target.clone().into(), mtime, owner })
        }
        _ => return Err(WireError::Kind { kind: entry.kind, name: shown }),
    };
    Ok(listed)
}

/// A directory as an entry: its metadata and hash, not its entries.
fn dir_entry_to_proto(name: &[u8], dir: &Dir) -> pb::DirEntry {
    pb::DirEntry {
        name: name.to_vec(),
        kind: pb::EntryKind::Dir.into(),
        mode: dir.meta.mode,
        mtime_secs: dir.meta.mtime.secs,
        mtime_nanos: dir.meta.mtime.nanos,
        hash: dir.hash().as_bytes().to_vec(),
        uid: dir.meta.owner.uid,
        gid: dir.meta.owner.gid,
        ..pb::DirEntry::default()
    }
}

/// A `ReadChanges` answer as the manifest changes it describes. The one
/// expected root is checked on every message; the paths pass the path rules,
/// each entry's name is its path's last component, and every field is checked
/// as in a listing. Order, and what the changes lead to, the planner checks.
pub fn changes_from_proto(response: &pb::ReadChangesResponse, since: Hash) -> Result<Changes, WireError> {
    let from = hash32(&response.from_root, "from_root", "a change list")?;
    if from != since {
        return Err(WireError::Field { field: "from_root (not the root asked about)", name: "a change list".into() });
    }
    let to = hash32(&response.to_root, "to_root", "a change list")?;
    let mut changes = Vec::with_capacity(response.changes.len());
    for change in &response.changes {
        let path = RelPath::new(&change.path).map_err(|e| WireError::Name(e.to_string()))?;
        let shown = path.display();
        let entry = match &change.entry {
            None => None,
            Some(entry) => {
                if entry.name.as_slice() != path.components().next_back().unwrap_or_default() {
                    return Err(WireError::Field { field: "entry name (not the path's last component)", name: shown });
                }
                Some(listed_from_proto(entry, shown)?)
            }
        };
        changes.push((path, entry));
    }
    Ok(Changes { to_root: to, changes })
}

/// The change at `path` of `manifest`: the entry there now, if any.
pub fn change_to_proto(manifest: &manifest::Manifest, path: &RelPath) -> pb::Change {
    let name = path.components().next_back().unwrap_or_default();
    let entry = if path.is_root() {
        Some(dir_entry_to_proto(name, manifest.root()))
    } else {
        manifest.get(path).map(|node| node_to_proto(name, node))
    };
    pb::Change { path: path.as_bytes().to_vec(), entry }
}

/// Decodes one content piece.
pub fn piece_from_proto(blob: pb::Blob) -> Result<Piece, WireError> {
    Ok(Piece {
        hash: hash32(&blob.hash, "content hash", "a blob")?,
        offset: blob.offset,
        data: blob.data,
        eof: blob.eof,
        total_size: blob.total_size,
        missing: blob.missing,
    })
}

fn hash32(bytes: &[u8], field: &'static str, name: &str) -> Result<Hash, WireError> {
    Hash::from_slice(bytes).ok_or_else(|| WireError::Hash { field, len: bytes.len(), name: name.to_owned() })
}

fn timestamp(secs: i64, nanos: u32, name: &str) -> Result<Timestamp, WireError> {
    if nanos >= 1_000_000_000 {
        return Err(WireError::Field { field: "mtime", name: name.to_owned() });
    }
    Ok(Timestamp::new(secs, nanos))
}

fn mode(mode: u32, name: &str) -> Result<u32, WireError> {
    if mode & !0o7777 != 0 {
        return Err(WireError::Field { field: "mode", name: name.to_owned() });
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> manifest::Manifest {
        let mut m = manifest::Manifest::empty();
        let file = |c: &[u8]| {
            Node::File(FileMeta {
                size: c.len() as u64,
                mode: 0o644,
                mtime: Timestamp::new(5, 6),
                hash: Hash::of_content(c),
                owner: Owner { uid: 1, gid: 2 },
                stat: StatKey::default(),
            })
        };
        let p = |s: &str| RelPath::new(s).unwrap();
        m.insert(&p("a"), file(b"a")).unwrap();
        m.insert(&p("d"), Node::Dir(Dir::empty(DirMeta { mode: 0o755, ..DirMeta::default() }).into())).unwrap();
        m.insert(&p("d/x"), file(b"x")).unwrap();
        m.insert(
            &p("l"),
            Node::Symlink(SymlinkMeta { target: (*b"a").into(), mtime: Timestamp::default(), owner: Owner::default() }),
        )
        .unwrap();
        m
    }

    #[test]
    fn a_listing_survives_the_wire() {
        let m = sample();
        let listing = listing_from_proto(&dir_to_proto(m.root(), m.root_hash())).unwrap();
        let names: Vec<&[u8]> = listing.entries.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, [&b"a"[..], b"d", b"l"]);
        assert!(
            matches!(&listing.entries[1].1, ListedEntry::Dir { hash, .. } if Some(*hash) == m.dir(&RelPath::new("d").unwrap()).map(Dir::hash))
        );
    }

    #[test]
    fn malformed_fields_are_caught() {
        let m = sample();
        let honest = dir_to_proto(m.root(), m.root_hash());

        let mut bad_name = honest.clone();
        bad_name.entries[0].name = b"../etc".to_vec();
        assert!(matches!(listing_from_proto(&bad_name), Err(WireError::Name(_))));

        let mut slash = honest.clone();
        slash.entries[0].name = b"a/b".to_vec();
        assert!(matches!(listing_from_proto(&slash), Err(WireError::Name(_))));

        let mut short_hash = honest.clone();
        short_hash.entries[0].hash.truncate(31);
        assert!(matches!(listing_from_proto(&short_hash), Err(WireError::Hash { .. })));

        let mut bad_kind = honest.clone();
        bad_kind.entries[0].kind = 42;
        assert!(matches!(listing_from_proto(&bad_kind), Err(WireError::Kind { .. })));

        let mut bad_mode = honest;
        bad_mode.entries[0].mode = 0o100644;
        assert!(matches!(listing_from_proto(&bad_mode), Err(WireError::Field { field: "mode", .. })));
    }

    #[test]
    fn changes_survive_the_wire_and_lies_about_them_are_caught() {
        let m = sample();
        let since = Hash::of_content(b"an earlier root");
        let paths = ["", "a", "d/x", "gone"].map(|s| RelPath::new(s).unwrap());
        let honest = pb::ReadChangesResponse {
            from_root: since.as_bytes().to_vec(),
            to_root: m.root_hash().as_bytes().to_vec(),
            changes: paths.iter().map(|path| change_to_proto(&m, path)).collect(),
        };
        let changes = changes_from_proto(&honest, since).unwrap();
        assert_eq!(changes.to_root, m.root_hash());
        let decoded: Vec<(String, bool)> = changes.changes.iter().map(|(p, e)| (p.display(), e.is_some())).collect();
        assert_eq!(decoded, [(".".into(), true), ("a".into(), true), ("d/x".into(), true), ("gone".into(), false)]);
        assert!(matches!(&changes.changes[2].1, Some(ListedEntry::File(f)) if f.hash == Hash::of_content(b"x")));

        let other_since = changes_from_proto(&honest, Hash::of_content(b"another root"));
        assert!(matches!(other_since, Err(WireError::Field { .. })), "an answer about another root");
        let mut escaping = honest.clone();
        escaping.changes[1].path = b"../a".to_vec();
        assert!(matches!(changes_from_proto(&escaping, since), Err(WireError::Name(_))));
        let mut renamed = honest.clone();
        renamed.changes[2].entry.as_mut().unwrap().name = b"y".to_vec();
        assert!(matches!(changes_from_proto(&renamed, since), Err(WireError::Field { .. })), "name is not the path's");
        let mut short_root = honest;
        short_root.to_root.truncate(8);
        assert!(matches!(changes_from_proto(&short_root, since), Err(WireError::Hash { .. })));
    }
}
