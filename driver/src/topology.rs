//! The master's bookkeeping, with no I/O: which ids are servers (running or killed) and
//! which are clients, which server↔server links are broken, each client's links, and
//! the checks (with their one-line errors) of every command. The real master
//! ([`crate::cluster`]) and the simulated one ([`crate::sim_master`]) both keep one,
//! so the command semantics exist once; each carries out the changes in its own way.
//!
//! The rules (SPEC §2): server↔server links are "connected unless broken";
//! `joinServer` links the server to every running server and clears the breaks that
//! involved its id, while breaks between other servers stay. A client's links are an
//! ordered list, most recent last; it sends to the most recent link to a running
//! server. A link to a killed server stays and is used again once that id rejoins.

use meshkv_core::sim::{connected_components, pair};
use meshkv_core::NodeId;
use std::collections::{BTreeMap, BTreeSet};

/// Why a command does not fit the cluster. The `Display` is the one line the master
/// prints on stderr.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// `joinServer` of an id that is a client.
    #[error("joinServer {id}: id {id} is already a client")]
    JoinServerIsClient {
        /// The id.
        id: NodeId,
    },
    /// `joinServer` of a server that runs.
    #[error("joinServer {id}: server {id} is already running")]
    AlreadyRunning {
        /// The id.
        id: NodeId,
    },
    /// `killServer` of an id that was never a server.
    #[error("killServer {id}: no server with id {id}")]
    KillUnknown {
        /// The id.
        id: NodeId,
    },
    /// `killServer` of a server that is already down.
    #[error("killServer {id}: server {id} is not running")]
    KillNotRunning {
        /// The id.
        id: NodeId,
    },
    /// `joinClient` of an id that is a server.
    #[error("joinClient {id} {server}: id {id} is a server")]
    JoinClientIsServer {
        /// The client id asked for.
        id: NodeId,
        /// The server asked for.
        server: NodeId,
    },
    /// `joinClient` of a client that exists.
    #[error("joinClient {id} {server}: client {id} already exists")]
    ClientExists {
        /// The client id.
        id: NodeId,
        /// The server asked for.
        server: NodeId,
    },
    /// `joinClient` naming a server that does not exist.
    #[error("joinClient {id} {server}: no server with id {server}")]
    JoinClientNoServer {
        /// The client id.
        id: NodeId,
        /// The server asked for.
        server: NodeId,
    },
    /// A connection from an id to itself.
    #[error("{verb} {a} {b}: an id cannot link to itself")]
    SelfLink {
        /// `createConnection` or `breakConnection`.
        verb: &'static str,
        /// First id.
        a: NodeId,
        /// Second id.
        b: NodeId,
    },
    /// A connection between a server and an id that is neither server nor client.
    #[error("{verb} {a} {b}: no client or server with id {missing}")]
    NoSuchId {
        /// `createConnection` or `breakConnection`.
        verb: &'static str,
        /// First id.
        a: NodeId,
        /// Second id.
        b: NodeId,
        /// The unknown one.
        missing: NodeId,
    },
    /// A connection between two clients.
    #[error("{verb} {a} {b}: both are clients")]
    BothClients {
        /// `createConnection` or `breakConnection`.
        verb: &'static str,
        /// First id.
        a: NodeId,
        /// Second id.
        b: NodeId,
    },
    /// A connection naming ids that are neither servers nor clients.
    #[error("{verb} {a} {b}: unknown id {unknown}")]
    UnknownIds {
        /// `createConnection` or `breakConnection`.
        verb: &'static str,
        /// First id.
        a: NodeId,
        /// Second id.
        b: NodeId,
        /// The unknown ids, comma-separated.
        unknown: String,
    },
    /// A server command for a server that was killed.
    #[error("server {id} is not running (it was killed)")]
    Killed {
        /// The id.
        id: NodeId,
    },
    /// A server command for a client.
    #[error("{id} is a client, not a server")]
    NotAServer {
        /// The id.
        id: NodeId,
    },
    /// A server command for an unknown id.
    #[error("no server with id {id}")]
    NoServer {
        /// The id.
        id: NodeId,
    },
    /// A client command for a server.
    #[error("{id} is a server, not a client")]
    NotAClient {
        /// The id.
        id: NodeId,
    },
    /// A client command for an unknown id.
    #[error("no client with id {id}")]
    NoClient {
        /// The id.
        id: NodeId,
    },
}

