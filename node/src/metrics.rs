//! Prometheus metrics of one server, served at `GET /metrics`.
//!
//! Built on `prometheus-client` with one [`Registry`] per server (no global state).
//! The text is the OpenMetrics text format (`application/openmetrics-text`), which
//! Prometheus scrapes natively; counters carry the `_total` suffix.
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `meshkv_http_requests_total` | counter | `route`, `method`, `status` | HTTP requests answered |
//! | `meshkv_http_request_duration_seconds` | histogram | `route`, `method` | time to answer (dependency waits included) |
//! | `meshkv_http_connections` | gauge | | open HTTP connections |
//! | `meshkv_http_connections_dropped_total` | counter | `reason` | HTTP connections closed by the connection limits: `per_ip_limit` (over `max_connections_per_ip`, closed at once), `shed_no_request` / `shed_idle` (closed to make room at `max_connections`: had not sent a request yet / idle between requests) |
//! | `meshkv_dashboard_snapshots_total` | counter | | mesh snapshots taken for the dashboard (`/ui/mesh`, `/ui/events`): each asks every linked peer for its status; viewers share one for 400 ms |
//! | `meshkv_node_id` | gauge | | this server's id |
//! | `meshkv_build_info` | gauge | `version` | always 1: the running build |
//! | `meshkv_linearizable_ops_total` / `meshkv_linearizable_retries_total` / `meshkv_linearizable_unavailable_total` | counter | | linearizable operations this server proposed: completed, attempts retried, answered `ERR_UNAVAILABLE` |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds` | counter / gauge | | the process, from `/proc/self` (the names Prometheus client libraries use) |
//! | `meshkv_uptime_seconds` | gauge | | since start |
//! | `meshkv_keys` / `meshkv_tombstones` / `meshkv_log_records` | gauge | | store size |
//! | `meshkv_client_puts_total` / `meshkv_client_gets_total` | counter | | client requests (QUIC and HTTP) |
//! | `meshkv_storage_fsyncs_total` / `meshkv_storage_batches_total` / `meshkv_storage_bytes_written_total` | counter | | durability work |
//! | `meshkv_storage_deferred_batches_total` | counter | | batches written without an fsync of their own (other servers' writes, trims, expiries: fsynced late) |
//! | `meshkv_storage_last_sync_seconds` | gauge | | duration of the last flush + fsync |
//! | `meshkv_ready` / `meshkv_disk_full` | gauge | | 1 once caught up after a start / 1 while writes are refused for lack of disk space |
//! | `meshkv_clock_ahead_refused_total` | counter | | peer or client timestamps beyond the clock-offset bound (they did not move the clock) |
//! | `meshkv_clock_max_ahead_seconds` | gauge | | the largest such lead seen |
//! | `meshkv_duplicate_ids_refused_total` | counter | | connections refused because a live server already has that id |
//! | `meshkv_peer_up` | gauge | `peer` | 1 when the QUIC link is up |
//! | `meshkv_replication_lag_writes` | gauge | `peer` | writes we hold that the peer has not reported holding |
//! | `meshkv_peer_bytes_sent_total` / `meshkv_peer_bytes_received_total` | counter | `peer` | bytes between servers, all streams |
//! | `meshkv_peer_pushes_sent_total` / `meshkv_peer_pushes_received_total` | counter | `peer` | eager pushes |
//! | `meshkv_peer_pushes_dropped_total` | counter | `peer` | pushes not queued: the peer's queue held 64 MiB (anti-entropy delivers them) |
//! | `meshkv_catchup_keys_received_total` / `meshkv_catchup_bytes_received_total` | counter | `peer` | anti-entropy transfers in |
//! | `meshkv_catchup_keys_sent_total` / `meshkv_catchup_bytes_sent_total` | counter | `peer` | anti-entropy transfers out |
//! | `meshkv_sync_rounds_total` / `meshkv_tree_walks_total` / `meshkv_peer_connects_total` | counter | `peer` | anti-entropy rounds, digest-tree walks, connections |
//! | `meshkv_peer_last_sync_timestamp_seconds` | gauge | `peer` | Unix time of the last good anti-entropy round |

use crate::server::{Server, Status};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: &'static str,
}

/// The metrics of one server.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    connections: Gauge,
    dropped: Family<DropLabels, Counter>,
    snapshots: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

