//! An operator's day, through real `meshkv serve` processes started from config files:
//! a replaced (wiped) disk, a restored older copy, a fast or slow clock, a second
//! process started with an existing id, and a restart that must not answer stale.
//!
//! Every test makes its own temp dir, certificates and OS-picked ports, talks only to
//! 127.0.0.1, and kills every process it started by pid (the `Proc` guard).

use anyhow::{bail, Result};
use bytes::Bytes;
use hyper::Method;
use meshkv_node::cli::{Endpoint, HttpClient};
use meshkv_node::meshkv_core::Version;
use meshkv_node::storage::copy_tree;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod support;

use support::{after, get, meshed, plain, put, version, Cluster, NodeCfg, Proc};

async fn status(c: &HttpClient, ep: &Endpoint) -> Result<serde_json::Value> {
    let r = c
        .call(ep, Method::GET, "/status", &[], Bytes::new())
        .await?;
    Ok(serde_json::from_slice(&r.body)?)
}

/// Wait (at most `bound`) until every started node reports the same digest root;
/// returns how long it took.
async fn identical_within(cl: &Cluster, c: &HttpClient, bound: Duration) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let mut roots = BTreeSet::new();
        for i in 0..cl.nodes.len() {
            let st = status(c, &cl.ep(i)?).await?;
            roots.insert(st["digest_root"].as_str().unwrap_or("").to_string());
        }
        if roots.len() == 1 {
            return Ok(t.elapsed());
        }
        if t.elapsed() > bound {
            bail!("stores still differ after {bound:?}: roots {roots:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A 3-server cluster, all started, linked and ready.
async fn three(cfgs: [NodeCfg; 3]) -> Result<(Cluster, HttpClient)> {
    meshed(&cfgs).await
}

/// `n` puts of `prefix{i}` through node `i`; returns the versions acknowledged.
async fn puts(c: &HttpClient, ep: &Endpoint, prefix: &str, n: usize) -> Result<Vec<Version>> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let r = put(c, ep, key.as_bytes(), key.as_bytes(), &[]).await?;
        if !matches!(r.status, 200 | 201) {
            bail!("put {key}: {r:?}");
        }
        out.push(version(&r)?);
    }
    Ok(out)
}

/// Kill node `i` (SIGKILL through the guard), let `change` alter its data directory,
/// start it again and wait until it is ready.
async fn restart_with(
    cl: &mut Cluster,
    c: &HttpClient,
    i: usize,
    change: impl FnOnce(&std::path::Path) -> Result<()>,
) -> Result<()> {
    cl.nodes[i].proc = None;
    change(&cl.path().join(format!("data{i}")))?;
    cl.start(i)?;
    cl.wait_links(i, 2, c).await
}

