//! The peer port's transport: mutual TLS (rustls through tonic), the check that
//! a connected client is one of the configured peers, the connections to peers,
//! and the limits both ports enforce (message size, streams per connection,
//! request time, keepalives).
//!
//! With `tls_cert`, `tls_key` and `tls_ca` set, the server accepts only clients
//! whose certificate chains to `tls_ca` *and* carries a configured peer's name as
//! a DNS subject alternative name; this node connects to each peer over https,
//! presenting its own certificate and expecting the peer's certificate to carry
//! the peer's configured name. A certificate signed by the CA is therefore not
//! enough on its own: the name decides which masters may read the trees.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use proto::v1::peer_client::PeerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::config::{Config, PeerConfig};

/// Largest gRPC message either port sends or accepts. A content chunk carries
/// 1 MiB of data; a directory listing of ~80,000 entries still fits.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// HTTP/2 streams one connection may have open at once on the peer port (a
/// sync uses up to 16 listings and 4 content streams at a time).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Time a call on the peer port may take to produce its answer. For streams
/// (`FetchContent`, `WatchRoot`) this bounds only the start of the stream; the
/// receiver's idle timeout covers the rest.
pub const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings on idle connections, both ways, so a peer that vanished
/// without closing its connection (power loss, partition) is noticed.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on peer connections, under the HTTP/2 pings: first probe
/// after a minute of silence, then every 10 s; 3 unanswered probes drop it.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Time a client gets to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The three PEM files of mutual TLS, read and checked at configuration time.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
}

/// Paths only: the key's bytes never reach a log.
impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles").field("cert", &self.cert).field("key", &self.key).field("ca", &self.ca).finish()
    }
}

impl TlsFiles {
    /// Reads the files and checks that each holds what its key says: `cert` an
    /// X.509 certificate naming `node` as a DNS SAN (peers verify this node by
    /// that name), `key` a PEM private key, `ca` one or more X.509 certificates.
    /// Errors name the key and the file.
    pub fn load(cert: &Path, key: &Path, ca: &Path, node: &str) -> anyhow::Result<Self> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).with_context(|| format!("{what} {}: cannot read the file", path.display()))
        };
        let (cert_pem, key_pem, ca_pem) = (read("tls_cert", cert)?, read("tls_key", key)?, read("tls_ca", ca)?);

        let certs = pem_certificates(&cert_pem).with_context(|| format!("tls_cert {}", cert.display()))?;
        let names = dns_names(&certs[0]).with_context(|| format!("tls_cert {}", cert.display()))?;
        if !names.iter().any(|n| n.eq_ignore_ascii_case(node)) {
            bail!(
                "tls_cert {}: the certificate does not name this node {node:?} as a DNS subject alternative name \
                 (it names: {}); peers check this node's certificate against the name they know it by",
                cert.display(),
                list_or_none(&names)
            );
        }
        pem_certificates(&ca_pem).with_context(|| format!("tls_ca {}", ca.display()))?;
        let has_key = pem_blocks(&key_pem)
            .with_context(|| format!("tls_key {}", key.display()))?
            .iter()
            .any(|(label, _)| label.ends_with("PRIVATE KEY"));
        if !has_key {
            bail!("tls_key {}: no PEM private key (-----BEGIN PRIVATE KEY-----) in the file", key.display());
        }
        Ok(Self { cert: cert.to_owned(), key: key.to_owned(), ca: ca.to_owned(), cert_pem, key_pem, ca_pem })
    }

    /// The server side: this node's identity, client certificates required and
    /// checked against the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// The client side towards `peer`: trust only the CA, present this node's
    /// certificate, and expect the peer's certificate to name `peer`.
    pub fn client_config(&self, peer: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(peer)
    }
}

/// The PEM blocks of `pem` as (label, DER contents).
fn pem_blocks(pem: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut blocks = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| anyhow::anyhow!("not valid PEM: {e}"))?;
        blocks.push((block.label, block.contents));
    }
    if blocks.is_empty() {
        bail!("no PEM block (-----BEGIN ...-----) in the file");
    }
    Ok(blocks)
}

