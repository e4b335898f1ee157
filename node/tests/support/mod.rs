//! What the HTTP and CLI tests share: certificates, ports and config files for a
//! cluster of `meshkv serve` processes in a temporary directory.

#![allow(dead_code)] // each test crate uses its own part of this module

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use hyper::Method;
use meshkv_node::cli::{Endpoint, HttpClient, Reply, SseEvent, SseParser};
use meshkv_node::http::{decode_key, encode_key};
use meshkv_node::meshkv_core::Version;
use meshkv_node::pki::{self, Identity};
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Request header: the session token.
pub const AFTER: &str = "x-meshkv-after";
/// Request header: the replication wait bound.
pub const WAIT: &str = "x-meshkv-wait-ms";
/// Response header: the version read or written.
pub const VERSION: &str = "x-meshkv-version";

/// Certificates for servers `0..n` and client 100 in `dir/certs`.
pub fn write_certs(dir: &Path, n: u64) -> anyhow::Result<()> {
    let mut who: Vec<Identity> = (0..n).map(Identity::server).collect();
    who.push(Identity::client(100));
    pki::write_cluster_certs(&dir.join("certs"), &who)?;
    Ok(())
}

/// `n` distinct free UDP ports on 127.0.0.1 (every socket is held until all ports are
/// known, then released for the servers to bind).
pub fn reserve_udp_ports(n: u64) -> std::io::Result<Vec<u16>> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect()
}

/// The config of server `id` listening on `ports[id]`, listing `peers`, with extra
/// lines for its `[http]` and `[limits]` tables.
pub fn server_config(id: u64, ports: &[u16], peers: &[u64], http: &str, limits: &str) -> String {
    let mut text = format!(
        "id = {id}\ndata_dir = \"data{id}\"\nquic_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:0\"\n\n[certs]\ndir = \"certs\"\n\n",
        ports[id as usize]
    );
    for &p in peers {
        text.push_str(&format!(
            "[[peers]]\nid = {p}\naddr = \"127.0.0.1:{}\"\n\n",
            ports[p as usize]
        ));
    }
    text.push_str(&format!("[http]\n{http}\n\n[limits]\n{limits}\n"));
    text
}

/// Start `meshkv serve --config CONFIG` (stderr to `log`) and wait for the line it prints
/// once it serves (`meshkv serve: node N quic=… http=…`). On failure the process is
/// killed and reaped before the error is returned.
pub fn spawn_serve(config: &Path, log: &Path) -> anyhow::Result<(Child, String)> {
    spawn_serve_env(config, log, &[])
}

/// [`spawn_serve`] with extra environment variables.
pub fn spawn_serve_env(
    config: &Path,
    log: &Path,
    env: &[(String, String)],
) -> anyhow::Result<(Child, String)> {
    let log_file = std::fs::File::create(log)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .env("MESHKV_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .spawn()?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("no stdout");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => Ok((child, line)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("{} did not start; log: {text}", config.display())
        }
    }
}

/// The `http=` address in a `meshkv serve` ready line.
pub fn http_url(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
}

/// A child process, killed and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Node {
    pub id: u64,
    pub quic_port: u16,
    pub config: PathBuf,
    pub proc: Option<Proc>,
    pub http: Option<Endpoint>,
    /// Extra environment variables of its process.
    pub env: Vec<(String, String)>,
}

/// A cluster of `meshkv serve` processes in a temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

/// Options for one node's config.
#[derive(Clone, Default)]
pub struct NodeCfg {
    /// Peers listed in the config (ids); `None`: every node.
    pub peers: Option<Vec<u64>>,
    /// Extra lines for `[http]`.
    pub http: String,
    /// Extra lines for `[limits]`.
    pub limits: String,
    /// Extra environment variables of its process.
    pub env: Vec<(String, String)>,
}

