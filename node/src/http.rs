//! The HTTP API of one server (axum on hyper, optionally TLS via rustls/ring).
//!
//! # Routes
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /kv/{key}` (and `HEAD`) | `200` + the value as the raw body; `404` + `ERR_KEY` when absent; `412` + `ERR_DEP` when this replica has not caught up with the request's session token |
//! | `PUT /kv/{key}` + raw body | `200` + the previous value, or `201` (empty body) when there was none; durable on this server when answered |
//! | `DELETE /kv/{key}` | writes a tombstone (replicated like a put): `200` + the previous value, or `204` when there was none |
//! | `GET /health` (also `/health/live`) | `200 ok`: the process serves HTTP (never needs a token) |
//! | `GET /health/ready` | `200 ready` once the server has caught up after its start (a sync round with every peer it can reach, or the catch-up timeout passed); `503` + `Retry-After` before. Until then `/kv` answers `503 ERR_NOT_READY` too |
//! | `GET /members` | `200` + JSON: every server this one knows, with address, `state` (`self`, `member`, `removed`) and `link` |
//! | `PUT /members/{id}` + `ip:port` | adds server `id` at that QUIC address (or changes it): a replicated, persisted member record; every server links to it |
//! | `DELETE /members/{id}` | removes server `id`: every server cuts and refuses it, and trimming stops waiting for it |
//! | `GET /status` | `200` + JSON: [`crate::server::Status`] plus `http` (this listener's address) |
//! | `GET /metrics` | Prometheus/OpenMetrics text, see [`crate::metrics`] |
//!
//! **Keys** are the rest of the path after `/kv/`, percent-decoded into bytes (`%2F` is
//! a slash byte, `%00` a zero byte; a literal `/` is kept as a slash). Any byte may be
//! percent-encoded; a `%` not followed by two hex digits is a `400`. **Values** are
//! the raw request/response bodies, any bytes.
//!
//! # Versions and session tokens
//!
//! * Every `GET` that finds a value or a tombstone, and every `PUT` and `DELETE`,
//!   answers with `X-Meshkv-Version: <ts>.<origin>.<counter>`: the version of the value
//!   read or written (hybrid-logical-clock microseconds, origin — the incarnation of the
//!   server that accepted the write — and that incarnation's write counter). A `PUT`/`DELETE` that replaced something also carries
//!   `X-Meshkv-Previous-Version`.
//! * A request may carry `X-Meshkv-After: <ts>.<origin>.<counter>`: the last version of
//!   this key the client's session wrote or read (its causal token for the key, like
//!   Riak's vclock or Garage's causality token). The replica must have incorporated
//!   that write (or a later one) before it answers: otherwise `412 ERR_DEP`, for reads
//!   and for writes alike (a write is never applied on a replica behind the token, so
//!   the previous value it returns is never older than what the session saw). The
//!   server's clock also moves past `ts`, so a write after the token wins
//!   last-writer-wins over it. Keeping the newest token per key and sending it gives
//!   Read-Your-Writes and Monotonic-Reads across servers. A token whose write this
//!   server's watermark covers is satisfied even when the key no longer records it (a
//!   tombstone dropped once every server held it): the answer is then `404`, not
//!   `ERR_DEP` forever.
//! * `X-Meshkv-Wait-Ms: N`: instead of answering `412` at once, wait up to `N` ms
//!   (capped by the server's `max_wait_ms`, 10 s by default) for replication to catch
//!   up, then answer (or `412` when the bound passes).
//! * A malformed header value is a `400` with a one-line reason. A token's timestamp is
//!   never refused for being ahead of this server's clock: it moves the clock only
//!   within the offset bound (`meshkv_core::hlc`).
//!
//! # Errors
//!
//! Every error answer is `text/plain` with one line: `400` (bad percent-encoding, empty
//! key, bad header), `401` (missing or wrong bearer token), `404` (`ERR_KEY`, or an
//! unknown path), `405` (wrong method, with `Allow`), `408` (request headers or body
//! not received in time), `412` (`ERR_DEP`), `413` (value over `max_value`), `414` (key
//! over `max_key`), `503` (the server is shutting down). Nothing is written unless the
//! whole request was valid.
//!
//! # Security
//!
//! With [`HttpTls`] the listener speaks HTTPS only (TLS 1.2/1.3, ring); with
//! `client_ca` it also requires a client certificate chaining to that CA (normally
//! the cluster CA). With a bearer token every route but `/health` requires
//! `Authorization: Bearer <token>`. See `docs/http.md` for exposing a server safely.

use crate::metrics::{self, Metrics};
use crate::server::{Server, ServerError};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshkv_core::paxos::{Change, Cond};
use meshkv_core::{Entry, Outcome, ReadOutcome, Version};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Response header: the version read or written.
pub const VERSION_HEADER: &str = "x-meshkv-version";
/// Response header: the version a write replaced.
pub const PREVIOUS_VERSION_HEADER: &str = "x-meshkv-previous-version";
/// Request header: the session's token for the key.
pub const AFTER_HEADER: &str = "x-meshkv-after";
/// Request header: how long to wait for replication instead of answering `ERR_DEP`.
pub const WAIT_HEADER: &str = "x-meshkv-wait-ms";
/// Request header: the consistency level (`session` or `linearizable`).
pub const CONSISTENCY_HEADER: &str = "x-meshkv-consistency";
/// Response header of a `503 ERR_UNAVAILABLE`: the key's acceptors (comma-separated
/// server ids), so a client can fail over to a server that reaches a majority of them.
pub const ACCEPTORS_HEADER: &str = "x-meshkv-acceptors";
/// Request header of a `PUT`: the value expires this many seconds after the write
/// (the same as `?ttl=`).
pub const TTL_HEADER: &str = "x-meshkv-ttl";
/// The longest TTL accepted, in seconds (ten years).
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// The consistency level of a `/kv` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Read-Your-Writes and Monotonic-Reads for clients that carry the session token
    /// (`X-Meshkv-After`); served by one server, available under partitions.
    Session,
    /// Linearizable per key: every operation goes through a majority of the key's
    /// acceptors (`meshkv_core::paxos`); `503 ERR_UNAVAILABLE` without one.
    #[default]
    Linearizable,
}

impl Consistency {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Session => "session",
            Consistency::Linearizable => "linearizable",
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "session" => Ok(Consistency::Session),
            "linearizable" => Ok(Consistency::Linearizable),
            other => Err(format!(
                "unknown consistency level {other:?}: use session or linearizable"
            )),
        }
    }
}

/// Every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`, RFC 3986) is encoded.
const KEY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`).
pub fn encode_key(key: &[u8]) -> String {
    percent_encoding::percent_encode(key, KEY_ENCODE).to_string()
}

/// Strict percent-decoding: `%` must be followed by two hex digits (the
/// `percent-encoding` crate passes a malformed escape through; we refuse it).
pub fn decode_key(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    if let Some(i) = b.iter().enumerate().position(|(i, &c)| {
        c == b'%' && !(b.get(i + 1..i + 3)).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    }) {
        return Err(format!(
            "invalid percent-encoding in key at byte {i} (want %XX with two hex digits)"
        ));
    }
    Ok(percent_encoding::percent_decode(b).collect())
}

/// TLS for the HTTP listener.
#[derive(Clone)]
pub struct HttpTls {
    /// Certificate chain (PEM), leaf first.
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// When set, clients must present a certificate chaining to this CA (PEM).
    pub client_ca_pem: Option<String>,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTls")
            .field("client_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// How the HTTP listener is set up.
#[derive(Clone)]
pub struct HttpOpts {
    /// Listen address (port 0: the OS picks).
    pub listen: SocketAddr,
    /// HTTPS instead of plain HTTP.
    pub tls: Option<HttpTls>,
    /// When set, every route but `/health` needs `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Cap on `X-Meshkv-Wait-Ms`.
    pub max_wait: Duration,
    /// A request's headers (and a TLS handshake) must arrive within this.
    pub header_timeout: Duration,
    /// A request body must arrive within this after the headers.
    pub body_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// Open connections at most. When they are all open, a new connection takes the
    /// slot of one with no request in progress (shed: closed), first of the oldest
    /// one that has not sent a request yet, then of the one idle longest; only when
    /// every connection is serving a request do new ones wait in the accept backlog.
    pub max_connections: usize,
    /// Open connections per client address at most (IPv6: per /64); a connection
    /// over it is closed at once.
    pub max_connections_per_ip: usize,
    /// Largest key (bytes, decoded): `414` past it.
    pub max_key: usize,
    /// Largest value (bytes): `413` past it.
    pub max_value: usize,
    /// The level of a `/kv` request that names none and carries no session token.
    pub default_consistency: Consistency,
}

