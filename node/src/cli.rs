//! The command-line client (`meshkv get|put|del|status`) and the small HTTP client
//! it is built on (also used by the tests and the load generator).
//!
//! ```text
//! meshkv get KEY [--raw]             print the value (exit 1 when not found)
//! meshkv put KEY [VALUE] [--prev]    write VALUE (or stdin); --prev prints the old value
//!            [--if-version V | --if-absent]   compare-and-set (exit 7 when it fails)
//! meshkv del KEY [--prev] [--if-version V]    delete (a replicated tombstone)
//! meshkv status [--json]             one line (or JSON) per endpoint
//! common: --endpoints URL,URL,...    tried in order (default $MESHKV_ENDPOINTS or http://127.0.0.1:8000)
//!         --session FILE             keep causal tokens between invocations
//!         --consistency LEVEL        session or linearizable (default: the server's)
//!         --wait-ms N                let a lagging replica wait N ms (default 1000)
//!         --timeout-ms N             per endpoint attempt (default 5000)
//!         --cacert FILE              trust for https:// endpoints (the cluster CA)
//!         --client-cert FILE --client-key FILE   client certificate
//!         -o text|json|table         output format
//!         --token-file FILE          bearer token (or $MESHKV_TOKEN)
//! ```
//!
//! # Failover
//! Endpoints are tried in the order given. One that cannot be reached (connect
//! error, TLS error, timeout, `503`) or that answers `412 ERR_DEP` (it has not caught
//! up with the session) is skipped for the next. When every endpoint answered and at
//! least one said `503 ERR_NOT_READY` (catching up after a start), the round is tried
//! again every 100 ms for up to 10 s. A request that broke after it was
//! sent may have been applied: a retried `put` is then applied twice (same value).
//!
//! # Exit codes (see [`exit`])
//! `0` done · `1` key not found · `2` usage error · `3` `ERR_DEP`: no endpoint has
//! caught up with the session's token · `4` no endpoint reachable · `5` refused by the
//! server (`4xx`/`5xx`, e.g. `401`, `413`) · `6` local error (session file, certificate
//! files, stdin) · `7` `ERR_PRECONDITION`: a compare-and-set's condition did not hold.
//! Errors are one line on stderr, starting with `meshkv: `.
//!
//! # Session file
//! With `--session FILE` the client keeps, per key, the last version it wrote or read
//! (JSON: `{"meshkv_session":1,"keys":{"<percent-encoded key>":"<ts>.<origin>.<counter>"}}`),
//! sends it as `X-Meshkv-After` and stores the `X-Meshkv-Version` of each answer, so a
//! shell user gets Read-Your-Writes and Monotonic-Reads across commands. The file is
//! replaced atomically; two commands running at the same time on one file may lose
//! one of their updates (the guarantee then covers the one kept).

use crate::http::{
    decode_key, encode_key, AFTER_HEADER, CONSISTENCY_HEADER, PREVIOUS_VERSION_HEADER,
    VERSION_HEADER, WAIT_HEADER,
};
use crate::pki::{self, Role};
use backon::Retryable;
pub use bytes::Bytes;
use meshkv_core::{Session, Version};
pub use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
pub use reqwest::Method;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Exit codes of the CLI.
pub mod exit {
    /// Done (found, written, deleted, every endpoint answered status).
    pub const OK: u8 = 0;
    /// `get`: the key has no value.
    pub const NOT_FOUND: u8 = 1;
    /// Bad command line (clap).
    pub const USAGE: u8 = 2;
    /// `ERR_DEP`: no endpoint has caught up with the session's token.
    pub const DEP: u8 = 3;
    /// No endpoint could be reached (for `status`: some endpoint).
    pub const UNREACHABLE: u8 = 4;
    /// The server refused the request (`4xx`/`5xx` other than 404 and 412).
    pub const REFUSED: u8 = 5;
    /// A local problem: session file, certificate files, stdin.
    pub const LOCAL: u8 = 6;
    /// `ERR_PRECONDITION`: `--if-version` / `--if-absent` did not hold.
    pub const PRECONDITION: u8 = 7;
    /// `status`: every endpoint answered, but a server is not ready or its disk is
    /// full, a link is not up, or the digests differ (`--check` says which).
    pub const UNHEALTHY: u8 = 8;
}

/// A server's HTTP endpoint: `http://host:port` or `https://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTPS.
    pub https: bool,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// Parse `http://h:p`, `https://h:p` or `h:p` (plain HTTP); a trailing `/` is fine.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let t = s.trim();
        let full = if t.contains("://") {
            t.to_string()
        } else {
            format!("http://{t}")
        };
        let u = reqwest::Url::parse(&full).map_err(|e| format!("endpoint {s:?}: {e}"))?;
        let https = match u.scheme() {
            "http" => false,
            "https" => true,
            _ => {
                return Err(format!(
                    "endpoint {s:?}: only http:// and https:// are supported"
                ))
            }
        };
        if !matches!(u.path(), "" | "/")
            || u.query().is_some()
            || u.fragment().is_some()
            || !u.username().is_empty()
        {
            return Err(format!("endpoint {s:?}: give only scheme, host and port"));
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("endpoint {s:?}: empty host"))?;
        // A port is required; the URL parser hides one equal to the scheme's default.
        let authority = full
            .split_once("://")
            .map_or("", |(_, r)| r.split('/').next().unwrap_or(""));
        let explicit = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let port = u
            .port()
            .or(u.port_or_known_default().filter(|_| explicit))
            .ok_or_else(|| format!("endpoint {s:?}: want host:port"))?;
        Ok(Endpoint {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }

    /// `host:port` (brackets around IPv6).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The endpoint as a URL.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority()
        )
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection (refused, TLS refused, timed out): nothing was sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke or timed out after the request was (maybe) sent.
    #[error("no answer: {0}")]
    Io(String),
    /// The request could not be built (bad header value).
    #[error("bad request: {0}")]
    Build(String),
}

