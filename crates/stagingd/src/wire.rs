//! Conversions between manifest types and wire messages.
//!
//! Outgoing: a manifest directory becomes a `ReadDirResponse`. Incoming: a
//! `ReadDirResponse` becomes a manifest `Dir` only after every name passes the
//! path rules, every field has its exact size, the entries are strictly sorted,
//! and the recomputed Merkle hash equals the one the response claims — so a
//! peer can lie about nothing without being caught here.

use manifest::{Dir, DirMeta, Entry, FileMeta, Hash, Node, Owner, RelPath, StatKey, SymlinkMeta, Timestamp};
use proto::v1 as pb;

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
    let base = pb::DirEntry { name: entry.name.to_vec(), ..pb::DirEntry::default() };
    match &entry.node {
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
        Node::Dir(d) => pb::DirEntry {
            kind: pb::EntryKind::Dir.into(),
            mode: d.meta.mode,
            mtime_secs: d.meta.mtime.secs,
            mtime_nanos: d.meta.mtime.nanos,
            hash: d.hash().as_bytes().to_vec(),
            uid: d.meta.owner.uid,
            gid: d.meta.owner.gid,
            ..base
        },
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
    BadName(String),
    #[error("peer sent entries out of order or twice in one directory (at {0})")]
    Unsorted(String),
    #[error("peer sent a {field} of {len} bytes (expected 32) for {name}")]
    BadHash { field: &'static str, len: usize, name: String },
    #[error("peer sent an entry of unknown kind {kind} for {name}")]
    BadKind { kind: i32, name: String },
    #[error("peer sent a bad {field} for {name}")]
    BadField { field: &'static str, name: String },
    #[error("peer's directory listing does not match its hash: claimed {claimed}, entries hash to {actual}")]
    HashMismatch { claimed: Hash, actual: Hash },
}

/// Decodes one `ReadDir` answer into a directory whose subdirectories are empty
/// placeholders (`children` name the subdirectories' claimed hashes, returned
/// alongside). The caller fills the placeholders by walking further and checks
/// each against its claimed hash.
pub fn dir_from_proto(response: &pb::ReadDirResponse) -> Result<DecodedDir, WireError> {
    let claimed = hash32(&response.hash, "directory hash", ".")?;
    let mut entries: Vec<(Box<[u8]>, DecodedEntry)> = Vec::with_capacity(response.entries.len());
    let mut previous: Option<&[u8]> = None;
    for entry in &response.entries {
        RelPath::check_name(&entry.name).map_err(|e| WireError::BadName(e.to_string()))?;
        let shown = manifest::path::escape(&entry.name);
        if previous.is_some_and(|p| p >= entry.name.as_slice()) {
            return Err(WireError::Unsorted(shown));
        }
        previous = Some(&entry.name);
        let owner = Owner { uid: entry.uid, gid: entry.gid };
        let mtime = timestamp(entry.mtime_secs, entry.mtime_nanos, &shown)?;
        let mode = mode(entry.mode, &shown)?;
        let decoded = match pb::EntryKind::try_from(entry.kind) {
            Ok(pb::EntryKind::File) => DecodedEntry::File(FileMeta {
                size: entry.size,
                mode,
                mtime,
                hash: hash32(&entry.hash, "content hash", &shown)?,
                owner,
                stat: StatKey::default(),
            }),
            Ok(pb::EntryKind::Dir) => DecodedEntry::Dir {
                meta: DirMeta { mode, mtime, owner },
                hash: hash32(&entry.hash, "directory hash", &shown)?,
            },
            Ok(pb::EntryKind::Symlink) => {
                if entry.symlink_target.is_empty() || entry.symlink_target.contains(&0) {
                    return Err(WireError::BadField { field: "symlink target", name: shown });
                }
                DecodedEntry::Symlink(SymlinkMeta { target: entry.symlink_target.clone().into(), mtime, owner })
            }
            _ => return Err(WireError::BadKind { kind: entry.kind, name: shown }),
        };
        entries.push((entry.name.clone().into(), decoded));
    }
    let meta = DirMeta {
        mode: mode(response.mode, ".")?,
        mtime: timestamp(response.mtime_secs, response.mtime_nanos, ".")?,
        owner: Owner { uid: response.uid, gid: response.gid },
    };
    Ok(DecodedDir { claimed, meta, entries })
}

/// A decoded listing, not yet checked against its hash (see [`DecodedDir::build`]).
#[derive(Debug)]
pub struct DecodedDir {
    pub claimed: Hash,
    pub meta: DirMeta,
    pub entries: Vec<(Box<[u8]>, DecodedEntry)>,
}

#[derive(Debug)]
pub enum DecodedEntry {
    File(FileMeta),
    Symlink(SymlinkMeta),
    Dir { meta: DirMeta, hash: Hash },
}

impl DecodedDir {
    /// Builds the directory once every subdirectory is known (`subdir` returns
    /// the full `Dir` for a child name and its claimed hash), and checks that the
    /// result hashes to what the peer claimed.
    pub fn build<E: From<WireError>>(
        self,
        mut subdir: impl FnMut(&[u8], &DirMeta, Hash) -> Result<Dir, E>,
    ) -> Result<Dir, E> {
        let mut children = Vec::with_capacity(self.entries.len());
        for (name, entry) in self.entries {
            let node = match entry {
                DecodedEntry::File(f) => Node::File(f),
                DecodedEntry::Symlink(s) => Node::Symlink(s),
                DecodedEntry::Dir { meta, hash } => {
                    let mut dir = subdir(&name, &meta, hash)?;
                    if dir.hash() != hash {
                        return Err(WireError::HashMismatch { claimed: hash, actual: dir.hash() }.into());
                    }
                    dir.meta = meta;
                    Node::Dir(dir)
                }
            };
            children.push(Entry { name, node });
        }
        let dir = Dir::new(self.meta, children);
        if dir.hash() != self.claimed {
            return Err(WireError::HashMismatch { claimed: self.claimed, actual: dir.hash() }.into());
        }
        Ok(dir)
    }
}

fn hash32(bytes: &[u8], field: &'static str, name: &str) -> Result<Hash, WireError> {
    Hash::from_slice(bytes).ok_or_else(|| WireError::BadHash { field, len: bytes.len(), name: name.to_owned() })
}

fn timestamp(secs: i64, nanos: u32, name: &str) -> Result<Timestamp, WireError> {
    if nanos >= 1_000_000_000 {
        return Err(WireError::BadField { field: "mtime", name: name.to_owned() });
    }
    Ok(Timestamp::new(secs, nanos))
}

fn mode(mode: u32, name: &str) -> Result<u32, WireError> {
    if mode & !0o7777 != 0 {
        return Err(WireError::BadField { field: "mode", name: name.to_owned() });
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
        m.insert(&p("d"), Node::Dir(Dir::empty(DirMeta { mode: 0o755, ..DirMeta::default() }))).unwrap();
        m.insert(&p("d/x"), file(b"x")).unwrap();
        m.insert(
            &p("l"),
            Node::Symlink(SymlinkMeta { target: (*b"a").into(), mtime: Timestamp::default(), owner: Owner::default() }),
        )
        .unwrap();
        m
    }

    fn decode_all(m: &manifest::Manifest, path: &RelPath) -> Result<Dir, WireError> {
        let response = dir_to_proto(m.dir(path).unwrap(), m.root_hash());
        dir_from_proto(&response)?.build(|name, _, _| decode_all(m, &path.join(name).unwrap()))
    }

    #[test]
    fn a_manifest_survives_the_wire() {
        let m = sample();
        let dir = decode_all(&m, &RelPath::root()).unwrap();
        assert_eq!(dir.hash(), m.root_hash());
    }

    #[test]
    fn lies_are_caught() {
        let m = sample();
        let honest = dir_to_proto(m.root(), m.root_hash());

        let mut bad_name = honest.clone();
        bad_name.entries[0].name = b"../etc".to_vec();
        assert!(matches!(dir_from_proto(&bad_name), Err(WireError::BadName(_))));

        let mut unsorted = honest.clone();
        unsorted.entries.swap(0, 1);
        assert!(matches!(dir_from_proto(&unsorted), Err(WireError::Unsorted(_))));

        let mut short_hash = honest.clone();
        short_hash.entries[0].hash.truncate(31);
        assert!(matches!(dir_from_proto(&short_hash), Err(WireError::BadHash { .. })));

        let mut changed = honest.clone();
        changed.entries[0].size += 1;
        let result = dir_from_proto(&changed).unwrap().build(|_, _, h| -> Result<Dir, WireError> {
            let mut d = m.dir(&RelPath::new("d").unwrap()).unwrap().clone();
            assert_eq!(d.hash(), h);
            d.meta = DirMeta::default();
            Ok(d)
        });
        assert!(matches!(result, Err(WireError::HashMismatch { .. })));

        let mut bad_mode = honest;
        bad_mode.entries[0].mode = 0o100644;
        assert!(matches!(dir_from_proto(&bad_mode), Err(WireError::BadField { field: "mode", .. })));
    }
}
