//! `Server::shutdown` stops everything the server started: every named background task
//! and the commit thread. (Alone in its test binary: it counts this process's threads.)

use meshkv_node::pki::{Ca, Identity};
use meshkv_node::server::{Server, ServerOpts};
use std::time::Duration;

/// Names of this process's threads.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_task_or_thread_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("shutdown-test").expect("ca");
    let mut servers = Vec::new();
    for id in 0..2u64 {
        let tls = ca.material(Identity::server(id)).expect("cert");
        let opts = ServerOpts::new(
            id,
            dir.path().join(format!("data{id}")),
            "127.0.0.1:0".parse().expect("address"),
            tls,
        );
        servers.push(Server::start(opts).await.expect("start"));
    }
    let a1 = servers[1].quic_addr().expect("bound");
    let a0 = servers[0].quic_addr().expect("bound");
    servers[0].set_peer(1, Some(a1));
    servers[1].set_peer(0, Some(a0));
    assert!(servers[0].wait_link(1, Duration::from_secs(10)).await);
    assert!(servers[1].wait_link(0, Duration::from_secs(10)).await);
    for i in 0..50u32 {
        servers[(i % 2) as usize]
            .put(format!("k{i}").into_bytes(), Some(b"v".to_vec()), 0, None)
            .await
            .expect("put");
    }
    assert_eq!(threads().iter().filter(|t| *t == "commit").count(), 2);
    let running: u64 = servers[0].workers().iter().map(|w| w.running).sum();
    assert!(running >= 6, "{:?}", servers[0].workers());
    for s in &servers {
        assert!(s.shutdown().await, "{:?}", s.workers());
        let left: Vec<_> = s.workers().into_iter().filter(|w| w.running > 0).collect();
        assert!(left.is_empty(), "still running: {left:?}");
    }
    assert_eq!(
        threads().iter().filter(|t| *t == "commit").count(),
        0,
        "{:?}",
        threads()
    );
    // A stopped server refuses writes instead of hanging.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        servers[0].put(b"late".to_vec(), Some(b"v".to_vec()), 0, None),
    )
    .await
    .expect("answered");
    assert!(r.is_err());
}