impl std::fmt::Debug for HttpOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOpts")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_wait", &self.max_wait)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_key", &self.max_key)
            .field("max_value", &self.max_value)
            .field("default_consistency", &self.default_consistency)
            .finish_non_exhaustive()
    }
}

impl HttpOpts {
    /// Plain HTTP on `listen`, no token, default limits and timeouts.
    pub fn plain(listen: SocketAddr) -> HttpOpts {
        HttpOpts {
            listen,
            tls: None,
            bearer_token: None,
            max_wait: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_ip: 256,
            max_key: 1024,
            max_value: 1 << 20,
            default_consistency: Consistency::Linearizable,
        }
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot bind HTTP listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The TLS material is unusable.
    #[error("HTTP TLS: {0}")]
    Tls(String),
}

/// A running HTTP listener.
pub struct HttpServer {
    addr: SocketAddr,
    tls: bool,
    /// Stops the accept loop ([`HttpServer::stop`]).
    stop: Arc<tokio::sync::Notify>,
}

impl HttpServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Stop accepting connections (open ones finish their current request).
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

struct App {
    server: Server,
    opts: HttpOpts,
    addr: SocketAddr,
    metrics: Metrics,
    /// Test-only (`MESHKV_TEST_MUTATION=lin-as-session`): serve linearizable requests
    /// at the session level, so that tests can show their checker catches it.
    lin_as_session: bool,
    /// The last mesh snapshot of the dashboard and when it was taken: every viewer
    /// within [`MESH_FRESH`] shares it, so peers are asked at most about twice a
    /// second however many dashboards are open.
    mesh: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<String>)>>,
}

type Shared = Arc<App>;

/// Bind the listener and serve `server` over HTTP in the background.
pub async fn start(server: Server, opts: HttpOpts) -> Result<HttpServer, HttpError> {
    let tls = opts.tls.as_ref().map(acceptor).transpose()?;
    let listener = listen(opts.listen).map_err(|source| HttpError::Bind {
        addr: opts.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: opts.listen,
        source,
    })?;
    let lin_as_session = std::env::var("MESHKV_TEST_MUTATION").is_ok_and(|m| m == "lin-as-session");
    if lin_as_session {
        tracing::warn!("MESHKV_TEST_MUTATION=lin-as-session: linearizable requests are served at the session level (a deliberately broken server for tests)");
    }
    let app = Arc::new(App {
        metrics: Metrics::new(server.clone()),
        server,
        opts,
        addr,
        lin_as_session,
        mesh: tokio::sync::Mutex::new(None),
    });
    let is_tls = tls.is_some();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let server = app.server.clone();
    server.spawn_task("http-accept", "http listener", async move {
        tokio::select! {
            _ = accept_loop(listener, app, tls) => {}
            _ = stopped.notified() => {}
        }
    });
    Ok(HttpServer {
        addr,
        tls: is_tls,
        stop,
    })
}

