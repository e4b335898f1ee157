//! A node's clock work, as a state machine with no I/O and no clock of its own: when to
//! dial a peer, when to run an anti-entropy round and with whom, when to trim, and when
//! the node starts serving. The server's `scheduler` task and the simulator
//! ([`crate::vopr`], on simulated time) drive the same [`Schedule`]:
//!
//! ```text
//!   sched.handle(now, input)      // Peer.., Start, then LinkUp/LinkDown, DialEnded, RoundDone, Trimmed, Tick
//!   while let Some(a) = sched.poll_action() { carry it out; its end comes back as an input }
//!   sleep until sched.poll_timeout(), then sched.handle(now, Input::Tick)
//! ```
//!
//! `now` is a monotonic count of microseconds chosen by the driver (the server: time
//! since it started; the simulator: simulated time). It is never a wall clock, so a
//! clock step changes no deadline here.
//!
//! # The rules
//! * **Dialing.** Of two servers the one with the lower id dials (so a pair never holds
//!   two links). It dials a peer whose address it knows, that is not blocked and not
//!   linked, one attempt at a time. A failed attempt waits a back-off that doubles from
//!   [`Timing::dial_min`] to [`Timing::dial_max`]; a refusal as a duplicate id waits
//!   [`Timing::refused`] (the operator must act; hammering does not help). A link that
//!   goes down, a new address, or an unblock is dialed again at once.
//! * **Anti-entropy.** A round with a peer starts as soon as its link is up, then once
//!   per [`Timing::sync_interval`] (counted from the previous round's start; a round
//!   that overran is followed at once). **One round at a time** per node, so a rejoining
//!   server pulls what it missed from one peer instead of the same writes from all of
//!   them; of several due peers the longest-waiting goes first.
//! * **Trimming.** One [`Action::Trim`] per [`Timing::trim_interval`], never two at once.
//! * **Readiness.** The node serves clients ([`Action::Ready`], once) when it has
//!   completed a round with every peer whose address it knows and that is not blocked,
//!   or when [`Timing::catchup_timeout`] has passed since it started (then `missing`
//!   names the peers it did not catch up with).
//!
//! After every [`Schedule::handle`], every action whose time has come is queued, so
//! [`Schedule::poll_timeout`] is either `None` or strictly later than `now` (a property
//! test checks it).

use crate::version::NodeId;
use std::collections::{BTreeMap, VecDeque};

/// The schedule's intervals, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Between the starts of two rounds with one peer.
    pub sync_interval: u64,
    /// Between two trims.
    pub trim_interval: u64,
    /// After the start, serve at the latest this long without catching up.
    pub catchup_timeout: u64,
    /// The first back-off after a failed dial.
    pub dial_min: u64,
    /// The longest back-off after failed dials.
    pub dial_max: u64,
    /// The back-off after the peer refused this process as a duplicate id.
    pub refused: u64,
}

impl Default for Timing {
    /// The server's defaults: rounds every 500 ms, trims every 2 s, serve within 3 s,
    /// dial back-off 20–500 ms, 5 s after a duplicate-id refusal.
    fn default() -> Self {
        Timing {
            sync_interval: 500_000,
            trim_interval: 2_000_000,
            catchup_timeout: 3_000_000,
            dial_min: 20_000,
            dial_max: 500_000,
            refused: 5_000_000,
        }
    }
}

/// The readiness rule, for one peer: the node waits for a completed round with it when
/// its address is known and it is not blocked. The schedule decides [`Action::Ready`]
/// by it; the server reports the peers it still waits for by it (`/status`).
pub fn waits_for(addr: bool, blocked: bool, rounds: u64) -> bool {
    addr && !blocked && rounds == 0
}

/// What happened, as the driver tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Every peer known at the start was told ([`Input::Peer`]): from now on actions
    /// come due.
    Start,
    /// Time passed (a timer from [`Schedule::poll_timeout`] fired).
    Tick,
    /// Peer `id` is known: whether its address is known and whether it is blocked
    /// (removed or cut off). Sent on every change.
    Peer {
        /// The peer.
        id: NodeId,
        /// Its address is known (so it can be dialed and is waited for).
        addr: bool,
        /// No link to it is allowed.
        blocked: bool,
    },
    /// A link to `id` was installed (dialed by us or accepted).
    LinkUp(NodeId),
    /// The installed link to `id` closed.
    LinkDown(NodeId),
    /// A dial attempt ended. `linked`: it installed a link (its [`Input::LinkUp`] came or
    /// comes separately); `refused`: the peer refused us as a duplicate id.
    DialEnded {
        /// The peer.
        id: NodeId,
        /// The attempt installed a link.
        linked: bool,
        /// The peer refused this process as a duplicate of its id.
        refused: bool,
    },
    /// The round with `id` ended, completed (`ok`) or not.
    RoundDone {
        /// The peer.
        id: NodeId,
        /// It completed.
        ok: bool,
    },
    /// The trim ended.
    Trimmed,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Try once to link to this peer; report [`Input::DialEnded`].
    Dial(NodeId),
    /// Run one anti-entropy round with this peer; report [`Input::RoundDone`].
    Round(NodeId),
    /// Trim the log and the tombstones; report [`Input::Trimmed`].
    Trim,
    /// Start serving clients. `missing`: peers no round completed with (served after
    /// the catch-up timeout).
    Ready {
        /// Peers not caught up with.
        missing: Vec<NodeId>,
    },
}

#[derive(Clone, Debug, Default)]
struct Peer {
    addr: bool,
    blocked: bool,
    linked: bool,
    dialing: bool,
    next_dial: u64,
    backoff: u64,
    next_round: u64,
    rounds: u64,
}

