//! The recent changes of one tree's manifest, by root hash: what `ReadChanges`
//! answers from, so a peer whose tree equals one of our recent manifests learns
//! the current one in one call instead of walking every changed directory.
//!
//! Each installed manifest adds a record: the root before, the root after, and
//! the paths that differ ([`manifest::changed_paths`]). Only paths are kept —
//! the entries sent are read from the current manifest — and only so many, so
//! the log costs at most a few MB however busy the tree is.

use std::collections::{BTreeSet, VecDeque};

use manifest::{Hash, RelPath};

/// Paths kept over all records. A change larger than this is not recorded, and
/// a peer that far behind walks the tree (which costs little more at that size).
pub const MAX_PATHS: usize = 16_384;
/// Records kept, oldest dropped first.
pub const MAX_RECORDS: usize = 64;

#[derive(Debug, Default)]
pub struct ChangeLog {
    records: VecDeque<Record>,
    paths: usize,
}

#[derive(Debug)]
struct Record {
    from: Hash,
    to: Hash,
    paths: Vec<RelPath>,
}

impl ChangeLog {
    /// Records that the root went from `from` to `to` by changing `paths`
    /// (`None`: more than [`MAX_PATHS`], so nothing before it can be answered).
    pub fn record(&mut self, from: Hash, to: Hash, paths: Option<Vec<RelPath>>) {
        if from == to {
            return;
        }
        let Some(paths) = paths else {
            self.records.clear();
            self.paths = 0;
            return;
        };
        self.paths += paths.len();
        self.records.push_back(Record { from, to, paths });
        while self.paths > MAX_PATHS || self.records.len() > MAX_RECORDS {
            let Some(oldest) = self.records.pop_front() else { break };
            self.paths -= oldest.paths.len();
        }
    }

    /// Every path changed on the way from root `since` to root `current`, sorted
    /// and without duplicates; `None` if the log cannot tell. From each root
    /// the newest record leaving it is followed: the tree was the same then.
    pub fn since(&self, since: Hash, current: Hash) -> Option<Vec<RelPath>> {
        let mut at = since;
        let mut paths = BTreeSet::new();
        for _ in 0..self.records.len() {
            if at == current {
                break;
            }
            let record = self.records.iter().rev().find(|r| r.from == at)?;
            paths.extend(record.paths.iter().cloned());
            at = record.to;
        }
        (at == current).then(|| paths.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Hash {
        Hash::of_content(&[n])
    }

    fn p(paths: &[&str]) -> Option<Vec<RelPath>> {
        Some(paths.iter().map(|s| RelPath::new(s).unwrap()).collect())
    }

    #[test]
    fn follows_the_records_from_an_old_root_to_the_current_one() {
        let mut log = ChangeLog::default();
        log.record(h(0), h(1), p(&["a", "b"]));
        log.record(h(1), h(2), p(&["b", "c"]));
        assert_eq!(log.since(h(0), h(2)), p(&["a", "b", "c"]));
        assert_eq!(log.since(h(1), h(2)), p(&["b", "c"]));
        assert_eq!(log.since(h(2), h(2)), p(&[]));
        assert_eq!(log.since(h(9), h(2)), None, "a root never seen");
        assert_eq!(log.since(h(0), h(9)), None, "a current root the log has not reached");
    }

    #[test]
    fn a_root_seen_twice_takes_the_newest_way_on_and_loops_end() {
        let mut log = ChangeLog::default();
        log.record(h(0), h(1), p(&["a"]));
        log.record(h(1), h(0), p(&["a"]));
        log.record(h(0), h(2), p(&["z"]));
        assert_eq!(log.since(h(1), h(2)), p(&["a", "z"]));
        assert_eq!(log.since(h(0), h(2)), p(&["z"]));
        assert_eq!(log.since(h(0), h(1)), None, "the newest way from 0 leads elsewhere; no endless loop");
    }

    #[test]
    fn a_change_too_large_to_keep_forgets_everything_before_it() {
        let mut log = ChangeLog::default();
        log.record(h(0), h(1), p(&["a"]));
        log.record(h(1), h(2), None);
        log.record(h(2), h(3), p(&["b"]));
        assert_eq!(log.since(h(0), h(3)), None);
        assert_eq!(log.since(h(2), h(3)), p(&["b"]));
    }

    #[test]
    fn old_records_go_when_the_path_budget_is_spent() {
        let mut log = ChangeLog::default();
        let many: Vec<RelPath> = (0..MAX_PATHS - 1).map(|i| RelPath::new(format!("f{i}")).unwrap()).collect();
        log.record(h(0), h(1), Some(many));
        log.record(h(1), h(2), p(&["x", "y"]));
        assert_eq!(log.since(h(0), h(2)), None, "the first record was dropped");
        assert_eq!(log.since(h(1), h(2)), p(&["x", "y"]));
        assert!(log.paths <= MAX_PATHS);
    }
}
