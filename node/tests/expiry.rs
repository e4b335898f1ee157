//! Expiry (`PUT /kv/k?ttl=S`, `X-Meshkv-Ttl`, `meshkv put --ttl`) through real
//! `meshkv serve` processes: a key written with a TTL reads as present before its
//! expiry time and as absent on every server from then on (also on a server killed
//! before the expiry and restarted after it), each server's watchers see an `expire`
//! event no earlier than the expiry time, a later write without a TTL is never expired
//! by an earlier one's TTL, a linearizable key expires through its register (and can
//! then be created again with `If-None-Match: *`), and bad TTLs are refused.

mod support;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use meshkv_node::cli::{Method, SseEvent};
use meshkv_node::meshkv_core::Version;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_meshkv");
/// Seconds to live of the test's expiring keys: long enough that the reads right
/// after the writes happen before it even on a loaded machine.
const TTL: u64 = 3;

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Read `expire` events from `w` until one for each key of `want` arrived; returns
/// the wall clock at each arrival. An expiry of any other key fails.
async fn expiries(w: &mut Watch, want: &[&str]) -> Result<Vec<(String, u64)>> {
    let mut left: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let mut seen = Vec::new();
    while !left.is_empty() {
        let e: SseEvent = w.next().await?;
        if e.event != "expire" {
            continue;
        }
        let (key, value) = event_key(&e)?;
        if value.is_some() || !left.remove(&key) {
            bail!("unexpected expire event {e:?} (waiting for {left:?})");
        }
        seen.push((key, wall_micros()));
    }
    Ok(seen)
}

