//! Connection floods against a real `meshkv serve` process.
//!
//! Every test starts its own server from a config file in a temp dir (no peers,
//! OS-picked ports, loopback only), opens its flood from other loopback addresses
//! (`127.0.0.2`, …: the whole of 127/8 is loopback on Linux) and talks plain HTTP/1.1
//! over raw sockets, so that each measured latency is connect + request + answer and
//! nothing else. The server is killed and reaped by pid when a test ends.

use anyhow::{anyhow, bail, ensure, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Child;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod support;

/// The functional requirement: a normal client is served within this during a flood.
const SERVED_WITHIN: Duration = Duration::from_secs(1);
/// How long a check waits before it calls something "hung" (well above every bound).
const HUNG: Duration = Duration::from_secs(10);

/// One `meshkv serve` process in a temp dir; killed and reaped on drop.
struct Serve {
    child: Child,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a single server (no peers) with `http` as its `[http]` lines.
fn serve(http: &str) -> Result<Serve> {
    let dir = tempfile::tempdir()?;
    support::write_certs(dir.path(), 1)?;
    let ports = support::reserve_udp_ports(1)?;
    let config = dir.path().join("node0.toml");
    std::fs::write(&config, support::server_config(0, &ports, &[], http, ""))?;
    let (child, line) = support::spawn_serve(&config, &dir.path().join("node0.log"))?;
    let url = support::http_url(&line).map(str::to_owned);
    // Own the child before anything else can fail: it is killed on every path.
    let mut s = Serve {
        child,
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        _dir: dir,
    };
    let url = url.ok_or_else(|| anyhow!("no http= in {line:?}"))?;
    s.http = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not plain HTTP: {url}"))?
        .parse()?;
    Ok(s)
}

/// Raise this process's soft `RLIMIT_NOFILE` to at least `want` (up to the hard
/// limit). The server process inherits the raised limit too.
fn raise_nofile(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    let want = want as libc::rlim_t;
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    ensure!(
        lim.rlim_cur >= want,
        "RLIMIT_NOFILE is {} (hard {}), the test needs {want}",
        lim.rlim_cur,
        lim.rlim_max
    );
    Ok(())
}

/// A TCP connection to `to` from the address `from` (port picked by the OS).
///
/// The port is picked at connect time, not at bind time (`IP_BIND_ADDRESS_NO_PORT`):
/// a `bind` to port 0 must find a port free for every destination, which gets slow
/// with thousands of ports in use. Closing it resets it (zero linger), so that the
/// flood leaves no thousands of TIME_WAIT sockets behind for the next run.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "IP_BIND_ADDRESS_NO_PORT: {}",
            std::io::Error::last_os_error()
        );
    }
    sock.set_zero_linger()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    Ok(tokio::time::timeout(HUNG, sock.connect(to))
        .await
        .map_err(|_| anyhow!("connect from {from} to {to} hung"))??)
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Read one answer (with `Content-Length`) from `s`, waiting at most `wait`.
/// `Ok(None)`: the server closed (EOF or reset) before sending a single byte.
async fn read_answer(s: &mut TcpStream, wait: Duration) -> Result<Option<Answer>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(&buf) {
            let head = std::str::from_utf8(&buf[..end])?;
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status = status_line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse())
                .transpose()?
                .unwrap_or(0);
            if buf.len() >= end + len {
                let body = buf[end..end + len].to_vec();
                return Ok(Some(Answer { status, body }));
            }
        }
        let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => bail!(
                "no complete answer within {wait:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if buf.is_empty() && is_reset(&e) => 0,
            Ok(Err(e)) => return Err(e.into()),
        };
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!(
                "connection closed mid-answer: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// Wait until the server closes `s` (EOF or reset) without sending anything; how
/// long that took. Fails when it answers or stays open for `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> Result<Duration> {
    let t = Instant::now();
    let mut b = [0u8; 512];
    match tokio::time::timeout(wait, s.read(&mut b)).await {
        Err(_) => bail!("still open after {wait:?}"),
        Ok(Ok(0)) => Ok(t.elapsed()),
        Ok(Ok(n)) => bail!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Ok(Err(e)) if is_reset(&e) => Ok(t.elapsed()),
        Ok(Err(e)) => Err(e.into()),
    }
}

