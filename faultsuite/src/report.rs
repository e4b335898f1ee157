//! Results: the figures of a test, its table, its JSON record and its plot (SVG:
//! latency of every request over time, errors in red, faults shaded).

use crate::check::{Break, Lost, Stale};
use crate::history::{Event, History, Op, OpKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency percentiles, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Latency {
    /// Percentiles of the given requests' latencies.
    pub fn of<'a>(ops: impl Iterator<Item = &'a Op>) -> Latency {
        let mut v: Vec<f64> = ops.map(Op::latency_ms).collect();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
            v[i.min(v.len() - 1)]
        };
        Latency {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: v[v.len() - 1],
        }
    }
}

/// One asserted property.
#[derive(Clone, Debug, Serialize)]
pub struct Assertion {
    /// What is asserted.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// The figures behind it.
    pub detail: String,
}

/// The figures of one test.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// Test name.
    pub test: String,
    /// What it does.
    pub description: String,
    /// Whether the client sent its session token.
    pub session: bool,
    /// The consistency level the client asked for (empty: none).
    pub consistency: String,
    /// Number of servers.
    pub servers: usize,
    /// Wall time of the workload, seconds.
    pub duration_s: f64,
    /// Requests made.
    pub ops: usize,
    /// PUTs made.
    pub puts: usize,
    /// GETs made.
    pub gets: usize,
    /// Requests no server served before the request deadline.
    pub errors: usize,
    /// Requests served only after failing over to another server.
    pub failovers: usize,
    /// Failed attempts (at some server), over all requests.
    pub failed_attempts: usize,
    /// Served requests per second.
    pub ops_per_s: f64,
    /// Latency of served requests.
    pub latency: Latency,
    /// Longest a request waited before being served or given up (ms): the client's
    /// view of unavailability.
    pub max_unavail_ms: f64,
    /// Chain breaks (None: not measured by this test).
    pub chain_breaks: Option<usize>,
    /// Stale reads (None: not measured).
    pub stale_reads: Option<usize>,
    /// Linearizability verdict of the history (None: not judged).
    pub linearizable: Option<String>,
    /// Acknowledged writes lost after convergence (None: not measured).
    pub lost_writes: Option<usize>,
    /// Whether all servers held identical values within the bound.
    pub converged: Option<bool>,
    /// Time from the end of the last fault / last request until all servers agreed (ms).
    pub convergence_ms: Option<f64>,
    /// The bound on convergence (ms).
    pub convergence_bound_ms: f64,
    /// The injected faults.
    pub events: Vec<Event>,
    /// Test-specific figures.
    pub details: BTreeMap<String, String>,
    /// The first chain breaks found.
    pub breaks_sample: Vec<Break>,
    /// The first stale reads found.
    pub stale_sample: Vec<Stale>,
    /// The keys whose acknowledged writes were lost.
    pub lost_sample: Vec<Lost>,
    /// Asserted properties.
    pub assertions: Vec<Assertion>,
    /// Files written for this test.
    pub files: Vec<String>,
}

impl Outcome {
    /// Fill the request counts and latencies from a history.
    pub fn count(&mut self, h: &History, duration_s: f64) {
        let ops = &h.ops;
        self.servers = h.servers;
        self.duration_s = duration_s;
        self.ops = ops.len();
        self.puts = ops.iter().filter(|o| o.kind == OpKind::Put).count();
        self.gets = ops.iter().filter(|o| o.kind == OpKind::Get).count();
        self.errors = ops.iter().filter(|o| !o.ok).count();
        self.failovers = ops.iter().filter(|o| o.ok && o.server != o.target).count();
        self.failed_attempts = ops.iter().map(|o| o.failed_at.len()).sum();
        let served = ops.iter().filter(|o| o.ok).count();
        self.ops_per_s = if duration_s > 0.0 {
            served as f64 / duration_s
        } else {
            0.0
        };
        self.latency = Latency::of(ops.iter().filter(|o| o.ok));
        self.max_unavail_ms = ops.iter().map(Op::latency_ms).fold(0.0, f64::max);
        self.events = h.events.clone();
    }

    /// Add an assertion.
    pub fn assert(&mut self, name: &str, ok: bool, detail: String) {
        self.assertions.push(Assertion {
            name: name.into(),
            ok,
            detail,
        });
    }

