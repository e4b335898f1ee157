//! The hybrid logical clock.
//!
//! A write's timestamp is `max(wall clock, highest timestamp seen + 1)` in microseconds
//! since the Unix epoch. "Seen" includes every timestamp this server handed out, every
//! timestamp in an entry it merged, and the highest timestamp a client reports having
//! seen. So a write that causally follows another (through this server's state or
//! through a client's session) gets a larger timestamp and wins last-writer-wins, and
//! writes issued one after another on one machine are ordered by real time even on
//! disconnected servers. The adapter persists the highest timestamp handed out with
//! each batch, and a restarted server starts from it, so the clock never goes back.
//!
//! **The offset bound.** A timestamp from elsewhere (a peer's entry, a client's "highest
//! seen") moves the clock only up to `wall + max_clock_offset` (500 ms by default, as
//! CockroachDB's maximum clock offset): one server with a fast clock cannot drag the
//! others' clocks ahead. Leads past the bound are counted and shown in status. A write
//! still gets a timestamp above the key's current version and above what its client has
//! seen (bounded by the highest timestamp the cluster has actually issued, so a forged
//! token cannot either), so a causally later write to a key always wins — only that
//! write is stamped ahead, not the clock. Nothing is ever refused for its timestamp.

/// The clock state: the highest timestamp seen or handed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that has already seen `last`.
    pub fn new(last: u64) -> Self {
        Hlc { last }
    }

    /// A fresh timestamp, strictly greater than everything seen.
    pub fn tick(&mut self, wall_micros: u64) -> u64 {
        let t = wall_micros.max(self.last.saturating_add(1));
        self.last = t;
        t
    }

    /// Record a timestamp seen elsewhere.
    pub fn observe(&mut self, ts: u64) {
        if ts > self.last {
            self.last = ts;
        }
    }

    /// The highest timestamp seen or handed out.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// The wall clock in microseconds since the Unix epoch (the only clock read in the core
/// crate's helpers; the replica itself takes the wall time as an argument).
pub fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_strictly_increase_even_when_wall_clock_stalls_or_goes_back() {
        let mut c = Hlc::new(0);
        let a = c.tick(100);
        let b = c.tick(100);
        let d = c.tick(50);
        assert!(a < b && b < d);
        c.observe(1_000);
        assert_eq!(c.tick(200), 1_001);
        assert_eq!(c.tick(5_000), 5_000);
    }
}