fn ts_of(r: &meshkv_node::cli::Reply) -> Result<u64> {
    Ok(version(r)?.ts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_with_a_ttl_is_gone_from_every_server_at_its_expiry() -> Result<()> {
    let (mut cl, c) = meshed(&[NodeCfg::default(), NodeCfg::default(), NodeCfg::default()]).await?;
    let ep0 = cl.ep(0)?;
    let mut watches = [
        Watch::open(&c, &ep0, "prefix=t%2F").await?,
        Watch::open(&c, &cl.ep(1)?, "prefix=t%2F").await?,
    ];

    // A session key with ?ttl=, a linearizable one with the header, one without a
    // TTL, one whose TTL is overwritten by a later write without one (written first,
    // so that its expiry time has passed when the others expire), and the CLI's.
    let ttl = TTL.to_string();
    let mut with_ttl = session();
    with_ttl.push(("x-meshkv-ttl", ttl.clone()));
    let r = put(&c, &ep0, b"t/over", b"1", &with_ttl).await?;
    assert_eq!(r.status, 201);
    let over_expires = ts_of(&r)? + TTL * 1_000_000;
    let r = c
        .call(
            &ep0,
            Method::PUT,
            &format!("/kv/t%2Fs?ttl={TTL}&consistency=session"),
            &[],
            Bytes::from_static(b"s"),
        )
        .await?;
    assert_eq!(r.status, 201, "{}", r.line());
    let vs: Version = version(&r)?;
    let r = put(&c, &ep0, b"t/l", b"l", &[("x-meshkv-ttl", ttl.clone())]).await?;
    assert_eq!(r.status, 201, "{}", r.line());
    assert_eq!(r.header("x-meshkv-consistency"), Some("linearizable"));
    let l_ts = ts_of(&r)?;
    let r = put(&c, &ep0, b"t/keep", b"k", &session()).await?;
    assert_eq!(r.status, 201);
    let r = put(&c, &ep0, b"t/over", b"2", &session()).await?;
    assert_eq!(r.status, 200, "the live TTL'd value is the previous one");
    let vo = version(&r)?;
    let out = Command::new(BIN)
        .args([
            "put",
            "--endpoints",
            &cl.ep(1)?.url(),
            "--ttl",
            "1",
            "t/cli",
            "c",
        ])
        .stderr(Stdio::inherit())
        .output()?;
    assert!(out.status.success(), "meshkv put --ttl failed");

    // Before the expiry time: present on every server (waiting for replication).
    for i in 0..3 {
        let r = get(&c, &cl.ep(i)?, b"t/s", &after(&vs, 2000)).await?;
        assert_eq!((r.status, &r.body[..]), (200, &b"s"[..]), "server {i}");
        let r = get(&c, &cl.ep(i)?, b"t/over", &after(&vo, 2000)).await?;
        assert_eq!((r.status, &r.body[..]), (200, &b"2"[..]), "server {i}");
    }
    let r = get(&c, &cl.ep(2)?, b"t/l", &[]).await?;
    assert_eq!((r.status, &r.body[..]), (200, &b"l"[..]));
    let expires = [("t/s", vs.ts), ("t/l", l_ts)].map(|(k, ts)| (k, ts + TTL * 1_000_000));
    assert!(
        wall_micros() < expires[0].1,
        "the writes took longer than the TTL: this run cannot check 'before'"
    );

    // Server 2 dies while the keys are live; it comes back after their expiry.
    cl.nodes[2].proc = None;

    // Every watcher sees each expiry, no earlier than its expiry time (one machine,
    // one clock), as a tombstone of the expired write.
    for w in watches.iter_mut() {
        for (key, at) in expiries(w, &["t/cli", "t/s", "t/l"]).await? {
            if let Some((_, e)) = expires.iter().find(|(k, _)| *k == key) {
                assert!(at + 50_000 >= *e, "{key} expired {} µs early", e - at);
            }
        }
    }
    // From then on the keys are absent on every server; the rewritten one is not.
    for i in 0..2 {
        let ep = cl.ep(i)?;
        for key in [&b"t/s"[..], b"t/cli"] {
            let r = get(&c, &ep, key, &session()).await?;
            assert_eq!(
                r.status,
                404,
                "server {i}: {}",
                String::from_utf8_lossy(key)
            );
        }
        assert!(wall_micros() >= over_expires);
        let r = get(&c, &ep, b"t/over", &session()).await?;
        assert_eq!((r.status, &r.body[..]), (200, &b"2"[..]), "server {i}");
    }
    // The linearizable key expired through its register: absent, then creatable.
    let r = get(&c, &cl.ep(1)?, b"t/l", &[]).await?;
    assert_eq!(r.status, 404, "{}", r.line());
    let r = put(
        &c,
        &cl.ep(1)?,
        b"t/l",
        b"again",
        &[("if-none-match", "*".into())],
    )
    .await?;
    assert_eq!(r.status, 201, "{}", r.line());

    // The restarted server read the expiry times from its disk.
    cl.start(2)?;
    cl.wait_ready(2, &c).await?;
    let ep2 = cl.ep(2)?;
    assert_eq!(get(&c, &ep2, b"t/s", &session()).await?.status, 404);
    assert_eq!(get(&c, &ep2, b"t/cli", &session()).await?.status, 404);
    let r = get(&c, &ep2, b"t/l", &[]).await?;
    assert_eq!((r.status, &r.body[..]), (200, &b"again"[..]));
    // Listings agree: only what lives.
    for i in 0..3 {
        let r = c
            .call(
                &cl.ep(i)?,
                Method::GET,
                "/kv?prefix=t%2F&keys_only=true",
                &[],
                Bytes::new(),
            )
            .await?;
        let page: serde_json::Value = serde_json::from_slice(&r.body)?;
        let keys: Vec<&str> = page["items"]
            .as_array()
            .ok_or_else(|| anyhow!("no items"))?
            .iter()
            .filter_map(|i| i["key"].as_str())
            .collect();
        assert_eq!(keys, ["t%2Fkeep", "t%2Fl", "t%2Fover"], "server {i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_ttls_are_refused_and_write_nothing() -> Result<()> {
    let mut cl = Cluster::new(&[NodeCfg::default()])?;
    cl.start_all()?;
    let c = plain();
    cl.wait_ready(0, &c).await?;
    let ep = cl.ep(0)?;
    type Case<'a> = (Method, &'a str, Vec<(&'a str, String)>, &'a str);
    let cases: [Case; 9] = [
        (Method::PUT, "?ttl=0", vec![], "ttl 0"),
        (Method::PUT, "?ttl=abc", vec![], "whole seconds"),
        (Method::PUT, "?ttl=1.5", vec![], "whole seconds"),
        (Method::PUT, "?ttl=999999999999", vec![], "seconds"),
        (
            Method::PUT,
            "?ttl=5",
            vec![("x-meshkv-ttl", "6".into())],
            "different TTLs",
        ),
        (
            Method::PUT,
            "",
            vec![("x-meshkv-ttl", "-1".into())],
            "x-meshkv-ttl",
        ),
        (Method::DELETE, "?ttl=5", vec![], "PUT only"),
        (Method::GET, "?ttl=5", vec![], "PUT only"),
        (Method::PUT, "?tll=5", vec![], "unknown query parameter"),
    ];
    for (method, query, headers, says) in cases {
        let r = c
            .call(
                &ep,
                method.clone(),
                &format!("/kv/t%2Fx{query}"),
                &headers,
                Bytes::from_static(b"v"),
            )
            .await?;
        let line = r.line();
        assert_eq!(r.status, 400, "{method} {query} {headers:?}: {line}");
        assert!(
            line.contains(says),
            "{method} {query}: {line:?} should say {says:?}"
        );
        assert!(!String::from_utf8_lossy(&r.body).trim_end().contains('\n'));
    }
    assert_eq!(get(&c, &ep, b"t/x", &session()).await?.status, 404);
    // The CLI refuses a zero TTL itself.
    let out = Command::new(BIN)
        .args(["put", "--endpoints", &ep.url(), "--ttl", "0", "t/x", "v"])
        .output()?;
    assert_eq!(out.status.code(), Some(2), "usage error");
    Ok(())
}