    /// Whether every assertion held.
    pub fn passed(&self) -> bool {
        self.assertions.iter().all(|a| a.ok)
    }

    /// The test's own table.
    pub fn table(&self) -> String {
        let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
        let mut rows: Vec<(String, String)> = vec![
            ("test".into(), self.test.clone()),
            ("what".into(), self.description.clone()),
            (
                "session token".into(),
                if self.session { "sent" } else { "not sent" }.into(),
            ),
            ("duration".into(), format!("{:.1} s", self.duration_s)),
            (
                "ops (put/get)".into(),
                format!("{} ({}/{})", self.ops, self.puts, self.gets),
            ),
            ("throughput".into(), format!("{:.0} ops/s", self.ops_per_s)),
            (
                "latency ms".into(),
                format!(
                    "mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                    self.latency.mean,
                    self.latency.p50,
                    self.latency.p90,
                    self.latency.p99,
                    self.latency.max
                ),
            ),
            ("errors".into(), self.errors.to_string()),
            (
                "failovers / failed attempts".into(),
                format!("{} / {}", self.failovers, self.failed_attempts),
            ),
            (
                "max unavailability".into(),
                format!("{:.0} ms", self.max_unavail_ms),
            ),
            ("chain breaks".into(), opt(self.chain_breaks)),
            ("stale reads".into(), opt(self.stale_reads)),
            (
                "linearizable".into(),
                self.linearizable.clone().unwrap_or_else(|| "-".into()),
            ),
            ("lost acked writes".into(), opt(self.lost_writes)),
            (
                "convergence".into(),
                match (self.converged, self.convergence_ms) {
                    (Some(true), Some(ms)) => {
                        format!("{ms:.0} ms (bound {:.0} ms)", self.convergence_bound_ms)
                    }
                    (Some(false), _) => {
                        format!("NOT converged within {:.0} ms", self.convergence_bound_ms)
                    }
                    _ => "-".into(),
                },
            ),
        ];
        for e in &self.events {
            rows.push((
                format!("event @{:.2}s", e.t_us as f64 / 1e6),
                format!("{} {}", e.kind, e.label),
            ));
        }
        for (k, v) in &self.details {
            rows.push((k.clone(), v.clone()));
        }
        for a in &self.assertions {
            rows.push((
                format!("assert {}", if a.ok { "ok  " } else { "FAIL" }),
                format!("{}: {}", a.name, a.detail),
            ));
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let vw = rows
            .iter()
            .map(|(_, v)| v.chars().count())
            .max()
            .unwrap_or(0)
            .min(100);
        let line = format!("+{}+{}+\n", "-".repeat(w + 2), "-".repeat(vw + 2));
        let mut s = line.clone();
        for (i, (k, v)) in rows.iter().enumerate() {
            let _ = writeln!(s, "| {k:<w$} | {v:<vw$} |");
            if i == 0 {
                s.push_str(&line);
            }
        }
        s.push_str(&line);
        s
    }
}

/// One row per test.
pub fn summary_table(outcomes: &[Outcome]) -> String {
    let head = [
        "test",
        "session",
        "level",
        "ops",
        "errors",
        "chain breaks",
        "stale reads",
        "linearizable",
        "lost writes",
        "max unavail ms",
        "converge ms",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "verdict",
    ];
    let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            vec![
                o.test.clone(),
                if o.session { "token" } else { "none" }.into(),
                if o.consistency.is_empty() {
                    "-".into()
                } else {
                    o.consistency.clone()
                },
                o.ops.to_string(),
                o.errors.to_string(),
                opt(o.chain_breaks),
                opt(o.stale_reads),
                o.linearizable.clone().unwrap_or_else(|| "-".into()),
                opt(o.lost_writes),
                format!("{:.0}", o.max_unavail_ms),
                match (o.converged, o.convergence_ms) {
                    (Some(true), Some(ms)) => format!("{ms:.0}"),
                    (Some(false), _) => "NO".into(),
                    _ => "-".into(),
                },
                format!("{:.0}", o.ops_per_s),
                format!("{:.2}", o.latency.p50),
                format!("{:.2}", o.latency.p99),
                if o.passed() { "pass" } else { "FAIL" }.into(),
            ]
        })
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = {
        let mut l = String::from("+");
        for x in &w {
            l.push_str(&"-".repeat(x + 2));
            l.push('+');
        }
        l.push('\n');
        l
    };
    let fmt_row = |cells: Vec<String>| {
        let mut l = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, " {c:>width$} |", width = w[i]);
        }
        l.push('\n');
        l
    };
    let mut s = line.clone();
    s.push_str(&fmt_row(head.iter().map(|h| h.to_string()).collect()));
    s.push_str(&line);
    for r in rows {
        s.push_str(&fmt_row(r));
    }
    s.push_str(&line);
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Shaded windows of faults: (start s, end s, label, colour), from the events.
fn windows(events: &[Event], end_s: f64) -> Vec<(f64, f64, String, &'static str)> {
    let mut out = Vec::new();
    let mut open: Vec<(String, f64, String)> = Vec::new();
    for e in events {
        let t = e.t_us as f64 / 1e6;
        match e.kind.as_str() {
            "kill" | "partition" => open.push((e.kind.clone(), t, e.label.clone())),
            "restart" | "heal" => {
                let want = if e.kind == "restart" {
                    "kill"
                } else {
                    "partition"
                };
                if let Some(i) = open.iter().position(|(k, _, _)| k == want) {
                    let (k, s, l) = open.remove(i);
                    out.push((s, t, format!("{k} {l}"), colour(&k)));
                }
            }
            _ => {}
        }
    }
    for (k, s, l) in open {
        out.push((s, end_s, format!("{k} {l}"), colour(&k)));
    }
    out
}

