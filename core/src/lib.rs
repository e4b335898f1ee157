//! # meshkv-core — the replication rules, with no I/O
//!
//! * [`version`]: dots, versions (LWW order), version vectors.
//! * [`entry`]: the per-key state and its merge (a semilattice join).
//! * [`hlc`]: the hybrid logical clock.
//! * [`digest`]: the two-level digest tree used by anti-entropy.
//! * [`replica`]: one server's state machine (stage → persist → commit, reads with the
//!   session check, sync planning, trimming).
//! * [`session`]: a client's dependencies.
//! * [`paxos`]: linearizable per-key registers (CASPaxos): acceptor, proposer, acceptor
//!   sets, and seeded fault schedules checked for linearizability.
//! * [`proto`]: wire messages and framing; [`control`]: the master's control channel.
//! * [`schedule`]: a node's clock work (dialing, anti-entropy rounds, trims, readiness), sans-IO.
//! * [`sim`]: an in-memory cluster to run many schedules against the rules.
//! * [`vopr`]: seeded fault schedules over it (crash, wipe, rollback, skew, loss,
//!   duplication, reordering, partitions), checked for the store's promises.
//! * [`linearizable`]: a linearizability checker for per-key register histories (Wing & Gong / Lowe search).

pub mod commit;
pub mod control;
pub mod digest;
pub mod entry;
pub mod hlc;
pub mod legacy;
pub mod linearizable;
pub mod paxos;
pub mod proto;
pub mod replica;
pub mod schedule;
pub mod session;
pub mod sim;
pub mod sync;
pub mod version;
pub mod vopr;

pub use entry::Entry;
pub use replica::{Limits, Meta, Op, Outcome, ReadOutcome, Relay, Replica, Staged};
pub use session::Session;
pub use version::{Dot, NodeId, Version, VersionVector};
