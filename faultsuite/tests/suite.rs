//! The suite end to end against stand-in servers (no root, no namespaces): a
//! linearizable stand-in passes every test, a stand-in with no replication at all
//! must fail them — a checker that cannot fail is no checker.

use meshkv_faultsuite::faults::FaultCmds;
use meshkv_faultsuite::history::History;
use meshkv_faultsuite::http::Endpoint;
use meshkv_faultsuite::kv::ClientCfg;
use meshkv_faultsuite::mock::{self, Mode};
use meshkv_faultsuite::workloads::{Fault, Sizes, Suite};
use std::time::Duration;

async fn suite(mode: Mode, session: bool, out: &std::path::Path) -> Suite {
    let addrs = mock::start(4, mode).await.expect("mock servers");
    let servers = addrs
        .iter()
        .map(|a| Endpoint::parse(&a.to_string()).expect("endpoint"))
        .collect();
    let mut cfg = ClientCfg::new(servers);
    cfg.session = session;
    cfg.wait_ms = 0;
    cfg.request_deadline = Duration::from_millis(500);
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
            tp_workers: 4,
            tp_keys: 10,
            tp_ops: 400,
            keys: 5,
            writes: 20,
            read_every: 4,
            mp_keys: 3,
        },
        converge_bound: Duration::from_millis(300),
        kill_node: 3,
        group_a: vec![0, 1],
        group_b: vec![2, 3],
        fault_min: Duration::from_millis(50),
        fault_max: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_store_passes_every_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = suite(Mode::Shared, true, dir.path()).await;
    let outcomes = vec![
        s.throughput().await,
        s.consistency("base", Fault::None, true).await,
        s.consistency("failure", Fault::Kill, true).await,
        s.manual_partition().await,
        s.consistency("stress", Fault::Partition, true).await,
    ];
    for o in &outcomes {
        assert!(o.passed(), "{}", o.table());
        assert_eq!(o.errors, 0, "{}", o.table());
        assert_eq!(o.lost_writes, Some(0));
        assert_eq!(o.stale_reads, Some(0), "{}", o.table());
    }
    assert_eq!(outcomes[1].chain_breaks, Some(0));
    assert_eq!(outcomes[1].puts, 100);
    assert_eq!(outcomes[1].gets, 25);
    // The fault windows were recorded (the commands were `true`).
    let kinds: Vec<&str> = outcomes[2].events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["kill", "restart", "converged"]);
    // Every test left its table, JSON, plot and history; the history checks clean.
    for name in ["throughput", "base", "failure", "partition", "stress"] {
        for ext in ["txt", "json", "svg", "history.json"] {
            let p = dir.path().join(format!("{name}.{ext}"));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    let h = History::read(&dir.path().join("base.history.json")).expect("history");
    assert_eq!(h.ops.len(), 125);
    assert!(meshkv_faultsuite::check::chain_breaks(&h.ops).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_replication_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = suite(Mode::Split, false, dir.path()).await;
    let base = s.consistency("base", Fault::None, false).await;
    assert!(!base.passed(), "{}", base.table());
    assert!(base.chain_breaks.unwrap_or(0) > 0, "{}", base.table());
    assert!(base.stale_reads.unwrap_or(0) > 0, "{}", base.table());
    assert_eq!(base.converged, Some(false));
    assert!(base.lost_writes.unwrap_or(0) > 0, "{}", base.table());
    let tp = s.throughput().await;
    assert!(!tp.passed(), "{}", tp.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_test_asserts_zero_chain_breaks() {
    // With the session token asserted but a store that loses the chain, the base
    // test's own assertion must fail (not only convergence).
    let dir = tempfile::tempdir().expect("tempdir");
    let s = suite(Mode::Split, true, dir.path()).await;
    let base = s.consistency("base", Fault::None, true).await;
    let chain = base
        .assertions
        .iter()
        .find(|a| a.name.starts_with("chain breaks zero"))
        .expect("the chain assertion exists");
    assert!(!chain.ok, "{}", base.table());
}
