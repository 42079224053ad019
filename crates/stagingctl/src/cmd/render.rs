//! How a `SyncEvent` stream (from `Admin.Sync` or `Admin.Rollback`) looks to an
//! operator: the itemized plan, progress, one result per tree, the `--json`
//! document, and the exit code. Shared by `sync`, `diff` and `rollback`.
//!
//! Everything here is pure: [`Session`] is a small state machine that turns
//! events into [`Emit`]s (text for stdout or stderr, progress lines), given the
//! time of each event, and [`super::stream`] does the reading and writing. The
//! exact texts are pinned by the tests at the bottom.
//!
//! # Text
//!
//! ```text
//! staging: plan from deploy2002
//!   create     php-1.44/includes/Setup.php  (1.2 KiB)
//!   delete-dir php-1.42/
//! staging: dry run: 1 to create, 0 to update, 1 to delete; 1.2 KiB to write; root abababababab → cdcdcdcdcdcd
//! plan id: 0123456789abcdef
//! to apply it: stagingctl sync --from deploy2002 --tree staging
//! staging: applied sync s1714557600-0123456789abcdef: 12 created, 3 updated, 1 deleted; 1.2 MiB fetched, 300.0 KiB copied locally; root abababababab → cdcdcdcdcdcd
//! staging: already in sync with deploy2002 (root abababababab)
//! ```
//! (a dry run's totals are followed by the daemon's message as `note: …` when it has one)
//! and on stderr `staging: REFUSED by guard delete-threshold: …` / `staging:
//! FAILED: …`, each followed by a `hint:` line when there is a next step.
//!
//! Paths are bytes: they are shown with [`manifest::path::escape`] (bytes that
//! are not UTF-8 as `\xNN`, control characters and `\` escaped), and every
//! daemon-provided text goes through [`sanitize`], so nothing in a tree can
//! drive the operator's terminal.
//!
//! # Exit code
//!
//! 3 if any tree was refused by a guard; else 1 if any failed, had an outcome
//! this `stagingctl` does not know, or the stream broke or ended early; else 0
//! (applied, nothing to do, dry run).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::v1::{EntryKind, PlanItem, Progress, SyncCounts, SyncOutcome, TreeResult, sync_event};
use serde::Serialize;

use crate::client::split_hint;
use crate::cmd::status::report::{hash_hex, hash_short};
use crate::output::{human_bytes, sanitize, thousands};
use crate::{EXIT_ERROR, EXIT_REFUSED};

/// The version of the `--json` document's shape: bumped only when a key is
/// renamed, removed or changes meaning.
pub const FORMAT: u32 = 1;

/// On a pipe or in a log, a progress line at most this often.
pub const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What produced the stream: decides the words of the result lines and the
/// command a dry run suggests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `sync`/`diff` from a peer.
    Sync {
        /// The peer, as given with `--from`.
        from: String,
        /// `--allow-behind` was given: the suggested command keeps it.
        allow_behind: bool,
    },
    /// `rollback`.
    Rollback,
}

impl Operation {
    fn noun(&self) -> &'static str {
        match self {
            Operation::Sync { .. } => "sync",
            Operation::Rollback => "rollback",
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Not at all (`--json`).
    Off,
    /// One line on a terminal, redrawn in place on every event.
    Terminal,
    /// Plain lines, at most one every [`PLAIN_PROGRESS_EVERY`].
    Lines,
}

/// Something to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// Whole lines (ending in a newline) for stdout.
    Stdout(String),
    /// Whole lines for stderr.
    Stderr(String),
    /// One progress line, without a newline: drawn over the previous one on a
    /// terminal, printed as a line of its own otherwise. Always for stderr.
    Progress(String),
}

/// The state of one command's stream: what was seen, for the end.
#[derive(Debug)]
pub struct Session {
    op: Operation,
    json: bool,
    progress: ProgressMode,
    /// The tree named with `--tree`, if any: its result must arrive.
    wanted_tree: Option<String>,
    /// Plan lines are grouped under a header per tree: the tree of the last one.
    items_tree: Option<String>,
    /// Collected for `--json` only.
    plan: Vec<PlanItem>,
    results: Vec<TreeResult>,
    /// Per tree (the daemon may sync several at once): where its current phase began.
    meters: HashMap<String, Meter>,
    last_plain: Option<Instant>,
}

/// Where the current phase of a tree started, for rate and ETA.
#[derive(Debug)]
struct Meter {
    phase: String,
    since: Instant,
    files_done: u64,
    bytes_done: u64,
}

/// The end of a session: what to print last, and the exit code.
#[derive(Debug)]
pub struct Finish {
    /// Printed after everything else (the `--json` document, or the error text
    /// for a stream that ended without a result).
    pub emits: Vec<Emit>,
    /// 0, 1 or 3 (see the module docs).
    pub code: u8,
}

impl Session {
    /// `wanted_tree` is the `--tree` argument (`None` for "every tree").
    pub fn new(op: Operation, json: bool, progress: ProgressMode, wanted_tree: Option<String>) -> Session {
        let progress = if json { ProgressMode::Off } else { progress };
        Session {
            op,
            json,
            progress,
            wanted_tree,
            items_tree: None,
            plan: Vec::new(),
            results: Vec::new(),
            meters: HashMap::new(),
            last_plain: None,
        }
    }