/// An HTTP answer, body read in full.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Meshkv-Version` header, parsed.
    pub fn version(&self) -> Option<Version> {
        self.header(VERSION_HEADER)
            .and_then(|v| v.parse::<Version>().ok())
    }

    /// The body's first line, for messages.
    pub fn line(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

/// Accepts a server certificate that chains to the trusted CA and is valid either for
/// the endpoint's host name or, failing that, for the meshkv server identity it
/// carries (`server-N.meshkv`): a cluster's servers are trusted as a group.
#[derive(Debug)]
struct ClusterVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                let refuse =
                    || rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
                let who = pki::identity_of_cert(end_entity.as_ref()).map_err(|_| refuse())?;
                if who.role != Role::Server {
                    return Err(refuse());
                }
                let name = ServerName::try_from(who.dns_name()).map_err(|_| refuse())?;
                self.inner
                    .verify_server_cert(end_entity, intermediates, &name, ocsp, now)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn read_file(p: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
}

/// A TLS client configuration (ring) trusting only the CA in `cacert`, presenting
/// `cert`/`key` when given.
pub fn tls_config(
    cacert: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read_file(cacert, "CA certificate")?) {
        let c = c.map_err(|e| format!("CA certificate {}: {e}", cacert.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("CA certificate {}: {e}", cacert.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in {}", cacert.display()));
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("CA certificate {}: {e}", cacert.display()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterVerifier { inner }));
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read_file(cert, "client certificate")?)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
            let key_der = PrivateKeyDer::from_pem_slice(&read_file(key, "client key")?)
                .map_err(|e| format!("client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The HTTP client of the CLI and the tests: `reqwest` (HTTP/1.1, kept-alive pooled
/// connections), plain or TLS through rustls on the ring provider only (the
/// `rustls-tls-manual-roots` feature: no aws-lc-rs, no system roots), no proxies, no
/// redirects.
#[derive(Clone)]
pub struct HttpClient {
    /// The pooled client, or why it could not be built (reported by every call).
    client: Result<reqwest::Client, String>,
    tls: Option<rustls::ClientConfig>,
    token: Option<String>,
    timeout: Duration,
}

/// The full chain of an error's causes, on one line.
fn causes(e: &dyn std::error::Error) -> String {
    let mut why = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !why.contains(&s_text) {
            why = format!("{why}: {s_text}");
        }
        src = s.source();
    }
    why
}

fn call_error(e: reqwest::Error) -> CallError {
    let why = causes(&e);
    if e.is_builder() || e.is_request() && why.contains("header") {
        CallError::Build(why)
    } else if e.is_connect() {
        CallError::Connect(why)
    } else {
        CallError::Io(why)
    }
}

fn build_client(
    tls: Option<&rustls::ClientConfig>,
    token: Option<&str>,
    timeout: Duration,
    pool: usize,
) -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| "the bearer token is not a valid header value".to_string())?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let mut b = reqwest::Client::builder();
    // Without a CA, https endpoints are refused before any request (no roots here).
    if let Some(c) = tls {
        b = b.use_preconfigured_tls(c.clone());
    }
    b.http1_only()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(pool)
        .default_headers(headers)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", causes(&e)))
}

impl HttpClient {
    /// A client; `tls` is needed for `https://` endpoints, `token` is sent as a bearer
    /// token, `timeout` bounds connecting and each request.
    pub fn new(
        tls: Option<rustls::ClientConfig>,
        token: Option<String>,
        timeout: Duration,
    ) -> Self {
        HttpClient {
            client: build_client(tls.as_ref(), token.as_deref(), timeout, usize::MAX),
            tls,
            token,
            timeout,
        }
    }

    /// A connection of its own to `ep` (a client whose pool holds one kept-alive
    /// connection; it reconnects by itself when the server closed it).
    pub async fn connect(&self, ep: &Endpoint) -> Result<Conn, CallError> {
        if ep.https && self.tls.is_none() {
            return Err(CallError::Connect(
                "https endpoint but no CA certificate (--cacert)".into(),
            ));
        }
        let client = build_client(self.tls.as_ref(), self.token.as_deref(), self.timeout, 1)
            .map_err(CallError::Build)?;
        Ok(Conn {
            client,
            base: ep.url(),
        })
    }

    /// One request, on a pooled connection.
    pub async fn call(
        &self,
        ep: &Endpoint,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Reply, CallError> {
        if ep.https && self.tls.is_none() {
            return Err(CallError::Connect(
                "https endpoint but no CA certificate (--cacert)".into(),
            ));
        }
        let client = self
            .client
            .as_ref()
            .map_err(|e| CallError::Build(e.clone()))?;
        let resp = request(client, &ep.url(), method, path, headers, body).await?;
        reply(resp).await
    }
}

fn request(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> impl std::future::Future<Output = Result<reqwest::Response, CallError>> {
    let mut b = client.request(method, format!("{base}{path}"));
    let mut bad = None;
    for (k, v) in headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(name), Ok(value)) => b = b.header(name, value),
            (Err(e), _) => bad = Some(format!("header {k:?}: {e}")),
            (_, Err(e)) => bad = Some(format!("header {k:?}: {e}")),
        }
    }
    if !body.is_empty() {
        b = b.body(body);
    }
    async move {
        if let Some(why) = bad {
            return Err(CallError::Build(why));
        }
        b.send().await.map_err(call_error)
    }
}

async fn reply(resp: reqwest::Response) -> Result<Reply, CallError> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(call_error)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A connection of its own to one server (see [`HttpClient::connect`]).
pub struct Conn {
    client: reqwest::Client,
    base: String,
}

impl Conn {
    /// Always false: a closed connection is reopened by the next request.
    pub fn is_closed(&self) -> bool {
        false
    }

    /// Send one request and read the whole answer (bounded by the client's timeout).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Reply, CallError> {
        let resp = request(&self.client, &self.base, method, path, headers, body).await?;
        reply(resp).await
    }

    /// Send one request and return the answer with its body still streaming (read it
    /// with `chunk()`); the client's timeout bounds the head only.
    pub async fn stream(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<reqwest::Response, CallError> {
        // A stream outlives any request timeout: a client of its own without one.
        let mut b = self.client.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        b.timeout(Duration::from_secs(365 * 24 * 3600))
            .send()
            .await
            .map_err(call_error)
    }
}

/// The causal tokens of a CLI session, kept in a file between invocations: a
/// [`Session`] (the one session model) and its file format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFile {
    session: Session,
}

