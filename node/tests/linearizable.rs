//! Linearizable registers through real processes: six concurrent plain HTTP clients
//! (no session token, no header: the shipped default level) on three shared keys
//! through random servers of a three-server cluster; every key's history must be
//! linearizable ([`meshkv_core::linearizable`]). The same with the level named, and —
//! to show the check can fail — against servers that serve "linearizable" requests
//! at the session level (a test-only mutation), where it must find violations.

mod support;

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;
use meshkv_node::cli::{Endpoint, HttpClient};
use meshkv_node::meshkv_core::linearizable::{self, Kind, Op, Verdict};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;

const KEYS: usize = 3;
const CLIENTS: usize = 6;

/// One client's loop: `ops` random operations through random servers.
async fn client(
    id: usize,
    eps: Vec<Endpoint>,
    headers: Vec<(&'static str, String)>,
    ops: usize,
    start: Instant,
) -> Result<Vec<(Vec<u8>, Op)>> {
    let c = HttpClient::new(None, None, Duration::from_secs(10));
    let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64 * 7919);
    let mut out = Vec::new();
    // The value of each version this client has seen, for If-Match.
    let mut seen: HashMap<Vec<u8>, (String, Vec<u8>)> = HashMap::new();
    let now = || start.elapsed().as_micros() as u64;
    for n in 0..ops {
        let key = format!("shared{}", rng.gen_range(0..KEYS)).into_bytes();
        let ep = &eps[rng.gen_range(0..eps.len())];
        let value = format!("c{id}-{n}").into_bytes();
        let pick = rng.gen_range(0..10);
        let mut h = headers.clone();
        let (method, body, kind) = match pick {
            0..=3 => (Method::GET, Bytes::new(), Kind::Get { value: None }),
            4..=6 => (
                Method::PUT,
                Bytes::from(value.clone()),
                Kind::Put {
                    value: Some(value.clone()),
                    previous: None,
                },
            ),
            7 => (
                Method::DELETE,
                Bytes::new(),
                Kind::Put {
                    value: None,
                    previous: None,
                },
            ),
            8 => {
                h.push(("if-none-match", "*".into()));
                (
                    Method::PUT,
                    Bytes::from(value.clone()),
                    Kind::Cas {
                        expect: None,
                        value: Some(value.clone()),
                        ok: false,
                    },
                )
            }
            _ => match seen.get(&key) {
                Some((version, v)) => {
                    h.push(("if-match", version.clone()));
                    (
                        Method::PUT,
                        Bytes::from(value.clone()),
                        Kind::Cas {
                            expect: Some(v.clone()),
                            value: Some(value.clone()),
                            ok: false,
                        },
                    )
                }
                None => (Method::GET, Bytes::new(), Kind::Get { value: None }),
            },
        };
        let invoke = now();
        let r = c.call(ep, method, &kv(&key), &h, body).await;
        let ret = now();
        let version = r
            .as_ref()
            .ok()
            .and_then(|r| r.header(VERSION).map(str::to_string));
        let (ret, kind) = match (r, kind) {
            (Ok(r), Kind::Get { .. }) if r.status == 200 => {
                if let Some(v) = &version {
                    seen.insert(key.clone(), (v.clone(), r.body.to_vec()));
                }
                (
                    Some(ret),
                    Kind::Get {
                        value: Some(r.body.to_vec()),
                    },
                )
            }
            (Ok(r), Kind::Get { .. }) if r.status == 404 => {
                seen.remove(&key);
                (Some(ret), Kind::Get { value: None })
            }
            (Ok(r), Kind::Put { value, .. }) if matches!(r.status, 200 | 201 | 204) => {
                let previous = (r.status == 200).then(|| r.body.to_vec());
                match (&value, &version) {
                    (Some(v), Some(ver)) => {
                        seen.insert(key.clone(), (ver.clone(), v.clone()));
                    }
                    _ => {
                        seen.remove(&key);
                    }
                }
                (
                    Some(ret),
                    Kind::Put {
                        value,
                        previous: Some(previous),
                    },
                )
            }
            (Ok(r), Kind::Cas { expect, value, .. }) if matches!(r.status, 200 | 201) => {
                if let (Some(v), Some(ver)) = (&value, &version) {
                    seen.insert(key.clone(), (ver.clone(), v.clone()));
                }
                (
                    Some(ret),
                    Kind::Cas {
                        expect,
                        value,
                        ok: true,
                    },
                )
            }
            (Ok(r), Kind::Cas { expect, value, .. }) if r.status == 412 => (
                Some(ret),
                Kind::Cas {
                    expect,
                    value,
                    ok: false,
                },
            ),
            (Ok(r), kind) if r.status >= 500 => {
                eprintln!(
                    "client {id}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body).trim()
                );
                (None, kind)
            }
            (Ok(r), _) => anyhow::bail!("client {id}: unexpected answer {r:?}"),
            // No answer: indeterminate.
            (Err(_), kind) => (None, kind),
        };
        out.push((
            key,
            Op {
                client: id as u64,
                invoke,
                ret,
                kind,
            },
        ));
    }
    Ok(out)
}

