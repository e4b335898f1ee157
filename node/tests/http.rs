//! The HTTP API through real `meshkv serve` processes started from config files.
//!
//! Every test makes its own temp dir, certificates and OS-picked ports (QUIC ports are
//! reserved by binding :0 and releasing them; HTTP listens on :0 and the address is
//! read from the server's first stdout line), talks only to 127.0.0.1, and kills
//! every process it started by pid (the `Proc` guard).

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use hyper::Method;
use meshkv_core::Version;
use meshkv_node::cli::{tls_config, Endpoint, HttpClient, Reply};
use meshkv_node::pki::{self, Ca, Identity};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{
    after, get, kv, meshed, plain, put, version, Cluster, NodeCfg, AFTER, VERSION, WAIT,
};

#[tokio::test]
async fn round_trips_through_a_three_server_cluster() -> Result<()> {
    let (cl, c) = meshed(&vec![NodeCfg::default(); 3]).await?;
    let (e0, e1, e2) = (cl.ep(0)?, cl.ep(1)?, cl.ep(2)?);
    let key: &[u8] = b"greeting / \xc3\xbc \x00 100%";

    // First put: 201, no body, a version.
    let r = put(&c, &e0, key, b"hello", &[]).await?;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.body.is_empty());
    let v1 = version(&r)?;
    // The origin is node 0's current incarnation.
    let st = c
        .call(&e0, Method::GET, "/status", &[], Bytes::new())
        .await?;
    let st: serde_json::Value = serde_json::from_slice(&st.body)?;
    assert_eq!(
        st["incarnation"].as_str(),
        Some(format!("{:016x}", v1.dot.origin).as_str())
    );

    // Second put on another server, after the first: 200 with the old value.
    let r = put(&c, &e1, key, b"world", &after(&v1, 5000)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(&r.body[..], b"hello");
    let v2 = version(&r)?;
    assert_ne!(v2.dot.origin, v1.dot.origin, "another server's incarnation");
    assert!(v2 > v1, "a write after the token wins LWW");
    assert_eq!(
        r.header("x-meshkv-previous-version"),
        Some(v1.to_string().as_str())
    );

    // Get on the third server with the token: the value and its version.
    let r = get(&c, &e2, key, &after(&v2, 5000)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(&r.body[..], b"world");
    assert_eq!(version(&r)?, v2);

    // HEAD: same status and headers, no body.
    let r = c
        .call(&e2, Method::HEAD, &kv(key), &[], Bytes::new())
        .await?;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(r.header(VERSION).is_some());

    // 404 for a key never written: ERR_KEY, no version.
    let r = get(&c, &e0, b"never-written", &[]).await?;
    assert_eq!(r.status, 404);
    assert_eq!(r.line(), "ERR_KEY");
    assert!(r.header(VERSION).is_none());

    // Delete: 200 with the old value and the tombstone's version.
    let r = c
        .call(
            &e0,
            Method::DELETE,
            &kv(key),
            &after(&v2, 5000),
            Bytes::new(),
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(&r.body[..], b"world");
    let v3 = version(&r)?;
    assert!(v3 > v2);

    // The delete is replicated: 404 on another server, with the tombstone's version.
    let r = get(&c, &e1, key, &after(&v3, 5000)).await?;
    assert_eq!(r.status, 404, "{r:?}");
    if let Some(v) = r.header(VERSION) {
        assert_eq!(v, v3.to_string());
    }

    // Delete of a missing key: 204. Put after a delete: 201.
    let r = c
        .call(&e2, Method::DELETE, &kv(b"nothing-here"), &[], Bytes::new())
        .await?;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.header(VERSION).is_some());
    let r = put(&c, &e2, key, b"again", &after(&v3, 5000)).await?;
    assert_eq!(r.status, 201, "{r:?}");

    // A literal slash and its encoding name the same key.
    put(&c, &e0, b"a/b", b"slash", &[]).await?;
    let r = c
        .call(&e0, Method::GET, "/kv/a/b", &[], Bytes::new())
        .await?;
    assert_eq!(&r.body[..], b"slash");

    // Binary values of the maximum size round trip.
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let r = put(&c, &e1, b"big", &big, &[]).await?;
    assert_eq!(r.status, 201, "{r:?}");
    let r = get(&c, &e1, b"big", &[]).await?;
    assert_eq!(r.body.len(), big.len());
    assert!(r.body[..] == big[..]);

    // Health, status, metrics.
    let r = c
        .call(&e0, Method::GET, "/health", &[], Bytes::new())
        .await?;
    assert_eq!((r.status, r.line().as_str()), (200, "ok"));
    let r = c
        .call(&e0, Method::GET, "/status", &[], Bytes::new())
        .await?;
    assert_eq!(r.status, 200);
    let st: serde_json::Value = serde_json::from_slice(&r.body)?;
    assert_eq!(st["node"], 0);
    assert_eq!(st["http"], e0.authority());
    assert!(st["keys"].as_u64().is_some());
    assert!(st["digest_root"].as_str().is_some());
    let peers = st["peers"].as_array().ok_or_else(|| anyhow!("no peers"))?;
    assert_eq!(peers.len(), 2);
    for p in peers {
        assert_eq!(p["link"], "up");
        assert!(p["last_sync_ok_ms"].as_u64().is_some());
        assert!(p["catchup_keys_received"].as_u64().is_some());
    }
    let r = c
        .call(&e0, Method::GET, "/metrics", &[], Bytes::new())
        .await?;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body);
    for want in [
        "meshkv_http_requests_total{route=\"/kv\",method=\"PUT\",status=\"201\"}",
        "meshkv_http_request_duration_seconds_bucket{",
        "meshkv_replication_lag_writes{peer=\"1\"}",
        "meshkv_peer_bytes_sent_total{peer=\"2\"}",
        "meshkv_storage_fsyncs_total",
        "meshkv_peer_up{peer=\"1\"} 1",
        "meshkv_build_info{version=\"",
        "meshkv_linearizable_ops_total",
        "# EOF",
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }
    // The process metrics people expect, with plausible values.
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let rss = value("process_resident_memory_bytes").unwrap_or(0.0);
    assert!(rss > 1e6 && rss < 1e10, "resident memory {rss}:\n{text}");
    let fds = value("process_open_fds").unwrap_or(0.0);
    assert!(
        fds >= 3.0 && fds <= value("process_max_fds").unwrap_or(0.0),
        "{text}"
    );
    assert!(value("process_cpu_seconds_total").is_some(), "{text}");
    let start = value("process_start_time_seconds").unwrap_or(0.0);
    assert!(start > 1.7e9, "start time {start}");

    // Dashboards share one mesh snapshot: eight viewers at once make one (two if the
    // machine stalls past its 400 ms), not eight rounds of status requests to peers.
    let snapshots = |text: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            l.strip_prefix("meshkv_dashboard_snapshots_total ")?
                .parse()
                .ok()
        })
    };
    let before = snapshots(&text).ok_or_else(|| anyhow!("no snapshot counter:\n{text}"))?;
    let views = (0..8).map(|_| c.call(&e0, Method::GET, "/ui/mesh", &[], Bytes::new()));
    for r in futures_util::future::join_all(views).await {
        let r = r?;
        assert_eq!(r.status, 200);
        let mesh: serde_json::Value = serde_json::from_slice(&r.body)?;
        for id in ["0", "1", "2"] {
            assert!(mesh["servers"][id]["status"].is_object(), "{mesh}");
        }
    }
    let r = c
        .call(&e0, Method::GET, "/metrics", &[], Bytes::new())
        .await?;
    let after = snapshots(&String::from_utf8_lossy(&r.body)).unwrap_or(0);
    assert!(
        (1..=2).contains(&(after - before)),
        "{} snapshots for 8 viewers",
        after - before
    );
    Ok(())
}

