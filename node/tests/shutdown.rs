//! `Server::shutdown` stops everything the server started: every named background task
//! and the commit thread. (Alone in its test binary: it counts this process's threads.)

use meshkv_node::pki::{Ca, Identity};
use meshkv_node::server::{Server, ServerOpts};
use std::time::Duration;

/// Thread ids of this process's threads named `name`.
fn tids(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

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
    let commit_threads = tids("commit");
    assert_eq!(commit_threads.len(), 2, "{:?}", threads());
    // HTTP on server 0, with a watch open: its listener and connection are the
    // server's tasks too.
    let web = meshkv_node::http::start(
        servers[0].clone(),
        meshkv_node::http::HttpOpts::plain("127.0.0.1:0".parse().expect("address")),
    )
    .await
    .expect("http");
    let mut watch = reqwest::Client::new()
        .get(format!("{}/watch", web.url()))
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), 200);
    let running = |name: &str| {
        servers[0]
            .workers()
            .iter()
            .filter(|w| w.name == name)
            .map(|w| w.running)
            .sum::<u64>()
    };
    assert_eq!(running("http-accept"), 1, "{:?}", servers[0].workers());
    assert_eq!(running("http-connection"), 1, "{:?}", servers[0].workers());
    let running: u64 = servers[0].workers().iter().map(|w| w.running).sum();
    assert!(running >= 8, "{:?}", servers[0].workers());
    for s in &servers {
        assert!(s.shutdown().await, "{:?}", s.workers());
        let left: Vec<_> = s.workers().into_iter().filter(|w| w.running > 0).collect();
        assert!(left.is_empty(), "still running: {left:?}");
    }
    // The watch ended with its server (no hang: the stream reports its end).
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = watch.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the watch outlived its server");
    // Both commit threads were joined. The kernel lists a thread until it has finished
    // exiting, a moment after a join returns: give it that moment (at most 5 s).
    let gone = |t: &String| !std::path::Path::new("/proc/self/task").join(t).exists();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !commit_threads.iter().all(gone) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(commit_threads.iter().all(gone), "{:?}", threads());
    // A stopped server refuses writes instead of hanging.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        servers[0].put(b"late".to_vec(), Some(b"v".to_vec()), 0, None),
    )
    .await
    .expect("answered");
    assert!(r.is_err());
}
