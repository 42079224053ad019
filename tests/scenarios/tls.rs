//! Mutual TLS between masters, and the hardening of both ports: two masters with
//! certificates from one CA sync over https; a client without a certificate,
//! with one from another CA, or with a valid one for a name that is not a
//! configured peer is refused; plaintext beyond loopback and partial TLS
//! configuration are refused at start (exit 2, naming the keys to set); the
//! admin socket is given to `admin_socket_group` and every change is logged
//! with the caller's uid/gid/pid.
//!
//! Certificates are made at run time with `rcgen`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proto::v1 as pb;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use stagingd_tests::{Daemon, TestTree, assert_same_tree, bin, describe, free_port};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A certificate authority, its certificate kept as PEM.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(common_name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert");
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `name` (as DNS SAN), usable as server and client:
    /// (certificate PEM, key PEM).
    fn node(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("node params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("node key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign node cert");
        (cert.pem(), key.serialize_pem())
    }
}

/// The PEM files of one CA and its nodes, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        let pki = Self { dir: tempfile::tempdir().expect("pki dir"), ca: Ca::new("stagingd test CA") };
        std::fs::write(pki.ca_path(), pki.ca.pem()).expect("write CA");
        pki
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes `name.pem` and `name.key`; returns their paths.
    fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.ca.node(name);
        let (cert_path, key_path) =
            (self.dir.path().join(format!("{name}.pem")), self.dir.path().join(format!("{name}.key")));
        std::fs::write(&cert_path, cert).expect("write cert");
        std::fs::write(&key_path, key).expect("write key");
        (cert_path, key_path)
    }

    /// `--tls-cert`, `--tls-key`, `--tls-ca` for node `name`.
    fn flags(&self, name: &str) -> Vec<String> {
        let (cert, key) = self.issue(name);
        vec![
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
            "--tls-ca".to_owned(),
            self.ca_path().display().to_string(),
        ]
    }
}

fn peer_flag(name: &str, port: u16) -> Vec<String> {
    vec!["--peer".to_owned(), format!("{name}=https://127.0.0.1:{port}")]
}

fn tree_with_files() -> TestTree {
    let tree = TestTree::new();
    tree.write("wmf-config/CommonSettings.php", "<?php $wgSitename = 'x';\n")
        .write("php-1.44.0-wmf.1/includes/Setup.php", "<?php\n// setup\n")
        .write("dblists/all.dblist", "enwiki\ndewiki\n")
        .symlink("w", "php-1.44.0-wmf.1");
    tree
}

/// Calls `Peer.Status` on `port` over TLS with `config`; the error with its
/// causes on failure.
fn peer_status(port: u16, config: ClientTlsConfig) -> Result<pb::PeerStatus, (Option<tonic::Code>, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let chain = |e: &dyn std::error::Error| {
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        };
        let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .expect("endpoint")
            .tls_config(config)
            .map_err(|e| (None, chain(&e)))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(5));
        let channel = endpoint.connect().await.map_err(|e| (None, chain(&e)))?;
        let mut client = pb::peer_client::PeerClient::new(channel);
        client
            .status(pb::PeerStatusRequest { tree: String::new() })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| (Some(status.code()), format!("{}: {}", status.message(), chain(&status))))
    })
}

fn identity(cert: &Path, key: &Path) -> Identity {
    Identity::from_pem(std::fs::read(cert).expect("read cert"), std::fs::read(key).expect("read key"))
}