impl Cluster {
    /// Write certificates and configs for `cfgs.len()` servers; start none.
    pub fn new(cfgs: &[NodeCfg]) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let n = cfgs.len() as u64;
        write_certs(dir.path(), n)?;
        let ports = reserve_udp_ports(n)?;
        let mut nodes = Vec::new();
        for (i, c) in cfgs.iter().enumerate() {
            let id = i as u64;
            let peers = c.peers.clone().unwrap_or_else(|| (0..n).collect());
            let text = server_config(id, &ports, &peers, &c.http, &c.limits);
            let config = dir.path().join(format!("node{id}.toml"));
            std::fs::write(&config, text)?;
            nodes.push(Node {
                id,
                quic_port: ports[i],
                config,
                proc: None,
                http: None,
                env: c.env.clone(),
            });
        }
        Ok(Cluster { dir, nodes })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Start node `i` and wait for its "serving" line.
    pub fn start(&mut self, i: usize) -> Result<Endpoint> {
        let node = &mut self.nodes[i];
        let log = self.dir.path().join(format!("node{}.log", node.id));
        let (child, line) = spawn_serve_env(&node.config, &log, &node.env)?;
        let guard = Proc { child };
        let url = http_url(&line).ok_or_else(|| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow!("node {} printed {line:?}; log: {log}", node.id)
        })?;
        if !line.contains(&format!("quic=127.0.0.1:{}", node.quic_port)) {
            bail!("node {} printed {line:?}", node.id);
        }
        let ep = Endpoint::parse(url).map_err(|e| anyhow!(e))?;
        node.proc = Some(guard);
        node.http = Some(ep.clone());
        Ok(ep)
    }

    /// Wait until node `i` answers `/health/ready` with 200 (it has caught up after its
    /// start, or its catch-up timeout passed).
    pub async fn wait_ready(&self, i: usize, client: &HttpClient) -> Result<()> {
        let ep = self.ep(i)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client
                .call(&ep, Method::GET, "/health/ready", &[], Bytes::new())
                .await
            {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {i} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        Ok(())
    }

    pub fn ep(&self, i: usize) -> Result<Endpoint> {
        self.nodes[i]
            .http
            .clone()
            .ok_or_else(|| anyhow!("node {i} not started"))
    }

    /// Wait until node `i` reports `want` peers with a link up.
    pub async fn wait_links(&self, i: usize, want: usize, client: &HttpClient) -> Result<()> {
        let ep = self.ep(i)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client
                .call(&ep, Method::GET, "/status", &[], Bytes::new())
                .await
            {
                let v: serde_json::Value = serde_json::from_slice(&r.body)?;
                let up = v["peers"]
                    .as_array()
                    .map(|a| a.iter().filter(|p| p["link"] == "up").count())
                    .unwrap_or(0);
                if up >= want && v["ready"] == true {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {i} did not get {want} links up");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A cluster of `cfgs.len()` servers, all started, linked to each other and ready,
/// with a plain HTTP client.
pub async fn meshed(cfgs: &[NodeCfg]) -> Result<(Cluster, HttpClient)> {
    let mut cl = Cluster::new(cfgs)?;
    cl.start_all()?;
    let c = plain();
    for i in 0..cfgs.len() {
        cl.wait_links(i, cfgs.len() - 1, &c).await?;
    }
    Ok((cl, c))
}

/// The headers of a session-level request (no token yet).
pub fn session() -> Vec<(&'static str, String)> {
    vec![("x-meshkv-consistency", "session".into())]
}

/// Server `i`'s `/status`, parsed.
pub async fn status(c: &HttpClient, cl: &Cluster, i: usize) -> Result<serde_json::Value> {
    let r = c
        .call(&cl.ep(i)?, Method::GET, "/status", &[], Bytes::new())
        .await?;
    Ok(serde_json::from_slice(&r.body)?)
}

pub fn plain() -> HttpClient {
    HttpClient::new(None, None, Duration::from_secs(20))
}

pub fn kv(key: &[u8]) -> String {
    format!("/kv/{}", encode_key(key))
}

pub async fn put(
    c: &HttpClient,
    ep: &Endpoint,
    key: &[u8],
    val: &[u8],
    headers: &[(&str, String)],
) -> Result<Reply> {
    Ok(c.call(
        ep,
        Method::PUT,
        &kv(key),
        headers,
        Bytes::copy_from_slice(val),
    )
    .await?)
}

pub async fn get(
    c: &HttpClient,
    ep: &Endpoint,
    key: &[u8],
    headers: &[(&str, String)],
) -> Result<Reply> {
    Ok(c.call(ep, Method::GET, &kv(key), headers, Bytes::new())
        .await?)
}

pub fn version(r: &Reply) -> Result<Version> {
    let v = r
        .header(VERSION)
        .ok_or_else(|| anyhow!("no version header in {} {:?}", r.status, r.body))?;
    v.parse::<Version>().map_err(|e| anyhow!(e))
}

pub fn after(v: &Version, wait_ms: u64) -> Vec<(&'static str, String)> {
    vec![(AFTER, v.to_string()), (WAIT, wait_ms.to_string())]
}

/// A watch stream's events, read as they come.
pub struct Watch {
    resp: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl Watch {
    pub async fn open(c: &HttpClient, ep: &Endpoint, query: &str) -> Result<Watch> {
        let mut conn = c.connect(ep).await?;
        let resp = conn
            .stream(Method::GET, &format!("/watch?{query}"), &[])
            .await?;
        if resp.status() != 200 {
            bail!("watch {query}: {}", resp.status());
        }
        Ok(Watch {
            resp,
            parser: SseParser::default(),
            ready: Default::default(),
        })
    }

    /// The next event, within 20 s.
    pub async fn next(&mut self) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(e);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .map_err(|_| anyhow!("no event within 20 s"))??
                .ok_or_else(|| anyhow!("the stream ended"))?;
            self.ready.extend(self.parser.feed(&chunk));
        }
    }
}

pub fn event_key(e: &SseEvent) -> Result<(String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(&e.data)?;
    let key = decode_key(
        v["key"]
            .as_str()
            .ok_or_else(|| anyhow!("no key in {e:?}"))?,
    )
    .map_err(|e| anyhow!(e))?;
    let value = match v["value"].as_str() {
        Some(s) => Some(String::from_utf8(decode_key(s).map_err(|e| anyhow!(e))?)?),
        None => None,
    };
    Ok((String::from_utf8(key)?, value))
}
