//! The live dashboard (`GET /ui`) in a real headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API (plain HTTP on 127.0.0.1, no client library):
//! three `meshkv serve` processes; the page must show the healthy mesh (every server
//! `up`, every link `up`, digests agreeing), then — server 2 killed by pid — links 0–2
//! and 1–2 down, server 2 unreachable and the change in its event log, then the healed
//! mesh once server 2 is back, and finally "disconnected" when the server the page is
//! loaded from goes away. It reads the page only through its documented hooks
//! (`data-server`, `data-link`, `#digest-state`, `#conn-state`, `#log`) and saves
//! screenshots of the healthy and the partitioned mesh to
//! `target/test-artifacts/dashboard-{healthy,partition}.png`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `chromium`,
//! `chromium-driver`). Without them the test is skipped with a message, unless
//! `MESHKV_REQUIRE_BROWSER` is set (CI), where it fails.
//!
//! chromedriver runs in a process group of its own, with the browser it starts; the
//! group is killed on drop, pass or fail, and the cluster's servers by their pid guards.

mod support;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use meshkv_node::cli::{Endpoint, HttpClient, Method};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show a change.
const SHOW_WITHIN: Duration = Duration::from_secs(20);

/// A chromedriver process in its own process group; the group (chromedriver and every
/// browser process it started) is killed on drop.
struct Chromedriver {
    child: Child,
    ep: Endpoint,
    http: HttpClient,
    /// The browser's profile and crash database, and chromedriver's log.
    dir: tempfile::TempDir,
}

impl Chromedriver {
    /// Start chromedriver on a free loopback port and wait until it is ready.
    async fn start() -> Result<Chromedriver> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("chromedriver.log"))?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // The browser's default profile directory (and with it its crash database)
            // goes into the temp dir, not the user's home.
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER}"))?;
        let mut cd = Chromedriver {
            child,
            ep: Endpoint::parse(&format!("http://127.0.0.1:{port}")).map_err(|e| anyhow!(e))?,
            http: HttpClient::new(None, None, Duration::from_secs(60)),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = cd.child.try_wait()? {
                bail!("chromedriver exited ({st}): {}", cd.log());
            }
            if let Ok(v) = cd.call(Method::GET, "/status", None).await {
                if v["value"]["ready"] == true {
                    return Ok(cd);
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver not ready within 20 s: {}", cd.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// One WebDriver command: the whole JSON answer, or an error naming the command
    /// and WebDriver's error and message.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (headers, body) = match body {
            Some(b) => (
                vec![("content-type", "application/json".to_string())],
                Bytes::from(b.to_string()),
            ),
            None => (vec![], Bytes::new()),
        };
        let r = self
            .http
            .call(&self.ep, method.clone(), path, &headers, body)
            .await
            .map_err(|e| anyhow!("webdriver {method} {path}: {e}"))?;
        let v: Value = serde_json::from_slice(&r.body)
            .with_context(|| format!("webdriver {method} {path}: answer {}", r.line()))?;
        if r.status != 200 {
            bail!(
                "webdriver {method} {path}: {} {}: {}",
                r.status,
                v["value"]["error"],
                v["value"]["message"]
            );
        }
        Ok(v)
    }

    /// A new headless browser session.
    async fn session(&self) -> Result<Session<'_>> {
        let profile = self.dir.path().join("profile");
        std::fs::create_dir_all(&profile)?;
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--window-size=1280,1100",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                },
            },
        });
        let v = self
            .call(Method::POST, "/session", Some(caps))
            .await
            .with_context(|| {
                format!(
                    "creating a browser session; chromedriver log: {}",
                    self.log()
                )
            })?;
        let id = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {v}"))?
            .to_string();
        Ok(Session { cd: self, id })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid; it cannot be reused before the wait.
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals that process group, ours alone.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A browser session; end it with [`Session::delete`] (chromedriver then stops its
/// browser). If a test fails before that, the process group kill takes the browser.
struct Session<'a> {
    cd: &'a Chromedriver,
    id: String,
}

/// What the page shows, read through its test hooks.
#[derive(Debug)]
struct View {
    /// Server id -> `data-state`.
    servers: BTreeMap<String, String>,
    /// Server id -> `data-keys` (reachable servers only).
    keys: BTreeMap<String, String>,
    /// `a-b` -> `data-state`.
    links: BTreeMap<String, String>,
    /// `a-b` -> `data-lag` (when an end reports it).
    lags: BTreeMap<String, String>,
    agree: String,
    conn: String,
    banner: bool,
    /// `data-event` of each log entry, newest first.
    log: Vec<String>,
}

