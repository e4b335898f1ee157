//! `meshkv serve --config FILE`: a standalone server for real deployments.
//!
//! The file is TOML. Relative paths in it are relative to the file's own directory.
//! Unknown keys are errors (a typo must not silently fall back to a default).
//!
//! ```toml
//! id = 0                                # this server's id
//! data_dir = "data/node0"               # sled store (created if missing)
//! quic_listen = "127.0.0.1:7000"        # the mesh (default 127.0.0.1:7000)
//! http_listen = "127.0.0.1:8000"        # the HTTP API (default 127.0.0.1:8000)
//! max_clock_offset_ms = 500             # peer/client timestamps move the clock at most this far ahead
//! catchup_timeout_ms = 3000             # after a start, serve at the latest this long without catching up
//! replica_fsync_ms = 50                 # other servers' writes are fsynced within this (0: each batch at once)
//! replica_fsync_batches = 64            # ... or once this many batches of them wait
//!
//! [certs]                               # made by `meshkv certs init --dir DIR`
//! dir = "../../certs/out"               # ca.pem, server-<id>.pem, server-<id>.key
//! # ca = "...", cert = "...", key = "..."   (each overrides the file from `dir`)
//!
//! [[peers]]                             # every server of the cluster; own id is skipped
//! id = 1
//! addr = "127.0.0.1:7001"               # its QUIC address (host:port)
//!
//! [http]                                # all optional
//! tls = false                           # HTTPS with the server certificate (or cert/key below)
//! # cert = "...", key = "..."           # another certificate for HTTPS (e.g. a public name)
//! client_auth = "none"                  # "cert": require a client certificate from client_ca
//! # client_ca = "..."                   # default: the cluster CA
//! # bearer_token_file = "..."           # require Authorization: Bearer <file contents>
//! max_wait_ms = 10000                   # cap on X-Meshkv-Wait-Ms
//! header_timeout_ms = 10000             # request head (and TLS handshake) deadline: 408
//! body_timeout_ms = 30000               # request body deadline: 408
//! idle_timeout_ms = 60000               # idle keep-alive connections are closed
//! max_connections = 4096                # when full, idle connections are shed for new ones
//! max_connections_per_ip = 256          # per client address (IPv6: /64); more are closed
//! default_consistency = "linearizable"  # level of a /kv request with no level and no token
//! linearizable_timeout_ms = 2000        # a linearizable request's bound: then 503 ERR_UNAVAILABLE
//!
//! [limits]
//! max_key = 1024                        # bytes; 414 past it
//! max_value = 1048576                   # bytes; 413 past it
//! min_free_bytes = 67108864             # below it: writes 507 ERR_DISK_FULL, reads go on
//! ```
//!
//! Both listeners default to loopback: a server is reachable from other machines only
//! when the file says so. `meshkv serve` prints one line on stdout once it serves,
//! `meshkv serve: node 0 quic=127.0.0.1:7000 http=http://127.0.0.1:8000`, and stops
//! on SIGINT or SIGTERM.

use crate::http::{self, HttpOpts, HttpTls};
use crate::pki::{self, Identity, TlsMaterial};
use crate::server::{Server, ServerOpts};
use meshkv_core::NodeId;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A parsed config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This server's id.
    pub id: NodeId,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// QUIC listen address.
    #[serde(default = "default_quic")]
    pub quic_listen: SocketAddr,
    /// HTTP listen address.
    #[serde(default = "default_http")]
    pub http_listen: SocketAddr,
    /// How far (ms) a peer's or client's timestamp may be ahead of this clock and
    /// still move it.
    #[serde(default = "default_max_clock_offset_ms")]
    pub max_clock_offset_ms: u64,
    /// How long (ms) a started server waits to catch up with its peers before it
    /// serves anyway.
    #[serde(default = "default_catchup_timeout_ms")]
    pub catchup_timeout_ms: u64,
    /// Other servers' writes (pushes, sync rounds) are fsynced at most this long (ms)
    /// after they are written, or after 64 batches; 0 fsyncs every batch before it
    /// is visible. This server's own acknowledged writes are always fsynced first.
    #[serde(default = "default_replica_fsync_ms")]
    pub replica_fsync_ms: u64,
    /// Or as soon as this many batches of them are waiting (at least 1).
    #[serde(default = "default_replica_fsync_batches")]
    pub replica_fsync_batches: usize,
    /// Certificates.
    pub certs: Certs,
    /// The cluster's servers.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// HTTP listener settings.
    #[serde(default)]
    pub http: Http,
    /// Size limits.
    #[serde(default)]
    pub limits: Limits,
    /// Directory of the file (relative paths are resolved against it).
    #[serde(skip)]
    pub base: PathBuf,
}

