//! Fault injection through commands given on the command line, so the suite works
//! with any way of crashing or partitioning servers (the local namespace emulation,
//! the ssh scripts for real VMs, or nothing at all).

use crate::history::Event;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The commands; `{id}`, `{a}` and `{b}` are replaced (ids, and comma-separated
/// groups such as `0,1` and `2,3`).
#[derive(Clone, Debug, Default)]
pub struct FaultCmds {
    /// Crash a server: `{id}`.
    pub kill: Option<String>,
    /// Restart a crashed server on its data: `{id}`.
    pub restart: Option<String>,
    /// Partition two groups of servers: `{a}`, `{b}`.
    pub partition: Option<String>,
    /// Remove every partition.
    pub heal: Option<String>,
    /// Longest a command may run.
    pub timeout: Duration,
}

/// The events of one test, timed from its start.
pub struct Recorder {
    t0: Instant,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    /// A recorder whose clock starts at `t0`.
    pub fn new(t0: Instant) -> Recorder {
        Recorder {
            t0,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Microseconds since the start.
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// Record an event now.
    pub fn event(&self, kind: &str, label: &str) {
        self.event_at(self.now_us(), kind, label);
    }

    /// Record an event at a given time (µs since the start). A fault is recorded
    /// from the moment its command starts, its end when the command is done, so the
    /// recorded window always covers the fault.
    pub fn event_at(&self, t_us: u64, kind: &str, label: &str) {
        let e = Event {
            t_us,
            kind: kind.into(),
            label: label.into(),
        };
        if let Ok(mut v) = self.events.lock() {
            v.push(e);
        }
    }

    /// All events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Run one fault command through `sh -c`, within the timeout; its output goes to
/// the suite's stderr only on failure.
pub async fn run(
    what: &str,
    template: Option<&String>,
    vars: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), String> {
    let template = template.ok_or_else(|| {
        format!("this test needs a {what} command (--{what}-cmd); see meshkv-test --help")
    })?;
    let cmd = fill(template, vars);
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Err(format!("{what} command timed out after {timeout:?}: {cmd}")),
        Ok(Err(e)) => Err(format!("{what} command could not run: {e}: {cmd}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{what} command failed ({}): {cmd}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        assert_eq!(
            fill("x partition {a} {b} {id}", &[("a", "0,1"), ("b", "2,3")]),
            "x partition 0,1 2,3 {id}"
        );
    }

    #[tokio::test]
    async fn commands_run_and_fail_clearly() {
        let t = Duration::from_secs(5);
        assert!(run("kill", Some(&"true".to_string()), &[], t).await.is_ok());
        let e = run("kill", Some(&"echo boom >&2; exit 3".to_string()), &[], t)
            .await
            .unwrap_err();
        assert!(e.contains("boom"), "{e}");
        let e = run("heal", None, &[], t).await.unwrap_err();
        assert!(e.contains("--heal-cmd"), "{e}");
        let e = run(
            "kill",
            Some(&"sleep 5".to_string()),
            &[],
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
