//! Seeded fault schedules for the registers: acceptors and proposers from
//! [`crate::paxos`] over a network that loses, delays, reorders and duplicates
//! messages, with acceptor crashes and restarts (their durable state survives, what was
//! in flight does not), proposer crashes (an operation abandoned mid-round stays
//! indeterminate), and partitions. Every client's operations are recorded and the
//! history of each key is judged by [`crate::linearizable`]; every accept is checked
//! against "one value per ballot".
//!
//! [`Plant`] plants a broken acceptor (tests and `meshkv-sim` only) so that the checks
//! are shown to fail.

use super::{
    accept_step_with, acceptors, AcceptorFault, AcceptorState, Ballot, Change, Cond, Next,
    PaxosReq, PaxosResp, Proposer, Value,
};
use crate::entry::Entry;
use crate::linearizable::{self, Kind, Op as HOp, Verdict};
use crate::version::{Dot, NodeId, Version, VersionVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// A deliberately broken acceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// Accepts below its promise.
    IgnorePromise,
    /// Keeps its state only in memory: a crash forgets promises and accepted values.
    Volatile,
}

impl Plant {
    /// Every planted fault.
    pub const ALL: [Plant; 2] = [Plant::IgnorePromise, Plant::Volatile];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Plant::IgnorePromise => "acceptor-ignores-promise",
            Plant::Volatile => "acceptor-forgets-on-crash",
        }
    }
}

/// One schedule's shape.
#[derive(Clone, Debug)]
pub struct Config {
    /// The seed.
    pub seed: u64,
    /// Number of servers (each is an acceptor candidate and runs clients).
    pub servers: usize,
    /// Number of concurrent clients.
    pub clients: usize,
    /// Number of keys.
    pub keys: usize,
    /// Operations per client.
    pub ops: usize,
    /// A planted fault.
    pub plant: Option<Plant>,
}

impl Config {
    /// A schedule of moderate size for `seed`, its shape drawn from the seed.
    pub fn for_seed(seed: u64) -> Config {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_9a05);
        Config {
            seed,
            servers: rng.gen_range(3..=5),
            clients: rng.gen_range(2..=6),
            keys: rng.gen_range(1..=2),
            ops: rng.gen_range(5..=25),
            plant: None,
        }
    }
}

/// Faults injected, by kind.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Messages lost.
    pub loss: u64,
    /// Messages duplicated.
    pub duplicate: u64,
    /// Acceptor crashes (with restart).
    pub acceptor_crash: u64,
    /// Operations abandoned mid-round (proposer crash or deadline).
    pub abandoned: u64,
    /// Partitions started.
    pub partition: u64,
    /// Rejections leading to a retry.
    pub retry: u64,
    /// Retries given up because a competing write made the outcome unknowable.
    pub indeterminate: u64,
    /// Session writes (straight into one server's store, absorbed by later rounds).
    pub session_write: u64,
}

/// What a schedule found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The configuration run.
    pub config: Config,
    /// Operations completed with an answer.
    pub completed: u64,
    /// Operations left indeterminate.
    pub indeterminate: u64,
    /// Faults injected.
    pub faults: Faults,
    /// Broken laws, one line each (empty: none).
    pub violations: Vec<String>,
    /// The recorded history, per key.
    pub history: Vec<(Vec<u8>, HOp)>,
}

enum Msg {
    Req(NodeId, PaxosReq),
    Resp(NodeId, PaxosResp),
    /// A store write replicated to another server's store.
    Push(Vec<u8>, Entry),
}

struct Packet {
    from: usize,
    to: usize,
    /// Which client the message belongs to (acceptors answer the client's server; the
    /// client id routes the answer to the right proposer).
    client: usize,
    msg: Msg,
}

struct Client {
    server: usize,
    /// The running attempt, its operation, when it was invoked, and attempts so far.
    running: Option<Running>,
    done: usize,
    counter: u64,
    last_read: BTreeMap<usize, Option<Entry>>,
}

struct Running {
    client: usize,
    key: usize,
    proposer: Proposer,
    invoke: u64,
    attempts: u32,
    kind: Kind,
}

