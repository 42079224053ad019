//! The engine on real files: apply order, crashes at every step, real kill -9,
//! hostile trees, rollback, staging verification and retention.
//!
//! Every tree comparison goes through `manifest::scan` root hashes, which cover
//! names, kinds, content, permission bits, file mtimes and symlink targets.

use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use manifest::{Hash, Manifest, Plan, RelPath, ScanOptions, Timestamp, diff};
use sync::apply::apply;
use sync::history::{Counts, RecordKind, RecordResult};
use sync::{
    ApplyError, ApplyOptions, History, HistoryRecord, LocalSource, Recovery, RollbackTo, StageError, Staging,
    StepControl, SyncId, Trash, Writes, Written, recover, stage_from_local,
};

// ---- a tiny tree builder -----------------------------------------------------

enum E<'a> {
    File(&'a [u8], &'a [u8], u32, i64),
    Dir(&'a [u8], u32),
    Link(&'a [u8], &'a [u8]),
}

fn host(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

fn set_mtime(path: &Path, secs: i64) {
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 },
        last_modification: rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 },
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn build(root: &Path, entries: &[E<'_>]) {
    fs::create_dir_all(root).unwrap();
    for entry in entries {
        match entry {
            E::Dir(path, _) => fs::create_dir_all(host(root, path)).unwrap(),
            E::File(path, content, mode, mtime) => {
                let p = host(root, path);
                fs::write(&p, content).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
                set_mtime(&p, *mtime);
            }
            E::Link(path, target) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), host(root, path)).unwrap();
                set_mtime(&host(root, path), 1_600_000_000);
            }
        }
    }
    for entry in entries {
        if let E::Dir(path, mode) = entry {
            fs::set_permissions(host(root, path), fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
}

fn scan(root: &Path) -> Manifest {
    let scan = manifest::scan(root, &ScanOptions::default(), None).unwrap();
    assert!(scan.report.is_complete(), "{:?}", scan.report.skipped);
    scan.manifest
}

/// A tree with one of everything a plan can do to it.
fn old_tree() -> Vec<E<'static>> {
    vec![
        E::File(b"keep.txt", b"unchanged", 0o644, 1_000),
        E::File(b"update.txt", b"old content", 0o644, 1_000),
        E::File(b"meta.txt", b"same content", 0o644, 1_000),
        E::File(b"delete.txt", b"to be deleted", 0o640, 1_000),
        E::File(b"dup1", b"shared", 0o644, 1_000),
        E::File(b"dup2", b"shared", 0o644, 1_000),
        E::Dir(b"dir_to_file", 0o755),
        E::File(b"dir_to_file/a.txt", b"inside a dir that becomes a file", 0o644, 1_000),
        E::File(b"file_to_dir", b"a file that becomes a dir", 0o644, 1_000),
        E::Link(b"link_change", b"keep.txt"),
        E::Link(b"link_to_file", b"keep.txt"),
        E::Dir(b"gone_dir", 0o755),
        E::Dir(b"gone_dir/sub", 0o700),
        E::File(b"gone_dir/sub/x.txt", b"deep delete", 0o600, 1_000),
        E::Dir(b"modes", 0o755),
        E::File(b"modes/run.sh", b"#!/bin/sh\n", 0o755, 1_000),
        E::File(b"caf\xe9", b"latin-1 name", 0o644, 1_000),
    ]
}

fn new_tree() -> Vec<E<'static>> {
    vec![
        E::File(b"keep.txt", b"unchanged", 0o644, 1_000),
        E::File(b"update.txt", b"new content, longer", 0o644, 2_000),
        E::File(b"meta.txt", b"same content", 0o600, 3_000),
        E::File(b"dup1", b"shared 2", 0o644, 2_000),
        E::File(b"dup2", b"shared 2", 0o644, 2_000),
        E::File(b"dir_to_file", b"now a file", 0o644, 2_000),
        E::Dir(b"file_to_dir", 0o2775),
        E::File(b"file_to_dir/b.txt", b"inside the new dir", 0o644, 2_000),
        E::Link(b"link_change", b"update.txt"),
        E::File(b"link_to_file", b"was a symlink", 0o755, 2_000),
        E::Dir(b"modes", 0o750),
        E::File(b"modes/run.sh", b"#!/bin/sh\n", 0o755, 1_000),
        E::Dir(b"new_dir", 0o755),
        E::Dir(b"new_dir/deep", 0o555),
        E::File(b"new_dir/deep/new.txt", b"brand new", 0o444, 2_000),
        E::Link(b"new_dir/dangling", b"../../outside/of/tree"),
        E::File(b"caf\xe9", b"latin-1 name, new content", 0o644, 2_000),
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    state: PathBuf,
}

impl Fixture {
    fn new(old: &[E<'_>], new: &[E<'_>]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (root, src, state) = (dir.path().join("tree"), dir.path().join("source"), dir.path().join("state"));
        build(&root, old);
        build(&src, new);
        Self { _dir: dir, root, src, state }
    }

    fn standard() -> Self {
        Self::new(&old_tree(), &new_tree())
    }

    /// Plans a sync from `src`, stages everything from `src` and makes it durable.
    fn stage(&self) -> (Manifest, Plan, Staging) {
        let old = scan(&self.root);
        let target = scan(&self.src);
        let plan = diff(&old, &target);
        let staging = Staging::create(&self.root, &SyncId::generate(1, plan.id), false, &plan.ops).unwrap();
        stage_from_dir(&staging, &plan, &self.src);
        staging.finish().unwrap();
        (old, plan, staging)
    }

    fn apply_with(&self, hook: Option<&dyn Fn(usize) -> StepControl>) -> Result<sync::Applied, ApplyError> {
        let (old, plan, staging) = self.stage();
        let options = ApplyOptions { preserve_owner: false, step_hook: hook };
        apply(&self.root, &self.state, &old, &plan, &staging, &options)
    }

    fn staging_is_empty(&self) -> bool {
        let dir = self.root.join(".stagingd/staging");
        fs::read_dir(&dir).map(|mut d| d.next().is_none()).unwrap_or(true)
    }
}

/// Stages every file and symlink `plan` writes (below its new subtrees too) from `src`.
fn stage_from_dir(staging: &Staging, plan: &Plan, src: &Path) {
    let writes = Writes::of(plan);
    for n in 0..writes.len() {
        let write = writes.get(n);
        match write.written {
            Written::File(file) => {
                let reader = fs::File::open(src.join(write.path.as_path())).unwrap();
                staging.stage_file(write.op, &write.path, file, reader).unwrap();
            }
            Written::Symlink(link) => staging.stage_symlink(write.op, &write.path, link).unwrap(),
        }
    }
}

fn rel(s: &[u8]) -> RelPath {
    RelPath::new(s).unwrap()
}

// ---- apply and crash recovery ------------------------------------------------

#[test]
fn apply_makes_the_tree_equal_to_the_target_and_keeps_what_it_replaced() {
    let f = Fixture::standard();
    let target = scan(&f.src).root_hash();
    let applied = f.apply_with(None).unwrap();
    assert_eq!(scan(&f.root).root_hash(), target);
    assert_eq!(applied.manifest.root_hash(), target, "the returned manifest is the target");
    assert!(f.staging_is_empty(), "no staged files left");
    assert!(!f.state.join("journal").exists(), "journal removed");

    let trash = Trash::open(&f.root).unwrap();
    for content in [
        &b"old content"[..],
        b"to be deleted",
        b"shared",
        b"deep delete",
        b"latin-1 name",
        b"inside a dir that becomes a file",
        b"a file that becomes a dir",
    ] {
        let hash = Hash::of_content(content);
        assert!(applied.trashed.contains(&hash), "{:?} reported as trashed", String::from_utf8_lossy(content));
        let kept = fs::read(trash.path_of(&hash).expect("kept in the trash")).unwrap();
        assert_eq!(kept, content);
    }
    // dup1 and dup2 had the same content: one trash object, one new link.
    assert_eq!(applied.newly_trashed as usize, applied.trashed.len());
    // The fresh stat keys let the next scan reuse the manifest unchanged.
    let rescan = manifest::scan(&f.root, &ScanOptions::default(), Some(&applied.manifest)).unwrap();
    assert_eq!(rescan.manifest.root_hash(), target);
}

#[test]
fn a_new_subtree_is_built_in_staging_and_switched_by_renaming_its_top_directory() {
    // A release branch appears: 300 files in nested new directories.
    let files: Files = (0..300)
        .map(|i| (format!("php-1.45/d{}/sub/f{i}.php", i % 5).into_bytes(), format!("<?php // {i}").into_bytes()))
        .collect();
    let dirs: &[&'static [u8]] = &[
        b"php-1.45",
        b"php-1.45/d0",
        b"php-1.45/d1",
        b"php-1.45/d2",
        b"php-1.45/d3",
        b"php-1.45/d4",
        b"php-1.45/d0/sub",
        b"php-1.45/d1/sub",
        b"php-1.45/d2/sub",
        b"php-1.45/d3/sub",
        b"php-1.45/d4/sub",
    ];
    let mut new = to_entries(&files, dirs);
    new.push(E::File(b"README", b"kept", 0o644, 1_000));
    new.push(E::Link(b"php-1.45/d0/current", b"sub"));
    let f = Fixture::new(&[E::File(b"README", b"kept", 0o644, 1_000)], &new);
    let (old, plan, staging) = f.stage();

    // Staged at their own paths, and nothing of it in the tree yet.
    assert!(staging.path().join("tree/php-1.45/d3/sub/f3.php").is_file());
    assert!(staging.path().join("tree/php-1.45/d0/current").is_symlink());
    assert!(!f.root.join("php-1.45").exists());
    let applied = apply(&f.root, &f.state, &old, &plan, &staging, &ApplyOptions::default()).unwrap();
    assert_eq!(scan(&f.root).root_hash(), scan(&f.src).root_hash());
    assert!(f.staging_is_empty());
    // The plan names the new subtree instead of listing its 312 entries; one rename
    // publishes it. The rest of the switch is its top's and the root's modes and
    // mtimes (those below its top were set in staging), the journal, the syncfs
    // and the cleanup.
    let tags: Vec<String> = plan.ops.iter().map(|op| format!("{} {}", op.tag(), op.path())).collect();
    assert_eq!(tags, ["mkdir php-1.45", "dir-meta php-1.45", "dir-meta ."]);
    let totals = plan.totals;
    assert_eq!((totals.files_created, totals.symlinks_created, totals.dirs_created), (300, 1, 11));
    assert!(applied.steps <= 8, "the switch took {} steps", applied.steps);
}

#[test]
fn once_the_plan_releases_its_subtrees_the_verify_records_stat_keys_without_copying_a_directory() {
    let dirs: &[&'static [u8]] = &[b"php-1.45", b"php-1.45/includes", b"php-1.45/includes/api"];
    let files: Files = (0..40)
        .map(|i| (format!("{}/f{i}.php", ["php-1.45", "php-1.45/includes", "php-1.45/includes/api"][i % 3]), i))
        .map(|(path, i)| (path.into_bytes(), format!("<?php // {i}").into_bytes()))
        .collect();
    let f = Fixture::new(&[], &to_entries(&files, dirs));
    let (old, mut plan, staging) = f.stage();
    let mut target = old.clone();
    target.apply(&plan).unwrap();
    plan.release_subtrees();
    let dir_at = |m: &Manifest, path: &[u8]| match m.get(&rel(path)) {
        Some(manifest::Node::Dir(d)) => std::sync::Arc::as_ptr(d),
        other => panic!("{other:?}"),
    };
    let before = [dir_at(&target, b"php-1.45"), dir_at(&target, b"php-1.45/includes/api")];
    let applied =
        sync::apply::apply_to(&f.root, &f.state, &old, &plan, target, &staging, &ApplyOptions::default()).unwrap();
    let after = [dir_at(&applied.manifest, b"php-1.45"), dir_at(&applied.manifest, b"php-1.45/includes/api")];
    assert_eq!(after, before, "the directories were updated in place, not copied");
    // And the stat keys are the files' own: the next scan re-reads nothing.
    assert_eq!(scan(&f.root).root_hash(), applied.manifest.root_hash());
    let Some(manifest::Node::File(file)) = applied.manifest.get(&rel(b"php-1.45/includes/api/f5.php")) else {
        panic!("no file")
    };
    let ino = std::os::unix::fs::MetadataExt::ino(
        &fs::symlink_metadata(f.root.join("php-1.45/includes/api/f5.php")).unwrap(),
    );
    assert_eq!(file.stat.ino, ino);
}

#[test]
fn a_new_subtree_with_a_path_too_long_to_stage_whole_is_switched_entry_by_entry_around_whole_subtrees() {
    // "long" holds a 3,338-byte path, past what staging can open at its own path:
    // it is created entry by entry, but "long/short", beside the long chain, is
    // still staged whole and renamed into the directory the switch made.
    let mut dirs: Vec<&'static [u8]> = vec![b"long", b"long/short"];
    let mut deep = b"long".to_vec();
    for level in 0..13 {
        deep.extend_from_slice(format!("/{level:x}{}", "d".repeat(254)).as_bytes());
        dirs.push(deep.clone().leak());
    }
    let leaf: &'static [u8] = [deep.as_slice(), b"/c.php"].concat().leak();
    let mut new: Vec<E<'static>> = dirs.iter().map(|d| E::Dir(d, 0o755)).collect();
    new.push(E::File(leaf, b"deep", 0o644, 1_000));
    new.push(E::File(b"long/short/x.php", b"short", 0o644, 1_000));
    new.push(E::File(b"README", b"kept", 0o644, 1_000));
    let f = Fixture::new(&[E::File(b"README", b"kept", 0o644, 1_000)], &new);
    let (old, plan, staging) = f.stage();
    let new_trees: Vec<String> = plan
        .ops
        .iter()
        .filter(|op| matches!(op, manifest::Op::NewTree { .. }))
        .map(|op| op.path().to_string())
        .collect();
    assert_eq!(new_trees, ["long/short"]);
    assert!(staging.path().join("tree/long/short/x.php").is_file());
    apply(&f.root, &f.state, &old, &plan, &staging, &ApplyOptions::default()).unwrap();
    assert_eq!(scan(&f.root).root_hash(), scan(&f.src).root_hash());
    assert!(f.staging_is_empty());
}

#[test]
fn crash_at_every_step_is_rolled_forward_or_leaves_the_old_tree() {
    let total = Fixture::standard().apply_with(None).unwrap().steps;
    assert!(total > 20, "the standard plan has many steps ({total})");
    for stop_at in 0..total {
        let f = Fixture::standard();
        let old = scan(&f.root).root_hash();
        let target = scan(&f.src).root_hash();
        let hook = move |step: usize| if step == stop_at { StepControl::Stop } else { StepControl::Continue };
        let error = f.apply_with(Some(&hook)).unwrap_err();
        assert!(matches!(error, ApplyError::Stopped { steps } if steps == stop_at), "{error}");

        let recovery = recover(&f.root, &f.state).unwrap();
        let expected = if stop_at == 0 { old } else { target };
        assert_eq!(scan(&f.root).root_hash(), expected, "stopped before step {stop_at}: {recovery:?}");
        assert!(f.staging_is_empty(), "stopped before step {stop_at}: staging left behind");
        assert!(!f.state.join("journal").exists());
        match (stop_at, &recovery) {
            (0, Recovery::StagingDiscarded { dirs: 1 }) => {}
            // Until the journal is removed (the second-to-last step), recovery rolls forward;
            // stopped before the last step, only the emptied staging directory is left.
            (n, Recovery::RolledForward { .. }) if n < total - 1 => {}
            (n, Recovery::StagingDiscarded { dirs: 1 }) if n == total - 1 => {}
            other => panic!("unexpected recovery at step {stop_at}: {other:?}"),
        }
        if stop_at > 0 {
            let trash = Trash::open(&f.root).unwrap();
            assert!(trash.contains(&Hash::of_content(b"old content")), "step {stop_at}: replaced file kept");
            assert!(trash.contains(&Hash::of_content(b"deep delete")), "step {stop_at}: deleted file kept");
        }
        // Recovery is idempotent.
        assert_eq!(recover(&f.root, &f.state).unwrap(), Recovery::Clean);
        assert_eq!(scan(&f.root).root_hash(), expected);
    }
}

#[test]
fn crash_during_recovery_is_completed_by_the_next_recovery() {
    let total = Fixture::standard().apply_with(None).unwrap().steps;
    for (apply_stop, recover_stop) in [(1, 0), (1, 5), (5, 3), (total / 2, 1), (total / 2, 4), (total - 4, 0)] {
        let f = Fixture::standard();
        let target = scan(&f.src).root_hash();
        let stop_apply = move |step: usize| if step == apply_stop { StepControl::Stop } else { StepControl::Continue };
        f.apply_with(Some(&stop_apply)).unwrap_err();
        let stop_recover =
            move |step: usize| if step == recover_stop { StepControl::Stop } else { StepControl::Continue };
        match sync::apply::recover_with_hook(&f.root, &f.state, Some(&stop_recover)) {
            Err(ApplyError::Stopped { .. }) | Ok(_) => {}
            Err(other) => panic!("{other}"),
        }
        recover(&f.root, &f.state).unwrap();
        assert_eq!(scan(&f.root).root_hash(), target, "apply stopped at {apply_stop}, recovery at {recover_stop}");
        assert!(f.staging_is_empty());
    }
}

#[test]
fn staging_that_was_not_made_durable_is_never_applied() {
    let f = Fixture::standard();
    let old = scan(&f.root);
    let plan = diff(&old, &scan(&f.src));
    let staging = Staging::create(&f.root, &SyncId::generate(1, plan.id), false, &plan.ops).unwrap();
    stage_from_dir(&staging, &plan, &f.src);
    let error = apply(&f.root, &f.state, &old, &plan, &staging, &ApplyOptions::default()).unwrap_err();
    assert!(matches!(error, ApplyError::NotDurable(_)), "{error}");
    assert_eq!(scan(&f.root).root_hash(), old.root_hash());
}

#[test]
fn incomplete_staging_is_refused_before_the_journal() {
    let f = Fixture::standard();
    let old = scan(&f.root);
    let plan = diff(&old, &scan(&f.src));
    let staging = Staging::create(&f.root, &SyncId::generate(1, plan.id), false, &plan.ops).unwrap();
    staging.finish().unwrap();
    let error = apply(&f.root, &f.state, &old, &plan, &staging, &ApplyOptions::default()).unwrap_err();
    assert!(matches!(error, ApplyError::Stage(StageError::NotStaged { .. })), "{error}");
    assert!(!f.state.join("journal").exists());
    assert_eq!(scan(&f.root).root_hash(), old.root_hash());
}

#[test]
fn tree_changed_since_the_plan_is_refused_untouched() {
    let f = Fixture::standard();
    let (old, plan, staging) = f.stage();
    fs::write(f.root.join("update.txt"), b"edited by hand after the scan").unwrap();
    let before = scan(&f.root).root_hash();
    let error = apply(&f.root, &f.state, &old, &plan, &staging, &ApplyOptions::default()).unwrap_err();
    assert!(matches!(error, ApplyError::Changed { .. }), "{error}");
    assert!(error.to_string().contains("update.txt"), "{error}");
    assert_eq!(scan(&f.root).root_hash(), before);
    assert!(!f.state.join("journal").exists());
}

#[test]
fn directory_holding_unplanned_files_is_not_half_deleted() {
    let f = Fixture::standard();
    let (old, plan, staging) = f.stage();
    // An excluded editor swap file (not in the manifest) inside a directory the plan deletes.
    fs::write(f.root.join("gone_dir/sub/.x.txt.swp"), b"swap").unwrap();
    let error = apply(&f.root, &f.state, &old, &plan, &staging, &ApplyOptions::default()).unwrap_err();
    assert!(error.to_string().contains(".x.txt.swp"), "{error}");
    assert!(f.root.join("gone_dir/sub/x.txt").exists(), "nothing was deleted");
    assert!(!f.state.join("journal").exists());
}

// ---- a real kill -9 ----------------------------------------------------------

const KILL_ENV: &str = "STAGINGD_SYNC_TEST_KILL_AT";

/// Not a test on its own: the body of the child process of
/// `kill_9_mid_switch_is_completed_on_restart`, which runs this binary again
/// with `KILL_ENV` set. Without it, it does nothing.
#[test]
fn kill_helper_child_process() {
    let Ok(kill_at) = std::env::var(KILL_ENV) else { return };
    let kill_at: usize = kill_at.parse().unwrap();
    let dir = PathBuf::from(std::env::var("STAGINGD_SYNC_TEST_DIR").unwrap());
    let f = Fixture {
        _dir: tempfile::tempdir().unwrap(),
        root: dir.join("tree"),
        src: dir.join("source"),
        state: dir.join("state"),
    };
    let hook = move |step: usize| {
        if step == kill_at {
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL).unwrap();
        }
        StepControl::Continue
    };
    f.apply_with(Some(&hook)).unwrap();
    unreachable!("the child is killed at step {kill_at} before it finishes");
}

/// (path, content) pairs.
type Files = Vec<(Vec<u8>, Vec<u8>)>;

fn big_trees() -> (Files, Files) {
    let mut old = Vec::new();
    let mut new = Vec::new();
    for i in 0..120 {
        let path = format!("d{}/f{i}.php", i % 7).into_bytes();
        old.push((path.clone(), format!("old {i}").into_bytes()));
        if i % 3 != 0 {
            new.push((path, format!("new {i}").into_bytes()));
        }
        new.push((format!("added/n{i}").into_bytes(), format!("added {i}").into_bytes()));
    }
    (old, new)
}

fn to_entries(files: &[(Vec<u8>, Vec<u8>)], dirs: &[&'static [u8]]) -> Vec<E<'static>> {
    let leaked: &'static [(Vec<u8>, Vec<u8>)] = Box::leak(files.to_vec().into_boxed_slice());
    let mut entries: Vec<E<'static>> = dirs.iter().map(|d| E::Dir(d, 0o755)).collect();
    entries.extend(leaked.iter().map(|(p, c)| E::File(p.as_slice(), c.as_slice(), 0o644, 5_000)));
    entries
}

#[test]
fn kill_9_mid_switch_is_completed_on_restart() {
    let (old, new) = big_trees();
    let dirs: &[&'static [u8]] = &[b"d0", b"d1", b"d2", b"d3", b"d4", b"d5", b"d6"];
    let old_entries = to_entries(&old, dirs);
    let mut new_dirs = dirs.to_vec();
    new_dirs.push(b"added");
    let new_entries = to_entries(&new, &new_dirs);
    let total = Fixture::new(&old_entries, &new_entries).apply_with(None).unwrap().steps;
    for kill_at in [1, 2, total / 3, total / 2, total - 4, total - 2] {
        let f = Fixture::new(&old_entries, &new_entries);
        let target = scan(&f.src).root_hash();
        let dir = f.root.parent().unwrap();
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill_helper_child_process", "--test-threads=1"])
            .env(KILL_ENV, kill_at.to_string())
            .env("STAGINGD_SYNC_TEST_DIR", dir)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "the child was killed at step {kill_at}: {status:?}");
        assert!(f.state.join("journal").exists() || kill_at >= total - 2, "killed mid-switch, journal present");
        recover(&f.root, &f.state).unwrap();
        assert_eq!(scan(&f.root).root_hash(), target, "killed at step {kill_at} of {total}");
        assert!(f.staging_is_empty());
    }
}

// ---- hostile trees -----------------------------------------------------------

fn hostile_fixture() -> (Fixture, tempfile::TempDir) {
    let f = Fixture::new(
        &[E::Dir(b"a", 0o755), E::File(b"a/a.txt", b"old", 0o644, 1_000), E::File(b"top", b"t", 0o644, 1_000)],
        &[
            E::Dir(b"a", 0o755),
            E::File(b"a/a.txt", b"new", 0o644, 2_000),
            E::File(b"a/new.txt", b"planted", 0o644, 2_000),
            E::File(b"top", b"t2", 0o644, 2_000),
        ],
    );
    (f, tempfile::tempdir().unwrap())
}

fn swap_for_symlink(root: &Path, outside: &Path) {
    fs::rename(root.join("a"), root.join("a_moved")).unwrap();
    std::os::unix::fs::symlink(outside, root.join("a")).unwrap();
}

fn assert_empty(dir: &Path) {
    let names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.is_empty(), "nothing may be written outside the root: {names:?}");
}

#[test]
fn parent_swapped_for_a_symlink_before_apply_writes_nothing_outside() {
    let (f, outside) = hostile_fixture();
    let (old, plan, staging) = f.stage();
    swap_for_symlink(&f.root, outside.path());
    let before = scan(&f.root).root_hash();
    let error = apply(&f.root, &f.state, &old, &plan, &staging, &ApplyOptions::default()).unwrap_err();
    assert!(error.to_string().contains("a/"), "the error names the path: {error}");
    assert_empty(outside.path());
    assert_eq!(scan(&f.root).root_hash(), before, "the tree is untouched");
    assert!(!f.state.join("journal").exists());
    // The refused sync's staging stays until the caller discards it (or recovery does).
    assert_eq!(recover(&f.root, &f.state).unwrap(), Recovery::StagingDiscarded { dirs: 1 });
}

#[test]
fn parent_swapped_for_a_symlink_mid_switch_writes_nothing_outside_and_recovers() {
    let (f, outside) = hostile_fixture();
    let target = scan(&f.src).root_hash();
    let (root, out) = (f.root.clone(), outside.path().to_path_buf());
    // Swap right after the journal is written, before the first switch step.
    let hook = move |step: usize| {
        if step == 1 {
            swap_for_symlink(&root, &out);
        }
        StepControl::Continue
    };
    let error = f.apply_with(Some(&hook)).unwrap_err();
    assert!(matches!(error, ApplyError::Switch { .. }), "{error}");
    assert_empty(outside.path());
    assert!(f.state.join("journal").exists(), "the journal is kept for recovery");
    // While the symlink is there, recovery refuses too, and still writes nothing outside.
    assert!(recover(&f.root, &f.state).is_err());
    assert_empty(outside.path());
    // The operator puts the directory back; recovery completes the switch.
    fs::remove_file(f.root.join("a")).unwrap();
    fs::rename(f.root.join("a_moved"), f.root.join("a")).unwrap();
    recover(&f.root, &f.state).unwrap();
    assert_eq!(scan(&f.root).root_hash(), target);
}

// ---- rollback ------------------------------------------------------------------

fn record(id: &SyncId, plan: &Plan, applied: &sync::Applied, kind: RecordKind) -> HistoryRecord {
    HistoryRecord {
        id: id.clone(),
        kind,
        source: "deploy2002".into(),
        unix_time: 1,
        who: "tester".into(),
        reason: "test".into(),
        plan_id: plan.id.to_string(),
        counts: Counts::from(&plan.totals),
        root_before: plan.from_root.to_hex(),
        root_after: plan.to_root.to_hex(),
        result: RecordResult::Applied,
        trashed: applied.trashed.iter().map(Hash::to_hex).collect(),
    }
}

/// A sync as the daemon runs it: save the before-manifest, apply, record.
fn recorded_sync(root: &Path, state: &Path, current: &Manifest, target_src: &Path, n: i64) -> sync::Applied {
    let plan = diff(current, &scan(target_src));
    let id = SyncId::generate(n, plan.id);
    let history = History::open(state);
    history.save_before(&id, current, root, None).unwrap();
    let staging = Staging::create(root, &id, false, &plan.ops).unwrap();
    stage_from_dir(&staging, &plan, target_src);
    staging.finish().unwrap();
    let applied = apply(root, state, current, &plan, &staging, &ApplyOptions::default()).unwrap();
    history.append(&record(&id, &plan, &applied, RecordKind::Sync)).unwrap();
    applied
}

/// A rollback as the daemon runs it: everything local (trash and tree).
fn recorded_rollback(root: &Path, state: &Path, current: &Manifest, to: &RollbackTo, n: i64) -> sync::Applied {
    let history = History::open(state);
    let target = history.rollback_target(root, to).unwrap();
    let plan = diff(current, &target.manifest);
    let id = SyncId::generate(n, plan.id);
    history.save_before(&id, current, root, None).unwrap();
    let staging = Staging::create(root, &id, false, &plan.ops).unwrap();
    let missing = stage_from_local(&staging, &Writes::of(&plan), current, &Trash::open(root).unwrap()).unwrap();
    assert!(missing.is_empty(), "all rollback content is local: {missing:?}");
    staging.finish().unwrap();
    let applied = apply(root, state, current, &plan, &staging, &ApplyOptions::default()).unwrap();
    history.append(&record(&id, &plan, &applied, RecordKind::Rollback)).unwrap();
    applied
}

#[test]
fn rollback_restores_the_previous_tree_exactly() {
    let f = Fixture::standard();
    let original = scan(&f.root);
    let synced = recorded_sync(&f.root, &f.state, &original, &f.src, 1);
    assert_eq!(scan(&f.root).root_hash(), scan(&f.src).root_hash());

    let rolled = recorded_rollback(&f.root, &f.state, &synced.manifest, &RollbackTo::Last, 2);
    assert_eq!(scan(&f.root).root_hash(), original.root_hash(), "names, kinds, bytes, modes, mtimes, symlinks");
    assert_eq!(fs::read(host(&f.root, b"caf\xe9")).unwrap(), b"latin-1 name");
    assert_eq!(fs::read_link(f.root.join("link_to_file")).unwrap(), Path::new("keep.txt"));

    // Undoing the rollback brings the synced tree back.
    recorded_rollback(&f.root, &f.state, &rolled.manifest, &RollbackTo::Last, 3);
    assert_eq!(scan(&f.root).root_hash(), scan(&f.src).root_hash());
}

#[test]
fn retention_keeps_what_the_newest_rollback_needs() {
    let f = Fixture::standard();
    let original = scan(&f.root);
    let first = recorded_sync(&f.root, &f.state, &original, &f.src, 1);
    // A second sync from a third tree.
    let third = f.root.parent().unwrap().join("third");
    build(&third, &[E::File(b"keep.txt", b"unchanged", 0o644, 1_000), E::File(b"only", b"third tree", 0o600, 7)]);
    let second = recorded_sync(&f.root, &f.state, &first.manifest, &third, 2);

    let history = History::open(&f.state);
    let retained = history.retain(1, &Trash::open(&f.root).unwrap()).unwrap();
    assert_eq!(retained.manifests_removed, 1);
    assert!(retained.trash.objects > 0, "objects only the first sync needed are expired: {retained:?}");
    let kept: HashSet<Hash> = Trash::open(&f.root).unwrap().hashes().unwrap().into_iter().collect();
    assert_eq!(kept, second.trashed.iter().copied().collect(), "exactly the newest sync's displaced content");

    let first_id = history.records().unwrap()[0].id.clone();
    assert!(history.rollback_target(&f.root, &RollbackTo::Sync(first_id)).is_err(), "expired");
    recorded_rollback(&f.root, &f.state, &second.manifest, &RollbackTo::Last, 3);
    assert_eq!(scan(&f.root).root_hash(), scan(&f.src).root_hash());
}

// ---- staging verification ------------------------------------------------------

fn meta_of(content: &[u8]) -> manifest::FileMeta {
    manifest::FileMeta {
        size: content.len() as u64,
        mode: 0o640,
        mtime: Timestamp::new(1_234, 5),
        hash: Hash::of_content(content),
        owner: manifest::Owner::default(),
        stat: manifest::StatKey::default(),
    }
}

#[test]
fn content_that_does_not_match_its_hash_is_never_staged() {
    let f = Fixture::standard();
    let staging = Staging::create(&f.root, &SyncId::new("s1-x".into()).unwrap(), false, &[]).unwrap();
    let path = rel(b"x.php");
    let meta = meta_of(b"the real content");

    let error = staging.stage_file(0, &path, &meta, &b"forged content!!"[..]).unwrap_err();
    assert!(matches!(error, StageError::HashMismatch { .. }), "{error}");
    assert!(error.to_string().contains("x.php"), "{error}");
    let error = staging.stage_file(1, &path, &meta, &b"the real"[..]).unwrap_err();
    assert!(matches!(error, StageError::ShortContent { expected: 16, actual: 8, .. }), "{error}");
    let mut writer = staging.writer(2, &path, &meta).unwrap();
    writer.write_chunk(b"the real content").unwrap();
    assert!(matches!(writer.write_chunk(b"+"), Err(StageError::TooLong { .. })));
    drop(writer);
    let staged_files = || -> usize {
        let shards = fs::read_dir(staging.path()).unwrap().map(|shard| shard.unwrap().path());
        shards.map(|shard| fs::read_dir(shard).unwrap().count()).sum()
    };
    assert_eq!(staged_files(), 0, "rejected content leaves nothing staged");

    // Chunked content that matches is staged with its final mode and mtime.
    let mut writer = staging.writer(3, &path, &meta).unwrap();
    for chunk in [&b"the "[..], b"real ", b"content"] {
        writer.write_chunk(chunk).unwrap();
    }
    assert_eq!(writer.finish().unwrap(), 16);
    let staged = staging.path().join(sync::stage::entry_name(3));
    let st = fs::symlink_metadata(&staged).unwrap();
    assert_eq!(st.permissions().mode() & 0o7777, 0o640);
    use std::os::unix::fs::MetadataExt;
    assert_eq!((st.mtime(), st.mtime_nsec()), (1_234, 5));
    staging.discard().unwrap();
    assert!(!staged.exists());
}

#[test]
fn a_staged_file_gets_every_mode_bit_whatever_the_umask_and_replaces_an_earlier_attempt() {
    // A staged file is created with its final permission bits, less what the
    // umask masks; those, and set-id bits, are set once its content is verified.
    // (nextest runs each test in a process of its own.)
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let f = Fixture::standard();
    let staging = Staging::create(&f.root, &SyncId::new("s1-x".into()).unwrap(), false, &[]).unwrap();
    let path = rel(b"x.php");
    let mode_of = |index: usize| {
        let st = fs::symlink_metadata(staging.path().join(sync::stage::entry_name(index))).unwrap();
        st.permissions().mode() & 0o7777
    };
    for (index, mode) in [0o666, 0o777, 0o4755, 0o2755, 0o1775, 0o600, 0o444].into_iter().enumerate() {
        let meta = manifest::FileMeta { mode, ..meta_of(b"content") };
        staging.stage_file(index, &path, &meta, &b"content"[..]).unwrap();
        assert_eq!(mode_of(index), mode, "{mode:o}");
    }
    // Content not yet verified never carries set-id bits.
    let meta = manifest::FileMeta { mode: 0o6755, ..meta_of(b"content") };
    let mut writer = staging.writer(7, &path, &meta).unwrap();
    writer.write_chunk(b"content").unwrap();
    assert_eq!(mode_of(7) & 0o7000, 0, "set-id bits before the hash is checked");
    writer.finish().unwrap();
    assert_eq!(mode_of(7), 0o6755);
    // An entry left by an earlier attempt (read-only, index 6) is replaced, not reused.
    let meta = manifest::FileMeta { mode: 0o640, ..meta_of(b"second") };
    staging.stage_file(6, &path, &meta, &b"second"[..]).unwrap();
    assert_eq!(fs::read(staging.path().join(sync::stage::entry_name(6))).unwrap(), b"second");
    assert_eq!(mode_of(6), 0o640);
}

#[test]
fn empty_directories_of_new_subtrees_are_made_when_staging_finishes() {
    // Directories with nothing staged in them, one under a directory that exists
    // (so its staged parents are made too), one in a subtree that also has a file.
    let old = [E::Dir(b"keep", 0o755), E::File(b"keep/a", b"a", 0o644, 1_000)];
    let new = [
        E::Dir(b"keep", 0o755),
        E::File(b"keep/a", b"a", 0o644, 1_000),
        E::Dir(b"keep/empty", 0o750),
        E::Dir(b"keep/empty/deeper", 0o700),
        E::Dir(b"top", 0o755),
        E::Dir(b"top/only_dirs/x", 0o755),
        E::File(b"top/f", b"f", 0o644, 1_000),
    ];
    let f = Fixture::new(&old, &new);
    let (old, plan, staging) = f.stage();
    for dir in ["tree/keep/empty/deeper", "tree/top/only_dirs/x"] {
        assert!(staging.path().join(dir).is_dir(), "{dir} staged");
    }
    apply(&f.root, &f.state, &old, &plan, &staging, &ApplyOptions::default()).unwrap();
    assert_eq!(scan(&f.root).root_hash(), scan(&f.src).root_hash());
    assert!(f.staging_is_empty());
}

#[test]
fn local_copy_that_changed_since_it_was_hashed_is_rejected() {
    let f = Fixture::standard();
    let staging = Staging::create(&f.root, &SyncId::new("s1-x".into()).unwrap(), false, &[]).unwrap();
    let meta = meta_of(b"unchanged");
    staging.stage_local_copy(0, &rel(b"copy"), &meta, &LocalSource::Tree(rel(b"keep.txt"))).unwrap();
    fs::write(f.root.join("keep.txt"), b"changed!!").unwrap();
    let error = staging.stage_local_copy(1, &rel(b"copy"), &meta, &LocalSource::Tree(rel(b"keep.txt"))).unwrap_err();
    assert!(matches!(error, StageError::HashMismatch { .. }), "{error}");
    // A symlink is never followed as a local source.
    let error = staging.stage_local_copy(2, &rel(b"copy"), &meta, &LocalSource::Tree(rel(b"link_change"))).unwrap_err();
    assert!(matches!(error, StageError::ReadSource { .. }), "{error}");
}

#[test]
fn owners_are_reproduced_when_running_as_root() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let f = Fixture::standard();
    let old = scan(&f.root);
    std::os::unix::fs::lchown(f.src.join("update.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(f.src.join("link_change"), Some(1234), Some(5678)).unwrap();
    // In a new subtree: a directory made as its entries were staged, and a file in it.
    std::os::unix::fs::lchown(f.src.join("new_dir/deep"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(f.src.join("new_dir/deep/new.txt"), Some(4321), Some(8765)).unwrap();
    let target = scan(&f.src);
    let plan = diff(&old, &target);
    let staging = Staging::create(&f.root, &SyncId::generate(1, plan.id), true, &plan.ops).unwrap();
    stage_from_dir(&staging, &plan, &f.src);
    staging.finish().unwrap();
    let options = ApplyOptions { preserve_owner: true, step_hook: None };
    apply(&f.root, &f.state, &old, &plan, &staging, &options).unwrap();
    use std::os::unix::fs::MetadataExt;
    for (name, owner) in [
        ("update.txt", (1234, 5678)),
        ("link_change", (1234, 5678)),
        ("new_dir/deep", (1234, 5678)),
        ("new_dir/deep/new.txt", (4321, 8765)),
        ("new_dir", (0, 0)),
    ] {
        let st = fs::symlink_metadata(f.root.join(name)).unwrap();
        assert_eq!((st.uid(), st.gid()), owner, "{name}");
    }
    // The modes survive the owner changes (a chown may clear set-id bits).
    let mode = |name: &str| fs::symlink_metadata(f.root.join(name)).unwrap().permissions().mode() & 0o7777;
    assert_eq!((mode("new_dir/deep"), mode("new_dir/deep/new.txt")), (0o555, 0o444));
}

#[test]
fn a_touched_path_changed_after_the_switch_fails_the_verify_and_names_it() {
    // How many steps an apply of this plan takes; the last one comes right before the verify.
    let steps = Fixture::standard().apply_with(None).unwrap().steps;
    for (path, change) in [
        (
            "update.txt",
            &(|p: &Path| fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap()) as &dyn Fn(&Path),
        ),
        ("update.txt", &|p: &Path| fs::write(p, "longer than what was synced").unwrap()),
        ("delete.txt", &|p: &Path| fs::write(p, "back again").unwrap()),
    ] {
        let f = Fixture::standard();
        let target = f.root.join(path);
        let hook = |step: usize| {
            if step + 1 == steps {
                change(&target);
            }
            StepControl::Continue
        };
        let error = f.apply_with(Some(&hook)).unwrap_err();
        match &error {
            ApplyError::Verify { path: shown, .. } => assert!(shown.ends_with(path), "{path}: {error}"),
            other => panic!("{path}: expected a verify error, got {other}"),
        }
    }
}
