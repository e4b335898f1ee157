//! HTTP load generator: GET and PUT throughput and latency against a running cluster.
//!
//! ```text
//! http_load --endpoints http://127.0.0.1:8000,http://127.0.0.1:8001,http://127.0.0.1:8002 \
//!           [--connections 1,64] [--seconds 5] [--keys 1000] [--value-size 100]
//!           [--cacert ca.pem --cert client.pem --key client.key] [--token-file FILE]
//! ```
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
use meshkv_node::cli::{tls_config, Bytes, Endpoint, HttpClient, Method};
use meshkv_node::http::encode_key;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
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

async fn worker(
    client: HttpClient,
    ep: Endpoint,
    op: Op,
    keys: usize,
    value: Bytes,
    until: Instant,
) -> Result<Tally> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut conn = client
        .connect(&ep)
        .await
        .with_context(|| format!("connect to {ep}"))?;
    let mut rng = rand::rngs::StdRng::from_entropy();
    while Instant::now() < until {
        let path = key(rng.gen_range(0..keys));
        let (m, body) = match op {
            Op::Put => (Method::PUT, value.clone()),
            Op::Get => (Method::GET, Bytes::new()),
        };
        if conn.is_closed() {
            conn = client.connect(&ep).await?;
        }
        let t = Instant::now();
        match conn.send(m, &path, &[], body).await {
            Ok(r) if matches!(r.status, 200 | 201 | 404) => {
                ok += 1;
                let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
            }
            Ok(_) | Err(_) => errors += 1,
        }
    }
    Ok(Tally { hist, ok, errors })
}

async fn phase(
    client: &HttpClient,
    eps: &[Endpoint],
    op: Op,
    conns: usize,
    args: &Args,
) -> Result<()> {
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(worker(
            client.clone(),
            eps[i % eps.len()].clone(),
            op,
            args.keys,
            value.clone(),
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
    println!(
        "{:<4} conns={:<3} requests={:<7} ops/s={:>8.0}  p50={:>7.2}ms  p99={:>7.2}ms  max={:>8.2}ms  errors={}",
        if op == Op::Put { "PUT" } else { "GET" },
        conns,
        ok,
        ok as f64 / secs,
        ms(0.50),
        ms(0.99),
        hist.max() as f64 / 1000.0,
        errors
    );
    Ok(())
}

async fn preload(client: &HttpClient, eps: &[Endpoint], args: &Args) -> Result<()> {
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let lanes = 16.min(args.keys).max(1);
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let client = client.clone();
        let ep = eps[lane % eps.len()].clone();
        let value = value.clone();
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect(&ep).await?;
            for i in (lane..keys).step_by(lanes) {
                let r = conn.send(Method::PUT, &key(i), &[], value.clone()).await?;
                if !matches!(r.status, 200 | 201) {
                    bail!("preload {}: {} {}", key(i), r.status, r.line());
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
        .map(|e| Endpoint::parse(e).map_err(|e| anyhow!(e)))
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
    let client = HttpClient::new(tls, token, Duration::from_secs(30));
    println!(
        "http_load: {} endpoints, {} keys, {}-byte values, {} s per phase",
        eps.len(),
        args.keys,
        args.value_size,
        args.seconds
    );
    let t = Instant::now();
    preload(&client, &eps, &args).await?;
    println!("preloaded {} keys in {:.2?}", args.keys, t.elapsed());
    for &c in &args.connections {
        let c = c.max(1);
        phase(&client, &eps, Op::Put, c, &args).await?;
        phase(&client, &eps, Op::Get, c, &args).await?;
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
