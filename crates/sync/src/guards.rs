//! Every rule that decides whether a sync may proceed, in one place.
//!
//! Pure functions over facts gathered by the caller: no I/O, no clock, no peer.
//! A refusal names its guard (a stable lowercase name scripts can match on),
//! states the numbers that tripped it, and gives the exact command that proceeds
//! when an operator can override it — or says why nothing can.
//!
//! | guard | refuses when | override |
//! |---|---|---|
//! | `depooled` | this node is depooled | pool it `receive-only` or `serve` |
//! | `source-not-serving` | the peer is not `serve` | none: pool the peer first |
//! | `source-not-ready` | the peer's tree is scanning, mid-apply or incomplete | none: wait |
//! | `source-empty` | the peer's tree has no files while ours has some | none |
//! | `source-behind` | the peer's root is one this tree had before | `--allow-behind` |
//! | `delete-threshold` | deletions exceed `max_delete_files` or `max_delete_ratio` | `--confirm PLAN_ID` of that exact plan |
//! | `capacity` | bytes or inodes needed (+5%) exceed what is free | none: free space |
//! | `busy` | another sync or rollback holds the tree's lock | none: wait |
//!
//! Automatic replication never passes `confirm` or `allow_behind`.

use manifest::{Plan, PlanId};

use crate::capacity::Space;

/// The stable names of the guards.
pub mod names {
    pub const DEPOOLED: &str = "depooled";
    pub const SOURCE_NOT_SERVING: &str = "source-not-serving";
    pub const SOURCE_NOT_READY: &str = "source-not-ready";
    pub const SOURCE_EMPTY: &str = "source-empty";
    pub const SOURCE_BEHIND: &str = "source-behind";
    pub const DELETE_THRESHOLD: &str = "delete-threshold";
    pub const CAPACITY: &str = "capacity";
    pub const BUSY: &str = "busy";
}

/// A guard said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by guard {guard}: {message}")]
pub struct Refusal {
    pub guard: &'static str,
    pub message: String,
    /// The exact command that proceeds, or what to do when no command can.
    pub hint: String,
}

/// The pool state of the source as it reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePool {
    Serve,
    ReceiveOnly,
    Depooled,
    Unknown,
}

/// The source tree's readiness as it reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceReadiness {
    Ready,
    Scanning,
    Applying,
    Incomplete,
    Unknown,
}

/// Thresholds of the delete guard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeleteLimits {
    pub max_files: u64,
    pub max_ratio: f64,
}

impl Default for DeleteLimits {
    fn default() -> Self {
        Self { max_files: 1000, max_ratio: 0.05 }
    }
}

/// Who and what a sync is about, for messages and hints.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub tree: &'a str,
    pub peer: &'a str,
}

impl Subject<'_> {
    fn command(&self, extra: &str) -> String {
        format!("stagingctl sync --from {} --tree {}{extra}", self.peer, self.tree)
    }
}

/// Facts known before planning: the two nodes' states.
#[derive(Debug, Clone)]
pub struct SourceFacts {
    pub local_depooled: bool,
    pub source_pool: SourcePool,
    pub source_readiness: SourceReadiness,
    /// Files and symlinks in the source's tree.
    pub source_leaves: u64,
    /// Files and symlinks in our tree.
    pub local_leaves: u64,
}

