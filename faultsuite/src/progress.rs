//! Progress on stderr: an indicatif bar, redrawn in place, when stderr is a
//! terminal; otherwise (CI logs) one line every few seconds and one at the end.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a line is printed when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Shared counters of a running test.
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    errors: Arc<AtomicU64>,
    stop: AtomicBool,
    start: Instant,
    note: std::sync::Mutex<String>,
    /// The bar, on a terminal only.
    bar: Option<ProgressBar>,
}

fn bar(label: &str, total: u64, errors: Arc<AtomicU64>) -> ProgressBar {
    let template =
        "{prefix:<12} [{bar:30}] {pos}/{len} {percent:>3}%  errors {errors}  {elapsed}  {msg}";
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>.")
        .with_key(
            "errors",
            move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", errors.load(Relaxed));
            },
        );
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(style);
    pb.set_prefix(label.to_string());
    // Redrawn while no request finishes, too (a fault can stall every request).
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

impl Progress {
    /// Start counting `total` requests: a bar on a terminal, else a task that logs
    /// a line every few seconds.
    pub fn start(label: &str, total: u64) -> Arc<Progress> {
        let total = total.max(1);
        let errors = Arc::new(AtomicU64::new(0));
        let tty = std::io::stderr().is_terminal();
        let p = Arc::new(Progress {
            label: label.to_string(),
            total,
            done: AtomicU64::new(0),
            errors: errors.clone(),
            stop: AtomicBool::new(false),
            start: Instant::now(),
            note: std::sync::Mutex::new(String::new()),
            bar: tty.then(|| bar(label, total, errors)),
        });
        if !tty {
            let q = p.clone();
            tokio::spawn(async move {
                let mut last = Instant::now();
                while !q.stop.load(Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if last.elapsed() >= LOG_EVERY && !q.stop.load(Relaxed) {
                        last = Instant::now();
                        eprintln!("{}", q.line());
                    }
                }
            });
        }
        p
    }

    /// One request done.
    pub fn inc(&self, ok: bool) {
        self.done.fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
        if let Some(b) = &self.bar {
            b.inc(1);
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
        if let Some(b) = &self.bar {
            b.set_message(note.to_string());
        }
    }

    /// The log line (when stderr is not a terminal).
    pub fn line(&self) -> String {
        let done = self.done.load(Relaxed).min(self.total);
        let width = 30u64;
        let filled = (done * width / self.total) as usize;
        let bar = "#".repeat(filled) + &".".repeat(width as usize - filled);
        let note = self.note.lock().map(|n| n.clone()).unwrap_or_default();
        format!(
            "{:<12} [{bar}] {done}/{} {:>3}%  errors {}  {:.1}s  {note}",
            self.label,
            self.total,
            done * 100 / self.total,
            self.errors.load(Relaxed),
            self.start.elapsed().as_secs_f64(),
        )
    }

    /// Stop: the bar is drawn one last time and left; or the last log line.
    pub fn finish(&self) {
        self.stop.store(true, Relaxed);
        match &self.bar {
            Some(b) => b.finish(),
            None => eprintln!("{}", self.line()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_line_counts_requests_and_errors() {
        let p = Progress::start("base", 4);
        p.inc(true);
        p.inc(false);
        p.set_note("kill node 2");
        let line = p.line();
        assert!(
            line.starts_with("base         [###############...............] 2/4  50%  errors 1  "),
            "{line}"
        );
        assert!(line.ends_with("kill node 2"), "{line}");
        assert_eq!(p.done(), 2);
        assert_eq!(p.total(), 4);
        p.finish();
        assert!(p.stop.load(Relaxed));
    }
}
