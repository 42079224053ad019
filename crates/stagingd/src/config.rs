//! Configuration: a TOML file and command-line flags, merged into one validated
//! [`Config`].
//!
//! Every flag has a config key of the same name (with `_` for `-`); flags win.
//! The repeatable `--tree NAME=DIR` and `--peer NAME=URL` flags replace the file's
//! `[[tree]]` list and `[peer]` table when given. Unknown keys and bad values are
//! errors that name the key; so are overlapping tree roots, duplicate names, and a
//! plaintext listen address beyond loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use manifest::Excludes;
use serde::Deserialize;

/// Command-line flags of `stagingd`.
#[derive(Debug, Default, clap::Parser)]
#[command(name = "stagingd", version, about = "Keeps deployment staging trees in sync between masters, safely")]
pub struct Flags {
    /// TOML configuration file; flags given here win over its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name, as its peers know it (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Shorthand for `--tree staging=DIR`.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A tree to serve and sync (repeatable).
    #[arg(long = "tree", value_name = "NAME=DIR")]
    pub trees: Vec<String>,
    /// Where pool state, stat caches, journals, history are kept.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the read-only peer port (`127.0.0.1:0` picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The local admin socket `stagingctl` talks to.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// A peer master (repeatable).
    #[arg(long = "peer", value_name = "NAME=URL")]
    pub peers: Vec<String>,
    /// Follow this peer automatically.
    #[arg(long, value_name = "PEER")]
    pub replicate_from: Option<String>,
    /// Glob of paths left out of every tree given by `--root`/`--tree` (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Refuse plans deleting more files than this unless confirmed (default 1000).
    #[arg(long)]
    pub max_delete_files: Option<u64>,
    /// Refuse plans deleting more than this fraction of the files unless confirmed (default 0.05).
    #[arg(long)]
    pub max_delete_ratio: Option<f64>,
    /// Log filter when RUST_LOG is not set, e.g. `info` or `stagingd=debug` (default info).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Seconds in-flight calls get to finish on SIGTERM before they are cancelled (default 10).
    #[arg(long)]
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds a call to a peer may take before it counts as unreachable (default 5).
    #[arg(long)]
    pub peer_timeout_secs: Option<u64>,
    /// Seconds between safety rescans of each tree, jittered (default 3600).
    #[arg(long)]
    pub rescan_interval_secs: Option<u64>,
    /// Watcher events buffered per tree before falling back to a full rescan (default 65536).
    #[arg(long)]
    pub watch_queue_events: Option<usize>,
    /// This node's TLS certificate (PEM), with its name as a DNS SAN; with
    /// `--tls-key` and `--tls-ca`, the peer port requires mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs every master's certificate.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Group that may use the admin socket (mode 0660, group set after bind).
    #[arg(long, value_name = "GROUP")]
    pub admin_socket_group: Option<String>,
    /// Serve Prometheus metrics on `GET /metrics` at this address (default: off).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// The file's shape. `deny_unknown_fields` makes a typo an error naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    root: Option<PathBuf>,
    #[serde(default)]
    tree: Vec<FileTree>,
    state_dir: Option<PathBuf>,
    listen: Option<String>,
    admin_socket: Option<PathBuf>,
    #[serde(default)]
    peer: BTreeMap<String, String>,
    replicate_from: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
    max_delete_files: Option<u64>,
    max_delete_ratio: Option<f64>,
    log_level: Option<String>,
    shutdown_grace_secs: Option<u64>,
    peer_timeout_secs: Option<u64>,
    rescan_interval_secs: Option<u64>,
    watch_queue_events: Option<usize>,
    metrics_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    admin_socket_group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTree {
    name: String,
    root: PathBuf,
    #[serde(default)]
    exclude: Vec<String>,
}

/// One managed tree.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    pub name: String,
    pub root: PathBuf,
    pub excludes: Excludes,
}

/// A peer master.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub name: String,
    pub url: String,
}

