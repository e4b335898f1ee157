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

use crate::script::Command;
use meshkv_core::replica::ReadOutcome;
use meshkv_core::sim::SimCluster;
use meshkv_core::vopr::Mutation;
use meshkv_core::{Limits, NodeId, Replica, Session};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

/// Rounds of anti-entropy `stabilize` runs before it reports that stores differ.
const STABILIZE_ROUNDS: usize = 64;

struct SimClient {
    session: Session,
    /// Servers this client links to, most recent last.
    links: Vec<NodeId>,
}

/// A master whose cluster is simulated (see the module docs).
pub struct SimMaster {
    cluster: SimCluster,
    live: BTreeSet<NodeId>,
    /// State of killed servers: their data directories.
    disks: BTreeMap<NodeId, Replica>,
    broken: BTreeSet<(NodeId, NodeId)>,
    clients: BTreeMap<NodeId, SimClient>,
    /// Incarnations are drawn from this counter (deterministic runs).
    next_rid: u64,
    trace: bool,
    /// A planted bug (tests of the scenario check itself).
    mutation: Option<Mutation>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
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
            live: BTreeSet::new(),
            disks: BTreeMap::new(),
            broken: BTreeSet::new(),
            clients: BTreeMap::new(),
            next_rid: 0x51_0000,
            trace: false,
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

    /// Print the message trace of each command (as `# ...` lines on `trace_out`).
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on;
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

    fn is_server(&self, id: NodeId) -> bool {
        self.cluster.nodes.contains_key(&id)
    }

    /// Run one command. Output goes to `out`; errors are returned as one line.
    pub fn run(&mut self, cmd: Command, out: &mut impl Write) -> Result<(), String> {
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

    fn join_server(&mut self, id: NodeId) -> Result<(), String> {
        if self.clients.contains_key(&id) {
            return Err(format!("joinServer {id}: id {id} is already a client"));
        }
        if self.live.contains(&id) {
            return Err(format!("joinServer {id}: server {id} is already running"));
        }
        let rid = self.rid();
        self.broken.retain(|(a, b)| *a != id && *b != id);
        let others: Vec<NodeId> = self.live.iter().copied().collect();
        if let Some(disk) = self.disks.remove(&id) {
            self.cluster.restart(id, Some(&disk), rid);
            for &o in &others {
                self.cluster.set_link(id, o, true);
            }
        } else {
            self.cluster.add_node(id, rid, &others);
        }
        self.live.insert(id);
        self.cluster.deliver_all();
        for &o in &others {
            self.cluster.anti_entropy(id, o);
        }
        Ok(())
    }

    fn kill_server(&mut self, id: NodeId) -> Result<(), String> {
        if !self.is_server(id) {
            return Err(format!("killServer {id}: no server with id {id}"));
        }
        if !self.live.remove(&id) {
            return Err(format!("killServer {id}: server {id} is not running"));
        }
        let others: Vec<NodeId> = self.cluster.nodes.keys().copied().collect();
        for o in others {
            self.cluster.set_link(id, o, false);
        }
        if let Some(r) = self.cluster.nodes.get(&id) {
            self.disks.insert(id, r.clone());
        }
        Ok(())
    }

    fn join_client(&mut self, id: NodeId, server: NodeId) -> Result<(), String> {
        if self.is_server(id) {
            return Err(format!("joinClient {id} {server}: id {id} is a server"));
        }
        if self.clients.contains_key(&id) {
            return Err(format!(
                "joinClient {id} {server}: client {id} already exists"
            ));
        }
        if !self.is_server(server) {
            return Err(format!(
                "joinClient {id} {server}: no server with id {server}"
            ));
        }
        self.clients.insert(
            id,
            SimClient {
                session: Session::new(),
                links: vec![server],
            },
        );
        Ok(())
    }

    fn set_connection(&mut self, a: NodeId, b: NodeId, up: bool) -> Result<(), String> {
        let verb = if up {
            "createConnection"
        } else {
            "breakConnection"
        };
        if a == b {
            return Err(format!("{verb} {a} {b}: an id cannot link to itself"));
        }
        match (self.is_server(a), self.is_server(b)) {
            (true, true) => {
                if up {
                    self.broken.remove(&pair(a, b));
                } else {
                    self.broken.insert(pair(a, b));
                }
                if self.live.contains(&a) && self.live.contains(&b) {
                    self.cluster.set_link(a, b, up);
                }
                Ok(())
            }
            (true, false) | (false, true) => {
                let (s, c) = if self.is_server(a) { (a, b) } else { (b, a) };
                let Some(cl) = self.clients.get_mut(&c) else {
                    return Err(format!("{verb} {a} {b}: no client or server with id {c}"));
                };
                cl.links.retain(|x| *x != s);
                if up {
                    cl.links.push(s);
                }
                Ok(())
            }
            (false, false) => {
                let unknown = [a, b]
                    .into_iter()
                    .filter(|x| !self.clients.contains_key(x))
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>();
                if unknown.is_empty() {
                    Err(format!("{verb} {a} {b}: both are clients"))
                } else {
                    Err(format!("{verb} {a} {b}: unknown id {}", unknown.join(", ")))
                }
            }
        }
    }

    /// Connected components of live servers over unbroken links.
    fn components(&self) -> Vec<Vec<NodeId>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for &s in &self.live {
            if !seen.insert(s) {
                continue;
            }
            let mut comp = vec![s];
            let mut i = 0;
            while i < comp.len() {
                let x = comp[i];
                for &y in &self.live {
                    if y != x && !self.broken.contains(&pair(x, y)) && seen.insert(y) {
                        comp.push(y);
                    }
                }
                i += 1;
            }
            out.push(comp);
        }
        out
    }

