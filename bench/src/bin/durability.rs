//! Durability and catch-up benchmark (issue 3): real `meshkv` server processes started
//! through the master's library API, loaded by in-process clients.
//!
//! * **catch-up**: 3 servers, `--keys` keys of `--value-len` bytes; server 2 is killed,
//!   `--changes` keys are overwritten on servers 0 and 1, server 2 restarts on its data
//!   directory. Reports the restart time (process start + links), the catch-up time
//!   (until all digests agree) and the bytes server 2 received from its peers since it
//!   restarted, against the size of the changed entries.
//! * **heal**: `--heal-servers` servers split in two halves, `--heal-keys` writes on
//!   each side (half of them on keys the other side also writes), then the links are
//!   restored: time until every digest agrees, and bytes moved.
//! * **put rate**: one server, one client: durable sequential puts/s and latency; then
//!   `--inflight` clients at once (group commit), with fsyncs/s from the server's
//!   `status.storage`.
//!
//! Prints progress on stderr, a table on stdout, and writes the figures as JSON
//! (`--json`). Scale down with `--keys`/`--changes` for a smoke run:
//! `bench/durability.sh --keys 20000 --changes 500 --heal-keys 2000 --rate-secs 2`.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use meshkv_core::NodeId;
use meshkv_master::cluster::{find_node_binary, traffic, walks_against, Master, MasterOpts};
use meshkv_master::script::Command;
use meshkv_node::client::Client;
use meshkv_node::net::NetTuning;
use meshkv_node::pki::Identity;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "meshkv durability, catch-up and heal benchmark")]
struct Args {
    /// Keys loaded before server 2 is killed (catch-up).
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Keys changed while server 2 is down (catch-up).
    #[arg(long, default_value_t = 10_000)]
    changes: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_len: usize,
    /// Concurrent loading clients.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Divergent writes per side of the partition (heal).
    #[arg(long, default_value_t = 10_000)]
    heal_keys: usize,
    /// Servers in the heal benchmark.
    #[arg(long, default_value_t = 5)]
    heal_servers: u64,
    /// Seconds of each put-rate measurement.
    #[arg(long, default_value_t = 5.0)]
    rate_secs: f64,
    /// Puts in flight in the concurrent put-rate measurement.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Sections to run (comma-separated): catchup, heal, rate.
    #[arg(long, value_delimiter = ',', default_value = "catchup,heal,rate")]
    only: Vec<String>,
    /// Where the JSON figures go.
    #[arg(long, default_value = "target/bench-durability.json")]
    json: PathBuf,
    /// Keep run directories under this directory (default: temporary, removed).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// How long `stabilize` may take before the run is declared failed, in seconds.
    #[arg(long, default_value_t = 600)]
    stabilize_timeout: u64,
}

// ------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------

