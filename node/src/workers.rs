//! Owned background work: every task a server starts is named, has an owner, shows in
//! `/status` and `/metrics`, and stops when its server stops.
//!
//! [`Workers::spawn`] runs a future as a tokio task that also watches the server's stop
//! signal: on [`Workers::stop`] every task is dropped at its next `.await`, and
//! [`Workers::join`] waits until all of them are gone. The registry keeps, per name, how
//! many tasks of that name run now and how many ever started, so a leak (a per-peer task
//! that outlives its connection) shows as a count that only grows.

use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One kind of task in [`Workers::status`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    /// The task's name (`accept`, `trim`, `anti-entropy`, …).
    pub name: String,
    /// Who owns it: `server` or `peer N`/`client connection`.
    pub owner: String,
    /// How many run now.
    pub running: u64,
    /// How many were ever started.
    pub started: u64,
}

#[derive(Default)]
struct Registry {
    /// (name, owner) → (running, started).
    kinds: BTreeMap<(String, String), (u64, u64)>,
    handles: Vec<JoinHandle<()>>,
}

/// The background tasks of one server.
#[derive(Clone)]
pub struct Workers {
    stop: watch::Sender<bool>,
    reg: Arc<Mutex<Registry>>,
}

impl Default for Workers {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(m: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workers {
    /// An empty registry.
    pub fn new() -> Self {
        Workers {
            stop: watch::channel(false).0,
            reg: Arc::default(),
        }
    }

    /// Run `fut` as a task named `name`, owned by `owner`, until it ends or the server
    /// stops. A spawn after [`Workers::stop`] does nothing.
    pub fn spawn<F>(&self, name: &str, owner: impl Into<String>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut stop = self.stop.subscribe();
        if *stop.borrow() {
            return;
        }
        let key = (name.to_string(), owner.into());
        let reg = self.reg.clone();
        let mut r = lock(&self.reg);
        let e = r.kinds.entry(key.clone()).or_default();
        e.0 += 1;
        e.1 += 1;
        let handle = tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            let mut r = lock(&reg);
            if let Some(e) = r.kinds.get_mut(&key) {
                e.0 = e.0.saturating_sub(1);
            }
        });
        r.handles.retain(|h| !h.is_finished());
        r.handles.push(handle);
    }

    /// A receiver that turns true when the server stops (for threads and loops that
    /// are not spawned here).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Tell every task to stop.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Wait until every task has ended (at most `wait`); true when none is left.
    pub async fn join(&self, wait: Duration) -> bool {
        let handles = std::mem::take(&mut lock(&self.reg).handles);
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        tokio::time::timeout(wait, all).await.is_ok() && self.running() == 0
    }

    /// Tasks running now.
    pub fn running(&self) -> u64 {
        lock(&self.reg).kinds.values().map(|(r, _)| r).sum()
    }

    /// Per kind of task: running and started.
    pub fn status(&self) -> Vec<WorkerStatus> {
        lock(&self.reg)
            .kinds
            .iter()
            .map(|((name, owner), (running, started))| WorkerStatus {
                name: name.clone(),
                owner: owner.clone(),
                running: *running,
                started: *started,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_are_counted_and_stop_with_their_server() {
        let w = Workers::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        w.spawn("quick", "server", async move {
            let _ = rx.await;
        });
        w.spawn("forever", "peer 1", std::future::pending());
        assert_eq!(w.running(), 2);
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), async {
            while w.running() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the quick task ended");
        w.stop();
        assert!(w.join(Duration::from_secs(5)).await, "{:?}", w.status());
        assert_eq!(w.running(), 0);
        let st = w.status();
        assert_eq!(st.iter().map(|s| s.started).sum::<u64>(), 2);
        // Nothing starts after the stop.
        w.spawn("late", "server", std::future::pending());
        assert_eq!(w.running(), 0);
    }
}
