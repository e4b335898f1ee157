//! The five tests of the seed (and a no-session variant of the consistency tests),
//! their fault schedules, the convergence check, and the files each test writes.

use crate::check;
use crate::faults::{self, FaultCmds, Recorder};
use crate::history::{History, Op, OpKind};
use crate::kv::{ClientCfg, KvClient};
use crate::progress::Progress;
use crate::report::{self, Outcome};
use backon::{ConstantBuilder, Retryable};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How big each test is.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Throughput: concurrent workers.
    pub tp_workers: usize,
    /// Throughput: keys.
    pub tp_keys: usize,
    /// Throughput: requests in all.
    pub tp_ops: usize,
    /// Consistency tests: keys (one writer each).
    pub keys: usize,
    /// Consistency tests: writes per key.
    pub writes: usize,
    /// Consistency tests: a read of the key at the next server after every N writes
    /// (0: no reads).
    pub read_every: usize,
    /// Manual partition: keys.
    pub mp_keys: usize,
}

impl Default for Sizes {
    fn default() -> Sizes {
        Sizes {
            tp_workers: 10,
            tp_keys: 100,
            tp_ops: 5000,
            keys: 40,
            writes: 500,
            read_every: 4,
            mp_keys: 10,
        }
    }
}

/// Everything the tests share.
#[derive(Clone, Debug)]
pub struct Suite {
    /// The client's configuration (servers, headers, deadlines).
    pub cfg: ClientCfg,
    /// The fault commands.
    pub faults: FaultCmds,
    /// Where results go.
    pub out: PathBuf,
    /// Prefix of every key (so runs never see each other's keys).
    pub run_id: String,
    /// Sizes.
    pub sizes: Sizes,
    /// Bound on convergence after the last fault ends and the last request is answered.
    pub converge_bound: Duration,
    /// The server the failure test crashes.
    pub kill_node: usize,
    /// The two sides of the partition tests.
    pub group_a: Vec<usize>,
    /// The other side.
    pub group_b: Vec<usize>,
    /// Shortest fault window of the failure and stress tests.
    pub fault_min: Duration,
    /// Longest fault window (the fault ends at 2/3 of the writes, or at this).
    pub fault_max: Duration,
}

/// Which fault a consistency test injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// None: base consistency.
    None,
    /// Crash one server partway, restart it later.
    Kill,
    /// Partition the two groups partway, heal later.
    Partition,
}

/// At the linearizable level: no broken chain (where measured), no stale read, and a
/// linearizable history, whatever the faults.
fn assert_linearizable(o: &mut Outcome) {
    if let Some(breaks) = o.chain_breaks {
        o.assert(
            "chain breaks zero (linearizable)",
            breaks == 0,
            format!("{breaks} breaks"),
        );
    }
    o.assert(
        "stale reads zero (linearizable)",
        o.stale_reads == Some(0),
        format!("{} stale reads", o.stale_reads.unwrap_or(0)),
    );
    let verdict = o.linearizable.clone().unwrap_or_default();
    o.assert("history linearizable", verdict == "yes", verdict);
}