/// Thresholds of the delete guard.
#[derive(Debug, Clone, Copy)]
pub struct DeleteLimits {
    pub max_files: u64,
    pub max_ratio: f64,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub trees: Vec<TreeConfig>,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_socket: PathBuf,
    pub peers: Vec<PeerConfig>,
    pub replicate_from: Option<String>,
    pub delete_limits: DeleteLimits,
    pub log_level: String,
    pub shutdown_grace: Duration,
    pub peer_timeout: Duration,
    pub watch: crate::watcher::WatchSettings,
    /// Mutual TLS on the peer port; `None`: plaintext, loopback only.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The group the admin socket is given to, by name and gid.
    pub admin_socket_group: Option<(String, u32)>,
    /// Where `GET /metrics` is served; `None`: no metrics port.
    pub metrics_listen: Option<SocketAddr>,
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/stagingd";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/stagingd/admin.sock";
/// The tree name `--root DIR` stands for.
pub const DEFAULT_TREE: &str = "staging";

impl Config {
    /// Reads the file named by `--config` (if any) and merges the flags over it.
    pub fn load(flags: Flags) -> anyhow::Result<Self> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.to_string().trim_end()))?
            }
            None => FileConfig::default(),
        };
        Self::merge(flags, file)
    }

    fn merge(flags: Flags, file: FileConfig) -> anyhow::Result<Self> {
        let name = match flags.name.or(file.name) {
            Some(name) => name,
            None => hostname().context("no --name given and the host name cannot be read; set `name`")?,
        };
        ensure!(is_identifier(&name, 64), "name {name:?} is not valid: use letters, digits, '.', '-' and '_'");

        let exclude = if flags.exclude.is_empty() { file.exclude } else { flags.exclude };
        let mut trees = Vec::new();
        if !flags.trees.is_empty() || flags.root.is_some() {
            if let Some(root) = flags.root {
                trees.push((DEFAULT_TREE.to_owned(), root, exclude.clone()));
            }
            for spec in &flags.trees {
                let (tree_name, dir) =
                    spec.split_once('=').with_context(|| format!("--tree {spec:?}: expected NAME=DIR"))?;
                trees.push((tree_name.to_owned(), PathBuf::from(dir), exclude.clone()));
            }
        } else {
            if let Some(root) = file.root {
                trees.push((DEFAULT_TREE.to_owned(), root, exclude.clone()));
            }
            for tree in file.tree {
                let mut patterns = exclude.clone();
                patterns.extend(tree.exclude);
                trees.push((tree.name, tree.root, patterns));
            }
        }
        ensure!(
            !trees.is_empty(),
            "no tree configured: pass --root DIR or --tree NAME=DIR (config `root` or [[tree]])"
        );
        let trees = validate_trees(trees)?;

        let state_dir = flags.state_dir.or(file.state_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        ensure!(
            state_dir.is_absolute() || flags.config.is_none(),
            "state_dir {} must be absolute",
            state_dir.display()
        );
        for tree in &trees {
            ensure!(
                !state_dir.starts_with(&tree.root),
                "state_dir {} is inside tree {:?} ({}): keep it outside every tree",
                state_dir.display(),
                tree.name,
                tree.root.display()
            );
        }

        let listen_text = flags.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text
            .parse()
            .with_context(|| format!("listen {listen_text:?} is not an address like 127.0.0.1:7420"))?;
        let tls = match (flags.tls_cert.or(file.tls_cert), flags.tls_key.or(file.tls_key), flags.tls_ca.or(file.tls_ca))
        {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(crate::tls::TlsFiles::load(&cert, &key, &ca, &name)?),
            (cert, key, ca) => {
                let missing: Vec<&str> =
                    [("tls_cert", cert.is_none()), ("tls_key", key.is_none()), ("tls_ca", ca.is_none())]
                        .into_iter()
                        .filter_map(|(k, missing)| missing.then_some(k))
                        .collect();
                bail!(
                    "mutual TLS is partly configured: {} missing. Set all three of tls_cert, tls_key and tls_ca \
                     (or none, and listen on loopback only)",
                    missing.join(" and ")
                )
            }
        };
        if !listen.ip().is_loopback() && tls.is_none() {
            bail!(
                "refusing to listen on {listen} without TLS: the peer port serves the whole tree. \
                 Bind a loopback address (e.g. 127.0.0.1:7420), or set all three of tls_cert (this node's \
                 certificate, PEM, naming it as a DNS SAN), tls_key (its private key) and tls_ca (the CA that \
                 signs every master's certificate) to require mutual TLS"
            );
        }

        let admin_socket =
            flags.admin_socket.or(file.admin_socket).unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
        let admin_socket_group = match flags.admin_socket_group.or(file.admin_socket_group) {
            None => None,
            Some(group) => match nix::unistd::Group::from_name(&group) {
                Ok(Some(found)) => Some((group, found.gid.as_raw())),
                Ok(None) => bail!("admin_socket_group {group:?}: no such group on this host"),
                Err(e) => bail!("admin_socket_group {group:?}: cannot look the group up: {e}"),
            },
        };

        let peer_entries: Vec<(String, String)> = if flags.peers.is_empty() {
            file.peer.into_iter().collect()
        } else {
            flags
                .peers
                .iter()
                .map(|spec| {
                    spec.split_once('=')
                        .map(|(n, u)| (n.to_owned(), u.to_owned()))
                        .with_context(|| format!("--peer {spec:?}: expected NAME=URL"))
                })
                .collect::<anyhow::Result<_>>()?
        };
        let mut peers: Vec<PeerConfig> = Vec::new();
        for (peer_name, url) in peer_entries {
            ensure!(is_identifier(&peer_name, 64), "peer name {peer_name:?} is not valid");
            ensure!(peer_name != name, "peer {peer_name:?} has this node's own name");
            ensure!(!peers.iter().any(|p| p.name == peer_name), "peer {peer_name:?} is configured twice");
            let scheme = if tls.is_some() { "https://" } else { "http://" };
            let host_port = url.strip_prefix(scheme).with_context(|| {
                format!(
                    "peer {peer_name}: url {url:?} must start with {scheme} ({})",
                    if tls.is_some() {
                        "mutual TLS is configured"
                    } else {
                        "https:// needs tls_cert, tls_key and tls_ca"
                    }
                )
            })?;
            ensure!(
                host_port.trim_end_matches('/').rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()),
                "peer {peer_name}: url {url:?} needs a port, like {scheme}deploy2002.example:7420"
            );
            peers.push(PeerConfig { name: peer_name, url: url.trim_end_matches('/').to_owned() });
        }

        let replicate_from = flags.replicate_from.or(file.replicate_from);
        if let Some(source) = &replicate_from {
            ensure!(
                peers.iter().any(|p| &p.name == source),
                "replicate_from {source:?} is not a configured peer (configured: {})",
                peer_names(&peers)
            );
        }

        let max_files = flags.max_delete_files.or(file.max_delete_files).unwrap_or(1000);
        let max_ratio = flags.max_delete_ratio.or(file.max_delete_ratio).unwrap_or(0.05);
        ensure!(
            max_ratio > 0.0 && max_ratio <= 1.0,
            "max_delete_ratio {max_ratio} must be a fraction in (0, 1], e.g. 0.05 for 5%"
        );

        let metrics_listen = match flags.metrics_listen.or(file.metrics_listen) {
            Some(text) if !text.is_empty() => Some(
                text.parse::<SocketAddr>()
                    .with_context(|| format!("metrics_listen {text:?} is not an address like 127.0.0.1:9642"))?,
            ),
            _ => None,
        };

        Ok(Config {
            name,
            trees,
            state_dir,
            listen,
            admin_socket,
            peers,
            replicate_from,
            delete_limits: DeleteLimits { max_files, max_ratio },
            log_level: flags.log_level.or(file.log_level).unwrap_or_else(|| "info".to_owned()),
            shutdown_grace: Duration::from_secs(flags.shutdown_grace_secs.or(file.shutdown_grace_secs).unwrap_or(10)),
            peer_timeout: Duration::from_secs(flags.peer_timeout_secs.or(file.peer_timeout_secs).unwrap_or(5)),
            watch: crate::watcher::WatchSettings {
                queue_events: flags.watch_queue_events.or(file.watch_queue_events).unwrap_or(65_536),
                rescan_interval: Duration::from_secs(
                    flags.rescan_interval_secs.or(file.rescan_interval_secs).unwrap_or(3600).max(1),
                ),
            },
            metrics_listen,
            tls,
            admin_socket_group,
        })
    }
}