fn request(method: &str, path: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: meshkv\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A fresh connection from `from`, one request, its answer and how long all of it
/// took (connect included).
async fn call(
    from: Ipv4Addr,
    to: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(Answer, Duration)> {
    let t = Instant::now();
    let mut s = connect_from(from, to).await?;
    s.write_all(&request(method, path, body, true)).await?;
    let a = read_answer(&mut s, HUNG)
        .await?
        .ok_or_else(|| anyhow!("{method} {path}: closed without an answer"))?;
    Ok((a, t.elapsed()))
}

/// `call`, asserting the status and the `SERVED_WITHIN` bound; prints the latency.
async fn served(
    what: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    want: u16,
) -> Result<Answer> {
    let (a, took) = call(Ipv4Addr::LOCALHOST, to, method, path, body).await?;
    println!("{what}: {method} {path} -> {} in {took:?}", a.status);
    ensure!(
        a.status == want,
        "{what}: {method} {path}: want {want}, got {a:?}"
    );
    ensure!(
        took < SERVED_WITHIN,
        "{what}: {method} {path} took {took:?} (bound {SERVED_WITHIN:?})"
    );
    Ok(a)
}

/// Wait until the fresh server accepts writes (it has no peers: at once).
async fn wait_ready(to: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + HUNG;
    loop {
        if let Ok((a, _)) = call(Ipv4Addr::LOCALHOST, to, "PUT", "/kv/warm-up", b"x").await {
            if a.status == 200 || a.status == 201 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the server did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the metric sample `name` (exact series, labels included).
async fn metric(to: SocketAddr, name: &str) -> Result<f64> {
    let (a, _) = call(Ipv4Addr::LOCALHOST, to, "GET", "/metrics", b"").await?;
    ensure!(a.status == 200, "/metrics: {a:?}");
    let text = String::from_utf8(a.body)?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .ok_or_else(|| anyhow!("no {name} in /metrics"))?
        .trim()
        .parse()
        .map_err(|e| anyhow!("{name}: {e}"))
}

/// The scenario: 5,000 connections from one address that never send a byte,
/// more than `max_connections` (4096, the default). The per-address limit is raised
/// above the flood so that this one address can fill the whole listener (the worst
/// case for the global limit), and the header timeout to a minute, so that only
/// shedding, not a timeout, can make room for the normal client.
#[tokio::test]
async fn a_flood_of_silent_connections_does_not_delay_other_clients() -> Result<()> {
    const FLOOD: usize = 5_000;
    /// Well under the listener's accept backlog: see below.
    const CHUNK: usize = 500;
    raise_nofile(FLOOD as u64 + 1_000)?;
    let srv =
        serve("max_connections = 4096\nmax_connections_per_ip = 10000\nheader_timeout_ms = 60000")?;
    let to = srv.http;
    wait_ready(to).await?;

    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let t = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        // The kernel completes a connect before the server accepts it: a loop faster
        // than the server's accept loop (a busy machine) would fill the accept backlog,
        // and then every connect waits for a SYN retransmission (1 s+). A request
        // between chunks is answered only once the server has accepted everything
        // queued before it: it keeps the backlog short. (No bound on its latency.)
        if i > 0 && i % CHUNK == 0 {
            call(Ipv4Addr::LOCALHOST, to, "GET", "/health", b"").await?;
        }
        flood.push(connect_from(flooder, to).await?);
    }
    println!(
        "{FLOOD} silent connections from {flooder} opened in {:?}",
        t.elapsed()
    );

    served("during the flood", to, "GET", "/health", b"", 200).await?;
    served("during the flood", to, "PUT", "/kv/flood-key", b"v1", 201).await?;
    let a = served("during the flood", to, "GET", "/kv/flood-key", b"", 200).await?;
    ensure!(a.body == b"v1", "read back {:?}", a.body);

    // The listener stayed within its limit by shedding the oldest silent connections
    // (the gauge counts a shed connection until its task has closed it: a few over).
    let open = metric(to, "meshkv_http_connections").await?;
    let shed = metric(
        to,
        "meshkv_http_connections_dropped_total{reason=\"shed_no_request\"}",
    )
    .await?;
    println!("server: {open} open connections, {shed} silent ones shed");
    ensure!(open <= 4096.0 + 8.0, "{open} connections open");
    ensure!(shed >= (FLOOD - 4096) as f64, "only {shed} shed");
    let first = closed_within(&mut flood[0], SERVED_WITHIN).await?;
    println!("the oldest silent connection was closed (seen {first:?} after asking)");
    let last = flood.last_mut().ok_or_else(|| anyhow!("no flood"))?;
    let mut b = [0u8; 1];
    ensure!(
        tokio::time::timeout(Duration::from_millis(100), last.read(&mut b))
            .await
            .is_err(),
        "the newest silent connection was closed too"
    );
    println!("whole test body: {:?}", t.elapsed());
    Ok(())
}

/// A connection that sends nothing is closed at the header timeout, and the
/// per-address limit closes the connection over it at once while other addresses
/// are served.
#[tokio::test]
async fn silent_connections_time_out_and_each_address_is_limited() -> Result<()> {
    raise_nofile(2_000)?;
    let srv = serve("header_timeout_ms = 500\nmax_connections_per_ip = 100")?;
    let to = srv.http;
    wait_ready(to).await?;

    // (1) Silent from the start: closed without an answer at the header timeout.
    let mut silent = connect_from(Ipv4Addr::new(127, 0, 0, 4), to).await?;
    let took = closed_within(&mut silent, HUNG).await?;
    println!("a connection that sent nothing was closed after {took:?}");
    ensure!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}, header timeout 500 ms"
    );

    // (2) 100 keep-alive connections from one address, each served once and then
    // idle (they outlive the header timeout: only the idle timeout applies to them).
    let heavy = Ipv4Addr::new(127, 0, 0, 3);
    let mut held = Vec::new();
    for i in 0..100 {
        let mut s = connect_from(heavy, to).await?;
        s.write_all(&request("GET", "/health", b"", false)).await?;
        let a = read_answer(&mut s, HUNG)
            .await?
            .ok_or_else(|| anyhow!("connection {i} from {heavy} closed"))?;
        ensure!(a.status == 200, "{a:?}");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The 101st from that address is closed at once, request unanswered…
    let t = Instant::now();
    let mut over = connect_from(heavy, to).await?;
    let _ = over.write_all(&request("GET", "/health", b"", false)).await;
    let got = read_answer(&mut over, HUNG).await?;
    let took = t.elapsed();
    println!("the 101st connection from {heavy} was closed after {took:?}");
    ensure!(got.is_none(), "the 101st connection was served: {got:?}");
    ensure!(took < SERVED_WITHIN, "closed only after {took:?}");
    // …while other addresses are served,
    served("at the per-address limit", to, "GET", "/health", b"", 200).await?;
    let (a, took) = call(Ipv4Addr::new(127, 0, 0, 5), to, "GET", "/health", b"").await?;
    println!("from 127.0.0.5: {} in {took:?}", a.status);
    ensure!(a.status == 200 && took < SERVED_WITHIN, "{a:?} in {took:?}");
    // …the 100 held connections still work (nothing was shed: the listener is not full),
    for s in held.iter_mut().take(3) {
        s.write_all(&request("GET", "/health", b"", false)).await?;
        let a = read_answer(s, HUNG)
            .await?
            .ok_or_else(|| anyhow!("a held connection was closed"))?;
        ensure!(a.status == 200, "{a:?}");
    }
    let refused = metric(
        to,
        "meshkv_http_connections_dropped_total{reason=\"per_ip_limit\"}",
    )
    .await?;
    ensure!(refused >= 1.0, "per_ip_limit counter: {refused}");
    // …and once one of them closes, that address may connect again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match call(heavy, to, "GET", "/health", b"").await {
            Ok((a, _)) if a.status == 200 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => bail!("{heavy} could not connect again after closing one: {other:?}"),
        }
    }
    Ok(())
}