fn colour(kind: &str) -> &'static str {
    if kind == "kill" {
        "#f5a623"
    } else {
        "#9b59b6"
    }
}

/// The plot of a test: every request's latency (log scale) over time; PUTs green,
/// GETs blue, requests served after failover orange, errors red; fault windows
/// shaded, other events as vertical lines.
pub fn svg(h: &History, title: &str, subtitle: &str) -> String {
    let (w, ht) = (1100.0f64, 500.0f64);
    let (ml, mr, mt, mb) = (70.0, 20.0, 76.0, 50.0);
    let pw = w - ml - mr;
    let ph = ht - mt - mb;
    let end_us = h
        .ops
        .iter()
        .map(|o| o.end_us)
        .chain(h.events.iter().map(|e| e.t_us))
        .max()
        .unwrap_or(1)
        .max(1);
    let end_s = end_us as f64 / 1e6;
    let maxlat = h.ops.iter().map(Op::latency_ms).fold(1.0, f64::max);
    let (ylo, yhi) = (0.1f64.log10(), (maxlat * 1.5).max(10.0).log10().ceil());
    let x = |t_us: u64| ml + pw * (t_us as f64 / 1e6) / end_s;
    let xs = |s: f64| ml + pw * s / end_s;
    let y = |ms: f64| {
        let l = ms.max(0.1).log10();
        mt + ph * (1.0 - (l - ylo) / (yhi - ylo))
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" viewBox="0 0 {w} {ht}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{ht}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{ml}" y="20" font-size="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{ml}" y="38" fill="#444">{}</text>"##,
        esc(subtitle)
    );
    // Fault windows and events.
    for (a, b, label, c) in windows(&h.events, end_s) {
        let (xa, xb) = (xs(a), xs(b.max(a)));
        let _ = writeln!(
            s,
            r#"<rect x="{xa:.1}" y="{mt}" width="{:.1}" height="{ph}" fill="{c}" fill-opacity="0.18"/><text x="{:.1}" y="{:.1}" fill="{c}" font-weight="bold">{}</text>"#,
            (xb - xa).max(1.0),
            xa + 3.0,
            mt + 14.0,
            esc(&label)
        );
    }
    for e in &h.events {
        let xe = x(e.t_us);
        let c = match e.kind.as_str() {
            "kill" | "restart" => "#e67e22",
            "partition" | "heal" => "#8e44ad",
            _ => "#555",
        };
        let _ = writeln!(
            s,
            r#"<line x1="{xe:.1}" y1="{mt}" x2="{xe:.1}" y2="{:.1}" stroke="{c}" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="{c}" font-size="10" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
            mt + ph,
            xe - 3.0,
            mt + ph - 4.0,
            xe - 3.0,
            mt + ph - 4.0,
            esc(&format!("{} {}", e.kind, e.label))
        );
    }
    // Axes.
    let _ = writeln!(
        s,
        r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let mut d = ylo;
    while d <= yhi + 1e-9 {
        let ms = 10f64.powf(d);
        let yy = y(ms);
        let label = if ms < 1.0 {
            format!("{ms:.1}")
        } else {
            format!("{ms:.0}")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            ml + pw,
            ml - 6.0,
            yy + 4.0
        );
        d += 1.0;
    }
    let step = nice_step(end_s / 10.0);
    let mut t = 0.0;
    while t <= end_s + 1e-9 {
        let xx = xs(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            mt + ph,
            mt + ph + 5.0,
            mt + ph + 18.0,
            trim_num(t)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the test started (s)</text>"#,
        ml + pw / 2.0,
        ht - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency (ms, log scale)</text>"#,
        mt + ph / 2.0,
        mt + ph / 2.0
    );
    // Points: normal ones first (thinned when very many), then failovers, then errors.
    let normal: Vec<&Op> = h
        .ops
        .iter()
        .filter(|o| o.ok && o.server == o.target)
        .collect();
    let keep = (normal.len() / 20_000).max(1);
    for (i, o) in normal.iter().enumerate() {
        if i % keep != 0 {
            continue;
        }
        let c = if o.kind == OpKind::Put {
            "#2ca02c"
        } else {
            "#1f77b4"
        };
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{c}" fill-opacity="0.6"/>"#,
            x(o.start_us),
            y(o.latency_ms())
        );
    }
    for o in h.ops.iter().filter(|o| o.ok && o.server != o.target) {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.6" fill="#ff7f0e"/>"##,
            x(o.start_us),
            y(o.latency_ms())
        );
    }
    for o in h.ops.iter().filter(|o| !o.ok) {
        let (cx, cy) = (x(o.start_us), y(o.latency_ms()));
        let _ = writeln!(
            s,
            r##"<path d="M{:.1} {:.1} l6 6 m0 -6 l-6 6" stroke="#d62728" stroke-width="2"/>"##,
            cx - 3.0,
            cy - 3.0
        );
    }
    // Legend.
    let items = [
        ("#2ca02c", "PUT"),
        ("#1f77b4", "GET"),
        ("#ff7f0e", "served after failover"),
        ("#d62728", "error (not served)"),
        ("#f5a623", "node down (shaded)"),
        ("#9b59b6", "partitioned (shaded)"),
    ];
    let mut lx = ml + 5.0;
    for (c, label) in items {
        let _ = writeln!(
            s,
            r#"<circle cx="{lx:.1}" cy="56" r="5" fill="{c}"/><text x="{:.1}" y="60">{label}</text>"#,
            lx + 9.0
        );
        lx += 20.0 + 7.0 * label.len() as f64;
    }
    s.push_str("</svg>\n");
    s
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw {
            return m * p;
        }
    }
    10.0 * p
}

fn trim_num(t: f64) -> String {
    let s = format!("{t:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mk = |ms: u64| Op {
            client: 0,
            kind: OpKind::Get,
            key: "k".into(),
            value: None,
            old: None,
            found: false,
            ok: true,
            status: 200,
            server: 0,
            target: 0,
            attempts: 1,
            failed_at: vec![],
            start_us: 0,
            end_us: ms * 1000,
            error: None,
            version: None,
        };
        let ops: Vec<Op> = (1..=100).map(mk).collect();
        let l = Latency::of(ops.iter());
        assert_eq!(l.p50, 51.0);
        assert_eq!(l.p99, 99.0);
        assert_eq!(l.max, 100.0);
        let h = History {
            test: "t".into(),
            servers: 1,
            ops,
            events: vec![
                Event {
                    t_us: 10_000,
                    kind: "kill".into(),
                    label: "node 3".into(),
                },
                Event {
                    t_us: 50_000,
                    kind: "restart".into(),
                    label: "node 3".into(),
                },
            ],
            final_values: None,
        };
        let svg = svg(&h, "t <1>", "sub");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("kill node 3"));
    }

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(12.0), 20.0);
    }
}