/// One node's schedule (see the module docs).
#[derive(Clone, Debug)]
pub struct Schedule {
    id: NodeId,
    timing: Timing,
    deadline: u64,
    peers: BTreeMap<NodeId, Peer>,
    round: Option<NodeId>,
    trimming: bool,
    trim_started: u64,
    next_trim: u64,
    ready: bool,
    started: bool,
    actions: VecDeque<Action>,
}

impl Schedule {
    /// The schedule of node `id`, created at `now` (the catch-up timeout counts from
    /// here). Nothing is due before [`Input::Start`]: tell it the known peers first.
    pub fn new(id: NodeId, timing: Timing, now: u64) -> Self {
        Schedule {
            id,
            timing,
            deadline: now.saturating_add(timing.catchup_timeout),
            peers: BTreeMap::new(),
            round: None,
            trimming: false,
            trim_started: now,
            next_trim: now.saturating_add(timing.trim_interval),
            ready: false,
            started: false,
            actions: VecDeque::new(),
        }
    }

    /// Whether [`Action::Ready`] was given.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether the link to `id` is up, as far as the schedule was told.
    pub fn is_linked(&self, id: NodeId) -> bool {
        self.peers.get(&id).is_some_and(|p| p.linked)
    }

    /// Completed rounds with `id`.
    pub fn rounds_with(&self, id: NodeId) -> u64 {
        self.peers.get(&id).map_or(0, |p| p.rounds)
    }

    /// Take in one input at `now`, then queue every action whose time has come.
    pub fn handle(&mut self, now: u64, input: Input) {
        let t = self.timing;
        match input {
            Input::Start => self.started = true,
            Input::Tick => {}
            Input::Peer { id, addr, blocked } if id != self.id => {
                let p = self.peers.entry(id).or_default();
                let was_dialable = p.addr && !p.blocked;
                p.addr = addr;
                p.blocked = blocked;
                if addr && !blocked && !was_dialable {
                    p.next_dial = now;
                    p.backoff = 0;
                }
            }
            Input::LinkUp(id) if id != self.id => {
                let p = self.peers.entry(id).or_default();
                p.linked = true;
                p.backoff = 0;
                p.next_round = now;
            }
            Input::Peer { .. } | Input::LinkUp(_) => {}
            Input::LinkDown(id) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.linked = false;
                    p.next_dial = now;
                }
            }
            Input::DialEnded {
                id,
                linked,
                refused,
            } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.dialing = false;
                    if refused {
                        p.next_dial = now.saturating_add(t.refused);
                        p.backoff = t.dial_max;
                    } else if !linked {
                        p.backoff = if p.backoff == 0 {
                            t.dial_min
                        } else {
                            p.backoff.saturating_mul(2).min(t.dial_max)
                        };
                        p.next_dial = now.saturating_add(p.backoff);
                    }
                }
            }
            Input::RoundDone { id, ok } => {
                if self.round == Some(id) {
                    self.round = None;
                }
                if let Some(p) = self.peers.get_mut(&id) {
                    if ok {
                        p.rounds += 1;
                    }
                    // `next_round` holds the round's start plus the interval (set when
                    // it was handed out); an overrun round is followed at once.
                    p.next_round = p.next_round.max(now);
                }
            }
            Input::Trimmed => {
                self.trimming = false;
                self.next_trim = self.trim_started.saturating_add(t.trim_interval).max(now);
            }
        }
        self.fire(now);
    }

    /// The next action to carry out, in the order they came due.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Input::Tick`] should next be handled (`None`: only other inputs can make
    /// anything due). Always later than the `now` of the last [`Schedule::handle`].
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.started {
            return None;
        }
        let mut at: Option<u64> = None;
        let mut take = |t: u64| at = Some(at.map_or(t, |a| a.min(t)));
        for (&id, p) in &self.peers {
            if self.dials(id, p) {
                take(p.next_dial);
            }
            if p.linked && self.round.is_none() {
                take(p.next_round);
            }
        }
        if !self.trimming {
            take(self.next_trim);
        }
        if !self.ready {
            take(self.deadline);
        }
        at
    }

    /// Whether `p` is to be dialed (now or when its back-off ends).
    fn dials(&self, id: NodeId, p: &Peer) -> bool {
        self.id < id && p.addr && !p.blocked && !p.linked && !p.dialing
    }

    fn fire(&mut self, now: u64) {
        if !self.started {
            return;
        }
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(&id, p)| self.dials(id, p) && p.next_dial <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                p.dialing = true;
            }
            self.actions.push_back(Action::Dial(id));
        }
        if self.round.is_none() {
            let next = self
                .peers
                .iter()
                .filter(|(_, p)| p.linked && p.next_round <= now)
                .min_by_key(|(&id, p)| (p.next_round, id))
                .map(|(&id, _)| id);
            if let Some(id) = next {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.next_round = now.saturating_add(self.timing.sync_interval);
                }
                self.round = Some(id);
                self.actions.push_back(Action::Round(id));
            }
        }
        if !self.trimming && self.next_trim <= now {
            self.trimming = true;
            self.trim_started = now;
            self.actions.push_back(Action::Trim);
        }
        if !self.ready {
            let missing: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|(_, p)| waits_for(p.addr, p.blocked, p.rounds))
                .map(|(&id, _)| id)
                .collect();
            if missing.is_empty() || now >= self.deadline {
                self.ready = true;
                self.actions.push_back(Action::Ready { missing });
            }
        }
    }
}

#[cfg(test)]
mod tests;
