//! A linearizability checker for the history of one key used as a register.
//!
//! ## What is checked
//!
//! A *history* is what clients saw: for every operation, when it was invoked, when (and
//! whether) its answer arrived, and what the answer said. The history is *linearizable*
//! when every operation can be given a single instant, somewhere between its invocation
//! and its answer, such that executing the operations one at a time in the order of those
//! instants, against a plain sequential register, produces exactly the answers the
//! clients received. Put differently: there is a total order of the operations that
//! (a) respects real time — an operation that answered before another was invoked comes
//! first — and (b) is a legal sequential execution of the model.
//!
//! ## The model
//!
//! The register holds an `Option<Vec<u8>>` (`None`: the key is absent), starting from the
//! `initial` value given to [`check`].
//!
//! * [`Kind::Get`] is legal iff the value it returned equals the register.
//! * [`Kind::Put`] sets the register (a `None` value is a delete); when the answer reported
//!   the previous value (`previous: Some(p)`) it is legal only if `p` equals the register
//!   just before it.
//! * [`Kind::Cas`] with `ok: true` is legal only if the register equals `expect`, and then
//!   sets it; with `ok: false` it is legal only if the register differs from `expect`, and
//!   changes nothing.
//!
//! ## Real time
//!
//! Operation `a` *precedes* `b` when `a.ret <= b.invoke`: an operation invoked at the same
//! instant another answered is taken to come after it. The one exception is two
//! zero-length operations (`invoke == ret`) at the same instant: they cannot both precede
//! each other, so they are taken as concurrent. An answer stamped before its own
//! invocation is a data error; it is read as arriving at the invocation instant.
//!
//! ## Operations without an answer
//!
//! An operation whose answer never came (`ret: None`: a timeout, a 5xx, a lost
//! connection) is *indeterminate*: it may have taken effect at any instant after its
//! invocation — possibly long after the client gave up — or never, and whatever its result
//! fields say is ignored. So:
//!
//! * an indeterminate `Get` changes nothing and constrains nothing: it is dropped;
//! * an indeterminate `Put` may be placed anywhere after its invocation (and then sets the
//!   register), or left out;
//! * an indeterminate `Cas` may be placed anywhere after its invocation, where it writes
//!   only if the register equals `expect` at that point, or left out.
//!
//! Indeterminate operations never hold back another operation (their answer is "at
//! infinity"), and the search ends as soon as every operation that did answer is placed.
//! Placing an indeterminate operation where it would not change the register is never
//! tried: leaving it out (for now) is always at least as good.
//!
//! ## The search
//!
//! This is the algorithm of Wing & Gong, with the memoization of Lowe ("WGL"). The
//! invocations and answers are laid out on one time line. At any point of the search some
//! set of operations is already linearized, and the register has some value; the
//! operations that may come next are the ones not yet linearized whose invocation comes
//! before the earliest answer among the not-yet-linearized operations that answered (an
//! operation can only go after everything that answered before it was invoked). The search
//! tries each such candidate whose result is legal in the current register, depth first;
//! when no candidate works it backtracks and tries the next candidate one level up.
//!
//! Lowe's observation is that what remains to be done depends only on the *configuration*
//! — the set of linearized operations (a bitset) and the register's value — and not on
//! the order in which that set was linearized. So every configuration reached is
//! remembered in a hash set, and a configuration reached again is not explored again: that
//! turns the search from factorial to, in practice, roughly linear in the length of the
//! history (for a bounded number of concurrent clients). The search keeps an explicit stack
//! rather than recursing, so long histories cannot overflow the call stack.
//!
//! When no order exists the verdict reports the longest legal prefix the search found and
//! the operation it could not place after that prefix, as a starting point for reading the
//! history.
//!
//! ## Many keys
//!
//! Linearizability is *local* (P-compositional, Herlihy & Wing): a history over many
//! independent registers is linearizable iff each register's sub-history is. So
//! [`check_keys`] splits a multi-key history by key and checks each key alone, which is
//! exponentially cheaper than checking the whole.
//!
//! ## The budget
//!
//! Deciding linearizability is NP-complete in general, and a history with many concurrent
//! writes of the same value can defeat the memoization. The `budget` bounds the number of
//! distinct configurations explored; past it the verdict is [`Verdict::Unknown`] rather
//! than a search that does not end. [`DEFAULT_BUDGET`] is enough for histories of
//! thousands of operations from a handful of clients.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use serde::{Deserialize, Serialize};

/// The default bound on explored search configurations.
pub const DEFAULT_BUDGET: u64 = 5_000_000;

/// One operation of a history on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Which client issued it (informational).
    pub client: u64,
    /// When it was invoked (any monotonic unit, e.g. µs).
    pub invoke: u64,
    /// When its answer arrived; `None`: no answer (timeout, 5xx, connection lost) — the
    /// operation is indeterminate: it may have taken effect at any point after `invoke`, or
    /// never, and its result fields are ignored.
    pub ret: Option<u64>,
    /// What it did and what it returned.
    pub kind: Kind,
}

