//! Snapshots through real processes: `meshkv snapshot save` from one server while
//! writes go on, a lost server's data directory rebuilt with `meshkv snapshot restore`,
//! the server started on it rejoining as a new incarnation and converging with every
//! acknowledged write; a damaged snapshot refused.

mod support;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use meshkv_node::cli::Method;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_meshkv");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_restored_from_a_snapshot_rejoins_and_converges() -> Result<()> {
    let (mut cl, c) = meshed(&[NodeCfg::default(), NodeCfg::default(), NodeCfg::default()]).await?;
    let old_incarnation = status(&c, &cl, 2).await?["incarnation"].clone();

    // A writer through server 0 (and a delete now and then) for the whole save.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (ep, stop, written) = (cl.ep(0)?, stop.clone(), written.clone());
        tokio::spawn(async move {
            let c = plain();
            let mut acked: BTreeMap<String, Option<String>> = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || n < 300 {
                let key = format!("k{}", n % 200);
                let r = if n % 17 == 16 {
                    c.call(
                        &ep,
                        Method::DELETE,
                        &kv(key.as_bytes()),
                        &session(),
                        Bytes::new(),
                    )
                    .await?
                } else {
                    put(
                        &c,
                        &ep,
                        key.as_bytes(),
                        format!("v{n}").as_bytes(),
                        &session(),
                    )
                    .await?
                };
                if !matches!(r.status, 200 | 201 | 204) {
                    bail!("write {key}: {}", r.status);
                }
                acked.insert(key, (n % 17 != 16).then(|| format!("v{n}")));
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(acked)
        })
    };
    // Save from server 1 while the writes go on (once some have landed).
    let deadline = Instant::now() + Duration::from_secs(20);
    while written.load(Ordering::Relaxed) < 100 {
        if Instant::now() > deadline || writer.is_finished() {
            bail!("the writer did not get going");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let file = cl.path().join("snap.bin");
    let save = Command::new(BIN)
        .args(["snapshot", "save", "--endpoints", &cl.ep(1)?.url()])
        .arg(&file)
        .output()?;
    assert!(save.status.success(), "{save:?}");
    let said = String::from_utf8_lossy(&save.stdout).into_owned();
    assert!(
        said.starts_with("saved ") && said.contains("from server 1"),
        "{said}"
    );
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await??;

    // Server 2 is lost with its disk; a new directory is built from the snapshot.
    cl.nodes[2].proc = None;
    let data2 = cl.path().join("data2");
    std::fs::remove_dir_all(&data2)?;

    // A damaged snapshot is refused with one line, and writes nothing.
    let mut bad = std::fs::read(&file)?;
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let bad_file = cl.path().join("bad.bin");
    std::fs::write(&bad_file, &bad)?;
    let o = Command::new(BIN)
        .args(["snapshot", "restore", "--id", "2", "--data-dir"])
        .arg(&data2)
        .arg(&bad_file)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains("checksum"), "{o:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!data2.exists(), "a refused restore created the directory");

    let o = Command::new(BIN)
        .args(["snapshot", "restore", "--id", "2", "--data-dir"])
        .arg(&data2)
        .arg(&file)
        .output()?;
    assert!(o.status.success(), "{o:?}");
    // Every saved entry went into the new store.
    let count = |text: &str, verb: &str| -> Option<u64> {
        text.strip_prefix(verb)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let saved = count(&said, "saved ").ok_or_else(|| anyhow!("{said}"))?;
    let restored_text = String::from_utf8_lossy(&o.stdout).into_owned();
    let restored = count(&restored_text, "restored ").ok_or_else(|| anyhow!("{restored_text}"))?;
    assert!(saved > 0 && restored == saved, "{said} / {restored_text}");
    // Never over an existing store.
    let again = Command::new(BIN)
        .args(["snapshot", "restore", "--id", "2", "--data-dir"])
        .arg(&data2)
        .arg(&file)
        .output()?;
    assert!(!again.status.success(), "{again:?}");

    cl.start(2)?;
    cl.wait_ready(2, &c).await?;
    cl.wait_links(2, 2, &c).await?;
    let new_incarnation = status(&c, &cl, 2).await?["incarnation"].clone();
    assert_ne!(
        new_incarnation, old_incarnation,
        "a restored server is a new incarnation"
    );

    // A write through the restored server reaches the others: its dots are new.
    put(&c, &cl.ep(2)?, b"after-restore", b"yes", &session()).await?;

    // Every server converges to the same store, holding every acknowledged write.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut roots = Vec::new();
        for i in 0..3 {
            roots.push(status(&c, &cl, i).await?["digest_root"].clone());
        }
        if roots.iter().all(|r| *r == roots[0]) {
            break;
        }
        if Instant::now() > deadline {
            bail!("digests never agreed: {roots:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ep2 = cl.ep(2)?;
    for (key, want) in acked
        .iter()
        .chain([(&"after-restore".to_string(), &Some("yes".to_string()))])
    {
        let r = get(&c, &ep2, key.as_bytes(), &session()).await?;
        let got = (r.status == 200).then(|| String::from_utf8_lossy(&r.body).into_owned());
        if got != *want {
            return Err(anyhow!(
                "{key}: server 2 has {got:?}, acknowledged {want:?}"
            ));
        }
    }
    Ok(())
}
