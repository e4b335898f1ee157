//! The client process: a session (its per-key dependencies, in its own memory) and the
//! servers it is linked to.
//!
//! Links are ordered by recency: a request goes to the most recently linked server that
//! is not known to be down, and falls back to the others, most recent first, when a
//! server cannot be reached. `ERR_DEP` from a reachable server is an answer, not a
//! failure: the client does not shop around for a server that satisfies it.

use crate::frame;
use crate::net::{self, NetTuning};
use crate::pki::{Identity, TlsMaterial};
use meshkv_core::proto::{ClientReq, ClientResp};
use meshkv_core::{NodeId, Session, Version};
use std::net::SocketAddr;
use std::time::Duration;

struct Link {
    server: NodeId,
    addr: SocketAddr,
    down: bool,
    conn: Option<quinn::Connection>,
}

/// What a get came back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetReply {
    /// The value.
    Value(Vec<u8>, Version),
    /// No value (`ERR_KEY`).
    NotFound,
    /// Dependency not satisfied, or no server reachable (`ERR_DEP`).
    Dep,
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No linked server could be reached.
    #[error("no reachable server (tried {0:?})")]
    Unreachable(Vec<NodeId>),
    /// A server refused the request.
    #[error("server {0} refused: {1}")]
    Refused(NodeId, String),
}