/// What an operation did, and what it returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A read that returned `value` (None: not found).
    Get {
        /// The value read; `None`: not found.
        value: Option<Vec<u8>>,
    },
    /// A write of `value` (None = delete) that returned the previous value `previous`
    /// (outer None: the answer did not say, so not checked; `Some(None)`: there was no
    /// previous value).
    Put {
        /// The value written; `None`: a delete.
        value: Option<Vec<u8>>,
        /// The previous value the answer reported, if it reported one.
        previous: Option<Option<Vec<u8>>>,
    },
    /// A conditional write: succeeds only if the register's value equals `expect`
    /// (`expect: None` means "only if absent", i.e. `If-None-Match: *`). `ok` is what it
    /// answered (true: written; false: precondition failed, nothing written).
    Cas {
        /// The value the register must hold for the write to happen; `None`: absent.
        expect: Option<Vec<u8>>,
        /// The value written when the precondition holds; `None`: a delete.
        value: Option<Vec<u8>>,
        /// Whether the answer said it was written.
        ok: bool,
    },
}

/// The verdict for one key's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// A linearization exists; `order` lists the op indices (into the input slice) in one
    /// valid order (indeterminate ops that were left out are not listed).
    Linearizable {
        /// One valid order.
        order: Vec<usize>,
    },
    /// No linearization exists. `stuck_at`: index of an op that could not be placed after
    /// the longest prefix found (for the report), `prefix`: the longest valid prefix found.
    NotLinearizable {
        /// The longest legal prefix the search reached.
        prefix: Vec<usize>,
        /// An operation that had to come next after `prefix` and could not.
        stuck_at: Option<usize>,
    },
    /// The search gave up after exploring `explored` configurations (more than the budget).
    Unknown {
        /// How many configurations were explored.
        explored: u64,
    },
}

impl Verdict {
    /// Whether a linearization was found.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }

    /// Whether the history was proven not linearizable.
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }

    /// Renumbers the op indices through `map` (index in a sub-history → index in the
    /// whole).
    fn renumbered(self, map: &[usize]) -> Verdict {
        let through = |i: usize| map.get(i).copied().unwrap_or(i);
        match self {
            Verdict::Linearizable { order } => Verdict::Linearizable {
                order: order.into_iter().map(through).collect(),
            },
            Verdict::NotLinearizable { prefix, stuck_at } => Verdict::NotLinearizable {
                prefix: prefix.into_iter().map(through).collect(),
                stuck_at: stuck_at.map(through),
            },
            unknown @ Verdict::Unknown { .. } => unknown,
        }
    }
}

/// Checks one key's history; `initial` is the value before the history (usually `None`).
/// `budget` bounds the number of explored search configurations.
pub fn check(ops: &[Op], initial: Option<Vec<u8>>, budget: u64) -> Verdict {
    let refs: Vec<&Op> = ops.iter().collect();
    search(&refs, &initial, budget)
}

/// Checks a multi-key history key by key (P-compositionality: a history is linearizable iff
/// each key's is), every key starting absent and searched with its own `budget`. Returns
/// the verdict per key in key order; the op indices in each verdict are indices into `ops`.
pub fn check_keys(ops: &[(Vec<u8>, Op)], budget: u64) -> Vec<(Vec<u8>, Verdict)> {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, (key, _)) in ops.iter().enumerate() {
        by_key.entry(key.as_slice()).or_default().push(i);
    }
    by_key
        .into_iter()
        .map(|(key, indices)| {
            let refs: Vec<&Op> = indices
                .iter()
                .filter_map(|&i| ops.get(i).map(|(_, op)| op))
                .collect();
            let verdict = search(&refs, &None, budget).renumbered(&indices);
            (key.to_vec(), verdict)
        })
        .collect()
}

/// The register's value as a small number: `ABSENT`, or an interned byte string.
type Value = u64;

const ABSENT: Value = 0;

/// Gives each distinct byte string a number (from 1; 0 is "absent").
#[derive(Default)]
struct Interner {
    ids: HashMap<Vec<u8>, Value>,
}

impl Interner {
    fn id(&mut self, value: &Option<Vec<u8>>) -> Value {
        let Some(bytes) = value else {
            return ABSENT;
        };
        if let Some(&id) = self.ids.get(bytes) {
            return id;
        }
        let id = self.ids.len() as Value + 1;
        self.ids.insert(bytes.clone(), id);
        id
    }
}

/// What an operation does to the register, with its result folded in.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A read that saw this value.
    Read(Value),
    /// A write; `previous`: the previous value its answer reported, to be checked.
    Write {
        value: Value,
        previous: Option<Value>,
    },
    /// A conditional write that answered "written".
    CasHit { expect: Value, value: Value },
    /// A conditional write that answered "precondition failed".
    CasMiss { expect: Value },
    /// A conditional write without an answer: writes iff the precondition holds.
    CasMaybe { expect: Value, value: Value },
}

impl Step {
    /// The register after this step from `state`, or `None` if the step's result is not
    /// what the model gives in `state`.
    fn apply(self, state: Value) -> Option<Value> {
        match self {
            Step::Read(seen) => (seen == state).then_some(state),
            Step::Write { value, previous } => match previous {
                Some(p) if p != state => None,
                _ => Some(value),
            },
            Step::CasHit { expect, value } => (state == expect).then_some(value),
            Step::CasMiss { expect } => (state != expect).then_some(state),
            Step::CasMaybe { expect, value } => Some(if state == expect { value } else { state }),
        }
    }
}

/// An operation kept for the search.
struct Pending {
    /// Its index in the input.
    orig: usize,
    /// Whether it answered (must be linearized) or not (may be left out).
    determinate: bool,
    step: Step,
}

/// A sentinel: "no node".
const NIL: usize = usize::MAX;
/// The head of the event list.
const HEAD: usize = 0;

