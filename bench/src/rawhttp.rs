//! One kept-alive HTTP/1.1 connection per load worker, on hyper's connection API
//! (plain or TLS).
//!
//! The CLI and the tests use `reqwest` (`meshkv_node::cli::HttpClient`). The load
//! generator does not: on a 2-core machine a pooled client's per-request work is
//! measured along with the server, and it must cost the same for every system
//! compared (meshkv, etcd). This is the least a request can cost: one connection, no
//! pool, the status read and the body drained.

use anyhow::{anyhow, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;
use hyper_util::rt::TokioIo;
use meshkv_node::cli::Endpoint;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// What every connection of a run shares.
#[derive(Clone)]
pub struct RawClient {
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<String>,
    timeout: Duration,
}

/// One connection.
pub struct RawConn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
    token: Option<String>,
    timeout: Duration,
}

impl RawClient {
    /// `tls` for https endpoints, `token` sent as a bearer token, `timeout` per request.
    pub fn new(
        tls: Option<rustls::ClientConfig>,
        token: Option<String>,
        timeout: Duration,
    ) -> Self {
        RawClient {
            tls: tls.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c))),
            token,
            timeout,
        }
    }

    /// Open a connection to `ep`.
    pub async fn connect(&self, ep: &Endpoint) -> Result<RawConn> {
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        .map_err(|_| anyhow!("connect to {ep}: timed out"))??;
        tcp.set_nodelay(true)?;
        let send = if ep.https {
            let tls = self
                .tls
                .as_ref()
                .ok_or_else(|| anyhow!("{ep} is https: give --cacert"))?;
            let name = rustls::pki_types::ServerName::try_from(ep.host.clone())?;
            handshake(tls.connect(name, tcp).await?).await?
        } else {
            handshake(tcp).await?
        };
        Ok(RawConn {
            send,
            authority: ep.authority(),
            token: self.token.clone(),
            timeout: self.timeout,
        })
    }
}

async fn handshake<S>(io: S) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

impl RawConn {
    /// Whether the connection broke (open a new one).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// One request; its status (the body is read and dropped).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if let Some(t) = &self.token {
            b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(
                HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        let req = b.body(Full::new(body))?;
        let fut = async {
            self.send.ready().await?;
            let resp = self.send.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<_, anyhow::Error>(status)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow!("no answer within {:?}", self.timeout))?
    }
}
