//! Scanning real directories: every entry kind, excludes, the stat cache and its
//! persisted form.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use manifest::{Excludes, Hash, Kind, Manifest, Node, RelPath, ScanOptions, SkipReason, cache, scan};

/// Options under which every file counts as settled at once, so stat-cache reuse
/// can be observed without waiting; the racy-file test uses the default instead.
fn settled_at_once() -> ScanOptions {
    ScanOptions { settle: Duration::ZERO, ..ScanOptions::default() }
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn file_hash(m: &Manifest, path: &str) -> Hash {
    match m.get(&p(path)) {
        Some(Node::File(f)) => f.hash,
        other => panic!("{path}: expected a file, found {other:?}"),
    }
}

#[test]
fn every_entry_kind_is_recorded_and_specials_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.php", b"<?php echo 1;");
    write(root, "empty", b"");
    // Larger than one read buffer, smaller than a multi-threaded "large" file; and a
    // large one: every size class hashes to the content's BLAKE3.
    let medium: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write(root, "medium.bin", &medium);
    let large: Vec<u8> = (0..manifest::scan::LARGE_FILE_BYTES as u32 + 5).map(|i| (i % 241) as u8).collect();
    write(root, "large.bin", &large);
    write(root, "bin/run.sh", b"#!/bin/sh\n");
    fs::set_permissions(root.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    symlink("a.php", root.join("link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("bin", root.join("dir-link")).unwrap();
    let odd_name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(root.join(odd_name), b"latin-1 name").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    let status = std::process::Command::new("mkfifo").arg(root.join("fifo")).status().unwrap();
    assert!(status.success());

    let scan = scan(root, &ScanOptions::default(), None).unwrap();
    let m = &scan.manifest;

    assert_eq!(file_hash(m, "a.php"), Hash::of_content(b"<?php echo 1;"));
    assert_eq!(file_hash(m, "empty"), Hash::of_content(b""));
    assert_eq!(file_hash(m, "medium.bin"), Hash::of_content(&medium));
    assert_eq!(file_hash(m, "large.bin"), Hash::of_content(&large));
    match m.get(&p("bin/run.sh")) {
        Some(Node::File(f)) => {
            assert_eq!(f.mode, 0o755, "exec bit kept");
            assert_eq!(f.size, 10);
            let uid = fs::metadata(root.join("bin/run.sh")).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
            assert_eq!(f.owner.uid, uid, "owner recorded");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(m.get(&p("empty-dir")), Some(Node::Dir(d)) if d.children().is_empty()));
    for (link, target) in [("link", "a.php"), ("dangling", "does/not/exist"), ("dir-link", "bin")] {
        match m.get(&p(link)) {
            Some(Node::Symlink(s)) => assert_eq!(&*s.target, target.as_bytes()),
            other => panic!("{link}: {other:?}"),
        }
    }
    assert!(m.get(&p("dir-link/run.sh")).is_none(), "symlinks are never followed");
    let odd = RelPath::new(b"caf\xe9.txt").unwrap();
    assert!(matches!(m.get(&odd), Some(Node::File(_))), "non-UTF-8 names are kept as bytes");

    let totals = m.totals();
    assert_eq!((totals.files, totals.dirs, totals.symlinks), (6, 2, 3));

    let mut specials: Vec<_> = scan.report.skipped.iter().map(|s| (s.path.as_str(), s.reason.clone())).collect();
    specials.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(specials, vec![("fifo", SkipReason::Special("fifo")), ("sock", SkipReason::Special("socket"))]);
    assert!(scan.report.is_complete(), "sockets and fifos do not make a scan incomplete");
}

#[test]
fn reserved_dir_and_excludes_are_not_in_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "keep.php", b"x");
    write(root, ".stagingd/tmp/partial", b"half");
    write(root, "src/.keep.php.swp", b"swap");
    write(root, "cache/l10n/a.tmp", b"tmp");
    write(root, "cache/l10n/a.cdb", b"cdb");
    let options = ScanOptions { excludes: Excludes::new(["*.swp", "cache/l10n/*.tmp"]).unwrap(), ..settled_at_once() };
    let m = scan(root, &options, None).unwrap().manifest;
    let paths: Vec<String> = m.walk().into_iter().map(|(path, _)| path.display()).collect();
    assert_eq!(paths, ["cache", "cache/l10n", "cache/l10n/a.cdb", "keep.php", "src"]);
}

#[test]
fn equal_trees_have_equal_roots_and_any_change_shows() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for root in [a.path(), b.path()] {
        write(root, "x/y.php", b"same");
        symlink("y.php", root.join("x/l")).unwrap();
    }
    let mtime = fs::metadata(a.path().join("x/y.php")).unwrap().modified().unwrap();
    fs::File::options().write(true).open(b.path().join("x/y.php")).unwrap().set_modified(mtime).unwrap();
    let root_of = |r: &Path| scan(r, &ScanOptions::default(), None).unwrap().manifest.root_hash();
    assert_eq!(root_of(a.path()), root_of(b.path()));
    fs::create_dir(b.path().join("new-empty")).unwrap();
    assert_ne!(root_of(a.path()), root_of(b.path()));
}

#[test]
fn stat_cache_reuses_unchanged_files_and_catches_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in ["size", "mtime", "rewritten", "untouched"] {
        write(root, name, b"original");
    }
    let options = settled_at_once();
    let first = scan(root, &options, None).unwrap();
    assert_eq!(first.report.files_hashed, 4);

    let again = scan(root, &options, Some(&first.manifest)).unwrap();
    assert_eq!((again.report.files_hashed, again.report.files_reused), (0, 4), "unchanged tree reads nothing");
    assert_eq!(again.manifest.root_hash(), first.manifest.root_hash());

    // Size change.
    fs::write(root.join("size"), b"longer content").unwrap();
    // Same size, new mtime.
    let old_mtime = fs::metadata(root.join("mtime")).unwrap().modified().unwrap();
    fs::write(root.join("mtime"), b"ORIGINAL").unwrap();
    fs::File::options()
        .write(true)
        .open(root.join("mtime"))
        .unwrap()
        .set_modified(old_mtime + Duration::from_secs(5))
        .unwrap();
    // Same size and the old mtime put back: only ctime (and here the inode, by
    // write-to-temp + rename) tell.
    let old = fs::metadata(root.join("rewritten")).unwrap().modified().unwrap();
    fs::write(root.join("rewritten.tmp"), b"REWRITE!").unwrap();
    fs::File::options().write(true).open(root.join("rewritten.tmp")).unwrap().set_modified(old).unwrap();
    fs::rename(root.join("rewritten.tmp"), root.join("rewritten")).unwrap();

    let after = scan(root, &options, Some(&again.manifest)).unwrap();
    assert_eq!((after.report.files_hashed, after.report.files_reused), (3, 1));
    assert_eq!(file_hash(&after.manifest, "size"), Hash::of_content(b"longer content"));
    assert_eq!(file_hash(&after.manifest, "mtime"), Hash::of_content(b"ORIGINAL"));
    assert_eq!(file_hash(&after.manifest, "rewritten"), Hash::of_content(b"REWRITE!"));
}