/// `[certs]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certs {
    /// Directory made by `meshkv certs init`.
    pub dir: Option<PathBuf>,
    /// The cluster CA certificate.
    pub ca: Option<PathBuf>,
    /// This server's certificate.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
}

/// One `[[peers]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's id.
    pub id: NodeId,
    /// Its QUIC address, `host:port`.
    pub addr: String,
}

/// Who may use the HTTP API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Anyone who can connect (and, with a token, knows it).
    #[default]
    None,
    /// Clients must present a certificate from `client_ca` (needs `tls = true`).
    Cert,
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Serve HTTPS.
    pub tls: bool,
    /// Certificate for HTTPS (default: the server's mesh certificate).
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// Client-certificate requirement.
    pub client_auth: ClientAuth,
    /// CA for client certificates (default: the cluster CA).
    pub client_ca: Option<PathBuf>,
    /// File holding the bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// Cap on `X-Meshkv-Wait-Ms`.
    pub max_wait_ms: u64,
    /// Request head deadline.
    pub header_timeout_ms: u64,
    /// Request body deadline.
    pub body_timeout_ms: u64,
    /// Idle keep-alive deadline.
    pub idle_timeout_ms: u64,
    /// Open connections at most (when full, connections without a request in
    /// progress are shed to make room for new ones).
    pub max_connections: usize,
    /// Open connections per client address at most (IPv6: per /64).
    pub max_connections_per_ip: usize,
    /// The level of a `/kv` request that names none and carries no session token:
    /// `linearizable` (default) or `session`.
    pub default_consistency: String,
    /// How long a linearizable request may take before `503 ERR_UNAVAILABLE`.
    pub linearizable_timeout_ms: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            tls: false,
            cert: None,
            key: None,
            client_auth: ClientAuth::None,
            client_ca: None,
            bearer_token_file: None,
            max_wait_ms: 10_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 4096,
            max_connections_per_ip: 256,
            default_consistency: "linearizable".into(),
            linearizable_timeout_ms: 2000,
        }
    }
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest key in bytes.
    pub max_key: usize,
    /// Largest value in bytes.
    pub max_value: usize,
    /// Free space the data directory's file system must keep; below it writes get
    /// `507 ERR_DISK_FULL` and reads go on.
    pub min_free_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: 1024,
            max_value: 1 << 20,
            min_free_bytes: 64 << 20,
        }
    }
}

fn default_quic() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000))
}

fn default_max_clock_offset_ms() -> u64 {
    500
}

fn default_catchup_timeout_ms() -> u64 {
    3000
}

fn default_replica_fsync_batches() -> usize {
    meshkv_core::commit::SyncPolicy::default().batches
}

fn default_replica_fsync_ms() -> u64 {
    meshkv_core::commit::SyncPolicy::default().delay / 1000
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}