fn ids(v: &[usize]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The result of waiting for the servers to agree.
pub struct Converge {
    /// Whether they agreed within the bound.
    pub converged: bool,
    /// Time until they agreed (or the bound), from `since`.
    pub ms: f64,
    /// The agreed values (or the first reachable server's, when they did not agree).
    pub finals: Vec<(String, Option<String>)>,
    /// Why they did not agree.
    pub detail: String,
}

type Snapshot = Result<Vec<Option<String>>, String>;

impl Suite {
    fn n(&self) -> usize {
        self.cfg.servers.len()
    }

    /// Wait until the given servers all hold identical values for `keys` (reads
    /// without a session token), within the bound counted from `since`: a round of
    /// reads every 25 ms until they agree or the bound passes.
    pub async fn converge(&self, keys: &[String], servers: &[usize], since: Instant) -> Converge {
        let cfg = Arc::new(self.cfg.clone());
        let keys = Arc::new(keys.to_vec());
        let deadline = since + self.converge_bound;
        let clients: Vec<KvClient> = servers
            .iter()
            .map(|_| KvClient::new(cfg.clone(), 9000, since))
            .collect();
        let clients = tokio::sync::Mutex::new(clients);
        let round = || async {
            let mut clients = clients.lock().await;
            let snaps = snapshot(&mut clients, servers, &keys, &cfg, since).await;
            let agree = snaps.iter().all(|s| s.is_ok()) && snaps.windows(2).all(|w| w[0] == w[1]);
            if agree {
                Ok(snaps)
            } else {
                Err(snaps)
            }
        };
        let every = ConstantBuilder::new()
            .with_delay(Duration::from_millis(25))
            .without_max_times();
        let (converged, snaps) = match round.retry(every).when(|_| Instant::now() < deadline).await
        {
            Ok(snaps) => (true, snaps),
            Err(snaps) => (false, snaps),
        };
        let finals = snaps
            .iter()
            .find_map(|s| s.as_ref().ok())
            .map(|v| keys.iter().cloned().zip(v.iter().cloned()).collect())
            .unwrap_or_default();
        Converge {
            converged,
            ms: since.elapsed().as_secs_f64() * 1000.0,
            finals,
            detail: if converged {
                String::new()
            } else {
                describe_divergence(&keys, servers, &snaps)
            },
        }
    }

    fn write_files(&self, h: &History, o: &mut Outcome) {
        let base = self.out.join(&o.test);
        let files = [
            (base.with_extension("history.json"), None),
            (base.with_extension("svg"), Some("svg")),
            (base.with_extension("json"), Some("json")),
            (base.with_extension("txt"), Some("txt")),
        ];
        for (path, _) in &files {
            if let Some(name) = path.file_name() {
                o.files.push(name.to_string_lossy().into_owned());
            }
        }
        let mut problems = Vec::new();
        if let Err(e) = h.write(&files[0].0) {
            problems.push(format!("{}: {e}", files[0].0.display()));
        }
        let subtitle = format!(
            "{} ops, {} errors, chain breaks {}, stale reads {}, lost writes {}, max unavailability {:.0} ms, convergence {}",
            o.ops,
            o.errors,
            o.chain_breaks.map_or("-".into(), |v| v.to_string()),
            o.stale_reads.map_or("-".into(), |v| v.to_string()),
            o.lost_writes.map_or("-".into(), |v| v.to_string()),
            o.max_unavail_ms,
            o.convergence_ms.map_or("-".into(), |v| format!("{v:.0} ms")),
        );
        let title = format!("meshkv-test {}: {}", o.test, o.description);
        match report::svg(h, &title, &subtitle) {
            Ok(svg) => {
                if let Err(e) = std::fs::write(&files[1].0, svg) {
                    problems.push(format!("{}: {e}", files[1].0.display()));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", files[1].0.display())),
        }
        match serde_json::to_string_pretty(o) {
            Ok(j) => {
                if let Err(e) = std::fs::write(&files[2].0, j + "\n") {
                    problems.push(format!("{}: {e}", files[2].0.display()));
                }
            }
            Err(e) => problems.push(format!("json: {e}")),
        }
        if let Err(e) = std::fs::write(&files[3].0, o.table()) {
            problems.push(format!("{}: {e}", files[3].0.display()));
        }
        for p in problems {
            eprintln!("meshkv-test: cannot write {p}");
        }
    }

    fn finish(&self, h: &History, mut o: Outcome, duration_s: f64) -> Outcome {
        o.count(h, duration_s);
        o.convergence_bound_ms = self.converge_bound.as_secs_f64() * 1000.0;
        self.write_files(h, &mut o);
        o
    }

    fn key(&self, test: &str, k: usize) -> String {
        format!("{}-{test}-{k}", self.run_id)
    }

    /// Test 1: throughput. Workers read and write random keys at random servers.
    pub async fn throughput(&self) -> Outcome {
        let sz = &self.sizes;
        let cfg = Arc::new(self.cfg.clone());
        let keys: Arc<Vec<String>> = Arc::new((0..sz.tp_keys).map(|k| self.key("tp", k)).collect());
        let t0 = Instant::now();
        let progress = Progress::start("throughput", sz.tp_ops as u64);
        let next = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for w in 0..sz.tp_workers {
            let (cfg, keys, next, progress) =
                (cfg.clone(), keys.clone(), next.clone(), progress.clone());
            let total = sz.tp_ops as u64;
            let run = self.run_id.clone();
            handles.push(tokio::spawn(async move {
                let mut c = KvClient::new(cfg, w, t0);
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64 + 7);
                let mut ops = Vec::new();
                loop {
                    let n = next.fetch_add(1, Relaxed);
                    if n >= total {
                        break;
                    }
                    let key = &keys[rng.gen_range(0..keys.len())];
                    let server = rng.gen_range(0..c.servers());
                    let op = if rng.gen_bool(0.5) {
                        let v = format!("{run}-tp-c{w}-{n}");
                        c.run(OpKind::Put, key, Some(&v), server).await
                    } else {
                        c.run(OpKind::Get, key, None, server).await
                    };
                    progress.inc(op.ok);
                    ops.push(op);
                }
                ops
            }));
        }
        let ops = gather(handles).await;
        let dur = t0.elapsed().as_secs_f64();
        progress.finish();
        let rec = Recorder::new(t0);
        let all: Vec<usize> = (0..self.n()).collect();
        let conv = self.converge(&keys, &all, Instant::now()).await;
        rec.event("converged", if conv.converged { "" } else { "(not)" });
        let mut o = Outcome {
            test: "throughput".into(),
            description: format!(
                "{} workers, random reads/writes of {} keys at random servers",
                sz.tp_workers, sz.tp_keys
            ),
            session: self.cfg.session,
            consistency: self.cfg.level.clone(),
            ..Default::default()
        };
        let h = self.judge(&mut o, ops, rec.events(), &conv, false);
        o.assert(
            "no errors",
            o.errors == 0,
            format!("{} requests not served", o.errors),
        );
        self.finish(&h, o, dur)
    }

    /// Chain breaks, stale reads, lost writes and convergence into `o`; the history.
    fn judge(
        &self,
        o: &mut Outcome,
        mut ops: Vec<Op>,
        events: Vec<crate::history::Event>,
        conv: &Converge,
        chains: bool,
    ) -> History {
        ops.sort_by_key(|op| (op.start_us, op.client));
        if chains {
            let breaks = check::chain_breaks(&ops);
            o.chain_breaks = Some(breaks.len());
            o.breaks_sample = breaks.into_iter().take(10).collect();
        }
        let stale = check::stale_reads(&ops);
        o.stale_reads = Some(stale.len());
        o.linearizable = Some(check::linearizability(&ops).verdict());
        o.stale_sample = stale.into_iter().take(10).collect();
        o.converged = Some(conv.converged);
        o.convergence_ms = Some(conv.ms);
        if !conv.finals.is_empty() {
            let lost = check::lost_writes(&ops, &conv.finals);
            o.lost_writes = Some(lost.len());
            o.lost_sample = lost.into_iter().take(10).collect();
        }
        o.assert(
            "identical stores after the last fault",
            conv.converged,
            if conv.converged {
                format!(
                    "agreed after {:.0} ms (bound {} ms)",
                    conv.ms,
                    self.converge_bound.as_millis()
                )
            } else {
                format!(
                    "not within {} ms: {}",
                    self.converge_bound.as_millis(),
                    conv.detail
                )
            },
        );
        o.assert(
            "no acknowledged write lost",
            o.lost_writes == Some(0),
            match o.lost_writes {
                Some(n) => format!("{n} keys lost their last acknowledged write"),
                None => "no reachable server to read back from".into(),
            },
        );
        History {
            test: o.test.clone(),
            servers: self.n(),
            ops,
            events,
            final_values: Some(conv.finals.clone()),
        }
    }

    /// Tests 2, 3, 5 (and their no-session variants): one writer per key, writes
    /// round-robin over the servers, old/new chain checked; optionally a crash or a
    /// partition partway.
    pub async fn consistency(&self, name: &str, fault: Fault, session: bool) -> Outcome {
        let sz = &self.sizes;
        let n = self.n();
        let cfg = Arc::new(ClientCfg {
            session,
            ..self.cfg.clone()
        });
        let keys: Vec<String> = (0..sz.keys).map(|k| self.key(name, k)).collect();
        let reads_per_key = sz.writes.checked_div(sz.read_every).unwrap_or(0);
        let total = (sz.keys * (sz.writes + reads_per_key)) as u64;
        let t0 = Instant::now();
        let rec = Arc::new(Recorder::new(t0));
        let progress = Progress::start(name, total);
        let mut handles = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            let (cfg, progress, key) = (cfg.clone(), progress.clone(), key.clone());
            let (writes, read_every) = (sz.writes, sz.read_every);
            handles.push(tokio::spawn(async move {
                let mut c = KvClient::new(cfg, k, t0);
                let mut ops = Vec::with_capacity(writes + writes / read_every.max(1));
                for i in 0..writes {
                    let v = format!("{key}-{i}");
                    let op = c.run(OpKind::Put, &key, Some(&v), (k + i) % n).await;
                    progress.inc(op.ok);
                    ops.push(op);
                    if read_every > 0 && i % read_every == read_every - 1 {
                        let op = c.run(OpKind::Get, &key, None, (k + i + 1) % n).await;
                        progress.inc(op.ok);
                        ops.push(op);
                    }
                }
                ops
            }));
        }
        let workers_done = Arc::new(AtomicBool::new(false));
        let driver = match fault {
            Fault::None => None,
            _ => {
                let (suite, rec, progress, done) = (
                    self.clone(),
                    rec.clone(),
                    progress.clone(),
                    workers_done.clone(),
                );
                Some(tokio::spawn(async move {
                    suite.fault_window(fault, &rec, &progress, &done).await
                }))
            }
        };
        let ops = gather(handles).await;
        workers_done.store(true, Relaxed);
        let fault_result = match driver {
            None => Ok(()),
            Some(d) => d.await.unwrap_or_else(|e| Err(format!("fault task: {e}"))),
        };
        let dur = t0.elapsed().as_secs_f64();
        progress.finish();
        let all: Vec<usize> = (0..n).collect();
        let conv = self.converge(&keys, &all, Instant::now()).await;
        rec.event("converged", if conv.converged { "" } else { "(not)" });
        let description = match fault {
            Fault::None => format!(
                "{} keys x {} writes round-robin over {n} servers, old/new chain",
                sz.keys, sz.writes
            ),
            Fault::Kill => format!(
                "as base, server {} crashed (SIGKILL) partway and restarted",
                self.kill_node
            ),
            Fault::Partition => format!(
                "as base, partition {{{}}}|{{{}}} partway, then healed",
                ids(&self.group_a),
                ids(&self.group_b)
            ),
        };
        let mut o = Outcome {
            test: name.into(),
            description,
            session,
            consistency: self.cfg.level.clone(),
            ..Default::default()
        };
        let h = self.judge(&mut o, ops, rec.events(), &conv, true);
        if let Err(e) = fault_result {
            o.assert("faults injected", false, e);
        }
        if self.cfg.level == "linearizable" {
            assert_linearizable(&mut o);
        }
        if fault == Fault::None && session {
            o.assert(
                "chain breaks zero (no faults, session token)",
                o.chain_breaks == Some(0),
                format!("{} breaks", o.chain_breaks.unwrap_or(0)),
            );
            o.assert(
                "stale reads zero (no faults, session token)",
                o.stale_reads == Some(0),
                format!("{} stale reads", o.stale_reads.unwrap_or(0)),
            );
            o.assert(
                "no errors (no faults)",
                h.ops.iter().all(|op| op.ok),
                format!(
                    "{} requests not served",
                    h.ops.iter().filter(|op| !op.ok).count()
                ),
            );
        }
        if fault != Fault::None {
            let (start, end) = fault_span(&h);
            let during: Vec<&Op> = h
                .ops
                .iter()
                .filter(|op| op.end_us >= start && op.start_us <= end)
                .collect();
            let longest = during.iter().map(|op| op.latency_ms()).fold(0.0, f64::max);
            o.details.insert(
                "during the fault".into(),
                format!(
                    "{:.1} s, {} requests, {} errors, {} failovers, longest wait {longest:.0} ms",
                    end.saturating_sub(start) as f64 / 1e6,
                    during.len(),
                    during.iter().filter(|op| !op.ok).count(),
                    during
                        .iter()
                        .filter(|op| op.ok && op.server != op.target)
                        .count(),
                ),
            );
        }
        self.finish(&h, o, dur)
    }

    /// Test `concurrent`: 6 clients read and write 3 shared keys through random
    /// servers while one server is crashed and restarted, then the servers are
    /// partitioned and healed. Keys have many writers, so there is no chain to check:
    /// the history is judged for linearizability (asserted at the linearizable level).
    pub async fn concurrent(&self) -> Outcome {
        const CLIENTS: usize = 6;
        const KEYS: usize = 3;
        let n = self.n();
        let per_client = self.sizes.writes.max(50);
        let cfg = Arc::new(self.cfg.clone());
        let keys: Vec<String> = (0..KEYS).map(|k| self.key("concurrent", k)).collect();
        let total = (CLIENTS * per_client) as u64;
        let t0 = Instant::now();
        let rec = Arc::new(Recorder::new(t0));
        let progress = Progress::start("concurrent", total);
        // Clients go on (up to 4x their share) until both faults are over.
        let faults_over = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for c in 0..CLIENTS {
            let (cfg, progress, keys, over) = (
                cfg.clone(),
                progress.clone(),
                keys.clone(),
                faults_over.clone(),
            );
            handles.push(tokio::spawn(async move {
                let mut client = KvClient::new(cfg, c, t0);
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64 + 1);
                let mut ops = Vec::with_capacity(per_client);
                let mut i = 0;
                while i < per_client || (!over.load(Relaxed) && i < 4 * per_client) {
                    let key = &keys[rng.gen_range(0..keys.len())];
                    let server = rng.gen_range(0..n);
                    let op = if rng.gen_bool(0.5) {
                        let v = format!("{key}-c{c}-{i}");
                        client.run(OpKind::Put, key, Some(&v), server).await
                    } else {
                        client.run(OpKind::Get, key, None, server).await
                    };
                    progress.inc(op.ok);
                    ops.push(op);
                    i += 1;
                }
                ops
            }));
        }
        let workers_done = Arc::new(AtomicBool::new(false));
        let driver = {
            let (suite, rec, progress, done, over) = (
                self.clone(),
                rec.clone(),
                progress.clone(),
                workers_done.clone(),
                faults_over.clone(),
            );
            tokio::spawn(async move {
                let kill = suite
                    .fault_window(Fault::Kill, &rec, &progress, &done)
                    .await;
                let part = suite
                    .fault_window(Fault::Partition, &rec, &progress, &done)
                    .await;
                over.store(true, Relaxed);
                kill.and(part)
            })
        };
        let ops = gather(handles).await;
        workers_done.store(true, Relaxed);
        let fault_result = driver
            .await
            .unwrap_or_else(|e| Err(format!("fault task: {e}")));
        let dur = t0.elapsed().as_secs_f64();
        progress.finish();
        let all: Vec<usize> = (0..n).collect();
        let conv = self.converge(&keys, &all, Instant::now()).await;
        rec.event("converged", if conv.converged { "" } else { "(not)" });
        let mut o = Outcome {
            test: "concurrent".into(),
            description: format!(
                "{CLIENTS} clients, {KEYS} shared keys, random servers; server {} crashed and restarted, then {{{}}}|{{{}}} partitioned and healed",
                self.kill_node,
                ids(&self.group_a),
                ids(&self.group_b)
            ),
            session: self.cfg.session,
            consistency: self.cfg.level.clone(),
            ..Default::default()
        };
        let h = self.judge(&mut o, ops, rec.events(), &conv, false);
        if let Err(e) = fault_result {
            o.assert("faults injected", false, e);
        }
        if self.cfg.level == "linearizable" {
            assert_linearizable(&mut o);
            let served = h.ops.iter().filter(|op| op.ok).count();
            o.details.insert(
                "served".into(),
                format!(
                    "{served} of {} requests ({:.2} %)",
                    h.ops.len(),
                    100.0 * served as f64 / h.ops.len().max(1) as f64
                ),
            );
        }
        self.finish(&h, o, dur)
    }

    /// Inject a fault once a third of the requests are done; end it at two thirds
    /// (but no sooner than `fault_min`, no later than `fault_max`, and at once when
    /// the workers are done).
    async fn fault_window(
        &self,
        fault: Fault,
        rec: &Recorder,
        progress: &Progress,
        done: &AtomicBool,
    ) -> Result<(), String> {
        let total = progress.total();
        let poll = Duration::from_millis(10);
        while progress.done() < total / 3 && !done.load(Relaxed) {
            tokio::time::sleep(poll).await;
        }
        let t = self.faults.timeout;
        let (what, label, a, b) = match fault {
            Fault::Kill => (
                "kill",
                format!("node {}", self.kill_node),
                String::new(),
                String::new(),
            ),
            _ => (
                "partition",
                format!("{{{}}}|{{{}}}", ids(&self.group_a), ids(&self.group_b)),
                ids(&self.group_a),
                ids(&self.group_b),
            ),
        };
        let id = self.kill_node.to_string();
        let vars = [("id", id.as_str()), ("a", a.as_str()), ("b", b.as_str())];
        let cmd = if fault == Fault::Kill {
            &self.faults.kill
        } else {
            &self.faults.partition
        };
        let began = rec.now_us();
        faults::run(what, cmd.as_ref(), &vars, t).await?;
        rec.event_at(began, what, &label);
        progress.set_note(&format!("{what} {label}"));
        let start = Instant::now();
        loop {
            let e = start.elapsed();
            let enough = e >= self.fault_min;
            if e >= self.fault_max
                || (enough && (progress.done() >= 2 * total / 3 || done.load(Relaxed)))
            {
                break;
            }
            tokio::time::sleep(poll).await;
        }
        let (what, cmd) = if fault == Fault::Kill {
            ("restart", &self.faults.restart)
        } else {
            ("heal", &self.faults.heal)
        };
        let r = faults::run(what, cmd.as_ref(), &vars, t).await;
        rec.event(what, &label);
        progress.set_note("");
        r
    }

    /// Test 4: manual partition. Write, read from two servers, partition, write on
    /// both sides, read on all servers, heal, time until all agree.
    pub async fn manual_partition(&self) -> Outcome {
        let n = self.n();
        let cfg = Arc::new(self.cfg.clone());
        let keys: Vec<String> = (0..self.sizes.mp_keys).map(|k| self.key("mp", k)).collect();
        let t0 = Instant::now();
        let rec = Recorder::new(t0);
        let total = (keys.len() * (3 + 2 + n)) as u64;
        let progress = Progress::start("partition", total);
        let mut ops: Vec<Op> = Vec::new();
        let mut o = Outcome {
            test: "partition".into(),
            description: format!(
                "write, read on 2 servers, partition {{{}}}|{{{}}}, write both sides, read all, heal",
                ids(&self.group_a),
                ids(&self.group_b)
            ),
            session: self.cfg.session,
            consistency: self.cfg.level.clone(),
            ..Default::default()
        };
        let (a0, b0) = (
            self.group_a.first().copied().unwrap_or(0),
            self.group_b.first().copied().unwrap_or(n - 1),
        );
        let a1 = self.group_a.get(1).copied().unwrap_or((a0 + 1) % n);
        // 1. Write through a0, read through a0 and a1 (the session token makes a1
        //    wait for the write if it is behind).
        let mut c = KvClient::new(cfg.clone(), 0, t0);
        let mut agree = 0;
        for key in &keys {
            let v = format!("{key}-before");
            let w = c.run(OpKind::Put, key, Some(&v), a0).await;
            progress.inc(w.ok);
            ops.push(w);
            let r1 = c.run(OpKind::Get, key, None, a0).await;
            let r2 = c.run(OpKind::Get, key, None, a1).await;
            if r1.ok && r2.ok && r1.value == r2.value && r1.value.as_deref() == Some(v.as_str()) {
                agree += 1;
            }
            progress.inc(r1.ok);
            progress.inc(r2.ok);
            ops.push(r1);
            ops.push(r2);
        }
        o.details.insert(
            "1. before the partition".into(),
            format!(
                "{agree}/{} keys read the same value at servers {a0} and {a1}",
                keys.len()
            ),
        );
        o.assert(
            "same value at two servers before the partition",
            agree == keys.len(),
            format!("{agree}/{}", keys.len()),
        );
        // 2. Partition.
        let (ga, gb) = (ids(&self.group_a), ids(&self.group_b));
        let label = format!("{{{ga}}}|{{{gb}}}");
        let vars = [("a", ga.as_str()), ("b", gb.as_str()), ("id", "")];
        let t = self.faults.timeout;
        let mut fault_ok = true;
        let began = rec.now_us();
        match faults::run("partition", self.faults.partition.as_ref(), &vars, t).await {
            Ok(()) => rec.event_at(began, "partition", &label),
            Err(e) => {
                fault_ok = false;
                o.assert("faults injected", false, e);
            }
        }
        progress.set_note(&format!("partition {label}"));
        // 3. Each side's own client writes on its side; side B writes later.
        let mut ca = KvClient::new(cfg.clone(), 1, t0);
        let mut cb = KvClient::new(cfg.clone(), 2, t0);
        for (client, server, side) in [(&mut ca, a0, "a"), (&mut cb, b0, "b")] {
            for key in &keys {
                let v = format!("{key}-side-{side}");
                let w = client
                    .run_with(OpKind::Put, key, Some(&v), server, false)
                    .await;
                progress.inc(w.ok);
                ops.push(w);
            }
        }
        // 4. Read every key at every server (fresh reader, no failover); each side
        //    should show its own side's value once it has replicated within the side.
        let reader_cfg = Arc::new(ClientCfg {
            session: false,
            failover: false,
            ..self.cfg.clone()
        });
        let reader = tokio::sync::Mutex::new(KvClient::new(reader_cfg, 3, t0));
        let side_deadline = Instant::now() + Duration::from_secs(3);
        let mut per_server = Vec::new();
        for s in 0..n {
            let side = if self.group_a.contains(&s) {
                "a"
            } else if self.group_b.contains(&s) {
                "b"
            } else {
                ""
            };
            let mut own = 0;
            for key in &keys {
                // Read again every 20 ms until this side's value shows (at most
                // until the side deadline; a server in neither group: once).
                let want = format!("{key}-side-{side}");
                let read = || async {
                    let r = reader.lock().await.run(OpKind::Get, key, None, s).await;
                    if r.ok && r.value.as_deref() == Some(want.as_str()) {
                        Ok(r)
                    } else {
                        Err(r)
                    }
                };
                let every = ConstantBuilder::new()
                    .with_delay(Duration::from_millis(20))
                    .without_max_times();
                let r = match read
                    .retry(every)
                    .when(|_| !side.is_empty() && Instant::now() < side_deadline)
                    .await
                {
                    Ok(r) => {
                        own += 1;
                        r
                    }
                    Err(r) => r,
                };
                progress.inc(r.ok);
                ops.push(r);
            }
            per_server.push(format!("server {s} ({side}): {own}/{}", keys.len()));
        }
        o.details.insert(
            "2. during the partition".into(),
            format!("own side's value read back: {}", per_server.join(", ")),
        );
        // 5. Heal, then time until all servers agree.
        match faults::run("heal", self.faults.heal.as_ref(), &vars, t).await {
            Ok(()) => rec.event("heal", &label),
            Err(e) => {
                fault_ok = false;
                o.assert("faults injected", false, e);
            }
        }
        progress.set_note("");
        let healed = Instant::now();
        let all: Vec<usize> = (0..n).collect();
        let conv = self.converge(&keys, &all, healed).await;
        rec.event("converged", if conv.converged { "" } else { "(not)" });
        let dur = t0.elapsed().as_secs_f64();
        progress.finish();
        let winners_b = conv
            .finals
            .iter()
            .filter(|(_, v)| v.as_deref().is_some_and(|v| v.ends_with("-side-b")))
            .count();
        o.details.insert(
            "3. after the heal".into(),
            format!(
                "{winners_b}/{} keys hold side b's (later) write",
                keys.len()
            ),
        );
        if fault_ok {
            o.details
                .insert("faults".into(), "partition and heal injected".into());
        }
        let h = self.judge(&mut o, ops, rec.events(), &conv, false);
        self.finish(&h, o, dur)
    }
}

