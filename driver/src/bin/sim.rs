//! `meshkv-sim`: seeded fault schedules over the simulated cluster
//! ([`meshkv_core::vopr`]). Prints the seeds run, the faults injected by kind and the
//! violations; a failing seed prints the one command that replays it (with its trace).

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
}

fn main() {
    let args = Args::parse();
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
    for seed in args.first..args.first + args.seeds {
        let rep = vopr::run(&Config {
            seed,
            steps: args.steps,
            mutation,
            trace: false,
            watch: None,
        });
        ops += rep.ops;
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
        "meshkv-sim: {} seeds, {ops} client ops, faults: {}, {:.1} s ({:.0} seeds/min)",
        args.seeds,
        kinds.join(" "),
        secs,
        args.seeds as f64 / secs.max(1e-9) * 60.0
    );
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