#[test]
fn in_place_rewrite_with_mtime_restored_is_caught_by_ctime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    fs::write(&path, b"aaaa").unwrap();
    let options = settled_at_once();
    let first = scan(dir.path(), &options, None).unwrap();
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let stat = |path: &Path| {
        let m = fs::metadata(path).unwrap();
        (std::os::unix::fs::MetadataExt::ino(&m), std::os::unix::fs::MetadataExt::ctime_nsec(&m))
    };
    let (ino, ctime) = stat(&path);
    // Rewrite in place (same inode, same size) and put the mtime back. The kernel's
    // ctime clock is coarse, so repeat until the ctime has moved on: the case under
    // test is a changed ctime; an unchanged one is the racy case tested below.
    for attempt in 0.. {
        assert!(attempt < 1_000_000, "ctime never moved");
        fs::write(&path, b"bbbb").unwrap();
        fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        if stat(&path).1 != ctime {
            break;
        }
    }
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap()), ino, "same inode");
    let second = scan(dir.path(), &options, Some(&first.manifest)).unwrap();
    assert_eq!(second.report.files_hashed, 1);
    assert_eq!(file_hash(&second.manifest, "f"), Hash::of_content(b"bbbb"));
}

#[test]
fn a_file_hashed_right_after_it_changed_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "fresh", b"just written");
    let options = ScanOptions::default(); // a 2 s settle window
    let first = scan(dir.path(), &options, None).unwrap();
    let second = scan(dir.path(), &options, Some(&first.manifest)).unwrap();
    assert_eq!(second.report.files_hashed, 1, "a racily-clean file must not be trusted from the cache");
}