/// The DER certificates of `pem`; at least one, each a valid X.509 certificate.
fn pem_certificates(pem: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let certs: Vec<Vec<u8>> =
        pem_blocks(pem)?.into_iter().filter(|(label, _)| label == "CERTIFICATE").map(|(_, der)| der).collect();
    if certs.is_empty() {
        bail!("no certificate (-----BEGIN CERTIFICATE-----) in the file");
    }
    for der in &certs {
        x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("not a valid X.509 certificate: {e}"))?;
    }
    Ok(certs)
}

/// The DNS names among a certificate's subject alternative names.
pub fn dns_names(der: &[u8]) -> anyhow::Result<Vec<String>> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("not a valid X.509 certificate: {e}"))?;
    let san = cert.subject_alternative_name().map_err(|e| anyhow::anyhow!("bad subject alternative names: {e}"))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

/// Admits a call on the peer port only from a configured peer: with TLS, the
/// client certificate (already verified against the CA by rustls) must carry
/// one of the peers' names as a DNS SAN. Without TLS (loopback only) every
/// call passes.
#[derive(Debug, Clone)]
pub struct PeerNameCheck {
    /// `None` when the port is plaintext.
    peers: Option<Arc<[String]>>,
}

impl PeerNameCheck {
    pub fn new(config: &Config) -> Self {
        Self { peers: config.tls.as_ref().map(|_| config.peers.iter().map(|p| p.name.clone()).collect()) }
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(peers) = &self.peers else { return Ok(()) };
        let configured = if peers.is_empty() { "none".to_owned() } else { peers.join(", ") };
        let Some(certs) = request.peer_certs() else {
            return Err(Status::permission_denied(format!(
                "no client certificate: this port serves only the configured peers ({configured})"
            )));
        };
        let presented = match certs.first().map(|der| dns_names(der)) {
            Some(Ok(names)) => names,
            Some(Err(e)) => return Err(Status::permission_denied(format!("client certificate unreadable: {e}"))),
            None => Vec::new(),
        };
        if presented.iter().any(|name| peers.iter().any(|peer| peer.eq_ignore_ascii_case(name))) {
            return Ok(());
        }
        let remote = request.remote_addr().map_or_else(|| "unknown address".to_owned(), |a| a.to_string());
        tracing::warn!(%remote, presented = %list_or_none(&presented), peers = %configured, "peer call refused: not a configured peer");
        Err(Status::permission_denied(format!(
            "client certificate names {} but this port serves only the configured peers ({configured})",
            list_or_none(&presented)
        )))
    }
}

impl tonic::service::Interceptor for PeerNameCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// The largest HTTP/2 frame a peer may send us. A 1 MiB message arrives in four:
/// on loopback a full copy took 12.7–13.3 s with 256 KiB frames (12.7–13.2 with
/// 64 KiB, 14.3–15.3 with HTTP/2's 16 KiB) against 13.9–14.6 s with 1 MiB frames,
/// and the receiver's peak RSS fell from 142–145 to 132–138 MB.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 256 << 10;
/// How much of one stream a peer may send before we read it. On loopback 4/16 MiB
/// copy as fast as 8/32 MiB did, and a receiver holds ~20 MB less while it fetches;
/// across 30 ms of round trip they still let ~500 MB/s through.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// How much of all streams of a connection a peer may send before we read it.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// The endpoint for `peer`: timeouts, keepalives, and TLS when configured.
/// Callers add their own per-call timeout (or none, for long-lived streams).
pub fn peer_endpoint(config: &Config, peer: &PeerConfig) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(peer.url.clone())
        .with_context(|| format!("peer {}: bad url {}", peer.name, peer.url))?
        .connect_timeout(config.peer_timeout)
        // Content arrives in 1 MiB messages on up to four streams at once: HTTP/2's
        // defaults (16 KiB frames, a 5 MB connection window) cut them into 64
        // frames each and stalled them on window updates; 256 KiB frames do not.
        .max_frame_size(HTTP2_MAX_FRAME_BYTES)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .tcp_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
        .tcp_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES))
        .http2_keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    match &config.tls {
        Some(tls) => endpoint
            .tls_config(tls.client_config(&peer.name))
            .with_context(|| format!("peer {}: TLS setup with tls_cert/tls_key/tls_ca failed", peer.name)),
        None => Ok(endpoint),
    }
}

/// A `Peer` client over `channel` with the message size limit.
pub fn peer_client(channel: Channel) -> PeerClient<Channel> {
    PeerClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}
