//! `meshkv-sim`: seeded fault schedules over the simulated cluster
//! ([`meshkv_core::vopr`]), or with `--registers` over the linearizable registers
//! ([`meshkv_core::paxos::schedule`], every key's history judged by the
//! linearizability checker). Prints the seeds run, the faults injected by kind and the
//! violations; a failing seed prints the one command that replays it (with its trace
//! or history).

use clap::Parser;
use meshkv_core::vopr::{self, Config, Mutation};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Seeded fault schedules over the simulated cluster")]
struct Args {
    /// How many seeds to run (from --first).
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run this one seed only, and print its trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Steps per schedule.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Plant a bug (reuse-dot, skip-dep-check, trim-ignoring-members) to show it is
    /// caught: the run then fails when no seed catches it.
    #[arg(long)]
    mutation: Option<String>,
    /// With --seed: also trace every change of this key on every server.
    #[arg(long)]
    watch: Option<String>,
    /// Run the linearizable registers' schedules instead (mutations:
    /// acceptor-ignores-promise, acceptor-forgets-on-crash).
    #[arg(long)]
    registers: bool,
}

/// `--registers`: the register schedules; returns the exit code.
fn registers(args: &Args) -> i32 {
    use meshkv_core::linearizable::Kind;
    use meshkv_core::paxos::schedule::{self, Plant};
    let plant = match args.mutation.as_deref() {
        None => None,
        Some(name) => match Plant::ALL.iter().find(|p| p.name() == name) {
            Some(p) => Some(*p),
            None => {
                let names: Vec<&str> = Plant::ALL.iter().map(|p| p.name()).collect();
                eprintln!(
                    "meshkv-sim: unknown register mutation {name:?}; known: {}",
                    names.join(", ")
                );
                return 2;
            }
        },
    };
    let config = |seed| {
        let mut c = schedule::Config::for_seed(seed);
        c.plant = plant;
        c
    };
    let mutation_arg = plant
        .map(|p| format!(" --mutation {}", p.name()))
        .unwrap_or_default();
    if let Some(seed) = args.seed {
        let r = schedule::run(config(seed));
        println!("{:?}", r.config);
        let show = |v: &Option<Vec<u8>>| {
            v.as_ref()
                .map_or("-".to_string(), |v| String::from_utf8_lossy(v).into_owned())
        };
        for (i, (key, op)) in r.history.iter().enumerate() {
            let what = match &op.kind {
                Kind::Get { value } => format!("get -> {}", show(value)),
                Kind::Put { value, previous } => format!(
                    "put {} -> previous {}",
                    show(value),
                    previous.as_ref().map_or("?".to_string(), show)
                ),
                Kind::Cas { expect, value, ok } => {
                    format!("cas {} => {} ok={ok}", show(expect), show(value))
                }
            };
            let ret = op.ret.map_or("no answer".to_string(), |r| r.to_string());
            println!(
                "{i:4} {} client {} [{} .. {ret}] {what}",
                String::from_utf8_lossy(key),
                op.client,
                op.invoke
            );
        }
        println!("faults: {:?}", r.faults);
        for v in &r.violations {
            println!("VIOLATION: {v}");
        }
        return i32::from(!r.violations.is_empty());
    }
    let started = Instant::now();
    let mut f = schedule::Faults::default();
    let (mut done, mut open, mut failed) = (0u64, 0u64, Vec::new());
    // Seeds actually run (a planted bug stops the run at the seed that catches it).
    let mut ran = 0u64;
    for seed in args.first..args.first + args.seeds {
        ran += 1;
        let r = schedule::run(config(seed));
        done += r.completed;
        open += r.indeterminate;
        f.loss += r.faults.loss;
        f.duplicate += r.faults.duplicate;
        f.acceptor_crash += r.faults.acceptor_crash;
        f.abandoned += r.faults.abandoned;
        f.partition += r.faults.partition;
        f.retry += r.faults.retry;
        f.indeterminate += r.faults.indeterminate;
        f.session_write += r.faults.session_write;
        if !r.violations.is_empty() {
            if failed.is_empty() {
                eprintln!("seed {seed}: {}", r.violations.join("; "));
                eprintln!(
                    "replay: cargo run --release -p meshkv-master --bin meshkv-sim -- --registers --seed {seed}{mutation_arg}"
                );
            }
            failed.push(seed);
            if plant.is_some() {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "meshkv-sim --registers: {} seeds, {done} operations answered, {open} without an answer, faults: acceptor-crash={} partition={} loss={} duplicate={} retry={} abandoned={} session-write={} unknowable-retry={}, {secs:.1} s ({:.0} seeds/min)",
        ran,
        f.acceptor_crash,
        f.partition,
        f.loss,
        f.duplicate,
        f.retry,
        f.abandoned,
        f.session_write,
        f.indeterminate,
        ran as f64 / secs.max(1e-9) * 60.0
    );
    match plant {
        Some(p) if failed.is_empty() => {
            println!("mutation {}: NOT caught in {} seeds", p.name(), args.seeds);
            1
        }
        Some(p) => {
            println!("mutation {}: caught at seed {}", p.name(), failed[0]);
            0
        }
        None if failed.is_empty() => {
            println!("violations: 0");
            0
        }
        None => {
            println!("violations in {} seed(s): {:?}", failed.len(), failed);
            1
        }
    }
}

fn main() {
    let args = Args::parse();
    if args.registers {
        std::process::exit(registers(&args));
    }
    let mutation = match args.mutation.as_deref().map(Mutation::parse) {
        None => None,
        Some(Some(m)) => Some(m),
        Some(None) => {
            let names: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
            eprintln!(
                "meshkv-sim: unknown mutation {:?}; known: {}",
                args.mutation.unwrap_or_default(),
                names.join(", ")
            );
            std::process::exit(2);
        }
    };
    if let Some(seed) = args.seed {
        let rep = vopr::run(&Config {
            seed,
            steps: args.steps,
            mutation,
            trace: true,
            watch: args.watch.clone(),
        });
        for line in &rep.trace {
            println!("{line}");
        }
        println!("faults: {:?}", rep.faults);
        for v in &rep.violations {
            println!("VIOLATION: {v}");
        }
        std::process::exit(i32::from(!rep.violations.is_empty()));
    }
    let started = Instant::now();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut ops, mut failed) = (0u64, Vec::new());
    let (mut refused, mut heals) = (0u64, Vec::new());
    let mut ran = 0u64;
    for seed in args.first..args.first + args.seeds {
        ran += 1;
        let rep = vopr::run(&Config {
            seed,
            steps: args.steps,
            mutation,
            trace: false,
            watch: None,
        });
        ops += rep.ops;
        refused += rep.refused;
        heals.push(rep.heal_micros);
        for (k, v) in rep.faults {
            *faults.entry(k).or_default() += v;
        }
        if !rep.violations.is_empty() {
            if failed.is_empty() {
                eprintln!("seed {seed}: {}", rep.violations.join("; "));
                eprintln!(
                    "replay: cargo run --release -p meshkv-master --bin meshkv-sim -- --seed {seed} --steps {}{}",
                    args.steps,
                    mutation.map(|m| format!(" --mutation {}", m.name())).unwrap_or_default()
                );
            }
            failed.push(seed);
            if mutation.is_some() {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let kinds: Vec<String> = faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "meshkv-sim: {} seeds, {ops} client ops ({refused} refused: server not ready), faults: {}, {:.1} s ({:.0} seeds/min)",
        ran,
        kinds.join(" "),
        secs,
        ran as f64 / secs.max(1e-9) * 60.0
    );
    heals.sort_unstable();
    if let (Some(max), Some(med)) = (heals.last(), heals.get(heals.len() / 2)) {
        println!(
            "convergence after the final heal (simulated time, servers' own schedules): median {:.1} ms, max {:.1} ms (bound {} ms)",
            *med as f64 / 1e3,
            *max as f64 / 1e3,
            vopr::HEAL_BOUND / 1_000
        );
    }
    match mutation {
        Some(m) if failed.is_empty() => {
            println!("mutation {}: NOT caught in {} seeds", m.name(), args.seeds);
            std::process::exit(1);
        }
        Some(m) => println!("mutation {}: caught at seed {}", m.name(), failed[0]),
        None if failed.is_empty() => println!("violations: 0"),
        None => {
            println!("violations in {} seed(s): {:?}", failed.len(), failed);
            std::process::exit(1);
        }
    }
}
