//! The record of every request a test made, and the faults it injected: what the
//! checker reads, what the plot draws, what `<test>.history.json` holds.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// GET or PUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// `GET /kv/{key}`.
    Get,
    /// `PUT /kv/{key}`.
    Put,
}

/// One request, after all its attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (worker) that made it.
    pub client: usize,
    /// GET or PUT.
    pub kind: OpKind,
    /// The key.
    pub key: String,
    /// PUT: the value written; GET: the value read (None: 404 or failed).
    pub value: Option<String>,
    /// PUT: the previous value the server returned (None: there was none).
    pub old: Option<String>,
    /// GET: the key was found (200).
    #[serde(default)]
    pub found: bool,
    /// Served (acknowledged) by some server.
    pub ok: bool,
    /// HTTP status of the answer that served it (0: none did).
    pub status: u16,
    /// The server that served it (the target when none did).
    pub server: usize,
    /// The server it was aimed at.
    pub target: usize,
    /// Number of attempts (1 when the target served it at once).
    pub attempts: u32,
    /// Servers whose attempt failed, in order.
    #[serde(default)]
    pub failed_at: Vec<usize>,
    /// Start, microseconds since the test's start.
    pub start_us: u64,
    /// End (answer or give-up), microseconds since the test's start.
    pub end_us: u64,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// The version the server reported, if it did.
    #[serde(default)]
    pub version: Option<String>,
}

impl Op {
    /// Latency in milliseconds.
    pub fn latency_ms(&self) -> f64 {
        self.end_us.saturating_sub(self.start_us) as f64 / 1000.0
    }
}

/// A fault the test injected (or its end), for the record and the plot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Microseconds since the test's start.
    pub t_us: u64,
    /// `kill`, `restart`, `partition`, `heal`, `converged`, ...
    pub kind: String,
    /// What exactly (e.g. `node 3`, `{0,1}|{2,3}`).
    pub label: String,
}

/// Everything a test did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The test's name.
    pub test: String,
    /// Number of servers.
    pub servers: usize,
    /// The requests, in order of completion.
    pub ops: Vec<Op>,
    /// The injected faults.
    pub events: Vec<Event>,
    /// For each key, the value every server held at the end (after convergence);
    /// absent when the test did not read them back.
    #[serde(default)]
    pub final_values: Option<Vec<(String, Option<String>)>>,
}

impl History {
    /// Write as JSON, one request per line so that a person can grep it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let j = |v: &dyn erased::Ser| v.json();
        writeln!(f, "{{")?;
        writeln!(f, "\"test\": {},", j(&self.test))?;
        writeln!(f, "\"servers\": {},", self.servers)?;
        writeln!(f, "\"events\": [")?;
        for (i, e) in self.events.iter().enumerate() {
            let sep = if i + 1 < self.events.len() { "," } else { "" };
            writeln!(f, "  {}{sep}", j(e))?;
        }
        writeln!(f, "],")?;
        match &self.final_values {
            Some(fv) => {
                writeln!(f, "\"final_values\": [")?;
                for (i, kv) in fv.iter().enumerate() {
                    let sep = if i + 1 < fv.len() { "," } else { "" };
                    writeln!(f, "  {}{sep}", j(kv))?;
                }
                writeln!(f, "],")?;
            }
            None => writeln!(f, "\"final_values\": null,")?,
        }
        writeln!(f, "\"ops\": [")?;
        for (i, op) in self.ops.iter().enumerate() {
            let sep = if i + 1 < self.ops.len() { "," } else { "" };
            writeln!(f, "  {}{sep}", j(op))?;
        }
        writeln!(f, "]")?;
        writeln!(f, "}}")?;
        f.flush()
    }

    /// Read a history written by [`History::write`] (or any JSON of that shape).
    pub fn read(path: &Path) -> Result<History, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

mod erased {
    /// Anything serializable, as one line of JSON.
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "null".into())
        }
    }
}
