//! A machine crash on a server whose replica writes were not yet fsynced, through real
//! `meshkv serve` processes.
//!
//! Server 2 fsyncs other servers' writes late (`replica_fsync_ms`, set far beyond the
//! test here so that none of them is fsynced), and with `MESHKV_TEST_PLATTER` it copies
//! its store's files after every fsync: the copy is what a power cut would leave on
//! its disk. The test writes through servers 0 and 1 (each fsyncs before it answers),
//! reads some keys from server 2 in a session, kills server 2 with SIGKILL, puts the
//! copy in place of its data directory — so the crash loses every unsynced batch —
//! and restarts it. The copy is checked to lack acknowledged writes (the test really
//! cut something), and then: server 2 starts (its store is consistent, only behind),
//! no acknowledged write is lost on any server, the session's reads at server 2 are
//! never older than what it read before the cut (Monotonic Reads) and its own writes
//! are there (Read-Your-Writes), and the three stores converge.
//!
//! The check fails when it should: a lone server's acknowledged writes survive the
//! same cut, and with the planted bug `MESHKV_TEST_MUTATION=ack-before-fsync` (writes
//! answered before they are fsynced) the check finds them lost.

mod support;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use meshkv_node::cli::Method;
use meshkv_node::meshkv_core::{Limits, Version};
use meshkv_node::storage::Storage;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::*;

const KEYS: usize = 24;

/// The session headers for a read or write that depends on `dep`.
fn after_dep(dep: &Version) -> Vec<(&'static str, String)> {
    let mut h = session();
    h.extend(after(dep, 10_000));
    h
}

/// Every key of every server, with its version, by listing.
async fn listing(
    c: &meshkv_node::cli::HttpClient,
    cl: &Cluster,
    i: usize,
) -> Result<BTreeMap<String, String>> {
    let r = c
        .call(
            &cl.ep(i)?,
            Method::GET,
            "/kv?prefix=p%2F&limit=1000",
            &session(),
            Bytes::new(),
        )
        .await?;
    if r.status != 200 {
        bail!("listing on server {i}: {} {:?}", r.status, r.body);
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)?;
    let items = v["items"]
        .as_array()
        .ok_or_else(|| anyhow!("no items in {v}"))?;
    items
        .iter()
        .map(|it| {
            let k = it["key"]
                .as_str()
                .ok_or_else(|| anyhow!("no key in {it}"))?;
            let val = it["value"].as_str().unwrap_or_default();
            Ok((k.to_string(), val.to_string()))
        })
        .collect()
}

/// Make server `i` fsync other servers' writes only after 10 minutes or 100,000
/// batches, i.e. not during a test.
fn sync_late(cl: &Cluster, i: usize) -> Result<()> {
    let cfg = &cl.nodes[i].config;
    let text = std::fs::read_to_string(cfg)?;
    std::fs::write(
        cfg,
        text.replacen(
            "[certs]",
            "replica_fsync_ms = 600000\nreplica_fsync_batches = 100000\n\n[certs]",
            1,
        ),
    )?;
    Ok(())
}

/// Cut the power of server `i`: SIGKILL, and its data directory becomes what it had
/// fsynced (its platter copy). Dropping the process handle kills and reaps it.
fn power_cut(cl: &mut Cluster, i: usize, platter: &std::path::Path) -> Result<()> {
    let killed = cl.nodes[i].proc.take();
    if killed.is_none() {
        bail!("server {i} not running");
    }
    drop(killed);
    let data = cl.path().join(format!("data{i}"));
    std::fs::remove_dir_all(&data)?;
    std::fs::rename(platter, &data)?;
    Ok(())
}

/// The acknowledged writes that server `ep` does not return (each read waits up to
/// `wait_ms` for its write to arrive).
async fn lost(
    c: &meshkv_node::cli::HttpClient,
    ep: &meshkv_node::cli::Endpoint,
    acked: &BTreeMap<String, (String, Version)>,
    wait_ms: u64,
) -> Result<Vec<String>> {
    let mut lost = Vec::new();
    for (key, (val, v)) in acked {
        let mut h = session();
        h.extend(after(v, wait_ms));
        let r = get(c, ep, key.as_bytes(), &h).await?;
        if r.status != 200 || r.body != val.as_bytes() || version(&r)? != *v {
            lost.push(format!("{key}: {} {}", r.status, r.line()));
        }
    }
    Ok(lost)
}