    /// One event of the stream, received at `now`.
    pub fn on_event(&mut self, event: sync_event::Event, now: Instant) -> Vec<Emit> {
        match event {
            sync_event::Event::Progress(progress) => self.on_progress(&progress, now).into_iter().collect(),
            sync_event::Event::PlanItem(item) => {
                if self.json {
                    self.plan.push(item);
                    return Vec::new();
                }
                let mut text = String::new();
                if self.items_tree.as_deref() != Some(item.tree.as_str()) {
                    text.push_str(&plan_header(&self.op, &item.tree));
                    self.items_tree = Some(item.tree.clone());
                }
                text.push_str(&plan_item_line(&item));
                text.push('\n');
                vec![Emit::Stdout(text)]
            }
            sync_event::Event::TreeResult(result) => {
                // The tree is finished: its phase meter goes, and the next plan
                // lines (another tree's, or the same tree's again) get a header.
                self.meters.remove(&result.tree);
                self.items_tree = None;
                let emits = if self.json { Vec::new() } else { render_result(&self.op, &result) };
                self.results.push(result);
                emits
            }
        }
    }

    fn on_progress(&mut self, progress: &Progress, now: Instant) -> Option<Emit> {
        let same_phase = self.meters.get(&progress.tree).is_some_and(|m| m.phase == progress.phase);
        if !same_phase {
            let meter = Meter {
                phase: progress.phase.clone(),
                since: now,
                files_done: progress.files_done,
                bytes_done: progress.bytes_done,
            };
            self.meters.insert(progress.tree.clone(), meter);
        }
        match self.progress {
            ProgressMode::Off => return None,
            ProgressMode::Terminal => {}
            ProgressMode::Lines => {
                if self.last_plain.is_some_and(|last| now.saturating_duration_since(last) < PLAIN_PROGRESS_EVERY) {
                    return None;
                }
                self.last_plain = Some(now);
            }
        }
        let meter = self.meters.get(&progress.tree)?;
        let rate = Rate {
            elapsed: now.saturating_duration_since(meter.since),
            files_at_start: meter.files_done,
            bytes_at_start: meter.bytes_done,
        };
        Some(Emit::Progress(progress_line(progress, &rate)))
    }

    /// The stream ended: normally (`stream_error` `None`) or with an error the
    /// caller has already reported (it counts as exit 1 unless a refusal makes it 3).
    pub fn finish(self, stream_error: Option<&anyhow::Error>) -> Finish {
        let mut emits = Vec::new();
        let mut problem = stream_error.map(|error| format!("{error:#}"));
        if problem.is_none()
            && let Some(missing) = self.missing_result()
        {
            emits.push(Emit::Stderr(format!(
                "error: {missing}\nhint: see `stagingctl history` and the daemon's log (journalctl -u stagingd)\n"
            )));
            problem = Some(missing);
        }
        let code = exit_code(&self.results, problem.is_some());
        if self.json {
            let plan = self.plan_report();
            let report = SyncReport {
                format: FORMAT,
                trees: self.results.iter().map(|r| tree_report(&self.op, r)).collect(),
                plan,
                error: problem,
            };
            let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
            text.push('\n');
            emits.push(Emit::Stdout(text));
        }
        Finish { emits, code }
    }

    /// Why the stream is incomplete although it ended without an error.
    fn missing_result(&self) -> Option<String> {
        if self.results.is_empty() {
            return Some("stagingd ended the stream without a result".to_owned());
        }
        let wanted = self.wanted_tree.as_ref()?;
        (!self.results.iter().any(|r| &r.tree == wanted))
            .then(|| format!("stagingd ended the stream without a result for tree {}", sanitize(wanted)))
    }

    /// The plan for `--json`: present for dry runs (and whenever the daemon sent plan lines).
    fn plan_report(&self) -> Option<Vec<PlanEntry>> {
        let dry_run = self.results.iter().any(|r| r.outcome == SyncOutcome::DryRun as i32);
        (dry_run || !self.plan.is_empty()).then(|| self.plan.iter().map(plan_entry).collect())
    }
}

/// `staging: plan from deploy2002`, the header over a tree's plan lines.
pub fn plan_header(op: &Operation, tree: &str) -> String {
    match op {
        Operation::Sync { from, .. } => format!("{}: plan from {}\n", sanitize(tree), sanitize(from)),
        Operation::Rollback => format!("{}: plan\n", sanitize(tree)),
    }
}

/// `  create     php-1.44/includes/Setup.php  (1.2 KiB)`: the operation, the
/// escaped path (directories end in `/`), and the size for new content.
pub fn plan_item_line(item: &PlanItem) -> String {
    let mut path = manifest::path::escape(&item.path);
    if item.kind == EntryKind::Dir as i32 && !path.is_empty() {
        path.push('/');
    }
    let mut line = format!("  {:<10} {}", sanitize(&item.op), path);
    if matches!(item.op.as_str(), "create" | "update") {
        line.push_str(&format!("  ({})", human_bytes(item.size)));
    }
    line
}

/// How fast the current phase goes: what it had done when it began, and how long ago that was.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Time since the phase's first progress event.
    pub elapsed: Duration,
    /// `files_done` at that event.
    pub files_at_start: u64,
    /// `bytes_done` at that event.
    pub bytes_at_start: u64,
}

