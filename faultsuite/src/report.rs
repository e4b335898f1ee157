//! Results: the figures of a test, its table (comfy-table), its JSON record and its
//! plot (plotters' SVG backend: latency of every request over time, errors in red,
//! faults shaded).

use crate::check::{Break, Lost, Stale};
use crate::history::{Event, History, Op, OpKind};
use comfy_table::{CellAlignment, ContentArrangement, Table};
use hdrhistogram::Histogram;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// Latencies of the given requests: percentiles from an HDR histogram of
    /// microseconds (3 significant digits: within 0.1 %), mean and max exact.
    pub fn of<'a>(ops: impl Iterator<Item = &'a Op>) -> Latency {
        let Ok(mut hist) = Histogram::<u64>::new(3) else {
            return Latency::default();
        };
        let (mut sum, mut max) = (0u64, 0u64);
        for op in ops {
            let us = op.end_us.saturating_sub(op.start_us);
            // Auto-resizing: no value is out of range.
            let _ = hist.record(us);
            sum = sum.saturating_add(us);
            max = max.max(us);
        }
        if hist.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            mean: sum as f64 / hist.len() as f64 / 1000.0,
            p50: ms(hist.value_at_quantile(0.50)),
            p90: ms(hist.value_at_quantile(0.90)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(max),
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
        let mut t = new_table();
        // The first row (the test's name) is the header: a rule under it.
        let mut rows = rows.into_iter();
        if let Some((k, v)) = rows.next() {
            t.set_header(vec![k, v]);
        }
        for (k, v) in rows {
            t.add_row(vec![k, v]);
        }
        // Long values wrap at 100 columns rather than widen the whole table.
        t.set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(140);
        if let Some(c) = t.column_mut(1) {
            c.set_constraint(comfy_table::ColumnConstraint::UpperBoundary(
                comfy_table::Width::Fixed(102),
            ));
        }
        format!("{t}\n")
    }
}

/// ASCII borders, a rule under the header, none between rows:
/// `+---+`, `| a |`, `+---+`, `| b |`, ..., `+---+`.
const PRESET: &str = "||--+-++|    ++++++";

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_preset(PRESET);
    t
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
    let mut t = new_table();
    t.set_header(head.to_vec());
    for r in rows {
        t.add_row(r);
    }
    for c in t.column_iter_mut() {
        c.set_cell_alignment(CellAlignment::Right);
    }
    format!("{t}\n")
}

const PUT: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const GET: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const FAILOVER: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const ERROR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const KILL: RGBColor = RGBColor(0xf5, 0xa6, 0x23);
const PARTITION: RGBColor = RGBColor(0x9b, 0x59, 0xb6);
const GREY: RGBColor = RGBColor(0x44, 0x44, 0x44);