fn peer_names(peers: &[PeerConfig]) -> String {
    if peers.is_empty() {
        return "none".to_owned();
    }
    peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn validate_trees(trees: Vec<(String, PathBuf, Vec<String>)>) -> anyhow::Result<Vec<TreeConfig>> {
    let mut out: Vec<TreeConfig> = Vec::new();
    for (name, root, patterns) in trees {
        ensure!(
            is_identifier(&name, 32),
            "tree name {name:?} is not valid: use up to 32 letters, digits, '.', '-' and '_'"
        );
        ensure!(!out.iter().any(|t| t.name == name), "tree {name:?} is configured twice");
        ensure!(root.is_absolute(), "tree {name:?}: root {} must be an absolute path", root.display());
        let canonical = std::fs::canonicalize(&root)
            .with_context(|| format!("tree {name:?}: root {} cannot be opened", root.display()))?;
        ensure!(canonical.is_dir(), "tree {name:?}: root {} is not a directory", root.display());
        for other in &out {
            ensure!(
                !canonical.starts_with(&other.root) && !other.root.starts_with(&canonical),
                "trees {:?} ({}) and {name:?} ({}) overlap: one root is inside the other",
                other.name,
                other.root.display(),
                canonical.display()
            );
        }
        let excludes = Excludes::new(&patterns).with_context(|| format!("tree {name:?}: bad exclude"))?;
        out.push(TreeConfig { name, root: canonical, excludes });
    }
    Ok(out)
}

/// Names of nodes, peers and trees: short, printable, safe in file names.
fn is_identifier(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
}

fn hostname() -> anyhow::Result<String> {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let short = name.split('.').next().unwrap_or_default().to_owned();
    ensure!(!short.is_empty(), "empty host name");
    Ok(short)
}

/// The directory for one tree's own state (stat cache, journal, history).
pub fn tree_state_dir(state_dir: &Path, tree: &str) -> PathBuf {
    state_dir.join("trees").join(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_for(root: &Path) -> Flags {
        Flags { name: Some("deploy1002".into()), root: Some(root.to_owned()), ..Flags::default() }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = toml::from_str::<FileConfig>("max_delet_files = 3").unwrap_err().to_string();
        assert!(err.contains("max_delet_files"), "{err}");
        let err = toml::from_str::<FileConfig>("max_delete_files = \"many\"").unwrap_err().to_string();
        assert!(err.contains("max_delete_files"), "{err}");
        let err = toml::from_str::<FileConfig>("[[tree]]\nname = \"a\"\nroot = \"/x\"\nexlude = []").unwrap_err();
        assert!(err.to_string().contains("exlude"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileConfig { name: Some("from-file".into()), max_delete_files: Some(5), ..FileConfig::default() };
        let flags = Flags { max_delete_files: Some(7), ..flags_for(dir.path()) };
        let config = Config::merge(flags, file).unwrap();
        assert_eq!(config.name, "deploy1002");
        assert_eq!(config.delete_limits.max_files, 7);
        assert_eq!(config.trees[0].name, DEFAULT_TREE);
    }

    #[test]
    fn overlapping_trees_and_plaintext_beyond_loopback_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inner")).unwrap();
        let flags = Flags {
            name: Some("n".into()),
            trees: vec![format!("a={}", dir.path().display()), format!("b={}/inner", dir.path().display())],
            ..Flags::default()
        };
        let err = Config::merge(flags, FileConfig::default()).unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");

        let flags = Flags { listen: Some("0.0.0.0:7420".into()), ..flags_for(dir.path()) };
        let err = Config::merge(flags, FileConfig::default()).unwrap_err().to_string();
        assert!(err.contains("without TLS"), "{err}");
        for key in ["tls_cert", "tls_key", "tls_ca"] {
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn partial_tls_names_the_missing_keys_and_unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        let flags = Flags { tls_cert: Some(pem.clone()), ..flags_for(dir.path()) };
        let file = FileConfig { tls_ca: Some(pem.clone()), ..FileConfig::default() };
        let err = Config::merge(flags, file).unwrap_err().to_string();
        assert!(err.contains("tls_key missing"), "{err}");
        let flags = Flags {
            tls_cert: Some(pem.clone()),
            tls_key: Some(pem.clone()),
            tls_ca: Some(pem.clone()),
            ..flags_for(dir.path())
        };
        let err = format!("{:#}", Config::merge(flags, FileConfig::default()).unwrap_err());
        assert!(err.contains("tls_cert") && err.contains(&pem.display().to_string()), "{err}");
        let err = toml::from_str::<FileConfig>("tls_crt = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("tls_crt"), "{err}");
    }

    #[test]
    fn replicate_from_must_be_a_peer_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Flags { replicate_from: Some("deploy2002".into()), ..flags_for(dir.path()) };
        let err = Config::merge(flags, FileConfig::default()).unwrap_err().to_string();
        assert!(err.contains("not a configured peer"), "{err}");
        let flags = Flags { trees: vec![format!("../x={}", dir.path().display())], ..Flags::default() };
        let err = Config::merge(Flags { name: Some("n".into()), ..flags }, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("tree name"), "{err}");
        let flags = Flags { peers: vec!["deploy2002=127.0.0.1:7420".into()], ..flags_for(dir.path()) };
        let err = Config::merge(flags, FileConfig::default()).unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
    }

    #[test]
    fn the_shipped_example_config_uses_only_known_keys() {
        let text = include_str!("../../../systemd/stagingd.toml");
        let file = toml::from_str::<FileConfig>(text).unwrap_or_else(|e| panic!("systemd/stagingd.toml: {e}"));
        assert_eq!(file.metrics_listen.as_deref(), Some("127.0.0.1:9642"));
        assert!(!file.tree.is_empty() && !file.peer.is_empty());
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::merge(flags_for(dir.path()), FileConfig::default()).unwrap();
        assert_eq!(config.metrics_listen, None);
        let flags = Flags { metrics_listen: Some("127.0.0.1:0".into()), ..flags_for(dir.path()) };
        assert!(Config::merge(flags, FileConfig::default()).unwrap().metrics_listen.is_some());
        let flags = Flags { metrics_listen: Some("localhost".into()), ..flags_for(dir.path()) };
        let err = Config::merge(flags, FileConfig::default()).unwrap_err().to_string();
        assert!(err.contains("metrics_listen"), "{err}");
    }
}