/// A client session and its links.
pub struct Client {
    endpoint: quinn::Endpoint,
    session: Session,
    links: Vec<Link>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Client {
    /// A client presenting `tls` (a client certificate from the cluster CA).
    pub fn new(tls: &TlsMaterial, tuning: &NetTuning) -> Result<Client, net::NetError> {
        let endpoint = net::client_endpoint(
            "127.0.0.1:0"
                .parse()
                .map_err(|_| net::NetError::Tuning("bad bind address".into()))?,
            tls,
            tuning,
        )?;
        Ok(Client {
            endpoint,
            session: Session::new(),
            links: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        })
    }

    /// Set the connect and request timeouts (a request that times out falls back to
    /// the next server).
    pub fn set_timeouts(&mut self, connect: Duration, request: Duration) {
        self.connect_timeout = connect;
        self.request_timeout = request;
    }

    /// The session (its dependencies).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Link to `server` as the most recent one.
    pub fn link(&mut self, server: NodeId, addr: SocketAddr) {
        self.links.retain(|l| l.server != server);
        self.links.push(Link {
            server,
            addr,
            down: false,
            conn: None,
        });
    }

    /// `server` moved to `addr` (it rejoined): keep the link's place, use it again.
    pub fn readdress(&mut self, server: NodeId, addr: SocketAddr) {
        if let Some(l) = self.links.iter_mut().find(|l| l.server == server) {
            l.addr = addr;
            l.down = false;
            l.conn = None;
        }
    }

    /// Forget the link to `server`.
    pub fn unlink(&mut self, server: NodeId) {
        self.links.retain(|l| l.server != server);
    }

    /// `server` is known to be down: skip it until readdressed.
    pub fn down(&mut self, server: NodeId) {
        if let Some(l) = self.links.iter_mut().find(|l| l.server == server) {
            l.down = true;
            if let Some(c) = l.conn.take() {
                c.close(0u32.into(), b"server down");
            }
        }
    }

    /// A connection to link `i`, dialed if it has none (`None`: it cannot be reached).
    async fn connection(&mut self, i: usize) -> Option<quinn::Connection> {
        let link = self.links.get(i)?;
        if let Some(c) = &link.conn {
            if c.close_reason().is_none() {
                return Some(c.clone());
            }
        }
        let server = link.server;
        match net::connect(
            &self.endpoint,
            link.addr,
            Identity::server(server),
            self.connect_timeout,
        )
        .await
        {
            Ok(c) => {
                self.links[i].conn = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::debug!("connect to server {server}: {e}");
                None
            }
        }
    }

    async fn send(&mut self, req: &ClientReq) -> Result<(NodeId, ClientResp), ClientError> {
        let mut answers = self.send_all(std::slice::from_ref(req)).await;
        answers
            .pop()
            .unwrap_or_else(|| Err(ClientError::Unreachable(Vec::new())))
    }

    /// Send `reqs` at once, each on its own stream, to the most recent reachable server;
    /// those that fail there go on to the next one. Answers in the order of `reqs`.
    async fn send_all(
        &mut self,
        reqs: &[ClientReq],
    ) -> Vec<Result<(NodeId, ClientResp), ClientError>> {
        let mut answers: Vec<Option<Result<(NodeId, ClientResp), ClientError>>> =
            reqs.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..reqs.len()).collect();
        let mut tried = Vec::new();
        for i in (0..self.links.len()).rev() {
            if todo.is_empty() {
                break;
            }
            if self.links[i].down {
                continue;
            }
            let server = self.links[i].server;
            tried.push(server);
            let Some(conn) = self.connection(i).await else {
                continue;
            };
            let timeout = self.request_timeout;
            let sent = futures_util::future::join_all(
                todo.iter()
                    .map(|&j| frame::request::<_, ClientResp>(&conn, &reqs[j], timeout)),
            )
            .await;
            let mut failed = Vec::new();
            for (j, r) in todo.iter().zip(sent) {
                match r {
                    Ok((resp, _, _)) => answers[*j] = Some(Ok((server, resp))),
                    Err(e) => {
                        tracing::debug!("request to server {server}: {e}");
                        failed.push(*j);
                    }
                }
            }
            if !failed.is_empty() {
                self.links[i].conn = None;
            }
            todo = failed;
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(ClientError::Unreachable(tried.clone()))))
            .collect()
    }

    /// Write `key` = `value`; returns the server used and the previous value.
    pub async fn put(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(NodeId, Option<Vec<u8>>), ClientError> {
        let mut r = self.put_many(&[(key, value)]).await;
        r.pop()
            .unwrap_or_else(|| Err(ClientError::Unreachable(Vec::new())))
    }

    /// Write several keys at once, each as [`Client::put`] would, none waiting for
    /// another (each carries the session as it was before them all). The keys must be
    /// distinct: two writes of one key are ordered by the caller, one after the other.
    /// Answers in the order given.
    pub async fn put_many(
        &mut self,
        puts: &[(&[u8], Option<&[u8]>)],
    ) -> Vec<Result<(NodeId, Option<Vec<u8>>), ClientError>> {
        let seen_ts = self.session.seen_ts();
        let reqs: Vec<ClientReq> = puts
            .iter()
            .map(|(key, value)| ClientReq::Put {
                key: key.to_vec(),
                value: value.map(|v| v.to_vec()),
                seen_ts,
            })
            .collect();
        let answers = self.send_all(&reqs).await;
        puts.iter()
            .zip(answers)
            .map(|((key, _), a)| match a? {
                (s, ClientResp::Put { version, previous }) => {
                    self.session.wrote(key, version);
                    Ok((s, previous))
                }
                (s, ClientResp::Error(e)) => Err(ClientError::Refused(s, e)),
                (s, other) => Err(ClientError::Refused(
                    s,
                    format!("unexpected answer {other:?}"),
                )),
            })
            .collect()
    }

    /// Read `key` with the session check. No reachable server answers `Dep`.
    pub async fn get(&mut self, key: &[u8]) -> Result<GetReply, ClientError> {
        let req = ClientReq::Get {
            key: key.to_vec(),
            dep: self.session.dep(key),
            seen_ts: self.session.seen_ts(),
        };
        match self.send(&req).await {
            Ok((_, ClientResp::Found { value, version })) => {
                self.session.read(key, version);
                Ok(GetReply::Value(value, version))
            }
            Ok((_, ClientResp::Missing { version })) => {
                if let Some(v) = version {
                    self.session.read(key, v);
                }
                Ok(GetReply::NotFound)
            }
            Ok((_, ClientResp::Dep)) => Ok(GetReply::Dep),
            Ok((s, ClientResp::Error(e))) => Err(ClientError::Refused(s, e)),
            Ok((s, other)) => Err(ClientError::Refused(
                s,
                format!("unexpected answer {other:?}"),
            )),
            Err(ClientError::Unreachable(_)) => Ok(GetReply::Dep),
            Err(e) => Err(e),
        }
    }
}