#[test]
fn two_masters_with_mutual_tls_sync_and_see_each_other() {
    let pki = Pki::new();
    let (source_tree, empty_tree) = (tree_with_files(), TestTree::new());
    let (port_a, port_b) = (free_port(), free_port());
    let mut flags_a = pki.flags("deploy1002");
    flags_a.extend(peer_flag("deploy2002", port_b));
    let mut flags_b = pki.flags("deploy2002");
    flags_b.extend(peer_flag("deploy1002", port_a));
    let b = Daemon::start("deploy2002", source_tree.path(), port_b, &flags_b);
    let a = Daemon::start("deploy1002", empty_tree.path(), port_a, &flags_a);
    let output = b.ctl(["pool", "serve", "--bootstrap", "--reason", "first master"]);
    assert!(output.status.success(), "{}", describe(&output));

    let output = a.ctl(["sync", "--from", "deploy2002", "--reason", "tls test"]);
    assert!(output.status.success(), "sync over mTLS failed:\n{}\n--- log of a\n{}", describe(&output), a.log());
    assert_same_tree(source_tree.path(), empty_tree.path());

    let status = a.status_json().expect("status");
    let peer = &status["peers"][0];
    assert_eq!(peer["name"], "deploy2002", "{status:#}");
    assert_eq!(peer["reachable"], true, "peer not reachable over mTLS: {status:#}");
    assert_eq!(peer["trees"][0]["in_sync"], true, "{status:#}");
    let status = b.status_json().expect("status");
    assert_eq!(status["peers"][0]["reachable"], true, "a not reachable from b over mTLS: {status:#}");
}

#[test]
fn clients_without_a_valid_peer_certificate_are_refused() {
    let pki = Pki::new();
    let tree = tree_with_files();
    let port = free_port();
    let mut flags = pki.flags("deploy2002");
    flags.extend(peer_flag("deploy1002", free_port()));
    let daemon = Daemon::start("deploy2002", tree.path(), port, &flags);
    let ca = Certificate::from_pem(pki.ca.pem());
    let base = || ClientTlsConfig::new().ca_certificate(ca.clone()).domain_name("deploy2002");

    // The control: a configured peer's certificate is served.
    let (cert, key) = pki.issue("deploy1002");
    let status = peer_status(port, base().identity(identity(&cert, &key))).expect("a configured peer is served");
    assert_eq!(status.node, "deploy2002");

    // No client certificate: the handshake (or the first call) fails.
    let err = peer_status(port, base()).expect_err("a client without a certificate must be refused");
    eprintln!("without a certificate: {err:?}");
    assert_ne!(err.0, Some(tonic::Code::PermissionDenied), "rustls, not the name check, must refuse it: {err:?}");

    // A certificate with the right name, from another CA.
    let rogue = Ca::new("another CA");
    let (rogue_cert, rogue_key) = rogue.node("deploy1002");
    let err = peer_status(port, base().identity(Identity::from_pem(rogue_cert, rogue_key)))
        .expect_err("a certificate from another CA must be refused");
    eprintln!("other CA: {err:?}");
    assert_ne!(err.0, Some(tonic::Code::PermissionDenied), "rustls, not the name check, must refuse it: {err:?}");

    // A valid certificate from the CA, for a name that is not a configured peer.
    let (cert, key) = pki.issue("intruder1001");
    let err = peer_status(port, base().identity(identity(&cert, &key)))
        .expect_err("a certificate for an unlisted name must be refused");
    assert_eq!(err.0, Some(tonic::Code::PermissionDenied), "{err:?}");
    assert!(err.1.contains("intruder1001") && err.1.contains("deploy1002"), "names presented and configured: {err:?}");

    // Plaintext against the TLS port fails too.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let plain = runtime.block_on(async {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .timeout(std::time::Duration::from_secs(5))
            .connect()
            .await;
        match channel {
            Err(e) => Err(e.to_string()),
            Ok(channel) => pb::peer_client::PeerClient::new(channel)
                .status(pb::PeerStatusRequest { tree: String::new() })
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
        }
    });
    assert!(plain.is_err(), "plaintext must not be served on a TLS port");
    assert!(daemon.log().contains("intruder1001"), "the refusal is logged:\n{}", daemon.log());
}