/// One round of reads: every key at every server (one client each, in parallel).
async fn snapshot(
    clients: &mut Vec<KvClient>,
    servers: &[usize],
    keys: &Arc<Vec<String>>,
    cfg: &Arc<ClientCfg>,
    since: Instant,
) -> Vec<Snapshot> {
    let mut handles = Vec::new();
    for (i, mut c) in clients.drain(..).enumerate() {
        let s = servers[i];
        let keys = keys.clone();
        handles.push(tokio::spawn(async move {
            let mut vals = Vec::with_capacity(keys.len());
            for k in keys.iter() {
                match c.read_at(s, k).await {
                    Ok(v) => vals.push(v),
                    Err(e) => return (c, Err(format!("server {s}: GET {k}: {e}"))),
                }
            }
            (c, Ok(vals))
        }));
    }
    let mut snaps = Vec::new();
    for h in handles {
        match h.await {
            Ok((c, r)) => {
                clients.push(c);
                snaps.push(r);
            }
            Err(e) => {
                clients.push(KvClient::new(cfg.clone(), 9000, since));
                snaps.push(Err(format!("reader task failed: {e}")));
            }
        }
    }
    snaps
}

async fn gather(handles: Vec<tokio::task::JoinHandle<Vec<Op>>>) -> Vec<Op> {
    let mut ops = Vec::new();
    for h in handles {
        match h.await {
            Ok(mut v) => ops.append(&mut v),
            Err(e) => eprintln!("meshkv-test: a worker failed: {e}"),
        }
    }
    ops
}

