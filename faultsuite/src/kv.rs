//! The key-value client of the suite: GET/PUT over the HTTP API (or through a CS739
//! C library, see [`crate::kv739`]), an optional session token per key, failover to
//! the other servers, and one [`Op`] record per request.

use crate::history::{Op, OpKind};
use crate::http::{encode_key, Conn, Endpoint, HttpError};
use crate::kv739::{self, Kv739Cfg, Worker, WorkerError};
use backon::{ConstantBuilder, Retryable};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the suite reaches the servers.
#[derive(Clone, Debug, Default)]
pub enum Backend {
    /// The HTTP API (GET/PUT /kv/{key}).
    #[default]
    Http,
    /// A CS739 (2012) C library, one worker process per client ([`crate::kv739`]).
    /// The session token, level and wait headers do not apply: sessions are the
    /// library's business.
    Kv739(Arc<Kv739Cfg>),
}

/// How the suite talks to the servers. Header names are configurable so that the
/// suite runs against any implementation of the API.
#[derive(Clone, Debug)]
pub struct ClientCfg {
    /// The servers, in id order (index = the id given to fault commands).
    pub servers: Vec<Endpoint>,
    /// HTTP, or a CS739 library (the servers are then its `host:port` names).
    pub backend: Backend,
    /// Send the session token (the version last written or read for the key).
    pub session: bool,
    /// Header carrying the session dependency in a request.
    pub after_header: String,
    /// Request header naming the consistency level (empty: never sent).
    pub level_header: String,
    /// The level sent in it (empty: none).
    pub level: String,
    /// Header carrying the version in a response.
    pub version_header: String,
    /// Header asking a replica that is behind to wait (milliseconds); empty: never sent.
    pub wait_header: String,
    /// Value of the wait header.
    pub wait_ms: u64,
    /// Deadline of one attempt at one server.
    pub attempt_timeout: Duration,
    /// Deadline of a whole request, over all attempts (failover to the other servers).
    pub request_deadline: Duration,
    /// Try the other servers when the target fails.
    pub failover: bool,
    /// A server that failed is tried last for this long (doubling, up to 8x, while
    /// it keeps failing).
    pub suspect_for: Duration,
}

impl ClientCfg {
    /// Defaults for the meshkv API (`X-Meshkv-*` headers).
    pub fn new(servers: Vec<Endpoint>) -> ClientCfg {
        ClientCfg {
            servers,
            backend: Backend::Http,
            session: true,
            after_header: "X-Meshkv-After".into(),
            level_header: "X-Meshkv-Consistency".into(),
            level: "session".into(),
            version_header: "X-Meshkv-Version".into(),
            wait_header: "X-Meshkv-Wait-Ms".into(),
            wait_ms: 500,
            attempt_timeout: Duration::from_millis(1000),
            request_deadline: Duration::from_secs(10),
            failover: true,
            suspect_for: Duration::from_millis(1000),
        }
    }
}

/// A served request, whatever the backend: the status (a CS739 library's return
/// codes are mapped to 200/404 and 200/201), the body (value read, or old value),
/// and the version the server reported.
struct Answer {
    status: u16,
    text: String,
    version: Option<String>,
}

/// What one attempt at one server gave.
enum Attempt {
    /// Served (GET 200/404, PUT 200/201/204).
    Done(Answer),
    /// The server could not serve it (ERR_DEP, 5xx, unexpected status, no answer).
    Failed(String),
}

/// How one client reaches the servers.
enum Transport {
    /// A keep-alive connection to every server.
    Http(Vec<Conn>),
    /// A worker process with its own library instance, started at the first
    /// request (and again after it timed out or died).
    Kv739 {
        cfg: Arc<Kv739Cfg>,
        worker: Option<Box<Worker>>,
    },
}

/// One client: a connection to every server (or its own library instance) and a
/// session (token per key).
pub struct KvClient {
    cfg: Arc<ClientCfg>,
    transport: Transport,
    tokens: HashMap<String, String>,
    suspect_until: Vec<Option<Instant>>,
    failures: Vec<u32>,
    /// This client's number in the records.
    pub id: usize,
    t0: Instant,
}

