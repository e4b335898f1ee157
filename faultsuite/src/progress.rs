//! A progress bar on stderr: redrawn in place on a terminal, one line every few
//! seconds otherwise (CI logs).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared counters of a running test.
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    start: Instant,
    note: std::sync::Mutex<String>,
}

impl Progress {
    /// Start a bar (and its redraw task) for `total` requests.
    pub fn start(label: &str, total: u64) -> Arc<Progress> {
        let p = Arc::new(Progress {
            label: label.to_string(),
            total: total.max(1),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            start: Instant::now(),
            note: std::sync::Mutex::new(String::new()),
        });
        let tty = std::io::stderr().is_terminal();
        let q = p.clone();
        tokio::spawn(async move {
            let period = if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            };
            let mut last = Instant::now();
            while !q.stop.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if last.elapsed() >= period && !q.stop.load(Relaxed) {
                    last = Instant::now();
                    q.draw(tty, false);
                }
            }
        });
        p
    }

    /// One request done.
    pub fn inc(&self, ok: bool) {
        self.done.fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    /// Requests done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Relaxed)
    }

    /// The total the bar counts to.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// A short note shown after the bar (the current fault).
    pub fn set_note(&self, note: &str) {
        if let Ok(mut n) = self.note.lock() {
            *n = note.to_string();
        }
    }

    fn draw(&self, tty: bool, last: bool) {
        let done = self.done.load(Relaxed).min(self.total);
        let width = 30usize;
        let filled = (done as usize * width) / self.total as usize;
        let bar: String = "#".repeat(filled) + &".".repeat(width - filled);
        let note = self.note.lock().map(|n| n.clone()).unwrap_or_default();
        let line = format!(
            "{:<12} [{bar}] {done}/{} {:>3}%  errors {}  {:.1}s  {note}",
            self.label,
            self.total,
            done * 100 / self.total,
            self.errors.load(Relaxed),
            self.start.elapsed().as_secs_f64(),
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if last {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Stop the bar and draw it one last time.
    pub fn finish(&self) {
        self.stop.store(true, Relaxed);
        self.draw(std::io::stderr().is_terminal(), true);
    }
}