/// The span of the first fault (start of kill/partition to restart/heal), µs.
fn fault_span(h: &History) -> (u64, u64) {
    let start = h
        .events
        .iter()
        .find(|e| e.kind == "kill" || e.kind == "partition")
        .map(|e| e.t_us);
    let end = h
        .events
        .iter()
        .find(|e| e.kind == "restart" || e.kind == "heal")
        .map(|e| e.t_us);
    match (start, end) {
        (Some(s), Some(e)) => (s, e.max(s)),
        (Some(s), None) => (s, u64::MAX),
        _ => (0, 0),
    }
}

fn describe_divergence(keys: &[String], servers: &[usize], snaps: &[Snapshot]) -> String {
    if let Some((i, Err(e))) = snaps.iter().enumerate().find(|(_, s)| s.is_err()) {
        return format!("server {} unreadable: {e}", servers[i]);
    }
    let vals: Vec<&Vec<Option<String>>> = snaps.iter().filter_map(|s| s.as_ref().ok()).collect();
    let differing: Vec<usize> = (0..keys.len())
        .filter(|&k| vals.windows(2).any(|w| w[0][k] != w[1][k]))
        .collect();
    match differing.first() {
        None => "no difference found".into(),
        Some(&k) => {
            let shown: Vec<String> = vals
                .iter()
                .zip(servers)
                .map(|(v, s)| format!("{s}={}", v[k].as_deref().unwrap_or("(none)")))
                .collect();
            format!(
                "{} keys differ; first {}: {}",
                differing.len(),
                keys[k],
                shown.join(" ")
            )
        }
    }
}