#[tokio::test]
async fn a_wiped_or_older_store_rejoins_without_reusing_a_dot() -> Result<()> {
    let (mut cl, c) = three(Default::default()).await?;
    let mut dots = BTreeSet::new();
    let mut note = |vs: Vec<Version>| -> Result<()> {
        for v in vs {
            if !dots.insert(v.dot) {
                bail!("dot {} handed out twice", v.dot);
            }
        }
        Ok(())
    };
    note(puts(&c, &cl.ep(2)?, "early", 50).await?)?;
    identical_within(&cl, &c, Duration::from_secs(5)).await?;
    // A backup of node 2's directory, taken while it is stopped.
    let backup = cl.path().join("backup2");
    restart_with(&mut cl, &c, 2, |d| Ok(copy_tree(d, &backup)?)).await?;
    note(puts(&c, &cl.ep(2)?, "late", 50).await?)?;
    identical_within(&cl, &c, Duration::from_secs(5)).await?;

    for (what, restore) in [("older copy", true), ("wiped disk", false)] {
        restart_with(&mut cl, &c, 2, |d| {
            std::fs::remove_dir_all(d)?;
            if restore {
                copy_tree(&backup, d)?;
            }
            Ok(())
        })
        .await?;
        let prefix = format!("after-{}-", what.replace(' ', "-"));
        let vs = puts(&c, &cl.ep(2)?, &prefix, 50).await?;
        note(vs)?;
        let took = identical_within(&cl, &c, Duration::from_secs(2)).await?;
        println!(
            "{what}: 50 writes after the restart on every server, stores identical in {took:?}"
        );
        for i in 0..3 {
            let ep = cl.ep(i)?;
            for k in 0..50 {
                let key = format!("{prefix}{k}");
                let r = get(&c, &ep, key.as_bytes(), &[]).await?;
                if r.status != 200 || r.body != key.as_bytes() {
                    bail!("{what}: node {i} answers {key} with {r:?}");
                }
            }
            // What node 2 wrote in its earlier lives is back on it too.
            for k in [0, 49] {
                for p in ["early", "late"] {
                    let key = format!("{p}{k}");
                    let r = get(&c, &ep, key.as_bytes(), &[]).await?;
                    if r.status != 200 {
                        bail!("{what}: node {i} lost {key}: {r:?}");
                    }
                }
            }
        }
        let st = status(&c, &cl.ep(2)?).await?;
        let seen = st["seen"].as_object().map(|o| o.len()).unwrap_or(0);
        assert!(
            seen >= 3,
            "{what}: earlier incarnations' watermarks kept: {st}"
        );
    }
    Ok(())
}

const HOUR_MS: &str = "3600000";