impl Metrics {
    /// Metrics for `server`: request counters and histograms, plus everything in
    /// [`Server::status`], read at each scrape.
    pub fn new(server: Server) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let connections = Gauge::default();
        registry.register(
            "meshkv_http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "meshkv_http_request_duration_seconds",
            "Time to answer an HTTP request, dependency waits included",
            latency.clone(),
        );
        registry.register(
            "meshkv_http_connections",
            "Open HTTP connections",
            connections.clone(),
        );
        let dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "meshkv_http_connections_dropped",
            "HTTP connections closed by the connection limits, by reason",
            dropped.clone(),
        );
        let snapshots = Counter::default();
        registry.register(
            "meshkv_dashboard_snapshots",
            "Mesh snapshots taken for the dashboard (each asks every linked peer)",
            snapshots.clone(),
        );
        registry.register_collector(Box::new(StatusCollector { server }));
        Metrics {
            registry,
            requests,
            latency,
            connections,
            dropped,
            snapshots,
        }
    }

    /// Count one answered request.
    pub fn observe(&self, route: &'static str, method: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route, method })
            .observe(took.as_secs_f64());
    }

    /// Count one mesh snapshot taken for the dashboard.
    pub fn dashboard_snapshot(&self) {
        self.snapshots.inc();
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// Count one connection closed by a connection limit (`reason`: see the table).
    pub fn connection_dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }

    /// The text exposition ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            return format!("# cannot encode metrics: {e}\n# EOF\n");
        }
        out
    }
}

/// Reads [`Server::status`] at each scrape.
struct StatusCollector {
    server: Server,
}

impl std::fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCollector")
            .field("node", &self.server.id())
            .finish()
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// The `process_*` metrics Prometheus client libraries export, from `/proc/self`
/// (Linux; elsewhere the ones that cannot be read are left out).
fn process_metrics(enc: &mut DescriptorEncoder) -> std::fmt::Result {
    // SAFETY: sysconf and getrlimit only read process-wide settings into a local.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    // /proc/self/stat: fields after the parenthesised command name.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name;
    // starttime (22) is 19; vsize (23) is 20; rss (24, pages) is 21.
    if let (Some(u), Some(s), true) = (field(11), field(12), tick > 0) {
        let c = ConstCounter::new((u + s) / tick as f64);
        let m = enc.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            c.metric_type(),
        )?;
        c.encode(m)?;
    }
    if let Some(v) = field(20) {
        gauge(
            enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            v,
        )?;
    }
    if let (Some(rss), true) = (field(21), page > 0) {
        gauge(
            enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            rss * page as f64,
        )?;
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(start), Some(boot), true) = (field(19), boot, tick > 0) {
        gauge(
            enc,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            boot + start / tick as f64,
        )?;
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            enc,
            "process_open_fds",
            "Open file descriptors",
            dir.count() as f64,
        )?;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        gauge(
            enc,
            "process_max_fds",
            "Limit on open file descriptors",
            lim.rlim_cur as f64,
        )?;
    }
    Ok(())
}

