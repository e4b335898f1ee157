//! `master`: reads commands from stdin, one per line, and runs them in order against
//! real meshkv server and client processes. Only `get` and `printStore` print to stdout;
//! errors and warnings go to stderr, one line each, and the master goes on.
//!
//! # Pipelined puts
//! A `put` prints nothing, so the master need not wait for one before reading the next
//! command when nobody could tell the difference. It hands the put to its client
//! process and goes on while the put is in flight, under three rules:
//! * **Any other command waits** for every put in flight first (a `get`, `printStore`,
//!   `stabilize`, `killServer`, a link change... sees every earlier put done, as if
//!   they had run one after another).
//! * **A key in flight from another client waits**: two clients' puts to one key are
//!   ordered by their timestamps, so the second is sent only after the first is
//!   durable, as the seed's sequential order requires.
//! * **A client's own puts** may queue (at most [`PER_CLIENT`]): its process runs them
//!   one after another, in order, each with the session of the ones before.
//!
//! A put still returns only after its server made it durable; an error still gets one
//! line on stderr, naming the line of the put. `--sequential` turns this off.

use clap::Parser;
use meshkv_master::cluster::{find_node_binary, Master, MasterOpts, PendingPut};
use meshkv_master::script::parse_line;
use meshkv_master::script::Command;
use meshkv_master::sim_master::SimMaster;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    name = "master",
    version,
    about = "Drive a meshkv cluster with commands on stdin"
)]
struct Args {
    /// Keep certificates, data, logs and the pid list here (kept after exit). Default:
    /// a fresh temporary directory, removed at exit.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Seconds `stabilize` waits before reporting that stores still differ.
    #[arg(long, default_value_t = 30)]
    stabilize_timeout: u64,
    /// At exit, print on stderr how long each kind of command took in total.
    #[arg(long)]
    timing: bool,
    /// Run the commands against an in-memory simulated cluster (the same node core,
    /// no processes) instead of real servers and clients.
    #[arg(long)]
    sim: bool,
    /// Run every put to its end before reading the next command (no pipelining).
    #[arg(long)]
    sequential: bool,
    /// With --sim: print each command's messages and sync steps on stderr.
    #[arg(long, requires = "sim")]
    trace: bool,
}

/// Puts in flight at most, over all clients.
const IN_FLIGHT: usize = 64;
/// Puts in flight at most per client.
const PER_CLIENT: usize = 16;

/// The puts in flight, oldest first, each with its line number.
#[derive(Default)]
struct Pipeline {
    puts: VecDeque<(u64, PendingPut)>,
}

impl Pipeline {
    /// Whether a put by `client` to `key` must wait for older puts.
    fn must_wait(&self, client: u64, key: &str) -> bool {
        self.puts.len() >= IN_FLIGHT
            || self
                .puts
                .iter()
                .filter(|(_, p)| p.client() == client)
                .count()
                >= PER_CLIENT
            || self
                .puts
                .iter()
                .any(|(_, p)| p.key() == key && p.client() != client)
    }

    /// Wait for the oldest put; its error goes to stderr with its line.
    async fn finish_oldest(&mut self) {
        if let Some((line, p)) = self.puts.pop_front() {
            if let Err(e) = p.finish().await {
                eprintln!("line {line}: {e}");
            }
        }
    }

    async fn drain(&mut self) {
        while !self.puts.is_empty() {
            self.finish_oldest().await;
        }
    }
}

/// `master --sim`: the same commands and output, against [`SimMaster`].
fn run_sim(trace: bool) {
    use std::io::BufRead;
    let mut master = SimMaster::new();
    master.set_trace(trace);
    let stdout = std::io::stdout();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let n = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("master: cannot read stdin: {e}");
                break;
            }
        };
        match parse_line(&line) {
            Ok(None) => {}
            Ok(Some(cmd)) => {
                if trace {
                    eprintln!("# {n}: {cmd}");
                }
                let mut out = stdout.lock();
                if let Err(e) = master.run(cmd, &mut out) {
                    let _ = out.flush();
                    eprintln!("line {n}: {e}");
                }
                if trace {
                    for t in master.take_trace() {
                        eprintln!("#   {t}");
                    }
                }
            }
            Err(e) => eprintln!("line {n}: {e}"),
        }
    }
}

fn registry_dir() -> PathBuf {
    std::env::var_os("MESHKV_RUNS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("meshkv-runs"))
}

async fn run(args: Args) -> Result<(), String> {
    let (run_dir, temporary) = match args.run_dir {
        Some(d) => (d, false),
        None => {
            let d = std::env::temp_dir().join(format!("meshkv-master-{}", std::process::id()));
            (d, true)
        }
    };
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
    let run_dir = std::fs::canonicalize(&run_dir).unwrap_or(run_dir);
    // Record where our pid list is, so cleanup.sh can find the children by pid.
    let reg = registry_dir();
    let reg_file = reg.join(std::process::id().to_string());
    if std::fs::create_dir_all(&reg).is_ok() {
        let _ = std::fs::write(&reg_file, format!("{}\n", run_dir.display()));
    }
    let opts = MasterOpts {
        run_dir: run_dir.clone(),
        bin: find_node_binary()?,
        stabilize_timeout: Duration::from_secs(args.stabilize_timeout),
    };
    let mut master = Master::new(opts)?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u64;
    let stdout = std::io::stdout();
    let mut timing: std::collections::BTreeMap<String, (u64, Duration)> = Default::default();
    let mut pipe = Pipeline::default();
    // Time spent waiting for puts in flight counts as put time.
    let mut put_wait = Duration::ZERO;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                eprintln!("master: cannot read stdin: {e}");
                break;
            }
        };
        n += 1;
        match parse_line(&line) {
            Ok(None) => {}
            Ok(Some(cmd)) => {
                let name = cmd.to_string();
                let name = name.split_whitespace().next().unwrap_or("?").to_string();
                let waited = Instant::now();
                let pipelined = match &cmd {
                    Command::Put { client, key, .. } if !args.sequential => {
                        while pipe.must_wait(*client, key) {
                            pipe.finish_oldest().await;
                        }
                        true
                    }
                    _ => {
                        pipe.drain().await;
                        false
                    }
                };
                put_wait += waited.elapsed();
                let started = Instant::now();
                let result = match cmd {
                    Command::Put { client, key, value } if pipelined => {
                        match master.start_put(client, key, value).await {
                            Ok(p) => {
                                pipe.puts.push_back((n, p));
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    cmd => master.run(cmd, &mut stdout.lock()).await,
                };
                if let Err(e) = result {
                    let _ = stdout.lock().flush();
                    eprintln!("line {n}: {e}");
                }
                let t = timing.entry(name).or_default();
                t.0 += 1;
                t.1 += started.elapsed();
            }
            Err(e) => eprintln!("line {n}: {e}"),
        }
    }
    let waited = Instant::now();
    pipe.drain().await;
    put_wait += waited.elapsed();
    if let Some(t) = timing.get_mut("put") {
        t.1 += put_wait;
    }
    if args.timing {
        for (name, (count, total)) in &timing {
            eprintln!(
                "timing: {name} count={count} total_ms={:.3} mean_us={:.1}",
                total.as_secs_f64() * 1e3,
                total.as_secs_f64() * 1e6 / (*count).max(1) as f64
            );
        }
    }
    master.shutdown().await;
    let _ = std::fs::remove_file(&reg_file);
    if temporary {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.sim {
        run_sim(args.trace);
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("master: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("master: {e}");
            ExitCode::from(1)
        }
    }
}
