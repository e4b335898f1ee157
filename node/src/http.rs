//! The HTTP API of one server (axum on hyper, optionally TLS via rustls/ring).
//!
//! # Routes
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /kv/{key}` (and `HEAD`) | `200` + the value as the raw body; `404` + `ERR_KEY` when absent; `412` + `ERR_DEP` when this replica has not caught up with the request's session token |
//! | `PUT /kv/{key}` + raw body | `200` + the previous value, or `201` (empty body) when there was none; durable on this server when answered |
//! | `DELETE /kv/{key}` | writes a tombstone (replicated like a put): `200` + the previous value, or `204` when there was none |
//! | `GET /health` | `200 ok` (never needs a token) |
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
//!   read or written (hybrid-logical-clock microseconds, origin server, that server's
//!   write counter). A `PUT`/`DELETE` that replaced something also carries
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
//! * A malformed header value is a `400` with a one-line reason, and so is a token
//!   whose timestamp is more than 60 s ahead of the server's clock.
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
use meshkv_core::{Dot, Outcome, ReadOutcome, Version};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Response header: the version read or written.
pub const VERSION_HEADER: &str = "x-meshkv-version";
/// Response header: the version a write replaced.
pub const PREVIOUS_VERSION_HEADER: &str = "x-meshkv-previous-version";
/// Request header: the session's token for the key.
pub const AFTER_HEADER: &str = "x-meshkv-after";
/// Request header: how long to wait for replication instead of answering `ERR_DEP`.
pub const WAIT_HEADER: &str = "x-meshkv-wait-ms";

/// A token whose timestamp is further ahead of this server's wall clock is a `400`.
pub const MAX_TOKEN_AHEAD_MICROS: u64 = 60_000_000;

/// `<ts>.<origin>.<counter>`.
pub fn format_version(v: &Version) -> String {
    format!("{}.{}.{}", v.ts, v.dot.origin, v.dot.counter)
}

/// Parse `<ts>.<origin>.<counter>` (three decimal u64).
pub fn parse_version(s: &str) -> Result<Version, String> {
    let mut it = s.trim().split('.');
    let mut next = |what: &str| -> Result<u64, String> {
        let p = it.next().ok_or_else(|| {
            format!("version {s:?} lacks the {what} (want <ts>.<origin>.<counter>)")
        })?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "version {s:?}: {what} is not a decimal number (want <ts>.<origin>.<counter>)"
            ));
        }
        p.parse::<u64>()
            .map_err(|_| format!("version {s:?}: {what} out of range"))
    };
    let ts = next("timestamp")?;
    let origin = next("origin")?;
    let counter = next("counter")?;
    if it.next().is_some() {
        return Err(format!(
            "version {s:?} has too many parts (want <ts>.<origin>.<counter>)"
        ));
    }
    Ok(Version {
        ts,
        dot: Dot { origin, counter },
    })
}

/// Percent-encode every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`).
pub fn encode_key(key: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(key.len() * 3);
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push('%');
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
    }
    s
}

/// Strict percent-decoding: `%` must be followed by two hex digits.
pub fn decode_key(s: &str) -> Result<Vec<u8>, String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => {
                    return Err(format!(
                        "invalid percent-encoding in key at byte {i} (want %XX with two hex digits)"
                    ))
                }
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
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
    /// Open connections at most (more wait in the accept backlog).
    pub max_connections: usize,
    /// Largest key (bytes, decoded): `414` past it.
    pub max_key: usize,
    /// Largest value (bytes): `413` past it.
    pub max_value: usize,
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
            .field("max_key", &self.max_key)
            .field("max_value", &self.max_value)
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
            max_key: 1024,
            max_value: 1 << 20,
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
    task: tokio::task::JoinHandle<()>,
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
        self.task.abort();
    }
}

struct App {
    server: Server,
    opts: HttpOpts,
    addr: SocketAddr,
    metrics: Metrics,
}

type Shared = Arc<App>;

