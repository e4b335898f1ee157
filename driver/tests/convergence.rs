//! Convergence under random partitions, through real processes: 5 servers, clients
//! 5..9 (one per server, each also linked to a second server), random puts and random
//! server-server link breaks and repairs; then every link heals, `stabilize` returns,
//! and all five stores must be identical and hold, for every key, the last write.

use meshkv_master::cluster::{find_node_binary, Master, MasterOpts};
use meshkv_master::script::Command;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;

fn dead(pid: u32) -> bool {
    // Gone, or a zombie not yet reaped by anyone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn run(master: &mut Master, cmd: Command) -> String {
    let mut out = Vec::new();
    let shown = cmd.to_string();
    if let Err(e) = master.run(cmd, &mut out).await {
        panic!("{shown}: {e}");
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn one_round(seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = find_node_binary().expect("build the workspace first (make build)");
    let mut m = Master::new(MasterOpts {
        run_dir: dir.path().to_path_buf(),
        bin,
        stabilize_timeout: Duration::from_secs(20),
    })
    .expect("master");
    let mut rng = StdRng::seed_from_u64(seed);
    for s in 0..5 {
        run(&mut m, Command::JoinServer { id: s }).await;
    }
    for c in 5..10u64 {
        run(
            &mut m,
            Command::JoinClient {
                id: c,
                server: c - 5,
            },
        )
        .await;
        let other = (c - 5 + 1 + rng.gen_range(0..4)) % 5;
        run(&mut m, Command::CreateConnection { a: c, b: other }).await;
    }
    // Last value written per key, in issue order (puts are sequential and stamped with
    // microsecond wall-clock time on one machine, so the last issued wins).
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for step in 0..300u32 {
        match rng.gen_range(0..10) {
            0 | 1 => {
                let a = rng.gen_range(0..5u64);
                let b = (a + 1 + rng.gen_range(0..4)) % 5;
                let cmd = if rng.gen_bool(0.5) {
                    Command::BreakConnection { a, b }
                } else {
                    Command::CreateConnection { a, b }
                };
                run(&mut m, cmd).await;
            }
            _ => {
                let client = rng.gen_range(5..10u64);
                let key = format!("k{}", rng.gen_range(0..40));
                let value = format!("v{seed}-{step}");
                run(
                    &mut m,
                    Command::Put {
                        client,
                        key: key.clone(),
                        value: value.clone(),
                    },
                )
                .await;
                last.insert(key, value);
            }
        }
    }
    for a in 0..5u64 {
        for b in a + 1..5 {
            run(&mut m, Command::CreateConnection { a, b }).await;
        }
    }
    run(&mut m, Command::Stabilize).await;
    let stores: Vec<String> = {
        let mut v = Vec::new();
        for s in 0..5 {
            v.push(run(&mut m, Command::PrintStore { id: s }).await);
        }
        v
    };
    let expected: String = last.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    for (i, s) in stores.iter().enumerate() {
        assert_eq!(
            s, &expected,
            "seed {seed}: server {i} differs from the last writes"
        );
    }
    let pids = m.pids();
    m.shutdown().await;
    let recorded = std::fs::read_to_string(dir.path().join("pids")).unwrap_or_default();
    for pid in recorded
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .chain(pids)
    {
        assert!(dead(pid), "seed {seed}: process {pid} still running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_partitions_converge_after_heal() {
    for seed in [1u64, 2, 3] {
        one_round(seed).await;
    }
}