/// Shaded windows of faults: (start s, end s, label, colour), from the events.
fn windows(events: &[Event], end_s: f64) -> Vec<(f64, f64, String, RGBColor)> {
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

fn colour(kind: &str) -> RGBColor {
    if kind == "kill" {
        KILL
    } else {
        PARTITION
    }
}

/// The plot of a test: every request's latency (log scale) over time; PUTs green,
/// GETs blue, requests served after failover orange, errors red crosses; fault
/// windows shaded, every event a dashed vertical line.
pub fn svg(h: &History, title: &str, subtitle: &str) -> Result<String, String> {
    let mut out = String::new();
    draw(h, title, subtitle, &mut out).map_err(|e| format!("plot: {e}"))?;
    Ok(out)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(h: &History, title: &str, subtitle: &str, out: &mut String) -> DrawResult {
    let end_us = h
        .ops
        .iter()
        .map(|o| o.end_us)
        .chain(h.events.iter().map(|e| e.t_us))
        .max()
        .unwrap_or(0)
        .max(1000);
    let end_s = end_us as f64 / 1e6;
    let maxlat = h.ops.iter().map(Op::latency_ms).fold(1.0, f64::max);
    let (ylo, yhi) = (0.1f64, 10f64.powf((maxlat * 1.5).max(10.0).log10().ceil()));
    let at = |o: &Op| (o.start_us as f64 / 1e6, o.latency_ms().clamp(ylo, yhi));

    let root = SVGBackend::with_string(out, (1100, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(56);
    let bold = ("sans-serif", 20).into_font().style(FontStyle::Bold);
    head.draw(&Text::new(title.to_string(), (70, 8), bold))?;
    let sub = ("sans-serif", 14).into_font().color(&GREY);
    head.draw(&Text::new(subtitle.to_string(), (70, 32), sub))?;

    let mut chart = ChartBuilder::on(&body)
        .margin_left(16)
        .margin_right(20)
        .margin_top(6)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end_s, (ylo..yhi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("time since the test started (s)")
        .y_desc("latency (ms, log scale)")
        .y_label_formatter(&|v| {
            if *v < 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })
        .draw()?;

    // Fault windows (shaded, labelled) and every event (a dashed line).
    let label_font = ("sans-serif", 13).into_font();
    for (a, b, label, c) in windows(&h.events, end_s) {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a, ylo), (b.max(a), yhi)],
            c.mix(0.18).filled(),
        )))?;
        chart.draw_series(std::iter::once(
            EmptyElement::at((a, yhi)) + Text::new(label, (4, 4), label_font.clone().color(&c)),
        ))?;
    }
    for e in &h.events {
        let t = e.t_us as f64 / 1e6;
        let c = match e.kind.as_str() {
            "kill" | "restart" => RGBColor(0xe6, 0x7e, 0x22),
            "partition" | "heal" => RGBColor(0x8e, 0x44, 0xad),
            _ => RGBColor(0x55, 0x55, 0x55),
        };
        chart.draw_series(std::iter::once(DashedPathElement::new(
            vec![(t, ylo), (t, yhi)],
            4,
            3,
            c,
        )))?;
        let text = ("sans-serif", 11)
            .into_font()
            .transform(FontTransform::Rotate270)
            .color(&c);
        chart.draw_series(std::iter::once(
            EmptyElement::at((t, ylo))
                + Text::new(format!("{} {}", e.kind, e.label), (-14, -6), text),
        ))?;
    }

    // Points: normal ones first (thinned when very many), then failovers, then errors.
    let normal: Vec<&Op> = h
        .ops
        .iter()
        .filter(|o| o.ok && o.server == o.target)
        .collect();
    let keep = (normal.len() / 20_000).max(1);
    for (kind, c, name) in [(OpKind::Put, PUT, "PUT"), (OpKind::Get, GET, "GET")] {
        chart
            .draw_series(
                normal
                    .iter()
                    .step_by(keep)
                    .filter(|o| o.kind == kind)
                    .map(|o| Circle::new(at(o), 2, c.mix(0.6).filled())),
            )?
            .label(name)
            .legend(move |p| Circle::new(p, 5, c.filled()));
    }
    chart
        .draw_series(
            h.ops
                .iter()
                .filter(|o| o.ok && o.server != o.target)
                .map(|o| Circle::new(at(o), 3, FAILOVER.filled())),
        )?
        .label("served after failover")
        .legend(|p| Circle::new(p, 5, FAILOVER.filled()));
    chart
        .draw_series(
            h.ops
                .iter()
                .filter(|o| !o.ok)
                .map(|o| Cross::new(at(o), 4, ERROR.stroke_width(2))),
        )?
        .label("error (not served)")
        .legend(|p| Cross::new(p, 4, ERROR.stroke_width(2)));
    for (c, name) in [
        (KILL, "node down (shaded)"),
        (PARTITION, "partitioned (shaded)"),
    ] {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label(name)
            .legend(move |(x, y)| {
                Rectangle::new([(x - 5, y - 5), (x + 5, y + 5)], c.mix(0.4).filled())
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .draw()?;
    root.present()?;
    Ok(())
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
        // 3 significant digits: within 0.1 % of the exact percentiles.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001;
        assert!(near(l.p50, 50.0), "{l:?}");
        assert!(near(l.p90, 90.0), "{l:?}");
        assert!(near(l.p99, 99.0), "{l:?}");
        assert_eq!(l.max, 100.0);
        assert_eq!(l.mean, 50.5);
        // A long tail moves p99 and max, not the median.
        let skewed: Vec<Op> = (0..1000)
            .map(|i| mk(if i < 980 { 2 } else { 5000 }))
            .collect();
        let l = Latency::of(skewed.iter());
        assert!(near(l.p50, 2.0) && near(l.p90, 2.0), "{l:?}");
        assert!(near(l.p99, 5000.0), "{l:?}");
        assert_eq!(l.max, 5000.0);
        assert!(near(l.mean, 101.96), "{l:?}");
        assert_eq!(Latency::of([].iter()).p99, 0.0);
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
        let svg = svg(&h, "t <1>", "sub").expect("plot");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("kill node 3"));
    }

    fn op(start_ms: u64, ms: u64, kind: OpKind, ok: bool, server: usize) -> Op {
        Op {
            client: 0,
            kind,
            key: "k".into(),
            value: None,
            old: None,
            found: false,
            ok,
            status: if ok { 200 } else { 0 },
            server,
            target: 0,
            attempts: 1,
            failed_at: vec![],
            start_us: start_ms * 1000,
            end_us: (start_ms + ms) * 1000,
            error: None,
            version: None,
        }
    }

    #[test]
    fn the_plot_shows_every_kind_of_request_and_fault() {
        let h = History {
            test: "t".into(),
            servers: 2,
            ops: vec![
                op(0, 2, OpKind::Put, true, 0),
                op(10, 3, OpKind::Get, true, 0),
                op(20, 700, OpKind::Put, true, 1),
                op(30, 9000, OpKind::Get, false, 0),
            ],
            events: vec![
                Event {
                    t_us: 15_000,
                    kind: "partition".into(),
                    label: "{0}|{1}".into(),
                },
                Event {
                    t_us: 900_000,
                    kind: "heal".into(),
                    label: "{0}|{1}".into(),
                },
            ],
            final_values: None,
        };
        let svg = svg(&h, "title", "2 puts & 2 gets").expect("plot");
        assert!(svg.contains("2 puts &amp; 2 gets"));
        for colour in ["#2CA02C", "#1F77B4", "#FF7F0E", "#D62728", "#9B59B6"] {
            assert!(svg.to_uppercase().contains(colour), "{colour} missing");
        }
        for text in [
            "partition {0}|{1}",
            "heal {0}|{1}",
            "served after failover",
            "error (not served)",
            "time since the test started (s)",
            "latency (ms, log scale)",
        ] {
            assert!(svg.contains(text), "{text:?} missing");
        }
        // The y axis reaches the decade above 1.5 x the slowest request (9 s).
        assert!(
            svg.contains(">\n100000\n<") || svg.contains(">100000<"),
            "no 100000 label"
        );
        // Nothing but text elements carry text: no font was rasterised.
        assert!(!svg.contains("<image"));
        let empty = History::default();
        assert!(svg_ok(&empty));
    }

    fn svg_ok(h: &History) -> bool {
        svg(h, "empty", "").is_ok_and(|s| s.trim_end().ends_with("</svg>"))
    }

    #[test]
    fn tables_are_drawn() {
        let mut o = Outcome {
            test: "base".into(),
            description: "~".repeat(150),
            ..Default::default()
        };
        o.assert("chain breaks zero", false, "3 breaks".into());
        let t = o.table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("+-") && lines[0].ends_with("-+"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("| test ") && lines[1].contains("| base "),
            "{t}"
        );
        assert!(lines[2].starts_with("+-"), "{t}");
        assert!(t.contains("| assert FAIL "), "{t}");
        assert!(t.contains("chain breaks zero: 3 breaks"), "{t}");
        // Long values wrap instead of widening the table past 140 columns.
        assert!(lines.iter().all(|l| l.chars().count() <= 140), "{t}");
        assert_eq!(t.matches('~').count(), 150, "{t}");
        let s = summary_table(&[o]);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 5, "{s}");
        assert!(lines[1].contains("| chain breaks |"), "{s}");
        // Right-aligned cells.
        assert!(
            lines[3].contains("|     base |") || lines[3].contains("| base |"),
            "{s}"
        );
        assert!(lines[3].ends_with("FAIL |"), "{s}");
    }
}