/// Reads the hooks (the contract documented at the top of the page).
const VIEW_JS: &str = r##"
const all = (s) => Array.from(document.querySelectorAll(s));
const attr = (s, a) => { const e = document.querySelector(s); return e ? e.getAttribute(a) : null; };
const banner = document.getElementById("banner");
return {
  servers: Object.fromEntries(all("[data-server]").map((e) => [e.getAttribute("data-server"), e.getAttribute("data-state")])),
  keys: Object.fromEntries(all("[data-server][data-keys]").map((e) => [e.getAttribute("data-server"), e.getAttribute("data-keys")])),
  links: Object.fromEntries(all("[data-link]").map((e) => [e.getAttribute("data-link"), e.getAttribute("data-state")])),
  lags: Object.fromEntries(all("[data-link][data-lag]").map((e) => [e.getAttribute("data-link"), e.getAttribute("data-lag")])),
  agree: attr("#digest-state", "data-agree"),
  conn: attr("#conn-state", "data-state"),
  banner: !!banner && !banner.hidden && banner.offsetHeight > 0,
  log: all("#log > *").map((e) => e.getAttribute("data-event") || e.textContent),
};
"##;

impl Session<'_> {
    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let v = self
            .cd
            .call(method, &format!("/session/{}{path}", self.id), body)
            .await?;
        Ok(v["value"].clone())
    }

    async fn open(&self, url: &str) -> Result<()> {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    async fn view(&self) -> Result<View> {
        let v = self
            .cmd(
                Method::POST,
                "/execute/sync",
                Some(json!({ "script": VIEW_JS, "args": [] })),
            )
            .await?;
        let map = |v: &Value| -> BTreeMap<String, String> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, s)| (k.clone(), s.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |v: &Value| v.as_str().unwrap_or("(missing)").to_string();
        Ok(View {
            servers: map(&v["servers"]),
            keys: map(&v["keys"]),
            links: map(&v["links"]),
            lags: map(&v["lags"]),
            agree: text(&v["agree"]),
            conn: text(&v["conn"]),
            banner: v["banner"] == true,
            log: v["log"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default(),
        })
    }

    /// Poll the page (bounded) until `ok` holds for what it shows.
    async fn wait_for(&self, what: &str, ok: impl Fn(&View) -> bool) -> Result<View> {
        let deadline = Instant::now() + SHOW_WITHIN;
        loop {
            let v = self.view().await?;
            if ok(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("the page did not show {what} within {SHOW_WITHIN:?}; it shows {v:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Save a screenshot of the window as `target/test-artifacts/NAME`.
    async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let v = self.cmd(Method::GET, "/screenshot", None).await?;
        let b64 = v.as_str().ok_or_else(|| anyhow!("no screenshot in {v}"))?;
        let png = base64_decode(b64)?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            bail!("the screenshot is not a PNG");
        }
        let dir = artifacts_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, png)?;
        Ok(path)
    }

    async fn delete(self) -> Result<()> {
        self.cd
            .call(Method::DELETE, &format!("/session/{}", self.id), None)
            .await?;
        Ok(())
    }
}

/// `target/test-artifacts` (the parent of the target dir's `tmp`).
fn artifacts_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map(|t| t.join("test-artifacts"))
        .unwrap_or_else(|| tmp.join("test-artifacts"))
}

/// Standard base64 (with padding, as WebDriver sends screenshots).
fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("bad base64 byte {c:#x}"),
        };
        acc = (acc << 6) | u32::from(d);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn state<'a>(m: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    m.get(k).map_or("(absent)", String::as_str)
}

fn healthy(v: &View) -> bool {
    ["0", "1", "2"].iter().all(|s| state(&v.servers, s) == "up")
        && ["0-1", "0-2", "1-2"]
            .iter()
            .all(|l| state(&v.links, l) == "up")
        && v.agree == "true"
        && v.conn == "live"
}

/// Every server reachable and holding `n` keys.
fn keys_everywhere(v: &View, n: usize) -> bool {
    let n = n.to_string();
    ["0", "1", "2"].iter().all(|s| state(&v.keys, s) == n)
}

fn lag(v: &View, link: &str) -> u64 {
    state(&v.lags, link).parse().unwrap_or(0)
}

fn down_or_unknown(v: &View, link: &str) -> bool {
    matches!(state(&v.links, link), "down" | "unknown")
}