#[tokio::test]
async fn isolated_replica_answers_err_dep_and_waits_are_bounded() -> Result<()> {
    // 0 and 1 know each other; 2 knows nobody and nobody knows 2: it is isolated.
    let mut cl = Cluster::new(&[
        NodeCfg {
            peers: Some(vec![0, 1]),
            ..Default::default()
        },
        NodeCfg {
            peers: Some(vec![0, 1]),
            ..Default::default()
        },
        NodeCfg {
            peers: Some(vec![]),
            http: "max_wait_ms = 1000".into(),
            ..Default::default()
        },
    ])?;
    cl.start(0)?;
    cl.start(2)?;
    let c = plain();
    // Node 0 waits for its catch-up timeout (node 1 is down), then serves.
    cl.wait_ready(0, &c).await?;
    cl.wait_ready(2, &c).await?;
    let (e0, e2) = (cl.ep(0)?, cl.ep(2)?);

    // This test is about the session level: node 2 is a cluster of its own, and a
    // linearizable request would not ask it.
    let session = [("x-meshkv-consistency", "session".to_string())];
    let v = version(&put(&c, &e0, b"k", b"v1", &session).await?)?;

    // No wait: 412 ERR_DEP at once.
    let t = Instant::now();
    let r = get(&c, &e2, b"k", &[(AFTER, v.to_string())]).await?;
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(r.line(), "ERR_DEP");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // A wait bound: 412 once it passes, not before, not much after.
    let t = Instant::now();
    let r = get(&c, &e2, b"k", &after(&v, 400)).await?;
    let took = t.elapsed();
    assert_eq!(r.status, 412);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(2000), "{took:?}");

    // The server caps the client's bound (max_wait_ms = 1000 on node 2).
    let t = Instant::now();
    let r = get(&c, &e2, b"k", &after(&v, 600_000)).await?;
    let took = t.elapsed();
    assert_eq!(r.status, 412);
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");

    // Writes behind the token are refused too, and write nothing.
    let r = put(&c, &e2, b"k", b"stale-side", &after(&v, 100)).await?;
    assert_eq!(r.status, 412, "{r:?}");
    let r = c
        .call(
            &e2,
            Method::DELETE,
            &kv(b"k"),
            &after(&v, 100),
            Bytes::new(),
        )
        .await?;
    assert_eq!(r.status, 412, "{r:?}");
    let r = get(&c, &e2, b"k", &session).await?;
    assert_eq!(
        r.status, 404,
        "nothing was written on the isolated replica: {r:?}"
    );

    // Without a token, at the session level, the isolated replica answers what it
    // has: eventual consistency.
    let r = put(&c, &e2, b"other", b"x", &session).await?;
    assert_eq!(r.status, 201);

    // Catch-up within the bound: node 1 starts only now, behind node 0; a read with
    // the token and a generous bound waits for it to catch up and then answers.
    let e1 = cl.start(1)?;
    let t = Instant::now();
    let r = get(&c, &e1, b"k", &after(&v, 10_000)).await?;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(&r.body[..], b"v1");
    assert_eq!(version(&r)?, v);
    println!("a freshly started replica caught up with the token in {took:?}");
    assert!(took < Duration::from_secs(10));
    Ok(())
}