/// What a `createConnection` / `breakConnection` changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// The link between two servers (carried out only when both are running).
    Servers {
        /// One server.
        a: NodeId,
        /// The other.
        b: NodeId,
    },
    /// A client's link to a server.
    Client {
        /// The client.
        client: NodeId,
        /// The server.
        server: NodeId,
    },
}

/// The master's view of the cluster (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Server id → running.
    servers: BTreeMap<NodeId, bool>,
    /// Client id → its links, most recent last.
    clients: BTreeMap<NodeId, Vec<NodeId>>,
    broken: BTreeSet<(NodeId, NodeId)>,
}

impl Topology {
    /// No servers, no clients.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `id` was ever a server.
    pub fn is_server(&self, id: NodeId) -> bool {
        self.servers.contains_key(&id)
    }

    /// Whether `id` is a client.
    pub fn is_client(&self, id: NodeId) -> bool {
        self.clients.contains_key(&id)
    }

    /// Whether server `id` is running.
    pub fn is_running(&self, id: NodeId) -> bool {
        self.servers.get(&id).copied().unwrap_or(false)
    }

    /// Running servers, in id order.
    pub fn live_servers(&self) -> Vec<NodeId> {
        self.servers
            .iter()
            .filter(|(_, up)| **up)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Killed servers, in id order (still members: their peers keep what they lack).
    pub fn down_servers(&self) -> Vec<NodeId> {
        self.servers
            .iter()
            .filter(|(_, up)| !**up)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether the link between servers `a` and `b` is broken.
    pub fn is_broken(&self, a: NodeId, b: NodeId) -> bool {
        self.broken.contains(&pair(a, b))
    }

    /// `joinServer ID` may go ahead.
    pub fn check_join_server(&self, id: NodeId) -> Result<(), CommandError> {
        if self.is_client(id) {
            return Err(CommandError::JoinServerIsClient { id });
        }
        if self.is_running(id) {
            return Err(CommandError::AlreadyRunning { id });
        }
        Ok(())
    }

    /// Server `id` now runs: its breaks are cleared. Returns the other running servers,
    /// which it links to.
    pub fn server_joined(&mut self, id: NodeId) -> Vec<NodeId> {
        self.servers.insert(id, true);
        self.broken.retain(|(a, b)| *a != id && *b != id);
        self.live_servers()
            .into_iter()
            .filter(|s| *s != id)
            .collect()
    }

    /// `killServer ID`: marks it killed; returns the clients that link to it.
    pub fn kill_server(&mut self, id: NodeId) -> Result<Vec<NodeId>, CommandError> {
        match self.servers.get_mut(&id) {
            None => Err(CommandError::KillUnknown { id }),
            Some(false) => Err(CommandError::KillNotRunning { id }),
            Some(up) => {
                *up = false;
                Ok(self.clients_linked_to(id))
            }
        }
    }

    /// The clients with a link to server `id`.
    pub fn clients_linked_to(&self, id: NodeId) -> Vec<NodeId> {
        self.clients
            .iter()
            .filter(|(_, links)| links.contains(&id))
            .map(|(c, _)| *c)
            .collect()
    }

    /// `joinClient ID SID` may go ahead.
    pub fn check_join_client(&self, id: NodeId, server: NodeId) -> Result<(), CommandError> {
        if self.is_server(id) {
            return Err(CommandError::JoinClientIsServer { id, server });
        }
        if self.is_client(id) {
            return Err(CommandError::ClientExists { id, server });
        }
        if !self.is_server(server) {
            return Err(CommandError::JoinClientNoServer { id, server });
        }
        Ok(())
    }

    /// Client `id` now exists, linked to `server`.
    pub fn client_joined(&mut self, id: NodeId, server: NodeId) {
        self.clients.insert(id, vec![server]);
    }

    /// A client's links, most recent last.
    pub fn links(&self, client: NodeId) -> &[NodeId] {
        self.clients.get(&client).map_or(&[], |l| l.as_slice())
    }

    /// `createConnection` (`up`) or `breakConnection` between `a` and `b`: checks it,
    /// records it, and says what changed.
    pub fn set_connection(
        &mut self,
        a: NodeId,
        b: NodeId,
        up: bool,
    ) -> Result<Connection, CommandError> {
        let verb = if up {
            "createConnection"
        } else {
            "breakConnection"
        };
        if a == b {
            return Err(CommandError::SelfLink { verb, a, b });
        }
        match (self.is_server(a), self.is_server(b)) {
            (true, true) => {
                if up {
                    self.broken.remove(&pair(a, b));
                } else {
                    self.broken.insert(pair(a, b));
                }
                Ok(Connection::Servers { a, b })
            }
            (true, false) | (false, true) => {
                let (server, client) = if self.is_server(a) { (a, b) } else { (b, a) };
                let Some(links) = self.clients.get_mut(&client) else {
                    return Err(CommandError::NoSuchId {
                        verb,
                        a,
                        b,
                        missing: client,
                    });
                };
                links.retain(|x| *x != server);
                if up {
                    links.push(server);
                }
                Ok(Connection::Client { client, server })
            }
            (false, false) => {
                let unknown = [a, b]
                    .into_iter()
                    .filter(|x| !self.is_client(*x))
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>();
                if unknown.is_empty() {
                    Err(CommandError::BothClients { verb, a, b })
                } else {
                    Err(CommandError::UnknownIds {
                        verb,
                        a,
                        b,
                        unknown: unknown.join(", "),
                    })
                }
            }
        }
    }

    /// `id` names a running server (for `printStore`).
    pub fn check_running_server(&self, id: NodeId) -> Result<(), CommandError> {
        match self.servers.get(&id) {
            Some(true) => Ok(()),
            Some(false) => Err(CommandError::Killed { id }),
            None if self.is_client(id) => Err(CommandError::NotAServer { id }),
            None => Err(CommandError::NoServer { id }),
        }
    }

    /// `id` names a client (for `put` and `get`).
    pub fn check_client(&self, id: NodeId) -> Result<(), CommandError> {
        if self.is_server(id) {
            return Err(CommandError::NotAClient { id });
        }
        if !self.is_client(id) {
            return Err(CommandError::NoClient { id });
        }
        Ok(())
    }

    /// Connected components of running servers over unbroken links.
    pub fn components(&self) -> Vec<Vec<NodeId>> {
        connected_components(&self.live_servers(), |x, y| !self.is_broken(x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_clear_breaks_and_components_follow_them() {
        let mut t = Topology::new();
        for id in 0..3 {
            t.check_join_server(id).unwrap();
            t.server_joined(id);
        }
        assert_eq!(t.components(), vec![vec![0, 1, 2]]);
        t.set_connection(0, 1, false).unwrap();
        t.set_connection(0, 2, false).unwrap();
        assert_eq!(t.components(), vec![vec![0], vec![1, 2]]);
        assert_eq!(t.kill_server(1), Ok(vec![]));
        assert_eq!(t.components(), vec![vec![0], vec![2]]);
        assert!(t
            .kill_server(1)
            .unwrap_err()
            .to_string()
            .contains("not running"));
        // Rejoining clears the breaks that involved it, not the others.
        assert_eq!(t.server_joined(0), vec![2]);
        assert_eq!(t.components(), vec![vec![0, 2]]);
        assert!(t
            .check_join_server(0)
            .unwrap_err()
            .to_string()
            .contains("already running"));
    }

    #[test]
    fn client_links_are_ordered_and_checked() {
        let mut t = Topology::new();
        t.server_joined(0);
        t.server_joined(1);
        t.check_join_client(5, 0).unwrap();
        t.client_joined(5, 0);
        assert_eq!(
            t.set_connection(1, 5, true),
            Ok(Connection::Client {
                client: 5,
                server: 1
            })
        );
        t.set_connection(5, 0, true).unwrap();
        assert_eq!(t.links(5), &[1, 0]);
        assert_eq!(t.clients_linked_to(1), vec![5]);
        t.set_connection(0, 5, false).unwrap();
        assert_eq!(t.links(5), &[1]);
        assert!(t
            .set_connection(5, 6, true)
            .unwrap_err()
            .to_string()
            .contains("unknown id 6"));
        assert!(t
            .check_join_client(0, 1)
            .unwrap_err()
            .to_string()
            .contains("is a server"));
        assert!(t
            .check_client(0)
            .unwrap_err()
            .to_string()
            .contains("is a server"));
        assert!(t
            .check_running_server(5)
            .unwrap_err()
            .to_string()
            .contains("is a client"));
    }
}