/// The time line: a doubly linked list of invocation ("call") and answer ("return")
/// events, from which linearized operations are unlinked and relinked on backtracking
/// (Knuth's dancing links).
struct Timeline {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node, the pending operation it belongs to (unused for `HEAD`).
    op: Vec<usize>,
    /// For each node, whether it is a call (else a return).
    is_call: Vec<bool>,
    /// For each pending operation, its return node (`NIL`: indeterminate).
    ret_node: Vec<usize>,
}

impl Timeline {
    /// Lays out the events of `pending` (with their invocation and effective answer times)
    /// in time order. At one instant: answers of operations that lasted, then calls of
    /// zero-length operations, then their answers, then calls of operations that last.
    fn new(times: &[(u64, Option<u64>)]) -> Timeline {
        // (time, class, op, is_call)
        let mut events: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(times.len() * 2);
        for (j, &(invoke, ret)) in times.iter().enumerate() {
            match ret {
                Some(ret) if ret == invoke => {
                    events.push((invoke, 1, j, true));
                    events.push((ret, 2, j, false));
                }
                Some(ret) => {
                    events.push((invoke, 3, j, true));
                    events.push((ret, 0, j, false));
                }
                None => events.push((invoke, 3, j, true)),
            }
        }
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut line = Timeline {
            next: (1..=nodes)
                .map(|k| if k == nodes { NIL } else { k })
                .collect(),
            prev: (0..nodes).map(|k| k.wrapping_sub(1)).collect(),
            op: vec![NIL; nodes],
            is_call: vec![false; nodes],
            ret_node: vec![NIL; times.len()],
        };
        line.prev[HEAD] = NIL;
        for (k, &(_, _, j, is_call)) in events.iter().enumerate() {
            let node = k + 1;
            line.op[node] = j;
            line.is_call[node] = is_call;
            if !is_call {
                line.ret_node[j] = node;
            }
        }
        line
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Takes a linearized operation (by its call node) off the time line.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.ret_node[self.op[call]];
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Undoes the last [`Timeline::lift`].
    fn unlift(&mut self, call: usize) {
        let ret = self.ret_node[self.op[call]];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// A memoized configuration: the linearized set as a bitset, with the register's value as
/// one more word, and a fingerprint of both kept up to date incrementally (so hashing a
/// configuration costs nothing, and full comparison only happens on a fingerprint match).
#[derive(PartialEq, Eq)]
struct Config {
    fingerprint: u64,
    words: Box<[u64]>,
}

impl Hash for Config {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint);
    }
}

/// A hasher for [`Config`]: its fingerprint is already well mixed, so it is used as is.
#[derive(Default)]
struct Fingerprint(u64);

impl Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A 64-bit mixing function (the finalizer of SplitMix64).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The fingerprint contribution of operation `j` being linearized.
fn op_key(j: usize) -> u64 {
    mix(j as u64)
}

/// The fingerprint contribution of the register holding `value`.
fn value_key(value: Value) -> u64 {
    mix(value ^ 0x5bd1_e995_c2b2_ae35)
}

/// The WGL search over `ops` (see the module documentation).
fn search(ops: &[&Op], initial: &Option<Vec<u8>>, budget: u64) -> Verdict {
    let mut interner = Interner::default();
    let mut state = interner.id(initial);
    let mut pending: Vec<Pending> = Vec::with_capacity(ops.len());
    let mut times: Vec<(u64, Option<u64>)> = Vec::with_capacity(ops.len());
    for (orig, op) in ops.iter().enumerate() {
        // An answer stamped before its invocation is read as arriving at the invocation.
        let ret = op.ret.map(|ret| ret.max(op.invoke));
        let step = match (&op.kind, ret) {
            (Kind::Get { .. }, None) => continue,
            (Kind::Get { value }, Some(_)) => Step::Read(interner.id(value)),
            (Kind::Put { value, previous }, Some(_)) => Step::Write {
                value: interner.id(value),
                previous: previous.as_ref().map(|p| interner.id(p)),
            },
            (Kind::Put { value, .. }, None) => Step::Write {
                value: interner.id(value),
                previous: None,
            },
            (Kind::Cas { expect, value, ok }, Some(_)) => {
                let expect = interner.id(expect);
                if *ok {
                    Step::CasHit {
                        expect,
                        value: interner.id(value),
                    }
                } else {
                    Step::CasMiss { expect }
                }
            }
            (Kind::Cas { expect, value, .. }, None) => {
                let (expect, value) = (interner.id(expect), interner.id(value));
                if expect == value {
                    // Whatever happened, nothing changed.
                    continue;
                }
                Step::CasMaybe { expect, value }
            }
        };
        pending.push(Pending {
            orig,
            determinate: ret.is_some(),
            step,
        });
        times.push((op.invoke, ret));
    }

    let mut remaining = pending.iter().filter(|p| p.determinate).count();
    if remaining == 0 {
        return Verdict::Linearizable { order: Vec::new() };
    }

    let mut line = Timeline::new(&times);
    let words = pending.len().div_ceil(64);
    // The current configuration: linearized bits, then the register's value.
    let mut current = vec![0u64; words + 1];
    current[words] = state;
    let mut set_key = 0u64; // XOR of op_key over the linearized set
    let mut seen: HashSet<Config, BuildHasherDefault<Fingerprint>> = HashSet::default();
    let mut explored = 0u64;

    // Linearized operations, by call node, with the register's value before each.
    let mut stack: Vec<(usize, Value)> = Vec::new();
    // The longest prefix so far; while `best_live`, it is the current stack itself.
    let mut best: Vec<usize> = Vec::new();
    let mut best_len = 0usize;
    let mut best_live = true;
    let mut stuck_at: Option<usize> = None;

    let origin = |line: &Timeline, node: usize| pending[line.op[node]].orig;

    let mut node = line.next[HEAD];
    loop {
        if node != NIL && line.is_call[node] {
            let j = line.op[node];
            let p = &pending[j];
            if let Some(after) = p.step.apply(state) {
                // Placing an indeterminate operation where it changes nothing is never
                // better than leaving it out.
                if p.determinate || after != state {
                    let (word, bit) = (j / 64, 1u64 << (j % 64));
                    current[word] |= bit;
                    current[words] = after;
                    let config = Config {
                        fingerprint: set_key ^ op_key(j) ^ value_key(after),
                        words: current.clone().into_boxed_slice(),
                    };
                    if seen.insert(config) {
                        explored += 1;
                        if explored > budget {
                            return Verdict::Unknown { explored };
                        }
                        set_key ^= op_key(j);
                        stack.push((node, state));
                        line.lift(node);
                        state = after;
                        if p.determinate {
                            remaining -= 1;
                            if remaining == 0 {
                                let order = stack.iter().map(|&(c, _)| origin(&line, c)).collect();
                                return Verdict::Linearizable { order };
                            }
                        }
                        if stack.len() > best_len {
                            best_len = stack.len();
                            best_live = true;
                        }
                        node = line.next[HEAD];
                        continue;
                    }
                    current[word] &= !bit;
                    current[words] = state;
                }
            }
            node = line.next[node];
            continue;
        }

        // A return (or, defensively, the end of the line): the operation answering here
        // must be linearized before anything invoked later, and none of the candidates
        // worked. Backtrack.
        if best_live {
            best = stack.iter().map(|&(c, _)| origin(&line, c)).collect();
            best_live = false;
            stuck_at = (node != NIL).then(|| origin(&line, node));
        }
        let Some((call, before)) = stack.pop() else {
            return Verdict::NotLinearizable {
                prefix: best,
                stuck_at,
            };
        };
        line.unlift(call);
        let j = line.op[call];
        current[j / 64] &= !(1u64 << (j % 64));
        current[words] = before;
        set_key ^= op_key(j);
        state = before;
        if pending[j].determinate {
            remaining += 1;
        }
        node = line.next[call];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    fn done(client: u64, invoke: u64, ret: u64, kind: Kind) -> Op {
        Op {
            client,
            invoke,
            ret: Some(ret),
            kind,
        }
    }

    fn lost(client: u64, invoke: u64, kind: Kind) -> Op {
        Op {
            client,
            invoke,
            ret: None,
            kind,
        }
    }

    fn get(value: Option<Vec<u8>>) -> Kind {
        Kind::Get { value }
    }

    /// A put whose answer reported the previous value.
    fn put(value: Option<Vec<u8>>, previous: Option<Vec<u8>>) -> Kind {
        Kind::Put {
            value,
            previous: Some(previous),
        }
    }

    /// A put whose answer did not say what it replaced.
    fn blind(value: Option<Vec<u8>>) -> Kind {
        Kind::Put {
            value,
            previous: None,
        }
    }

    fn cas(expect: Option<Vec<u8>>, value: Option<Vec<u8>>, ok: bool) -> Kind {
        Kind::Cas { expect, value, ok }
    }

    /// The answer time as the checker reads it.
    fn answer(op: &Op) -> Option<u64> {
        op.ret.map(|r| r.max(op.invoke))
    }

    /// Whether `a` must come before `b` in real time.
    fn precedes(a: &Op, b: &Op) -> bool {
        let Some(a_ret) = answer(a) else {
            return false;
        };
        let zero = |op: &Op| answer(op) == Some(op.invoke);
        a_ret < b.invoke || (a_ret == b.invoke && !(zero(a) && zero(b)))
    }

    /// Checks that `order` is a linearization of `ops`, independently of the search.
    fn assert_witness(ops: &[Op], initial: Option<Vec<u8>>, order: &[usize]) {
        let mut placed = vec![false; ops.len()];
        for &i in order {
            assert!(i < ops.len(), "index {i} out of range");
            assert!(!placed[i], "op {i} placed twice");
            placed[i] = true;
        }
        for (i, op) in ops.iter().enumerate() {
            if op.ret.is_some() {
                assert!(placed[i], "answered op {i} left out of {order:?}");
            }
        }
        let mut state = initial;
        for &i in order {
            let op = &ops[i];
            let known = op.ret.is_some();
            match &op.kind {
                Kind::Get { value } => {
                    assert!(
                        !known || *value == state,
                        "op {i} read {value:?}, register {state:?}"
                    )
                }
                Kind::Put { value, previous } => {
                    if let (true, Some(p)) = (known, previous) {
                        assert_eq!(*p, state, "op {i} reported previous {p:?}");
                    }
                    state = value.clone();
                }
                Kind::Cas { expect, value, ok } => {
                    let hit = state == *expect;
                    assert!(!known || hit == *ok, "op {i} answered ok={ok} in {state:?}");
                    if hit {
                        state = value.clone();
                    }
                }
            }
        }
        for (x, &a) in order.iter().enumerate() {
            for &b in &order[x + 1..] {
                assert!(
                    !precedes(&ops[b], &ops[a]),
                    "op {b} answered before op {a} was invoked but is ordered after it"
                );
            }
        }
    }

    fn assert_linearizable(ops: &[Op], initial: Option<Vec<u8>>) -> Vec<usize> {
        match check(ops, initial.clone(), DEFAULT_BUDGET) {
            Verdict::Linearizable { order } => {
                assert_witness(ops, initial, &order);
                order
            }
            other => panic!("expected linearizable, got {other:?} for {ops:#?}"),
        }
    }

    fn assert_violation(ops: &[Op]) -> (Vec<usize>, Option<usize>) {
        match check(ops, None, DEFAULT_BUDGET) {
            Verdict::NotLinearizable { prefix, stuck_at } => (prefix, stuck_at),
            other => panic!("expected a violation, got {other:?} for {ops:#?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(
            check(&[], None, DEFAULT_BUDGET),
            Verdict::Linearizable { order: vec![] }
        );
        assert_eq!(check(&[], None, 0), Verdict::Linearizable { order: vec![] });
    }

    #[test]
    fn sequential_put_get_delete_chain_is_linearizable() {
        let ops = vec![
            done(1, 0, 1, get(None)),
            done(1, 2, 3, put(v("a"), None)),
            done(1, 4, 5, get(v("a"))),
            done(2, 6, 7, put(v("b"), v("a"))),
            done(1, 8, 9, get(v("b"))),
            done(2, 10, 11, put(None, v("b"))),
            done(1, 12, 13, get(None)),
            done(2, 14, 15, put(None, None)),
            done(1, 16, 17, cas(None, v("c"), true)),
            done(2, 18, 19, cas(v("a"), v("d"), false)),
            done(1, 20, 21, cas(v("c"), v("e"), true)),
            done(1, 22, 23, blind(v("f"))),
            done(2, 24, 25, get(v("f"))),
        ];
        let order = assert_linearizable(&ops, None);
        assert_eq!(order, (0..ops.len()).collect::<Vec<_>>());
    }

    #[test]
    fn initial_value_is_the_starting_register() {
        let ops = vec![done(1, 0, 1, get(v("x")))];
        assert_linearizable(&ops, v("x"));
        assert!(check(&ops, None, DEFAULT_BUDGET).is_violation());
    }

    #[test]
    fn overlapping_ops_may_be_ordered_either_way() {
        // Two overlapping writes; a later read may see either one.
        for last in ["a", "b"] {
            let ops = vec![
                done(1, 0, 10, blind(v("a"))),
                done(2, 5, 15, blind(v("b"))),
                done(3, 20, 30, get(v(last))),
                done(3, 31, 32, get(v(last))),
            ];
            assert_linearizable(&ops, None);
        }
        // A read overlapping a write sees the old or the new value.
        for seen in [None, v("a")] {
            let ops = vec![done(1, 0, 10, put(v("a"), None)), done(2, 3, 7, get(seen))];
            assert_linearizable(&ops, None);
        }
        // Ordered against the input order: the witness follows real time, not the slice.
        let ops = vec![
            done(1, 10, 11, get(v("a"))),
            done(2, 0, 5, put(v("a"), None)),
        ];
        assert_eq!(assert_linearizable(&ops, None), vec![1, 0]);
    }

    #[test]
    fn overlapping_puts_reporting_each_other_are_linearizable() {
        // b's answer says it replaced a, so a went first even though b was invoked first.
        let ops = vec![
            done(1, 0, 10, put(v("b"), v("a"))),
            done(2, 2, 8, put(v("a"), None)),
            done(3, 12, 13, get(v("b"))),
        ];
        assert_eq!(assert_linearizable(&ops, None), vec![1, 0, 2]);
    }

    #[test]
    fn stale_read_is_a_violation() {
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            done(1, 2, 3, put(v("b"), v("a"))),
            done(2, 4, 5, get(v("a"))),
        ];
        let (prefix, stuck_at) = assert_violation(&ops);
        assert_eq!(prefix, vec![0, 1]);
        assert_eq!(stuck_at, Some(2));
    }

    #[test]
    fn lost_update_is_a_violation() {
        // Sequentially.
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            done(1, 2, 3, put(v("b"), v("a"))),
            done(2, 4, 5, put(v("c"), v("a"))),
        ];
        assert_violation(&ops);
        // Concurrently: whichever goes second must have seen the other's value.
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            done(1, 2, 10, put(v("b"), v("a"))),
            done(2, 3, 9, put(v("c"), v("a"))),
        ];
        assert_violation(&ops);
    }