fn acceptor(t: &HttpTls) -> Result<tokio_rustls::TlsAcceptor, HttpError> {
    let bad = |e: String| HttpError::Tls(e);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(t.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no certificate in the certificate file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(t.key_pem.as_bytes())
        .map_err(|e| bad(format!("private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?;
    let builder = match &t.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let c = c.map_err(|e| bad(format!("client CA: {e}")))?;
                roots.add(c).map_err(|e| bad(format!("client CA: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in the client CA file".into()));
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| bad(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Accept backlog of the listener (the kernel caps it at `net.core.somaxconn`,
/// 4096 by default since Linux 5.4). `TcpListener::bind` asks for 128 only: a burst of
/// connections, a flood, outruns the accept loop of a busy server, and once the
/// backlog is full the kernel drops new SYNs, every client's alike, each costing a
/// 1 s retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind `addr` and listen with [`LISTEN_BACKLOG`] (`SO_REUSEADDR` on Unix, as
/// `TcpListener::bind` does).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
}

async fn accept_loop(listener: TcpListener, app: Shared, tls: Option<tokio_rustls::TlsAcceptor>) {
    let router = router(app.clone());
    let conns = Conns::new(
        app.opts.max_connections.max(1),
        app.opts.max_connections_per_ip.max(1),
    );
    loop {
        // Every slot busy with a request (nothing to shed): leave new connections in
        // the accept backlog until a slot frees up or a connection goes idle.
        while !conns.has_room() {
            conns.changed.notified().await;
        }
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors: make room by shedding a connection that has
                // no request in progress, then retry; anything else: back off.
                let out_of_fds =
                    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                match out_of_fds.then(|| conns.shed_one()).flatten() {
                    Some(shed) => {
                        tracing::debug!("HTTP accept: {e}; shed {shed}");
                        app.metrics.connection_dropped(shed.class.reason());
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    None => {
                        tracing::warn!("HTTP accept: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                continue;
            }
        };
        let conn = loop {
            match conns.admit(peer) {
                Admit::Open(conn, shed) => {
                    if let Some(shed) = shed {
                        tracing::debug!(
                            "HTTP: {} connections open, shed {shed} for {peer}",
                            conns.max
                        );
                        app.metrics.connection_dropped(shed.class.reason());
                    }
                    break Some(conn);
                }
                Admit::OverIpLimit => {
                    tracing::debug!(
                        "HTTP: closed a connection from {peer}: its address already holds max_connections_per_ip = {}",
                        conns.max_per_ip
                    );
                    app.metrics.connection_dropped(PER_IP_LIMIT);
                    break None;
                }
                // The last sheddable connection started a request since the check
                // above (rare): wait for room, holding this one.
                Admit::Full => conns.changed.notified().await,
            }
        };
        let Some(conn) = conn else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let app = app.clone();
        let tls = tls.clone();
        let server = app.server.clone();
        server.spawn_task("http-connection", "http listener", async move {
            app.metrics.connection(1);
            let serve = async {
                match tls {
                    None => serve_conn(tcp, router, &app, conn.clone()).await,
                    Some(acc) => {
                        match tokio::time::timeout(app.opts.header_timeout, acc.accept(tcp)).await {
                            Ok(Ok(s)) => serve_conn(s, router, &app, conn.clone()).await,
                            Ok(Err(e)) => tracing::debug!("HTTP TLS handshake: {e}"),
                            Err(_) => tracing::debug!("HTTP TLS handshake timed out"),
                        }
                    }
                }
            };
            tokio::select! {
                biased;
                // Shed to make room: dropping the connection closes the socket.
                _ = conn.shed.notified() => {}
                _ = serve => {}
            }
            app.metrics.connection(-1);
            drop(conn);
        });
    }
}

/// `reason` label of `meshkv_http_connections_dropped_total` for a connection closed
/// at once because its address already held `max_connections_per_ip`.
const PER_IP_LIMIT: &str = "per_ip_limit";

/// The connections of one listener: how many are open, in all and per client
/// address, and which of them may be shed to make room.
///
/// * A connection from an address that already holds `max_per_ip` open connections
///   is closed at once (IPv6 addresses count per /64, the block one host usually
///   gets; IPv4-mapped IPv6 addresses as IPv4).
/// * When `max` connections are open, a new one gets the slot of a connection that
///   has no request in progress, which is closed: first the oldest connection that
///   has not sent a (complete) request yet, silent or slow, then the connection idle
///   longest between requests. Only when every connection is in the middle of a
///   request do new ones wait in the accept backlog.
struct Conns {
    max: usize,
    max_per_ip: usize,
    table: std::sync::Mutex<ConnTable>,
    /// Signalled when a connection closes or becomes sheddable.
    changed: Notify,
}

#[derive(Default)]
struct ConnTable {
    next_id: u64,
    next_seq: u64,
    live: HashMap<u64, Live>,
    per_ip: HashMap<IpAddr, usize>,
    /// The connections with no request in progress, in the order they are shed.
    sheddable: BTreeMap<(Class, u64), u64>,
}

struct Live {
    ip: IpAddr,
    /// Its key in `sheddable`, when it is there.
    key: Option<(Class, u64)>,
    shed: Arc<Notify>,
}

/// Kinds of sheddable connections, in the order they are shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Has not sent a complete request yet (nothing, part of a head, or a TLS
    /// handshake in progress).
    NoRequest,
    /// Served at least one request, now waiting for the next one.
    Idle,
}

impl Class {
    /// The metric label.
    fn reason(self) -> &'static str {
        match self {
            Class::NoRequest => "shed_no_request",
            Class::Idle => "shed_idle",
        }
    }
}

/// A connection closed to make room.
struct Shed {
    class: Class,
    ip: IpAddr,
}

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.class {
            Class::NoRequest => "a connection with no request yet",
            Class::Idle => "an idle keep-alive connection",
        };
        write!(f, "{what} from {}", self.ip)
    }
}

enum Admit {
    /// Serve it (another connection was shed to make room when `Some`).
    Open(Arc<Conn>, Option<Shed>),
    /// Its address holds `max_per_ip` connections already: close it.
    OverIpLimit,
    /// `max` connections open and none to shed.
    Full,
}

/// The address a connection counts against for `max_per_ip`.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

impl Conns {
    fn new(max: usize, max_per_ip: usize) -> Arc<Conns> {
        Arc::new(Conns {
            max,
            max_per_ip,
            table: std::sync::Mutex::new(ConnTable::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a new connection can be admitted now (a free slot, or one to shed).
    fn has_room(&self) -> bool {
        let t = self.lock();
        t.live.len() < self.max || !t.sheddable.is_empty()
    }

    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Admit {
        let ip = ip_key(peer.ip());
        let mut t = self.lock();
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Admit::OverIpLimit;
        }
        let shed = if t.live.len() >= self.max {
            match shed_first(&mut t) {
                Some(s) => Some(s),
                None => return Admit::Full,
            }
        } else {
            None
        };
        let id = t.next_id;
        t.next_id += 1;
        let key = (Class::NoRequest, t.next_seq);
        t.next_seq += 1;
        let notify = Arc::new(Notify::new());
        t.live.insert(
            id,
            Live {
                ip,
                key: Some(key),
                shed: notify.clone(),
            },
        );
        t.sheddable.insert(key, id);
        *t.per_ip.entry(ip).or_insert(0) += 1;
        drop(t);
        let conn = Arc::new(Conn {
            conns: self.clone(),
            id,
            shed: notify,
            busy: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        });
        Admit::Open(conn, shed)
    }

    /// Shed the first sheddable connection, if any.
    fn shed_one(&self) -> Option<Shed> {
        shed_first(&mut self.lock())
    }
}

/// Remove the first sheddable connection from the table (its slot is free from now
/// on) and tell its task to close it.
fn shed_first(t: &mut ConnTable) -> Option<Shed> {
    let ((class, _), id) = t.sheddable.pop_first()?;
    let live = t.live.remove(&id)?;
    forget_ip(t, live.ip);
    live.shed.notify_one();
    Some(Shed { class, ip: live.ip })
}

fn forget_ip(t: &mut ConnTable, ip: IpAddr) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = t.per_ip.entry(ip) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// One admitted connection; leaves the table when dropped.
struct Conn {
    conns: Arc<Conns>,
    id: u64,
    /// Notified when the connection was shed.
    shed: Arc<Notify>,
    /// A request is being served (from the call of the service until its answer).
    busy: AtomicBool,
    /// Requests started on this connection.
    requests: AtomicU64,
}

impl Conn {
    /// A request starts: the connection is no longer sheddable. False when it has
    /// been shed already (it is about to be closed: the request must not run).
    fn begin_request(&self) -> bool {
        {
            let mut t = self.conns.lock();
            let t = &mut *t;
            let Some(live) = t.live.get_mut(&self.id) else {
                return false;
            };
            if let Some(k) = live.key.take() {
                t.sheddable.remove(&k);
            }
        }
        self.busy.store(true, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The answer went out completely and hyper waits for the next request: the
    /// connection may be shed from now on.
    fn went_idle(&self) {
        {
            let mut t = self.conns.lock();
            let t = &mut *t;
            let seq = t.next_seq;
            let Some(live) = t.live.get_mut(&self.id) else {
                return;
            };
            if live.key.is_some() {
                return;
            }
            let key = (Class::Idle, seq);
            live.key = Some(key);
            t.next_seq += 1;
            t.sheddable.insert(key, self.id);
        }
        self.conns.changed.notify_one();
    }
}

/// Ends the request of a [`Conn`] when dropped (with the answer body, once hyper has
/// taken all of it, or with the connection).
struct EndOfRequest(Arc<Conn>);

impl Drop for EndOfRequest {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Relaxed);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        {
            let mut t = self.conns.lock();
            let t = &mut *t;
            if let Some(live) = t.live.remove(&self.id) {
                if let Some(k) = live.key {
                    t.sheddable.remove(&k);
                }
                forget_ip(t, live.ip);
            }
        }
        self.conns.changed.notify_one();
    }
}

async fn serve_conn<S>(io: S, router: Router, app: &App, conn: Arc<Conn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = DeadlineIo::new(io, conn.clone(), app.opts.header_timeout);
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        // From the call until hyper has taken the whole answer body, the connection is
        // busy: no head deadline, not sheddable.
        let started = conn.begin_request();
        let end = EndOfRequest(conn.clone());
        let fut = started.then(|| hyper::service::Service::call(&svc, req));
        async move {
            let r = match fut {
                Some(fut) => fut.await?,
                None => {
                    // Shed after its head was read: run nothing; it is being closed.
                    let mut r = reason(StatusCode::SERVICE_UNAVAILABLE, "connection limit reached");
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    r
                }
            };
            Ok::<_, std::convert::Infallible>(r.map(move |body| {
                body.map_frame(move |frame| {
                    let _busy_until_dropped = &end;
                    frame
                })
            }))
        }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    // hyper's header read timeout runs from the moment it waits for a request head,
    // including the idle time between requests: it is the idle timeout. The head
    // deadline proper (from the first byte, or from the accept for the first request)
    // is `DeadlineIo`'s.
    b.timer(TokioTimer::new())
        .header_read_timeout(app.opts.idle_timeout.max(app.opts.header_timeout))
        .keep_alive(true);
    if let Err(e) = b.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!("HTTP connection: {e}");
    }
}

/// The request-head deadline, and the connection's idle state for shedding.
///
/// * A new connection must deliver its first request head within the limit from the
///   accept (TLS handshake excepted, it has its own): one that sent nothing by then
///   is closed silently, one that sent part of a head gets a `408` and is closed.
/// * Later requests: the limit runs from the request's first byte (the wait before
///   it is the idle timeout, hyper's); when it passes, `408` and close.
///
/// hyper's own header timeout closes without an answer, and on a kept-alive
/// connection it cannot tell idle time from a slow head. "Finished" = the service
/// was called (`busy`).
///
/// It also tells the connection table when the connection becomes idle (sheddable):
/// the last answer is written and flushed, no request is being served, and hyper
/// waits for bytes.
struct DeadlineIo<S> {
    inner: S,
    conn: Arc<Conn>,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
    /// Some byte was read since the last request started (or the accept).
    got_bytes: bool,
    /// Nothing written since the last successful flush.
    flushed: bool,
    /// The last read returned `Pending`.
    read_pending: bool,
    /// `conn.requests` when the connection was last reported idle.
    idle_after: u64,
    /// `conn.requests` when `timer` was last checked: the head it times is the
    /// next request's.
    timed: u64,
}

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 37\r\n\r\nrequest headers not received in time\n";

impl<S> DeadlineIo<S> {
    fn new(inner: S, conn: Arc<Conn>, limit: Duration) -> Self {
        DeadlineIo {
            inner,
            conn,
            limit,
            // The first request's head is due `limit` after the accept, whether or
            // not a byte comes.
            timer: Some(Box::pin(tokio::time::sleep(limit))),
            expired: false,
            got_bytes: false,
            flushed: true,
            read_pending: false,
            idle_after: 0,
            timed: 0,
        }
    }

    fn busy(&self) -> bool {
        self.conn.busy.load(Ordering::Relaxed)
    }

    /// Report the connection idle once per served request, when hyper waits for the
    /// next one with everything written.
    fn check_idle(&mut self) {
        if self.read_pending && self.flushed && !self.busy() {
            let n = self.conn.requests.load(Ordering::Relaxed);
            if n > self.idle_after {
                self.idle_after = n;
                self.conn.went_idle();
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for DeadlineIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.expired {
            return Poll::Ready(Ok(()));
        }
        let requests = me.conn.requests.load(Ordering::Relaxed);
        if requests != me.timed {
            // A request started since the timer was set: its head came in time.
            me.timed = requests;
            me.timer = None;
            me.got_bytes = false;
        }
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                me.read_pending = false;
                if !me.busy() && buf.filled().len() > before {
                    me.got_bytes = true;
                    if me.timer.is_none() {
                        me.timer = Some(Box::pin(tokio::time::sleep(me.limit)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                me.read_pending = true;
                if me.busy() {
                    return Poll::Pending;
                }
                me.check_idle();
                if let Some(t) = me.timer.as_mut() {
                    if std::future::Future::poll(t.as_mut(), cx).is_ready() {
                        me.expired = true;
                        me.timer = None;
                        if me.got_bytes {
                            // Best effort: a tiny write to an idle socket goes through
                            // at once.
                            let _ = Pin::new(&mut me.inner).poll_write(cx, TIMEOUT_408);
                            let _ = Pin::new(&mut me.inner).poll_flush(cx);
                        }
                        // EOF: hyper drops the half-read request (or the connection
                        // that never sent one) and closes.
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for DeadlineIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.flushed = false;
        Pin::new(&mut me.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            me.flushed = true;
            me.check_idle();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.flushed = false;
        Pin::new(&mut me.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod conn_tests {
    use super::*;

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().expect("address"), 40000)
    }

    fn open(c: &Arc<Conns>, from: &str) -> (Arc<Conn>, Option<Shed>) {
        match c.admit(peer(from)) {
            Admit::Open(conn, shed) => (conn, shed),
            Admit::OverIpLimit => panic!("{from}: over the per-address limit"),
            Admit::Full => panic!("{from}: full"),
        }
    }

    #[test]
    fn per_address_limit_counts_open_connections() {
        let c = Conns::new(10, 2);
        let a1 = open(&c, "10.0.0.1").0;
        let _a2 = open(&c, "10.0.0.1").0;
        assert!(matches!(c.admit(peer("10.0.0.1")), Admit::OverIpLimit));
        // The IPv4-mapped form is the same address.
        assert!(matches!(
            c.admit(peer("::ffff:10.0.0.1")),
            Admit::OverIpLimit
        ));
        let _b = open(&c, "10.0.0.2").0;
        drop(a1);
        let _a3 = open(&c, "10.0.0.1").0;
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let k = |s: &str| ip_key(s.parse().expect("address"));
        assert_eq!(k("2001:db8::1"), k("2001:db8::ffff:1"));
        assert_ne!(k("2001:db8::1"), k("2001:db8:0:1::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
    }

    #[test]
    fn full_listener_sheds_silent_then_idle_never_busy() {
        let c = Conns::new(3, 1);
        // idle: served one request, now waits for the next.
        let (idle, _) = open(&c, "10.0.0.1");
        assert!(idle.begin_request());
        drop(EndOfRequest(idle.clone()));
        idle.went_idle();
        // silent: newer, but has not sent a request.
        let (silent, _) = open(&c, "10.0.0.2");
        let (busy, _) = open(&c, "10.0.0.3");
        assert!(busy.begin_request());

        let (n1, shed) = open(&c, "10.0.0.4");
        assert_eq!(shed.map(|s| s.class), Some(Class::NoRequest));
        assert!(
            !silent.begin_request(),
            "the shed connection must not serve"
        );
        assert!(n1.begin_request());
        let (n2, shed) = open(&c, "10.0.0.5");
        assert_eq!(shed.map(|s| s.class), Some(Class::Idle));
        assert!(!idle.begin_request());
        assert!(n2.begin_request());

        // Every connection busy: nothing to shed, new ones wait.
        assert!(!c.has_room());
        assert!(matches!(c.admit(peer("10.0.0.6")), Admit::Full));
        drop(busy);
        assert!(c.has_room());
        let _n3 = open(&c, "10.0.0.6");
        // A shed connection leaves the per-address count at once (its task closes
        // it later: `silent` is still alive here).
        let _again = open(&c, "10.0.0.2");
    }
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/kv", any(kv))
        .route("/kv/", any(kv))
        .route("/kv/{*key}", any(kv))
        .route("/watch", any(watch))
        .route("/snapshot", any(snapshot))
        .route("/ui", any(ui_page))
        .route("/ui/", any(ui_page))
        .route("/ui/mesh", any(ui_mesh))
        .route("/ui/events", any(ui_events))
        .route("/health", any(health))
        .route("/health/live", any(health))
        .route("/health/ready", any(health_ready))
        .route("/status", any(status))
        .route("/members", any(members))
        .route("/members/{id}", any(member))
        .route("/metrics", any(metrics_route))
        .fallback(unknown)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// A one-line `text/plain` answer.
fn reason(status: StatusCode, msg: &str) -> Response {
    let mut line: String = msg.replace(['\r', '\n'], " ");
    line.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        line,
    )
        .into_response()
}

fn route_label(path: &str) -> &'static str {
    if path == "/kv" || path.starts_with("/kv/") {
        "/kv"
    } else {
        match path {
            "/health" | "/health/live" => "/health",
            "/health/ready" => "/health/ready",
            p if p == "/members" || p.starts_with("/members/") => "/members",
            "/status" => "/status",
            "/metrics" => "/metrics",
            _ => "other",
        }
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::POST => "POST",
        _ => "other",
    }
}

/// Constant-time comparison (the token must not leak through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

async fn observe(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route_label(req.uri().path());
    let method = method_label(req.method());
    let resp = match &app.opts.bearer_token {
        Some(token) if route != "/health" && route != "/health/ready" => {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
            if ok {
                next.run(req).await
            } else {
                let mut r = reason(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"meshkv\""),
                );
                r
            }
        }
        _ => next.run(req).await,
    };
    app.metrics
        .observe(route, method, resp.status().as_u16(), start.elapsed());
    resp
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = reason(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed here; allowed: {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn unknown(req: Request) -> Response {
    reason(
        StatusCode::NOT_FOUND,
        &format!(
            "unknown path {}; the routes are /kv/{{key}}, /kv?prefix=, /watch, /health, /health/ready, /status, /metrics, /members, /snapshot, /ui",
            req.uri().path()
        ),
    )
}

async fn health(req: Request) -> Response {
    match *req.method() {
        Method::GET | Method::HEAD => reason(StatusCode::OK, "ok"),
        _ => method_not_allowed("GET, HEAD"),
    }
}

/// `GET /members`: the membership as this server knows it (JSON array).
async fn members(State(app): State<Shared>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    match serde_json::to_string(&app.server.members()) {
        Ok(mut body) => {
            body.push('\n');
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(e) => reason(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode members: {e}"),
        ),
    }
}

/// `PUT /members/{id}` with the server's QUIC address (`ip:port`) as the body adds it
/// (or changes its address); `DELETE /members/{id}` removes it. Both are replicated
/// member records, durable here when answered.
async fn member(
    State(app): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return reason(
            StatusCode::BAD_REQUEST,
            &format!("server id {id:?} is not a non-negative integer"),
        );
    };
    let result = match *req.method() {
        Method::PUT => {
            let body = match axum::body::to_bytes(req.into_body(), 256).await {
                Ok(b) => b,
                Err(_) => {
                    return reason(
                        StatusCode::BAD_REQUEST,
                        "the body must be the server's QUIC address (ip:port)",
                    )
                }
            };
            let text = String::from_utf8_lossy(&body);
            let Ok(addr) = text.trim().parse::<SocketAddr>() else {
                return reason(
                    StatusCode::BAD_REQUEST,
                    &format!("{:?} is not a QUIC address (ip:port)", text.trim()),
                );
            };
            app.server.member_add(id, addr).await
        }
        Method::DELETE => app.server.member_remove(id).await,
        _ => return method_not_allowed("PUT, DELETE"),
    };
    match result {
        Ok(()) => reason(StatusCode::OK, "ok"),
        Err(e) => server_error(e),
    }
}

/// `200 ready` once the server has caught up after its start, else `503` with a
/// retry hint (the probe a load balancer or orchestrator should use).
async fn health_ready(State(app): State<Shared>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    if !app.server.is_ready() {
        not_ready()
    } else if app.server.is_disk_full() {
        reason(
            StatusCode::SERVICE_UNAVAILABLE,
            "ERR_DISK_FULL: reads are served, writes are refused until disk space returns",
        )
    } else {
        reason(StatusCode::OK, "ready")
    }
}

/// `503` while the server catches up after a start.
fn not_ready() -> Response {
    let mut r = reason(
        StatusCode::SERVICE_UNAVAILABLE,
        "ERR_NOT_READY: catching up with the peers after a start; retry shortly",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn status(State(app): State<Shared>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    let mut v = match serde_json::to_value(app.server.status()) {
        Ok(v) => v,
        Err(e) => {
            return reason(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot encode status: {e}"),
            )
        }
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("http".into(), app.addr.to_string().into());
    }
    let mut body = v.to_string();
    body.push('\n');
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn metrics_route(State(app): State<Shared>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.metrics.render(),
    )
        .into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| format!("header {name} is not visible ASCII")),
    }
}

/// The session token and wait bound of a request; `Err` is a `400` reason.
fn session_headers(h: &HeaderMap, cap: Duration) -> Result<(Option<Version>, Duration), String> {
    let after = match header_str(h, AFTER_HEADER)? {
        None => None,
        Some(s) => {
            // A token's timestamp is never refused: it moves this server's clock only
            // within the offset bound (see `meshkv_core::hlc`), so a token minted by a
            // server with a fast clock works everywhere and a forged one drags nothing.
            Some(
                s.parse::<Version>()
                    .map_err(|e| format!("header {AFTER_HEADER}: {e}"))?,
            )
        }
    };
    let wait = match header_str(h, WAIT_HEADER)? {
        None => Duration::ZERO,
        Some(s) => {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "header {WAIT_HEADER}: {s:?} is not a number of milliseconds"
                ));
            }
            // Overflow means "very long": the cap applies anyway.
            Duration::from_millis(s.parse::<u64>().unwrap_or(u64::MAX)).min(cap)
        }
    };
    Ok((after, wait))
}

fn version_value(v: &Version) -> HeaderValue {
    // Digits and dots only: always a valid header value.
    HeaderValue::from_str(&v.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0.0.0"))
}

fn server_error(e: ServerError) -> Response {
    match e {
        ServerError::Invalid(m) => reason(StatusCode::BAD_REQUEST, &m),
        ServerError::Stopped => reason(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"),
        ServerError::Unavailable(m) => reason(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("ERR_UNAVAILABLE: {m}"),
        ),
        ServerError::DiskFull(m) => reason(
            StatusCode::INSUFFICIENT_STORAGE,
            &format!("ERR_DISK_FULL: {m}"),
        ),
        other => reason(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string()),
    }
}

async fn kv(State(app): State<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    if !matches!(
        method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        return method_not_allowed("GET, HEAD, PUT, DELETE");
    }
    let path = req.uri().path();
    let raw = path
        .strip_prefix("/kv")
        .map(|r| r.strip_prefix('/').unwrap_or(r))
        .unwrap_or("");
    let max_key = app.opts.max_key;
    // Cheap bound before decoding: every decoded byte takes 1 to 3 characters.
    if raw.len() > max_key.saturating_mul(3) {
        return reason(
            StatusCode::URI_TOO_LONG,
            &format!("key longer than the {max_key}-byte limit"),
        );
    }
    let key = match decode_key(raw) {
        Ok(k) => k,
        Err(e) => return reason(StatusCode::BAD_REQUEST, &e),
    };
    if key.is_empty() {
        if matches!(method, Method::GET | Method::HEAD) {
            return list(&app, &req);
        }
        return reason(
            StatusCode::BAD_REQUEST,
            "empty key: use /kv/{key} (GET /kv?prefix=... lists keys)",
        );
    }
    if key.len() > max_key {
        return reason(
            StatusCode::URI_TOO_LONG,
            &format!(
                "key of {} bytes exceeds the {max_key}-byte limit",
                key.len()
            ),
        );
    }
    let (after, wait) = match session_headers(req.headers(), app.opts.max_wait) {
        Ok(x) => x,
        Err(e) => return reason(StatusCode::BAD_REQUEST, &e),
    };
    let (level, cond, ttl) =
        match level_and_condition(&req, &method, after, app.opts.default_consistency) {
            Ok(x) => x,
            Err(e) => return reason(StatusCode::BAD_REQUEST, &e),
        };
    let mut r = serve_kv(&app, req, key, method, (after, wait), (level, cond, ttl)).await;
    // Every answer names the level it was served at, so a client learns the default.
    r.headers_mut()
        .insert(CONSISTENCY_HEADER, HeaderValue::from_static(level.as_str()));
    r
}

/// A `/kv/{key}` request, once parsed.
async fn serve_kv(
    app: &App,
    req: Request,
    key: Vec<u8>,
    method: Method,
    (after, wait): (Option<Version>, Duration),
    (level, cond, ttl): (Consistency, Cond, Option<Duration>),
) -> Response {
    // A request willing to wait for replication also waits for the catch-up.
    if !app.server.is_ready() && !app.server.wait_ready(wait).await {
        return not_ready();
    }
    if level == Consistency::Linearizable && !(app.lin_as_session && cond == Cond::Always) {
        let change = match method {
            Method::GET | Method::HEAD => Change::Read,
            Method::DELETE => Change::Write { value: None, cond },
            _ => {
                let value = match read_body(app, req).await {
                    Ok(v) => v,
                    Err(r) => return r,
                };
                Change::Write {
                    value: Some(value),
                    cond,
                }
            }
        };
        return linearizable(app, key, change, method == Method::PUT, ttl).await;
    }
    match method {
        Method::GET | Method::HEAD => read(app, key, after, wait).await,
        Method::DELETE => write(app, key, None, after, wait, false, None).await,
        _ => {
            let value = match read_body(app, req).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            write(app, key, Some(value), after, wait, true, ttl).await
        }
    }
}

/// Entries per listing page by default, and at most.
pub const LIST_DEFAULT: usize = 1000;
/// See [`LIST_DEFAULT`].
pub const LIST_MAX: usize = 10_000;
/// Response header of a listing: the id of the last change in this server's feed
/// before the listing was read; `GET /watch?after=<it>` then misses nothing.
pub const WATCH_ID_HEADER: &str = "x-meshkv-watch-id";

/// The query of a listing (`GET /kv?...`) or a watch (`GET /watch?...`).
#[derive(Default)]
struct RangeQuery {
    prefix: Vec<u8>,
    start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    limit: Option<usize>,
    keys_only: bool,
    after: Option<String>,
}

impl RangeQuery {
    /// The half-open key range `[lo, hi)` it asks for (`hi` `None`: unbounded).
    fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let lo = match &self.start {
            Some(s) if *s > self.prefix => s.clone(),
            _ => self.prefix.clone(),
        };
        let past_prefix = prefix_end(&self.prefix);
        let hi = match (&self.end, past_prefix) {
            (Some(e), Some(p)) => Some(e.clone().min(p)),
            (Some(e), None) => Some(e.clone()),
            (None, p) => p,
        };
        (lo, hi)
    }
}

/// The first key after every key starting with `prefix` (`None`: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

/// Parse the query of a listing or watch: `known` names the parameters allowed.
fn range_query(req: &Request, known: &[&str], max_key: usize) -> Result<RangeQuery, String> {
    let mut q = RangeQuery::default();
    let mut seen = Vec::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&name) {
            return Err(format!(
                "unknown query parameter {name:?} (known: {})",
                known.join(", ")
            ));
        }
        if seen.contains(&name) {
            return Err(format!("query parameter {name:?} given twice"));
        }
        seen.push(name);
        let bytes = |what: &str| -> Result<Vec<u8>, String> {
            let b = decode_key(value).map_err(|e| format!("{what}: {e}"))?;
            if b.len() > max_key {
                return Err(format!(
                    "{what} of {} bytes exceeds the {max_key}-byte key limit",
                    b.len()
                ));
            }
            Ok(b)
        };
        match name {
            "prefix" => q.prefix = bytes("prefix")?,
            "start" => q.start = Some(bytes("start")?),
            "end" => q.end = Some(bytes("end")?),
            "limit" => {
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=LIST_MAX).contains(n))
                    .ok_or_else(|| format!("limit {value:?}: want 1 to {LIST_MAX}"))?;
                q.limit = Some(n);
            }
            "keys_only" => {
                q.keys_only = match value {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    v => return Err(format!("keys_only {v:?}: want true or false")),
                }
            }
            "consistency" if value.parse::<Consistency>()? != Consistency::Session => {
                return Err(LIST_LEVEL.into());
            }
            "after" => {
                let b = decode_key(value).map_err(|e| format!("after: {e}"))?;
                q.after =
                    Some(String::from_utf8(b).map_err(|_| "after: not UTF-8 (want an event id)")?);
            }
            _ => {}
        }
    }
    if let Some(h) = header_str(req.headers(), CONSISTENCY_HEADER)? {
        let h = h
            .trim()
            .parse::<Consistency>()
            .map_err(|e| format!("header {CONSISTENCY_HEADER}: {e}"))?;
        if h != Consistency::Session {
            return Err(LIST_LEVEL.into());
        }
    }
    Ok(q)
}

const LIST_LEVEL: &str = "listings and watches are served at the session level (a snapshot of one server's store): drop consistency=linearizable";

/// `GET /kv?prefix=P&start=A&end=B&limit=N&keys_only=true`: one page of live keys in
/// byte order, as JSON, from one snapshot of this server's store.
fn list(app: &App, req: &Request) -> Response {
    let q = match range_query(
        req,
        &[
            "prefix",
            "start",
            "end",
            "limit",
            "keys_only",
            "consistency",
        ],
        app.opts.max_key,
    ) {
        Ok(q) => q,
        Err(e) => return reason(StatusCode::BAD_REQUEST, &e),
    };
    if !app.server.is_ready() {
        return not_ready();
    }
    let limit = q.limit.unwrap_or(LIST_DEFAULT);
    let (lo, hi) = q.bounds();
    // The feed position first: a change after it may also be in the listing (seen
    // twice by a watcher starting there), never missed.
    let feed = app.server.feed();
    let watch_id = feed.id(feed.last());
    let mut rows = app.server.list(&lo, hi.as_deref(), limit + 1, q.keys_only);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = match rows.last() {
        Some((k, _, _)) if more => {
            let mut n = k.clone();
            n.push(0);
            serde_json::Value::String(encode_key(&n))
        }
        _ => serde_json::Value::Null,
    };
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(k, v, version)| {
            let mut o = serde_json::Map::new();
            o.insert("key".into(), encode_key(&k).into());
            if let Some(v) = v {
                o.insert("value".into(), encode_key(&v).into());
            }
            o.insert("version".into(), version.to_string().into());
            serde_json::Value::Object(o)
        })
        .collect();
    let body = serde_json::json!({ "items": items, "more": more, "next": next });
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(
        CONSISTENCY_HEADER,
        HeaderValue::from_static(Consistency::Session.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&watch_id) {
        h.insert(WATCH_ID_HEADER, v);
    }
    r
}

/// What a watch stream holds between events.
struct Watching {
    app: Shared,
    prefix: Vec<u8>,
    cursor: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    pending: std::collections::VecDeque<axum::response::sse::Event>,
}

fn change_event(feed: &crate::feed::Feed, c: &crate::feed::Change) -> axum::response::sse::Event {
    let mut o = serde_json::Map::new();
    o.insert("key".into(), encode_key(&c.key).into());
    if let Some(v) = &c.value {
        o.insert("value".into(), encode_key(v).into());
    }
    o.insert("version".into(), c.version.to_string().into());
    axum::response::sse::Event::default()
        .event(match (&c.value, c.expired) {
            (Some(_), _) => "put",
            (None, false) => "delete",
            (None, true) => "expire",
        })
        .id(feed.id(c.seq))
        .data(serde_json::Value::Object(o).to_string())
}

fn reset_event(feed: &crate::feed::Feed, last: u64, why: &str) -> axum::response::sse::Event {
    axum::response::sse::Event::default()
        .event("reset")
        .id(feed.id(last))
        .data(serde_json::json!({ "reason": why }).to_string())
}

/// `GET /watch?prefix=P&after=ID` (or `Last-Event-ID: ID`): Server-Sent Events, one
/// per change this server applies to a matching key (`put`, `delete`), in the order
/// it applies them, each with its id; from `after` when the feed still reaches back
/// to it, otherwise a `reset` event first (list again, then go on from its id).
async fn watch(State(app): State<Shared>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET) {
        return method_not_allowed("GET");
    }
    let q = match range_query(&req, &["prefix", "after", "consistency"], app.opts.max_key) {
        Ok(q) => q,
        Err(e) => return reason(StatusCode::BAD_REQUEST, &e),
    };
    let after = match (q.after, header_str(req.headers(), "last-event-id")) {
        (Some(a), _) => Some(a),
        (None, Ok(h)) => h.map(str::to_string),
        (None, Err(e)) => return reason(StatusCode::BAD_REQUEST, &e),
    };
    let feed = app.server.feed();
    let mut rx = feed.subscribe();
    rx.borrow_and_update();
    let mut pending = std::collections::VecDeque::new();
    let cursor = match after.as_deref().map(|a| feed.parse_id(a)) {
        None => feed.last(),
        Some(Err(e)) => return reason(StatusCode::BAD_REQUEST, &e),
        Some(Ok(Some(seq))) => seq,
        Some(Ok(None)) => {
            let last = feed.last();
            pending.push_back(reset_event(
                feed,
                last,
                "the id is from another incarnation of this server (it restarted): list again, then watch from this event's id",
            ));
            last
        }
    };
    let st = Watching {
        app: app.clone(),
        prefix: q.prefix,
        cursor,
        rx,
        pending,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(ev), st));
            }
            let feed = st.app.server.feed();
            if feed.is_closed() {
                return None;
            }
            st.rx.borrow_and_update();
            match feed.since(st.cursor, &st.prefix, 1024) {
                crate::feed::Since::Gap(last) => {
                    st.pending.push_back(reset_event(
                        feed,
                        last,
                        "changes since the id were dropped from this server's feed: list again, then watch from this event's id",
                    ));
                    st.cursor = last;
                }
                crate::feed::Since::Changes(cs, upto) => {
                    st.pending.extend(cs.iter().map(|c| change_event(feed, c)));
                    st.cursor = upto;
                    // Nothing matched up to the end of the feed: wait for more (a
                    // change recorded since `borrow_and_update` wakes this at once).
                    if st.pending.is_empty() && st.rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    });
    axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `GET /snapshot`: this server's whole store, consistent, checksummed (see
/// [`crate::snapshot`]); `meshkv snapshot save` writes it to a file.
async fn snapshot(State(app): State<Shared>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET) {
        return method_not_allowed("GET");
    }
    let server = app.server.clone();
    let built = tokio::task::spawn_blocking(move || {
        let (header, entries) = server.snapshot();
        crate::snapshot::encode(&header, &entries)
    })
    .await;
    match built {
        Ok(Ok(bytes)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => reason(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => reason(StatusCode::INTERNAL_SERVER_ERROR, &format!("snapshot: {e}")),
    }
}

/// The dashboard page, compiled into the binary (no build step, no CDN).
const UI_PAGE: &str = include_str!("ui/index.html");

/// `GET /ui`: the live dashboard of the mesh.
async fn ui_page(req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        UI_PAGE,
    )
        .into_response()
}

/// How long the dashboard waits for a peer's status.
const MESH_WAIT: Duration = Duration::from_millis(500);

/// How long one mesh snapshot serves every dashboard.
const MESH_FRESH: Duration = Duration::from_millis(400);

/// The latest mesh snapshot ([`mesh_json`]), taken anew when the last is older than
/// [`MESH_FRESH`]; viewers asking while one is taken wait for it.
async fn shared_mesh(app: &App) -> Arc<String> {
    let mut last = app.mesh.lock().await;
    if let Some((at, json)) = last.as_ref() {
        if at.elapsed() < MESH_FRESH {
            return json.clone();
        }
    }
    let json = Arc::new(mesh_json(app).await);
    app.metrics.dashboard_snapshot();
    *last = Some((tokio::time::Instant::now(), json.clone()));
    json
}

/// The mesh as this server sees it: `{"from": id, "at_ms": unix ms, "servers":
/// {"<id>": {"status": {...}} | {"error": "..."}}}` — its own `/status` document and
/// that of every peer it has a link to (asked over QUIC).
async fn mesh_json(app: &App) -> String {
    let mesh = app.server.mesh_status(MESH_WAIT).await;
    let servers: serde_json::Map<String, serde_json::Value> = mesh
        .into_iter()
        .map(|(id, r)| {
            let v = match r {
                Ok(mut st) => {
                    if id == app.server.id() {
                        if let Some(o) = st.as_object_mut() {
                            o.insert("http".into(), app.addr.to_string().into());
                        }
                    }
                    serde_json::json!({ "status": st })
                }
                Err(e) => serde_json::json!({ "error": e }),
            };
            (id.to_string(), v)
        })
        .collect();
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serde_json::json!({ "from": app.server.id(), "at_ms": at_ms, "servers": servers }).to_string()
}

/// `GET /ui/mesh`: one snapshot of the mesh (see [`mesh_json`]).
async fn ui_mesh(State(app): State<Shared>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        shared_mesh(&app).await.to_string(),
    )
        .into_response()
}

/// `GET /ui/events`: Server-Sent Events, one `mesh` event (data: [`mesh_json`]) now and
/// then every 500 ms, until the client leaves or the server stops.
async fn ui_events(State(app): State<Shared>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET) {
        return method_not_allowed("GET");
    }
    let stream = futures_util::stream::unfold((app, true), |(app, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if app.server.feed().is_closed() {
            return None;
        }
        let ev = axum::response::sse::Event::default()
            .event("mesh")
            .data(shared_mesh(&app).await.as_str());
        Some((Ok::<_, std::convert::Infallible>(ev), (app, false)))
    });
    axum::response::sse::Sse::new(stream).into_response()
}

/// A TTL in whole seconds, 1 to [`MAX_TTL_SECS`].
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let secs: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("ttl {s:?}: expected whole seconds, 1 to {MAX_TTL_SECS}"))?;
    if !(1..=MAX_TTL_SECS).contains(&secs) {
        return Err(format!("ttl {secs}: expected 1 to {MAX_TTL_SECS} seconds"));
    }
    Ok(Duration::from_secs(secs))
}

/// The level of a `/kv` request, the precondition of a write and the TTL of a put;
/// `Err` is a `400`.
fn level_and_condition(
    req: &Request,
    method: &Method,
    after: Option<Version>,
    default: Consistency,
) -> Result<(Consistency, Cond, Option<Duration>), String> {
    let mut level = None;
    let mut ttl = None;
    if let Some(q) = req.uri().query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "consistency" => level = Some(value.parse::<Consistency>()?),
                "ttl" => ttl = Some(parse_ttl(value)?),
                other => {
                    return Err(format!(
                        "unknown query parameter {other:?} (known: consistency, ttl)"
                    ))
                }
            }
        }
    }
    if let Some(h) = header_str(req.headers(), TTL_HEADER)? {
        let h = parse_ttl(h).map_err(|e| format!("header {TTL_HEADER}: {e}"))?;
        if ttl.is_some_and(|t| t != h) {
            return Err(format!(
                "header {TTL_HEADER} and the query parameter name different TTLs"
            ));
        }
        ttl = Some(h);
    }
    if ttl.is_some() && *method != Method::PUT {
        return Err("ttl applies to PUT only".into());
    }
    if let Some(h) = header_str(req.headers(), CONSISTENCY_HEADER)? {
        let h = h
            .trim()
            .parse::<Consistency>()
            .map_err(|e| format!("header {CONSISTENCY_HEADER}: {e}"))?;
        if level.is_some_and(|l| l != h) {
            return Err(format!(
                "header {CONSISTENCY_HEADER} and the query parameter name different levels"
            ));
        }
        level = Some(h);
    }
    let if_match = header_str(req.headers(), header::IF_MATCH.as_str())?;
    let if_none = header_str(req.headers(), header::IF_NONE_MATCH.as_str())?;
    let cond = match (if_match, if_none) {
        (None, None) => Cond::Always,
        (Some(_), Some(_)) => return Err("If-Match and If-None-Match together".into()),
        (Some(v), None) => {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Cond::Version(
                v.parse::<Version>()
                    .map_err(|e| format!("header If-Match: {e}"))?,
            )
        }
        (None, Some(v)) if v.trim() == "*" => Cond::Absent,
        (None, Some(v)) => {
            return Err(format!(
                "header If-None-Match: {v:?}: only * (create if absent) is supported"
            ))
        }
    };
    let conditional = cond != Cond::Always;
    if conditional && !matches!(*method, Method::PUT | Method::DELETE) {
        return Err("If-Match and If-None-Match apply to PUT and DELETE".into());
    }
    // A session token means the session level unless a level is named.
    let level = level.unwrap_or(if after.is_some() {
        Consistency::Session
    } else {
        default
    });
    if conditional && level == Consistency::Session {
        return Err("conditional writes are linearizable: drop consistency=session".into());
    }
    Ok((level, cond, ttl))
}

/// Serve a linearizable request (see `meshkv_core::paxos`).
async fn linearizable(
    app: &App,
    key: Vec<u8>,
    change: Change,
    is_put: bool,
    ttl: Option<Duration>,
) -> Response {
    let read = change == Change::Read;
    let acceptors = app.server.acceptors_of(&key);
    match app.server.linearizable_expiring(key, change, ttl).await {
        Err(ServerError::Unavailable(why)) => {
            let mut r = reason(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("ERR_UNAVAILABLE: {why}"),
            );
            let list = acceptors
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",");
            if let Ok(v) = HeaderValue::from_str(&list) {
                r.headers_mut().insert(ACCEPTORS_HEADER, v);
            }
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(e) => server_error(e),
        Ok(out) if !out.applied && !read => {
            let mut r = reason(StatusCode::PRECONDITION_FAILED, "ERR_PRECONDITION");
            if let Some(v) = out
                .current
                .as_ref()
                .filter(|e| e.value.is_some())
                .map(|e| e.version)
            {
                r.headers_mut().insert(VERSION_HEADER, version_value(&v));
            }
            r
        }
        Ok(out) if read => match out.current {
            Some(Entry {
                value: Some(value),
                version,
                ..
            }) => found(value, &version),
            other => {
                let mut r = reason(StatusCode::NOT_FOUND, "ERR_KEY");
                if let Some(e) = other {
                    r.headers_mut()
                        .insert(VERSION_HEADER, version_value(&e.version));
                }
                r
            }
        },
        Ok(out) => {
            let version = out.current.as_ref().map(|e| e.version);
            let prev_version = out.previous.as_ref().map(|p| p.version);
            write_answer(
                out.previous.and_then(|p| p.value),
                version,
                prev_version,
                is_put,
            )
        }
    }
}

/// The answer to a write: `200` + the previous value, `201` (a put) or `204` (a
/// delete) when there was none, and the version headers.
fn write_answer(
    prev_value: Option<Vec<u8>>,
    version: Option<Version>,
    prev_version: Option<Version>,
    is_put: bool,
) -> Response {
    let mut r = match prev_value {
        Some(v) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            v,
        )
            .into_response(),
        None if is_put => StatusCode::CREATED.into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    if let Some(v) = version {
        r.headers_mut().insert(VERSION_HEADER, version_value(&v));
    }
    if let Some(p) = prev_version {
        r.headers_mut()
            .insert(PREVIOUS_VERSION_HEADER, version_value(&p));
    }
    r
}

async fn read_body(app: &App, req: Request) -> Result<Vec<u8>, Response> {
    let max = app.opts.max_value;
    // An oversized body is still read (and dropped) up to this much, so that a client
    // that is still sending it gets to read our 413 instead of a reset connection.
    let drain_cap = max.saturating_mul(2).clamp(8 << 20, 64 << 20);
    let too_big = || {
        reason(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("value exceeds the {max}-byte limit"),
        )
    };
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) if n > drain_cap as u64 => return Err(too_big()),
            Some(_) => {}
            None => {
                return Err(reason(
                    StatusCode::BAD_REQUEST,
                    "Content-Length is not a number",
                ))
            }
        }
    }
    let deadline = tokio::time::Instant::now() + app.opts.body_timeout;
    let mut body = req.into_body();
    let mut value = Vec::new();
    let mut received = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(reason(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "request body not received within {} ms",
                        app.opts.body_timeout.as_millis()
                    ),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(reason(
                    StatusCode::BAD_REQUEST,
                    &format!("incomplete request body: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    received += data.len();
                    if received > drain_cap {
                        return Err(too_big());
                    }
                    if received <= max {
                        value.extend_from_slice(&data);
                    }
                }
            }
        }
    }
    if received > max {
        return Err(too_big());
    }
    Ok(value)
}

enum Waited {
    Ready(ReadOutcome),
    Dep,
}

/// Read `key` with the session check, waiting up to `wait` for replication.
async fn read_checked(
    app: &App,
    key: &[u8],
    after: Option<Version>,
    wait: Duration,
) -> Result<Waited, ServerError> {
    let deadline = tokio::time::Instant::now() + wait;
    let dep = after.map(|v| v.dot);
    let seen_ts = after.map_or(0, |v| v.ts);
    loop {
        // The session check is the core's (`Replica::read`), the same for every client.
        match app.server.get(key, dep, seen_ts)? {
            ReadOutcome::Dep => {}
            other => return Ok(Waited::Ready(other)),
        }
        if !wait_for_commit(deadline, app).await {
            return Ok(Waited::Dep);
        }
    }
}

/// Wait for the next commit (capped at 50 ms, which covers one that landed between
/// the check and the subscription); false once `deadline` has passed.
async fn wait_for_commit(deadline: tokio::time::Instant, app: &App) -> bool {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return false;
    }
    app.server
        .wait_commit((deadline - now).min(Duration::from_millis(50)))
        .await;
    true
}

/// `200` with the value read and its version.
fn found(value: Vec<u8>, version: &Version) -> Response {
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        value,
    )
        .into_response();
    r.headers_mut()
        .insert(VERSION_HEADER, version_value(version));
    r
}

