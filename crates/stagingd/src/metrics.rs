//! Prometheus metrics: `GET /metrics` on `metrics_listen` (off unless set).
//!
//! Counters and the apply-duration histogram are bumped where things happen
//! (one call in `operations::log_outcome`, two in the watcher) on a process-wide
//! [`Metrics`]; gauges (pool state, tree sizes, root age, free space, replication)
//! are read from the node at scrape time, so they are never stale.
//!
//! `prometheus-client` encodes OpenMetrics. A scraper that asks for it
//! (`Accept: application/openmetrics-text`) gets that; everyone else gets the
//! classic Prometheus text format (0.0.4), which `promtool check metrics` and
//! `curl` users expect: the only differences that matter here are that a counter
//! family is named with its `_total` suffix and there is no `# EOF`.
//!
//! The port serves nothing but `/metrics`: no tree content, no hashes. It is
//! plain HTTP; bind it to loopback or a management network.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::pool::PoolState;
use crate::tree::Readiness;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TreeLabel {
    tree: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    tree: String,
    /// `sync`, `diff` (a dry run) or `rollback`.
    operation: String,
    /// `applied`, `nothing-to-do`, `dry-run`, `refused`, `failed`.
    result: String,
    /// The refusing guard, empty otherwise.
    guard: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    tree: String,
    operation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RescanLabels {
    tree: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TreeStateLabels {
    tree: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    node: String,
    version: String,
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    // Bumped as things happen.
    syncs: Family<SyncLabels, Counter>,
    bytes_fetched: Family<TreeLabel, Counter>,
    bytes_copied_locally: Family<TreeLabel, Counter>,
    apply_seconds: Family<OperationLabels, Histogram>,
    watch_events: Family<TreeLabel, Counter>,
    rescans: Family<RescanLabels, Counter>,
    // Set from the node at scrape time.
    info: Family<InfoLabels, Gauge>,
    pool_state: Family<StateLabel, Gauge>,
    readiness: Family<TreeStateLabels, Gauge>,
    root_age: Family<TreeLabel, Gauge>,
    files: Family<TreeLabel, Gauge>,
    bytes: Family<TreeLabel, Gauge>,
    fs_free_bytes: Family<TreeLabel, Gauge>,
    fs_size_bytes: Family<TreeLabel, Gauge>,
    fs_free_inodes: Family<TreeLabel, Gauge>,
    fs_inodes: Family<TreeLabel, Gauge>,
    replication_phase: Family<PhaseLabel, Gauge>,
    replication_lag: Family<SourceLabel, Gauge>,
}

/// Buckets from 50 ms doubling to about 7 minutes: a small change applies in
/// well under a second, a full copy of a staging tree in tens of seconds.
fn apply_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("stagingd"),
            syncs: Family::default(),
            bytes_fetched: Family::default(),
            bytes_copied_locally: Family::default(),
            apply_seconds: Family::new_with_constructor(apply_histogram as fn() -> Histogram),
            watch_events: Family::default(),
            rescans: Family::default(),
            info: Family::default(),
            pool_state: Family::default(),
            readiness: Family::default(),
            root_age: Family::default(),
            files: Family::default(),
            bytes: Family::default(),
            fs_free_bytes: Family::default(),
            fs_size_bytes: Family::default(),
            fs_free_inodes: Family::default(),
            fs_inodes: Family::default(),
            replication_phase: Family::default(),
            replication_lag: Family::default(),
        };
        let r = &mut m.registry;
        r.register("build_info", "The daemon's node name and version (always 1)", m.info.clone());
        r.register(
            "pool_state",
            "This node's pool state: 1 for the current one (serve, receive-only, depooled)",
            m.pool_state.clone(),
        );
        r.register(
            "tree_readiness",
            "1 for each tree's current readiness (ready, scanning, applying, incomplete)",
            m.readiness.clone(),
        );
        r.register("tree_root_age_seconds", "Seconds since the tree's root hash last changed", m.root_age.clone());
        r.register("tree_files", "Regular files in the tree's manifest", m.files.clone());
        r.register("tree_bytes", "Bytes of the regular files in the tree's manifest", m.bytes.clone());
        r.register(
            "filesystem_free_bytes",
            "Bytes free to the daemon on the tree's filesystem",
            m.fs_free_bytes.clone(),
        );
        r.register("filesystem_size_bytes", "Size of the tree's filesystem in bytes", m.fs_size_bytes.clone());
        r.register(
            "filesystem_free_inodes",
            "Inodes free to the daemon on the tree's filesystem",
            m.fs_free_inodes.clone(),
        );
        r.register("filesystem_inodes", "Inodes of the tree's filesystem", m.fs_inodes.clone());
        r.register(
            "syncs",
            "Syncs, dry runs and rollbacks finished, by tree, operation, result and refusing guard",
            m.syncs.clone(),
        );
        r.register("fetched_bytes", "Content bytes fetched from peers by applied syncs", m.bytes_fetched.clone());
        r.register(
            "copied_locally_bytes",
            "Content bytes a sync took from local copies (same hash elsewhere in the tree or in the trash) instead of fetching",
            m.bytes_copied_locally.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Wall time of syncs and rollbacks that applied a plan, from taking the lock to the result",
            m.apply_seconds.clone(),
        );
        r.register("watch_events", "File-system events the watcher received", m.watch_events.clone());
        r.register("rescans", "Full (stat-cached) rescans started by the watcher, by reason", m.rescans.clone());
        r.register(
            "replication_phase",
            "1 for the current replication phase (disabled, following, paused, stopped, retrying)",
            m.replication_phase.clone(),
        );
        r.register(
            "replication_lag_seconds",
            "Seconds since replication last found every shared tree equal to its source's (refreshed on each root \
             change of the source); absent before the first success",
            m.replication_lag.clone(),
        );
        m
    }

    /// Counts a finished sync, dry run or rollback (`result` is the wire outcome).
    pub fn record_outcome(&self, tree: &str, operation: &str, result: &pb::TreeResult, elapsed: Duration) {
        let outcome = crate::operations::outcome_name(result.outcome());
        let labels = SyncLabels {
            tree: tree.to_owned(),
            operation: operation.to_owned(),
            result: outcome,
            guard: result.guard.clone(),
        };
        self.syncs.get_or_create(&labels).inc();
        let counts = result.counts.unwrap_or_default();
        let tree_label = TreeLabel { tree: tree.to_owned() };
        self.bytes_fetched.get_or_create(&tree_label).inc_by(counts.bytes_fetched);
        self.bytes_copied_locally.get_or_create(&tree_label).inc_by(counts.bytes_copied_locally);
        if result.outcome() == pb::SyncOutcome::Applied {
            let labels = OperationLabels { tree: tree.to_owned(), operation: operation.to_owned() };
            self.apply_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
        }
    }

    /// Counts events the watcher took in one burst.
    pub fn watch_events(&self, tree: &str, events: usize) {
        self.watch_events.get_or_create(&TreeLabel { tree: tree.to_owned() }).inc_by(events as u64);
    }

    /// Counts a full rescan the watcher started, with its reason.
    pub fn rescan(&self, tree: &str, reason: &str) {
        self.rescans.get_or_create(&RescanLabels { tree: tree.to_owned(), reason: reason.to_owned() }).inc();
    }

    /// Makes sure every tree's counters exist (at zero), so a scrape shows the
    /// series before the first event and `rate()` has a starting point.
    fn touch(&self, node: &Node) {
        for name in node.trees.keys() {
            let tree = TreeLabel { tree: name.clone() };
            self.bytes_fetched.get_or_create(&tree).inc_by(0);
            self.bytes_copied_locally.get_or_create(&tree).inc_by(0);
            self.watch_events.get_or_create(&tree).inc_by(0);
        }
    }

    /// Sets the gauges from `node` and encodes everything.
    pub fn render(&self, node: &Node, openmetrics: bool) -> String {
        self.touch(node);
        let now = crate::unix_now();
        self.info
            .get_or_create(&InfoLabels {
                node: node.config.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        let pool = node.pool().state;
        for state in [PoolState::Serve, PoolState::ReceiveOnly, PoolState::Depooled] {
            self.pool_state
                .get_or_create(&StateLabel { state: state.as_str().to_owned() })
                .set(i64::from(state == pool));
        }
        for tree in node.trees.values() {
            let status = tree.status();
            let readiness = tree.view().readiness;
            for (state, name) in [
                (Readiness::Ready, "ready"),
                (Readiness::Scanning, "scanning"),
                (Readiness::Applying, "applying"),
                (Readiness::Incomplete, "incomplete"),
            ] {
                let labels = TreeStateLabels { tree: tree.name.clone(), state: name.to_owned() };
                self.readiness.get_or_create(&labels).set(i64::from(state == readiness));
            }
            let label = TreeLabel { tree: tree.name.clone() };
            if status.root_changed_unix > 0 {
                self.root_age.get_or_create(&label).set((now - status.root_changed_unix).max(0));
            }
            let gauge = |family: &Family<TreeLabel, Gauge>, value: u64| {
                family.get_or_create(&label).set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            gauge(&self.files, status.files);
            gauge(&self.bytes, status.bytes);
            gauge(&self.fs_free_bytes, status.fs_free_bytes);
            gauge(&self.fs_size_bytes, status.fs_total_bytes);
            gauge(&self.fs_free_inodes, status.fs_free_inodes);
            gauge(&self.fs_inodes, status.fs_total_inodes);
        }
        let replication = node.replication.state();
        let phase = replication.phase();
        for (value, name) in [
            (pb::ReplicationPhase::Disabled, "disabled"),
            (pb::ReplicationPhase::Following, "following"),
            (pb::ReplicationPhase::Paused, "paused"),
            (pb::ReplicationPhase::Stopped, "stopped"),
            (pb::ReplicationPhase::Retrying, "retrying"),
        ] {
            self.replication_phase.get_or_create(&PhaseLabel { phase: name.to_owned() }).set(i64::from(value == phase));
        }
        if replication.last_success_unix > 0 {
            self.replication_lag
                .get_or_create(&SourceLabel { source: replication.source.clone() })
                .set((now - replication.last_success_unix).max(0));
        }

        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::error!("cannot encode the metrics");
        }
        if openmetrics { text } else { to_prometheus_text(&text) }
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4: counter families take the
/// name of their samples (`…_total`), and `# EOF`/`# UNIT` lines go.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> =
        openmetrics.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!("metrics port: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let node = Arc::clone(&node);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let node = Arc::clone(&node);
                async move { Ok::<_, Infallible>(answer(&node, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = connection => if let Err(e) = result {
                    tracing::debug!("metrics port: connection ended: {e}");
                },
            }
        });
    }
}

fn answer(node: &Node, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, TEXT, "stagingd serves only /metrics here\n".to_owned());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".to_owned());
        response.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let openmetrics = request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = global().render(node, openmetrics);
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    let mut response = reply(StatusCode::OK, content_type, body);
    if request.method() == Method::HEAD {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

/// Binds the metrics port, with an error an operator can act on.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr} (metrics_listen; is the port in use?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_prometheus_text_format() {
        let open = "# HELP stagingd_syncs Syncs.\n# TYPE stagingd_syncs counter\nstagingd_syncs_total{tree=\"a\"} 1\n\
                    # HELP stagingd_tree_files Files.\n# TYPE stagingd_tree_files gauge\nstagingd_tree_files 3\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP stagingd_syncs_total Syncs.\n# TYPE stagingd_syncs_total counter\n\
             stagingd_syncs_total{tree=\"a\"} 1\n# HELP stagingd_tree_files Files.\n\
             # TYPE stagingd_tree_files gauge\nstagingd_tree_files 3\n"
        );
    }
}