/// Bind the listener and serve `server` over HTTP in the background.
pub async fn start(server: Server, opts: HttpOpts) -> Result<HttpServer, HttpError> {
    let tls = opts.tls.as_ref().map(acceptor).transpose()?;
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| HttpError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: opts.listen,
        source,
    })?;
    let app = Arc::new(App {
        metrics: Metrics::new(server.clone()),
        server,
        opts,
        addr,
    });
    let is_tls = tls.is_some();
    let task = tokio::spawn(accept_loop(listener, app, tls));
    Ok(HttpServer {
        addr,
        tls: is_tls,
        task,
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

async fn accept_loop(listener: TcpListener, app: Shared, tls: Option<tokio_rustls::TlsAcceptor>) {
    let router = router(app.clone());
    let slots = Arc::new(Semaphore::new(app.opts.max_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            app.metrics.connection(1);
            match tls {
                None => serve_conn(tcp, router, &app).await,
                Some(acc) => {
                    match tokio::time::timeout(app.opts.header_timeout, acc.accept(tcp)).await {
                        Ok(Ok(s)) => serve_conn(s, router, &app).await,
                        Ok(Err(e)) => tracing::debug!("HTTP TLS handshake: {e}"),
                        Err(_) => tracing::debug!("HTTP TLS handshake timed out"),
                    }
                }
            }
            app.metrics.connection(-1);
            drop(permit);
        });
    }
}

async fn serve_conn<S>(io: S, router: Router, app: &App)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let busy = Arc::new(AtomicBool::new(false));
    let io = DeadlineIo::new(io, busy.clone(), app.opts.header_timeout);
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        busy.store(true, Ordering::Relaxed);
        let fut = hyper::service::Service::call(&svc, req);
        let busy = busy.clone();
        async move {
            let r = fut.await;
            busy.store(false, Ordering::Relaxed);
            r
        }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(app.opts.idle_timeout.max(app.opts.header_timeout))
        .keep_alive(true);
    if let Err(e) = b.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!("HTTP connection: {e}");
    }
}

/// Sends `408` and closes a connection whose request head started arriving but did
/// not finish within the limit (hyper's own header timeout closes without an answer).
/// "Started" = bytes were read while no request was being served; "finished" = the
/// service was called (`busy`).
struct DeadlineIo<S> {
    inner: S,
    busy: Arc<AtomicBool>,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
}

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 37\r\n\r\nrequest headers not received in time\n";

