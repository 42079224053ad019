//! Binding the sockets, running the services, and the staged shutdown.
//!
//! Shutdown on SIGTERM/SIGINT: cancel the node's token (servers stop accepting;
//! long-lived streams end on it), give in-flight calls `shutdown_grace` to
//! finish, then abort what is left, persist state, and remove the admin socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use proto::v1::admin_server::AdminServer;
use proto::v1::peer_server::PeerServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use crate::admin_service::AdminService;
use crate::config::Config;
use crate::node::Node;
use crate::peer_service::PeerService;
use crate::tls;

pub async fn run(config: Config) -> anyhow::Result<()> {
    fs_err::create_dir_all(&config.state_dir)?;
    let _state_lock = lock_state_dir(&config.state_dir)?;

    let tcp = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another daemon using that port?)", config.listen))?;
    let listen = tcp.local_addr()?;
    let admin = bind_admin_socket(&config.admin_socket, config.admin_socket_group.as_ref())?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    let grace = config.shutdown_grace;
    let admin_path = config.admin_socket.clone();
    let node = Arc::new(Node::new(config, listen, shutdown.clone())?);
    tracing::info!(
        node = %node.config.name,
        %listen,
        mutual_tls = node.config.tls.is_some(),
        admin_socket = %admin_path.display(),
        trees = %node.tree_names(),
        "stagingd started"
    );

    crate::systemd::status(&format!("recovering and scanning {} tree(s)", node.trees.len()));
    let mut tasks = JoinSet::new();
    // Each tree's start-up task holds a sender until its first scan is over;
    // READY=1 goes to the service manager when all are dropped.
    let (scans_tx, scans_rx) = tokio::sync::mpsc::channel::<()>(1);
    for tree in node.trees.values() {
        let tree = Arc::clone(tree);
        let scanned = scans_tx.clone();
        let watch_settings = node.config.watch;
        let watch_shutdown = shutdown.clone();
        tasks.spawn(async move {
            // A sync interrupted by a crash is completed (or its staging removed)
            // before the tree is scanned and served again.
            if let Err(e) = recover(&tree).await {
                tracing::error!(
                    tree = %tree.name,
                    "RECOVERY FAILED: {e:#}. The tree stays `scanning` and serves no peer until this is fixed"
                );
                return;
            }
            if let Err(e) = tree.rescan().await {
                tracing::error!(tree = %tree.name, "scan failed: {e:#}");
            }
            // Watch after the first scan: the manifest is what events are applied
            // to, and setting up a watch per directory while the scan walks the
            // same directories would only compete with it. The watcher rescans once
            // (stat-cached) as soon as it watches, to catch changes made meanwhile.
            tokio::spawn(crate::watcher::run(Arc::clone(&tree), watch_settings, watch_shutdown));
            drop(scanned);
        });
    }
    drop(scans_tx);
    tasks.spawn(crate::systemd::ready_after_first_scans(Arc::clone(&node), scans_rx));
    tasks.spawn(crate::systemd::watchdog(shutdown.clone()));

    // Automatic replication (`--replicate-from`); it ends on the shutdown token.
    tasks.spawn(crate::replication::run(Arc::clone(&node)));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<PeerServer<PeerService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&peer_port_descriptors()?)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    // The peer port: limits on size, streams, time and idle connections; with
    // TLS, client certificates from the CA, and only configured peers' names.
    let mut peer_builder = tonic::transport::Server::builder()
        .max_concurrent_streams(tls::MAX_STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(tls::MAX_STREAMS_PER_CONNECTION as usize)
        .timeout(tls::PEER_REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(tls::HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(tls::HTTP2_KEEPALIVE_TIMEOUT));
    if let Some(files) = &node.config.tls {
        peer_builder = peer_builder.tls_config(files.server_config()).with_context(|| {
            format!(
                "peer port TLS: tls_cert {} / tls_key {} / tls_ca {} are not usable together",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            )
        })?;
    }
    let incoming = tonic::transport::server::TcpIncoming::from(tcp)
        .with_nodelay(Some(true))
        .with_keepalive(Some(tls::TCP_KEEPALIVE))
        .with_keepalive_interval(Some(tls::TCP_KEEPALIVE_INTERVAL))
        .with_keepalive_retries(Some(tls::TCP_KEEPALIVE_RETRIES));
    let peer_server = peer_builder
        .layer(tonic::service::InterceptorLayer::new(tls::PeerNameCheck::new(&node.config)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            PeerServer::new(PeerService::new(Arc::clone(&node)))
                .max_decoding_message_size(tls::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(tls::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let admin_server = tonic::transport::Server::builder()
        .add_service(
            AdminServer::new(AdminService::new(Arc::clone(&node)))
                .max_decoding_message_size(tls::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(tls::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(admin), shutdown.clone().cancelled_owned());
    let mut servers = JoinSet::new();
    servers.spawn(async move { peer_server.await.context("peer port") });
    servers.spawn(async move { admin_server.await.context("admin socket") });
    if let Some(listener) = metrics {
        tracing::info!(address = %listener.local_addr()?, "serving metrics on GET /metrics");
        let serve = crate::metrics::serve(listener, Arc::clone(&node), shutdown.clone());
        servers.spawn(async move { serve.await.context("metrics port") });
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let failure = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); None }
        Some(result) = servers.join_next() => Some(match result {
            Ok(Ok(())) => anyhow::anyhow!("a server stopped unexpectedly"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("a server task failed: {e}"),
        }),
    };

    shutdown.cancel();
    crate::systemd::stopping();
    let drained = tokio::time::timeout(grace, async { while servers.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight calls did not finish within the grace period; cancelling them"
        );
    }
    servers.abort_all();
    tasks.abort_all();
    save_stat_caches(&node).await;
    let _ = std::fs::remove_file(&admin_path);
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Binds the admin socket with mode 0660, given to `group` (admin_socket_group)
/// when set. A socket file left by a dead daemon is
/// replaced; one that a live daemon answers on is not touched, and neither is a
/// file that is not a socket.
fn bind_admin_socket(path: &Path, group: Option<&(String, u32)>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            bail!("{} exists and is not a socket; refusing to replace it", path.display())
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!(
                "another stagingd is running: its admin socket {} answers. Stop it first (systemctl stop stagingd)",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::warn!(path = %path.display(), "replacing a stale admin socket left by a daemon that is gone");
                fs_err::remove_file(path)?;
            }
            Err(e) => bail!("cannot check the existing admin socket {}: {e}", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot inspect admin socket path {}: {e}", path.display()),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot bind admin socket {}", path.display()))?;
    if let Some((name, gid)) = group {
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(*gid))).with_context(|| {
            format!("cannot give admin socket {} to admin_socket_group {name:?} (gid {gid})", path.display())
        })?;
    }
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Holds an exclusive lock on the state directory for the daemon's lifetime, so
/// two daemons can never share one (their journals and history would interleave).
fn lock_state_dir(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = state_dir.join("lock");
    let file = fs_err::File::options().create(true).truncate(false).write(true).open(&path)?.into_parts().0;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        anyhow::anyhow!(
            "state dir {} is locked by another stagingd ({e}); each daemon needs its own --state-dir",
            state_dir.display()
        )
    })?;
    Ok(file)
}

/// The contract's descriptors without the `Admin` service: reflection on the
/// peer port lists what the peer port serves, and the admin service is not there.
fn peer_port_descriptors() -> anyhow::Result<Vec<u8>> {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)?;
    for file in &mut set.file {
        file.service.retain(|service| service.name() != "Admin");
    }
    Ok(set.encode_to_vec())
}

/// Completes or undoes whatever a crash left of a sync in `tree`.
async fn recover(tree: &Arc<crate::tree::TreeState>) -> anyhow::Result<()> {
    let (root, state_dir, name) = (tree.root.clone(), tree.state_dir.clone(), tree.name.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        match sync::recover(&root, &state_dir)? {
            sync::Recovery::Clean => {}
            sync::Recovery::StagingDiscarded { dirs } => {
                tracing::warn!(tree = %name, dirs, "removed the staging of a sync that stopped before its switch; the tree is unchanged");
            }
            sync::Recovery::RolledForward { sync_id, plan_id, from_root, to_root, trashed } => {
                tracing::warn!(tree = %name, %sync_id, %plan_id, "completed a sync that a crash interrupted mid-switch");
                let record = sync::HistoryRecord {
                    id: sync_id,
                    kind: sync::history::RecordKind::Sync,
                    source: "recovered after a crash".to_owned(),
                    unix_time: crate::unix_now(),
                    who: "stagingd".to_owned(),
                    reason: "journal found at start".to_owned(),
                    plan_id: plan_id.to_string(),
                    counts: sync::history::Counts::default(),
                    root_before: from_root.to_hex(),
                    root_after: to_root.to_hex(),
                    result: sync::history::RecordResult::Recovered,
                    trashed: trashed.iter().map(manifest::Hash::to_hex).collect(),
                };
                sync::History::open(&state_dir).append(&record)?;
            }
        }
        Ok(())
    })
    .await?
}

/// Writes each tree's current manifest as its stat cache, so the next start
/// reads only what changed while the daemon was down — the watcher's updates
/// since the last full scan live only in memory until now.
async fn save_stat_caches(node: &Node) {
    for tree in node.trees.values() {
        let view = tree.view();
        if view.readiness == crate::tree::Readiness::Scanning {
            continue;
        }
        let (manifest, tree_state) = (view.manifest, Arc::clone(tree));
        let saved = tokio::task::spawn_blocking(move || tree_state.save_cache(&manifest)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(tree = %tree.name, "cannot save the stat cache at shutdown: {e}"),
            Err(e) => tracing::warn!(tree = %tree.name, "cannot save the stat cache at shutdown: {e}"),
        }
    }
}
