//! The write path of a node, as a state machine with no I/O: group commit, durability
//! before anything is visible, then replies and relays.
//!
//! The real server's commit thread and the simulator both run every write — a client's
//! put, a peer's push, a sync round's entries, trims, adopts — through a [`Committer`],
//! so the order of these steps is written once (with [`crate::sync::SyncRound`], the
//! anti-entropy round, it is the part of the node core that exists so far; timers,
//! readiness and link handling are still the server's). The caller owns the
//! [`Replica`], the disk and the network:
//!
//! ```text
//!   committer.submit(Some(ticket), ops)         queue a job (ops that commit together)
//!   loop { match committer.poll(replica, wall) {
//!       Some(Output::Persist(batch)) => { write batch durably (fsync);
//!                                         committer.persisted(replica, batch) }
//!       Some(Output::Reply { ticket, outcomes }) => answer the job's submitter
//!       Some(Output::Push { targets, msg })      => send msg to each target
//!       Some(Output::Members(records))           => act on changed member records
//!       None => break } }
//! ```
//!
//! # The rules
//! * **Group commit.** Every job queued while no batch is being persisted goes into the
//!   next batch (up to [`MAX_JOBS_PER_BATCH`]), staged in one [`Replica::stage`]: one
//!   fsync for all of them.
//! * **One batch at a time.** A new batch is staged only after the previous one was
//!   reported persisted (staging assumes the replica holds everything staged before).
//! * **Durable before visible.** Nothing of a batch is committed to the replica —
//!   so nothing is read, acknowledged or relayed — before the driver reports it
//!   persisted. Then come member changes (acted on before anyone learns the write
//!   is done), the replies, in submission order, and the relays.

use crate::proto::PeerMsg;
use crate::replica::{member_record, Op, Outcome, Replica, Staged};
use crate::version::NodeId;
use std::collections::VecDeque;

/// Jobs staged together in one batch at most.
pub const MAX_JOBS_PER_BATCH: usize = 8192;

/// Identifies a job's submitter in its [`Output::Reply`].
pub type Ticket = u64;

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Make this batch durable, then hand it back with [`Committer::persisted`]. Only
    /// one is out at a time. (A batch with nothing to write may be persisted as a
    /// no-op; it still has to be handed back.)
    Persist(Staged),
    /// A job's outcomes, one per op, in order.
    Reply {
        /// The job's ticket.
        ticket: Ticket,
        /// Its outcomes.
        outcomes: Vec<Outcome>,
    },
    /// Push `msg` to each of `targets`.
    Push {
        /// The peers.
        targets: Vec<NodeId>,
        /// The message (a [`PeerMsg::Push`]).
        msg: PeerMsg,
    },
    /// Member records changed in the last batch: `(id, address)`, `None` = removed.
    Members(Vec<(NodeId, Option<String>)>),
}

struct Job {
    ticket: Option<Ticket>,
    ops: Vec<Op>,
}

/// The write path's state (see the module docs).
#[derive(Default)]
pub struct Committer {
    queue: VecDeque<Job>,
    /// The jobs of the batch out for persisting: (ticket, number of ops).
    in_flight: Option<Vec<(Option<Ticket>, usize)>>,
    outputs: VecDeque<Output>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight.as_ref().map(|j| j.len()))
            .field("outputs", &self.outputs.len())
            .finish()
    }
}

impl Committer {
    /// An idle write path.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue a job: `ops` commit together; a ticket asks for an [`Output::Reply`].
    pub fn submit(&mut self, ticket: Option<Ticket>, ops: Vec<Op>) {
        self.queue.push_back(Job { ticket, ops });
    }

    /// A message from peer `from` on its push stream: a push becomes a job; link
    /// announcements and incarnations go to the replica at once.
    pub fn peer_message(&mut self, r: &mut Replica, from: NodeId, msg: PeerMsg) {
        match msg {
            PeerMsg::Push { key, entry, dots } => self.submit(
                None,
                vec![Op::Apply {
                    key,
                    entry,
                    dots,
                    from: Some(from),
                }],
            ),
            PeerMsg::Links(l) => r.set_peer_links(from, l.into_iter().collect()),
            PeerMsg::Hello { rid } => r.set_peer_rid(from, rid),
        }
    }

