//! Running a server or client as a child of the master: the control loop on
//! stdin/stdout (see [`meshkv_core::control`]). The child exits when stdin closes.

use crate::client::{Client, GetReply};
use crate::server::Server;
use meshkv_core::control::{ControlIn, ControlOut, ControlReq, ControlResp, GetResult};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

fn addr(s: &str) -> Result<SocketAddr, ControlResp> {
    s.parse()
        .map_err(|_| ControlResp::Error(format!("bad address {s:?}")))
}

async fn stdout_writer(mut rx: mpsc::UnboundedReceiver<ControlOut>) {
    let mut out = tokio::io::stdout();
    while let Some(msg) = rx.recv().await {
        let mut line = match serde_json::to_string(&msg) {
            Ok(l) => l,
            Err(e) => format!(
                "{{\"seq\":{},\"resp\":{{\"error\":\"cannot encode answer: {e}\"}}}}",
                msg.seq
            ),
        };
        line.push('\n');
        if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
            return;
        }
    }
}

/// Read control lines until EOF; each is parsed or answered with a one-line error.
async fn lines(mut handle: impl FnMut(ControlIn, mpsc::UnboundedSender<ControlOut>)) {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(stdout_writer(rx));
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ControlIn>(&line) {
            Ok(msg) => handle(msg, tx.clone()),
            Err(e) => {
                let _ = tx.send(ControlOut {
                    seq: 0,
                    resp: ControlResp::Error(format!("bad control line: {e}")),
                });
            }
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// Serve the master's control channel for a server until stdin closes.
pub async fn run_server(server: Server, http: Option<SocketAddr>) {
    let ready = ControlOut {
        seq: 0,
        resp: ControlResp::Ready {
            quic: server.quic_addr().map(|a| a.to_string()),
            http: http.map(|a| a.to_string()),
        },
    };
    println!("{}", serde_json::to_string(&ready).unwrap_or_default());
    lines(|msg, tx| {
        let server = server.clone();
        tokio::spawn(async move {
            let resp = match msg.req {
                ControlReq::Peer {
                    id,
                    addr: a,
                    wait_ms,
                } => match addr(&a) {
                    Ok(a) => {
                        server.set_peer(id, Some(a));
                        if wait_ms == 0
                            || server.wait_link(id, Duration::from_millis(wait_ms)).await
                        {
                            ControlResp::Ok
                        } else {
                            ControlResp::Error(format!(
                                "link from server {} to server {id} not up after {wait_ms} ms",
                                server.id()
                            ))
                        }
                    }
                    Err(e) => e,
                },
                ControlReq::CaughtUp { wait_ms } => {
                    if server.wait_caught_up(Duration::from_millis(wait_ms)).await {
                        ControlResp::Ok
                    } else {
                        ControlResp::Error(format!(
                            "server {} did not complete a sync round with every peer in {wait_ms} ms",
                            server.id()
                        ))
                    }
                }
                ControlReq::Member { id } => {
                    server.add_member(id);
                    ControlResp::Ok
                }
                ControlReq::Block { id } => {
                    server.block(id);
                    ControlResp::Ok
                }
                ControlReq::Digest => {
                    let (root, keys, seen) = server.digest();
                    ControlResp::Digest { root, keys, seen }
                }
                ControlReq::Dump => ControlResp::Dump {
                    pairs: server.dump(),
                },
                ControlReq::Status => {
                    ControlResp::Status(serde_json::to_string(&server.status()).unwrap_or_default())
                }
                other => ControlResp::Error(format!("not a server command: {other:?}")),
            };
            let _ = tx.send(ControlOut { seq: msg.seq, resp });
        });
    })
    .await;
    server.shutdown().await;
}

/// Puts a client process sends at once, at most (the master keeps fewer in flight per
/// client anyway).
const PUT_BATCH: usize = 16;

/// A control request and where its answer goes.
type Job = (ControlIn, mpsc::UnboundedSender<ControlOut>);

/// A put waiting in a client process.
struct PutJob {
    seq: u64,
    tx: mpsc::UnboundedSender<ControlOut>,
    key: String,
    value: String,
}

/// The job as a put, or back as it came.
fn as_put((msg, tx): Job) -> Result<PutJob, Job> {
    match msg.req {
        ControlReq::Put { key, value } => Ok(PutJob {
            seq: msg.seq,
            tx,
            key,
            value,
        }),
        req => Err((ControlIn { seq: msg.seq, req }, tx)),
    }
}

/// Serve the master's control channel for a client until stdin closes. Requests run in
/// the order they came, one at a time, except that puts arriving while others wait, to
/// distinct keys, go to the server together ([`Client::put_many`]).
pub async fn run_client(client: Client) {
    let ready = ControlOut {
        seq: 0,
        resp: ControlResp::Ready {
            quic: None,
            http: None,
        },
    };
    println!("{}", serde_json::to_string(&ready).unwrap_or_default());
    let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
    let worker = tokio::spawn(async move {
        let mut client = client;
        let mut next = None;
        loop {
            let job = match next.take() {
                Some(j) => j,
                None => match jobs_rx.recv().await {
                    Some(j) => j,
                    None => break,
                },
            };
            let first = match as_put(job) {
                Ok(p) => p,
                Err((msg, tx)) => {
                    let resp = client_request(&mut client, msg.req).await;
                    let _ = tx.send(ControlOut { seq: msg.seq, resp });
                    continue;
                }
            };
            // Puts already waiting go out together, up to the first that is not a put or
            // writes a key already in the batch (that one waits for the batch).
            let mut batch = vec![first];
            while batch.len() < PUT_BATCH {
                let Ok(j) = jobs_rx.try_recv() else {
                    break;
                };
                let repeats = matches!(&j.0.req,
                    ControlReq::Put { key, .. } if batch.iter().any(|p| p.key == *key));
                if repeats {
                    next = Some(j);
                    break;
                }
                match as_put(j) {
                    Ok(p) => batch.push(p),
                    Err(j) => {
                        next = Some(j);
                        break;
                    }
                }
            }
            let puts: Vec<(&[u8], Option<&[u8]>)> = batch
                .iter()
                .map(|p| (p.key.as_bytes(), Some(p.value.as_bytes())))
                .collect();
            let answers = client.put_many(&puts).await;
            for (p, a) in batch.into_iter().zip(answers) {
                let resp = match a {
                    Ok(_) => ControlResp::Ok,
                    Err(e) => ControlResp::Error(e.to_string()),
                };
                let _ = p.tx.send(ControlOut { seq: p.seq, resp });
            }
        }
    });
    lines(|msg, tx| {
        let _ = jobs_tx.send((msg, tx));
    })
    .await;
    drop(jobs_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), worker).await;
}

async fn client_request(client: &mut Client, req: ControlReq) -> ControlResp {
    match req {
        ControlReq::Link { server, addr: a } => match addr(&a) {
            Ok(a) => {
                client.link(server, a);
                ControlResp::Ok
            }
            Err(e) => e,
        },
        ControlReq::Readdress { server, addr: a } => match addr(&a) {
            Ok(a) => {
                client.readdress(server, a);
                ControlResp::Ok
            }
            Err(e) => e,
        },
        ControlReq::Unlink { server } => {
            client.unlink(server);
            ControlResp::Ok
        }
        ControlReq::Down { server } => {
            client.down(server);
            ControlResp::Ok
        }
        ControlReq::Get { key } => match client.get(key.as_bytes()).await {
            Ok(GetReply::Value(v, _)) => {
                ControlResp::Got(GetResult::Value(String::from_utf8_lossy(&v).into_owned()))
            }
            Ok(GetReply::NotFound) => ControlResp::Got(GetResult::NotFound),
            Ok(GetReply::Dep) => ControlResp::Got(GetResult::Dep),
            Err(e) => ControlResp::Error(e.to_string()),
        },
        other => ControlResp::Error(format!("not a client command: {other:?}")),
    }
}
