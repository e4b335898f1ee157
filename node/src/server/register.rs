//! The adapter of the linearizable registers ([`meshkv_core::paxos`]): it runs the
//! core's [`Proposer`] for a client's request, carrying its prepares and accepts to the
//! key's acceptors (this server's through the commit thread, the others' as
//! [`PeerReq::Paxos`] on a bi stream) and its stamp through the commit thread; and it
//! answers peers' requests with this server's acceptor, whose state the commit thread
//! makes durable before the answer leaves.
//!
//! Every attempt has a fresh ballot of this incarnation; a rejected attempt is retried
//! above the promise it met after a random back-off, until the deadline
//! ([`super::ServerOpts::linearizable_timeout`]). A server that cannot reach a majority of the
//! key's acceptors answers at once with [`ServerError::Unavailable`], naming them, so
//! a client can fail over to a server that can.

use super::{lock, CommitJob, ServerError, Shared, REQUEST_TIMEOUT};
use crate::frame;
use meshkv_core::entry::Entry;
use meshkv_core::paxos::{self, Ballot, Change, Next, PaxosReq, PaxosResp, Proposer};
use meshkv_core::proto::{PeerReq, PeerResp};
use meshkv_core::{NodeId, Op, Outcome};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// What a linearizable operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinOutcome {
    /// The register's value before the operation (`None`: never written).
    pub previous: Option<Entry>,
    /// Its value after it.
    pub current: Option<Entry>,
    /// False when a write's precondition failed (nothing was written).
    pub applied: bool,
}

impl Shared {
    /// The acceptor set of `key` under the current membership.
    pub(super) fn acceptor_set(&self, key: &[u8]) -> Vec<NodeId> {
        let mut servers: BTreeSet<NodeId> = lock(&self.replica).members().into_iter().collect();
        servers.insert(self.id);
        paxos::acceptors(key, &servers)
    }

    fn linked(&self, id: NodeId) -> bool {
        id == self.id
            || lock(&self.peers)
                .get(&id)
                .is_some_and(|p| p.conn.is_some() && !p.blocked)
    }

    /// A fresh ballot of this incarnation above `above` and every earlier one.
    fn ballot_above(&self, above: Ballot) -> Ballot {
        let mut counter = 0;
        let _ = self.ballots.fetch_update(Relaxed, Relaxed, |own| {
            counter = own.max(above.counter) + 1;
            Some(counter)
        });
        Ballot {
            counter,
            node: self.id,
            rid: self.rid,
        }
    }

    /// This server's acceptor answers `req` (durably, through the commit thread).
    pub(super) async fn accept_local(&self, req: PaxosReq) -> Result<PaxosResp, ServerError> {
        let (tx, rx) = oneshot::channel();
        self.commit_tx
            .send(CommitJob::Paxos { req, reply: tx })
            .await
            .map_err(|_| ServerError::Stopped)?;
        rx.await.map_err(|_| ServerError::Stopped)?
    }

    /// Carry `req` to acceptor `to`; `None` when it did not answer.
    async fn ask_acceptor(
        self: Arc<Self>,
        to: NodeId,
        req: PaxosReq,
        deadline: Instant,
    ) -> Option<PaxosResp> {
        if to == self.id {
            return self.accept_local(req).await.ok();
        }
        let conn = lock(&self.peers)
            .get(&to)
            .filter(|p| !p.blocked)
            .and_then(|p| p.conn.as_ref().map(|c| c.1.clone()))?;
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(REQUEST_TIMEOUT);
        match frame::request::<_, PeerResp>(&conn, &PeerReq::Paxos(req), wait).await {
            Ok((PeerResp::Paxos(r), _, _)) => Some(r),
            Ok((other, _, _)) => {
                tracing::debug!(
                    "server {}: acceptor {to} answered {}",
                    self.id,
                    meshkv_core::sync::describe(&other)
                );
                None
            }
            Err(e) => {
                tracing::debug!("server {}: acceptor {to}: {e}", self.id);
                None
            }
        }
    }

    /// Stamp a write in the replicated store on top of the register's `current` value;
    /// returns the new entry (the one the accept carries).
    async fn stamp(
        &self,
        key: &[u8],
        current: Option<Entry>,
        value: Option<Vec<u8>>,
        ttl: Option<u64>,
    ) -> Result<Entry, ServerError> {
        let ops = vec![Op::Stamp {
            key: key.to_vec(),
            value: value.clone(),
            current,
            ttl,
        }];
        match self.commit(ops).await?.pop() {
            Some(Outcome::Put { version, previous }) => {
                let ctx = previous.map(|p| p.ctx).unwrap_or_default();
                let expires = ttl.map(|t| version.ts.saturating_add(t));
                Ok(Entry::write(value, version, &ctx).expiring(expires))
            }
            other => Err(ServerError::Write(format!(
                "stamping a linearizable write gave {other:?}"
            ))),
        }
    }