/// A platter for server `i` (and the planted bug, if any).
fn platter_env(platter: &std::path::Path, mutation: Option<&str>) -> NodeCfg {
    let mut env = vec![(
        "MESHKV_TEST_PLATTER".to_string(),
        platter.display().to_string(),
    )];
    if let Some(m) = mutation {
        env.push(("MESHKV_TEST_MUTATION".into(), m.into()));
    }
    NodeCfg {
        env,
        ..NodeCfg::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_servers_acknowledged_writes_survive_a_power_cut_unless_acked_before_fsync(
) -> Result<()> {
    for mutation in [None, Some("ack-before-fsync")] {
        let tmp = tempfile::tempdir()?;
        let platter = tmp.path().join("platter0");
        let mut cl = Cluster::new(&[platter_env(&platter, mutation)])?;
        sync_late(&cl, 0)?;
        let ep = cl.start(0)?;
        let c = plain();
        cl.wait_ready(0, &c).await?;
        let mut acked = BTreeMap::new();
        for i in 0..10 {
            let (key, val) = (format!("p/{i}"), format!("v{i}"));
            let r = put(&c, &ep, key.as_bytes(), val.as_bytes(), &session()).await?;
            if r.status != 201 {
                bail!("put {key}: {} {}", r.status, r.line());
            }
            acked.insert(key, (val, version(&r)?));
        }
        power_cut(&mut cl, 0, &platter)?;
        let ep = cl.start(0)?;
        cl.wait_ready(0, &c).await?;
        // Alone, it has nothing to wait for.
        let lost = lost(&c, &ep, &acked, 0).await?;
        match mutation {
            None => assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}"),
            Some(m) => assert_eq!(
                lost.len(),
                acked.len(),
                "with {m} the cut must lose the writes: lost {lost:?}"
            ),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_power_cut_loses_only_unsynced_replica_writes_and_the_server_catches_up() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let platter = tmp.path().join("platter2");
    let mut cl = Cluster::new(&[
        NodeCfg::default(),
        NodeCfg::default(),
        platter_env(&platter, None),
    ])?;
    sync_late(&cl, 2)?;
    cl.start_all()?;
    let c = plain();
    for i in 0..3 {
        cl.wait_links(i, 2, &c).await?;
    }
    let (ep0, ep1, ep2) = (cl.ep(0)?, cl.ep(1)?, cl.ep(2)?);

    // Acknowledged writes through servers 0 and 1; each is durable there.
    let mut acked: BTreeMap<String, (String, Version)> = BTreeMap::new();
    for i in 0..KEYS {
        let key = format!("p/{i:02}");
        let val = format!("v{i}");
        let ep = if i % 2 == 0 { &ep0 } else { &ep1 };
        let r = put(&c, ep, key.as_bytes(), val.as_bytes(), &session()).await?;
        if r.status != 201 {
            bail!("put {key}: {} {:?}", r.status, r.body);
        }
        acked.insert(key, (val, version(&r)?));
    }
    // Server 2 has them all (each read waits for its write to arrive); a session
    // reads a third of them there and remembers the versions it saw.
    let mut read_before: BTreeMap<String, Version> = BTreeMap::new();
    for (i, (key, (val, v))) in acked.iter().enumerate() {
        let r = get(&c, &ep2, key.as_bytes(), &after_dep(v)).await?;
        if r.status != 200 || r.body != val.as_bytes() {
            bail!("server 2 {key}: {} {:?}", r.status, r.body);
        }
        if i % 3 == 0 {
            read_before.insert(key.clone(), version(&r)?);
        }
    }
    let st = status(&c, &cl, 2).await?;
    let deferred = st["storage"]["deferred_batches"].as_u64().unwrap_or(0);
    assert!(
        deferred > 0,
        "server 2 wrote no batch without an fsync: {}",
        st["storage"]
    );

    // The power cut: the disk holds only what was fsynced.
    power_cut(&mut cl, 2, &platter)?;
    let data2 = cl.path().join("data2");

    // The disk really lost acknowledged (replicated) writes: open it as the server
    // would and count.
    let missing = {
        let (storage, replica) = Storage::open(&data2, 2, 77, 8 << 20, Limits::default())
            .map_err(|e| anyhow!("the cut store does not open: {e}"))?;
        let missing = acked
            .keys()
            .filter(|k| replica.entry(k.as_bytes()).is_none())
            .count();
        drop(storage);
        missing
    };
    assert!(
        missing > 0,
        "the power cut lost nothing: every write was fsynced on server 2"
    );

    // Restarted, server 2 catches up before it serves (it is ready only after a sync
    // round with each peer).
    cl.start(2)?;
    cl.wait_ready(2, &c).await?;
    let ep2 = cl.ep(2)?;
    // Monotonic Reads: the session's earlier reads bound what server 2 may answer.
    for (key, seen) in &read_before {
        let r = get(&c, &ep2, key.as_bytes(), &after_dep(seen)).await?;
        if r.status != 200 || version(&r)? < *seen {
            bail!(
                "server 2 after the cut, {key}: {} {:?} (read {seen} before)",
                r.status,
                r.body
            );
        }
    }
    // No acknowledged write lost, anywhere; Read-Your-Writes at the cut server.
    for (i, ep) in [&ep0, &ep1, &ep2].into_iter().enumerate() {
        let lost = lost(&c, ep, &acked, 2_000).await?;
        assert!(
            lost.is_empty(),
            "server {i} lost acknowledged writes: {lost:?}"
        );
    }
    // A new write through the restarted server reaches the others; then the three
    // stores are the same.
    let r = put(&c, &ep2, b"p/after", b"x", &session()).await?;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let v = version(&r)?;
    for ep in [&ep0, &ep1] {
        let r = get(&c, ep, b"p/after", &after_dep(&v)).await?;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l0 = listing(&c, &cl, 0).await?;
        let same = l0.len() == KEYS + 1
            && listing(&c, &cl, 1).await? == l0
            && listing(&c, &cl, 2).await? == l0;
        if same {
            break;
        }
        if Instant::now() > deadline {
            bail!("stores differ after the cut: {l0:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("power cut on server 2: {missing} of {KEYS} acknowledged writes were not on its disk; all came back");
    Ok(())
}