/// One client writes 40 keys × 50 times, each put to the next server in turn, and
/// checks the chain of old values.
async fn chain(
    cl: &Cluster,
    c: &HttpClient,
    prefix: &str,
    token: bool,
) -> Result<(usize, usize, usize)> {
    let eps: Vec<Endpoint> = (0..3).map(|i| cl.ep(i)).collect::<Result<_>>()?;
    let mut conns = Vec::new();
    for ep in &eps {
        conns.push(c.connect(ep).await?);
    }
    let mut turn = 0usize;
    let (mut breaks, mut deps, mut waited) = (0, 0, 0);
    for k in 0..40 {
        let key = format!("{prefix}-{k}");
        let mut last: Option<(Vec<u8>, Version)> = None;
        for round in 0..50 {
            let value = format!("{key}-{round}").into_bytes();
            loop {
                let s = turn % 3;
                turn += 1;
                let mut headers = Vec::new();
                if let (true, Some((_, v))) = (token, &last) {
                    headers = after(v, 2000);
                }
                if conns[s].is_closed() {
                    conns[s] = c.connect(&eps[s]).await?;
                }
                let t = Instant::now();
                let r = conns[s]
                    .send(
                        Method::PUT,
                        &kv(key.as_bytes()),
                        &headers,
                        Bytes::from(value.clone()),
                    )
                    .await?;
                if t.elapsed() > Duration::from_millis(20) {
                    waited += 1;
                }
                if r.status == 412 {
                    // Behind the token even after the bound: nothing was written; the
                    // next server gets the put.
                    assert!(token, "ERR_DEP without a token");
                    deps += 1;
                    continue;
                }
                let old = match r.status {
                    200 => Some(r.body.to_vec()),
                    201 => None,
                    _ => bail!("put {key} round {round}: {} {}", r.status, r.line()),
                };
                let want = last.as_ref().map(|(v, _)| v.clone());
                if old != want {
                    breaks += 1;
                    if token {
                        bail!(
                            "chain broken with a session token: {key} round {round} at server {s} returned {:?}, wrote {:?} before",
                            old.map(|o| String::from_utf8_lossy(&o).into_owned()),
                            want.map(|o| String::from_utf8_lossy(&o).into_owned())
                        );
                    }
                }
                last = Some((value.clone(), version(&r)?));
                break;
            }
        }
    }
    Ok((breaks, deps, waited))
}