impl KvClient {
    /// A client; `t0` is the time origin of the records.
    pub fn new(cfg: Arc<ClientCfg>, id: usize, t0: Instant) -> KvClient {
        let transport = match &cfg.backend {
            Backend::Http => Transport::Http(cfg.servers.iter().cloned().map(Conn::new).collect()),
            Backend::Kv739(k) => Transport::Kv739 {
                cfg: k.clone(),
                worker: None,
            },
        };
        let n = cfg.servers.len();
        KvClient {
            cfg,
            transport,
            tokens: HashMap::new(),
            suspect_until: vec![None; n],
            failures: vec![0; n],
            id,
            t0,
        }
    }

    /// Number of servers.
    pub fn servers(&self) -> usize {
        self.cfg.servers.len()
    }

    /// Forget the session (a new client; through a CS739 library: a new instance).
    pub fn forget_session(&mut self) {
        self.tokens.clear();
        if let Transport::Kv739 { worker, .. } = &mut self.transport {
            *worker = None;
        }
    }

    /// The session token held for a key, if any.
    pub fn token(&self, key: &str) -> Option<&str> {
        self.tokens.get(key).map(String::as_str)
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_micros() as u64
    }

    /// Order in which to try the servers for a request aimed at `target`.
    fn order(&self, target: usize) -> Vec<usize> {
        let n = self.servers();
        if !self.cfg.failover {
            return vec![target % n];
        }
        let now = Instant::now();
        let all: Vec<usize> = (0..n).map(|i| (target + i) % n).collect();
        let suspect = |s: &usize| self.suspect_until[*s].is_some_and(|u| u > now);
        let mut order: Vec<usize> = all.iter().copied().filter(|s| !suspect(s)).collect();
        order.extend(all.iter().copied().filter(|s| suspect(s)));
        order
    }

    /// Deadline of one attempt (the wait a lagging replica may take on top).
    fn attempt_deadline(&self) -> Duration {
        self.cfg.attempt_timeout + Duration::from_millis(self.cfg.wait_ms)
    }

