//! `meshkv-test`: run the fault test suite against servers, check a recorded
//! history, or serve a stand-in API to try the suite on.

use clap::{Args, Parser, Subcommand};
use meshkv_faultsuite::check;
use meshkv_faultsuite::faults::FaultCmds;
use meshkv_faultsuite::history::History;
use meshkv_faultsuite::http::Endpoint;
use meshkv_faultsuite::kv::{self, Backend, ClientCfg};
use meshkv_faultsuite::kv739::{self, Kv739Cfg};
use meshkv_faultsuite::mock;
use meshkv_faultsuite::report::{self, Outcome};
use meshkv_faultsuite::workloads::{Fault, Sizes, Suite};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "meshkv-test",
    version,
    about = "The seed's fault test suite for any server speaking the meshkv HTTP API",
    long_about = "The seed's fault test suite for any server speaking the meshkv HTTP API \
(GET/PUT /kv/{key}, PUT returns the previous value), or for any store with a CS739 (2012) \
C library (--kv739 lib739kv.so: kv739_init/fail/recover/get/put/shutdown). Faults are \
injected by the commands you give (--kill-cmd, --restart-cmd, --partition-cmd, --heal-cmd), \
e.g. vm-setup/local-vms.sh for the local network-namespace emulation."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run tests: throughput, base, failure, partition, stress (`all` = these five),
    /// the no-session variants base-nosession, stress-nosession, and concurrent (6
    /// clients on 3 shared keys through a crash and a partition).
    Run(Box<RunArgs>),
    /// Check a recorded history (<test>.history.json): chain breaks, stale reads,
    /// lost writes. Exits 1 when it finds any.
    Check {
        /// History files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Serve a stand-in implementation of the API on 127.0.0.1 until killed:
    /// `shared` (one linearizable store) or `split` (no replication: broken).
    Mock {
        /// Number of endpoints.
        #[arg(long, default_value_t = 4)]
        n: usize,
        /// shared or split.
        #[arg(long, default_value = "shared")]
        mode: String,
    },
    /// (Internal) one client's CS739 library instance: load LIB, kv739_init it with
    /// SERVERS and answer JSON-line requests on stdin (started by `run --kv739`).
    #[command(hide = true)]
    Kv739Worker {
        /// The library.
        #[arg(long)]
        lib: PathBuf,
        /// Server names (host:port), comma-separated, in id order.
        #[arg(long, value_delimiter = ',', required = true)]
        servers: Vec<String>,
        /// The server that heads the init list.
        #[arg(long, default_value_t = 0)]
        first: usize,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The servers' HTTP addresses, comma-separated, in id order
    /// (http://10.77.0.1:8080,...); with --kv739, the host:port names the library's
    /// kv739_init, kv739_fail and kv739_recover take.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// Drive the servers through this CS739 (2012) C library (lib739kv.so) instead of
    /// HTTP: one worker process (its own kv739_init) per client, pinned to a server
    /// with kv739_fail/kv739_recover. The header options do not apply; the workers
    /// inherit the environment (e.g. MESHKV_CONSISTENCY for meshkv's libkv739).
    #[arg(long, value_name = "LIB")]
    kv739: Option<PathBuf>,
    /// Tests to run, in order.
    #[arg(default_value = "all")]
    tests: Vec<String>,
    /// Results folder (tables, JSON, plots); default results/faults-<unix time>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Command that crashes server {id}.
    #[arg(long)]
    kill_cmd: Option<String>,
    /// Command that restarts server {id} on its data.
    #[arg(long)]
    restart_cmd: Option<String>,
    /// Command that partitions groups {a} and {b} (comma-separated ids).
    #[arg(long)]
    partition_cmd: Option<String>,
    /// Command that heals every partition.
    #[arg(long)]
    heal_cmd: Option<String>,
    /// Longest a fault command may take (s).
    #[arg(long, default_value_t = 60)]
    fault_cmd_timeout_s: u64,
    /// Do not send the session token (X-Meshkv-After) in the five tests.
    #[arg(long)]
    no_session: bool,
    /// Request header carrying the session dependency.
    #[arg(long, default_value = "X-Meshkv-After")]
    after_header: String,
    /// Consistency level asked for on every request (meshkv: session or
    /// linearizable; empty: none, the server's default) [default: session]. With
    /// --kv739 [default: none]: passed to the workers as MESHKV_CONSISTENCY (what
    /// meshkv's libkv739 reads; other libraries ignore it); either way
    /// `linearizable` makes the tests assert linearizability.
    #[arg(long)]
    consistency: Option<String>,
    /// Request header carrying the level (empty: never sent).
    #[arg(long, default_value = "X-Meshkv-Consistency")]
    consistency_header: String,
    /// Response header carrying the version.
    #[arg(long, default_value = "X-Meshkv-Version")]
    version_header: String,
    /// Request header asking a lagging replica to wait (empty: never sent).
    #[arg(long, default_value = "X-Meshkv-Wait-Ms")]
    wait_header: String,
    /// Value of the wait header (ms).
    #[arg(long, default_value_t = 500)]
    wait_ms: u64,
    /// Deadline of one attempt at one server (ms), on top of the wait.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Deadline of a request over all its attempts (ms).
    #[arg(long, default_value_t = 10000)]
    deadline_ms: u64,
    /// Never fail over to another server.
    #[arg(long)]
    no_failover: bool,
    /// Bound on convergence after the last fault ends (ms).
    #[arg(long, default_value_t = 10000)]
    converge_bound_ms: u64,
    /// The server the failure test crashes (default: the last).
    #[arg(long)]
    kill_node: Option<usize>,
    /// The partition, as A|B (default: first half | second half, e.g. 0,1|2,3).
    #[arg(long)]
    groups: Option<String>,
    /// Shortest fault window (ms).
    #[arg(long, default_value_t = 2000)]
    fault_min_ms: u64,
    /// Longest fault window (ms).
    #[arg(long, default_value_t = 8000)]
    fault_max_ms: u64,
    /// How long to wait for every server's /health before starting (s).
    #[arg(long, default_value_t = 30)]
    ready_timeout_s: u64,
    /// Throughput: workers.
    #[arg(long, default_value_t = 10)]
    tp_workers: usize,
    /// Throughput: keys.
    #[arg(long, default_value_t = 100)]
    tp_keys: usize,
    /// Throughput: requests in all.
    #[arg(long, default_value_t = 5000)]
    tp_ops: usize,
    /// Consistency tests: keys.
    #[arg(long, default_value_t = 40)]
    keys: usize,
    /// Consistency tests: writes per key.
    #[arg(long, default_value_t = 500)]
    writes: usize,
    /// Consistency tests: a read after every N writes (0: none).
    #[arg(long, default_value_t = 4)]
    read_every: usize,
    /// Manual partition: keys.
    #[arg(long, default_value_t = 10)]
    mp_keys: usize,
    /// Key prefix (default: r<unix time>).
    #[arg(long)]
    run_id: Option<String>,
}

const FIVE: [&str; 5] = ["throughput", "base", "failure", "partition", "stress"];
const ALL: [&str; 8] = [
    "throughput",
    "base",
    "failure",
    "partition",
    "stress",
    "base-nosession",
    "stress-nosession",
    "concurrent",
];

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn parse_groups(s: &str, n: usize) -> Result<(Vec<usize>, Vec<usize>), String> {
    let parse = |p: &str| -> Result<Vec<usize>, String> {
        p.split(',')
            .filter(|x| !x.trim().is_empty())
            .map(|x| {
                x.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < n)
                    .ok_or_else(|| format!("--groups: {x:?} is not a server index below {n}"))
            })
            .collect()
    };
    match s.split_once('|') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a.is_empty() || b.is_empty() || a.iter().any(|i| b.contains(i)) {
                return Err("--groups: two disjoint, non-empty groups, like 0,1|2,3".into());
            }
            Ok((a, b))
        }
        None => Err("--groups: expected A|B, like 0,1|2,3".into()),
    }
}

