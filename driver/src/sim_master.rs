//! The master's commands run against an in-memory simulated cluster
//! ([`meshkv_core::sim::SimCluster`]) instead of real processes: same parser, same
//! output, in microseconds, with an optional message trace (`master --sim --trace`).
//!
//! The servers here are the core's replicas with the core's [`SyncRound`] as
//! anti-entropy, so a scenario that passes both ways checks the master's semantics
//! against the protocol itself, and one that fails only here points at the protocol
//! rather than at timing. What the simulation stands for:
//!
//! * **Delivery.** A push is delivered before the next command starts (on loopback the
//!   real pushes arrive within microseconds; scenarios never depend on a push being
//!   *late*, only on a link being broken).
//! * **Durability.** Every acknowledged write is durable (the real server acknowledges
//!   after its fsync), so `killServer` keeps the server's state as its "disk" and
//!   `joinServer` restarts it from there as a new incarnation, as the real server does.
//! * **Catch-up.** `joinServer` returns after one anti-entropy round with each connected
//!   peer (the real master waits for the same: `ControlReq::CaughtUp`).
//! * **stabilize** runs rounds between all connected pairs of each component until the
//!   digest roots agree (bounded; an error otherwise, as a real timeout).
//! * **Clients** try their links newest first, skipping servers that are down, with a
//!   [`Session`] like the real client; none reachable: `get` answers `ERR_DEP`.
//!
//! [`SyncRound`]: meshkv_core::sync::SyncRound

use crate::error::MasterError;
use crate::script::Command;
use crate::topology::{CommandError, Connection, Topology};
use meshkv_core::replica::ReadOutcome;
use meshkv_core::sim::SimCluster;
use meshkv_core::vopr::Mutation;
use meshkv_core::{Limits, NodeId, Replica, Session};
use std::collections::BTreeMap;
use std::io::Write;

/// Rounds of anti-entropy `stabilize` runs before it reports that stores differ.
const STABILIZE_ROUNDS: usize = 64;

/// A master whose cluster is simulated (see the module docs).
pub struct SimMaster {
    cluster: SimCluster,
    topo: Topology,
    /// State of killed servers: their data directories.
    disks: BTreeMap<NodeId, Replica>,
    /// Each client's session.
    sessions: BTreeMap<NodeId, Session>,
    /// Incarnations are drawn from this counter (deterministic runs).
    next_rid: u64,
    /// A planted bug (tests of the scenario check itself).
    mutation: Option<Mutation>,
}

impl Default for SimMaster {
    fn default() -> Self {
        Self::new()
    }
}

impl SimMaster {
    /// An empty simulated cluster.
    pub fn new() -> Self {
        SimMaster {
            cluster: SimCluster::new(&[], Limits::default()),
            topo: Topology::new(),
            disks: BTreeMap::new(),
            sessions: BTreeMap::new(),
            next_rid: 0x51_0000,
            mutation: None,
        }
    }

    /// The same, with a planted bug, to show the scenarios catch it. Of
    /// [`Mutation::ALL`] only [`Mutation::SkipDependencyCheck`] applies here: the
    /// others need disk faults and trimming the master's commands cannot cause (the
    /// seeded simulator, `meshkv-sim --mutation`, catches those).
    pub fn with_mutation(mutation: Mutation) -> Self {
        SimMaster {
            mutation: Some(mutation),
            ..Self::new()
        }
    }

    /// Record each command's messages and sync steps ([`SimMaster::take_trace`]).
    pub fn set_trace(&mut self, on: bool) {
        self.cluster.set_trace(on);
    }

    /// The trace of the commands run since the last call.
    pub fn take_trace(&mut self) -> Vec<String> {
        self.cluster.take_trace()
    }

    fn rid(&mut self) -> NodeId {
        self.next_rid += 1;
        self.next_rid
    }

    /// Run one command. Output goes to `out`; errors are returned as one line.
    pub fn run(&mut self, cmd: Command, out: &mut impl Write) -> Result<(), MasterError> {
        let r = match cmd {
            Command::JoinServer { id } => self.join_server(id),
            Command::KillServer { id } => self.kill_server(id),
            Command::JoinClient { id, server } => self.join_client(id, server),
            Command::BreakConnection { a, b } => self.set_connection(a, b, false),
            Command::CreateConnection { a, b } => self.set_connection(a, b, true),
            Command::Stabilize => self.stabilize(),
            Command::PrintStore { id } => self.print_store(id, out),
            Command::Put { client, key, value } => self.put(client, &key, &value),
            Command::Get { client, key } => self.get(client, &key, out),
        };
        // What a command started is finished before the next one (see the docs).
        self.cluster.deliver_all();
        let _ = out.flush();
        r
    }