/// The guards that need no plan: `depooled`, `source-not-serving`,
/// `source-not-ready`, `source-empty`.
pub fn check_source(subject: &Subject<'_>, facts: &SourceFacts) -> Result<(), Refusal> {
    if facts.local_depooled {
        return Err(Refusal {
            guard: names::DEPOOLED,
            message: "this node is depooled: it neither serves nor receives".to_owned(),
            hint: "pool it to receive first: `stagingctl pool receive-only --reason \"...\"`".to_owned(),
        });
    }
    if facts.source_pool != SourcePool::Serve {
        let state = match facts.source_pool {
            SourcePool::ReceiveOnly => "receive-only (not yet a source)",
            SourcePool::Depooled => "depooled",
            SourcePool::Unknown => "in an unknown pool state",
            SourcePool::Serve => unreachable!("checked above"),
        };
        return Err(Refusal {
            guard: names::SOURCE_NOT_SERVING,
            message: format!("{} is {state}; only a serving master is a sync source", subject.peer),
            hint: format!(
                "sync from a serving master, or — if {peer} really holds the good tree — pool it first \
                 (on {peer}: `stagingctl pool serve`)",
                peer = subject.peer
            ),
        });
    }
    if facts.source_readiness != SourceReadiness::Ready {
        let why = match facts.source_readiness {
            SourceReadiness::Scanning => "is still scanning its tree",
            SourceReadiness::Applying => "is in the middle of applying a sync",
            SourceReadiness::Incomplete => "could not read some of its files (its manifest is incomplete)",
            SourceReadiness::Unknown => "reports an unknown readiness",
            SourceReadiness::Ready => unreachable!("checked above"),
        };
        return Err(Refusal {
            guard: names::SOURCE_NOT_READY,
            message: format!("{} {why} for tree {}", subject.peer, subject.tree),
            hint: format!("retry when `stagingctl status` shows {} ready", subject.peer),
        });
    }
    if facts.source_leaves == 0 && facts.local_leaves > 0 {
        return Err(Refusal {
            guard: names::SOURCE_EMPTY,
            message: format!(
                "{}'s tree {} has no files while this node has {}: syncing would delete all of them",
                subject.peer, subject.tree, facts.local_leaves
            ),
            hint: format!(
                "{} is probably freshly provisioned; sync it from this node instead (on {}: `stagingctl sync --from THIS-NODE`)",
                subject.peer, subject.peer
            ),
        });
    }
    Ok(())
}

/// Facts about a plan.
#[derive(Debug, Clone)]
pub struct PlanFacts<'a> {
    pub plan: &'a Plan,
    /// Files and symlinks in our tree now.
    pub local_leaves: u64,
    pub limits: DeleteLimits,
    /// The plan id the operator confirmed, if any.
    pub confirmed: Option<PlanId>,
    pub allow_behind: bool,
    /// When the source's root is one this tree had before: the sync id that
    /// left it (for the message).
    pub behind_since: Option<String>,
    pub space: Space,
}

/// The extra fraction of bytes and inodes the capacity guard asks for.
pub const CAPACITY_MARGIN: f64 = 0.05;