fn err_dep() -> Response {
    reason(StatusCode::PRECONDITION_FAILED, "ERR_DEP")
}

async fn read(app: &App, key: Vec<u8>, after: Option<Version>, wait: Duration) -> Response {
    match read_checked(app, &key, after, wait).await {
        Err(e) => server_error(e),
        Ok(Waited::Dep) => err_dep(),
        Ok(Waited::Ready(ReadOutcome::Found { value, version })) => found(value, &version),
        Ok(Waited::Ready(ReadOutcome::Missing { version })) => {
            let mut r = reason(StatusCode::NOT_FOUND, "ERR_KEY");
            if let Some(v) = version {
                r.headers_mut().insert(VERSION_HEADER, version_value(&v));
            }
            r
        }
        Ok(Waited::Ready(ReadOutcome::Dep)) => err_dep(),
    }
}

async fn write(
    app: &App,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    after: Option<Version>,
    wait: Duration,
    is_put: bool,
    ttl: Option<Duration>,
) -> Response {
    // Never write on a replica behind the session: the previous value it would return
    // (and overwrite) could be older than what the session saw. The core checks it in
    // the same step that stamps the write (`Op::Put::dep`).
    let deadline = tokio::time::Instant::now() + wait;
    let dep = after.map(|v| v.dot);
    let seen_ts = after.map_or(0, |v| v.ts);
    let outcome = match dep {
        // Without a token nothing can refuse the write: no copy of the value.
        None => {
            app.server
                .put_expiring(key, value, seen_ts, None, ttl)
                .await
        }
        Some(_) => loop {
            match app
                .server
                .put_expiring(key.clone(), value.clone(), seen_ts, dep, ttl)
                .await
            {
                Ok(Outcome::Dep) => {
                    if !wait_for_commit(deadline, app).await {
                        return err_dep();
                    }
                }
                other => break other,
            }
        },
    };
    match outcome {
        Ok(Outcome::Put { version, previous }) => {
            let prev_version = previous.as_ref().map(|p| p.version);
            write_answer(
                previous.and_then(|p| p.value),
                Some(version),
                prev_version,
                is_put,
            )
        }
        Ok(other) => reason(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("unexpected outcome {other:?}"),
        ),
        Err(e) => server_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_reject_garbage() {
        let v = Version {
            ts: 1_700_000_000_000_000,
            dot: meshkv_core::Dot::new(2, 17),
        };
        assert_eq!(v.to_string().parse::<Version>(), Ok(v));
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "a.b.c",
            "1..3",
            "-1.2.3",
            "1.2.99999999999999999999999",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_round_trip_and_strict_decoding() {
        let k = b"a b/c%\x00\xff~".to_vec();
        assert_eq!(decode_key(&encode_key(&k)), Ok(k));
        assert_eq!(decode_key("a/b"), Ok(b"a/b".to_vec()));
        assert_eq!(decode_key("%41%62"), Ok(b"Ab".to_vec()));
        for bad in ["%", "%4", "%zz", "a%g1"] {
            assert!(decode_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
