//! The suite through the CS739 (2012) C API (`--kv739`): one worker process per
//! client, each with its own library instance, pinned to a server per request.
//!
//! * `toy739` (tests/toy739/toy739.c, compiled here with `cc`): per-server copies and
//!   no replication. The base test must report chain breaks, stale reads, lost
//!   writes and no convergence — a checker that cannot fail is no checker. With
//!   `TOY739_SHARED` every server name is one store, and the same tests must pass
//!   (the backend adds no false alarms). Its "servers" are names only.
//! * meshkv's own `libkv739.so` against a real 3-server cluster: the base test at
//!   both levels, no chain break, no lost write. Skipped, saying so, when
//!   `target/release/libkv739.so` or `target/release/meshkv` is not built.
//!
//! Own temp dirs, traffic only to 127.0.0.1, every process killed by pid on drop.

mod support;

use meshkv_faultsuite::faults::FaultCmds;
use meshkv_faultsuite::http::Endpoint;
use meshkv_faultsuite::kv::{self, Backend, ClientCfg};
use meshkv_faultsuite::kv739::Kv739Cfg;
use meshkv_faultsuite::workloads::{Fault, Sizes, Suite};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const TOY_SERVERS: [&str; 3] = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];

/// Compile a C file into a shared library in `dir`.
fn compile(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .expect("cc runs (the test needs a C compiler)");
    assert!(st.success(), "cc {} failed: {st}", src.display());
    out
}

fn toy_lib(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/toy739/toy739.c");
    compile(&src, dir, "libtoy739.so")
}

fn suite(cfg: ClientCfg, out: &Path) -> Suite {
    let t = Some("true".to_string());
    Suite {
        cfg,
        faults: FaultCmds {
            kill: t.clone(),
            restart: t.clone(),
            partition: t.clone(),
            heal: t,
            timeout: Duration::from_secs(10),
        },
        out: out.to_path_buf(),
        run_id: "t".into(),
        sizes: Sizes {
            tp_workers: 3,
            tp_keys: 5,
            tp_ops: 60,
            keys: 3,
            writes: 12,
            read_every: 4,
            mp_keys: 2,
        },
        converge_bound: Duration::from_millis(300),
        kill_node: 2,
        group_a: vec![0],
        group_b: vec![1, 2],
        fault_min: Duration::from_millis(50),
        fault_max: Duration::from_millis(500),
    }
}

/// The toy library over the three names, its stores in `store`.
fn toy_cfg(lib: PathBuf, store: &Path, shared: bool) -> ClientCfg {
    let servers = TOY_SERVERS
        .iter()
        .map(|s| Endpoint::parse(s).expect("endpoint"))
        .collect();
    let mut cfg = ClientCfg::new(servers);
    let mut env = vec![("TOY739_DIR".to_string(), store.display().to_string())];
    if shared {
        // Also noisy: it prints to stdout at init, which must not reach the protocol.
        env.push(("TOY739_SHARED".into(), "1".into()));
        env.push(("TOY739_NOISY".into(), "1".into()));
    }
    cfg.backend = Backend::Kv739(Arc::new(Kv739Cfg {
        lib,
        worker_exe: PathBuf::from(env!("CARGO_BIN_EXE_meshkv-test")),
        env,
    }));
    cfg.level = String::new();
    cfg.request_deadline = Duration::from_millis(500);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_library_without_replication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = toy_lib(dir.path());
    let cfg = toy_cfg(lib, &dir.path().join("stores"), false);
    kv::wait_ready(&Arc::new(cfg.clone()), Duration::from_secs(10))
        .await
        .expect("every toy server answers its probe");
    let s = suite(cfg, dir.path());
    let base = s.consistency("base", Fault::None, true).await;
    // Every request was served (pinned to its target), so what fails is the store.
    assert_eq!(base.errors, 0, "{}", base.table());
    assert_eq!(base.failovers, 0, "{}", base.table());
    assert!(!base.passed(), "{}", base.table());
    // Writes rotate over the servers: each put returns the value written three
    // puts earlier (at that server), or none.
    assert!(base.chain_breaks.unwrap_or(0) > 0, "{}", base.table());
    // Reads go to the next server, which holds an older value or none.
    assert!(base.stale_reads.unwrap_or(0) > 0, "{}", base.table());
    assert_eq!(base.converged, Some(false), "{}", base.table());
    assert!(base.lost_writes.unwrap_or(0) > 0, "{}", base.table());
    let chain = base
        .assertions
        .iter()
        .find(|a| a.name.starts_with("chain breaks zero"))
        .expect("the chain assertion exists");
    assert!(!chain.ok, "{}", base.table());
    // Each server kept its own copies: one store directory per server name.
    let stores = std::fs::read_dir(dir.path().join("stores"))
        .expect("stores")
        .count();
    assert_eq!(stores, 3);
    // The history records the server each request was pinned to.
    let h = meshkv_faultsuite::history::History::read(&dir.path().join("base.history.json"))
        .expect("history");
    assert!(h.ops.iter().all(|op| op.server == op.target && op.ok));
    assert_eq!(h.ops.len(), 45);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_over_one_store_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = toy_lib(dir.path());
    let s = suite(toy_cfg(lib, &dir.path().join("stores"), true), dir.path());
    let outcomes = vec![
        s.throughput().await,
        s.consistency("base", Fault::None, true).await,
        s.consistency("failure", Fault::Kill, true).await,
        s.consistency("stress", Fault::Partition, true).await,
    ];
    for o in &outcomes {
        assert!(o.passed(), "{}", o.table());
        assert_eq!(o.errors, 0, "{}", o.table());
        assert_eq!(o.lost_writes, Some(0), "{}", o.table());
        assert_eq!(o.stale_reads, Some(0), "{}", o.table());
    }
    assert_eq!(outcomes[1].chain_breaks, Some(0));
    assert_eq!(outcomes[1].puts, 36);
    assert_eq!(outcomes[1].gets, 9);
}

