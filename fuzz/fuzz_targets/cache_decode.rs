//! The stat-cache decoder: `manifest::cache::decode` never panics on arbitrary
//! bytes, and what it accepts is a manifest the rest of the crate can use.
//!
//! Arbitrary bytes almost never get past the BLAKE3 checksum, so each input is
//! also decoded a second time framed as a cache file with a valid checksum: the
//! first input byte chooses whether the harness also writes a valid header
//! (magic, version, root) so that the rest goes straight to the directory
//! parser (even), or only the magic so that the version and root fields are
//! fuzzed too (odd).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use manifest::{Manifest, cache, diff};

const MAGIC: &[u8; 8] = b"SDSTATC\x01";
const VERSION: u32 = 1;
const ROOT: &str = "/srv/x";

fuzz_target!(|data: &[u8]| {
    let root = Path::new(ROOT);
    let _ = cache::decode(data, root);

    let Some((&mode, rest)) = data.split_first() else { return };
    let mut framed = Vec::with_capacity(data.len() + 64);
    framed.extend_from_slice(MAGIC);
    if mode % 2 == 0 {
        framed.extend_from_slice(&VERSION.to_le_bytes());
        framed.extend_from_slice(&(ROOT.len() as u32).to_le_bytes());
        framed.extend_from_slice(ROOT.as_bytes());
    }
    framed.extend_from_slice(rest);
    let checksum = *blake3::hash(&framed).as_bytes();
    framed.extend_from_slice(&checksum);

    let Ok(manifest) = cache::decode(&framed, root) else { return };
    // What decodes re-encodes to a cache that decodes to the same manifest.
    let again = cache::decode(&cache::encode(&manifest, root), root).expect("a re-encoded cache decodes");
    assert_eq!(again, manifest);
    // A loaded cache is used as a manifest: walked, and diffed against others.
    let walked = manifest.walk();
    let totals = manifest.totals();
    assert_eq!(walked.len() as u64, totals.files + totals.dirs + totals.symlinks);
    let plan = diff(&Manifest::empty(), &manifest);
    let mut applied = Manifest::empty();
    applied.apply(&plan).expect("the plan from the empty tree applies");
    assert_eq!(applied.root_hash(), manifest.root_hash());
});
