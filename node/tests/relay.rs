//! A silently cut link: three real servers (QUIC + sled) in this process, the link
//! between servers 0 and 1 running through a UDP relay that the test can make drop
//! every packet, as a failed switch would. Until the QUIC idle timeout notices, both
//! ends still believe the link is up; a write must reach the far side through the
//! remaining server anyway, by relay, without waiting for the timeout or for the next
//! anti-entropy round.

use meshkv_core::ReadOutcome;
use meshkv_node::pki::{Ca, Identity};
use meshkv_node::server::{Server, ServerOpts};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

async fn start(ca: &Ca, dir: &std::path::Path, id: u64) -> Server {
    let tls = ca.material(Identity::server(id)).expect("server cert");
    let mut opts = ServerOpts::new(
        id,
        dir.join(format!("data{id}")),
        "127.0.0.1:0".parse().expect("address"),
        tls,
    );
    opts.catchup_timeout = Duration::from_secs(5);
    Server::start(opts).await.expect("server starts")
}

/// A UDP relay: `a_side` faces the dialer, and packets from it go to `target` from
/// `b_side`; answers go back the same way. `cut` drops everything.
struct Relay {
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let cut = Arc::new(AtomicBool::new(false));
        let (a_addr, b_addr) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
        let cut2 = cut.clone();
        let task = tokio::spawn(async move {
            let mut dialer: Option<SocketAddr> = None;
            let mut buf_a = vec![0u8; 65_536];
            let mut buf_b = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    r = a.recv_from(&mut buf_a) => {
                        let Ok((n, from)) = r else { return };
                        dialer = Some(from);
                        if !cut2.load(Ordering::SeqCst) {
                            let _ = b.send_to(&buf_a[..n], target).await;
                        }
                    }
                    r = b.recv_from(&mut buf_b) => {
                        let Ok((n, _)) = r else { return };
                        if let (false, Some(d)) = (cut2.load(Ordering::SeqCst), dialer) {
                            let _ = a.send_to(&buf_b[..n], d).await;
                        }
                    }
                }
            }
        });
        Relay {
            a_addr,
            b_addr,
            cut,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn link_state(s: &Server, peer: u64) -> String {
    s.status()
        .peers
        .iter()
        .find(|p| p.id == peer)
        .map(|p| p.link.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_just_after_a_silent_cut_reaches_every_server_by_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("relay-test").expect("ca");
    let s: Vec<Server> = vec![
        start(&ca, dir.path(), 0).await,
        start(&ca, dir.path(), 1).await,
        start(&ca, dir.path(), 2).await,
    ];
    let addr = |i: usize| s[i].quic_addr().expect("bound");
    let relay = Relay::start(addr(1)).await;
    // 0 dials 1 through the relay; 1 sees 0 at the relay's far side.
    s[0].set_peer(1, Some(relay.a_addr));
    s[0].set_peer(2, Some(addr(2)));
    s[1].set_peer(0, Some(relay.b_addr));
    s[1].set_peer(2, Some(addr(2)));
    s[2].set_peer(0, Some(addr(0)));
    s[2].set_peer(1, Some(addr(1)));
    for (a, b) in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] {
        assert!(
            s[a].wait_link(b as u64, Duration::from_secs(10)).await,
            "link {a}-{b} up"
        );
    }
    for x in &s {
        assert!(x.wait_ready(Duration::from_secs(10)).await);
    }

    relay.cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut worst = Duration::ZERO;
    for n in 0..5 {
        let key = format!("after-cut-{n}").into_bytes();
        s[0].put(key.clone(), Some(b"v".to_vec()), 0, None)
            .await
            .expect("put");
        let t = Instant::now();
        // Both ends still think the link is up: the cut is silent.
        assert_eq!(link_state(&s[0], 1), "up");
        loop {
            let found = |i: usize| matches!(s[i].get(&key, None, 0), Ok(ReadOutcome::Found { .. }));
            if found(1) && found(2) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_millis(400),
                "write {n} not on every server after {:?} (relay skipped the cut peer?)",
                t.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        worst = worst.max(t.elapsed());
    }
    println!("5 writes after a silent cut: every server had each within {worst:?}");
    for x in &s {
        assert!(x.shutdown().await, "stopped: {:?}", x.workers());
    }
}