fn read(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// Byte offset → `line:column` (1-based).
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

impl Config {
    /// Parse `text` (from `path`, for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (l, c) = line_col(text, s.start);
                    format!(":{l}:{c}")
                })
                .unwrap_or_default();
            format!(
                "{}{at}: {}",
                path.display(),
                e.message().replace('\n', " ").trim()
            )
        })?;
        cfg.base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        cfg.check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Read and parse the file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = read(path, "config file")?;
        Config::parse(&text, path)
    }

    fn check(&self) -> Result<(), String> {
        if self.http.client_auth == ClientAuth::Cert && !self.http.tls {
            return Err("http.client_auth = \"cert\" needs http.tls = true".into());
        }
        if self.http.cert.is_some() != self.http.key.is_some() {
            return Err("http.cert and http.key go together".into());
        }
        if self.limits.max_key == 0 || self.limits.max_value == 0 {
            return Err("limits.max_key and limits.max_value must be positive".into());
        }
        let mut ids = std::collections::BTreeSet::new();
        for p in &self.peers {
            if !ids.insert(p.id) {
                return Err(format!("peer {} is listed twice", p.id));
            }
        }
        Ok(())
    }

    /// `p` resolved against the file's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Paths of the CA, the server certificate and its key.
    pub fn cert_paths(&self) -> Result<(PathBuf, PathBuf, PathBuf), String> {
        let from_dir = self
            .certs
            .dir
            .as_ref()
            .map(|d| pki::cert_paths(&self.path(d), Identity::server(self.id)));
        let pick = |explicit: &Option<PathBuf>, i: usize, what: &str| -> Result<PathBuf, String> {
            match (explicit, &from_dir) {
                (Some(p), _) => Ok(self.path(p)),
                (None, Some(d)) => Ok([&d.0, &d.1, &d.2][i].clone()),
                (None, None) => Err(format!("certs.{what} (or certs.dir) is required")),
            }
        };
        Ok((
            pick(&self.certs.ca, 0, "ca")?,
            pick(&self.certs.cert, 1, "cert")?,
            pick(&self.certs.key, 2, "key")?,
        ))
    }

    /// The mesh certificates.
    pub fn tls_material(&self) -> Result<TlsMaterial, String> {
        let (ca, cert, key) = self.cert_paths()?;
        TlsMaterial::load(&ca, &cert, &key, Identity::server(self.id)).map_err(|e| e.to_string())
    }

    /// The server's options.
    pub fn server_opts(&self, tls: TlsMaterial) -> ServerOpts {
        let mut o = ServerOpts::new(self.id, self.path(&self.data_dir), self.quic_listen, tls);
        o.max_key = self.limits.max_key;
        o.max_value = self.limits.max_value;
        o.min_free_bytes = self.limits.min_free_bytes;
        o.limits.max_clock_offset = self.max_clock_offset_ms.saturating_mul(1000);
        o.catchup_timeout = Duration::from_millis(self.catchup_timeout_ms);
        o.replica_sync = meshkv_core::commit::SyncPolicy::after_millis(
            self.replica_fsync_ms,
            self.replica_fsync_batches,
        );
        o.linearizable_timeout = Duration::from_millis(self.http.linearizable_timeout_ms.max(1));
        o
    }

    /// The HTTP listener's options (reads the token and certificate files).
    pub fn http_opts(&self, mesh: &TlsMaterial) -> Result<HttpOpts, String> {
        let h = &self.http;
        let mut o = HttpOpts::plain(self.http_listen);
        o.max_wait = Duration::from_millis(h.max_wait_ms);
        o.header_timeout = Duration::from_millis(h.header_timeout_ms.max(1));
        o.body_timeout = Duration::from_millis(h.body_timeout_ms.max(1));
        o.idle_timeout = Duration::from_millis(h.idle_timeout_ms.max(1));
        o.max_connections = h.max_connections.max(1);
        o.max_connections_per_ip = h.max_connections_per_ip.max(1);
        o.max_key = self.limits.max_key;
        o.max_value = self.limits.max_value;
        o.default_consistency = h
            .default_consistency
            .parse()
            .map_err(|e| format!("http.default_consistency: {e}"))?;
        if let Some(f) = &h.bearer_token_file {
            let f = self.path(f);
            let t = read(&f, "bearer token file")?.trim().to_string();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "bearer token file {} must hold one token of visible ASCII",
                    f.display()
                ));
            }
            o.bearer_token = Some(t);
        }
        if h.tls {
            let (cert_pem, key_pem) = match (&h.cert, &h.key) {
                (Some(c), Some(k)) => (
                    read(&self.path(c), "HTTP certificate")?,
                    read(&self.path(k), "HTTP key")?,
                ),
                _ => (mesh.cert_pem.clone(), mesh.key_pem.clone()),
            };
            let client_ca_pem = match (h.client_auth, &h.client_ca) {
                (ClientAuth::None, _) => None,
                (ClientAuth::Cert, Some(p)) => Some(read(&self.path(p), "client CA")?),
                (ClientAuth::Cert, None) => Some(mesh.ca_pem.clone()),
            };
            o.tls = Some(HttpTls {
                cert_pem,
                key_pem,
                client_ca_pem,
            });
        }
        Ok(o)
    }

    /// Warnings about an exposed, unprotected listener.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.http_listen.ip().is_loopback() {
            return w;
        }
        let h = &self.http;
        let authenticated = h.bearer_token_file.is_some() || h.client_auth == ClientAuth::Cert;
        if !authenticated {
            w.push(format!(
                "HTTP listens on {} without client certificates or a bearer token: anyone who can reach it can read and write every key",
                self.http_listen
            ));
        }
        if !h.tls {
            w.push(format!(
                "HTTP listens on {} without TLS: data (and any bearer token) travel in clear text",
                self.http_listen
            ));
        }
        w
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let mut it = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve peer address {addr:?}: {e}"))?;
    it.next()
        .ok_or_else(|| format!("peer address {addr:?} resolves to nothing"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Run `meshkv serve --config path` until SIGINT/SIGTERM.
pub async fn serve(path: &Path) -> Result<(), String> {
    let cfg = Config::load(path)?;
    for w in cfg.warnings() {
        eprintln!("meshkv serve: warning: {w}");
    }
    let tls = cfg.tls_material()?;
    let http_opts = cfg.http_opts(&tls)?;
    let mut peers = Vec::new();
    for p in cfg.peers.iter().filter(|p| p.id != cfg.id) {
        peers.push((p.id, resolve(&p.addr).await?));
    }
    let mut opts = cfg.server_opts(tls);
    opts.peers = peers;
    let server = Server::start(opts).await.map_err(|e| e.to_string())?;
    let http = match http::start(server.clone(), http_opts).await {
        Ok(h) => h,
        Err(e) => {
            server.shutdown().await;
            return Err(e.to_string());
        }
    };
    {
        use std::io::Write;
        let quic = server
            .quic_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "meshkv serve: node {} quic={quic} http={}",
            cfg.id,
            http.url()
        );
        let _ = out.flush();
    }
    shutdown_signal().await;
    eprintln!("meshkv serve: node {} stopping", cfg.id);
    http.stop();
    server.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_loopback_defaults() -> Result<(), String> {
        let c = Config::parse(
            "id = 3\ndata_dir = \"d\"\n[certs]\ndir = \"c\"\n",
            Path::new("/etc/meshkv/n3.toml"),
        )?;
        assert!(c.quic_listen.ip().is_loopback());
        assert!(c.http_listen.ip().is_loopback());
        assert_eq!(c.path(&c.data_dir), PathBuf::from("/etc/meshkv/d"));
        let (ca, cert, key) = c.cert_paths()?;
        assert_eq!(ca, PathBuf::from("/etc/meshkv/c/ca.pem"));
        assert_eq!(cert, PathBuf::from("/etc/meshkv/c/server-3.pem"));
        assert_eq!(key, PathBuf::from("/etc/meshkv/c/server-3.key"));
        assert_eq!(c.limits.max_key, 1024);
        assert!(c.warnings().is_empty());
        Ok(())
    }

    #[test]
    fn bad_configs_get_one_line_errors() {
        let p = Path::new("x.toml");
        for (text, want) in [
            ("id = 1\ndata_dir = \"d\"\n[certs]\ndir = \"c\"\ntypo = 1\n", "x.toml:"),
            ("id = \"one\"\n", "x.toml:1:"),
            (
                "id = 1\ndata_dir = \"d\"\n[certs]\ndir = \"c\"\n[http]\nclient_auth = \"cert\"\n",
                "needs http.tls",
            ),
            (
                "id = 1\ndata_dir = \"d\"\n[certs]\ndir = \"c\"\n[[peers]]\nid = 2\naddr = \"a:1\"\n[[peers]]\nid = 2\naddr = \"b:1\"\n",
                "listed twice",
            ),
        ] {
            match Config::parse(text, p) {
                Ok(_) => panic!("accepted {text:?}"),
                Err(e) => {
                    assert!(e.contains(want), "{e:?} lacks {want:?}");
                    assert!(!e.contains('\n'), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn exposed_listener_warns() -> Result<(), String> {
        let c = Config::parse(
            "id = 0\ndata_dir = \"d\"\nhttp_listen = \"0.0.0.0:8000\"\n[certs]\ndir = \"c\"\n",
            Path::new("n.toml"),
        )?;
        assert_eq!(c.warnings().len(), 2);
        let c = Config::parse(
            "id = 0\ndata_dir = \"d\"\nhttp_listen = \"10.1.2.3:8000\"\n[certs]\ndir = \"c\"\n[http]\ntls = true\nclient_auth = \"cert\"\n",
            Path::new("n.toml"),
        )?;
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        Ok(())
    }
}
