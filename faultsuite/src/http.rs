//! A plain HTTP/1.1 client (hyper's connection API, one keep-alive connection per
//! server and per worker), with a deadline on every request. No TLS, no proxies.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::fmt;
use std::time::Duration;
use tokio::net::TcpStream;

/// One server's address, as `host:port` (from `http://host:port[/]` or `host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, used both to connect and as the Host header.
    pub authority: String,
}

impl Endpoint {
    /// Parse `http://host:port`, `http://host:port/` or `host:port`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let s = s.trim();
        if s.starts_with("https://") {
            return Err(format!("{s}: only plain http:// is supported"));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("{s}: expected http://HOST:PORT"));
        }
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(Endpoint {
                authority: rest.to_string(),
            }),
            _ => Err(format!("{s}: expected http://HOST:PORT")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// Why a request got no HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// No answer within the deadline.
    Timeout,
    /// The TCP connection could not be made.
    Connect(String),
    /// The connection broke (reset, closed, bad HTTP).
    Io(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Timeout => write!(f, "timeout"),
            HttpError::Connect(e) => write!(f, "connect: {e}"),
            HttpError::Io(e) => write!(f, "io: {e}"),
        }
    }
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header pairs (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy: the suite only writes ASCII values).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive connection to one server, made again after any failure.
pub struct Conn {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A connection that is opened on first use.
    pub fn new(endpoint: Endpoint) -> Conn {
        Conn {
            endpoint,
            sender: None,
        }
    }

    /// Forget the current connection (the next request opens a new one).
    pub fn reset(&mut self) {
        self.sender = None;
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, HttpError> {
        let usable = match self.sender.as_mut() {
            Some(s) => !s.is_closed() && s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.sender = None;
            let stream = TcpStream::connect(&self.endpoint.authority)
                .await
                .map_err(|e| HttpError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| HttpError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| HttpError::Connect("no connection".into()))
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Response, HttpError> {
        let authority = self.endpoint.authority.clone();
        let sender = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority);
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| HttpError::Io(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Send one request and read the whole answer, within `deadline`. Any failure
    /// drops the connection.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        deadline: Duration,
    ) -> Result<Response, HttpError> {
        let r = match tokio::time::timeout(deadline, self.exchange(method, path, headers, body))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        };
        if r.is_err() {
            self.sender = None;
        }
        r
    }
}

/// Percent-encode a key for a path segment (everything but unreserved characters).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("http://10.0.0.1:8080/").map(|e| e.authority),
            Ok("10.0.0.1:8080".to_string())
        );
        assert_eq!(
            Endpoint::parse("localhost:1").map(|e| e.authority),
            Ok("localhost:1".to_string())
        );
        assert!(Endpoint::parse("https://a:1").is_err());
        assert!(Endpoint::parse("http://a").is_err());
        assert!(Endpoint::parse("http://a:1/x").is_err());
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(encode_key("k-1_a.b~"), "k-1_a.b~");
        assert_eq!(encode_key("a b/c%"), "a%20b%2Fc%25");
    }
}
