//! HTTP load generator: GET and PUT throughput and latency against a running cluster.
//!
//! ```text
//! http_load --endpoints http://127.0.0.1:8000,http://127.0.0.1:8001,http://127.0.0.1:8002 \
//!           [--connections 1,64] [--seconds 5] [--keys 1000] [--value-size 100]
//!           [--cacert ca.pem --cert client.pem --key client.key] [--token-file FILE]
//!           [--target meshkv|etcd|redis] [--label NAME] [--json FILE]
//! ```
//!
//! `--target` picks the protocol, so that the same load (same connections, keys,
//! values, one request at a time per connection) runs against meshkv and its peers:
//! `meshkv` is `PUT`/`GET /kv/{key}`; `etcd` is etcd's JSON gateway (`POST /v3/kv/put`
//! and `POST /v3/kv/range` with base64 keys and values; ranges are etcd's default,
//! linearizable); `redis` is `SET`/`GET` in RESP over plain TCP (endpoints
//! `redis://host:port` or `host:port`). `--json` writes one record per phase.
//!
//! For each connection count it runs a PUT phase, then a GET phase, each for
//! `--seconds`: every connection is a keep-alive HTTP/1.1 connection to one endpoint
//! (round robin over the endpoints), sending one request at a time on random keys out
//! of `--keys` (written once before the first run, so GETs find values). It prints
//! one line per phase: requests, ops/s, p50/p99/max latency, errors. Bounded in time
//! and count; sends traffic only to the endpoints given. Not part of the test suite:
//! `bench/http-load.sh` starts a local cluster and runs it.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use meshkv_node::cli::{tls_config, Bytes, Endpoint, Method};
#[path = "../rawhttp.rs"]
mod rawhttp;
use meshkv_node::http::encode_key;
use rand::{Rng, SeedableRng};
use rawhttp::{RawClient, RawConn};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "HTTP load generator for meshkv")]
struct Args {
    /// Server endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Connection counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    connections: Vec<usize>,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// CA for https endpoints.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate.
    #[arg(long = "cert", id = "client_cert", requires = "client_key")]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long = "key", id = "client_key", requires = "client_cert")]
    key: Option<PathBuf>,
    /// Bearer token file.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Protocol of the endpoints: meshkv, etcd or redis.
    #[arg(long, value_enum, default_value = "meshkv")]
    target: Target,
    /// meshkv's consistency level for every request (`session` or `linearizable`),
    /// sent as `X-Meshkv-Consistency`.
    #[arg(long, default_value = "session")]
    consistency: String,
    /// Name of the system under test in the output (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// Operations to run per connection count, in order (put, get).
    #[arg(long, value_delimiter = ',', default_value = "put,get")]
    ops: Vec<String>,
    /// Write one JSON record per phase to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Target {
    Meshkv,
    Etcd,
    Redis,
}

#[derive(serde::Serialize)]
struct PhaseResult {
    system: String,
    op: &'static str,
    connections: usize,
    seconds: f64,
    requests: u64,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A RESP (redis) connection: one command at a time.
struct Resp {
    r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    line: Vec<u8>,
    buf: Vec<u8>,
}

impl Resp {
    async fn connect(addr: &str) -> Result<Resp> {
        let addr = addr.strip_prefix("redis://").unwrap_or(addr);
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (r, w) = tcp.into_split();
        Ok(Resp {
            r: tokio::io::BufReader::new(r),
            w,
            line: Vec::new(),
            buf: Vec::new(),
        })
    }

    /// Send one command; Ok(true) for a value or OK, Ok(false) for nil.
    async fn call(&mut self, args: &[&[u8]]) -> Result<bool> {
        use std::io::Write;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.buf.clear();
        write!(self.buf, "*{}\r\n", args.len())?;
        for a in args {
            write!(self.buf, "${}\r\n", a.len())?;
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&self.buf).await?;
        self.line.clear();
        if self.r.read_until(b'\n', &mut self.line).await? == 0 {
            bail!("redis closed the connection");
        }
        let text = String::from_utf8_lossy(&self.line).trim_end().to_string();
        match self.line.first() {
            Some(b'+') | Some(b':') => Ok(true),
            Some(b'$') => {
                let n: i64 = text[1..].parse()?;
                if n < 0 {
                    return Ok(false);
                }
                let mut body = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut body).await?;
                Ok(true)
            }
            _ => bail!("redis: {text}"),
        }
    }
}