    /// Run one linearizable operation on `key`; see the module docs.
    pub(super) async fn linearizable(
        self: &Arc<Self>,
        key: Vec<u8>,
        change: Change,
        ttl: Option<u64>,
    ) -> Result<LinOutcome, ServerError> {
        if matches!(change, Change::Write { .. }) {
            if let Some(why) = self.disk_full() {
                return Err(ServerError::DiskFull(why));
            }
        }
        let deadline = Instant::now() + self.opts.linearizable_timeout;
        let set = self.acceptor_set(&key);
        let need = paxos::majority(set.len());
        let mut backoff = Duration::from_millis(2);
        let value = match &change {
            Change::Write { value, .. } => value.clone(),
            Change::Read => None,
        };
        let mut p = Proposer::new(
            key.clone(),
            change,
            self.ballot_above(Ballot::ZERO),
            set.clone(),
        );
        loop {
            let reachable: Vec<NodeId> = set.iter().copied().filter(|a| self.linked(*a)).collect();
            if reachable.len() < need {
                self.lin_unavailable.fetch_add(1, Relaxed);
                let maybe = if p.proposed_a_write() {
                    " (the operation may still take effect)"
                } else {
                    ""
                };
                return Err(ServerError::Unavailable(format!(
                    "server {} reaches {} of this key's acceptors {set:?} (linked: {reachable:?}); a majority is {need}{maybe}",
                    self.id,
                    reachable.len()
                )));
            }
            // What this server's store holds now: a newer session write joins the
            // register's history in this round.
            {
                let r = lock(&self.replica);
                p.set_local(r.entry(&key).cloned());
                p.set_now(r.now(crate::clock::wall_micros()));
            }
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut outstanding = 0usize;
            let mut next = p.start();
            let above = loop {
                match next {
                    Next::Send(reqs) => {
                        for (to, req) in reqs {
                            outstanding += 1;
                            let tx = tx.clone();
                            let sh = self.clone();
                            tokio::spawn(async move {
                                let resp = sh.ask_acceptor(to, req, deadline).await;
                                let _ = tx.send((to, resp));
                            });
                        }
                        next = Next::Wait;
                    }
                    Next::Stamp { current } => {
                        let entry = self.stamp(&key, current, value.clone(), ttl).await?;
                        next = p.propose(entry);
                    }
                    Next::Done {
                        previous,
                        current,
                        applied,
                    } => {
                        self.lin_ops.fetch_add(1, Relaxed);
                        return Ok(LinOutcome {
                            previous,
                            current,
                            applied,
                        });
                    }
                    Next::Indeterminate => {
                        self.lin_unavailable.fetch_add(1, Relaxed);
                        return Err(ServerError::Unavailable(
                            "a competing write on this key intervened after this write's accept went out; the write may or may not have taken effect".into(),
                        ));
                    }
                    Next::Retry { above } => break above,
                    Next::Wait => {
                        if outstanding == 0 {
                            break Ballot::ZERO;
                        }
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some((from, resp))) => {
                                outstanding -= 1;
                                next = match resp {
                                    Some(r) => p.on_response(from, r),
                                    None => Next::Wait,
                                };
                            }
                            Ok(None) | Err(_) => {
                                self.lin_unavailable.fetch_add(1, Relaxed);
                                return Err(ServerError::Unavailable(format!(
                                    "no majority of this key's acceptors {set:?} answered within {} ms{}",
                                    self.opts.linearizable_timeout.as_millis(),
                                    if p.proposed_a_write() { " (the operation may still take effect)" } else { "" }
                                )));
                            }
                        }
                    }
                }
            };
            self.lin_retries.fetch_add(1, Relaxed);
            // Back off a random part of a growing interval, so competing proposers of
            // one key stop colliding.
            let jitter = rand::random::<u64>() % (backoff.as_micros() as u64 + 1);
            let pause = Duration::from_micros(jitter);
            if Instant::now() + pause >= deadline {
                self.lin_unavailable.fetch_add(1, Relaxed);
                return Err(ServerError::Unavailable(format!(
                    "contention on this key: no round completed within {} ms{}",
                    self.opts.linearizable_timeout.as_millis(),
                    if p.proposed_a_write() {
                        " (the operation may still take effect)"
                    } else {
                        ""
                    }
                )));
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
            p = p.retry(self.ballot_above(above.max(p.ballot())));
        }
    }
}

/// The commit thread's part: answer a batch of acceptor requests with one fsync.
pub(super) fn answer_acceptors(
    storage: &mut crate::storage::Storage,
    jobs: Vec<(PaxosReq, oneshot::Sender<Result<PaxosResp, ServerError>>)>,
) -> Result<(), crate::storage::StorageError> {
    let mut states: std::collections::BTreeMap<Vec<u8>, paxos::AcceptorState> =
        std::collections::BTreeMap::new();
    let mut changed = BTreeSet::new();
    let mut answers = Vec::with_capacity(jobs.len());
    for (req, reply) in jobs {
        let key = req.key().to_vec();
        let state = match states.get(&key) {
            Some(s) => s.clone(),
            None => match storage.acceptor(&key) {
                Ok(s) => s,
                Err(e) => {
                    let _ = reply.send(Err(ServerError::Write(e.to_string())));
                    continue;
                }
            },
        };
        let (next, resp) = paxos::accept_step(&state, &req);
        match next {
            Some(n) => {
                states.insert(key.clone(), n);
                changed.insert(key);
            }
            None => {
                states.insert(key, state);
            }
        }
        answers.push((reply, resp));
    }
    let records: Vec<_> = states
        .into_iter()
        .filter(|(k, _)| changed.contains(k))
        .collect();
    storage.persist_acceptors(&records)?;
    for (reply, resp) in answers {
        let _ = reply.send(Ok(resp));
    }
    Ok(())
}