struct Cluster {
    master: Master,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    fn new(args: &Args, name: &str) -> Result<Cluster> {
        let bin = find_node_binary().map_err(|e| anyhow!(e))?;
        let (run_dir, tmp) = match &args.run_dir {
            Some(d) => {
                let dir = d.join(format!(
                    "{name}-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_secs()
                ));
                (dir, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("meshkv-bench-{name}-"))
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let master = Master::new(MasterOpts {
            run_dir,
            bin,
            stabilize_timeout: Duration::from_secs(args.stabilize_timeout),
        })
        .map_err(|e| anyhow!(e))?;
        Ok(Cluster { master, _tmp: tmp })
    }

    async fn cmd(&mut self, cmd: Command) -> Result<()> {
        let mut out = Vec::new();
        self.master
            .run(cmd.clone(), &mut out)
            .await
            .map_err(|e| anyhow!("`{cmd}`: {e}"))
    }

    async fn stabilize(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.cmd(Command::Stabilize).await?;
        Ok(t.elapsed())
    }

    fn addr(&self, id: NodeId) -> Result<SocketAddr> {
        self.master
            .server_addr(id)
            .ok_or_else(|| anyhow!("server {id} has no address"))
    }

    async fn status(&mut self, id: NodeId) -> Result<Value> {
        let s = self.master.status(id).await.map_err(|e| anyhow!(e))?;
        Ok(serde_json::from_str(&s)?)
    }

    fn client(&self, cid: u64, links: &[NodeId]) -> Result<Client> {
        let tls = self
            .master
            .issue(Identity::client(cid))
            .map_err(|e| anyhow!(e))?;
        let mut c = Client::new(&tls, &NetTuning::default())?;
        for &s in links {
            c.link(s, self.addr(s)?);
        }
        Ok(c)
    }

    async fn shutdown(mut self) {
        self.master.shutdown().await;
    }
}

fn padded(tag: &str, len: usize) -> Vec<u8> {
    let mut v = tag.as_bytes().to_vec();
    v.resize(len.max(v.len()), b'.');
    v
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

/// Version and causal context of one entry on the wire, roughly.
const ENTRY_OVERHEAD: usize = 40;

fn payload(items: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    items
        .iter()
        .map(|(k, v)| (k.len() + v.len() + ENTRY_OVERHEAD) as u64)
        .sum()
}

/// Write `items` through `tasks` clients; task `t` prefers `servers[t % len]`.
async fn parallel_puts(
    c: &Cluster,
    items: Vec<(Vec<u8>, Vec<u8>)>,
    tasks: usize,
    servers: &[NodeId],
    first_cid: u64,
    label: &str,
) -> Result<Duration> {
    let total = items.len();
    let mut per_task: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); tasks.max(1)];
    let n = per_task.len();
    for (i, it) in items.into_iter().enumerate() {
        per_task[i % n].push(it);
    }
    let done = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for (t, work) in per_task.into_iter().enumerate() {
        let mut links = servers.to_vec();
        links.rotate_left((t + 1) % servers.len());
        let mut client = c.client(first_cid + t as u64, &links)?;
        let done = done.clone();
        handles.push(tokio::spawn(async move {
            for (k, v) in work {
                client
                    .put(&k, Some(&v))
                    .await
                    .map_err(|e| anyhow!("put {}: {e}", String::from_utf8_lossy(&k)))?;
                done.fetch_add(1, Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    let t = Instant::now();
    let progress = {
        let done = done.clone();
        let label = label.to_string();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let d = done.load(Relaxed);
                eprintln!(
                    "  {label}: {d}/{total} puts ({:.0}/s)",
                    d as f64 / t.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut result = Ok(());
    for h in handles {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(anyhow!("writer task: {e}")),
        }
    }
    progress.abort();
    result.map(|()| t.elapsed())
}

// ------------------------------------------------------------------------------------
// Sections
// ------------------------------------------------------------------------------------

#[derive(Serialize, Debug)]
struct CatchUp {
    servers: u64,
    keys: usize,
    changes: usize,
    value_len: usize,
    load_s: f64,
    load_puts_per_s: f64,
    load_stabilize_s: f64,
    restart_s: f64,
    catchup_s: f64,
    rejoin_total_s: f64,
    change_payload_bytes: u64,
    bytes_received: u64,
    bytes_received_per_change_payload: f64,
    catchup_bytes_received: u64,
    catchup_keys_received: u64,
    pushes_received: u64,
    walks_by_rejoiner: u64,
    walks_by_peers_since_restart: u64,
    identical: bool,
}

async fn catchup(args: &Args) -> Result<CatchUp> {
    eprintln!(
        "catch-up: 3 servers, {} keys, {} changes, {}-byte values",
        args.keys, args.changes, args.value_len
    );
    let mut c = Cluster::new(args, "catchup")?;
    let r = catchup_in(args, &mut c).await;
    c.shutdown().await;
    r
}

async fn catchup_in(args: &Args, c: &mut Cluster) -> Result<CatchUp> {
    for id in 0..3 {
        c.cmd(Command::JoinServer { id }).await?;
    }
    let items: Vec<(Vec<u8>, Vec<u8>)> = (0..args.keys)
        .map(|i| (key(i), padded(&format!("v0-{i}"), args.value_len)))
        .collect();
    let load = parallel_puts(c, items, args.writers, &[0, 1, 2], 1_000, "load").await?;
    eprintln!("  loaded {} keys in {load:.1?}; stabilizing", args.keys);
    let load_stabilize = c.stabilize().await?;
    let peer_walks_before =
        walks_against(&c.status(0).await?, 2) + walks_against(&c.status(1).await?, 2);

    c.cmd(Command::KillServer { id: 2 }).await?;
    let changes: BTreeSet<usize> = {
        let mut rng = rand::thread_rng();
        rand::seq::index::sample(&mut rng, args.keys, args.changes.min(args.keys))
            .into_iter()
            .collect()
    };
    let changes: Vec<(Vec<u8>, Vec<u8>)> = changes
        .into_iter()
        .map(|i| (key(i), padded(&format!("v1-{i}"), args.value_len)))
        .collect();
    let change_payload = payload(&changes);
    eprintln!("  server 2 killed; writing {} changes", changes.len());
    parallel_puts(
        c,
        changes,
        args.writers.min(16),
        &[0, 1],
        100_000,
        "changes",
    )
    .await?;
    c.stabilize().await?;

    eprintln!("  restarting server 2");
    let t = Instant::now();
    c.cmd(Command::JoinServer { id: 2 }).await?;
    let restart = t.elapsed();
    let catchup = c.stabilize().await?;
    let total = t.elapsed();
    let s2 = c.status(2).await?;
    let tr = traffic(&s2);
    let peer_walks_after =
        walks_against(&c.status(0).await?, 2) + walks_against(&c.status(1).await?, 2);
    let roots: Vec<Value> = {
        let mut v = Vec::new();
        for s in 0..3 {
            v.push(c.status(s).await?["digest_root"].clone());
        }
        v
    };
    let identical = roots.iter().all(|r| *r == roots[0]);
    eprintln!(
        "  server 2 back in {restart:.1?} + caught up in {catchup:.1?}; received {} B for {} B of changes",
        tr.bytes_received, change_payload
    );
    Ok(CatchUp {
        servers: 3,
        keys: args.keys,
        changes: args.changes.min(args.keys),
        value_len: args.value_len,
        load_s: load.as_secs_f64(),
        load_puts_per_s: args.keys as f64 / load.as_secs_f64(),
        load_stabilize_s: load_stabilize.as_secs_f64(),
        restart_s: restart.as_secs_f64(),
        catchup_s: catchup.as_secs_f64(),
        rejoin_total_s: total.as_secs_f64(),
        change_payload_bytes: change_payload,
        bytes_received: tr.bytes_received,
        bytes_received_per_change_payload: tr.bytes_received as f64 / change_payload.max(1) as f64,
        catchup_bytes_received: tr.catchup_bytes_received,
        catchup_keys_received: tr.catchup_keys_received,
        pushes_received: tr.pushes_received,
        walks_by_rejoiner: tr.walks,
        walks_by_peers_since_restart: peer_walks_after - peer_walks_before,
        identical,
    })
}

#[derive(Serialize, Debug)]
struct Heal {
    servers: u64,
    side_a: Vec<NodeId>,
    side_b: Vec<NodeId>,
    writes_per_side: usize,
    distinct_keys: usize,
    divergent_payload_bytes: u64,
    heal_s: f64,
    bytes_received: u64,
    walks: u64,
    identical: bool,
}

async fn heal(args: &Args) -> Result<Heal> {
    eprintln!(
        "heal: {} servers, {} divergent writes per side",
        args.heal_servers, args.heal_keys
    );
    let mut c = Cluster::new(args, "heal")?;
    let r = heal_in(args, &mut c).await;
    c.shutdown().await;
    r
}

async fn heal_in(args: &Args, c: &mut Cluster) -> Result<Heal> {
    let n = args.heal_servers.max(2);
    for id in 0..n {
        c.cmd(Command::JoinServer { id }).await?;
    }
    let side_a: Vec<NodeId> = (0..n / 2).collect();
    let side_b: Vec<NodeId> = (n / 2..n).collect();
    for &a in &side_a {
        for &b in &side_b {
            c.cmd(Command::BreakConnection { a, b }).await?;
        }
    }
    // Side A writes keys [0, w), side B [w/2, 3w/2): w/2 keys written on both sides.
    let w = args.heal_keys;
    let val = |side: &str, i: usize| padded(&format!("{side}-{i}"), args.value_len);
    let a: Vec<(Vec<u8>, Vec<u8>)> = (0..w).map(|i| (key(i), val("A", i))).collect();
    let b: Vec<(Vec<u8>, Vec<u8>)> = (w / 2..w / 2 + w).map(|i| (key(i), val("B", i))).collect();
    let divergent = payload(&a) + payload(&b);
    let (ca, cb) = (&*c, &*c);
    let (ra, rb) = tokio::join!(
        parallel_puts(ca, a, args.writers.min(16), &side_a, 1_000, "side A"),
        parallel_puts(cb, b, args.writers.min(16), &side_b, 2_000, "side B"),
    );
    ra?;
    rb?;
    c.stabilize().await?;
    let mut before = 0;
    for s in 0..n {
        before += traffic(&c.status(s).await?).bytes_received;
    }
    eprintln!("  healing");
    let t = Instant::now();
    for &a in &side_a {
        for &b in &side_b {
            c.cmd(Command::CreateConnection { a, b }).await?;
        }
    }
    c.stabilize().await?;
    let heal = t.elapsed();
    let mut after = 0;
    let mut walks = 0;
    let mut roots = Vec::new();
    for s in 0..n {
        let st = c.status(s).await?;
        let tr = traffic(&st);
        after += tr.bytes_received;
        walks += tr.walks;
        roots.push(st["digest_root"].clone());
    }
    eprintln!("  healed in {heal:.1?}");
    Ok(Heal {
        servers: n,
        side_a,
        side_b,
        writes_per_side: w,
        distinct_keys: w + w / 2,
        divergent_payload_bytes: divergent,
        heal_s: heal.as_secs_f64(),
        bytes_received: after - before,
        walks,
        identical: roots.iter().all(|r| *r == roots[0]),
    })
}

#[derive(Serialize, Debug)]
struct Rate {
    clients: usize,
    seconds: f64,
    puts: u64,
    puts_per_s: f64,
    fsyncs: u64,
    fsyncs_per_s: f64,
    puts_per_fsync: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

#[derive(Serialize, Debug)]
struct Rates {
    sequential: Rate,
    concurrent: Rate,
}

async fn rates(args: &Args) -> Result<Rates> {
    eprintln!(
        "put rate: 1 server, 1 client, then {} in flight",
        args.inflight
    );
    let mut c = Cluster::new(args, "rate")?;
    let r = async {
        c.cmd(Command::JoinServer { id: 0 }).await?;
        let sequential = rate(&mut c, args, 1).await?;
        let concurrent = rate(&mut c, args, args.inflight).await?;
        Ok(Rates {
            sequential,
            concurrent,
        })
    }
    .await;
    c.shutdown().await;
    r
}

async fn rate(c: &mut Cluster, args: &Args, clients: usize) -> Result<Rate> {
    let fsyncs0 = c.status(0).await?["storage"]["fsyncs"]
        .as_u64()
        .unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..clients {
        let mut client = c.client(10_000 + (clients * 1000 + t) as u64, &[0])?;
        let stop = stop.clone();
        let value = padded("rate", args.value_len);
        handles.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                let k = format!("rate-{clients}-{t}-{}", i % 10_000);
                let started = Instant::now();
                client.put(k.as_bytes(), Some(&value)).await?;
                h.record(started.elapsed().as_micros() as u64).ok();
                i += 1;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.rate_secs)).await;
    stop.store(true, Relaxed);
    let mut hist = Histogram::<u64>::new(3)?;
    for h in handles {
        hist.add(h.await.context("rate task")??)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let fsyncs = c.status(0).await?["storage"]["fsyncs"]
        .as_u64()
        .unwrap_or(0)
        - fsyncs0;
    let puts = hist.len();
    if puts == 0 {
        bail!("no put completed in {secs:.1} s");
    }
    let r = Rate {
        clients,
        seconds: secs,
        puts,
        puts_per_s: puts as f64 / secs,
        fsyncs,
        fsyncs_per_s: fsyncs as f64 / secs,
        puts_per_fsync: puts as f64 / fsyncs.max(1) as f64,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    };
    eprintln!(
        "  {clients} client(s): {:.0} puts/s, {:.0} fsyncs/s",
        r.puts_per_s, r.fsyncs_per_s
    );
    Ok(r)
}

// ------------------------------------------------------------------------------------
// Report
// ------------------------------------------------------------------------------------

#[derive(Serialize, Debug, Default)]
struct Report {
    catchup: Option<CatchUp>,
    heal: Option<Heal>,
    put_rate: Option<Rates>,
}

fn human_bytes(b: u64) -> String {
    humansize::format_size(b, humansize::BINARY)
}

fn print_table(r: &Report) {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::ASCII_MARKDOWN)
        .set_header(["measure", "value"]);
    let mut row = |k: String, v: String| {
        table.add_row([k, v]);
    };
    if let Some(c) = &r.catchup {
        row(
            format!(
                "catch-up: load {} keys x {} B (3 servers)",
                c.keys, c.value_len
            ),
            format!("{:.1} s ({:.0} puts/s)", c.load_s, c.load_puts_per_s),
        );
        row(
            "catch-up: restart of server 2 (open + links)".into(),
            format!("{:.2} s", c.restart_s),
        );
        row(
            format!("catch-up: {} changes until digests agree", c.changes),
            format!("{:.2} s", c.catchup_s),
        );
        row(
            "catch-up: restart + catch-up, start to digests agree".into(),
            format!("{:.2} s", c.rejoin_total_s),
        );
        row(
            "catch-up: changed entries (key+value+40 B)".into(),
            human_bytes(c.change_payload_bytes),
        );
        row(
            "catch-up: bytes received by server 2".into(),
            format!(
                "{} ({:.2}x)",
                human_bytes(c.bytes_received),
                c.bytes_received_per_change_payload
            ),
        );
        row(
            "catch-up: of which sync answers / keys".into(),
            format!(
                "{} / {}",
                human_bytes(c.catchup_bytes_received),
                c.catchup_keys_received
            ),
        );
        row(
            "catch-up: pushes received / walks by 2 / by peers".into(),
            format!(
                "{} / {} / {}",
                c.pushes_received, c.walks_by_rejoiner, c.walks_by_peers_since_restart
            ),
        );
        row("catch-up: stores identical".into(), c.identical.to_string());
    }
    if let Some(h) = &r.heal {
        row(
            format!(
                "heal: {:?} vs {:?}, {} writes per side",
                h.side_a, h.side_b, h.writes_per_side
            ),
            format!("{:.2} s", h.heal_s),
        );
        row(
            "heal: bytes received (all servers) / divergent".into(),
            format!(
                "{} / {}",
                human_bytes(h.bytes_received),
                human_bytes(h.divergent_payload_bytes)
            ),
        );
        row(
            "heal: walks / stores identical".into(),
            format!("{} / {}", h.walks, h.identical),
        );
    }
    if let Some(p) = &r.put_rate {
        for (name, x) in [("sequential", &p.sequential), ("concurrent", &p.concurrent)] {
            row(
                format!("put rate {name} ({} in flight)", x.clients),
                format!("{:.0} puts/s", x.puts_per_s),
            );
            row(
                format!("put rate {name}: fsyncs/s, puts per fsync"),
                format!("{:.0}, {:.1}", x.fsyncs_per_s, x.puts_per_fsync),
            );
            row(
                format!("put rate {name}: latency p50 / p99"),
                format!("{} / {} us", x.p50_us, x.p99_us),
            );
        }
    }
    println!("{table}");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let want = |s: &str| args.only.iter().any(|o| o == s);
    let started = Instant::now();
    let mut report = Report::default();
    if want("catchup") {
        report.catchup = Some(catchup(&args).await.context("catch-up")?);
    }
    if want("heal") {
        report.heal = Some(heal(&args).await.context("heal")?);
    }
    if want("rate") {
        report.put_rate = Some(rates(&args).await.context("put rate")?);
    }
    eprintln!("done in {:.1?}", started.elapsed());
    print_table(&report);
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", args.json.display()))?;
    eprintln!("figures written to {}", args.json.display());
    Ok(())
}