async fn run(a: RunArgs) -> Result<bool, String> {
    let servers = a
        .servers
        .iter()
        .map(|s| Endpoint::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let n = servers.len();
    if n < 2 {
        return Err("--servers: at least two servers".into());
    }
    let mut tests: Vec<String> = Vec::new();
    for t in &a.tests {
        match t.as_str() {
            "all" => tests.extend(FIVE.iter().map(|s| s.to_string())),
            t if ALL.contains(&t) => tests.push(t.to_string()),
            t => {
                return Err(format!(
                    "unknown test {t:?}; tests: all, {}",
                    ALL.join(", ")
                ))
            }
        }
    }
    let (group_a, group_b) = match &a.groups {
        Some(g) => parse_groups(g, n)?,
        None => ((0..n / 2).collect(), (n / 2..n).collect()),
    };
    let kill_node = a.kill_node.unwrap_or(n - 1);
    if kill_node >= n {
        return Err(format!("--kill-node {kill_node}: only {n} servers"));
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("results/faults-{}", unix_now())));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut cfg = ClientCfg::new(servers);
    cfg.level = a.consistency.clone().unwrap_or_else(|| "session".into());
    if let Some(lib) = &a.kv739 {
        let lib =
            std::fs::canonicalize(lib).map_err(|e| format!("--kv739 {}: {e}", lib.display()))?;
        // Load it once here, so that a missing symbol is one clear line up front.
        kv739::Api::load(&lib)?;
        let mut k = Kv739Cfg::new(lib)?;
        cfg.level = a.consistency.clone().unwrap_or_default();
        if !cfg.level.is_empty() {
            k.env.push(("MESHKV_CONSISTENCY".into(), cfg.level.clone()));
        }
        cfg.backend = Backend::Kv739(Arc::new(k));
    }
    cfg.session = !a.no_session;
    cfg.after_header = a.after_header.clone();
    cfg.level_header = a.consistency_header.clone();
    cfg.version_header = a.version_header.clone();
    cfg.wait_header = a.wait_header.clone();
    cfg.wait_ms = a.wait_ms;
    cfg.attempt_timeout = Duration::from_millis(a.timeout_ms);
    cfg.request_deadline = Duration::from_millis(a.deadline_ms);
    cfg.failover = !a.no_failover;
    let suite = Suite {
        cfg: cfg.clone(),
        faults: FaultCmds {
            kill: a.kill_cmd.clone(),
            restart: a.restart_cmd.clone(),
            partition: a.partition_cmd.clone(),
            heal: a.heal_cmd.clone(),
            timeout: Duration::from_secs(a.fault_cmd_timeout_s),
        },
        out: out.clone(),
        run_id: a
            .run_id
            .clone()
            .unwrap_or_else(|| format!("r{}", unix_now())),
        sizes: Sizes {
            tp_workers: a.tp_workers.max(1),
            tp_keys: a.tp_keys.max(1),
            tp_ops: a.tp_ops,
            keys: a.keys.max(1),
            writes: a.writes.max(1),
            read_every: a.read_every,
            mp_keys: a.mp_keys.max(1),
        },
        converge_bound: Duration::from_millis(a.converge_bound_ms),
        kill_node,
        group_a,
        group_b,
        fault_min: Duration::from_millis(a.fault_min_ms),
        fault_max: Duration::from_millis(a.fault_max_ms.max(a.fault_min_ms)),
    };
    kv::wait_ready(
        &Arc::new(cfg.clone()),
        Duration::from_secs(a.ready_timeout_s),
    )
    .await?;
    match &a.kv739 {
        Some(lib) => eprintln!(
            "meshkv-test: {n} servers through {} (one worker process per client), results in {}",
            lib.display(),
            out.display()
        ),
        None => eprintln!(
            "meshkv-test: {} servers, session token {}, results in {}",
            n,
            if cfg.session { "sent" } else { "not sent" },
            out.display()
        ),
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    for t in &tests {
        let o = match t.as_str() {
            "throughput" => suite.throughput().await,
            "base" => suite.consistency("base", Fault::None, cfg.session).await,
            "failure" => suite.consistency("failure", Fault::Kill, cfg.session).await,
            "partition" => suite.manual_partition().await,
            "stress" => {
                suite
                    .consistency("stress", Fault::Partition, cfg.session)
                    .await
            }
            "concurrent" => suite.concurrent().await,
            "base-nosession" => {
                suite
                    .consistency("base-nosession", Fault::None, false)
                    .await
            }
            _ => {
                suite
                    .consistency("stress-nosession", Fault::Partition, false)
                    .await
            }
        };
        println!("{}", o.table());
        outcomes.push(o);
    }
    let summary = report::summary_table(&outcomes);
    println!("{summary}");
    let passed = outcomes.iter().all(Outcome::passed);
    let json = serde_json::json!({
        "servers": a.servers,
        "session": cfg.session,
        "passed": passed,
        "tests": outcomes,
    });
    let mut text = String::new();
    for o in &outcomes {
        text.push_str(&o.table());
        text.push('\n');
    }
    text.push_str(&summary);
    let writes = [
        (out.join("summary.txt"), summary.clone()),
        (out.join("tables.txt"), text),
        (
            out.join("summary.json"),
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
        ),
    ];
    for (p, body) in writes {
        if let Err(e) = std::fs::write(&p, body) {
            eprintln!("meshkv-test: cannot write {}: {e}", p.display());
        }
    }
    let failed: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            o.assertions
                .iter()
                .filter(|x| !x.ok)
                .map(move |x| format!("{}: {}: {}", o.test, x.name, x.detail))
        })
        .collect();
    let total: usize = outcomes.iter().map(|o| o.assertions.len()).sum();
    for f in &failed {
        eprintln!("meshkv-test: FAILED {f}");
    }
    println!(
        "meshkv-test: {} passed, {} failed (assertions over {} tests); results in {}",
        total - failed.len(),
        failed.len(),
        outcomes.len(),
        out.display()
    );
    Ok(passed)
}