struct Run {
    verdicts: Vec<(Vec<u8>, Verdict)>,
    ops: usize,
    indeterminate: usize,
}

async fn run(env: &[(String, String)], headers: Vec<(&'static str, String)>) -> Result<Run> {
    let cfg = NodeCfg {
        env: env.to_vec(),
        ..Default::default()
    };
    let (cl, _) = meshed(&[cfg.clone(), cfg.clone(), cfg]).await?;
    let eps: Vec<Endpoint> = (0..3).map(|i| cl.ep(i)).collect::<Result<_>>()?;
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(id, eps.clone(), headers.clone(), 60, start)))
        .collect();
    let mut history = Vec::new();
    for t in tasks {
        history.extend(t.await??);
    }
    let indeterminate = history.iter().filter(|(_, o)| o.ret.is_none()).count();
    Ok(Run {
        ops: history.len(),
        indeterminate,
        verdicts: linearizable::check_keys(&history, linearizable::DEFAULT_BUDGET),
    })
}

fn report(label: &str, r: &Run) {
    for (k, v) in &r.verdicts {
        let verdict = match v {
            Verdict::Linearizable { .. } => "linearizable".to_string(),
            Verdict::NotLinearizable { stuck_at, .. } => {
                format!("NOT linearizable at {stuck_at:?}")
            }
            Verdict::Unknown { explored } => format!("undecided after {explored} states"),
        };
        println!("{label}: {}: {verdict}", String::from_utf8_lossy(k));
    }
    println!(
        "{label}: {} operations, {} without an answer",
        r.ops, r.indeterminate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_get_linearizable_histories_by_default() -> Result<()> {
    let r = run(&[], Vec::new()).await?;
    report("no header", &r);
    assert_eq!(r.verdicts.len(), KEYS);
    assert!(r.verdicts.iter().all(|(_, v)| v.is_linearizable()));
    let r = run(
        &[],
        vec![("x-meshkv-consistency", "linearizable".to_string())],
    )
    .await?;
    report("header", &r);
    assert!(r.verdicts.iter().all(|(_, v)| v.is_linearizable()));
    Ok(())
}

/// The check fails against servers that answer "linearizable" requests from their own
/// store (the session level without a token): the old default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_servers_that_answer_from_their_own_store() -> Result<()> {
    let env = vec![(
        "MESHKV_TEST_MUTATION".to_string(),
        "lin-as-session".to_string(),
    )];
    let mut caught = false;
    for attempt in 0..5 {
        let r = run(&env, Vec::new()).await?;
        report(&format!("broken servers, run {attempt}"), &r);
        if r.verdicts.iter().any(|(_, v)| v.is_violation()) {
            caught = true;
            break;
        }
    }
    assert!(
        caught,
        "the checker found no violation in 5 runs against broken servers"
    );
    Ok(())
}