/// The file's JSON: `{"meshkv_session":1,"keys":{"<percent-encoded key>":"<token>"}}`.
#[derive(Serialize, Deserialize)]
struct SessionFormat {
    /// Format version (1).
    #[serde(default = "one")]
    meshkv_session: u32,
    /// Percent-encoded key → token ([`Version`]'s text form).
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl SessionFile {
    /// Read `path`; a missing file is an empty session.
    pub fn load(path: &Path) -> Result<SessionFile, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SessionFile::new()),
            Err(e) => return Err(format!("cannot read session file {}: {e}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(SessionFile::new());
        }
        let f: SessionFormat = serde_json::from_str(&text).map_err(|e| {
            format!(
                "session file {} is not a meshkv session: {e}",
                path.display()
            )
        })?;
        if f.meshkv_session != 1 {
            return Err(format!(
                "session file {} has format {}, this meshkv reads 1",
                path.display(),
                f.meshkv_session
            ));
        }
        let mut session = Session::new();
        for (k, v) in &f.keys {
            let key = decode_key(k).map_err(|e| format!("session file {}: {e}", path.display()))?;
            let version: Version = v
                .parse()
                .map_err(|e| format!("session file {}: {e}", path.display()))?;
            session.wrote(&key, version);
        }
        Ok(SessionFile { session })
    }

    /// An empty session.
    pub fn new() -> SessionFile {
        SessionFile::default()
    }

    /// Write `path` atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let f = SessionFormat {
            meshkv_session: 1,
            keys: self
                .session
                .tokens()
                .map(|(k, v)| (encode_key(k), v.to_string()))
                .collect(),
        };
        let text = serde_json::to_string_pretty(&f).map_err(|e| e.to_string())?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        res.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write session file {}: {e}", path.display())
        })
    }

    /// The token for `key`.
    pub fn token(&self, key: &[u8]) -> Option<Version> {
        self.session.token(key)
    }

    /// Remember `version` for `key`.
    pub fn set(&mut self, key: &[u8], version: Version) {
        self.session.wrote(key, version);
    }
}

/// Options shared by the client commands.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// Server HTTP endpoints, comma-separated, tried in order
    /// [default: $MESHKV_ENDPOINTS or http://127.0.0.1:8000].
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Keep causal tokens in this file (Read-Your-Writes and Monotonic-Reads across commands).
    #[arg(long)]
    pub session: Option<PathBuf>,
    /// Consistency level: session or linearizable [default: the server's, which is
    /// linearizable as shipped, or session with --session tokens].
    #[arg(long, value_parser = ["session", "linearizable"])]
    pub consistency: Option<String>,
    /// How long a lagging replica may wait for replication before ERR_DEP, in ms.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
    /// Time limit per endpoint attempt, in ms (the wait comes on top).
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// CA certificate to trust for https:// endpoints (the cluster CA).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    #[arg(long = "client-cert", id = "client_cert", requires = "client_key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) of --client-cert.
    #[arg(long = "client-key", id = "client_key", requires = "client_cert")]
    pub key: Option<PathBuf>,
    /// Output format: text, json (one object per line) or table.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: Output,
    /// File holding the bearer token [default: $MESHKV_TOKEN].
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

struct Ctx {
    client: HttpClient,
    endpoints: Vec<Endpoint>,
    wait_ms: u64,
    session: Option<(PathBuf, SessionFile)>,
    consistency: Option<String>,
}

/// A failure with its exit code.
struct Fail(u8, String);

impl ClientArgs {
    fn ctx(&self) -> Result<Ctx, Fail> {
        let usage = |e: String| Fail(exit::USAGE, e);
        let local = |e: String| Fail(exit::LOCAL, e);
        let list: Vec<String> = if self.endpoints.is_empty() {
            match std::env::var("MESHKV_ENDPOINTS") {
                Ok(v) if !v.trim().is_empty() => v.split(',').map(str::to_string).collect(),
                _ => vec!["http://127.0.0.1:8000".into()],
            }
        } else {
            self.endpoints.clone()
        };
        let endpoints = list
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| Endpoint::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(usage)?;
        if endpoints.is_empty() {
            return Err(usage("no endpoint given".into()));
        }
        if self.cacert.is_none() {
            if let Some(e) = endpoints.iter().find(|e| e.https) {
                return Err(usage(format!(
                    "{e} is https: give the CA to trust with --cacert"
                )));
            }
        }
        let tls = match &self.cacert {
            Some(ca) => {
                Some(tls_config(ca, self.cert.as_deref().zip(self.key.as_deref())).map_err(local)?)
            }
            None if self.cert.is_some() => {
                return Err(usage(
                    "--client-cert needs --cacert (client certificates are for https)".into(),
                ))
            }
            None => None,
        };
        let token = match &self.token_file {
            Some(f) => {
                let t = String::from_utf8(read_file(f, "token file").map_err(local)?)
                    .map_err(|_| local(format!("token file {} is not text", f.display())))?;
                Some(t.trim().to_string())
            }
            None => std::env::var("MESHKV_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        let session = match &self.session {
            Some(p) => Some((p.clone(), SessionFile::load(p).map_err(local)?)),
            None => None,
        };
        let timeout = Duration::from_millis(self.timeout_ms.max(1) + self.wait_ms);
        Ok(Ctx {
            client: HttpClient::new(tls, token, timeout),
            endpoints,
            wait_ms: self.wait_ms,
            session,
            consistency: self.consistency.clone(),
        })
    }
}

enum Answer {
    Reply(Endpoint, Reply),
    Dep(Vec<String>),
    Unreachable(Vec<String>),
}

impl Ctx {
    fn token(&self, key: &[u8]) -> Option<Version> {
        self.session.as_ref().and_then(|(_, s)| s.token(key))
    }