fn skewed(ms: &str) -> NodeCfg {
    NodeCfg {
        env: vec![("MESHKV_CLOCK_OFFSET_MS".into(), ms.into())],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_fast_clock_drags_no_one_and_every_token_keeps_working() -> Result<()> {
    let (mut cl, c) = three([NodeCfg::default(), NodeCfg::default(), skewed(HOUR_MS)]).await?;
    let wall = || meshkv_node::clock::wall_micros();
    let v0 = version(&put(&c, &cl.ep(0)?, b"a", b"from0", &[]).await?)?;
    let v2 = version(&put(&c, &cl.ep(2)?, b"b", b"from2", &[]).await?)?;
    assert!(
        v2.ts > wall() + 3_000_000_000,
        "node 2 stamps an hour ahead"
    );
    // Every token works through every server, the fast one's too.
    for i in 0..3 {
        let ep = cl.ep(i)?;
        let r = get(&c, &ep, b"a", &after(&v0, 5_000)).await?;
        assert_eq!(r.status, 200, "node {i}, node 0's token: {r:?}");
        let r = get(&c, &ep, b"b", &after(&v2, 5_000)).await?;
        assert_eq!(r.status, 200, "node {i}, node 2's token: {r:?}");
    }
    // Node 0 saw node 2's timestamps but its clock did not move: its next write is
    // stamped by its own clock, and status says what it refused.
    let v0b = version(&put(&c, &cl.ep(0)?, b"c", b"later", &[]).await?)?;
    assert!(v0b.ts < wall() + 2_000_000, "node 0 was dragged: {v0b:?}");
    let st = status(&c, &cl.ep(0)?).await?;
    assert!(st["clock"]["ahead_refused"].as_u64() > Some(0), "{st}");
    assert!(
        st["clock"]["max_ahead_ms"].as_u64() > Some(3_000_000),
        "{st}"
    );
    // A write after node 2's token still wins over node 2's write.
    let r = put(&c, &cl.ep(1)?, b"b", b"after2", &after(&v2, 5_000)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(version(&r)? > v2);

    // The clock is fixed and every server restarted: the tokens still work.
    cl.nodes[2].env.clear();
    for i in 0..3 {
        cl.nodes[i].proc = None;
    }
    cl.start_all()?;
    for i in 0..3 {
        cl.wait_links(i, 2, &c).await?;
    }
    for i in 0..3 {
        let ep = cl.ep(i)?;
        for (key, v) in [(&b"a"[..], v0), (b"c", v0b)] {
            let r = get(&c, &ep, key, &after(&v, 5_000)).await?;
            assert_eq!(r.status, 200, "node {i} after the restart: {r:?}");
        }
    }
    let v1 = version(&put(&c, &cl.ep(1)?, b"d", b"x", &[]).await?)?;
    assert!(v1.ts < wall() + 2_000_000, "node 1 was dragged: {v1:?}");
    Ok(())
}

#[tokio::test]
async fn a_slow_server_serves_its_peers_tokens() -> Result<()> {
    let (cl, c) = three([NodeCfg::default(), NodeCfg::default(), skewed("-3600000")]).await?;
    for k in 0..20 {
        let key = format!("k{k}");
        let v = version(&put(&c, &cl.ep(k % 2)?, key.as_bytes(), b"v", &[]).await?)?;
        let r = get(&c, &cl.ep(2)?, key.as_bytes(), &after(&v, 5_000)).await?;
        assert_eq!(r.status, 200, "{key} through the slow server: {r:?}");
        // Its own writes after the token still win.
        let r = put(&c, &cl.ep(2)?, key.as_bytes(), b"w", &after(&v, 5_000)).await?;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(version(&r)? > v, "the slow server's later write wins");
    }
    Ok(())
}

#[tokio::test]
async fn a_second_process_with_an_existing_id_is_refused() -> Result<()> {
    let (cl, c) = three(Default::default()).await?;
    // Server 1 again: its own config with a fresh port and directory.
    let text = std::fs::read_to_string(&cl.nodes[1].config)?;
    let port = support::reserve_udp_ports(1)?[0];
    let dup_text = text
        .replace(
            &format!("quic_listen = \"127.0.0.1:{}\"", cl.nodes[1].quic_port),
            &format!("quic_listen = \"127.0.0.1:{port}\""),
        )
        .replace("data_dir = \"data1\"", "data_dir = \"data1dup\"");
    assert_ne!(text, dup_text);
    let dup_config = cl.path().join("dup.toml");
    std::fs::write(&dup_config, dup_text)?;
    let dup_log = cl.path().join("dup.log");
    let (child, _) = support::spawn_serve_env(
        &dup_config,
        &dup_log,
        &[("MESHKV_LOG".into(), "error".into())],
    )?;
    let dup = Proc { child };
    // For 3 s the real server 1 keeps answering quickly, and keeps replicating.
    let real = cl.ep(1)?;
    let t = Instant::now();
    let mut n = 0;
    let mut worst = Duration::ZERO;
    while t.elapsed() < Duration::from_secs(3) {
        let s = Instant::now();
        let r = c
            .call(&real, Method::GET, "/health", &[], Bytes::new())
            .await?;
        worst = worst.max(s.elapsed());
        assert_eq!(r.status, 200);
        let key = format!("dup{n}");
        let v = version(&put(&c, &real, key.as_bytes(), b"v", &[]).await?)?;
        let r = get(&c, &cl.ep(2)?, key.as_bytes(), &after(&v, 2_000)).await?;
        assert_eq!(r.status, 200, "server 2 got the real server's write: {r:?}");
        n += 1;
    }
    println!(
        "real server: {n} health checks and writes during the duplicate, slowest health {worst:?}"
    );
    assert!(worst < Duration::from_secs(1), "{worst:?}");
    let st = status(&c, &cl.ep(2)?).await?;
    assert!(st["duplicates_refused"].as_u64() > Some(0), "{st}");
    drop(dup);
    let log = std::fs::read_to_string(&dup_log)?;
    assert!(
        log.contains("duplicate server id 1"),
        "the duplicate is told why: {log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_server_answers_nothing_stale() -> Result<()> {
    let (mut cl, c) = three(Default::default()).await?;
    let n = 1000;
    let e0 = cl.ep(0)?;
    for k in 0..n {
        let key = format!("k{k}");
        put(&c, &e0, key.as_bytes(), b"old", &[]).await?;
    }
    identical_within(&cl, &c, Duration::from_secs(5)).await?;
    cl.nodes[2].proc = None;
    for k in 0..n {
        let key = format!("k{k}");
        put(&c, &e0, key.as_bytes(), b"new", &[]).await?;
    }
    // Read every key through node 2 from the moment it serves HTTP.
    let e2 = cl.start(2)?;
    let (mut fresh, mut not_ready) = (0, 0);
    for k in 0..n {
        let key = format!("k{k}");
        let r = get(&c, &e2, key.as_bytes(), &[]).await?;
        match r.status {
            200 if &r.body[..] == b"new" => fresh += 1,
            503 => {
                assert!(r.line().starts_with("ERR_NOT_READY"), "{r:?}");
                assert!(r.header("retry-after").is_some(), "{r:?}");
                not_ready += 1;
            }
            _ => bail!("stale answer for {key} from the restarted server: {r:?}"),
        }
    }
    println!("restarted server: {fresh} fresh answers, {not_ready} not-ready, 0 stale");
    cl.wait_ready(2, &c).await?;
    for k in 0..n {
        let key = format!("k{k}");
        let r = get(&c, &e2, key.as_bytes(), &[]).await?;
        assert_eq!(&r.body[..], b"new", "{key}: {r:?}");
    }
    Ok(())
}

/// A tmpfs of `mb` MiB mounted at `dir`, unmounted (lazily) on drop. `None` when this
/// process may not mount (not root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mb: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers() -> Result<()> {
    let mut cl = Cluster::new(&[NodeCfg {
        peers: Some(vec![]),
        limits: "min_free_bytes = 8388608".into(),
        ..Default::default()
    }])?;
    // data0 -> fs/data0 on a 32 MiB tmpfs; the filler goes next to it, on the same
    // file system but outside the store.
    let fs_dir = cl.path().join("fs");
    let Some(_fs) = Tmpfs::mount(&fs_dir, 32) else {
        println!("skipped: cannot mount a tmpfs (needs root)");
        return Ok(());
    };
    std::fs::create_dir(fs_dir.join("data0"))?;
    std::os::unix::fs::symlink(fs_dir.join("data0"), cl.path().join("data0"))?;
    let filler = fs_dir.join("filler");
    let fill = || -> Result<()> {
        use std::io::Write;
        // Leave about 4 MiB: below the 8 MiB reserve, enough for sled to open.
        let free = meshkv_node::storage::free_bytes(&fs_dir)?;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&filler)?);
        let chunk = vec![7u8; 1 << 20];
        let mut left = free.saturating_sub(4 << 20);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        w.flush()?;
        Ok(())
    };
    let c = plain();
    let mut ep = cl.start(0)?;
    cl.wait_ready(0, &c).await?;
    assert_eq!(put(&c, &ep, b"a", b"1", &[]).await?.status, 201);
    for restart in [false, true] {
        fill()?;
        if restart {
            // A restart on a full disk comes up, read-only.
            cl.nodes[0].proc = None;
            ep = cl.start(0)?;
            // (/health/ready says 503 while the disk is full: wait on status instead.)
            let t = Instant::now();
            while status(&c, &ep).await?["ready"] != true {
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("not ready after a restart on a full disk");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let r = put(&c, &ep, b"b", b"2", &[]).await?;
        assert_eq!(r.status, 507, "restart={restart}: {r:?}");
        assert!(r.line().starts_with("ERR_DISK_FULL"), "{r:?}");
        let r = get(&c, &ep, b"a", &[]).await?;
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"1"[..]),
            "reads go on: {r:?}"
        );
        let r = c
            .call(&ep, Method::GET, "/health/ready", &[], Bytes::new())
            .await?;
        assert_eq!(r.status, 503, "{r:?}");
        assert!(status(&c, &ep).await?["disk_full"] == true);
        std::fs::remove_file(&filler)?;
        // No restart needed: the next write goes through.
        let r = put(&c, &ep, b"b", b"2", &[]).await?;
        assert!(matches!(r.status, 200 | 201), "restart={restart}: {r:?}");
        assert!(status(&c, &ep).await?["disk_full"] == false);
    }
    Ok(())
}

/// Run the `meshkv` CLI; returns (exit code, stdout, stderr).
fn meshkv(args: &[&str]) -> Result<(i32, String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn servers_join_and_leave_at_runtime() -> Result<()> {
    // Servers 0-2 know only each other; 3 is not in their configs.
    let three_peers = NodeCfg {
        peers: Some(vec![0, 1, 2]),
        ..Default::default()
    };
    let mut cl = Cluster::new(&[
        three_peers.clone(),
        three_peers.clone(),
        three_peers,
        NodeCfg {
            peers: Some(vec![0]),
            ..Default::default()
        },
    ])?;
    let c = plain();
    for i in 0..3 {
        cl.start(i)?;
    }
    for i in 0..3 {
        cl.wait_links(i, 2, &c).await?;
    }
    let url0 = cl.ep(0)?.url();
    puts(&c, &cl.ep(1)?, "before", 100).await?;

    // Add server 3 while writes go on.
    cl.start(3)?;
    let addr3 = format!("127.0.0.1:{}", cl.nodes[3].quic_port);
    let (code, _, err) = meshkv(&["member", "add", "3", &addr3, "--endpoints", &url0])?;
    assert_eq!(code, 0, "{err}");
    puts(&c, &cl.ep(2)?, "during", 100).await?;
    cl.wait_links(3, 3, &c).await?;
    for i in 0..3 {
        cl.wait_links(i, 3, &c).await?;
    }
    puts(&c, &cl.ep(3)?, "after-add", 100).await?;
    let took = identical_within(&cl, &c, Duration::from_secs(10)).await?;
    println!("server 3 added: 4 stores identical in {took:?}");
    let (code, out, err) = meshkv(&["member", "list", "--endpoints", &cl.ep(1)?.url()])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");

    // Server 2 goes away for good: while it is a member, trimming waits for it.
    cl.nodes[2].proc = None;
    puts(&c, &cl.ep(0)?, "while-down", 100).await?;
    let logs = |st: &serde_json::Value| st["log_records"].as_u64().unwrap_or(0);
    assert!(logs(&status(&c, &cl.ep(0)?).await?) >= 100);
    let (code, _, err) = meshkv(&["member", "remove", "2", "--endpoints", &url0])?;
    assert_eq!(code, 0, "{err}");
    puts(&c, &cl.ep(3)?, "after-remove", 100).await?;
    // The three left converge, and trimming resumes on each.
    cl.nodes.remove(2);
    identical_within(&cl, &c, Duration::from_secs(10)).await?;
    let t = Instant::now();
    for i in 0..3 {
        loop {
            let st = status(&c, &cl.ep(i)?).await?;
            if logs(&st) == 0 {
                break;
            }
            if t.elapsed() > Duration::from_secs(15) {
                bail!("node {i} still keeps {} log records: {st}", logs(&st));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (code, out, _) = meshkv(&["member", "list", "--endpoints", &url0])?;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("2\tremoved")), "{out}");
    // Every write made before, during and after is on every remaining server.
    for i in 0..3 {
        let ep = cl.ep(i)?;
        for p in [
            "before",
            "during",
            "after-add",
            "while-down",
            "after-remove",
        ] {
            for k in [0, 99] {
                let key = format!("{p}{k}");
                let r = get(&c, &ep, key.as_bytes(), &[]).await?;
                assert_eq!(r.status, 200, "node {i} {key}: {r:?}");
            }
        }
    }
    Ok(())
}
