//! The master's orchestration: child processes, the link graph, and every command.
//!
//! The master owns the topology. Server↔server links are "connected unless broken";
//! `joinServer` connects the new server to every live server (clearing breaks that
//! involved its id), while breaks between other servers stay. Client links are an
//! ordered list per client (most recent last); a link to a killed server stays and is
//! used again, with the new address, once that id rejoins.
//!
//! `stabilize` polls every live server's digest root and returns when, in every
//! connected component of live servers (over unbroken server links, transitively),
//! all roots are equal. Roots cover keys, values, versions and causal contexts, so
//! equal roots mean identical stores *and* identical answers to session checks.

use crate::error::MasterError;
use crate::script::Command;
use crate::topology::{CommandError, Connection, Topology};
use meshkv_core::control::{ControlIn, ControlOut, ControlReq, ControlResp, GetResult};
use meshkv_core::NodeId;
use meshkv_node::pki::{self, Identity};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::oneshot;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ControlResp>>>>;

/// A running child process and its control channel.
struct Proc {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    pending: Pending,
    seq: u64,
}

impl Proc {
    async fn call(
        &mut self,
        req: ControlReq,
        timeout: Duration,
    ) -> Result<ControlResp, MasterError> {
        self.call_inner(req, timeout)
            .await
            .map_err(MasterError::Control)
    }

    async fn call_inner(
        &mut self,
        req: ControlReq,
        timeout: Duration,
    ) -> Result<ControlResp, String> {
        let rx = self.send(req).await?;
        answer(rx, timeout).await
    }

    /// Send one request; its answer comes through the receiver (the process answers
    /// its requests in the order they were sent).
    async fn send(&mut self, req: ControlReq) -> Result<oneshot::Receiver<ControlResp>, String> {
        self.seq += 1;
        let seq = self.seq;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| "control channel poisoned".to_string())?
            .insert(seq, tx);
        let mut line = serde_json::to_string(&ControlIn { seq, req }).map_err(|e| e.to_string())?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("control channel closed: {e}"))?;
        self.stdin.flush().await.map_err(|e| e.to_string())?;
        Ok(rx)
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

async fn answer(
    rx: oneshot::Receiver<ControlResp>,
    timeout: Duration,
) -> Result<ControlResp, String> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(_)) => Err("the process exited".into()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A `put` handed to its client process and not yet answered ([`Master::start_put`]).
/// The client answers its puts in the order it got them; [`PendingPut::finish`] waits
/// for this one.
pub struct PendingPut {
    client: NodeId,
    key: String,
    rx: oneshot::Receiver<ControlResp>,
}

impl PendingPut {
    /// The client that writes.
    pub fn client(&self) -> NodeId {
        self.client
    }

    /// The key written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Wait until the put's server made it durable (or the client gave up).
    pub async fn finish(self) -> Result<(), MasterError> {
        let (client, key) = (self.client, self.key);
        match answer(self.rx, CALL).await.map_err(MasterError::Control)? {
            ControlResp::Ok => Ok(()),
            ControlResp::Error(e) => Err(MasterError::Request(format!("put {client} {key}: {e}"))),
            other => Err(MasterError::Control(format!(
                "put {client} {key}: unexpected answer {other:?}"
            ))),
        }
    }
}

struct ServerSlot {
    proc: Option<Proc>,
    addr: Option<SocketAddr>,
}

/// How the master runs.
#[derive(Clone, Debug)]
pub struct MasterOpts {
    /// Where certificates, data, logs and the pid list go.
    pub run_dir: PathBuf,
    /// The `meshkv` binary.
    pub bin: PathBuf,
    /// How long `stabilize` waits before giving up with a warning.
    pub stabilize_timeout: Duration,
}

/// The master: children, links, and the command interpreter.
pub struct Master {
    opts: MasterOpts,
    certs: PathBuf,
    servers: BTreeMap<NodeId, ServerSlot>,
    clients: BTreeMap<NodeId, Proc>,
    /// Who is what, which links are broken, each client's links (shared with the
    /// simulated master).
    topo: Topology,
    pids: std::fs::File,
}

const CALL: Duration = Duration::from_secs(30);
const LINK_WAIT_MS: u64 = 5_000;

/// Find the `meshkv` binary: `$MESHKV_BIN`, else next to this executable.
pub fn find_node_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("MESHKV_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate myself: {e}"))?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let sib = exe.with_file_name("meshkv");
    if sib.exists() {
        return Ok(sib);
    }
    // Test executables live in target/<profile>/deps/.
    if let Some(up) = exe.parent().and_then(|d| d.parent()) {
        let p = up.join("meshkv");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!(
        "cannot find the meshkv binary next to {} (set MESHKV_BIN)",
        exe.display()
    ))
}