    #[test]
    fn reading_a_write_invoked_after_the_read_returned_is_a_violation() {
        let ops = vec![
            done(1, 0, 10, get(v("x"))),
            done(2, 20, 30, put(v("x"), None)),
        ];
        let (prefix, stuck_at) = assert_violation(&ops);
        assert!(prefix.is_empty());
        assert_eq!(stuck_at, Some(0));
    }

    #[test]
    fn reading_a_value_nobody_wrote_is_a_violation() {
        let ops = vec![
            done(1, 0, 10, blind(v("a"))),
            done(2, 0, 10, blind(v("b"))),
            done(3, 5, 15, get(v("zzz"))),
        ];
        assert_violation(&ops);
    }

    #[test]
    fn two_successful_creates_are_a_violation() {
        // If-None-Match: * twice, sequentially and concurrently.
        for (second_invoke, second_ret) in [(2, 3), (0, 1)] {
            let ops = vec![
                done(1, 0, 1, cas(None, v("a"), true)),
                done(2, second_invoke, second_ret, cas(None, v("b"), true)),
            ];
            assert_violation(&ops);
        }
        // With a delete in between it is fine.
        let ops = vec![
            done(1, 0, 1, cas(None, v("a"), true)),
            done(1, 2, 3, put(None, v("a"))),
            done(2, 4, 5, cas(None, v("b"), true)),
            done(3, 4, 5, cas(None, v("c"), false)),
            done(3, 6, 7, get(v("b"))),
        ];
        assert_linearizable(&ops, None);
    }