    async fn attempt(
        &mut self,
        server: usize,
        kind: OpKind,
        key: &str,
        value: Option<&str>,
        session: bool,
    ) -> Attempt {
        if matches!(self.transport, Transport::Kv739 { .. }) {
            let deadline = self.attempt_deadline();
            return match self.call_kv739(server, kind, key, value, deadline).await {
                Ok(a) => Attempt::Done(a),
                Err(e) => Attempt::Failed(e),
            };
        }
        let path = format!("/kv/{}", encode_key(key));
        let mut headers: Vec<(&str, String)> = Vec::new();
        if !self.cfg.level_header.is_empty() && !self.cfg.level.is_empty() {
            headers.push((self.cfg.level_header.as_str(), self.cfg.level.clone()));
        }
        if session {
            if let Some(tok) = self.tokens.get(key) {
                headers.push((self.cfg.after_header.as_str(), tok.clone()));
                if !self.cfg.wait_header.is_empty() {
                    headers.push((self.cfg.wait_header.as_str(), self.cfg.wait_ms.to_string()));
                }
            }
        }
        let (method, body) = match kind {
            OpKind::Get => ("GET", Bytes::new()),
            OpKind::Put => (
                "PUT",
                Bytes::copy_from_slice(value.unwrap_or_default().as_bytes()),
            ),
        };
        let deadline = self.attempt_deadline();
        let Transport::Http(conns) = &mut self.transport else {
            return Attempt::Failed("no HTTP connection".into());
        };
        let r = conns[server]
            .request(method, &path, &headers, body, deadline)
            .await;
        match r {
            Ok(resp) => {
                let ok = match kind {
                    OpKind::Get => matches!(resp.status, 200 | 404),
                    OpKind::Put => matches!(resp.status, 200 | 201 | 204),
                };
                if ok {
                    Attempt::Done(Answer {
                        status: resp.status,
                        text: resp.text(),
                        version: resp.header(&self.cfg.version_header).map(str::to_string),
                    })
                } else if resp.status == 412 {
                    Attempt::Failed(format!("412 {}", one_line(&resp.text())))
                } else {
                    Attempt::Failed(format!("{} {}", resp.status, one_line(&resp.text())))
                }
            }
            Err(HttpError::Timeout) => Attempt::Failed("timeout".into()),
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }

    /// One GET or PUT through this client's library instance, pinned to `server`
    /// (the worker is started first if there is none). A -1, a timeout or a broken
    /// worker is an error; after a timeout or a broken worker the worker is dropped
    /// (killed), and the next attempt starts a new one.
    async fn call_kv739(
        &mut self,
        server: usize,
        kind: OpKind,
        key: &str,
        value: Option<&str>,
        deadline: Duration,
    ) -> Result<Answer, String> {
        let names: Vec<String> = self
            .cfg
            .servers
            .iter()
            .map(|e| e.authority.clone())
            .collect();
        let Transport::Kv739 { cfg, worker } = &mut self.transport else {
            return Err("no CS739 library".into());
        };
        let value = match kind {
            OpKind::Get => None,
            OpKind::Put => Some(value.unwrap_or_default()),
        };
        kv739::check_args(key, value)?;
        if worker.is_none() {
            *worker = Some(Box::new(
                Worker::spawn(cfg, &names, server, deadline)
                    .await
                    .map_err(|e| e.to_string())?,
            ));
        }
        let Some(w) = worker.as_mut() else {
            return Err("no worker".into());
        };
        let req = match value {
            None => kv739::Request::Get {
                server,
                key: key.to_string(),
            },
            Some(v) => kv739::Request::Put {
                server,
                key: key.to_string(),
                value: v.to_string(),
            },
        };
        let reply = match w.call(&req, deadline).await {
            Ok(r) => r,
            Err(e) => {
                *worker = None;
                return Err(match e {
                    WorkerError::Timeout => "timeout".into(),
                    e => e.to_string(),
                });
            }
        };
        let call = if kind == OpKind::Get {
            "kv739_get"
        } else {
            "kv739_put"
        };
        let status = match (kind, reply.rc) {
            (OpKind::Get, Some(0)) | (OpKind::Put, Some(0)) => 200,
            (OpKind::Get, Some(1)) => 404,
            (OpKind::Put, Some(1)) => 201,
            (_, Some(rc)) => return Err(format!("{call} returned {rc}")),
            (_, None) => return Err(reply.error.unwrap_or_else(|| format!("{call}: no answer"))),
        };
        Ok(Answer {
            status,
            text: reply.value.unwrap_or_default(),
            version: None,
        })
    }

    /// Run one GET or PUT aimed at `target`, failing over to the other servers until
    /// it is served or the request deadline passes.
    pub async fn run(&mut self, kind: OpKind, key: &str, value: Option<&str>, target: usize) -> Op {
        self.run_with(kind, key, value, target, self.cfg.session)
            .await
    }

    /// [`KvClient::run`], choosing whether to send the session token.
    pub async fn run_with(
        &mut self,
        kind: OpKind,
        key: &str,
        value: Option<&str>,
        target: usize,
        session: bool,
    ) -> Op {
        let n = self.servers();
        let target = target % n;
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut last_error = String::new();
        let mut failed_at: Vec<usize> = Vec::new();
        'rounds: loop {
            for server in self.order(target) {
                if attempts > 0 && start.elapsed() >= self.cfg.request_deadline {
                    break 'rounds;
                }
                attempts += 1;
                match self.attempt(server, kind, key, value, session).await {
                    Attempt::Done(resp) => {
                        self.suspect_until[server] = None;
                        self.failures[server] = 0;
                        let end = Instant::now();
                        let version = resp.version.clone();
                        if let Some(v) = &version {
                            if !v.is_empty() && (kind == OpKind::Put || resp.status == 200) {
                                self.tokens.insert(key.to_string(), v.clone());
                            }
                        }
                        let (value, old, found) = match kind {
                            OpKind::Get => {
                                if resp.status == 200 {
                                    (Some(resp.text), None, true)
                                } else {
                                    (None, None, false)
                                }
                            }
                            OpKind::Put => {
                                let old = if resp.status == 200 {
                                    Some(resp.text)
                                } else {
                                    None
                                };
                                (value.map(str::to_string), old, true)
                            }
                        };
                        return Op {
                            client: self.id,
                            kind,
                            key: key.to_string(),
                            value,
                            old,
                            found,
                            ok: true,
                            status: resp.status,
                            server,
                            target,
                            attempts,
                            failed_at,
                            start_us: self.us(start),
                            end_us: self.us(end),
                            error: None,
                            version,
                        };
                    }
                    Attempt::Failed(e) => {
                        if !e.starts_with("412") {
                            // Tried last for 1x, 2x, 4x, 8x suspect_for while it
                            // keeps failing; forgiven at its first answer.
                            let k = self.failures[server].min(3);
                            self.failures[server] = self.failures[server].saturating_add(1);
                            self.suspect_until[server] =
                                Some(Instant::now() + self.cfg.suspect_for * (1u32 << k));
                        }
                        failed_at.push(server);
                        last_error = format!("server {server}: {e}");
                    }
                }
                if !self.cfg.failover {
                    break 'rounds;
                }
            }
            if start.elapsed() >= self.cfg.request_deadline {
                break;
            }
            // Every server failed this round: a short pause before the next round.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let end = Instant::now();
        Op {
            client: self.id,
            kind,
            key: key.to_string(),
            value: if kind == OpKind::Put {
                value.map(str::to_string)
            } else {
                None
            },
            old: None,
            found: false,
            ok: false,
            status: 0,
            server: target,
            target,
            attempts,
            failed_at,
            start_us: self.us(start),
            end_us: self.us(end),
            error: Some(last_error),
            version: None,
        }
    }

    /// One GET at exactly one server, without the session token and without failover
    /// (used to compare the servers' stores). `Ok(None)` is 404.
    pub async fn read_at(&mut self, server: usize, key: &str) -> Result<Option<String>, String> {
        let deadline = self.cfg.attempt_timeout;
        let conns = match &mut self.transport {
            Transport::Http(conns) => conns,
            Transport::Kv739 { .. } => {
                let a = self
                    .call_kv739(server, OpKind::Get, key, None, deadline)
                    .await?;
                return Ok((a.status == 200).then_some(a.text));
            }
        };
        let path = format!("/kv/{}", encode_key(key));
        match conns[server]
            .request("GET", &path, &[], Bytes::new(), deadline)
            .await
        {
            Ok(r) if r.status == 200 => Ok(Some(r.text())),
            Ok(r) if r.status == 404 => Ok(None),
            Ok(r) => Err(format!("{} {}", r.status, one_line(&r.text()))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `GET /health` at one server; through a CS739 library, a GET of a probe key
    /// pinned to that server (found or not found: healthy).
    pub async fn health(&mut self, server: usize) -> Result<(), String> {
        let deadline = self.cfg.attempt_timeout;
        let conns = match &mut self.transport {
            Transport::Http(conns) => conns,
            Transport::Kv739 { .. } => {
                return self
                    .call_kv739(server, OpKind::Get, HEALTH_KEY, None, deadline)
                    .await
                    .map(|_| ());
            }
        };
        match conns[server]
            .request("GET", "/health", &[], Bytes::new(), deadline)
            .await
        {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The key a CS739 library's health probe reads.
pub const HEALTH_KEY: &str = "meshkv-test-health";

/// Wait until every server is healthy ([`KvClient::health`]), asking again every
/// 100 ms, within `timeout`.
pub async fn wait_ready(cfg: &Arc<ClientCfg>, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let client = tokio::sync::Mutex::new(KvClient::new(cfg.clone(), 9999, Instant::now()));
    for s in 0..cfg.servers.len() {
        let every = ConstantBuilder::new()
            .with_delay(Duration::from_millis(100))
            .without_max_times();
        (|| async { client.lock().await.health(s).await })
            .retry(every)
            .when(|_| Instant::now() < deadline)
            .await
            .map_err(|e| {
                format!(
                    "server {s} ({}) not healthy after {timeout:?}: {e}",
                    cfg.servers[s]
                )
            })?;
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    line.chars().take(120).collect()
}