fn logged(v: &View, event: &str) -> bool {
    v.log.iter().any(|e| e == event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_server_fail_and_the_mesh_heal() -> Result<()> {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        if std::env::var_os("MESHKV_REQUIRE_BROWSER").is_some() {
            bail!(
                "MESHKV_REQUIRE_BROWSER is set but {} {} missing: install chromium and chromium-driver",
                missing.join(" and "),
                if missing.len() == 1 { "is" } else { "are" }
            );
        }
        println!("dashboard test skipped: install chromium and chromium-driver");
        return Ok(());
    }
    let started = Instant::now();
    let (mut cl, c) = meshed(&vec![NodeCfg::default(); 3]).await?;
    let cd = Chromedriver::start().await?;
    let session = cd.session().await?;
    let result = drive(&mut cl, &c, &session).await;
    // End the session (and with it the browser) whatever happened; the process group
    // kill on drop covers a session that cannot be ended.
    let ended = session.delete().await;
    result?;
    ended?;
    println!("dashboard test: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Put keys `dash{i}` through `ep` (the default, linearizable level).
async fn write_keys(c: &HttpClient, ep: &Endpoint, range: std::ops::Range<usize>) -> Result<()> {
    for i in range {
        let r = put(c, ep, format!("dash{i}").as_bytes(), b"hello", &[]).await?;
        if !matches!(r.status, 200 | 201) {
            bail!("put dash{i}: {} {}", r.status, r.line());
        }
    }
    Ok(())
}

async fn drive(cl: &mut Cluster, c: &HttpClient, s: &Session<'_>) -> Result<()> {
    let e0 = cl.ep(0)?;
    s.open(&format!("{}/ui", e0.url())).await?;

    // The healthy mesh.
    let v = s.wait_for("the healthy mesh", healthy).await?;
    // The negative check: what a page that always said "down" would fail on.
    assert_eq!(state(&v.links, "0-2"), "up", "{v:#?}");
    assert!(!down_or_unknown(&v, "1-2"), "{v:#?}");
    assert_eq!(state(&v.servers, "2"), "up", "{v:#?}");
    assert!(!v.banner, "no disconnection banner while live: {v:#?}");
    assert_eq!(v.servers.len(), 3, "one node per server: {v:#?}");
    assert_eq!(v.links.len(), 3, "one edge per pair: {v:#?}");

    // Some traffic, then the mesh settles: every server holds the 20 keys, every
    // digest the same again.
    write_keys(c, &e0, 0..20).await?;
    let v = s
        .wait_for("20 keys on every server", |v| {
            healthy(v) && keys_everywhere(v, 20)
        })
        .await?;
    assert!(
        !v.log.iter().any(|e| e.starts_with("link-down")),
        "no link went down: {v:#?}"
    );
    let shot = s.screenshot("dashboard-healthy.png").await?;
    println!("saved {}", shot.display());

    // Server 2 dies (killed by pid through its guard).
    cl.nodes[2].proc = None;
    let v = s
        .wait_for("server 2 unreachable, links 0-2 and 1-2 down", |v| {
            state(&v.servers, "2") == "unreachable"
                && down_or_unknown(v, "0-2")
                && down_or_unknown(v, "1-2")
                && logged(v, "server-unreachable 2")
                && logged(v, "link-down 0-2")
        })
        .await?;
    // The lag shown now is what server 2 last reported (reports trail the writes, so it
    // need not be 0); it stays frozen while 2 is down.
    let lag0 = lag(&v, "0-2");
    // Writes server 2 misses (a majority of every key's acceptors is still up): the
    // lag server 0 reports for it grows by each of them.
    write_keys(c, &e0, 20..25).await?;
    let v = s
        .wait_for("link 0-2 lagging by 5 more writes", |v| {
            lag(v, "0-2") >= lag0 + 5 && state(&v.keys, "0") == "25" && down_or_unknown(v, "0-2")
        })
        .await?;
    assert_eq!(state(&v.servers, "0"), "up", "{v:#?}");
    assert_eq!(state(&v.servers, "1"), "up", "{v:#?}");
    assert_eq!(state(&v.links, "0-1"), "up", "{v:#?}");
    assert_eq!(v.conn, "live", "{v:#?}");
    let shot = s.screenshot("dashboard-partition.png").await?;
    println!("saved {}", shot.display());

    // Server 2 comes back: links up, digests agree.
    cl.start(2)?;
    cl.wait_ready(2, c).await?;
    let v = s
        .wait_for("the healed mesh", |v| {
            healthy(v)
                && keys_everywhere(v, 25)
                && ["0-1", "0-2", "1-2"].iter().all(|l| lag(v, l) == 0)
                && logged(v, "server-reachable 2")
                && logged(v, "link-up 0-2")
        })
        .await?;
    assert!(!v.banner, "{v:#?}");

    // The server the page is loaded from goes away: the page says so.
    cl.nodes[0].proc = None;
    let v = s
        .wait_for("the disconnection", |v| {
            v.conn == "disconnected" && v.banner
        })
        .await?;
    assert!(logged(&v, "stream-lost"), "{v:#?}");
    Ok(())
}