#[test]
fn the_cli_runs_the_suite_through_a_library() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = toy_lib(dir.path());
    let out = dir.path().join("results");
    let run = Command::new(env!("CARGO_BIN_EXE_meshkv-test"))
        .args(["run", "--kv739"])
        .arg(&lib)
        .args(["--servers", &TOY_SERVERS.join(",")])
        .args([
            "base",
            "--keys",
            "3",
            "--writes",
            "8",
            "--deadline-ms",
            "500",
        ])
        .args(["--converge-bound-ms", "200", "--ready-timeout-s", "10"])
        .arg("--out")
        .arg(&out)
        .env("TOY739_DIR", dir.path().join("stores"))
        .env_remove("TOY739_SHARED")
        .output()
        .expect("meshkv-test runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("one worker process per client"), "{stderr}");
    assert!(
        stderr.contains("FAILED base: chain breaks zero"),
        "{stdout}\n{stderr}"
    );
    for f in ["base.history.json", "base.svg", "summary.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The recorded history checks dirty on its own, too.
    let check = Command::new(env!("CARGO_BIN_EXE_meshkv-test"))
        .arg("check")
        .arg(out.join("base.history.json"))
        .output()
        .expect("meshkv-test check runs");
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("chain break: key"));
}

#[test]
fn a_library_without_the_api_is_refused_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("half.c");
    std::fs::write(&src, "int kv739_init(char **s) { (void)s; return 0; }\n").expect("write");
    let lib = compile(&src, dir.path(), "libhalf.so");
    let run = Command::new(env!("CARGO_BIN_EXE_meshkv-test"))
        .args(["run", "--kv739"])
        .arg(&lib)
        .args(["--servers", &TOY_SERVERS.join(","), "base"])
        .arg("--out")
        .arg(dir.path().join("results"))
        .output()
        .expect("meshkv-test runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("kv739_fail"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshkvs_library_keeps_the_chain_on_a_real_cluster() {
    let bins = support::bin_dir();
    let (lib, meshkv) = (bins.join("libkv739.so"), bins.join("meshkv"));
    for p in [&lib, &meshkv] {
        if !p.is_file() {
            eprintln!(
                "SKIPPED meshkvs_library_keeps_the_chain_on_a_real_cluster: {} is not built \
                 (`cargo build --release -p kv739 -p meshkv-node` builds it)",
                p.display()
            );
            return;
        }
    }
    let cluster = support::Cluster::start(&meshkv, 3).expect("a 3-server cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    // The name the course harnesses link.
    let so = dir.path().join("lib739kv.so");
    std::fs::copy(&lib, &so).expect("copy the library");
    let servers: Vec<Endpoint> = cluster
        .http
        .iter()
        .map(|s| Endpoint::parse(s).expect("endpoint"))
        .collect();
    for level in ["linearizable", "session"] {
        let mut cfg = ClientCfg::new(servers.clone());
        cfg.backend = Backend::Kv739(Arc::new(Kv739Cfg {
            lib: so.clone(),
            worker_exe: PathBuf::from(env!("CARGO_BIN_EXE_meshkv-test")),
            env: vec![
                ("MESHKV_CONSISTENCY".into(), level.into()),
                ("KV739_TIMEOUT_MS".into(), "3000".into()),
            ],
        }));
        cfg.level = level.into();
        cfg.attempt_timeout = Duration::from_secs(5);
        cfg.request_deadline = Duration::from_secs(10);
        kv::wait_ready(&Arc::new(cfg.clone()), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}\nnode 0 log:\n{}", cluster.log(0)));
        let mut s = suite(cfg, dir.path());
        s.converge_bound = Duration::from_secs(5);
        s.run_id = format!("real-{level}");
        let base = s.consistency("base", Fault::None, true).await;
        assert!(base.passed(), "{level}:\n{}", base.table());
        assert_eq!(base.errors, 0, "{level}:\n{}", base.table());
        assert_eq!(base.chain_breaks, Some(0), "{level}:\n{}", base.table());
        assert_eq!(base.stale_reads, Some(0), "{level}:\n{}", base.table());
        assert_eq!(base.lost_writes, Some(0), "{level}:\n{}", base.table());
        assert_eq!(base.converged, Some(true), "{level}:\n{}", base.table());
        assert_eq!(base.puts, 36);
    }
}