fn check_files(files: &[PathBuf]) -> Result<bool, String> {
    let mut clean = true;
    for f in files {
        let h = History::read(f)?;
        let breaks = check::chain_breaks(&h.ops);
        let stale = check::stale_reads(&h.ops);
        let lost = h
            .final_values
            .as_ref()
            .map(|fv| check::lost_writes(&h.ops, fv));
        let lin = check::linearizability(&h.ops);
        println!(
            "{}: {} ops, {} chain breaks, {} stale reads, {} lost writes, linearizable: {}",
            f.display(),
            h.ops.len(),
            breaks.len(),
            stale.len(),
            lost.as_ref().map_or("-".into(), |l| l.len().to_string()),
            lin.verdict()
        );
        for k in lin.violations.iter().take(5) {
            println!("  not linearizable: key {k}");
        }
        for b in breaks.iter().take(5) {
            println!(
                "  chain break: key {} write #{} ({}) at server {} returned old {:?}, expected one of {:?}",
                b.key, b.index, b.value, b.server, b.got, b.expected
            );
        }
        for s in stale.iter().take(5) {
            println!(
                "  stale read: key {} at server {} returned {:?}, but {:?} was acknowledged before",
                s.key, s.server, s.got, s.newer
            );
        }
        for l in lost.iter().flatten().take(5) {
            println!(
                "  lost write: key {} converged to {:?}, expected one of {:?}",
                l.key, l.got, l.expected
            );
        }
        if !breaks.is_empty() || !stale.is_empty() || lost.is_some_and(|l| !l.is_empty()) {
            clean = false;
        }
    }
    Ok(clean)
}

async fn serve_mock(n: usize, mode: &str) -> Result<(), String> {
    let mode = match mode {
        "shared" => mock::Mode::Shared,
        "split" => mock::Mode::Split,
        m => return Err(format!("--mode {m}: shared or split")),
    };
    let addrs = mock::start(n, mode).await.map_err(|e| e.to_string())?;
    let list: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    println!("{}", list.join(","));
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A worker serves one client, one call at a time: one thread (and the blocking
    // thread of the library's calls) is enough.
    let mut builder = match cli.cmd {
        Cmd::Kv739Worker { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshkv-test: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(*a).await,
            Cmd::Check { files } => check_files(&files),
            Cmd::Mock { n, mode } => serve_mock(n, &mode).await.map(|()| true),
            Cmd::Kv739Worker {
                lib,
                servers,
                first,
            } => kv739::worker(&lib, servers, first).await.map(|()| true),
        }
    });
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("meshkv-test: {e}");
            ExitCode::from(2)
        }
    }
}