/// One family with a `peer` label; `None` values are left out.
fn per_peer(
    enc: &mut DescriptorEncoder,
    st: &Status,
    name: &str,
    help: &str,
    ty: MetricType,
    get: impl Fn(&crate::server::PeerStatus) -> Option<f64>,
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, ty)?;
    for p in &st.peers {
        let Some(v) = get(p) else { continue };
        let labels = [("peer", p.id.to_string())];
        let m = fam.encode_family(&labels)?;
        match ty {
            MetricType::Counter => ConstCounter::new(v as u64).encode(m)?,
            _ => ConstGauge::new(v).encode(m)?,
        }
    }
    Ok(())
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.server.status();
        let e = &mut enc;
        process_metrics(e)?;
        {
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            let mut fam = e.encode_descriptor(
                "meshkv_build_info",
                "The running build (always 1)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1i64).encode(fam.encode_family(&labels)?)?;
        }
        counter(
            e,
            "meshkv_linearizable_ops",
            "Linearizable operations this server proposed and completed",
            st.linearizable.ops,
        )?;
        counter(
            e,
            "meshkv_linearizable_retries",
            "Linearizable attempts retried (a competing ballot, a lost message)",
            st.linearizable.retries,
        )?;
        counter(
            e,
            "meshkv_linearizable_unavailable",
            "Linearizable operations answered ERR_UNAVAILABLE",
            st.linearizable.unavailable,
        )?;
        gauge(e, "meshkv_node_id", "This server's id", st.node as f64)?;
        gauge(
            e,
            "meshkv_uptime_seconds",
            "Seconds since start",
            st.uptime_s,
        )?;
        gauge(
            e,
            "meshkv_keys",
            "Keys held, tombstones included",
            st.keys as f64,
        )?;
        gauge(
            e,
            "meshkv_tombstones",
            "Tombstones held",
            st.tombstones as f64,
        )?;
        gauge(
            e,
            "meshkv_log_records",
            "Write-log records held",
            st.log_records as f64,
        )?;
        counter(
            e,
            "meshkv_client_puts",
            "Client writes served (QUIC and HTTP)",
            st.client_puts,
        )?;
        counter(
            e,
            "meshkv_client_gets",
            "Client reads served (QUIC and HTTP)",
            st.client_gets,
        )?;
        counter(
            e,
            "meshkv_storage_fsyncs",
            "fsync rounds of the store",
            st.storage.fsyncs,
        )?;
        counter(
            e,
            "meshkv_storage_batches",
            "Batches written (group commits)",
            st.storage.batches,
        )?;
        counter(
            e,
            "meshkv_storage_deferred_batches",
            "Batches written without an fsync of their own (fsynced late)",
            st.storage.deferred_batches,
        )?;
        counter(
            e,
            "meshkv_storage_bytes_written",
            "Key and value bytes handed to the store",
            st.storage.bytes_written,
        )?;
        gauge(
            e,
            "meshkv_storage_last_sync_seconds",
            "Duration of the last flush + fsync",
            st.storage.last_sync_micros as f64 / 1e6,
        )?;
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        gauge(
            e,
            "meshkv_ready",
            "1 once the server caught up after its start and serves clients",
            flag(st.ready),
        )?;
        gauge(
            e,
            "meshkv_disk_full",
            "1 while the data directory is below its free-space reserve (writes refused)",
            flag(st.disk_full),
        )?;
        counter(
            e,
            "meshkv_clock_ahead_refused",
            "Timestamps from peers or clients beyond the clock-offset bound (did not move the clock)",
            st.clock.ahead_refused,
        )?;
        gauge(
            e,
            "meshkv_clock_max_ahead_seconds",
            "Largest lead of such a timestamp over this server's clock",
            st.clock.max_ahead_ms as f64 / 1e3,
        )?;
        counter(
            e,
            "meshkv_duplicate_ids_refused",
            "Connections refused because a live server already has that id",
            st.duplicates_refused,
        )?;
        use MetricType::{Counter as C, Gauge as G};
        let f = |v: u64| Some(v as f64);
        per_peer(
            e,
            &st,
            "meshkv_peer_up",
            "1 when the link to the peer is up",
            G,
            |p| Some(if p.link == "up" { 1.0 } else { 0.0 }),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_replication_lag_writes",
            "Writes held here that the peer has not reported holding",
            G,
            |p| p.lag.map(|l| l as f64),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_peer_bytes_sent",
            "Bytes sent to the peer",
            C,
            |p| f(p.bytes_sent),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_peer_bytes_received",
            "Bytes received from the peer",
            C,
            |p| f(p.bytes_received),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_peer_pushes_sent",
            "Eager pushes sent",
            C,
            |p| f(p.pushes_sent),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_peer_pushes_dropped",
            "Pushes dropped because the peer's queue was full (anti-entropy delivers them)",
            C,
            |p| f(p.pushes_dropped),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_peer_pushes_received",
            "Eager pushes received",
            C,
            |p| f(p.pushes_received),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_catchup_keys_received",
            "Keys received by anti-entropy",
            C,
            |p| f(p.catchup_keys_received),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_catchup_bytes_received",
            "Bytes received by anti-entropy",
            C,
            |p| f(p.catchup_bytes_received),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_catchup_keys_sent",
            "Keys sent by anti-entropy",
            C,
            |p| f(p.catchup_keys_sent),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_catchup_bytes_sent",
            "Bytes sent by anti-entropy",
            C,
            |p| f(p.catchup_bytes_sent),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_sync_rounds",
            "Anti-entropy rounds completed",
            C,
            |p| f(p.sync_rounds),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_tree_walks",
            "Digest-tree walks run",
            C,
            |p| f(p.walks),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_peer_connects",
            "Connections established",
            C,
            |p| f(p.connects),
        )?;
        per_peer(
            e,
            &st,
            "meshkv_peer_last_sync_timestamp_seconds",
            "Unix time of the last good anti-entropy round",
            G,
            |p| (p.last_sync_ok_ms > 0).then(|| p.last_sync_ok_ms as f64 / 1e3),
        )?;
        Ok(())
    }
}