#[test]
fn persisted_cache_round_trips_and_bad_caches_are_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    write(&root, "a/b.php", b"b");
    symlink("b.php", root.join("a/l")).unwrap();
    let first = scan(&root, &settled_at_once(), None).unwrap().manifest;
    let cache_path = dir.path().join("stat.cache");

    assert!(cache::load(&cache_path, &root).unwrap().is_none(), "no cache yet is not an error");
    cache::save(&first, &root, &cache_path).unwrap();
    let loaded = cache::load(&cache_path, &root).unwrap().unwrap();
    assert_eq!(loaded, first, "every field survives, stat facts included");

    let again = scan(&root, &settled_at_once(), Some(&loaded)).unwrap();
    assert_eq!(again.report.files_hashed, 0);
    // Handed over by value (as on a restart), the cache is consumed and still used.
    let consumed = scan(&root, &settled_at_once(), manifest::scan::Previous::Owned(loaded)).unwrap();
    assert_eq!((consumed.report.files_hashed, consumed.report.files_reused), (0, 1));
    assert_eq!(consumed.manifest, again.manifest);

    let good = fs::read(&cache_path).unwrap();
    let invalid = |bytes: &[u8], for_root: &Path| {
        fs::write(&cache_path, bytes).unwrap();
        match cache::load(&cache_path, for_root) {
            Err(e @ cache::CacheError::Invalid { .. }) => e.to_string(),
            other => panic!("expected the cache to be discarded, got {other:?}"),
        }
    };
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    assert!(invalid(&flipped, &root).contains("checksum"));
    assert!(invalid(&good[..good.len() - 7], &root).contains("checksum"));
    assert!(invalid(&good[..5], &root).contains("truncated"));
    assert!(invalid(b"{\"json\": \"from something else\"} and then some more bytes", &root).contains("magic"));
    assert!(invalid(&good, &dir.path().join("other-root")).contains("made for root"));
}

#[test]
fn missing_root_is_a_clear_error() {
    let error = scan(Path::new("/nonexistent/stagingd/root"), &ScanOptions::default(), None).unwrap_err();
    assert!(error.to_string().contains("/nonexistent/stagingd/root"), "{error}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let error = scan(file.path(), &ScanOptions::default(), None).unwrap_err();
    assert!(error.to_string().contains("not a directory"), "{error}");
}

#[test]
fn kind_is_reported_per_entry() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "d/f", b"");
    symlink("f", dir.path().join("d/s")).unwrap();
    let m = scan(dir.path(), &ScanOptions::default(), None).unwrap().manifest;
    let kinds: Vec<(String, Kind)> = m.walk().into_iter().map(|(p, n)| (p.display(), n.kind())).collect();
    assert_eq!(kinds, [("d".to_owned(), Kind::Dir), ("d/f".to_owned(), Kind::File), ("d/s".to_owned(), Kind::Symlink)]);
}

