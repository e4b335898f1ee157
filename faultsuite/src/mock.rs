//! A stand-in implementation of the HTTP API, for testing the suite itself (and for
//! `meshkv-test mock`): `Shared` makes every endpoint one linearizable store (what a
//! perfect implementation looks like); `Split` gives each endpoint its own store with
//! no replication at all (what a broken one looks like: the checker must catch it).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// How the endpoints relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One store behind every endpoint.
    Shared,
    /// A separate, never replicated store per endpoint.
    Split,
}

type Store = Arc<Mutex<HashMap<String, (String, u64)>>>;

/// Bind `n` endpoints on 127.0.0.1 (OS-chosen ports) and serve them in the
/// background; returns their addresses.
pub async fn start(n: usize, mode: Mode) -> std::io::Result<Vec<SocketAddr>> {
    let shared: Store = Arc::default();
    let counter = Arc::new(Mutex::new(0u64));
    let mut addrs = Vec::new();
    for i in 0..n {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        addrs.push(listener.local_addr()?);
        let store = match mode {
            Mode::Shared => shared.clone(),
            Mode::Split => Arc::default(),
        };
        let counter = counter.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (store, counter) = (store.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (store, counter) = (store.clone(), counter.clone());
                        async move { Ok::<_, Infallible>(handle(req, &store, &counter, i).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
    Ok(addrs)
}

fn reply(status: u16, body: String, version: Option<String>) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    if let Some(v) = version {
        r = r.header("X-Meshkv-Version", v);
    }
    r.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    store: &Store,
    counter: &Mutex<u64>,
    me: usize,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return reply(200, "ok\n".into(), None);
    }
    let Some(key) = path.strip_prefix("/kv/").map(str::to_string) else {
        return reply(404, "unknown path\n".into(), None);
    };
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(400, "bad body\n".into(), None),
    };
    let Ok(mut m) = store.lock() else {
        return reply(500, "poisoned\n".into(), None);
    };
    match method.as_str() {
        "GET" => match m.get(&key) {
            Some((v, ver)) => reply(200, v.clone(), Some(format!("{ver}.{me}.{ver}"))),
            None => reply(404, String::new(), Some("0.0.0".into())),
        },
        "PUT" => {
            let ver = match counter.lock() {
                Ok(mut c) => {
                    *c += 1;
                    *c
                }
                Err(_) => return reply(500, "poisoned\n".into(), None),
            };
            let value = String::from_utf8_lossy(&body).into_owned();
            match m.insert(key, (value, ver)) {
                Some((old, _)) => reply(200, old, Some(format!("{ver}.{me}.{ver}"))),
                None => reply(201, String::new(), Some(format!("{ver}.{me}.{ver}"))),
            }
        }
        _ => reply(405, "method not allowed\n".into(), None),
    }
}