/// `staging: fetching 1,234/5,000 files, 12.0 MiB/1.9 GiB, 3.2 MiB/s, ETA 5m12s`.
///
/// Unknown totals (0) leave out the `/total` and the ETA; the rate is shown
/// after a second of the phase, in bytes when the phase moves bytes, else in
/// files.
pub fn progress_line(progress: &Progress, rate: &Rate) -> String {
    let mut parts = Vec::new();
    if progress.files_total > 0 {
        parts.push(format!("{}/{} files", thousands(progress.files_done), thousands(progress.files_total)));
    } else if progress.files_done > 0 {
        parts.push(format!("{} files", thousands(progress.files_done)));
    }
    let by_bytes = progress.bytes_total > 0 || progress.bytes_done > 0;
    if progress.bytes_total > 0 {
        parts.push(format!("{}/{}", human_bytes(progress.bytes_done), human_bytes(progress.bytes_total)));
    } else if progress.bytes_done > 0 {
        parts.push(human_bytes(progress.bytes_done));
    }
    let seconds = rate.elapsed.as_secs_f64();
    if seconds >= 1.0 {
        let (done, at_start, total) = if by_bytes {
            (progress.bytes_done, rate.bytes_at_start, progress.bytes_total)
        } else {
            (progress.files_done, rate.files_at_start, progress.files_total)
        };
        let per_second = done.saturating_sub(at_start) as f64 / seconds;
        if per_second > 0.0 {
            parts.push(if by_bytes {
                format!("{}/s", human_bytes(per_second as u64))
            } else {
                format!("{} files/s", thousands(per_second.round() as u64))
            });
            if total > done {
                let left = (total - done) as f64 / per_second;
                parts.push(format!("ETA {}", short_duration(left.ceil() as u64)));
            }
        }
    }
    let mut line = format!("{}: {}", sanitize(&progress.tree), sanitize(&progress.phase));
    if !parts.is_empty() {
        line.push(' ');
        line.push_str(&parts.join(", "));
    }
    line
}

/// `42s`, `5m12s`, `1h05m`.
pub fn short_duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The outcome in one lowercase word, as in `--json`: `applied`,
/// `nothing-to-do`, `dry-run`, `refused`, `failed`, or `unknown-N`.
pub fn outcome_name(value: i32) -> String {
    match SyncOutcome::try_from(value) {
        Ok(SyncOutcome::Applied) => "applied".to_owned(),
        Ok(SyncOutcome::NothingToDo) => "nothing-to-do".to_owned(),
        Ok(SyncOutcome::DryRun) => "dry-run".to_owned(),
        Ok(SyncOutcome::Refused) => "refused".to_owned(),
        Ok(SyncOutcome::Failed) => "failed".to_owned(),
        Ok(SyncOutcome::Unspecified) | Err(_) => format!("unknown-{value}"),
    }
}

/// `file`, `dir`, `symlink`, or `unknown-N`.
pub fn kind_name(value: i32) -> String {
    match EntryKind::try_from(value) {
        Ok(EntryKind::File) => "file".to_owned(),
        Ok(EntryKind::Dir) => "dir".to_owned(),
        Ok(EntryKind::Symlink) => "symlink".to_owned(),
        Ok(EntryKind::Unspecified) | Err(_) => format!("unknown-{value}"),
    }
}

/// A result's message without the `hint:` line the daemon may have put in it,
/// and the hint: the `hint` field, else that line.
fn message_and_hint(result: &TreeResult) -> (String, Option<String>) {
    let (message, from_message) = split_hint(&result.message);
    let hint = Some(result.hint.trim().to_owned()).filter(|h| !h.is_empty()).or(from_message);
    (message, hint)
}

/// The next command after a result: the daemon's hint, or for a dry run the
/// command that applies the plan.
fn next_step(op: &Operation, result: &TreeResult) -> Option<String> {
    let (_, hint) = message_and_hint(result);
    if hint.is_some() || result.outcome != SyncOutcome::DryRun as i32 {
        return hint;
    }
    match op {
        Operation::Sync { from, allow_behind } => {
            let mut command = format!("stagingctl sync --from {from} --tree {}", result.tree);
            if *allow_behind {
                command.push_str(" --allow-behind");
            }
            Some(command)
        }
        Operation::Rollback => None,
    }
}