/// One connection to the system under test.
enum Link {
    Http(RawConn),
    Redis(Resp),
}

struct Keys {
    target: Target,
    /// The `X-Meshkv-Consistency` header of meshkv requests.
    level: Vec<(&'static str, String)>,
    paths: Vec<String>,
    raw: Vec<Vec<u8>>,
    etcd_put: Vec<Bytes>,
    etcd_get: Vec<Bytes>,
}

impl Keys {
    fn new(target: Target, n: usize, value: &[u8], level: &str) -> Keys {
        let raw: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("load-{i:06}").into_bytes())
            .collect();
        let (mut etcd_put, mut etcd_get) = (Vec::new(), Vec::new());
        if target == Target::Etcd {
            let v = base64(value);
            for k in &raw {
                let k = base64(k);
                etcd_put.push(Bytes::from(format!(r#"{{"key":"{k}","value":"{v}"}}"#)));
                etcd_get.push(Bytes::from(format!(r#"{{"key":"{k}"}}"#)));
            }
        }
        Keys {
            target,
            level: vec![("x-meshkv-consistency", level.to_string())],
            paths: (0..n).map(key).collect(),
            raw,
            etcd_put,
            etcd_get,
        }
    }
}

async fn open(client: &RawClient, ep: &Endpoint, raw: &str, target: Target) -> Result<Link> {
    Ok(match target {
        Target::Redis => Link::Redis(Resp::connect(raw).await?),
        _ => Link::Http(client.connect(ep).await?),
    })
}

impl Link {
    fn is_closed(&self) -> bool {
        match self {
            Link::Http(c) => c.is_closed(),
            Link::Redis(_) => false,
        }
    }

    /// One operation on key `i`; Ok(true) when the system answered as expected.
    async fn op(&mut self, keys: &Keys, op: Op, i: usize, value: &Bytes) -> Result<bool> {
        match self {
            Link::Redis(r) => {
                let k = &keys.raw[i];
                match op {
                    Op::Put => r.call(&[b"SET", k, value]).await,
                    Op::Get => r.call(&[b"GET", k]).await.map(|_| true),
                }
            }
            Link::Http(c) => {
                let r = match (keys.target, op) {
                    (Target::Etcd, Op::Put) => {
                        c.send(Method::POST, "/v3/kv/put", &[], keys.etcd_put[i].clone())
                            .await?
                    }
                    (Target::Etcd, Op::Get) => {
                        c.send(Method::POST, "/v3/kv/range", &[], keys.etcd_get[i].clone())
                            .await?
                    }
                    (_, Op::Put) => {
                        c.send(Method::PUT, &keys.paths[i], &keys.level, value.clone())
                            .await?
                    }
                    (_, Op::Get) => {
                        c.send(Method::GET, &keys.paths[i], &keys.level, Bytes::new())
                            .await?
                    }
                };
                Ok(matches!(r, 200 | 201 | 404))
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
}

fn key(i: usize) -> String {
    format!("/kv/{}", encode_key(format!("load-{i:06}").as_bytes()))
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    client: RawClient,
    ep: Endpoint,
    raw: String,
    keys: Arc<Keys>,
    op: Op,
    value: Bytes,
    until: Instant,
) -> Result<Tally> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut conn = open(&client, &ep, &raw, keys.target)
        .await
        .with_context(|| format!("connect to {raw}"))?;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let n = keys.raw.len();
    while Instant::now() < until {
        let i = rng.gen_range(0..n);
        if conn.is_closed() {
            conn = open(&client, &ep, &raw, keys.target).await?;
        }
        let t = Instant::now();
        match conn.op(&keys, op, i, &value).await {
            Ok(true) => {
                ok += 1;
                let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
            }
            Ok(false) => errors += 1,
            Err(_) => {
                errors += 1;
                if let Link::Redis(_) = conn {
                    conn = open(&client, &ep, &raw, keys.target).await?;
                }
            }
        }
    }
    Ok(Tally { hist, ok, errors })
}

struct Ctx {
    client: RawClient,
    eps: Vec<Endpoint>,
    raw: Vec<String>,
    keys: Arc<Keys>,
    value: Bytes,
    system: String,
}

async fn phase(ctx: &Ctx, op: Op, conns: usize, args: &Args) -> Result<PhaseResult> {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let e = i % ctx.eps.len();
        tasks.push(tokio::spawn(worker(
            ctx.client.clone(),
            ctx.eps[e].clone(),
            ctx.raw[e].clone(),
            ctx.keys.clone(),
            op,
            ctx.value.clone(),
            until,
        )));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let tally = t.await??;
        hist.add(&tally.hist)?;
        ok += tally.ok;
        errors += tally.errors;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let r = PhaseResult {
        system: ctx.system.clone(),
        op: if op == Op::Put { "put" } else { "get" },
        connections: conns,
        seconds: secs,
        requests: ok,
        ops_per_s: ok as f64 / secs,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
        errors,
    };
    println!(
        "{:<6} {:<4} conns={:<3} requests={:<7} ops/s={:>8.0}  p50={:>7.2}ms  p99={:>7.2}ms  max={:>8.2}ms  errors={}",
        r.system,
        if op == Op::Put { "PUT" } else { "GET" },
        conns,
        ok,
        r.ops_per_s,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        errors
    );
    Ok(r)
}

async fn preload(ctx: &Ctx) -> Result<()> {
    let n = ctx.keys.raw.len();
    let lanes = 16.min(n).max(1);
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let client = ctx.client.clone();
        let e = lane % ctx.eps.len();
        let (ep, raw) = (ctx.eps[e].clone(), ctx.raw[e].clone());
        let value = ctx.value.clone();
        let keys = ctx.keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = open(&client, &ep, &raw, keys.target).await?;
            for i in (lane..n).step_by(lanes) {
                if !conn.op(&keys, Op::Put, i, &value).await? {
                    bail!("preload of key {i} refused");
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let eps = args
        .endpoints
        .iter()
        .map(|e| {
            if args.target == Target::Redis {
                // Only the raw address is used; any parsable endpoint will do.
                Endpoint::parse("http://127.0.0.1:1").map_err(|e| anyhow!(e))
            } else {
                Endpoint::parse(e).map_err(|e| anyhow!(e))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if eps.is_empty() || args.keys == 0 || args.connections.is_empty() {
        bail!("need endpoints, keys and connection counts");
    }
    let tls = match &args.cacert {
        Some(ca) => Some(
            tls_config(ca, args.cert.as_deref().zip(args.key.as_deref()))
                .map_err(|e| anyhow!(e))?,
        ),
        None => None,
    };
    let token = match &args.token_file {
        Some(f) => Some(std::fs::read_to_string(f)?.trim().to_string()),
        None => None,
    };
    let client = RawClient::new(tls, token, Duration::from_secs(30));
    println!(
        "http_load: {} endpoints, {} keys, {}-byte values, {} s per phase{}",
        eps.len(),
        args.keys,
        args.value_size,
        args.seconds,
        if args.target == Target::Meshkv {
            format!(", consistency={}", args.consistency)
        } else {
            String::new()
        }
    );
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let ctx = Ctx {
        client,
        raw: args.endpoints.clone(),
        eps,
        keys: Arc::new(Keys::new(args.target, args.keys, &value, &args.consistency)),
        value,
        system: args
            .label
            .clone()
            .unwrap_or_else(|| format!("{:?}", args.target).to_lowercase()),
    };
    let t = Instant::now();
    preload(&ctx).await?;
    println!("preloaded {} keys in {:.2?}", args.keys, t.elapsed());
    let mut results = Vec::new();
    for &c in &args.connections {
        let c = c.max(1);
        for o in &args.ops {
            let op = match o.as_str() {
                "put" => Op::Put,
                "get" => Op::Get,
                other => bail!("unknown op {other:?} (put, get)"),
            };
            let r = phase(&ctx, op, c, &args).await?;
            if r.requests == 0 {
                bail!(
                    "{} {} at {} connections: no request succeeded",
                    r.system,
                    r.op,
                    c
                );
            }
            results.push(r);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http_load: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http_load: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