#[tokio::test]
async fn chain_of_old_values_with_and_without_the_session_token() -> Result<()> {
    let (cl, c) = meshed(&vec![NodeCfg::default(); 3]).await?;
    let t = Instant::now();
    let (breaks, deps, waited) = chain(&cl, &c, "tok", true).await?;
    println!(
        "with the session token: 2000 puts in {:?}, {breaks} chain breaks, {deps} ERR_DEP answers, {waited} puts took > 20 ms (waited for replication)",
        t.elapsed()
    );
    assert_eq!(breaks, 0);
    let t = Instant::now();
    let (breaks, _, _) = chain(&cl, &c, "notok", false).await?;
    println!(
        "without the session token: 2000 puts in {:?}, the chain broke {breaks} times ({:.1}%)",
        t.elapsed(),
        breaks as f64 / 20.0
    );
    Ok(())
}

/// Raw bytes to the server; returns what it answered before closing or `wait` passing.
fn raw(
    ep: &Endpoint,
    send: &[u8],
    pause: Option<Duration>,
    half_close: bool,
    wait: Duration,
) -> Result<String> {
    let mut s = TcpStream::connect((ep.host.as_str(), ep.port))?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(send)?;
    if let Some(p) = pause {
        std::thread::sleep(p);
    }
    if half_close {
        s.shutdown(std::net::Shutdown::Write)?;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Method, path, headers, body, expected status.
type Case = (Method, String, Vec<(&'static str, String)>, Bytes, u16);

fn status_of(resp: &str) -> Option<u16> {
    resp.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn bad_input_gets_a_4xx_and_the_server_keeps_serving() -> Result<()> {
    let mut cl = Cluster::new(&[NodeCfg {
        peers: Some(vec![]),
        http: "header_timeout_ms = 700\nbody_timeout_ms = 700".into(),
        limits: "max_key = 16\nmax_value = 64".into(),
        ..Default::default()
    }])?;
    let ep = cl.start(0)?;
    let c = plain();
    let healthy = |c: HttpClient, ep: Endpoint| async move {
        let r = c
            .call(&ep, Method::GET, "/health", &[], Bytes::new())
            .await?;
        anyhow::ensure!(r.status == 200, "server stopped serving: {r:?}");
        Ok::<_, anyhow::Error>(())
    };
    let one_line = |r: &Reply| {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.ends_with('\n') && body.trim_end().lines().count() == 1,
            "{body:?}"
        );
    };

    let cases: Vec<Case> = vec![
        (Method::GET, kv(&[b'k'; 17]), vec![], Bytes::new(), 414),
        (
            Method::PUT,
            kv(&[b'k'; 17]),
            vec![],
            Bytes::from_static(b"v"),
            414,
        ),
        (Method::GET, "/kv/%zz".into(), vec![], Bytes::new(), 400),
        (Method::GET, "/kv/ab%4".into(), vec![], Bytes::new(), 400),
        // `GET /kv/` is a listing; a write still needs a key.
        (Method::PUT, "/kv/".into(), vec![], Bytes::new(), 400),
        (Method::GET, "/kv/?ttl=5".into(), vec![], Bytes::new(), 400),
        (
            Method::PUT,
            kv(b"k"),
            vec![],
            Bytes::from(vec![b'v'; 65]),
            413,
        ),
        (
            Method::POST,
            kv(b"k"),
            vec![],
            Bytes::from_static(b"v"),
            405,
        ),
        (
            Method::PATCH,
            kv(b"k"),
            vec![],
            Bytes::from_static(b"v"),
            405,
        ),
        (
            Method::POST,
            "/status".into(),
            vec![],
            Bytes::from_static(b"{garbage"),
            405,
        ),
        (
            Method::PUT,
            "/metrics".into(),
            vec![],
            Bytes::from_static(b"x"),
            405,
        ),
        (Method::GET, "/nowhere".into(), vec![], Bytes::new(), 404),
        (
            Method::GET,
            kv(b"k"),
            vec![(AFTER, "garbage".into())],
            Bytes::new(),
            400,
        ),
        (
            Method::GET,
            kv(b"k"),
            vec![(AFTER, "1.2".into())],
            Bytes::new(),
            400,
        ),
        (
            Method::GET,
            kv(b"k"),
            vec![(WAIT, "-5".into())],
            Bytes::new(),
            400,
        ),
        (
            Method::GET,
            kv(b"k"),
            vec![(WAIT, "soon".into())],
            Bytes::new(),
            400,
        ),
        // A token from the far future would drag the server's clock along.
        (
            Method::GET,
            kv(b"k"),
            vec![(AFTER, "99999999999999999.0.1".into())],
            Bytes::new(),
            412,
        ),
        (
            Method::PUT,
            kv(b"k"),
            // A token from the far future is not refused for its timestamp (it cannot
            // move the clock past the offset bound); its write is unknown here: 412.
            vec![(AFTER, format!("{}.0.1", u64::MAX))],
            Bytes::from_static(b"v"),
            412,
        ),
    ];
    for (m, path, headers, body, want) in cases {
        let r = c.call(&ep, m.clone(), &path, &headers, body).await?;
        assert_eq!(r.status, want, "{m} {path} {headers:?}: {r:?}");
        one_line(&r);
        if want == 405 {
            assert!(r.header("allow").is_some(), "405 without Allow");
        }
        healthy(c.clone(), ep.clone()).await?;
    }
    // Nothing of the refused writes landed.
    assert_eq!(get(&c, &ep, b"k", &[]).await?.status, 404);
    // The limits themselves are allowed.
    assert_eq!(
        put(&c, &ep, &[b'k'; 16], &[b'v'; 64], &[]).await?.status,
        201
    );

    // Raw protocol abuse.
    let w = Duration::from_secs(5);
    let r = raw(&ep, b"\x00\x01\x02 nonsense\r\n\r\n", None, false, w)?;
    assert_eq!(status_of(&r), Some(400), "{r:?}");
    healthy(c.clone(), ep.clone()).await?;

    // Oversized chunked body: 413 without a Content-Length to go by.
    let mut req = b"PUT /kv/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"20\r\n");
        req.extend_from_slice(&[b'c'; 32]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw(&ep, &req, None, false, w)?;
    assert_eq!(status_of(&r), Some(413), "{r:?}");
    assert_eq!(get(&c, &ep, b"chunky", &[]).await?.status, 404);

    // Slow headers: 408 once header_timeout passes.
    let t = Instant::now();
    let r = raw(&ep, b"GET /kv/k HTTP/1.1\r\nHost: x\r\n", None, false, w)?;
    assert_eq!(status_of(&r), Some(408), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    healthy(c.clone(), ep.clone()).await?;

    // Slow body: the headers promise 10 bytes, 3 come: 408 once body_timeout passes.
    let r = raw(
        &ep,
        b"PUT /kv/partial HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        None,
        false,
        w,
    )?;
    assert_eq!(status_of(&r), Some(408), "{r:?}");
    // Partial body then EOF: 400, and no partial write.
    let r = raw(
        &ep,
        b"PUT /kv/partial HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        Some(Duration::from_millis(100)),
        true,
        w,
    )?;
    assert_eq!(status_of(&r), Some(400), "{r:?}");
    assert_eq!(get(&c, &ep, b"partial", &[]).await?.status, 404);

    // Many idle, half-open connections do not stop the server.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect((ep.host.as_str(), ep.port))?;
        s.write_all(b"GET /kv/k HTT")?;
        idle.push(s);
    }
    healthy(c.clone(), ep.clone()).await?;
    drop(idle);
    healthy(c, ep).await?;
    Ok(())
}

#[tokio::test]
async fn tls_client_certificates_and_bearer_tokens() -> Result<()> {
    let mut cl = Cluster::new(&[NodeCfg {
        peers: Some(vec![]),
        http: "tls = true\nclient_auth = \"cert\"\nbearer_token_file = \"token\"".into(),
        ..Default::default()
    }])?;
    std::fs::write(cl.path().join("token"), "s3cret-token\n")?;
    let ep = cl.start(0)?;
    assert!(ep.https, "{ep}");
    let certs = cl.path().join("certs");
    let ca = certs.join("ca.pem");
    let (_, ccert, ckey) = pki::cert_paths(&certs, Identity::client(100));
    let tls = |cert: Option<(&Path, &Path)>| tls_config(&ca, cert).map_err(|e| anyhow!(e));
    let secs = Duration::from_secs(10);

    // Right certificate and token.
    let good = HttpClient::new(
        Some(tls(Some((&ccert, &ckey)))?),
        Some("s3cret-token".into()),
        secs,
    );
    let r = put(&good, &ep, b"k", b"v", &[]).await?;
    assert_eq!(r.status, 201, "{r:?}");
    let r = get(&good, &ep, b"k", &[]).await?;
    assert_eq!(&r.body[..], b"v");

    // Right certificate, no or wrong token: 401 (but /health is open).
    let no_token = HttpClient::new(Some(tls(Some((&ccert, &ckey)))?), None, secs);
    let r = get(&no_token, &ep, b"k", &[]).await?;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").is_some());
    let wrong = HttpClient::new(
        Some(tls(Some((&ccert, &ckey)))?),
        Some("s3cret-tokeN".into()),
        secs,
    );
    assert_eq!(get(&wrong, &ep, b"k", &[]).await?.status, 401);
    let r = no_token
        .call(&ep, Method::GET, "/health", &[], Bytes::new())
        .await?;
    assert_eq!(r.status, 200);
    let r = no_token
        .call(&ep, Method::GET, "/metrics", &[], Bytes::new())
        .await?;
    assert_eq!(r.status, 401);

    // No client certificate: refused.
    let anon = HttpClient::new(Some(tls(None)?), Some("s3cret-token".into()), secs);
    assert!(
        get(&anon, &ep, b"k", &[]).await.is_err(),
        "served a client without certificate"
    );

    // A certificate from another CA: refused.
    let other = Ca::generate("other-cluster")?;
    let issued = other.issue(Identity::client(100))?;
    let (ocert, okey) = (cl.path().join("other.pem"), cl.path().join("other.key"));
    std::fs::write(&ocert, &issued.cert_pem)?;
    std::fs::write(&okey, &issued.key_pem)?;
    let stranger = HttpClient::new(
        Some(tls(Some((&ocert, &okey)))?),
        Some("s3cret-token".into()),
        secs,
    );
    match get(&stranger, &ep, b"k", &[]).await {
        Ok(r) => bail!("served a certificate from another CA: {r:?}"),
        Err(e) => println!("another CA's certificate refused: {e}"),
    }

    // A client trusting another CA refuses the server.
    std::fs::write(cl.path().join("other-ca.pem"), other.cert_pem())?;
    let wrong_trust = HttpClient::new(
        Some(
            tls_config(&cl.path().join("other-ca.pem"), Some((&ccert, &ckey)))
                .map_err(|e| anyhow!(e))?,
        ),
        Some("s3cret-token".into()),
        secs,
    );
    assert!(get(&wrong_trust, &ep, b"k", &[]).await.is_err());

    // Plain HTTP to the TLS port gets no answer.
    let plain_ep = Endpoint {
        https: false,
        ..ep.clone()
    };
    let r = HttpClient::new(None, Some("s3cret-token".into()), Duration::from_secs(3))
        .call(&plain_ep, Method::GET, "/health", &[], Bytes::new())
        .await;
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|r| r.status != 200),
        "{r:?}"
    );

    // And the server still serves the right client.
    assert_eq!(get(&good, &ep, b"k", &[]).await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn serve_refuses_bad_configs_with_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = env!("CARGO_BIN_EXE_meshkv");
    let cases = [
        (
            "typo.toml",
            "id = 0\ndata_dir = \"d\"\n[certs]\ndir = \"c\"\nquic_listn = \"x\"\n",
            "quic_listn",
        ),
        (
            "nocerts.toml",
            "id = 0\ndata_dir = \"d\"\n[certs]\ndir = \"missing\"\n",
            "missing",
        ),
        (
            "badaddr.toml",
            "id = 0\ndata_dir = \"d\"\nhttp_listen = \"nowhere\"\n[certs]\ndir = \"c\"\n",
            "badaddr.toml:3",
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        let out = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&p)
            .stdin(Stdio::null())
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
    }
    let out = Command::new(bin)
        .args(["serve", "--config"])
        .arg(dir.path().join("absent.toml"))
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

#[test]
fn example_configs_parse() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster");
    for i in 0..3 {
        let p = root.join(format!("node{i}.toml"));
        let c = meshkv_node::config::Config::load(&p).map_err(|e| anyhow!(e))?;
        assert_eq!(c.id, i);
        assert!(c.http_listen.ip().is_loopback());
        assert_eq!(c.peers.len(), 3);
        let (ca, _, _) = c.cert_paths().map_err(|e| anyhow!(e))?;
        assert!(ca.ends_with("certs/out/ca.pem"), "{}", ca.display());
    }
    Ok(())
}
