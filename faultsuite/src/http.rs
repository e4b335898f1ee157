//! The suite's HTTP client: reqwest over plain HTTP/1.1 (keep-alive connections per
//! server and per client), a deadline on every request. No TLS (only `http://`
//! endpoints are accepted), no proxies, no redirects.

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::fmt;
use std::time::Duration;

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
        let full = if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let bad = || format!("{s}: expected http://HOST:PORT");
        let u = reqwest::Url::parse(&full).map_err(|_| bad())?;
        if u.scheme() != "http" {
            return Err(format!("{s}: only plain http:// is supported"));
        }
        if !matches!(u.path(), "" | "/") || u.query().is_some() || !u.username().is_empty() {
            return Err(bad());
        }
        let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        // A port is required; the URL parser hides an explicit :80.
        let port = u
            .port()
            .or_else(|| full.trim_end_matches('/').ends_with(":80").then_some(80))
            .ok_or_else(bad)?;
        Ok(Endpoint {
            authority: format!("{host}:{port}"),
        })
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

/// Requests to one server, over reqwest's pool of keep-alive connections (one pool
/// per `Conn`, so per server and per client, as each client of the seed has its
/// own connections). A connection that failed is never reused.
pub struct Conn {
    base: String,
    client: Option<reqwest::Client>,
}

/// Everything a reqwest error says, its sources included (its own text alone is
/// only "error sending request for url ...").
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl Conn {
    /// Requests to `endpoint`; the connection is opened on first use.
    pub fn new(endpoint: Endpoint) -> Conn {
        Conn {
            base: endpoint.to_string(),
            client: None,
        }
    }

    fn client(&mut self) -> Result<&reqwest::Client, HttpError> {
        if self.client.is_none() {
            let c = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .tcp_nodelay(true)
                .http1_only()
                .build()
                .map_err(|e| HttpError::Connect(describe(&e)))?;
            self.client = Some(c);
        }
        self.client
            .as_ref()
            .ok_or_else(|| HttpError::Connect("no client".into()))
    }

    /// Send one request and read the whole answer, within `deadline` (connecting
    /// included). [`HttpError::Connect`]: no connection could be made, so nothing
    /// was sent; [`HttpError::Timeout`] and [`HttpError::Io`]: it may have been.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        deadline: Duration,
    ) -> Result<Response, HttpError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| HttpError::Io(format!("method {method:?}: {e}")))?;
        let url = format!("{}{path}", self.base);
        let mut req = self.client()?.request(method, url).timeout(deadline);
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let classify = |e: reqwest::Error| {
            if e.is_connect() {
                HttpError::Connect(describe(&e))
            } else if e.is_timeout() {
                HttpError::Timeout
            } else {
                HttpError::Io(describe(&e))
            }
        };
        let resp = req.body(body).send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.bytes().await.map_err(classify)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// What [`encode_key`] leaves as it is: ASCII letters and digits and `-._~` (the
/// unreserved characters of RFC 3986); every other byte is `%XX`.
const KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode a key for a path segment (everything but unreserved characters).
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY).to_string()
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
        assert_eq!(encode_key("AZaz09"), "AZaz09");
        assert_eq!(
            encode_key("?#[]@!$&'()*+,;=:"),
            "%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A"
        );
        assert_eq!(encode_key("\u{e9}\u{1}\u{7f}"), "%C3%A9%01%7F");
        assert_eq!(encode_key(""), "");
    }

    /// A server that answers every request on a connection with `200 ok` and a
    /// version header, and reports each connection it accepts and each request
    /// line it reads.
    async fn answering_server() -> (Endpoint, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = tx.send("accept".to_string());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line.starts_with("GET ") {
                            let _ = tx.send(line);
                        } else if line.is_empty() {
                            let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Meshkv-Version: 1.2.3\r\n\r\nok";
                            if w.write_all(answer.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        let ep = Endpoint::parse(&addr.to_string()).expect("endpoint");
        (ep, rx)
    }

    #[tokio::test]
    async fn answers_come_back_and_connections_are_kept_alive() {
        let (ep, mut seen) = answering_server().await;
        let mut c = Conn::new(ep);
        let t = Duration::from_secs(5);
        for _ in 0..3 {
            let path = format!("/kv/{}", encode_key("a b/c"));
            let r = c
                .request("GET", &path, &[], Bytes::new(), t)
                .await
                .expect("answer");
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "ok");
            assert_eq!(r.header("X-MESHKV-VERSION"), Some("1.2.3"));
        }
        let mut events = Vec::new();
        while let Ok(e) = seen.try_recv() {
            events.push(e);
        }
        // One connection for the three requests, and the key's path as encoded.
        assert_eq!(
            events.iter().filter(|e| *e == "accept").count(),
            1,
            "{events:?}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| e.starts_with("GET /kv/a%20b%2Fc HTTP/1.1"))
                .count(),
            3,
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let mut c = Conn::new(Endpoint::parse(&addr.to_string()).expect("endpoint"));
        let r = c
            .request("GET", "/health", &[], Bytes::new(), Duration::from_secs(5))
            .await;
        assert!(matches!(r, Err(HttpError::Connect(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_within_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts, reads, never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut c = Conn::new(Endpoint::parse(&addr.to_string()).expect("endpoint"));
        let start = std::time::Instant::now();
        let r = c
            .request(
                "PUT",
                "/kv/k",
                &[("X-Meshkv-After", "1.2.3".into())],
                Bytes::from_static(b"v"),
                Duration::from_millis(200),
            )
            .await;
        assert_eq!(r.map(|r| r.status), Err(HttpError::Timeout));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}