/// The lines for one tree's result.
pub fn render_result(op: &Operation, result: &TreeResult) -> Vec<Emit> {
    let tree = sanitize(&result.tree);
    let counts = result.counts.unwrap_or_default();
    let (said, _) = message_and_hint(result);
    // `: message`, or nothing when the daemon said nothing.
    let message = if said.is_empty() { String::new() } else { format!(": {}", sanitize(&said)) };
    let hint_line = || next_step(op, result).map(|h| format!("hint: {}\n", sanitize(&h))).unwrap_or_default();
    let root = || hash_short(if result.root_before.is_empty() { &result.root_after } else { &result.root_before });
    let roots = format!("root {} → {}", hash_short(&result.root_before), hash_short(&result.root_after));
    let changes = format!(
        "{} created, {} updated, {} deleted",
        thousands(counts.creates),
        thousands(counts.updates),
        thousands(counts.deletes)
    );
    match SyncOutcome::try_from(result.outcome) {
        Ok(SyncOutcome::Applied) => {
            let id = if result.sync_id.is_empty() { String::new() } else { format!(" {}", sanitize(&result.sync_id)) };
            let content = match op {
                Operation::Sync { .. } => format!(
                    "{} fetched, {} copied locally",
                    human_bytes(counts.bytes_fetched),
                    human_bytes(counts.bytes_copied_locally)
                ),
                Operation::Rollback => format!("{} copied locally", human_bytes(counts.bytes_copied_locally)),
            };
            vec![Emit::Stdout(format!("{tree}: applied {}{id}: {changes}; {content}; {roots}\n", op.noun()))]
        }
        Ok(SyncOutcome::NothingToDo) => vec![Emit::Stdout(match op {
            Operation::Sync { from, .. } => {
                format!("{tree}: already in sync with {} (root {})\n", sanitize(from), root())
            }
            Operation::Rollback => format!("{tree}: nothing to roll back: already at root {}\n", root()),
        })],
        Ok(SyncOutcome::DryRun) => {
            let mut text = format!(
                "{tree}: dry run: {} to create, {} to update, {} to delete; {} to write; {roots}\n",
                thousands(counts.creates),
                thousands(counts.updates),
                thousands(counts.deletes),
                human_bytes(counts.bytes_to_write)
            );
            // E.g. that a guard would refuse this plan as it stands.
            if !said.is_empty() {
                text.push_str(&format!("note: {}\n", sanitize(&said)));
            }
            if !result.plan_id.is_empty() {
                text.push_str(&format!("plan id: {}\n", sanitize(&result.plan_id)));
            }
            if let Some(step) = next_step(op, result) {
                text.push_str(&format!("to apply it: {}\n", sanitize(&step)));
            }
            vec![Emit::Stdout(text)]
        }
        Ok(SyncOutcome::Refused) => {
            let guard = if result.guard.is_empty() {
                "REFUSED".to_owned()
            } else {
                format!("REFUSED by guard {}", sanitize(&result.guard))
            };
            vec![Emit::Stderr(format!("{tree}: {guard}{message}\n{}", hint_line()))]
        }
        Ok(SyncOutcome::Failed) => vec![Emit::Stderr(format!("{tree}: FAILED{message}\n{}", hint_line()))],
        Ok(SyncOutcome::Unspecified) | Err(_) => vec![Emit::Stderr(format!(
            "{tree}: unknown outcome {} (a newer stagingd?){message}\n{}",
            result.outcome,
            hint_line()
        ))],
    }
}

/// The exit code for these results: 3 if any was refused, else 1 if any
/// failed (or had an unknown outcome) or the stream broke, else 0.
pub fn exit_code(results: &[TreeResult], broken: bool) -> u8 {
    let worst = results
        .iter()
        .map(|r| match SyncOutcome::try_from(r.outcome) {
            Ok(SyncOutcome::Refused) => EXIT_REFUSED,
            Ok(SyncOutcome::Applied | SyncOutcome::NothingToDo | SyncOutcome::DryRun) => 0,
            Ok(SyncOutcome::Failed | SyncOutcome::Unspecified) | Err(_) => EXIT_ERROR,
        })
        .max()
        .unwrap_or(0);
    match worst {
        EXIT_REFUSED => EXIT_REFUSED,
        _ if broken => EXIT_ERROR,
        worst => worst,
    }
}

// ---------------------------------------------------------------------------
// --json
// ---------------------------------------------------------------------------

/// The `--json` document of `sync`, `diff` and `rollback` (see README.md).
#[derive(Debug, Serialize)]
pub struct SyncReport {
    /// Shape version, [`FORMAT`].
    pub format: u32,
    /// One entry per tree that finished, in the order the daemon reported them.
    pub trees: Vec<TreeReport>,
    /// The itemized plan: present for dry runs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<PlanEntry>>,
    /// Why the stream is incomplete (broken, or ended without a result); `null` if it is not.
    pub error: Option<String>,
}

/// One tree's result.
#[derive(Debug, Serialize)]
pub struct TreeReport {
    /// The tree's name.
    pub tree: String,
    /// `applied`, `nothing-to-do`, `dry-run`, `refused`, `failed` (or `unknown-N`).
    pub outcome: String,
    /// The plan's id (16 hex digits); `null` when no plan was made.
    pub plan_id: Option<String>,
    /// The refusing guard; `null` unless refused.
    pub guard: Option<String>,
    /// The daemon's words (without the hint); may be empty.
    pub message: String,
    /// The command that proceeds (refused), the next step (failed), or the
    /// command that applies the plan (dry run); `null` when there is none.
    pub hint: Option<String>,
    /// What the plan does or did; `null` if the daemon sent none.
    pub counts: Option<CountsReport>,
    /// The history record's id; `null` for dry runs and nothing-to-do.
    pub sync_id: Option<String>,
    /// Root hash before, 64 hex digits, or `null`.
    pub root_before: Option<String>,
    /// Root hash after (applied) or planned (dry run, refused), or `null`.
    pub root_after: Option<String>,
}

/// `SyncCounts`, key for key.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CountsReport {
    pub creates: u64,
    pub updates: u64,
    pub deletes: u64,
    pub bytes_to_write: u64,
    pub bytes_fetched: u64,
    pub bytes_copied_locally: u64,
}

impl From<&SyncCounts> for CountsReport {
    fn from(c: &SyncCounts) -> Self {
        CountsReport {
            creates: c.creates,
            updates: c.updates,
            deletes: c.deletes,
            bytes_to_write: c.bytes_to_write,
            bytes_fetched: c.bytes_fetched,
            bytes_copied_locally: c.bytes_copied_locally,
        }
    }
}