    /// The next thing to do, if any; `wall` is the node's clock (µs) for staging.
    pub fn poll(&mut self, r: &mut Replica, wall: u64) -> Option<Output> {
        if let Some(o) = self.outputs.pop_front() {
            return Some(o);
        }
        if self.in_flight.is_some() || self.queue.is_empty() {
            return None;
        }
        let n = self.queue.len().min(MAX_JOBS_PER_BATCH);
        let mut jobs = Vec::with_capacity(n);
        let mut ops = Vec::new();
        for mut job in self.queue.drain(..n) {
            jobs.push((job.ticket, job.ops.len()));
            ops.append(&mut job.ops);
        }
        self.in_flight = Some(jobs);
        Some(Output::Persist(r.stage(ops, wall)))
    }

    /// The batch of the last [`Output::Persist`] is durable: commit it; its member
    /// changes, replies and pushes follow, in that order, from [`Committer::poll`].
    pub fn persisted(&mut self, r: &mut Replica, mut batch: Staged) {
        let Some(jobs) = self.in_flight.take() else {
            // Not ours to commit: a driver bug, and committing it could break the
            // one-batch-at-a-time rule. Dropped.
            return;
        };
        let outcomes = std::mem::take(&mut batch.outcomes);
        let members: Vec<(NodeId, Option<String>)> = batch
            .writes
            .iter()
            .filter_map(|(k, e)| member_record(k, e))
            .collect();
        let relays = r.commit(batch);
        if !members.is_empty() {
            self.outputs.push_back(Output::Members(members));
        }
        let mut it = outcomes.into_iter();
        for (ticket, n) in jobs {
            let mine: Vec<Outcome> = it.by_ref().take(n).collect();
            if let Some(ticket) = ticket {
                self.outputs.push_back(Output::Reply {
                    ticket,
                    outcomes: mine,
                });
            }
        }
        for rel in relays {
            if rel.targets.is_empty() {
                continue;
            }
            self.outputs.push_back(Output::Push {
                targets: rel.targets,
                msg: PeerMsg::Push {
                    key: rel.key,
                    entry: rel.entry,
                    dots: rel.dots,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.as_bytes().to_vec(),
            value: Some(b"v".to_vec()),
            seen_ts: 0,
            dep: None,
            ttl: None,
        }
    }

    #[test]
    fn jobs_batch_together_and_nothing_is_visible_before_persisted() {
        let mut r = Replica::new(1, Limits::default());
        r.add_member(2);
        r.set_connected(2, true);
        let mut c = Committer::new();
        c.submit(Some(10), vec![put("a")]);
        c.submit(Some(11), vec![put("b"), put("c")]);
        let Some(Output::Persist(batch)) = c.poll(&mut r, 100) else {
            panic!("expected a batch")
        };
        assert_eq!(batch.writes.len(), 3, "both jobs in one batch");
        // Out for persisting: no second batch, nothing visible, nothing replied.
        c.submit(Some(12), vec![put("d")]);
        assert!(c.poll(&mut r, 100).is_none());
        assert!(r.entry(b"a").is_none());
        c.persisted(&mut r, batch);
        assert!(r.entry(b"a").is_some());
        let mut replies = Vec::new();
        let mut pushes = 0;
        let mut next_batch = None;
        while let Some(o) = c.poll(&mut r, 100) {
            match o {
                Output::Reply { ticket, outcomes } => replies.push((ticket, outcomes.len())),
                Output::Push { targets, .. } => {
                    assert_eq!(targets, vec![2]);
                    pushes += 1;
                }
                Output::Persist(b) => {
                    next_batch = Some(b);
                    break;
                }
                Output::Members(_) => panic!("no member records written"),
            }
        }
        assert_eq!(replies, vec![(10, 1), (11, 2)], "replies first, in order");
        assert_eq!(pushes, 3);
        let b = next_batch.expect("the queued job is staged next");
        assert!(b.writes.contains_key(b"d".as_slice()));
    }
}