/// The guards over a plan: `source-behind`, `delete-threshold`, `capacity`.
pub fn check_plan(subject: &Subject<'_>, facts: &PlanFacts<'_>) -> Result<(), Refusal> {
    let plan = facts.plan;
    if let Some(since) = &facts.behind_since
        && !facts.allow_behind
    {
        return Err(Refusal {
            guard: names::SOURCE_BEHIND,
            message: format!(
                "{}'s root {} is one tree {} had before ({since}): the source is behind, and this sync would roll it back",
                subject.peer,
                plan.to_root.short(12),
                subject.tree
            ),
            hint: format!("if going back is intended: `{}`", subject.command(" --allow-behind")),
        });
    }

    let deletes = plan.totals.leaves_deleted();
    let ratio = if facts.local_leaves == 0 { 0.0 } else { deletes as f64 / facts.local_leaves as f64 };
    let over_files = deletes > facts.limits.max_files;
    let over_ratio = ratio > facts.limits.max_ratio;
    if (over_files || over_ratio) && facts.confirmed != Some(plan.id) {
        let which = match (over_files, over_ratio) {
            (true, true) => format!(
                "more than max_delete_files = {} and more than max_delete_ratio = {:.1}%",
                facts.limits.max_files,
                facts.limits.max_ratio * 100.0
            ),
            (true, false) => format!("more than max_delete_files = {}", facts.limits.max_files),
            _ => format!("more than max_delete_ratio = {:.1}%", facts.limits.max_ratio * 100.0),
        };
        let stale = match facts.confirmed {
            Some(given) => format!(
                "; the confirmed plan {given} is not this plan: {} or this node changed since it was made",
                subject.peer
            ),
            None => String::new(),
        };
        let confirm = subject.command(&format!(" --confirm {}", plan.id));
        return Err(Refusal {
            guard: names::DELETE_THRESHOLD,
            message: format!(
                "plan {} deletes {deletes} of {} files ({:.1}%), {which}{stale}",
                plan.id,
                facts.local_leaves,
                ratio * 100.0
            ),
            hint: format!(
                "review it with `stagingctl diff --from {} --tree {}`, then: `{confirm}`",
                subject.peer, subject.tree
            ),
        });
    }

    let bytes = plan.totals.bytes_to_write;
    let inodes = plan.totals.inodes_needed();
    let with_margin = |n: u64| n + (n as f64 * CAPACITY_MARGIN).ceil() as u64;
    let (bytes_needed, inodes_needed) = (with_margin(bytes), with_margin(inodes));
    if bytes_needed > facts.space.free_bytes || inodes_needed > facts.space.free_inodes {
        return Err(Refusal {
            guard: names::CAPACITY,
            message: format!(
                "plan {} needs {bytes_needed} bytes and {inodes_needed} inodes (with a {:.0}% margin); \
                 the filesystem has {} bytes and {} inodes free",
                plan.id,
                CAPACITY_MARGIN * 100.0,
                facts.space.free_bytes,
                facts.space.free_inodes
            ),
            hint: "free space and inodes on the tree's filesystem (old trash expires with retention), then retry"
                .to_owned(),
        });
    }
    Ok(())
}