impl Master {
    /// Prepare the run directory (certificates, data, logs, pid list).
    pub fn new(opts: MasterOpts) -> Result<Master, String> {
        let certs = opts.run_dir.join("certs");
        for d in ["certs", "data", "logs"] {
            std::fs::create_dir_all(opts.run_dir.join(d))
                .map_err(|e| format!("cannot create {}: {e}", opts.run_dir.display()))?;
        }
        let pids = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.run_dir.join("pids"))
            .map_err(|e| format!("cannot open the pid list: {e}"))?;
        Ok(Master {
            opts,
            certs,
            servers: BTreeMap::new(),
            clients: BTreeMap::new(),
            topo: Topology::new(),
            pids,
        })
    }

    async fn spawn(&mut self, who: Identity) -> Result<(Proc, Option<SocketAddr>), MasterError> {
        self.spawn_inner(who).await.map_err(MasterError::Start)
    }

    async fn spawn_inner(&mut self, who: Identity) -> Result<(Proc, Option<SocketAddr>), String> {
        pki::write_cluster_certs(&self.certs, &[who]).map_err(|e| e.to_string())?;
        let log_path = self.opts.run_dir.join("logs").join(format!("{who}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let mut cmd = tokio::process::Command::new(&self.opts.bin);
        match who.role {
            pki::Role::Server => {
                let data = self
                    .opts
                    .run_dir
                    .join("data")
                    .join(format!("server-{}", who.id));
                cmd.arg("server")
                    .arg("--id")
                    .arg(who.id.to_string())
                    .arg("--data")
                    .arg(data);
            }
            pki::Role::Client => {
                cmd.arg("client").arg("--id").arg(who.id.to_string());
            }
        }
        cmd.arg("--certs")
            .arg(&self.certs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.opts.bin.display()))?;
        let pid = child.id().unwrap_or(0);
        let _ = writeln!(self.pids, "{pid}");
        let _ = self.pids.flush();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("child has no pipes".into());
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        let first = match ready {
            Ok(Ok(Some(l))) => l,
            _ => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = tail.lines().last().unwrap_or("no output").to_string();
                return Err(format!("{who} did not start: {last}"));
            }
        };
        let addr = match serde_json::from_str::<ControlOut>(&first) {
            Ok(ControlOut {
                resp: ControlResp::Ready { quic, .. },
                ..
            }) => quic.and_then(|q| q.parse().ok()),
            _ => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!("{who} sent {first:?} instead of ready"));
            }
        };
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let p2 = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(out) = serde_json::from_str::<ControlOut>(&line) {
                    let tx = p2.lock().ok().and_then(|mut m| m.remove(&out.seq));
                    if let Some(tx) = tx {
                        let _ = tx.send(out.resp);
                    }
                }
            }
            // EOF: the child is gone; dropping the senders wakes every waiter.
            if let Ok(mut m) = p2.lock() {
                m.clear();
            }
        });
        Ok((
            Proc {
                child,
                pid,
                stdin,
                pending,
                seq: 0,
            },
            addr,
        ))
    }

    fn live_servers(&self) -> Vec<NodeId> {
        self.topo.live_servers()
    }

    /// Run one command. Output goes to `out`; errors are returned as one line.
    pub async fn run(&mut self, cmd: Command, out: &mut impl Write) -> Result<(), MasterError> {
        match cmd {
            Command::JoinServer { id } => self.join_server(id).await,
            Command::KillServer { id } => self.kill_server(id).await,
            Command::JoinClient { id, server } => self.join_client(id, server).await,
            Command::BreakConnection { a, b } => self.set_connection(a, b, false).await,
            Command::CreateConnection { a, b } => self.set_connection(a, b, true).await,
            Command::Stabilize => self.stabilize().await,
            Command::PrintStore { id } => {
                let proc = self.server_proc(id)?;
                match proc.call(ControlReq::Dump, CALL).await? {
                    ControlResp::Dump { pairs } => {
                        for (k, v) in pairs {
                            let _ = writeln!(
                                out,
                                "{}:{}",
                                String::from_utf8_lossy(&k),
                                String::from_utf8_lossy(&v)
                            );
                        }
                        let _ = out.flush();
                        Ok(())
                    }
                    other => Err(MasterError::Control(format!(
                        "printStore {id}: unexpected answer {other:?}"
                    ))),
                }
            }
            Command::Put { client, key, value } => {
                self.start_put(client, key, value).await?.finish().await
            }
            Command::Get { client, key } => {
                let c = self.client_proc(client)?;
                let r = c.call(ControlReq::Get { key: key.clone() }, CALL).await?;
                let shown = match r {
                    ControlResp::Got(GetResult::Value(v)) => v,
                    ControlResp::Got(GetResult::NotFound) => "ERR_KEY".into(),
                    ControlResp::Got(GetResult::Dep) => "ERR_DEP".into(),
                    ControlResp::Error(e) => {
                        return Err(MasterError::Request(format!("get {client} {key}: {e}")))
                    }
                    other => {
                        return Err(MasterError::Control(format!(
                            "get {client} {key}: unexpected answer {other:?}"
                        )))
                    }
                };
                let _ = writeln!(out, "{key}:{shown}");
                let _ = out.flush();
                Ok(())
            }
        }
    }

    /// Hand a `put` to its client process without waiting for the answer (the `master`
    /// binary pipelines puts this way; see `driver/src/main.rs`).
    pub async fn start_put(
        &mut self,
        client: NodeId,
        key: String,
        value: String,
    ) -> Result<PendingPut, MasterError> {
        let c = self.client_proc(client)?;
        let rx = c
            .send(ControlReq::Put {
                key: key.clone(),
                value,
            })
            .await
            .map_err(MasterError::Control)?;
        Ok(PendingPut { client, key, rx })
    }

    fn server_proc(&mut self, id: NodeId) -> Result<&mut Proc, MasterError> {
        self.topo.check_running_server(id)?;
        self.servers
            .get_mut(&id)
            .and_then(|s| s.proc.as_mut())
            .ok_or(MasterError::Command(CommandError::Killed { id }))
    }

    fn client_proc(&mut self, id: NodeId) -> Result<&mut Proc, MasterError> {
        self.topo.check_client(id)?;
        self.clients
            .get_mut(&id)
            .ok_or(MasterError::Command(CommandError::NoClient { id }))
    }

    async fn join_server(&mut self, id: NodeId) -> Result<(), MasterError> {
        self.topo.check_join_server(id)?;
        let (proc, addr) = self.spawn(Identity::server(id)).await?;
        let addr =
            addr.ok_or_else(|| MasterError::Start(format!("server {id} reported no address")))?;
        self.servers.insert(
            id,
            ServerSlot {
                proc: Some(proc),
                addr: Some(addr),
            },
        );
        let others = self.topo.server_joined(id);
        // Servers that are down are still members: the new one must keep what they
        // have not acknowledged (log records, tombstones) until they return.
        let down = self.topo.down_servers();
        if let Some(p) = self.servers.get_mut(&id).and_then(|s| s.proc.as_mut()) {
            for d in down {
                if let Err(e) = p.call(ControlReq::Member { id: d }, CALL).await {
                    eprintln!("joinServer {id}: could not announce member {d}: {e}");
                }
            }
        }
        for &o in &others {
            self.connect_servers(id, o).await;
        }
        // Return only once it has caught up: it must not answer a client with
        // something older than what its peers hold.
        if !others.is_empty() {
            if let Some(p) = self.servers.get_mut(&id).and_then(|s| s.proc.as_mut()) {
                let req = ControlReq::CaughtUp {
                    wait_ms: LINK_WAIT_MS,
                };
                match p.call(req, CALL).await {
                    Ok(ControlResp::Ok) => {}
                    Ok(ControlResp::Error(e)) => eprintln!("joinServer {id}: warning: {e}"),
                    Ok(other) => eprintln!("joinServer {id}: unexpected answer {other:?}"),
                    Err(e) => eprintln!("joinServer {id}: {e}"),
                }
            }
        }
        // Clients that kept a link to this id use it again, at the new address.
        for cid in self.topo.clients_linked_to(id) {
            if let Some(c) = self.clients.get_mut(&cid) {
                let req = ControlReq::Readdress {
                    server: id,
                    addr: addr.to_string(),
                };
                if let Err(e) = c.call(req, CALL).await {
                    eprintln!("joinServer {id}: could not tell client {cid}: {e}");
                }
            }
        }
        Ok(())
    }

    /// Allow and establish the link between two live servers; warn if it stays down.
    async fn connect_servers(&mut self, a: NodeId, b: NodeId) {
        let (Some(addr_a), Some(addr_b)) = (
            self.servers.get(&a).and_then(|s| s.addr),
            self.servers.get(&b).and_then(|s| s.addr),
        ) else {
            return;
        };
        let mut pa = self.servers.get_mut(&a).and_then(|s| s.proc.take());
        let mut pb = self.servers.get_mut(&b).and_then(|s| s.proc.take());
        if let (Some(x), Some(y)) = (pa.as_mut(), pb.as_mut()) {
            let ra = x.call(
                ControlReq::Peer {
                    id: b,
                    addr: addr_b.to_string(),
                    wait_ms: LINK_WAIT_MS,
                },
                CALL,
            );
            let rb = y.call(
                ControlReq::Peer {
                    id: a,
                    addr: addr_a.to_string(),
                    wait_ms: LINK_WAIT_MS,
                },
                CALL,
            );
            let (ra, rb) = tokio::join!(ra, rb);
            for r in [ra, rb] {
                match r {
                    Ok(ControlResp::Ok) => {}
                    Ok(ControlResp::Error(e)) => eprintln!("warning: {e}"),
                    Ok(other) => eprintln!("warning: unexpected answer {other:?}"),
                    Err(e) => eprintln!("warning: link {a}-{b}: {e}"),
                }
            }
        }
        if let Some(s) = self.servers.get_mut(&a) {
            s.proc = pa;
        }
        if let Some(s) = self.servers.get_mut(&b) {
            s.proc = pb;
        }
    }

    async fn kill_server(&mut self, id: NodeId) -> Result<(), MasterError> {
        let linked = self.topo.kill_server(id)?;
        let proc = self.servers.get_mut(&id).and_then(|s| {
            s.addr = None;
            s.proc.take()
        });
        if let Some(proc) = proc {
            proc.kill().await;
        }
        for cid in linked {
            if let Some(c) = self.clients.get_mut(&cid) {
                if let Err(e) = c.call(ControlReq::Down { server: id }, CALL).await {
                    eprintln!("killServer {id}: could not tell client {cid}: {e}");
                }
            }
        }
        Ok(())
    }

    async fn join_client(&mut self, id: NodeId, server: NodeId) -> Result<(), MasterError> {
        self.topo.check_join_client(id, server)?;
        let (proc, _) = self.spawn(Identity::client(id)).await?;
        self.clients.insert(id, proc);
        self.topo.client_joined(id, server);
        self.send_link(id, server).await
    }

    /// Tell client `cid` about its (new or renewed) link to `sid`.
    async fn send_link(&mut self, cid: NodeId, sid: NodeId) -> Result<(), MasterError> {
        let addr = self.servers.get(&sid).and_then(|s| s.addr);
        let Some(c) = self.clients.get_mut(&cid) else {
            return Err(CommandError::NoClient { id: cid }.into());
        };
        match addr {
            Some(a) => {
                c.call(
                    ControlReq::Link {
                        server: sid,
                        addr: a.to_string(),
                    },
                    CALL,
                )
                .await?;
            }
            None => {
                // Linked to a server that is down: keep the place, mark it down.
                c.call(
                    ControlReq::Link {
                        server: sid,
                        addr: "0.0.0.0:9".into(),
                    },
                    CALL,
                )
                .await?;
                c.call(ControlReq::Down { server: sid }, CALL).await?;
            }
        }
        Ok(())
    }

    async fn set_connection(&mut self, a: NodeId, b: NodeId, up: bool) -> Result<(), MasterError> {
        match self.topo.set_connection(a, b, up)? {
            Connection::Servers { a, b } if up => self.connect_servers(a, b).await,
            Connection::Servers { a, b } => {
                for (x, y) in [(a, b), (b, a)] {
                    if let Some(Some(p)) = self.servers.get_mut(&x).map(|s| s.proc.as_mut()) {
                        if let Err(e) = p.call(ControlReq::Block { id: y }, CALL).await {
                            eprintln!("warning: breakConnection {a} {b}: {e}");
                        }
                    }
                }
            }
            Connection::Client { client, server } if up => {
                return self.send_link(client, server).await
            }
            Connection::Client { client, server } => {
                let Some(c) = self.clients.get_mut(&client) else {
                    return Err(CommandError::NoClient { id: client }.into());
                };
                c.call(ControlReq::Unlink { server }, CALL).await?;
            }
        }
        Ok(())
    }

    /// Connected components of live servers over unbroken links.
    pub fn components(&self) -> Vec<Vec<NodeId>> {
        self.topo.components()
    }

    async fn stabilize(&mut self) -> Result<(), MasterError> {
        let start = Instant::now();
        let comps = self.components();
        loop {
            let mut roots: BTreeMap<NodeId, u64> = BTreeMap::new();
            let ids = self.live_servers();
            let mut procs: Vec<(NodeId, Proc)> = Vec::new();
            for id in &ids {
                if let Some(p) = self.servers.get_mut(id).and_then(|s| s.proc.take()) {
                    procs.push((*id, p));
                }
            }
            let answers = futures_join_all(
                procs
                    .iter_mut()
                    .map(|(id, p)| {
                        let id = *id;
                        async move { (id, p.call(ControlReq::Digest, CALL).await) }
                    })
                    .collect(),
            )
            .await;
            for (id, p) in procs {
                if let Some(s) = self.servers.get_mut(&id) {
                    s.proc = Some(p);
                }
            }
            for (id, a) in answers {
                match a {
                    Ok(ControlResp::Digest { root, .. }) => {
                        roots.insert(id, root);
                    }
                    Ok(other) => {
                        return Err(MasterError::Control(format!(
                            "stabilize: server {id} answered {other:?}"
                        )))
                    }
                    Err(e) => {
                        return Err(MasterError::Control(format!("stabilize: server {id}: {e}")))
                    }
                }
            }
            let settled = comps.iter().all(|c| {
                let r0 = roots.get(&c[0]);
                c.iter().all(|s| roots.get(s) == r0)
            });
            if settled {
                return Ok(());
            }
            if start.elapsed() > self.opts.stabilize_timeout {
                return Err(MasterError::Stabilize(format!(
                    "stabilize: stores still differ after {:?}",
                    self.opts.stabilize_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stop every child (EOF on its control channel, then SIGKILL if it lingers).
    pub async fn shutdown(&mut self) {
        let mut stops = Vec::new();
        for (_, c) in std::mem::take(&mut self.clients) {
            stops.push(c.stop());
        }
        for (_, s) in std::mem::take(&mut self.servers) {
            if let Some(p) = s.proc {
                stops.push(p.stop());
            }
        }
        futures_join_all(stops).await;
    }

    /// The QUIC address of a live server.
    pub fn server_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.servers.get(&id).and_then(|s| s.addr)
    }

    /// The directory holding the CA and every issued certificate.
    pub fn certs_dir(&self) -> &Path {
        &self.certs
    }

    /// Issue (or re-issue) a certificate for `who` in [`Master::certs_dir`], e.g. for a
    /// test that acts as a client itself.
    pub fn issue(&self, who: Identity) -> Result<meshkv_node::pki::TlsMaterial, String> {
        pki::write_cluster_certs(&self.certs, &[who]).map_err(|e| e.to_string())?;
        let (ca, cert, key) = pki::cert_paths(&self.certs, who);
        meshkv_node::pki::TlsMaterial::load(&ca, &cert, &key, who).map_err(|e| e.to_string())
    }

    /// A live server's status (JSON text, see `meshkv_node::server::Status`).
    pub async fn status(&mut self, id: NodeId) -> Result<String, MasterError> {
        match self.server_proc(id)?.call(ControlReq::Status, CALL).await? {
            ControlResp::Status(s) => Ok(s),
            other => Err(MasterError::Control(format!(
                "status {id}: unexpected answer {other:?}"
            ))),
        }
    }

    /// A live server's digest root, key count and watermarks.
    pub async fn digest(
        &mut self,
        id: NodeId,
    ) -> Result<(u64, usize, meshkv_core::VersionVector), MasterError> {
        match self.server_proc(id)?.call(ControlReq::Digest, CALL).await? {
            ControlResp::Digest { root, keys, seen } => Ok((root, keys, seen)),
            other => Err(MasterError::Control(format!(
                "digest {id}: unexpected answer {other:?}"
            ))),
        }
    }

    /// A live server's live pairs.
    pub async fn dump(&mut self, id: NodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>, MasterError> {
        match self.server_proc(id)?.call(ControlReq::Dump, CALL).await? {
            ControlResp::Dump { pairs } => Ok(pairs),
            other => Err(MasterError::Control(format!(
                "dump {id}: unexpected answer {other:?}"
            ))),
        }
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.opts.run_dir
    }

    /// Pids of the running children.
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.clients.values().map(|c| c.pid).collect();
        v.extend(
            self.servers
                .values()
                .filter_map(|s| s.proc.as_ref().map(|p| p.pid)),
        );
        v
    }
}

/// Run futures concurrently and collect their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    futures::future::join_all(futs).await
}

/// A server's traffic counters summed over its peers, read from its status JSON (see
/// `meshkv_node::server::PeerStatus`): what catch-up tests and benchmarks measure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes received from peers on all streams.
    pub bytes_received: u64,
    /// Bytes sent to peers on all streams.
    pub bytes_sent: u64,
    /// Bytes of sync answers and tree-walk fetches received.
    pub catchup_bytes_received: u64,
    /// Keys received through catch-up.
    pub catchup_keys_received: u64,
    /// Eager pushes received.
    pub pushes_received: u64,
    /// Tree walks this server ran.
    pub walks: u64,
}

/// Sum a status's per-peer counters.
pub fn traffic(status: &serde_json::Value) -> Traffic {
    let mut t = Traffic::default();
    for p in status["peers"].as_array().into_iter().flatten() {
        let n = |f: &str| p[f].as_u64().unwrap_or(0);
        t.bytes_received += n("bytes_received");
        t.bytes_sent += n("bytes_sent");
        t.catchup_bytes_received += n("catchup_bytes_received");
        t.catchup_keys_received += n("catchup_keys_received");
        t.pushes_received += n("pushes_received");
        t.walks += n("walks");
    }
    t
}

/// Tree walks that the status's server ran against `peer`.
pub fn walks_against(status: &serde_json::Value, peer: NodeId) -> u64 {
    status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_u64() == Some(peer))
        .map(|p| p["walks"].as_u64().unwrap_or(0))
        .sum()
}