    fn join_server(&mut self, id: NodeId) -> Result<(), MasterError> {
        self.topo.check_join_server(id)?;
        let rid = self.rid();
        let others = self.topo.server_joined(id);
        if let Some(disk) = self.disks.remove(&id) {
            self.cluster.restart(id, Some(&disk), rid);
            for &o in &others {
                self.cluster.set_link(id, o, true);
            }
        } else {
            self.cluster.add_node(id, rid, &others);
        }
        self.cluster.deliver_all();
        for &o in &others {
            self.cluster.anti_entropy(id, o);
        }
        Ok(())
    }

    fn kill_server(&mut self, id: NodeId) -> Result<(), MasterError> {
        self.topo.kill_server(id)?;
        let others: Vec<NodeId> = self.cluster.nodes.keys().copied().collect();
        for o in others {
            self.cluster.set_link(id, o, false);
        }
        if let Some(r) = self.cluster.nodes.get(&id) {
            self.disks.insert(id, r.clone());
        }
        Ok(())
    }

    fn join_client(&mut self, id: NodeId, server: NodeId) -> Result<(), MasterError> {
        self.topo.check_join_client(id, server)?;
        self.topo.client_joined(id, server);
        self.sessions.insert(id, Session::new());
        Ok(())
    }

    fn set_connection(&mut self, a: NodeId, b: NodeId, up: bool) -> Result<(), MasterError> {
        if let Connection::Servers { a, b } = self.topo.set_connection(a, b, up)? {
            if self.topo.is_running(a) && self.topo.is_running(b) {
                self.cluster.set_link(a, b, up);
            }
        }
        Ok(())
    }

    fn stabilize(&mut self) -> Result<(), MasterError> {
        let comps = self.topo.components();
        for _ in 0..STABILIZE_ROUNDS {
            let settled = comps.iter().all(|c| {
                let r0 = self.cluster.nodes[&c[0]].root();
                c.iter().all(|s| self.cluster.nodes[s].root() == r0)
            });
            if settled {
                return Ok(());
            }
            for c in &comps {
                for &a in c {
                    for &b in c {
                        if a != b && self.cluster.is_up(a, b) {
                            self.cluster.anti_entropy(a, b);
                            self.cluster.deliver_all();
                        }
                    }
                }
            }
        }
        Err(MasterError::Stabilize(format!(
            "stabilize: stores still differ after {STABILIZE_ROUNDS} rounds"
        )))
    }

    fn print_store(&mut self, id: NodeId, out: &mut impl Write) -> Result<(), MasterError> {
        self.topo.check_running_server(id)?;
        for (k, v) in self.cluster.nodes[&id].dump() {
            let _ = writeln!(
                out,
                "{}:{}",
                String::from_utf8_lossy(&k),
                String::from_utf8_lossy(&v)
            );
        }
        Ok(())
    }

    /// The server a client's request goes to: its newest link to a running server.
    fn route(&self, client: NodeId) -> Result<Option<NodeId>, MasterError> {
        self.topo.check_client(client)?;
        Ok(self
            .topo
            .links(client)
            .iter()
            .rev()
            .copied()
            .find(|s| self.topo.is_running(*s)))
    }

    fn put(&mut self, client: NodeId, key: &str, value: &str) -> Result<(), MasterError> {
        let Some(at) = self.route(client)? else {
            return Err(MasterError::Request(format!(
                "put {client} {key}: no reachable server"
            )));
        };
        let Some(s) = self.sessions.get_mut(&client) else {
            return Err(CommandError::NoClient { id: client }.into());
        };
        self.cluster.put(at, key.as_bytes(), value.as_bytes(), s);
        Ok(())
    }

    fn get(&mut self, client: NodeId, key: &str, out: &mut impl Write) -> Result<(), MasterError> {
        let at = self.route(client)?;
        let Some(s) = self.sessions.get_mut(&client) else {
            return Err(CommandError::NoClient { id: client }.into());
        };
        let outcome = match at {
            None => ReadOutcome::Dep,
            // The planted bug: the read goes without the session's dependency.
            Some(at) if self.mutation == Some(Mutation::SkipDependencyCheck) => {
                self.cluster.get(at, key.as_bytes(), &mut Session::new())
            }
            Some(at) => self.cluster.get(at, key.as_bytes(), s),
        };
        let shown = match outcome {
            ReadOutcome::Found { value, .. } => String::from_utf8_lossy(&value).into_owned(),
            ReadOutcome::Missing { .. } => "ERR_KEY".into(),
            ReadOutcome::Dep => "ERR_DEP".into(),
        };
        let _ = writeln!(out, "{key}:{shown}");
        Ok(())
    }
}