/// One line of the plan.
#[derive(Debug, Serialize)]
pub struct PlanEntry {
    /// The tree.
    pub tree: String,
    /// `create`, `update`, `meta`, `symlink`, `relink`, `mkdir`, `dir-meta`, `delete` or `delete-dir`.
    pub op: String,
    /// The path as the text shows it: UTF-8, with `\`, control characters
    /// and bytes that are not UTF-8 (`\xNN`) escaped.
    pub path: String,
    /// New content's size for `create` and `update`, else 0.
    pub size: u64,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
}

fn none_if_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// The `--json` entry for one result.
pub fn tree_report(op: &Operation, result: &TreeResult) -> TreeReport {
    let (message, _) = message_and_hint(result);
    TreeReport {
        tree: result.tree.clone(),
        outcome: outcome_name(result.outcome),
        plan_id: none_if_empty(&result.plan_id),
        guard: none_if_empty(&result.guard),
        message,
        hint: next_step(op, result),
        counts: result.counts.as_ref().map(CountsReport::from),
        sync_id: none_if_empty(&result.sync_id),
        root_before: hash_hex(&result.root_before),
        root_after: hash_hex(&result.root_after),
    }
}

fn plan_entry(item: &PlanItem) -> PlanEntry {
    PlanEntry {
        tree: item.tree.clone(),
        op: item.op.clone(),
        path: manifest::path::escape(&item.path),
        size: item.size,
        kind: kind_name(item.kind),
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::sync_event::Event;

    use super::*;

    fn sync_from(peer: &str) -> Operation {
        Operation::Sync { from: peer.into(), allow_behind: false }
    }

    fn item(tree: &str, op: &str, path: &[u8], size: u64, kind: EntryKind) -> Event {
        Event::PlanItem(PlanItem { tree: tree.into(), op: op.into(), path: path.to_vec(), size, kind: kind as i32 })
    }

    fn result(tree: &str, outcome: SyncOutcome) -> TreeResult {
        TreeResult {
            tree: tree.into(),
            outcome: outcome as i32,
            root_before: vec![0xab; 32],
            root_after: vec![0xcd; 32],
            ..TreeResult::default()
        }
    }

    fn counts() -> SyncCounts {
        SyncCounts {
            creates: 1200,
            updates: 3,
            deletes: 1,
            bytes_to_write: 1_572_864,
            bytes_fetched: 1_258_291,
            bytes_copied_locally: 314_573,
        }
    }

    /// Runs events through a text session; returns (stdout, stderr, exit code).
    fn text(op: Operation, wanted: Option<&str>, events: Vec<Event>) -> (String, String, u8) {
        let mut session = Session::new(op, false, ProgressMode::Off, wanted.map(str::to_owned));
        let now = Instant::now();
        let mut emits = Vec::new();
        for event in events {
            emits.extend(session.on_event(event, now));
        }
        let finish = session.finish(None);
        emits.extend(finish.emits);
        let (mut stdout, mut stderr) = (String::new(), String::new());
        for emit in emits {
            match emit {
                Emit::Stdout(t) => stdout.push_str(&t),
                Emit::Stderr(t) => stderr.push_str(&t),
                Emit::Progress(t) => panic!("progress while off: {t}"),
            }
        }
        (stdout, stderr, finish.code)
    }

    #[test]
    fn dry_run_prints_the_itemized_plan_totals_and_plan_id() {
        let mut dry = result("staging", SyncOutcome::DryRun);
        dry.plan_id = "0123456789abcdef".into();
        dry.counts = Some(counts());
        dry.root_after = vec![0xcd; 32];
        let (stdout, stderr, code) = text(
            sync_from("deploy2002"),
            None,
            vec![
                item("staging", "create", b"php-1.44/includes/Setup.php", 1234, EntryKind::File),
                item("staging", "update", b"wmf-config/db.php", 0, EntryKind::File),
                item("staging", "meta", b"w/index.php", 0, EntryKind::File),
                item("staging", "mkdir", b"php-1.44", 0, EntryKind::Dir),
                item("staging", "symlink", b"php", 0, EntryKind::Symlink),
                item("staging", "delete", b"php-1.42/old.php", 0, EntryKind::File),
                item("staging", "delete-dir", b"php-1.42", 0, EntryKind::Dir),
                Event::TreeResult(dry),
            ],
        );
        assert_eq!(
            stdout,
            "staging: plan from deploy2002\n\
             \x20 create     php-1.44/includes/Setup.php  (1.2 KiB)\n\
             \x20 update     wmf-config/db.php  (0 B)\n\
             \x20 meta       w/index.php\n\
             \x20 mkdir      php-1.44/\n\
             \x20 symlink    php\n\
             \x20 delete     php-1.42/old.php\n\
             \x20 delete-dir php-1.42/\n\
             staging: dry run: 1,200 to create, 3 to update, 1 to delete; 1.5 MiB to write; root abababababab → cdcdcdcdcdcd\n\
             plan id: 0123456789abcdef\n\
             to apply it: stagingctl sync --from deploy2002 --tree staging\n"
        );
        assert_eq!(stderr, "");
        assert_eq!(code, 0);
    }

    #[test]
    fn dry_run_prefers_the_daemons_hint_and_keeps_allow_behind() {
        let mut dry = result("patches", SyncOutcome::DryRun);
        dry.plan_id = "0123456789abcdef".into();
        let op = Operation::Sync { from: "deploy2002".into(), allow_behind: true };
        assert_eq!(
            next_step(&op, &dry).as_deref(),
            Some("stagingctl sync --from deploy2002 --tree patches --allow-behind")
        );
        dry.hint = "stagingctl sync --from deploy2002 --tree patches --confirm 0123456789abcdef".into();
        dry.message = "guard delete-threshold would refuse this plan: it deletes 20 of 100 files".into();
        let (stdout, _, _) = text(op, None, vec![Event::TreeResult(dry)]);
        assert!(
            stdout.ends_with(
                "note: guard delete-threshold would refuse this plan: it deletes 20 of 100 files\n\
                 plan id: 0123456789abcdef\n\
                 to apply it: stagingctl sync --from deploy2002 --tree patches --confirm 0123456789abcdef\n"
            ),
            "{stdout}"
        );
    }

    #[test]
    fn applied_result_names_the_sync_counts_bytes_and_roots() {
        let mut applied = result("staging", SyncOutcome::Applied);
        applied.sync_id = "s1714557600-0123456789abcdef".into();
        applied.plan_id = "0123456789abcdef".into();
        applied.counts = Some(counts());
        let (stdout, stderr, code) = text(sync_from("deploy2002"), Some("staging"), vec![Event::TreeResult(applied)]);
        assert_eq!(
            stdout,
            "staging: applied sync s1714557600-0123456789abcdef: 1,200 created, 3 updated, 1 deleted; \
             1.2 MiB fetched, 307.2 KiB copied locally; root abababababab → cdcdcdcdcdcd\n"
        );
        assert_eq!((stderr.as_str(), code), ("", 0));
    }

    #[test]
    fn nothing_to_do_and_rollback_wording() {
        let mut same = result("staging", SyncOutcome::NothingToDo);
        same.root_after = same.root_before.clone();
        let (stdout, _, code) = text(sync_from("deploy2002"), None, vec![Event::TreeResult(same.clone())]);
        assert_eq!(stdout, "staging: already in sync with deploy2002 (root abababababab)\n");
        assert_eq!(code, 0);
        let (stdout, _, _) = text(Operation::Rollback, None, vec![Event::TreeResult(same)]);
        assert_eq!(stdout, "staging: nothing to roll back: already at root abababababab\n");

        let mut undone = result("staging", SyncOutcome::Applied);
        undone.sync_id = "r1714557700-fedcba9876543210".into();
        undone.counts = Some(SyncCounts { creates: 1, deletes: 1200, bytes_copied_locally: 2048, ..counts() });
        let (stdout, _, code) = text(Operation::Rollback, None, vec![Event::TreeResult(undone)]);
        assert_eq!(
            stdout,
            "staging: applied rollback r1714557700-fedcba9876543210: 1 created, 3 updated, 1,200 deleted; \
             2.0 KiB copied locally; root abababababab → cdcdcdcdcdcd\n"
        );
        assert_eq!(code, 0);
    }

    #[test]
    fn refused_result_goes_to_stderr_with_guard_and_hint_and_exits_3() {
        let mut refused = result("staging", SyncOutcome::Refused);
        refused.guard = "delete-threshold".into();
        refused.plan_id = "0123456789abcdef".into();
        refused.message = "the plan deletes 12,000 of 150,000 files (8%), over the 5% threshold".into();
        refused.hint = "stagingctl sync --from deploy2002 --tree staging --confirm 0123456789abcdef".into();
        let (stdout, stderr, code) = text(sync_from("deploy2002"), None, vec![Event::TreeResult(refused)]);
        assert_eq!(stdout, "");
        assert_eq!(
            stderr,
            "staging: REFUSED by guard delete-threshold: the plan deletes 12,000 of 150,000 files (8%), over the \
             5% threshold\nhint: stagingctl sync --from deploy2002 --tree staging --confirm 0123456789abcdef\n"
        );
        assert_eq!(code, 3);
    }

    #[test]
    fn refused_without_a_hint_field_uses_the_hint_line_of_the_message() {
        let mut busy = result("staging", SyncOutcome::Refused);
        busy.guard = "lock".into();
        busy.message = "tree is busy: sync by alice since 2024-05-01T10:00:00Z (T123)\n\
                        hint: wait for it to finish; `stagingctl status` shows progress"
            .into();
        let (_, stderr, code) = text(Operation::Rollback, None, vec![Event::TreeResult(busy)]);
        assert_eq!(
            stderr,
            "staging: REFUSED by guard lock: tree is busy: sync by alice since 2024-05-01T10:00:00Z (T123)\n\
             hint: wait for it to finish; `stagingctl status` shows progress\n"
        );
        assert_eq!(code, 3);
    }

    #[test]
    fn failed_result_exits_1() {
        let mut failed = result("staging", SyncOutcome::Failed);
        failed.message = "deploy2002 is unreachable: connection refused".into();
        let (stdout, stderr, code) = text(sync_from("deploy2002"), None, vec![Event::TreeResult(failed)]);
        assert_eq!(stdout, "");
        assert_eq!(stderr, "staging: FAILED: deploy2002 is unreachable: connection refused\n");
        assert_eq!(code, 1);
    }

    #[test]
    fn exit_codes_aggregate_refused_over_failed_over_success() {
        let ok = result("a", SyncOutcome::Applied);
        let dry = result("b", SyncOutcome::DryRun);
        let same = result("c", SyncOutcome::NothingToDo);
        let failed = result("d", SyncOutcome::Failed);
        let refused = result("e", SyncOutcome::Refused);
        let unknown = TreeResult { outcome: 99, ..result("f", SyncOutcome::Applied) };
        assert_eq!(exit_code(&[ok.clone(), dry.clone(), same.clone()], false), 0);
        assert_eq!(exit_code(&[ok.clone(), failed.clone(), same.clone()], false), 1);
        assert_eq!(exit_code(&[failed.clone(), refused.clone(), ok.clone()], false), 3);
        assert_eq!(exit_code(&[refused.clone(), failed.clone()], false), 3);
        assert_eq!(exit_code(std::slice::from_ref(&unknown), false), 1);
        // A broken stream is an error, but a refusal still says "refused".
        assert_eq!(exit_code(std::slice::from_ref(&ok), true), 1);
        assert_eq!(exit_code(&[ok.clone(), refused.clone()], true), 3);
        assert_eq!(exit_code(&[], true), 1);

        // Through a session: three trees, each printed under its own name.
        let (stdout, stderr, code) =
            text(sync_from("deploy2002"), None, vec![Event::TreeResult(ok), Event::TreeResult(failed)]);
        assert!(stdout.starts_with("a: applied sync: 0 created"), "{stdout}");
        assert_eq!(stderr, "d: FAILED\n");
        assert_eq!(code, 1);
    }

    #[test]
    fn a_stream_without_results_is_an_error() {
        let (stdout, stderr, code) = text(sync_from("deploy2002"), None, Vec::new());
        assert_eq!(stdout, "");
        assert_eq!(
            stderr,
            "error: stagingd ended the stream without a result\n\
             hint: see `stagingctl history` and the daemon's log (journalctl -u stagingd)\n"
        );
        assert_eq!(code, 1);
        let (_, stderr, code) = text(
            sync_from("deploy2002"),
            Some("patches"),
            vec![Event::TreeResult(result("staging", SyncOutcome::Applied))],
        );
        assert!(stderr.starts_with("error: stagingd ended the stream without a result for tree patches\n"));
        assert_eq!(code, 1);
    }

    #[test]
    fn paths_are_escaped_non_utf8_and_terminal_escapes() {
        let non_utf8 = PlanItem {
            tree: "staging".into(),
            op: "create".into(),
            path: b"l10n/caf\xe9.txt".to_vec(),
            size: 10,
            kind: EntryKind::File as i32,
        };
        assert_eq!(plan_item_line(&non_utf8), "  create     l10n/caf\\xe9.txt  (10 B)");
        let ansi = PlanItem {
            op: "delete".into(),
            path: b"evil/\x1b[2J\x1b[31mred\nline\\x".to_vec(),
            kind: EntryKind::File as i32,
            ..PlanItem::default()
        };
        assert_eq!(plan_item_line(&ansi), "  delete     evil/\\u{1b}[2J\\u{1b}[31mred\\nline\\\\x");
        // Daemon text is made safe too.
        let mut failed = result("staging", SyncOutcome::Failed);
        failed.message = "bad name \x1b]0;pwned\x07 from peer".into();
        let (_, stderr, _) = text(sync_from("deploy2002"), None, vec![Event::TreeResult(failed)]);
        assert_eq!(stderr, "staging: FAILED: bad name \\u{1b}]0;pwned\\u{7} from peer\n");
    }

    #[test]
    fn several_trees_are_grouped_under_headers() {
        let (stdout, _, code) = text(
            sync_from("deploy2002"),
            None,
            vec![
                item("patches", "create", b"a.patch", 2048, EntryKind::File),
                Event::TreeResult(TreeResult {
                    plan_id: "1111111111111111".into(),
                    ..result("patches", SyncOutcome::DryRun)
                }),
                item("staging", "delete", b"x", 0, EntryKind::File),
                Event::TreeResult(TreeResult {
                    plan_id: "2222222222222222".into(),
                    ..result("staging", SyncOutcome::DryRun)
                }),
            ],
        );
        assert_eq!(
            stdout,
            "patches: plan from deploy2002\n\
             \x20 create     a.patch  (2.0 KiB)\n\
             patches: dry run: 0 to create, 0 to update, 0 to delete; 0 B to write; root abababababab → cdcdcdcdcdcd\n\
             plan id: 1111111111111111\n\
             to apply it: stagingctl sync --from deploy2002 --tree patches\n\
             staging: plan from deploy2002\n\
             \x20 delete     x\n\
             staging: dry run: 0 to create, 0 to update, 0 to delete; 0 B to write; root abababababab → cdcdcdcdcdcd\n\
             plan id: 2222222222222222\n\
             to apply it: stagingctl sync --from deploy2002 --tree staging\n"
        );
        assert_eq!(code, 0);
    }

    #[test]
    fn progress_lines_show_counts_rate_and_eta() {
        let p = Progress {
            tree: "staging".into(),
            phase: "fetching".into(),
            files_done: 1234,
            files_total: 5000,
            bytes_done: 12 << 20,
            bytes_total: 76 << 20,
        };
        let start = Rate { elapsed: Duration::from_millis(500), files_at_start: 0, bytes_at_start: 0 };
        assert_eq!(progress_line(&p, &start), "staging: fetching 1,234/5,000 files, 12.0 MiB/76.0 MiB");
        let later = Rate { elapsed: Duration::from_secs(4), files_at_start: 0, bytes_at_start: 4 << 20 };
        assert_eq!(
            progress_line(&p, &later),
            "staging: fetching 1,234/5,000 files, 12.0 MiB/76.0 MiB, 2.0 MiB/s, ETA 32s"
        );
        let files_only = Progress {
            tree: "staging".into(),
            phase: "switching".into(),
            files_done: 3000,
            files_total: 183_000,
            ..Progress::default()
        };
        let rate = Rate { elapsed: Duration::from_secs(2), files_at_start: 1000, bytes_at_start: 0 };
        assert_eq!(
            progress_line(&files_only, &rate),
            "staging: switching 3,000/183,000 files, 1,000 files/s, ETA 3m00s"
        );
        let bare = Progress { tree: "staging".into(), phase: "planning".into(), ..Progress::default() };
        assert_eq!(progress_line(&bare, &rate), "staging: planning");
        assert_eq!(short_duration(3725), "1h02m");
    }

    #[test]
    fn progress_is_throttled_on_pipes_and_off_for_json() {
        let p = |done: u64| {
            Event::Progress(Progress {
                tree: "staging".into(),
                phase: "fetching".into(),
                bytes_done: done,
                bytes_total: 100,
                ..Progress::default()
            })
        };
        let t0 = Instant::now();
        let mut lines = Session::new(sync_from("d"), false, ProgressMode::Lines, None);
        let shown: Vec<usize> = [0u64, 500, 1900, 2100, 3000, 4200]
            .iter()
            .enumerate()
            .filter(|(i, ms)| !lines.on_event(p(*i as u64 * 10), t0 + Duration::from_millis(**ms)).is_empty())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(shown, [0, 3, 5]);

        let mut terminal = Session::new(sync_from("d"), false, ProgressMode::Terminal, None);
        assert_eq!(terminal.on_event(p(10), t0), [Emit::Progress("staging: fetching 10 B/100 B".into())]);
        assert_eq!(
            terminal.on_event(p(30), t0 + Duration::from_secs(2)),
            [Emit::Progress("staging: fetching 30 B/100 B, 10 B/s, ETA 7s".into())]
        );

        // Another tree's progress in between does not restart this tree's rate.
        let other =
            Event::Progress(Progress { tree: "patches".into(), phase: "planning".into(), ..Progress::default() });
        assert_eq!(terminal.on_event(other, t0 + Duration::from_secs(3)), [Emit::Progress("patches: planning".into())]);
        assert_eq!(
            terminal.on_event(p(50), t0 + Duration::from_secs(4)),
            [Emit::Progress("staging: fetching 50 B/100 B, 10 B/s, ETA 5s".into())]
        );

        let mut json = Session::new(sync_from("d"), true, ProgressMode::Terminal, None);
        assert!(json.on_event(p(10), t0).is_empty());
    }

    #[test]
    fn json_document_has_trees_and_the_plan() {
        let mut session = Session::new(sync_from("deploy2002"), true, ProgressMode::Off, None);
        let now = Instant::now();
        let mut dry = result("staging", SyncOutcome::DryRun);
        dry.plan_id = "0123456789abcdef".into();
        dry.counts = Some(counts());
        for event in [
            item("staging", "create", b"caf\xe9", 5, EntryKind::File),
            item("staging", "delete-dir", b"old", 0, EntryKind::Dir),
            Event::TreeResult(dry),
        ] {
            assert!(session.on_event(event, now).is_empty());
        }
        let finish = session.finish(None);
        assert_eq!(finish.code, 0);
        let [Emit::Stdout(doc)] = finish.emits.as_slice() else { panic!("{:?}", finish.emits) };
        let doc: serde_json::Value = serde_json::from_str(doc).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "format": 1,
                "trees": [{
                    "tree": "staging", "outcome": "dry-run", "plan_id": "0123456789abcdef", "guard": null,
                    "message": "", "hint": "stagingctl sync --from deploy2002 --tree staging",
                    "counts": { "creates": 1200, "updates": 3, "deletes": 1, "bytes_to_write": 1_572_864,
                                "bytes_fetched": 1_258_291, "bytes_copied_locally": 314_573 },
                    "sync_id": null, "root_before": "ab".repeat(32), "root_after": "cd".repeat(32)
                }],
                "plan": [
                    { "tree": "staging", "op": "create", "path": "caf\\xe9", "size": 5, "kind": "file" },
                    { "tree": "staging", "op": "delete-dir", "path": "old", "size": 0, "kind": "dir" }
                ],
                "error": null
            })
        );

        // Not a dry run: no "plan" key; a refusal's hint and guard are filled in.
        let mut session = Session::new(sync_from("deploy2002"), true, ProgressMode::Off, None);
        let mut refused = result("staging", SyncOutcome::Refused);
        refused.guard = "behind".into();
        refused.message = "deploy2002 is behind\nhint: stagingctl sync --from deploy2002 --allow-behind".into();
        refused.root_after = Vec::new();
        session.on_event(Event::TreeResult(refused), now);
        let finish = session.finish(None);
        assert_eq!(finish.code, 3);
        let [Emit::Stdout(doc)] = finish.emits.as_slice() else { panic!() };
        let doc: serde_json::Value = serde_json::from_str(doc).unwrap();
        assert!(doc.get("plan").is_none(), "{doc}");
        assert_eq!(doc["trees"][0]["guard"], "behind");
        assert_eq!(doc["trees"][0]["message"], "deploy2002 is behind");
        assert_eq!(doc["trees"][0]["hint"], "stagingctl sync --from deploy2002 --allow-behind");
        assert_eq!(doc["trees"][0]["root_after"], serde_json::Value::Null);
        assert_eq!(doc["trees"][0]["counts"], serde_json::Value::Null);
    }
}