impl<S> DeadlineIo<S> {
    fn new(inner: S, busy: Arc<AtomicBool>, limit: Duration) -> Self {
        DeadlineIo {
            inner,
            busy,
            limit,
            timer: None,
            expired: false,
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
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if me.busy.load(Ordering::Relaxed) {
                    me.timer = None;
                } else if buf.filled().len() > before && me.timer.is_none() {
                    me.timer = Some(Box::pin(tokio::time::sleep(me.limit)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if me.busy.load(Ordering::Relaxed) {
                    me.timer = None;
                    return Poll::Pending;
                }
                if let Some(t) = me.timer.as_mut() {
                    if std::future::Future::poll(t.as_mut(), cx).is_ready() {
                        me.expired = true;
                        me.timer = None;
                        // Best effort: a tiny write to an idle socket goes through at once.
                        let _ = Pin::new(&mut me.inner).poll_write(cx, TIMEOUT_408);
                        let _ = Pin::new(&mut me.inner).poll_flush(cx);
                        // EOF: hyper drops the half-read request and closes.
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
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/kv", any(kv))
        .route("/kv/", any(kv))
        .route("/kv/{*key}", any(kv))
        .route("/health", any(health))
        .route("/status", any(status))
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
            "/health" => "/health",
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
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn observe(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route_label(req.uri().path());
    let method = method_label(req.method());
    let resp = match &app.opts.bearer_token {
        Some(token) if route != "/health" => {
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
            "unknown path {}; the routes are /kv/{{key}}, /health, /status, /metrics",
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
            let v = parse_version(s).map_err(|e| format!("header {AFTER_HEADER}: {e}"))?;
            // The server's clock moves past a token: a forged far-future one must not
            // drag it (and every later write's timestamp) along.
            let limit = meshkv_core::hlc::wall_micros().saturating_add(MAX_TOKEN_AHEAD_MICROS);
            if v.ts > limit {
                return Err(format!(
                    "header {AFTER_HEADER}: timestamp {} is more than {} s ahead of this server's clock",
                    v.ts,
                    MAX_TOKEN_AHEAD_MICROS / 1_000_000
                ));
            }
            Some(v)
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
    HeaderValue::from_str(&format_version(v)).unwrap_or_else(|_| HeaderValue::from_static("0.0.0"))
}

fn server_error(e: ServerError) -> Response {
    match e {
        ServerError::Invalid(m) => reason(StatusCode::BAD_REQUEST, &m),
        ServerError::Stopped => reason(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"),
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
        return reason(StatusCode::BAD_REQUEST, "empty key: use /kv/{key}");
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
    match method {
        Method::GET | Method::HEAD => read(&app, key, after, wait).await,
        Method::DELETE => write(&app, key, None, after, wait, false).await,
        _ => {
            let value = match read_body(&app, req).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            write(&app, key, Some(value), after, wait, true).await
        }
    }
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
        match app.server.get(key, dep, seen_ts)? {
            ReadOutcome::Dep => {}
            other => return Ok(Waited::Ready(other)),
        }
        // The key's context does not cover the token. If this server's watermark does,
        // it has incorporated that write and the key's record of it was dropped since
        // (a tombstone trimmed once every server held it): the current state is at
        // least as new as the token.
        if let Some(d) = dep {
            if app.server.digest().2.covers(d) {
                return Ok(Waited::Ready(app.server.get(key, None, seen_ts)?));
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Waited::Dep);
        }
        // Re-check at every commit; the short cap covers a commit that landed between
        // the check and the subscription.
        app.server
            .wait_commit((deadline - now).min(Duration::from_millis(50)))
            .await;
    }
}

fn err_dep() -> Response {
    reason(StatusCode::PRECONDITION_FAILED, "ERR_DEP")
}

async fn read(app: &App, key: Vec<u8>, after: Option<Version>, wait: Duration) -> Response {
    match read_checked(app, &key, after, wait).await {
        Err(e) => server_error(e),
        Ok(Waited::Dep) => err_dep(),
        Ok(Waited::Ready(ReadOutcome::Found { value, version })) => {
            let mut r = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/octet-stream")],
                value,
            )
                .into_response();
            r.headers_mut()
                .insert(VERSION_HEADER, version_value(&version));
            r
        }
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
) -> Response {
    if after.is_some() {
        // Never write on a replica behind the session: the previous value it would
        // return (and overwrite) could be older than what the session saw.
        match read_checked(app, &key, after, wait).await {
            Err(e) => return server_error(e),
            Ok(Waited::Dep) | Ok(Waited::Ready(ReadOutcome::Dep)) => return err_dep(),
            Ok(Waited::Ready(_)) => {}
        }
    }
    let seen_ts = after.map_or(0, |v| v.ts);
    match app.server.put(key, value, seen_ts).await {
        Ok(Outcome::Put { version, previous }) => {
            let prev_version = previous.as_ref().map(|p| p.version);
            let prev_value = previous.and_then(|p| p.value);
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
            r.headers_mut()
                .insert(VERSION_HEADER, version_value(&version));
            if let Some(p) = prev_version {
                r.headers_mut()
                    .insert(PREVIOUS_VERSION_HEADER, version_value(&p));
            }
            r
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
            dot: Dot::new(2, 17),
        };
        assert_eq!(parse_version(&format_version(&v)), Ok(v));
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "a.b.c",
            "1..3",
            "-1.2.3",
            "1.2.99999999999999999999999",
        ] {
            assert!(parse_version(bad).is_err(), "{bad:?}");
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