/// The `busy` refusal for a lock held by someone else.
pub fn busy(subject_tree: &str, holder: &crate::lock::Busy) -> Refusal {
    Refusal {
        guard: names::BUSY,
        message: format!(
            "tree {subject_tree} is busy: {} by {} since {} ({})",
            holder.holder.operation,
            holder.holder.who,
            humantime::format_rfc3339_seconds(holder.holder.since),
            if holder.holder.reason.is_empty() { "no reason given" } else { &holder.holder.reason }
        ),
        hint: "wait for it to finish (`stagingctl status` shows who holds the lock); nothing is queued".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use manifest::{DirMeta, Hash, Manifest, Node, RelPath, diff};

    use super::*;

    fn subject() -> Subject<'static> {
        Subject { tree: "staging", peer: "deploy2002" }
    }

    fn ready() -> SourceFacts {
        SourceFacts {
            local_depooled: false,
            source_pool: SourcePool::Serve,
            source_readiness: SourceReadiness::Ready,
            source_leaves: 10,
            local_leaves: 10,
        }
    }

    #[test]
    fn source_guards_in_order() {
        assert_eq!(check_source(&subject(), &ready()), Ok(()));
        let guard = |facts: SourceFacts| check_source(&subject(), &facts).unwrap_err().guard;
        assert_eq!(guard(SourceFacts { local_depooled: true, ..ready() }), names::DEPOOLED);
        assert_eq!(guard(SourceFacts { source_pool: SourcePool::ReceiveOnly, ..ready() }), names::SOURCE_NOT_SERVING);
        assert_eq!(
            guard(SourceFacts { source_readiness: SourceReadiness::Scanning, ..ready() }),
            names::SOURCE_NOT_READY
        );
        assert_eq!(guard(SourceFacts { source_leaves: 0, ..ready() }), names::SOURCE_EMPTY);
        // Both empty is fine: nothing to lose.
        assert_eq!(check_source(&subject(), &SourceFacts { source_leaves: 0, local_leaves: 0, ..ready() }), Ok(()));
    }

    fn plan_deleting(n: usize) -> Plan {
        let mut from = Manifest::empty();
        for i in 0..n {
            let file = manifest::FileMeta {
                size: 1,
                mode: 0o644,
                mtime: manifest::Timestamp::default(),
                hash: Hash::of_content(b"x"),
                owner: manifest::Owner::default(),
                stat: manifest::StatKey::default(),
            };
            from.insert(&RelPath::new(format!("f{i}")).unwrap(), Node::File(file)).unwrap();
        }
        let _ = DirMeta::default();
        diff(&from, &Manifest::empty())
    }

    fn plenty() -> Space {
        Space { free_bytes: 1 << 40, total_bytes: 1 << 41, free_inodes: 1 << 30, total_inodes: 1 << 31 }
    }

    #[test]
    fn delete_threshold_needs_the_exact_plan_id() {
        let plan = plan_deleting(20);
        let facts = PlanFacts {
            plan: &plan,
            local_leaves: 100,
            limits: DeleteLimits { max_files: 1000, max_ratio: 0.05 },
            confirmed: None,
            allow_behind: false,
            behind_since: None,
            space: plenty(),
        };
        let refusal = check_plan(&subject(), &facts).unwrap_err();
        assert_eq!(refusal.guard, names::DELETE_THRESHOLD);
        assert!(refusal.message.contains("deletes 20 of 100 files (20.0%)"), "{}", refusal.message);
        assert!(refusal.hint.contains(&format!("--confirm {}", plan.id)), "{}", refusal.hint);

        let stale: PlanId = "0123456789abcdef".parse().unwrap();
        let refusal = check_plan(&subject(), &PlanFacts { confirmed: Some(stale), ..facts.clone() }).unwrap_err();
        assert!(refusal.message.contains("is not this plan"), "{}", refusal.message);
        assert_eq!(check_plan(&subject(), &PlanFacts { confirmed: Some(plan.id), ..facts.clone() }), Ok(()));
        // Under both limits: no confirmation needed.
        assert_eq!(check_plan(&subject(), &PlanFacts { local_leaves: 1000, ..facts }), Ok(()));
    }

    #[test]
    fn behind_and_capacity() {
        let plan = plan_deleting(1);
        let facts = PlanFacts {
            plan: &plan,
            local_leaves: 1000,
            limits: DeleteLimits::default(),
            confirmed: None,
            allow_behind: false,
            behind_since: Some("sync s1-abc".to_owned()),
            space: plenty(),
        };
        assert_eq!(check_plan(&subject(), &facts).unwrap_err().guard, names::SOURCE_BEHIND);
        let allowed = PlanFacts { allow_behind: true, ..facts.clone() };
        assert_eq!(check_plan(&subject(), &allowed), Ok(()));

        let mut to = Manifest::empty();
        let file = manifest::FileMeta {
            size: 1000,
            mode: 0o644,
            mtime: manifest::Timestamp::default(),
            hash: Hash::of_content(b"y"),
            owner: manifest::Owner::default(),
            stat: manifest::StatKey::default(),
        };
        to.insert(&RelPath::new("big").unwrap(), Node::File(file)).unwrap();
        let growing = diff(&Manifest::empty(), &to);
        let tight = Space { free_bytes: 1020, free_inodes: 100, ..plenty() };
        let facts = PlanFacts { plan: &growing, behind_since: None, space: tight, ..facts };
        let refusal = check_plan(&subject(), &facts).unwrap_err();
        assert_eq!(refusal.guard, names::CAPACITY);
        assert!(refusal.message.contains("needs 1050 bytes"), "{}", refusal.message);
        let inodes_short = Space { free_bytes: 1 << 30, free_inodes: 1, ..plenty() };
        assert_eq!(
            check_plan(&subject(), &PlanFacts { space: inodes_short, ..facts }).unwrap_err().guard,
            names::CAPACITY
        );
    }
}