/// Runs `stagingd` with `args` (plus a name, a tree, a state dir and a socket)
/// and expects it to exit on its own.
fn stagingd_refuses(args: &[String]) -> Output {
    let tree = TestTree::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(bin("stagingd"));
    command
        .args(["--name", "deploy1002", "--root"])
        .arg(tree.path())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .args(args);
    let mut child =
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("stagingd {args:?} did not exit: it should have refused to start");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn plaintext_beyond_loopback_is_refused_naming_the_tls_keys() {
    let output = stagingd_refuses(&["--listen".to_owned(), "0.0.0.0:0".to_owned()]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["without TLS", "tls_cert", "tls_key", "tls_ca"] {
        assert!(stderr.contains(key), "message should name {key}: {stderr}");
    }
}

#[test]
fn partial_or_unusable_tls_configuration_is_refused() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("deploy1002");
    let arg = |flag: &str, path: &Path| [flag.to_owned(), path.display().to_string()];

    let mut args: Vec<String> = arg("--tls-cert", &cert).into();
    args.extend(arg("--tls-ca", &pki.ca_path()));
    let output = stagingd_refuses(&args);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls_key missing"), "{stderr}");

    let output = stagingd_refuses(&arg("--tls-ca", &pki.ca_path()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(stderr.contains("tls_cert and tls_key missing"), "{stderr}");

    // A key file that is not PEM: the error names the file.
    let garbage = pki.dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let mut args: Vec<String> = arg("--tls-cert", &cert).into();
    args.extend(arg("--tls-key", &garbage));
    args.extend(arg("--tls-ca", &pki.ca_path()));
    let output = stagingd_refuses(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(stderr.contains("tls_key") && stderr.contains(&garbage.display().to_string()), "{stderr}");

    // A missing CA file: named.
    let missing = pki.dir.path().join("no-such-ca.pem");
    let mut args: Vec<String> = arg("--tls-cert", &cert).into();
    args.extend(arg("--tls-key", &key));
    args.extend(arg("--tls-ca", &missing));
    let output = stagingd_refuses(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(stderr.contains("tls_ca") && stderr.contains(&missing.display().to_string()), "{stderr}");

    // A certificate for another node: peers could not verify this one by name.
    let (other, other_key) = pki.issue("deploy2002");
    let mut args: Vec<String> = arg("--tls-cert", &other).into();
    args.extend(arg("--tls-key", &other_key));
    args.extend(arg("--tls-ca", &pki.ca_path()));
    let output = stagingd_refuses(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(stderr.contains("does not name this node") && stderr.contains("deploy2002"), "{stderr}");

    // TLS configured, but a peer URL in plaintext.
    let mut args = pki.flags("deploy1002");
    args.extend(["--peer".to_owned(), "deploy2002=http://127.0.0.1:7421".to_owned()]);
    let output = stagingd_refuses(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(stderr.contains("https://"), "{stderr}");
}

#[test]
fn the_admin_socket_belongs_to_its_group_and_changes_are_logged_with_the_callers_credentials() {
    let group = String::from_utf8(Command::new("id").arg("-gn").output().expect("id -gn").stdout).unwrap();
    let group = group.trim();
    let gid: u32 = String::from_utf8(Command::new("id").arg("-g").output().expect("id -g").stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let uid: u32 = String::from_utf8(Command::new("id").arg("-u").output().expect("id -u").stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let tree = tree_with_files();
    let daemon =
        Daemon::start("deploy1002", tree.path(), free_port(), &["--admin-socket-group".to_owned(), group.to_owned()]);
    let meta = std::fs::metadata(&daemon.socket).expect("socket metadata");
    assert_eq!(meta.gid(), gid, "socket group");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");

    let output = daemon.ctl(["pool", "serve", "--bootstrap", "--reason", "creds test"]);
    assert!(output.status.success(), "{}", describe(&output));
    let log = plain_log(&daemon);
    let line = log.lines().find(|l| l.contains("pool state changed")).unwrap_or_else(|| panic!("no pool line:\n{log}"));
    assert!(line.contains(&format!("uid={uid}")) && line.contains(&format!("gid={gid}")), "{line}");
    assert!(line.contains("pid="), "{line}");

    let output = daemon.ctl(["rollback", "--reason", "nothing to roll back"]);
    let log = plain_log(&daemon);
    let line = log
        .lines()
        .rfind(|l| l.contains("rollback"))
        .unwrap_or_else(|| panic!("no rollback line ({}):\n{log}", describe(&output)));
    assert!(line.contains(&format!("uid={uid}")), "{line}");

    let output = stagingd_refuses(&["--admin-socket-group".to_owned(), "no-such-group-stagingd".to_owned()]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-group-stagingd"), "{}", describe(&output));
}

/// The daemon's log without terminal colour codes.
fn plain_log(daemon: &Daemon) -> String {
    let mut out = String::new();
    let log = daemon.log();
    let mut chars = log.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