    #[test]
    fn failed_cas_when_the_register_matched_is_a_violation() {
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            done(2, 2, 3, cas(v("a"), v("b"), false)),
        ];
        assert_violation(&ops);
        // And a failed create on an existing key is fine.
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            done(2, 2, 3, cas(None, v("b"), false)),
            done(2, 4, 5, get(v("a"))),
        ];
        assert_linearizable(&ops, None);
    }

    #[test]
    fn unanswered_put_that_is_read_later_is_linearizable() {
        let ops = vec![lost(1, 0, blind(v("a"))), done(2, 100, 101, get(v("a")))];
        let order = assert_linearizable(&ops, None);
        assert_eq!(order, vec![0, 1]);
        // Its result fields are ignored.
        let ops = vec![
            lost(1, 0, put(v("a"), v("garbage"))),
            done(2, 100, 101, get(v("a"))),
        ];
        assert_linearizable(&ops, None);
    }

    #[test]
    fn unanswered_put_that_is_never_read_is_linearizable() {
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            lost(1, 2, blind(v("b"))),
            done(2, 10, 11, get(v("a"))),
            done(2, 12, 13, put(v("c"), v("a"))),
        ];
        let order = assert_linearizable(&ops, None);
        assert_eq!(order, vec![0, 2, 3]);
    }

    #[test]
    fn unanswered_put_cannot_be_unseen() {
        // Reads after it may see the old value, then the new one ...
        let mut ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            lost(1, 2, blind(v("b"))),
            done(2, 3, 4, get(v("a"))),
            done(2, 5, 6, get(v("b"))),
            done(3, 7, 8, get(v("b"))),
        ];
        assert_linearizable(&ops, None);
        // ... but once one saw the new value, a later one must not see the old.
        ops.push(done(2, 9, 10, get(v("a"))));
        let (_, stuck_at) = assert_violation(&ops);
        assert_eq!(stuck_at, Some(5));
    }

    #[test]
    fn unanswered_put_takes_effect_only_after_its_invocation() {
        let ops = vec![done(1, 0, 1, get(v("a"))), lost(2, 5, blind(v("a")))];
        assert_violation(&ops);
    }

    #[test]
    fn unanswered_get_is_ignored() {
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            lost(2, 2, get(v("never"))),
            done(1, 3, 4, get(v("a"))),
        ];
        assert_eq!(assert_linearizable(&ops, None), vec![0, 2]);
    }

    #[test]
    fn unanswered_cas_writes_only_if_its_precondition_holds() {
        // Precondition holds at some point: its value may be read.
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            lost(2, 2, cas(v("a"), v("b"), false)),
            done(3, 10, 11, get(v("b"))),
        ];
        assert_linearizable(&ops, None);
        // Precondition never holds after its invocation: its value cannot appear.
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            lost(2, 2, cas(v("z"), v("b"), true)),
            done(3, 10, 11, get(v("b"))),
        ];
        assert_violation(&ops);
        // A no-op (expect == value) changes nothing, whatever it answered.
        let ops = vec![
            lost(2, 0, cas(v("a"), v("a"), true)),
            done(3, 10, 11, get(None)),
        ];
        assert_eq!(assert_linearizable(&ops, None), vec![1]);
    }

    #[test]
    fn answer_stamped_before_invocation_does_not_panic() {
        let ops = vec![
            done(1, 10, 3, put(v("a"), None)),
            done(2, 10, 0, get(v("a"))),
            done(3, 20, 20, get(v("a"))),
        ];
        assert_linearizable(&ops, None);
        // Zero-length operations at the same instant are concurrent.
        let ops = vec![done(1, 5, 5, get(v("a"))), done(2, 5, 5, put(v("a"), None))];
        assert_eq!(assert_linearizable(&ops, None), vec![1, 0]);
    }

    #[test]
    fn touching_intervals_are_ordered() {
        // The read was invoked at the instant the write answered: it comes after it.
        let ops = vec![done(1, 0, 5, put(v("a"), None)), done(2, 5, 9, get(None))];
        assert_violation(&ops);
    }

    #[test]
    fn budget_exhaustion_is_unknown() {
        let ops = vec![
            done(1, 0, 1, put(v("a"), None)),
            done(1, 2, 3, get(v("a"))),
            done(1, 4, 5, get(v("a"))),
        ];
        assert_eq!(check(&ops, None, 1), Verdict::Unknown { explored: 2 });
        assert!(!check(&ops, None, 1).is_linearizable());
        assert!(!check(&ops, None, 1).is_violation());
        assert!(check(&ops, None, 3).is_linearizable());
    }

    #[test]
    fn check_keys_checks_each_key_alone() {
        let history = vec![
            (b"k1".to_vec(), done(1, 0, 1, put(v("a"), None))),
            (b"k2".to_vec(), done(1, 0, 1, put(v("x"), None))),
            (b"k1".to_vec(), done(2, 2, 3, get(v("a")))),
            // On k2 the read sees k1's value: only k2 is wrong.
            (b"k2".to_vec(), done(2, 2, 3, get(v("a")))),
            (b"k0".to_vec(), lost(3, 0, blind(v("q")))),
        ];
        let verdicts = check_keys(&history, DEFAULT_BUDGET);
        let keys: Vec<&[u8]> = verdicts.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"k0"[..], b"k1", b"k2"]);
        assert_eq!(verdicts[0].1, Verdict::Linearizable { order: vec![] });
        assert_eq!(verdicts[1].1, Verdict::Linearizable { order: vec![0, 2] });
        assert_eq!(
            verdicts[2].1,
            Verdict::NotLinearizable {
                prefix: vec![1],
                stuck_at: Some(3)
            }
        );
        assert!(check_keys(&[], DEFAULT_BUDGET).is_empty());
    }

    #[test]
    fn verdict_serializes() {
        let verdict = Verdict::NotLinearizable {
            prefix: vec![1, 2],
            stuck_at: Some(3),
        };
        assert!(!verdict.is_linearizable() && verdict.is_violation());
        bincode::serde::encode_to_vec(&verdict, bincode::config::standard())
            .expect("a verdict encodes");
        let op = done(1, 2, 3, put(v("a"), None));
        let bytes =
            bincode::serde::encode_to_vec(&op, bincode::config::standard()).expect("an op encodes");
        let (back, _): (Op, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .expect("an op decodes");
        assert_eq!(back, op);
    }

    /// One generated operation (see [`simulate`]).
    #[derive(Clone, Debug)]
    struct Spec {
        client: u8,
        gap: u8,
        len: u8,
        at: u32,
        what: u8,
        a: u8,
        b: u8,
        report: bool,
        fate: u8,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            any::<u8>(),
            0u8..20,
            0u8..12,
            any::<u32>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<bool>(),
            any::<u8>(),
        )
            .prop_map(|(client, gap, len, at, what, a, b, report, fate)| Spec {
                client,
                gap,
                len,
                at,
                what,
                a,
                b,
                report,
                fate,
            })
    }

    fn random_spec(rng: &mut StdRng) -> Spec {
        Spec {
            client: rng.gen(),
            gap: rng.gen_range(0..20),
            len: rng.gen_range(0..12),
            at: rng.gen(),
            what: rng.gen(),
            a: rng.gen(),
            b: rng.gen(),
            report: rng.gen(),
            fate: rng.gen(),
        }
    }

    /// A few values, and absence.
    fn value_of(x: u8) -> Option<Vec<u8>> {
        match x % 4 {
            0 => None,
            k => Some(vec![b'a' + k - 1]),
        }
    }

    fn kind_of(s: &Spec) -> Kind {
        match s.what % 3 {
            0 => get(None),
            1 => Kind::Put {
                value: value_of(s.a),
                previous: None,
            },
            _ => cas(value_of(s.b), value_of(s.a), false),
        }
    }

    /// Runs `kind` against the register and fills in its results.
    fn execute(kind: &mut Kind, state: &mut Option<Vec<u8>>, report: bool) {
        match kind {
            Kind::Get { value } => *value = state.clone(),
            Kind::Put { value, previous } => {
                if report {
                    *previous = Some(state.clone());
                }
                *state = value.clone();
            }
            Kind::Cas { expect, value, ok } => {
                *ok = *state == *expect;
                if *ok {
                    *state = value.clone();
                }
            }
        }
    }

    /// A sequential execution: op `i` runs alone in `[2i, 2i+1]`.
    fn sequential(specs: &[Spec]) -> Vec<Op> {
        let mut state = None;
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut kind = kind_of(s);
                execute(&mut kind, &mut state, s.report);
                done(0, 2 * i as u64, 2 * i as u64 + 1, kind)
            })
            .collect()
    }

    /// A concurrent execution by `clients` clients, each running its operations one after
    /// the other; every operation takes effect atomically at a random instant inside its
    /// interval, and its results are what the register gave at that instant. About one
    /// operation in ten gets no answer: it takes effect at a random instant after its
    /// invocation (possibly well after the client gave up) or never, and its result fields
    /// are filled with junk.
    fn simulate(specs: &[Spec], clients: usize) -> Vec<Op> {
        const SCALE: u64 = 1000;
        let clients = clients.max(1);
        let mut free_at = vec![0u64; clients];
        let mut ops = Vec::with_capacity(specs.len());
        let mut effects: Vec<(u64, usize)> = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let c = usize::from(s.client) % clients;
            let invoke = free_at[c] + u64::from(s.gap);
            let len = 2 + u64::from(s.len);
            let end = invoke + len;
            free_at[c] = end;
            let answered = s.fate >= 24;
            let at = u64::from(s.at);
            let effect = if answered {
                Some(invoke * SCALE + 1 + at % (len * SCALE - 1))
            } else if s.fate < 8 {
                None
            } else {
                Some(invoke * SCALE + 1 + at % (50 * SCALE))
            };
            if let Some(instant) = effect {
                effects.push((instant, i));
            }
            ops.push(Op {
                client: c as u64,
                invoke,
                ret: answered.then_some(end),
                kind: kind_of(s),
            });
        }
        effects.sort_unstable();
        let mut state = None;
        for (_, i) in effects {
            execute(&mut ops[i].kind, &mut state, specs[i].report);
        }
        for op in ops.iter_mut().filter(|op| op.ret.is_none()) {
            match &mut op.kind {
                Kind::Get { value } => *value = v("junk"),
                Kind::Put { previous, .. } => *previous = Some(v("junk")),
                Kind::Cas { ok, .. } => *ok = !*ok,
            }
        }
        ops
    }

    /// Makes the `pick`-th answered read return a value nobody wrote, if there is one.
    fn corrupt_a_read(ops: &mut [Op], pick: usize) -> bool {
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].ret.is_some() && matches!(ops[i].kind, Kind::Get { .. }))
            .collect();
        if reads.is_empty() {
            return false;
        }
        ops[reads[pick % reads.len()]].kind = get(v("never-written"));
        true
    }

    /// Histories of up to `len` operations with arbitrary times (answers may be missing,
    /// or stamped before their invocation) and arbitrary results.
    fn arbitrary(len: usize, times: u64) -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            (0u64..4, 0..times, prop::option::of(0..times), spec()),
            0..len,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .map(|(client, invoke, ret, s)| {
                    let mut kind = kind_of(&s);
                    match &mut kind {
                        Kind::Get { value } => *value = value_of(s.b),
                        Kind::Put { previous, .. } => *previous = s.report.then(|| value_of(s.b)),
                        Kind::Cas { ok, .. } => *ok = s.report,
                    }
                    Op {
                        client,
                        invoke,
                        ret,
                        kind,
                    }
                })
                .collect()
        })
    }

    /// Linearizability by trying every order (no memoization, no time line): the operations
    /// not yet `placed` that no unplaced answered operation precedes may go next; the
    /// unanswered ones may also never go.
    fn brute_force(ops: &[Op], state: &Option<Vec<u8>>, placed: &mut Vec<bool>) -> bool {
        let open = |i: usize, placed: &[bool]| !placed[i];
        if (0..ops.len()).all(|i| ops[i].ret.is_none() || !open(i, placed)) {
            return true;
        }
        for x in 0..ops.len() {
            if !open(x, placed)
                || (0..ops.len()).any(|y| y != x && open(y, placed) && precedes(&ops[y], &ops[x]))
            {
                continue;
            }
            let known = ops[x].ret.is_some();
            let after = match &ops[x].kind {
                Kind::Get { value } => (!known || value == state).then(|| state.clone()),
                Kind::Put { value, previous } => match previous {
                    Some(p) if known && p != state => None,
                    _ => Some(value.clone()),
                },
                Kind::Cas { expect, value, ok } => {
                    let hit = state == expect;
                    if known && hit != *ok {
                        None
                    } else if hit {
                        Some(value.clone())
                    } else {
                        Some(state.clone())
                    }
                }
            };
            if let Some(after) = after {
                placed[x] = true;
                let found = brute_force(ops, &after, placed);
                placed[x] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }

    proptest! {
        #[test]
        fn sequential_executions_are_linearizable(
            specs in prop::collection::vec(spec(), 0..60),
            pick in any::<usize>(),
        ) {
            let mut ops = sequential(&specs);
            let order = assert_linearizable(&ops, None);
            prop_assert_eq!(order, (0..ops.len()).collect::<Vec<_>>());
            if corrupt_a_read(&mut ops, pick) {
                prop_assert!(check(&ops, None, DEFAULT_BUDGET).is_violation());
            }
        }

        #[test]
        fn concurrent_executions_are_linearizable(
            specs in prop::collection::vec(spec(), 0..80),
            clients in 3usize..=6,
            pick in any::<usize>(),
        ) {
            let mut ops = simulate(&specs, clients);
            assert_linearizable(&ops, None);
            if corrupt_a_read(&mut ops, pick) {
                prop_assert!(check(&ops, None, DEFAULT_BUDGET).is_violation());
            }
        }

        #[test]
        fn arbitrary_histories_do_not_panic(history in arbitrary(30, 40)) {
            match check(&history, None, 20_000) {
                Verdict::Linearizable { order } => assert_witness(&history, None, &order),
                Verdict::NotLinearizable { prefix, stuck_at } => {
                    prop_assert!(prefix.iter().all(|&i| i < history.len()));
                    prop_assert!(stuck_at.is_none_or(|i| i < history.len()));
                }
                Verdict::Unknown { explored } => prop_assert!(explored > 20_000),
            }
        }

        #[test]
        fn small_histories_agree_with_brute_force(
            history in arbitrary(7, 12),
            initial in any::<u8>(),
        ) {
            let initial = value_of(initial);
            let verdict = check(&history, initial.clone(), DEFAULT_BUDGET);
            prop_assert_eq!(
                verdict.is_linearizable(),
                brute_force(&history, &initial, &mut vec![false; history.len()]),
                "{:?} for {:#?}", verdict, history
            );
            prop_assert!(verdict.is_linearizable() || verdict.is_violation());
        }
    }

    #[test]
    fn six_hundred_ops_from_six_clients() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0600);
        for round in 0..5 {
            let specs: Vec<Spec> = (0..600).map(|_| random_spec(&mut rng)).collect();
            let ops = simulate(&specs, 6);
            let started = Instant::now();
            let verdict = check(&ops, None, DEFAULT_BUDGET);
            let took = started.elapsed();
            eprintln!("600 ops, 6 clients, round {round}: {took:?}");
            match verdict {
                Verdict::Linearizable { order } => assert_witness(&ops, None, &order),
                other => panic!("expected linearizable, got {other:?}"),
            }
        }
    }
}