/// Run one schedule.
pub fn run(config: Config) -> Report {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let n = config.servers;
    let ids: BTreeSet<NodeId> = (1..=n as NodeId).collect();
    let mut durable: Vec<BTreeMap<Vec<u8>, AcceptorState>> = vec![BTreeMap::new(); n];
    let mut memory: Vec<BTreeMap<Vec<u8>, AcceptorState>> = vec![BTreeMap::new(); n];
    let mut down = vec![false; n];
    let mut cut: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut net: Vec<Packet> = Vec::new();
    let mut faults = Faults::default();
    let mut violations = Vec::new();
    let mut history: Vec<(Vec<u8>, HOp)> = Vec::new();
    let mut per_ballot: BTreeMap<(Vec<u8>, Ballot), Option<Value>> = BTreeMap::new();
    let mut rids: Vec<NodeId> = (0..n).map(|i| 1000 + i as NodeId).collect();
    let mut own_counter = vec![0u64; n];
    let mut stores: Vec<BTreeMap<Vec<u8>, Entry>> = vec![BTreeMap::new(); n];
    let mut session_counter = 0u64;
    let mut clients: Vec<Client> = (0..config.clients)
        .map(|c| Client {
            server: c % n,
            running: None,
            done: 0,
            counter: 0,
            last_read: BTreeMap::new(),
        })
        .collect();
    let mut ts = 0u64;
    let mut values = 0u64;
    let mut completed = 0u64;
    let mut indeterminate = 0u64;
    let max_steps = 200_000u64;
    let mut now = 0u64;

    while now < max_steps {
        now += 1;
        // Start operations for idle clients.
        for (ci, c) in clients.iter_mut().enumerate() {
            if c.running.is_some() || c.done >= config.ops || down[c.server] {
                continue;
            }
            if !rng.gen_bool(0.3) {
                continue;
            }
            let key = rng.gen_range(0..config.keys);
            let (change, kind) = match rng.gen_range(0..10) {
                0..=3 => (Change::Read, Kind::Get { value: None }),
                4..=6 | 9 => {
                    values += 1;
                    let v = format!("v{values}").into_bytes();
                    let delete = rng.gen_range(0..10) == 9;
                    let value = if delete { None } else { Some(v) };
                    (
                        Change::Write {
                            value: value.clone(),
                            cond: Cond::Always,
                        },
                        Kind::Put {
                            value,
                            previous: None,
                        },
                    )
                }
                7 => {
                    values += 1;
                    let v = Some(format!("v{values}").into_bytes());
                    (
                        Change::Write {
                            value: v.clone(),
                            cond: Cond::Absent,
                        },
                        Kind::Cas {
                            expect: None,
                            value: v,
                            ok: false,
                        },
                    )
                }
                _ => {
                    // If-Match the version this client last read (if it read a live one).
                    let last = c.last_read.get(&key).cloned().flatten();
                    match last.filter(|e| e.value.is_some()) {
                        Some(e) => {
                            values += 1;
                            let v = Some(format!("v{values}").into_bytes());
                            (
                                Change::Write {
                                    value: v.clone(),
                                    cond: Cond::Version(e.version),
                                },
                                Kind::Cas {
                                    expect: e.value.clone(),
                                    value: v,
                                    ok: false,
                                },
                            )
                        }
                        None => (Change::Read, Kind::Get { value: None }),
                    }
                }
            };
            let s = c.server;
            let set = acceptors(&key_of(key), &ids);
            let ballot = Ballot::next(s as NodeId + 1, rids[s], own_counter[s], Ballot::ZERO);
            own_counter[s] = ballot.counter;
            let mut proposer = Proposer::new(key_of(key), change, ballot, set);
            proposer.set_local(stores[s].get(&key_of(key)).cloned());
            if let Next::Send(reqs) = proposer.start() {
                send(&mut net, s, ci, reqs);
            }
            c.running = Some(Running {
                client: ci,
                key,
                proposer,
                invoke: now,
                attempts: 1,
                kind,
            });
        }

        // A session write: straight into one server's store, then pushed.
        // (A few: each is an operation with no answer, which the checker may place
        // anywhere after it began.)
        let busy = clients.iter().any(|c| c.done < config.ops);
        if busy && faults.session_write < 6 && rng.gen_bool(0.002) {
            let s = rng.gen_range(0..n);
            if !down[s] {
                let key = key_of(rng.gen_range(0..config.keys));
                values += 1;
                session_counter += 1;
                faults.session_write += 1;
                let value = Some(format!("v{values}").into_bytes());
                let cur = stores[s].get(&key).cloned();
                ts = cur.as_ref().map_or(ts, |e| e.version.ts.max(ts)) + 1;
                ts += ts & 1;
                let version = Version {
                    ts,
                    dot: Dot::new(10_000 + s as NodeId, session_counter),
                };
                let ctx = cur.map(|e| e.ctx).unwrap_or_default();
                let e = Entry::write(value.clone(), version, &ctx);
                push_write(&mut net, &mut stores, s, &key, e);
                history.push((
                    key,
                    HOp {
                        client: 1_000_000 + s as u64,
                        invoke: now,
                        ret: None,
                        kind: Kind::Put {
                            value,
                            previous: None,
                        },
                    },
                ));
            }
        }

        // Faults.
        if rng.gen_bool(0.002) {
            let a = rng.gen_range(0..n);
            if !down[a] {
                down[a] = true;
                faults.acceptor_crash += 1;
                net.retain(|p| p.to != a && p.from != a);
                // Its clients' operations are abandoned: indeterminate.
                for c in clients.iter_mut().filter(|c| c.server == a) {
                    if abandon(c, &mut history) {
                        faults.abandoned += 1;
                        indeterminate += 1;
                    }
                }
                memory[a] = if config.plant == Some(Plant::Volatile) {
                    BTreeMap::new()
                } else {
                    durable[a].clone()
                };
            }
        }
        if rng.gen_bool(0.004) {
            if let Some(a) = (0..n).find(|a| down[*a]) {
                down[a] = false;
                rids[a] += 100;
            }
        }
        if rng.gen_bool(0.002) && cut.is_empty() {
            let a = rng.gen_range(0..n);
            for b in 0..n {
                if b != a {
                    cut.insert((a, b));
                    cut.insert((b, a));
                }
            }
            faults.partition += 1;
        } else if rng.gen_bool(0.01) {
            cut.clear();
        }

        // A stuck operation (all its messages lost) is abandoned after a while.
        for c in clients.iter_mut() {
            let stuck = c.running.as_ref().is_some_and(|r| now - r.invoke > 2_000);
            if stuck && abandon(c, &mut history) {
                faults.abandoned += 1;
                indeterminate += 1;
            }
        }

        // Deliver one message, chosen at random (reordering).
        if net.is_empty() {
            let idle = clients
                .iter()
                .all(|c| c.running.is_none() && c.done >= config.ops);
            if idle {
                break;
            }
            continue;
        }
        let i = rng.gen_range(0..net.len());
        let p = net.swap_remove(i);
        if down[p.to] || cut.contains(&(p.from, p.to)) {
            continue;
        }
        if rng.gen_bool(0.03) {
            faults.loss += 1;
            continue;
        }
        if rng.gen_bool(0.03) {
            faults.duplicate += 1;
            let copy = Packet {
                from: p.from,
                to: p.to,
                client: p.client,
                msg: match &p.msg {
                    Msg::Req(a, r) => Msg::Req(*a, r.clone()),
                    Msg::Resp(a, r) => Msg::Resp(*a, r.clone()),
                    Msg::Push(k, e) => Msg::Push(k.clone(), e.clone()),
                },
            };
            net.push(copy);
        }
        match p.msg {
            Msg::Req(_, req) => {
                let a = p.to;
                let key = req.key().to_vec();
                let state = memory[a].get(&key).cloned().unwrap_or_default();
                let fault = match config.plant {
                    Some(Plant::IgnorePromise) => Some(AcceptorFault::IgnorePromise),
                    _ => None,
                };
                let (next, resp) = accept_step_with(&state, &req, fault);
                if let PaxosReq::Accept { ballot, value, .. } = &req {
                    if matches!(resp, PaxosResp::Accepted { .. }) {
                        match per_ballot.get(&(key.clone(), *ballot)) {
                            Some(e) if e != value => violations.push(format!(
                                "two values accepted for ballot {ballot} on {}",
                                String::from_utf8_lossy(&key)
                            )),
                            Some(_) => {}
                            None => {
                                per_ballot.insert((key.clone(), *ballot), value.clone());
                            }
                        }
                    }
                }
                if let Some(s) = next {
                    memory[a].insert(key.clone(), s.clone());
                    durable[a].insert(key, s);
                }
                net.push(Packet {
                    from: a,
                    to: p.from,
                    client: p.client,
                    msg: Msg::Resp(a as NodeId + 1, resp),
                });
            }
            Msg::Push(key, entry) => merge_into(&mut stores[p.to], &key, &entry),
            Msg::Resp(from, resp) => {
                let ci = p.client;
                let c = &mut clients[ci];
                let Some(r) = c.running.as_mut() else {
                    continue;
                };
                let mut next = r.proposer.on_response(from, resp);
                loop {
                    match next {
                        Next::Stamp { current } => {
                            c.counter += 1;
                            let s = c.server;
                            let key = key_of(r.key);
                            let value = r.proposer.write_value().unwrap_or(None);
                            if let Some(e) = &current {
                                merge_into(&mut stores[s], &key, e);
                            }
                            let local = stores[s].get(&key).cloned();
                            ts = (local.as_ref().map_or(ts, |e| e.version.ts.max(ts)) + 1) | 1;
                            let version = Version {
                                ts,
                                dot: Dot::new(ci as NodeId + 1, c.counter),
                            };
                            let ctx = local.map(|e| e.ctx).unwrap_or_else(VersionVector::new);
                            let entry = Entry::write(value, version, &ctx);
                            push_write(&mut net, &mut stores, s, &key, entry.clone());
                            next = r.proposer.propose(entry);
                        }
                        Next::Indeterminate => {
                            faults.indeterminate += 1;
                            if abandon(c, &mut history) {
                                indeterminate += 1;
                            }
                            break;
                        }
                        Next::Send(reqs) => {
                            send(&mut net, c.server, ci, reqs);
                            break;
                        }
                        Next::Done {
                            previous,
                            current,
                            applied,
                        } => {
                            let Some(mut run) = c.running.take() else {
                                break;
                            };
                            let value_of =
                                |e: &Option<Entry>| e.as_ref().and_then(|e| e.value.clone());
                            run.kind = match run.kind {
                                Kind::Get { .. } => Kind::Get {
                                    value: value_of(&current),
                                },
                                Kind::Put { value, .. } => Kind::Put {
                                    value,
                                    previous: Some(value_of(&previous)),
                                },
                                Kind::Cas { expect, value, .. } => Kind::Cas {
                                    expect,
                                    value,
                                    ok: applied,
                                },
                            };
                            c.last_read.insert(run.key, current);
                            c.done += 1;
                            completed += 1;
                            let key = key_of(run.key);
                            record(&mut history, &key, run, Some(now));
                            break;
                        }
                        Next::Retry { above } => {
                            faults.retry += 1;
                            let s = c.server;
                            if r.attempts >= 20 {
                                if abandon(c, &mut history) {
                                    faults.abandoned += 1;
                                    indeterminate += 1;
                                }
                                break;
                            }
                            let ballot =
                                Ballot::next(s as NodeId + 1, rids[s], own_counter[s], above);
                            own_counter[s] = ballot.counter;
                            r.proposer = r.proposer.retry(ballot);
                            r.proposer.set_local(stores[s].get(&key_of(r.key)).cloned());
                            r.attempts += 1;
                            next = r.proposer.start();
                        }
                        Next::Wait => break,
                    }
                }
            }
        }
    }
    // Operations still running at the end never got an answer.
    for c in clients.iter_mut() {
        if let Some(run) = c.running.take() {
            indeterminate += 1;
            let key = key_of(run.key);
            record(&mut history, &key, run, None);
        }
    }
    for (key, verdict) in linearizable::check_keys(&history, linearizable::DEFAULT_BUDGET) {
        match verdict {
            Verdict::NotLinearizable { stuck_at, .. } => violations.push(format!(
                "history of {} is not linearizable (stuck at operation {stuck_at:?})",
                String::from_utf8_lossy(&key)
            )),
            Verdict::Unknown { explored } => violations.push(format!(
                "history of {} not decided after {explored} states",
                String::from_utf8_lossy(&key)
            )),
            Verdict::Linearizable { .. } => {}
        }
    }
    Report {
        config,
        completed,
        indeterminate,
        faults,
        violations,
        history,
    }
}

