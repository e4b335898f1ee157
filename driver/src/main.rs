//! `master`: reads commands from stdin, one per line, and runs them in order against
//! real meshkv server and client processes. Only `get` and `printStore` print to stdout;
//! errors and warnings go to stderr, one line each, and the master goes on.

use clap::Parser;
use meshkv_master::cluster::{find_node_binary, Master, MasterOpts};
use meshkv_master::script::parse_line;
use meshkv_master::sim_master::SimMaster;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
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
    /// With --sim: print each command's messages and sync steps on stderr.
    #[arg(long, requires = "sim")]
    trace: bool,
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
                let started = std::time::Instant::now();
                let mut out = stdout.lock();
                if let Err(e) = master.run(cmd, &mut out).await {
                    let _ = out.flush();
                    eprintln!("line {n}: {e}");
                }
                let t = timing.entry(name).or_default();
                t.0 += 1;
                t.1 += started.elapsed();
            }
            Err(e) => eprintln!("line {n}: {e}"),
        }
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
