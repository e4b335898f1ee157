//! Listing (`GET /kv?prefix=…`), watching (`GET /watch`) and the level each `/kv`
//! answer names, through real `meshkv serve` processes: a 10,000-key listing
//! paginated with no key missed or repeated, a watch on one server that sees every put
//! and delete made through another (in order per key), resuming from an event id, and
//! the `ls` / `watch` commands of the CLI.

mod support;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use meshkv_node::cli::Method;
use meshkv_node::cli::{Endpoint, HttpClient};
use meshkv_node::http::{decode_key, encode_key};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_meshkv");

async fn call(c: &HttpClient, ep: &Endpoint, method: Method, path: &str) -> Result<(u16, String)> {
    let r = c.call(ep, method, path, &[], Bytes::new()).await?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// Every item of a listing from `ep`, following `next`; also the number of pages.
async fn list_all(
    c: &HttpClient,
    ep: &Endpoint,
    query: &str,
) -> Result<(Vec<serde_json::Value>, usize)> {
    let mut items = Vec::new();
    let mut start: Option<String> = None;
    let mut pages = 0;
    loop {
        // The next page: the same query with `start` replaced by `next`.
        let path = match &start {
            None => format!("/kv?{query}"),
            Some(s) => {
                let rest: Vec<&str> = query
                    .split('&')
                    .filter(|p| !p.starts_with("start="))
                    .collect();
                format!("/kv?{}&start={s}", rest.join("&"))
            }
        };
        let r = c.call(ep, Method::GET, &path, &[], Bytes::new()).await?;
        if r.status != 200 {
            bail!("{path}: {} {}", r.status, r.line());
        }
        if r.header("x-meshkv-consistency") != Some("session") {
            bail!("a listing must say it is a session-level read");
        }
        pages += 1;
        let page: serde_json::Value = serde_json::from_slice(&r.body)?;
        let batch = page["items"]
            .as_array()
            .ok_or_else(|| anyhow!("no items in {page}"))?;
        items.extend(batch.iter().cloned());
        match (&page["more"], &page["next"]) {
            (serde_json::Value::Bool(true), serde_json::Value::String(n)) => {
                start = Some(n.clone())
            }
            (serde_json::Value::Bool(false), serde_json::Value::Null) => return Ok((items, pages)),
            other => bail!("bad page end {other:?}"),
        }
    }
}

fn key_of(item: &serde_json::Value) -> Result<Vec<u8>> {
    let k = item["key"].as_str().ok_or_else(|| anyhow!("no key"))?;
    decode_key(k).map_err(|e| anyhow!(e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_10000_key_listing_paginates_without_gaps_or_repeats() -> Result<()> {
    let mut cl = Cluster::new(&[NodeCfg::default()])?;
    cl.start_all()?;
    let c = plain();
    cl.wait_ready(0, &c).await?;
    let ep = cl.ep(0)?;
    // 10,000 keys under p/ (and some around it), written by 32 concurrent writers.
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("p/{i:05}").into_bytes())
        .collect();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let mine: Vec<Vec<u8>> = keys.iter().skip(w).step_by(32).cloned().collect();
        let ep = ep.clone();
        tasks.push(tokio::spawn(async move {
            let c = HttpClient::new(None, None, Duration::from_secs(20));
            for k in mine {
                let r = put(&c, &ep, &k, &k, &session()).await?;
                if r.status != 201 {
                    bail!("put {}: {}", String::from_utf8_lossy(&k), r.status);
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    for k in [&b"p"[..], b"o/1", b"q/1", b"p\xff"] {
        put(&c, &ep, k, b"outside", &session()).await?;
    }
    put(&c, &ep, b"p/gone", b"x", &session()).await?;
    let r = c
        .call(
            &ep,
            Method::DELETE,
            &kv(b"p/gone"),
            &session(),
            Bytes::new(),
        )
        .await?;
    assert_eq!(r.status, 200);

    let (items, pages) = list_all(&c, &ep, "prefix=p%2F&limit=1000").await?;
    assert_eq!(pages, 10, "10,000 keys in pages of 1,000");
    let listed: Vec<Vec<u8>> = items.iter().map(key_of).collect::<Result<_>>()?;
    assert_eq!(listed, keys, "every key once, in byte order, nothing else");
    for it in &items {
        assert_eq!(it["value"], it["key"], "each value is its key");
        it["version"]
            .as_str()
            .ok_or_else(|| anyhow!("no version"))?
            .parse::<meshkv_node::meshkv_core::Version>()
            .map_err(|e| anyhow!(e))?;
    }
    // A range, keys only, default page size.
    let (items, pages) = list_all(&c, &ep, "start=p%2F00100&end=p%2F02600&keys_only=true").await?;
    assert_eq!((items.len(), pages), (2_500, 3));
    assert_eq!(key_of(&items[0])?, b"p/00100");
    assert!(items.iter().all(|i| i.get("value").is_none()));
    // Everything: the 10,000 plus the four outside keys.
    let (all, _) = list_all(&c, &ep, "limit=10000").await?;
    assert_eq!(all.len(), 10_004);

    // Refused, with a one-line reason.
    for bad in [
        "/kv?prefix=p&limit=0",
        "/kv?limit=10001",
        "/kv?ttl=5",
        "/kv?prefix=%zz",
        "/kv?prefix=a&prefix=b",
        "/kv?keys_only=maybe",
        "/kv?consistency=linearizable",
    ] {
        let (status, body) = call(&c, &ep, Method::GET, bad).await?;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "{bad}: {body}");
    }
    let (status, _) = call(&c, &ep, Method::PUT, "/kv?prefix=p").await?;
    assert_eq!(status, 400, "a PUT still needs a key");

    // The CLI follows the pages too, and a closed stdout is not an error.
    let out = Command::new(BIN)
        .args(["ls", "--endpoints", &ep.url(), "p/"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&[u8]> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 10_000);
    assert_eq!(lines[9_999], b"p/09999");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{BIN} ls --endpoints {} p/ | head -n 1", ep.url()))
        .stderr(Stdio::piped())
        .output()?;
    assert_eq!(out.stdout, b"p/00000\n");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args([
            "ls",
            "--endpoints",
            &ep.url(),
            "-o",
            "json",
            "--values",
            "p/0000",
        ])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let first: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|&b| b == b'\n')
            .next()
            .ok_or_else(|| anyhow!("no output"))?,
    )?;
    assert_eq!(first["key"], "p%2F00000");
    assert_eq!(first["value"], "p%2F00000");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_sees_every_change_and_resumes_from_an_id() -> Result<()> {
    let mut cl = Cluster::new(&[NodeCfg::default(), NodeCfg::default()])?;
    cl.start_all()?;
    let c = plain();
    for i in 0..2 {
        cl.wait_ready(i, &c).await?;
        cl.wait_links(i, 1, &c).await?;
    }
    let (writer, watcher) = (cl.ep(0)?, cl.ep(1)?);
    let mut w = Watch::open(&c, &watcher, "prefix=w%2F").await?;

    // Through the other server: 40 puts, every 4th key deleted, a second put of every
    // 5th, and writes outside the prefix.
    let mut expect: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for i in 0..40 {
        let k = format!("w/{i:02}");
        put(&c, &writer, k.as_bytes(), b"one", &[]).await?;
        expect
            .entry(k.clone())
            .or_default()
            .push(Some("one".into()));
        put(&c, &writer, format!("x/{i}").as_bytes(), b"no", &[]).await?;
        if i % 4 == 0 {
            let r = c
                .call(
                    &writer,
                    Method::DELETE,
                    &kv(k.as_bytes()),
                    &[],
                    Bytes::new(),
                )
                .await?;
            assert_eq!(r.status, 200);
            expect.get_mut(&k).unwrap().push(None);
        }
        if i % 5 == 0 {
            put(&c, &writer, k.as_bytes(), b"two", &[]).await?;
            expect.get_mut(&k).unwrap().push(Some("two".into()));
        }
    }
    let total: usize = expect.values().map(Vec::len).sum();
    let mut got: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    let mut events = Vec::new();
    for _ in 0..total {
        let e = w.next().await?;
        let (k, v) = event_key(&e)?;
        assert_eq!(e.event, if v.is_some() { "put" } else { "delete" });
        assert!(k.starts_with("w/"), "{k} is outside the prefix");
        got.entry(k).or_default().push(v);
        events.push(e);
    }
    assert_eq!(got, expect, "every change, in order per key");

    // Resume after the 10th event: the same events follow, nothing skipped.
    let id = events[9]
        .id
        .clone()
        .ok_or_else(|| anyhow!("event without id"))?;
    let mut again = Watch::open(
        &c,
        &watcher,
        &format!("prefix=w%2F&after={}", encode_key(id.as_bytes())),
    )
    .await?;
    for want in &events[10..] {
        let e = again.next().await?;
        assert_eq!((&e.id, &e.data), (&want.id, &want.data));
    }
    // An id of another incarnation: a reset first, naming where to go on from.
    let mut stale = Watch::open(&c, &watcher, "prefix=w%2F&after=1%3A5").await?;
    let e = stale.next().await?;
    assert_eq!(e.event, "reset", "{e:?}");
    // It names this incarnation's newest change (maybe outside the prefix).
    let seq = |id: Option<&str>| -> Option<(String, u64)> {
        let (rid, n) = id?.split_once(':')?;
        Some((rid.to_string(), n.parse().ok()?))
    };
    let (rid, n) = seq(e.id.as_deref()).ok_or_else(|| anyhow!("bad reset id {e:?}"))?;
    let (last_rid, last_n) =
        seq(events.last().and_then(|e| e.id.as_deref())).ok_or_else(|| anyhow!("bad event id"))?;
    assert!(rid == last_rid && n >= last_n, "{e:?}");

    // A listing names the feed position it was read at: watching from there misses
    // nothing written after it.
    let r = c
        .call(&watcher, Method::GET, "/kv?prefix=w%2F", &[], Bytes::new())
        .await?;
    let at = r
        .header("x-meshkv-watch-id")
        .ok_or_else(|| anyhow!("no watch id on a listing"))?
        .to_string();
    let mut from = Watch::open(
        &c,
        &watcher,
        &format!("prefix=w%2F&after={}", encode_key(at.as_bytes())),
    )
    .await?;
    put(&c, &writer, b"w/late", b"late", &[]).await?;
    let e = from.next().await?;
    assert_eq!(event_key(&e)?, ("w/late".into(), Some("late".into())));

    for bad in [
        "/watch?after=nonsense",
        "/watch?prefix=a&limit=3",
        "/watch?consistency=linearizable",
    ] {
        let (status, body) = call(&c, &watcher, Method::GET, bad).await?;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // The CLI prints the changes as lines.
    let mut child = Command::new(BIN)
        .args(["watch", "--endpoints", &watcher.url(), "cli/"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(2)
            .collect::<std::io::Result<Vec<String>>>()
    });
    // The watch is open once a write made after it shows up: write until it does.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while !reader.is_finished() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("meshkv watch printed nothing");
        }
        put(&c, &writer, format!("cli/{n}").as_bytes(), b"v", &[]).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = reader.join().map_err(|_| anyhow!("reader panicked"))??;
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert!(l.starts_with("put cli/") && l.ends_with(" v"), "{l}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_its_level() -> Result<()> {
    let mut cl = Cluster::new(&[NodeCfg::default()])?;
    cl.start_all()?;
    let c = plain();
    cl.wait_ready(0, &c).await?;
    let ep = cl.ep(0)?;
    let level = |r: &meshkv_node::cli::Reply| r.header("x-meshkv-consistency").map(str::to_string);
    let r = put(&c, &ep, b"k", b"v", &[]).await?;
    assert_eq!(
        level(&r).as_deref(),
        Some("linearizable"),
        "the shipped default"
    );
    let v = version(&r)?;
    let r = get(&c, &ep, b"k", &after(&v, 100)).await?;
    assert_eq!(
        level(&r).as_deref(),
        Some("session"),
        "a token means session"
    );
    let r = get(&c, &ep, b"missing", &session()).await?;
    assert_eq!((r.status, level(&r).as_deref()), (404, Some("session")));
    Ok(())
}