/// Give up `c`'s running operation: recorded without an answer. False when none ran.
fn abandon(c: &mut Client, history: &mut Vec<(Vec<u8>, HOp)>) -> bool {
    let Some(run) = c.running.take() else {
        return false;
    };
    c.done += 1;
    let key = key_of(run.key);
    record(history, &key, run, None);
    true
}

/// The name of key number `k`.
fn key_of(k: usize) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

fn merge_into(store: &mut BTreeMap<Vec<u8>, Entry>, key: &[u8], e: &Entry) {
    match store.get_mut(key) {
        Some(cur) => {
            cur.merge(e);
        }
        None => {
            store.insert(key.to_vec(), e.clone());
        }
    }
}

/// A store write at server `s`, pushed to every other server.
fn push_write(
    net: &mut Vec<Packet>,
    stores: &mut [BTreeMap<Vec<u8>, Entry>],
    s: usize,
    key: &[u8],
    e: Entry,
) {
    merge_into(&mut stores[s], key, &e);
    for to in 0..stores.len() {
        if to != s {
            net.push(Packet {
                from: s,
                to,
                client: usize::MAX,
                msg: Msg::Push(key.to_vec(), e.clone()),
            });
        }
    }
}

fn send(net: &mut Vec<Packet>, server: usize, client: usize, reqs: Vec<(NodeId, PaxosReq)>) {
    for (to, req) in reqs {
        net.push(Packet {
            from: server,
            to: to as usize - 1,
            client,
            msg: Msg::Req(server as NodeId + 1, req),
        });
    }
}

fn record(history: &mut Vec<(Vec<u8>, HOp)>, key: &[u8], run: Running, ret: Option<u64>) {
    history.push((
        key.to_vec(),
        HOp {
            client: run.client as u64,
            invoke: run.invoke,
            ret,
            kind: run.kind,
        },
    ));
}