    fn remember(&mut self, key: &[u8], v: Option<Version>) -> Result<(), Fail> {
        if let (Some((path, s)), Some(v)) = (self.session.as_mut(), v) {
            s.set(key, v);
            s.save(path).map_err(|e| Fail(exit::LOCAL, e))?;
        }
        Ok(())
    }

    async fn kv(
        &self,
        method: Method,
        key: &[u8],
        body: Bytes,
        extra: &[(&'static str, String)],
    ) -> Answer {
        let path = format!("/kv/{}", encode_key(key));
        let mut headers = vec![(WAIT_HEADER, self.wait_ms.to_string())];
        if let Some(v) = self.token(key) {
            headers.push((AFTER_HEADER, v.to_string()));
        }
        if let Some(level) = &self.consistency {
            headers.push((CONSISTENCY_HEADER, level.clone()));
        }
        headers.extend(extra.iter().cloned());
        self.request(method, &path, &headers, body).await
    }

    /// Send a request to the first endpoint that answers it (failing over on
    /// connection errors, `ERR_DEP` and `503`).
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Answer {
        // A server catching up after its start answers 503 ERR_NOT_READY with a
        // retry hint: when that is all we hear, try the round again for a while.
        let round = || async {
            let mut deps = Vec::new();
            let mut errs = Vec::new();
            let mut not_ready = 0;
            for ep in &self.endpoints {
                match self
                    .client
                    .call(ep, method.clone(), path, headers, body.clone())
                    .await
                {
                    Err(e) => errs.push(format!("{ep}: {e}")),
                    Ok(r) if r.status == 412 && r.line() == "ERR_PRECONDITION" => {
                        return Ok(Answer::Reply(ep.clone(), r))
                    }
                    Ok(r) if r.status == 412 => deps.push(ep.url()),
                    Ok(r) if r.status == 503 => {
                        if r.line().starts_with("ERR_NOT_READY") {
                            not_ready += 1;
                        }
                        errs.push(format!("{ep}: 503 {}", r.line()))
                    }
                    Ok(r) => return Ok(Answer::Reply(ep.clone(), r)),
                }
            }
            if !deps.is_empty() {
                return Ok(Answer::Dep(deps));
            }
            Err((not_ready > 0, errs))
        };
        let every = Duration::from_millis(100);
        let patience = backon::ConstantBuilder::default()
            .with_delay(every)
            .with_max_times((NOT_READY_PATIENCE.as_millis() / every.as_millis()) as usize);
        match round
            .retry(patience)
            .when(|(not_ready, _)| *not_ready)
            .await
        {
            Ok(a) => a,
            Err((_, errs)) => Answer::Unreachable(errs),
        }
    }
}

/// How long the CLI keeps retrying while every endpoint is still catching up.
const NOT_READY_PATIENCE: Duration = Duration::from_secs(10);

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn settle(a: Answer, key: &[u8]) -> Result<(Endpoint, Reply), Fail> {
    match a {
        Answer::Reply(ep, r) => Ok((ep, r)),
        Answer::Dep(eps) => Err(Fail(
            exit::DEP,
            format!(
                "ERR_DEP: no endpoint has caught up with this session's version of key {:?} (behind: {})",
                show(key),
                eps.join(", ")
            ),
        )),
        Answer::Unreachable(errs) => Err(Fail(
            exit::UNREACHABLE,
            format!("unreachable: {}", errs.join("; ")),
        )),
    }
}

fn refused(ep: &Endpoint, r: &Reply) -> Fail {
    Fail(
        exit::REFUSED,
        format!("{ep} refused: {} {}", r.status, r.line()),
    )
}

fn finish(r: Result<u8, Fail>) -> u8 {
    match r {
        Ok(c) => c,
        Err(Fail(code, msg)) => {
            eprintln!("meshkv: {}", msg.replace('\n', " "));
            code
        }
    }
}

/// Write to stdout. A closed stdout (the reader of a pipe left, as `| head` does) is
/// not an error: the output is simply not wanted any more.
fn write_out(bytes: &[u8], newline: bool) -> Result<(), Fail> {
    let mut out = std::io::stdout().lock();
    let r = out
        .write_all(bytes)
        .and_then(|_| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|_| out.flush());
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Fail(exit::LOCAL, format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// `meshkv get KEY`: print the value (plus a newline unless `raw`).
pub async fn get(args: &ClientArgs, key: &[u8], raw: bool) -> u8 {
    finish(
        async {
            let mut ctx = args.ctx()?;
            let (ep, r) = settle(ctx.kv(Method::GET, key, Bytes::new(), &[]).await, key)?;
            match r.status {
                200 => {
                    ctx.remember(key, r.version())?;
                    if args.output == Output::Text {
                        write_out(&r.body, !raw)?;
                    } else {
                        print_records(
                            args.output,
                            &[vec![
                                ("key", pct(key)),
                                ("value", pct(&r.body)),
                                ("version", r.header(VERSION_HEADER).into()),
                            ]],
                        )?;
                    }
                    Ok(exit::OK)
                }
                404 => {
                    ctx.remember(key, r.version())?;
                    Err(Fail(
                        exit::NOT_FOUND,
                        format!("key {:?} not found", show(key)),
                    ))
                }
                _ => Err(refused(&ep, &r)),
            }
        }
        .await,
    )
}

/// How a command prints (`-o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Plain text: the value (`get`), keys (`ls`), one line per endpoint (`status`),
    /// `put KEY VALUE` / `delete KEY` / `reset` lines (`watch`).
    #[default]
    Text,
    /// One JSON object per line (keys and values percent-encoded, as the server
    /// sends them in listings).
    Json,
    /// A table (comfy-table); `watch` prints text.
    Table,
}

/// One record of `-o json|table`: fields in order.
type Record = Vec<(&'static str, serde_json::Value)>;

/// Print records as JSON lines or as one table (`text` is the caller's business).
fn print_records(out: Output, records: &[Record]) -> Result<(), Fail> {
    let mut buf = String::new();
    match out {
        Output::Text => {}
        Output::Json => {
            for r in records {
                let o: serde_json::Map<String, serde_json::Value> =
                    r.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                buf.push_str(&serde_json::Value::Object(o).to_string());
                buf.push('\n');
            }
        }
        Output::Table => {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
            if let Some(first) = records.first() {
                t.set_header(first.iter().map(|(k, _)| *k));
            }
            for r in records {
                t.add_row(r.iter().map(|(_, v)| match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".to_string(),
                    v => v.to_string(),
                }));
            }
            buf.push_str(&t.to_string());
            buf.push('\n');
        }
    }
    write_out(buf.as_bytes(), false)
}

/// Bytes in a JSON record: percent-encoded (lossless for any bytes; plain text stays
/// readable), as the server's listings have them.
fn pct(b: &[u8]) -> serde_json::Value {
    serde_json::Value::String(encode_key(b))
}

/// A listing page's item or a watch event's data, as the server sends it.
#[derive(Debug, Deserialize, Serialize)]
struct Item {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    version: String,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
    more: bool,
    next: Option<String>,
}

fn decoded(s: &str, what: &str) -> Result<Vec<u8>, Fail> {
    decode_key(s).map_err(|e| Fail(exit::REFUSED, format!("server sent a bad {what}: {e}")))
}

/// `meshkv ls [PREFIX]`: every live key under PREFIX, following the pages to the end.
pub async fn ls(args: &ClientArgs, prefix: &[u8], values: bool) -> u8 {
    let out = args.output;
    finish(
        async {
            let ctx = args.ctx()?;
            let mut headers = Vec::new();
            if let Some(level) = &ctx.consistency {
                headers.push((CONSISTENCY_HEADER, level.clone()));
            }
            let keys_only = !values && out == Output::Text;
            let mut start: Option<String> = None;
            loop {
                let mut path = format!("/kv?prefix={}&limit=1000", encode_key(prefix));
                if keys_only {
                    path.push_str("&keys_only=true");
                }
                if let Some(s) = &start {
                    path.push_str(&format!("&start={s}"));
                }
                let (ep, r) = settle(
                    ctx.request(Method::GET, &path, &headers, Bytes::new())
                        .await,
                    prefix,
                )?;
                if r.status != 200 {
                    return Err(refused(&ep, &r));
                }
                let page: Page = serde_json::from_slice(&r.body)
                    .map_err(|e| Fail(exit::REFUSED, format!("{ep} sent a bad listing: {e}")))?;
                let mut buf = Vec::new();
                if out == Output::Table {
                    let mut records = Vec::new();
                    for item in &page.items {
                        records.push(vec![
                            (
                                "key",
                                serde_json::Value::String(show(&decoded(&item.key, "key")?)),
                            ),
                            (
                                "value",
                                match &item.value {
                                    Some(v) => {
                                        serde_json::Value::String(show(&decoded(v, "value")?))
                                    }
                                    None => serde_json::Value::Null,
                                },
                            ),
                            ("version", item.version.clone().into()),
                        ]);
                    }
                    print_records(out, &records)?;
                }
                for item in page.items.iter().filter(|_| out != Output::Table) {
                    match out {
                        Output::Json => {
                            let line = serde_json::to_string(item)
                                .map_err(|e| Fail(exit::LOCAL, e.to_string()))?;
                            buf.extend_from_slice(line.as_bytes());
                        }
                        Output::Text | Output::Table => {
                            buf.extend(decoded(&item.key, "key")?);
                            if let (true, Some(v)) = (values, &item.value) {
                                buf.push(b'\t');
                                buf.extend(decoded(v, "value")?);
                            }
                        }
                    }
                    buf.push(b'\n');
                }
                if !write_out_or_closed(&buf)? {
                    return Ok(exit::OK);
                }
                match (page.more, page.next) {
                    (true, Some(n)) => start = Some(n),
                    _ => return Ok(exit::OK),
                }
            }
        }
        .await,
    )
}

/// Write to stdout; `Ok(false)` when stdout was closed (a pipe's reader left:
/// not an error, the command just stops).
fn write_out_or_closed(bytes: &[u8]) -> Result<bool, Fail> {
    let mut o = std::io::stdout().lock();
    match o.write_all(bytes).and_then(|_| o.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Fail(exit::LOCAL, format!("cannot write to stdout: {e}"))),
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty: `message`).
    pub event: String,
    /// `id:`.
    pub id: Option<String>,
    /// `data:` lines, joined by `\n`.
    pub data: String,
}

/// Splits a byte stream into Server-Sent Events (the text/event-stream format).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feed bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if self.has_data || !self.cur.event.is_empty() {
                    out.push(std::mem::take(&mut self.cur));
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.cur.event = value.to_string(),
                "id" => self.cur.id = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

/// `meshkv watch [PREFIX]`: print every change under PREFIX as the server applies it,
/// until interrupted; on a broken connection, resume from the last event's id
/// through the next endpoint.
pub async fn watch(args: &ClientArgs, prefix: &[u8], after: Option<String>) -> u8 {
    let out = args.output;
    finish(
        async {
            let ctx = args.ctx()?;
            let mut last = after;
            let mut failures = 0usize;
            loop {
                let mut path = format!("/watch?prefix={}", encode_key(prefix));
                if let Some(a) = &last {
                    path.push_str(&format!("&after={}", encode_key(a.as_bytes())));
                }
                let ep = &ctx.endpoints[failures % ctx.endpoints.len()];
                let stream = async {
                    let mut conn = ctx.client.connect(ep).await?;
                    conn.stream(Method::GET, &path, &[]).await
                };
                let mut resp = match stream.await {
                    Ok(x) => x,
                    Err(e) => {
                        failures += 1;
                        if failures >= 3 * ctx.endpoints.len() {
                            return Err(Fail(exit::UNREACHABLE, format!("unreachable: {ep}: {e}")));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let status = resp.status().as_u16();
                if status != 200 {
                    let text = match resp.text().await {
                        Ok(t) => t,
                        Err(e) => e.to_string(),
                    };
                    return Err(Fail(
                        exit::REFUSED,
                        format!("{ep} refused: {status} {}", text.lines().next().unwrap_or("")),
                    ));
                }
                failures = 0;
                let mut parser = SseParser::default();
                while let Ok(Some(data)) = resp.chunk().await {
                    for ev in parser.feed(&data) {
                        if ev.id.is_some() {
                            last = ev.id.clone();
                        }
                        let mut line = Vec::new();
                        match out {
                            Output::Json => {
                                let data: serde_json::Value =
                                    serde_json::from_str(&ev.data).unwrap_or(serde_json::Value::Null);
                                let v = serde_json::json!({"event": ev.event, "id": ev.id, "data": data});
                                line.extend(v.to_string().into_bytes());
                            }
                            _ if ev.event == "reset" => line.extend(b"reset"),
                            Output::Text | Output::Table => {
                                let item: Item = serde_json::from_str(&ev.data).map_err(|e| {
                                    Fail(exit::REFUSED, format!("{ep} sent a bad event: {e}"))
                                })?;
                                line.extend(ev.event.as_bytes());
                                line.push(b' ');
                                line.extend(decoded(&item.key, "key")?);
                                if let Some(v) = &item.value {
                                    line.push(b' ');
                                    line.extend(decoded(v, "value")?);
                                }
                            }
                        }
                        line.push(b'\n');
                        if !write_out_or_closed(&line)? {
                            return Ok(exit::OK);
                        }
                    }
                }
                // The stream ended (the server stopped or the link broke): go on
                // through the next endpoint from the last id.
                failures += 1;
            }
        }
        .await,
    )
}

/// `meshkv snapshot save FILE`: the first endpoint that answers streams its whole
/// store (`GET /snapshot`); the file is checked, written next to FILE, fsynced and
/// renamed into place.
pub async fn snapshot_save(args: &ClientArgs, file: &Path) -> u8 {
    finish(
        async {
            let ctx = args.ctx()?;
            let (ep, r) = settle(
                ctx.request(Method::GET, "/snapshot", &[], Bytes::new())
                    .await,
                b"",
            )?;
            if r.status != 200 {
                return Err(refused(&ep, &r));
            }
            let (header, entries) = crate::snapshot::decode(&r.body)
                .map_err(|e| Fail(exit::REFUSED, format!("{ep} sent a bad snapshot: {e}")))?;
            let tmp = file.with_extension("partial");
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&r.body)?;
                f.sync_all()?;
                std::fs::rename(&tmp, file)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Fail(exit::LOCAL, format!("cannot write {}: {e}", file.display()))
            })?;
            let line = format!(
                "saved {} entries ({} bytes) from server {} (incarnation {:016x}) to {}\n",
                entries.len(),
                r.body.len(),
                header.node,
                header.incarnation,
                file.display()
            );
            if args.output == Output::Text {
                write_out(line.as_bytes(), false)?;
            } else {
                print_records(
                    args.output,
                    &[vec![
                        ("file", file.display().to_string().into()),
                        ("entries", entries.len().into()),
                        ("bytes", r.body.len().into()),
                        ("node", header.node.into()),
                        ("incarnation", format!("{:016x}", header.incarnation).into()),
                    ]],
                )?;
            }
            Ok(exit::OK)
        }
        .await,
    )
}

/// `meshkv snapshot restore FILE --data-dir D --id N`: build a new data directory for
/// server N from a snapshot (see [`crate::snapshot`]).
pub fn snapshot_restore(file: &Path, dir: &Path, id: u64) -> u8 {
    let run = || -> Result<u8, Fail> {
        let bytes = read_file(file, "snapshot").map_err(|e| Fail(exit::LOCAL, e))?;
        let r = crate::snapshot::restore(&bytes, dir, id)
            .map_err(|e| Fail(exit::LOCAL, format!("{}: {e}", file.display())))?;
        let line = format!(
            "restored {} entries from server {}'s snapshot into {} for server {id}; start it there: it joins as a new incarnation and catches up\n",
            r.entries,
            r.header.node,
            dir.display()
        );
        write_out(line.as_bytes(), false)?;
        Ok(exit::OK)
    };
    finish(run())
}

/// A write's precondition (compare-and-set, linearizable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WriteCond {
    /// None.
    #[default]
    Always,
    /// The key's current version is this one (`If-Match`).
    Version(String),
    /// The key has no value (`If-None-Match: *`).
    Absent,
}

/// `meshkv put KEY VALUE` / `meshkv del KEY` (`value` `None`): print the previous value
/// when `prev`; a put with `ttl` expires that many seconds after the write.
pub async fn write(
    args: &ClientArgs,
    key: &[u8],
    value: Option<Vec<u8>>,
    prev: bool,
    cond: WriteCond,
    ttl: Option<u64>,
) -> u8 {
    finish(
        async {
            let mut ctx = args.ctx()?;
            let (method, body) = match value {
                Some(v) => (Method::PUT, Bytes::from(v)),
                None => (Method::DELETE, Bytes::new()),
            };
            let mut extra = match &cond {
                WriteCond::Always => vec![],
                WriteCond::Version(v) => {
                    v.parse::<Version>()
                        .map_err(|e| Fail(exit::USAGE, format!("--if-version {v:?}: {e}")))?;
                    vec![("if-match", v.clone())]
                }
                WriteCond::Absent => vec![("if-none-match", "*".to_string())],
            };
            if let Some(t) = ttl {
                extra.push((crate::http::TTL_HEADER, t.to_string()));
            }
            let (ep, r) = settle(ctx.kv(method, key, body, &extra).await, key)?;
            match r.status {
                200 | 201 | 204 => {
                    ctx.remember(key, r.version())?;
                    let previous = (r.status == 200).then(|| &r.body[..]);
                    match args.output {
                        Output::Text => {
                            if let (true, Some(p)) = (prev, previous) {
                                write_out(p, true)?;
                            }
                        }
                        out => print_records(
                            out,
                            &[vec![
                                ("key", pct(key)),
                                ("version", r.header(VERSION_HEADER).into()),
                                ("previous_version", r.header(PREVIOUS_VERSION_HEADER).into()),
                                ("previous", previous.map(pct).into()),
                            ]],
                        )?,
                    }
                    Ok(exit::OK)
                }
                412 => Err(Fail(
                    exit::PRECONDITION,
                    format!(
                        "ERR_PRECONDITION: key {:?} is {}",
                        show(key),
                        r.version()
                            .map_or("absent".to_string(), |v| format!("at version {v}"))
                    ),
                )),
                _ => Err(refused(&ep, &r)),
            }
        }
        .await,
    )
}

/// What `meshkv member` does.
#[derive(Clone, Debug)]
pub enum MemberOp {
    /// Add server `id` at a QUIC address (or change its address).
    Add(u64, String),
    /// Remove server `id`.
    Remove(u64),
    /// Print the membership.
    List,
}

/// `meshkv member add|remove|list`: sent to the first endpoint that answers; the
/// change is a replicated record, so one server is enough.
pub async fn member(args: &ClientArgs, op: MemberOp) -> u8 {
    finish(
        async {
            let ctx = args.ctx()?;
            let (method, path, body) = match &op {
                MemberOp::Add(id, addr) => {
                    if addr.parse::<std::net::SocketAddr>().is_err() {
                        return Err(Fail(
                            exit::USAGE,
                            format!("{addr:?} is not a QUIC address (ip:port)"),
                        ));
                    }
                    (
                        Method::PUT,
                        format!("/members/{id}"),
                        Bytes::from(addr.clone()),
                    )
                }
                MemberOp::Remove(id) => (Method::DELETE, format!("/members/{id}"), Bytes::new()),
                MemberOp::List => (Method::GET, "/members".to_string(), Bytes::new()),
            };
            let mut errs = Vec::new();
            for ep in &ctx.endpoints {
                match ctx
                    .client
                    .call(ep, method.clone(), &path, &[], body.clone())
                    .await
                {
                    Err(e) => errs.push(format!("{ep}: {e}")),
                    Ok(r) if r.status == 503 => errs.push(format!("{ep}: 503 {}", r.line())),
                    Ok(r) if r.status != 200 => return Err(refused(ep, &r)),
                    Ok(r) => {
                        if let MemberOp::List = op {
                            let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body)
                                .map_err(|e| Fail(exit::REFUSED, format!("{ep}: bad JSON: {e}")))?;
                            if args.output != Output::Text {
                                let field = |m: &serde_json::Value, k: &str| {
                                    m.get(k).cloned().unwrap_or(serde_json::Value::Null)
                                };
                                let records: Vec<Record> = list
                                    .iter()
                                    .map(|m| {
                                        vec![
                                            ("id", field(m, "id")),
                                            ("state", field(m, "state")),
                                            ("link", field(m, "link")),
                                            ("addr", field(m, "addr")),
                                        ]
                                    })
                                    .collect();
                                print_records(args.output, &records)?;
                                return Ok(exit::OK);
                            }
                            let mut text = String::new();
                            for m in list {
                                // Strings as they are, numbers as numbers, null as "-".
                                let f = |k: &str| match m.get(k) {
                                    Some(serde_json::Value::String(v)) => v.clone(),
                                    Some(serde_json::Value::Null) | None => "-".to_string(),
                                    Some(v) => v.to_string(),
                                };
                                text.push_str(&format!(
                                    "{}\t{}\t{}\t{}\n",
                                    f("id"),
                                    f("state"),
                                    f("link"),
                                    f("addr")
                                ));
                            }
                            write_out(text.as_bytes(), false)?;
                        }
                        return Ok(exit::OK);
                    }
                }
            }
            Err(Fail(
                exit::UNREACHABLE,
                format!("unreachable: {}", errs.join("; ")),
            ))
        }
        .await,
    )
}

/// Read a value from stdin (`meshkv put KEY` without VALUE).
pub fn stdin_value() -> Result<Vec<u8>, String> {
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
        .map_err(|e| format!("cannot read the value from stdin: {e}"))?;
    Ok(v)
}

/// `meshkv status`: one line per endpoint (or a JSON array with `json`).
pub async fn status(args: &ClientArgs, check: bool) -> u8 {
    finish(
        async {
            let ctx = args.ctx()?;
            let mut all = Vec::new();
            for ep in &ctx.endpoints {
                let r = ctx
                    .client
                    .call(ep, Method::GET, "/status", &[], Bytes::new())
                    .await;
                let item = match r {
                    Ok(r) if r.status == 200 => {
                        match serde_json::from_slice::<serde_json::Value>(&r.body) {
                            Ok(v) => Ok(v),
                            Err(e) => Err(format!("bad status JSON: {e}")),
                        }
                    }
                    Ok(r) => Err(format!("{} {}", r.status, r.line())),
                    Err(e) => Err(e.to_string()),
                };
                all.push((ep, item));
            }
            let problems = health(&all);
            if check {
                for p in &problems {
                    eprintln!("meshkv: {p}");
                }
            } else {
                match args.output {
                    Output::Text => {
                        let mut text = String::new();
                        for (ep, it) in &all {
                            text.push_str(&match it {
                                Ok(v) => summary(ep, v),
                                Err(e) => format!("{ep}  unreachable: {e}"),
                            });
                            text.push('\n');
                        }
                        write_out(text.as_bytes(), false)?;
                    }
                    Output::Json => print_records(
                        Output::Json,
                        &all.iter()
                            .map(|(ep, it)| match it {
                                Ok(v) => vec![("endpoint", ep.url().into()), ("status", v.clone())],
                                Err(e) => {
                                    vec![("endpoint", ep.url().into()), ("error", e.clone().into())]
                                }
                            })
                            .collect::<Vec<_>>(),
                    )?,
                    Output::Table => print_records(
                        Output::Table,
                        &all.iter()
                            .map(|(ep, it)| status_row(ep, it))
                            .collect::<Vec<_>>(),
                    )?,
                }
            }
            let unreachable = all.iter().any(|(_, it)| it.is_err());
            Ok(if unreachable {
                exit::UNREACHABLE
            } else if !problems.is_empty() {
                exit::UNHEALTHY
            } else {
                exit::OK
            })
        }
        .await,
    )
}

/// What is wrong with the cluster as these status documents show it: unreachable
/// endpoints, servers not ready or with a full disk, links not up, digests that
/// differ (each one line).
fn health(all: &[(&Endpoint, Result<serde_json::Value, String>)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut digests: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (ep, it) in all {
        let v = match it {
            Err(e) => {
                out.push(format!("{ep} unreachable: {e}"));
                continue;
            }
            Ok(v) => v,
        };
        let node = v.get("node").and_then(|x| x.as_u64()).unwrap_or(0);
        if v.get("ready") != Some(&serde_json::Value::Bool(true)) {
            out.push(format!("server {node} ({ep}) is not ready (catching up)"));
        }
        if v.get("disk_full") == Some(&serde_json::Value::Bool(true)) {
            out.push(format!(
                "server {node} ({ep}): disk below the free-space reserve"
            ));
        }
        for p in v
            .get("peers")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            let link = p.get("link").and_then(|l| l.as_str()).unwrap_or("?");
            if link != "up" {
                let id = p.get("id").and_then(|x| x.as_u64()).unwrap_or(0);
                out.push(format!("server {node}: link to server {id} is {link}"));
            }
        }
        let d = v.get("digest_root").and_then(|x| x.as_str()).unwrap_or("?");
        digests.entry(d.to_string()).or_default().push(node);
    }
    if digests.len() > 1 {
        let groups: Vec<String> = digests
            .iter()
            .map(|(d, nodes)| format!("{nodes:?} at {d}"))
            .collect();
        out.push(format!("digests differ: {}", groups.join(", ")));
    }
    out
}

/// A status document's peers, how many have their link up, and the largest lag.
fn peer_summary(v: &serde_json::Value) -> (Vec<serde_json::Value>, usize, u64) {
    let peers = v
        .get("peers")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let up = peers
        .iter()
        .filter(|p| p.get("link").and_then(|l| l.as_str()) == Some("up"))
        .count();
    let lag = peers
        .iter()
        .filter_map(|p| p.get("lag").and_then(|l| l.as_u64()))
        .max()
        .unwrap_or(0);
    (peers, up, lag)
}

fn status_row(ep: &Endpoint, it: &Result<serde_json::Value, String>) -> Record {
    let v = match it {
        Err(e) => {
            return vec![
                ("endpoint", ep.url().into()),
                ("node", serde_json::Value::Null),
                ("ready", serde_json::Value::Null),
                ("keys", serde_json::Value::Null),
                ("digest", serde_json::Value::Null),
                ("links up", serde_json::Value::Null),
                ("max lag", serde_json::Value::Null),
                ("error", e.clone().into()),
            ]
        }
        Ok(v) => v,
    };
    let (peers, up, lag) = peer_summary(v);
    let get = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    vec![
        ("endpoint", ep.url().into()),
        ("node", get("node")),
        ("ready", get("ready")),
        ("keys", get("keys")),
        ("digest", get("digest_root")),
        ("links up", format!("{up}/{}", peers.len()).into()),
        ("max lag", lag.into()),
        ("error", serde_json::Value::Null),
    ]
}

fn summary(ep: &Endpoint, v: &serde_json::Value) -> String {
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let (peers, up, lag) = peer_summary(v);
    let links: Vec<String> = peers
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p.get("id").and_then(|x| x.as_u64()).unwrap_or(0),
                p.get("link").and_then(|x| x.as_str()).unwrap_or("?")
            )
        })
        .collect();
    format!(
        "{ep}  node={} keys={} tombstones={} digest={} peers_up={up}/{} [{}] max_lag={lag} uptime={:.0}s",
        n("node"),
        n("keys"),
        n("tombstones"),
        v.get("digest_root").and_then(|x| x.as_str()).unwrap_or("?"),
        peers.len(),
        links.join(" "),
        v.get("uptime_s").and_then(|x| x.as_f64()).unwrap_or(0.0),
    )
}