#[test]
fn updating_changed_paths_gives_what_a_full_scan_gives() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a/one.php", b"1");
    write(root, "a/two.php", b"2");
    write(root, "b/deep/three.php", b"3");
    write(root, "c/gone.php", b"x");
    symlink("a", root.join("link")).unwrap();
    let options = settled_at_once();
    let mut manifest = scan(root, &options, None).unwrap().manifest;

    // Every kind of change, and the paths a watcher would report for them.
    fs::write(root.join("a/one.php"), b"one, edited").unwrap();
    fs::remove_file(root.join("a/two.php")).unwrap();
    fs::set_permissions(root.join("b/deep/three.php"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_dir_all(root.join("c")).unwrap();
    write(root, "new/dir/with/files.php", b"moved in whole");
    fs::remove_file(root.join("link")).unwrap();
    symlink("b", root.join("link")).unwrap();
    fs::rename(root.join("b"), root.join("b-renamed")).unwrap();
    write(root, ".stagingd/staging/x", b"never in the manifest");
    let changed = [
        "a/one.php",
        "a/two.php",
        "b/deep/three.php",
        "c/gone.php",
        "c",
        "new/dir/with/files.php",
        "link",
        "b",
        "b-renamed",
        ".stagingd/staging/x",
    ];
    let report =
        manifest::scan::update_paths(root, &options, &mut manifest, changed.iter().map(|p| RelPath::new(p).unwrap()));
    assert!(report.is_complete(), "{report:?}");
    let full = scan(root, &options, None).unwrap().manifest;
    assert_eq!(manifest.root_hash(), full.root_hash());
    assert_eq!(manifest.totals(), full.totals());
    assert!(manifest.get(&p("new/dir/with/files.php")).is_some(), "a new directory is scanned whole");
}

#[test]
fn a_cache_claiming_impossible_sizes_or_paths_is_discarded_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let cache_path = dir.path().join("stat.cache");
    let huge = |name: &str| manifest::Entry {
        name: name.as_bytes().into(),
        node: Node::File(manifest::FileMeta {
            size: u64::MAX,
            mode: 0o644,
            mtime: manifest::Timestamp::default(),
            hash: Hash::of_content(b""),
            owner: manifest::Owner::default(),
            stat: manifest::StatKey::default(),
        }),
    };
    // Two files whose sizes would overflow a sum: totals saturate instead of wrapping...
    let lying = Manifest::new(manifest::Dir::new(manifest::DirMeta::default(), vec![huge("a"), huge("b")]));
    assert_eq!(lying.totals().bytes, u64::MAX);
    // ...and a cache that claims such sizes is not used.
    cache::save(&lying, &root, &cache_path).unwrap();
    match cache::load(&cache_path, &root) {
        Err(cache::CacheError::Invalid { why, .. }) => assert!(why.contains("bytes, over the"), "{why}"),
        other => panic!("expected the cache to be discarded, got {other:?}"),
    }

    // A path longer than any the path rules accept, built from valid names.
    let name = "n".repeat(255);
    let mut deep = manifest::Dir::empty(manifest::DirMeta::default());
    for _ in 0..17 {
        deep = manifest::Dir::new(
            manifest::DirMeta::default(),
            vec![manifest::Entry { name: name.as_bytes().into(), node: Node::Dir(deep.into()) }],
        );
    }
    cache::save(&Manifest::new(deep), &root, &cache_path).unwrap();
    match cache::load(&cache_path, &root) {
        Err(cache::CacheError::Invalid { why, .. }) => assert!(why.contains("a path of"), "{why}"),
        other => panic!("expected the cache to be discarded, got {other:?}"),
    }
}

#[test]
fn changed_below_lists_exactly_what_differs_from_the_manifest_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (rel, content) in [
        ("new/a.php", &b"a"[..]),
        ("new/same.php", b"same"),
        ("new/gone.php", b"gone"),
        ("new/grows.php", b"1"),
        ("new/sub/deep.php", b"deep"),
        ("new/sub/becomes_dir", b"file"),
        ("new/skip.tmp", b"excluded"),
        ("other/x.php", b"x"),
    ] {
        write(root, rel, content);
    }
    symlink("a.php", root.join("new/link")).unwrap();
    let options = ScanOptions { excludes: Excludes::new(["*.tmp"]).unwrap(), ..settled_at_once() };
    let manifest = scan(root, &options, None).unwrap().manifest;
    let changed = |m: &Manifest| {
        let mut paths: Vec<String> =
            manifest::scan::changed_below(root, &options, m, &p("new")).iter().map(|p| p.to_string()).collect();
        paths.sort();
        paths
    };
    assert_eq!(changed(&manifest), Vec::<String>::new(), "nothing differs yet");

    fs::remove_file(root.join("new/gone.php")).unwrap();
    fs::write(root.join("new/grows.php"), b"12").unwrap();
    write(root, "new/sub/added.php", b"added");
    fs::remove_file(root.join("new/sub/becomes_dir")).unwrap();
    fs::create_dir(root.join("new/sub/becomes_dir")).unwrap();
    fs::remove_file(root.join("new/link")).unwrap();
    symlink("same.php", root.join("new/link")).unwrap();
    fs::write(root.join("new/skip.tmp"), b"still excluded").unwrap();
    fs::write(root.join("other/x.php"), b"outside").unwrap();
    let mut expected = vec![
        "new/gone.php",
        "new/grows.php",
        "new/link",
        // Its mtime moved: an entry was added, another replaced.
        "new/sub",
        "new/sub/added.php",
        "new/sub/becomes_dir",
    ];
    expected.sort();
    assert_eq!(changed(&manifest), expected);
    // A directory the manifest does not hold is to be scanned whole.
    assert_eq!(
        manifest::scan::changed_below(root, &options, &Manifest::empty(), &p("new")),
        [p("new")],
        "an unknown directory"
    );
}