    fn stabilize(&mut self) -> Result<(), String> {
        let comps = self.components();
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
        Err(format!(
            "stabilize: stores still differ after {STABILIZE_ROUNDS} rounds"
        ))
    }

    fn print_store(&mut self, id: NodeId, out: &mut impl Write) -> Result<(), String> {
        if self.clients.contains_key(&id) {
            return Err(format!("{id} is a client, not a server"));
        }
        if !self.is_server(id) {
            return Err(format!("no server with id {id}"));
        }
        if !self.live.contains(&id) {
            return Err(format!("server {id} is not running (it was killed)"));
        }
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
    fn route(&self, client: NodeId) -> Result<Option<NodeId>, String> {
        if self.is_server(client) {
            return Err(format!("{client} is a server, not a client"));
        }
        let c = self
            .clients
            .get(&client)
            .ok_or_else(|| format!("no client with id {client}"))?;
        Ok(c.links
            .iter()
            .rev()
            .copied()
            .find(|s| self.live.contains(s)))
    }

    fn put(&mut self, client: NodeId, key: &str, value: &str) -> Result<(), String> {
        let Some(at) = self.route(client)? else {
            let tried: Vec<NodeId> = Vec::new();
            return Err(format!(
                "put {client} {key}: no reachable server (tried {tried:?})"
            ));
        };
        let Some(c) = self.clients.get_mut(&client) else {
            return Err(format!("no client with id {client}"));
        };
        self.cluster
            .put(at, key.as_bytes(), value.as_bytes(), &mut c.session);
        Ok(())
    }

    fn get(&mut self, client: NodeId, key: &str, out: &mut impl Write) -> Result<(), String> {
        let at = self.route(client)?;
        let Some(c) = self.clients.get_mut(&client) else {
            return Err(format!("no client with id {client}"));
        };
        let shown = match at {
            None => "ERR_DEP".to_string(),
            Some(at) if self.mutation == Some(Mutation::SkipDependencyCheck) => {
                // The planted bug: the read goes without the session's dependency.
                match self.cluster.get(at, key.as_bytes(), &mut Session::new()) {
                    ReadOutcome::Found { value, .. } => {
                        String::from_utf8_lossy(&value).into_owned()
                    }
                    ReadOutcome::Missing { .. } => "ERR_KEY".into(),
                    ReadOutcome::Dep => "ERR_DEP".into(),
                }
            }
            Some(at) => match self.cluster.get(at, key.as_bytes(), &mut c.session) {
                ReadOutcome::Found { value, .. } => String::from_utf8_lossy(&value).into_owned(),
                ReadOutcome::Missing { .. } => "ERR_KEY".into(),
                ReadOutcome::Dep => "ERR_DEP".into(),
            },
        };
        let _ = writeln!(out, "{key}:{shown}");
        Ok(())
    }
}
