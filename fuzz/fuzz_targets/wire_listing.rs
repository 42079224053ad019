//! Wire decoding of a peer's directory listing: arbitrary bytes decoded as a
//! `ReadDirResponse` with prost, then the checks the daemon makes before it trusts
//! one (stagingd's `wire::listing_from_proto` and the planner in
//! `sync::remote`), done here over the library crates because `wire.rs` lives in
//! the binary crate: names via `RelPath::check_name`, hashes via
//! `Hash::from_slice`, modes at most 0o7777, nanoseconds below 10^9, a known
//! kind, a non-empty NUL-free symlink target; then ascending unique names and
//! `hash_listing` recomputed over the `sync::remote::Listing`. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use manifest::{
    Dir, DirMeta, Entry, FileMeta, Hash, HashInput, Node, Owner, RelPath, StatKey, SymlinkMeta, Timestamp, hash_listing,
};
use prost::Message;
use proto::v1 as pb;
use sync::remote::{ListedEntry, Listing};

/// The daemon's `listing_from_proto`, step for step; `None` where it returns an error.
fn listing_from_proto(response: &pb::ReadDirResponse) -> Option<Listing> {
    let mut entries = Vec::with_capacity(response.entries.len());
    for entry in &response.entries {
        RelPath::check_name(&entry.name).ok()?;
        let owner = Owner { uid: entry.uid, gid: entry.gid };
        let mtime = timestamp(entry.mtime_secs, entry.mtime_nanos)?;
        let mode = mode(entry.mode)?;
        let listed = match pb::EntryKind::try_from(entry.kind) {
            Ok(pb::EntryKind::File) => ListedEntry::File(FileMeta {
                size: entry.size,
                mode,
                mtime,
                hash: Hash::from_slice(&entry.hash)?,
                owner,
                stat: StatKey::default(),
            }),
            Ok(pb::EntryKind::Dir) => {
                ListedEntry::Dir { meta: DirMeta { mode, mtime, owner }, hash: Hash::from_slice(&entry.hash)? }
            }
            Ok(pb::EntryKind::Symlink) => {
                if entry.symlink_target.is_empty() || entry.symlink_target.contains(&0) {
                    return None;
                }
                ListedEntry::Symlink(SymlinkMeta { target: entry.symlink_target.clone().into(), mtime, owner })
            }
            _ => return None,
        };
        entries.push((entry.name.clone().into_boxed_slice(), listed));
    }
    let meta = DirMeta {
        mode: mode(response.mode)?,
        mtime: timestamp(response.mtime_secs, response.mtime_nanos)?,
        owner: Owner { uid: response.uid, gid: response.gid },
    };
    Some(Listing { meta, entries })
}

fn timestamp(secs: i64, nanos: u32) -> Option<Timestamp> {
    (nanos < 1_000_000_000).then(|| Timestamp::new(secs, nanos))
}

fn mode(mode: u32) -> Option<u32> {
    (mode & !0o7777 == 0).then_some(mode)
}

fn hash_input(entry: &ListedEntry) -> HashInput<'_> {
    match entry {
        ListedEntry::File(f) => HashInput::File(f),
        ListedEntry::Symlink(s) => HashInput::Symlink(&s.target),
        ListedEntry::Dir { meta, hash } => HashInput::Dir { mode: meta.mode, hash: *hash },
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(response) = pb::ReadDirResponse::decode(data) else { return };
    // prost's own round trip: what decoded re-encodes to something equal.
    let reencoded = response.encode_to_vec();
    assert_eq!(pb::ReadDirResponse::decode(&reencoded[..]).expect("re-encoded message decodes"), response);

    let Some(listing) = listing_from_proto(&response) else { return };
    for (name, entry) in &listing.entries {
        assert!(RelPath::root().join(name).is_ok(), "a checked name joins onto the root");
        let mode = match entry {
            ListedEntry::File(f) => f.mode,
            ListedEntry::Dir { meta, .. } => meta.mode,
            ListedEntry::Symlink(_) => 0,
        };
        assert!(mode <= 0o7777);
    }
    assert!(listing.meta.mode <= 0o7777);

    // The planner's order check, then the Merkle hash it compares with the one it asked for.
    let ordered = listing.entries.windows(2).all(|w| w[0].0 < w[1].0);
    let actual = hash_listing(listing.entries.iter().map(|(name, entry)| (&name[..], hash_input(entry))));
    // The daemon refuses the listing unless `actual` equals the hash it asked for;
    // comparing cannot panic, so only the computation above is under test.
    let _matches = Hash::from_slice(&response.hash) == Some(actual);
    if !ordered {
        return;
    }

    // For a listing of files and symlinks the Merkle hash is that of the
    // directory built from it, so a checked listing is exactly the directory.
    if listing.entries.iter().all(|(_, e)| !matches!(e, ListedEntry::Dir { .. })) {
        let children = listing
            .entries
            .iter()
            .map(|(name, entry)| Entry {
                name: name.clone(),
                node: match entry {
                    ListedEntry::File(f) => Node::File(f.clone()),
                    ListedEntry::Symlink(s) => Node::Symlink(s.clone()),
                    ListedEntry::Dir { .. } => unreachable!("filtered above"),
                },
            })
            .collect();
        let dir = Dir::new(listing.meta, children);
        assert_eq!(dir.hash(), actual, "hash_listing agrees with the directory's own hash");
        assert_eq!(dir.children().len(), listing.entries.len());
    }
});