/// A command-line argument as bytes (keys and values may be any bytes on Unix).
pub fn arg_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        s.as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        s.to_string_lossy().into_owned().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://server-0.meshkv:8443/").ok();
        assert_eq!(
            e,
            Some(Endpoint {
                https: true,
                host: "server-0.meshkv".into(),
                port: 8443
            })
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:8000").map(|e| e.url()),
            Ok("http://127.0.0.1:8000".to_string())
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:8000").map(|e| e.authority()),
            Ok("[::1]:8000".to_string())
        );
        assert_eq!(
            Endpoint::parse("http://x:80").map(|e| e.port),
            Ok(80),
            "an explicit default port"
        );
        for bad in [
            "",
            "ftp://x:1",
            "x",
            "x:99999",
            "http://x:1/kv",
            ":80",
            "http://x",
            "http://u@x:1",
            "http://x:1?q",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn session_file_round_trip() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let p = dir.path().join("s.json");
        let mut s = SessionFile::load(&p)?;
        assert_eq!(s, SessionFile::new());
        let v = Version {
            ts: 5,
            dot: meshkv_core::Dot::new(1, 2),
        };
        s.set(b"a b", v);
        s.save(&p)?;
        // The file format: percent-encoded keys, tokens in the Version text form.
        let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
        assert!(text.contains(r#""meshkv_session": 1"#), "{text}");
        assert!(text.contains(r#""a%20b": "5.1.2""#), "{text}");
        let again = SessionFile::load(&p)?;
        assert_eq!(again.token(b"a b"), Some(v));
        assert_eq!(again, s);
        std::fs::write(&p, "{not json").map_err(|e| e.to_string())?;
        assert!(SessionFile::load(&p).is_err());
        Ok(())
    }
}
