//! libkv739: the CS739 (2012) key-value C API over meshkv's HTTP API.
//!
//! ```c
//! int kv739_init(char **servers);
//! int kv739_fail(char *server);
//! int kv739_recover(char *server);
//! int kv739_get(char *key, char *value);
//! int kv739_put(char *key, char *value, char *old_value);
//! int kv739_shutdown(void);
//! ```
//!
//! The declarations, with their contract, are in `include/kv739.h`. Built as a cdylib
//! (`libkv739.so`; the course harnesses link it as `lib739kv.so`, a copy).
//!
//! # The contract
//!
//! - **Servers.** `kv739_init` takes `"host:port"` strings, the servers' HTTP
//!   addresses (`http://host:port` is accepted too; IPv6 as `[addr]:port`). The list
//!   ends at the first NULL pointer *or* empty string, whichever comes first: nothing
//!   after it is read. An empty list or an unparsable entry returns -1 and leaves any
//!   earlier state alone. Init does not contact the servers. Calling init again
//!   replaces the state (tokens included).
//! - **Failover order.** Each operation goes to the first server, in list order, that
//!   has not been `kv739_fail`ed, and moves on to the next on a transport error
//!   (connection refused, reset, timeout), on `503` (not ready, or no majority for
//!   the key) and on `412 ERR_DEP` (that server has not caught up with this client's
//!   session token even after waiting). When every server failed that way, or all are
//!   marked failed, the call returns -1. Any other answer is final. A request that
//!   broke after it was sent may have been applied; a put is then applied again
//!   elsewhere with the same value.
//! - **fail / recover** are client-side only: they mark a server of the list as not
//!   to be used / usable again (every entry equal to the string). The string is
//!   compared and never kept. An unknown server returns -1.
//! - **Limits.** Keys are 1 to 128 bytes, values at most 2048 bytes, and neither may
//!   contain `[` or `]`. A violation returns -1 before anything is sent. A value
//!   read back (or an old value) longer than 2048 bytes returns -1: the caller's
//!   buffers hold 2048 bytes and a NUL. `value` and `old_value` get the bytes and a
//!   terminating NUL; on `kv739_put` returning 1, `old_value` is set to `""`.
//! - **Results.** get: 0 found, 1 not found, -1 error. put: 0 there was an old value,
//!   1 there was none, -1 error. NULL pointers, calls before init (or after
//!   shutdown) return -1.
//! - **Consistency levels and session tokens.** The library keeps, per key, the newest
//!   version (`X-Meshkv-Version`, compared as `(ts, origin, counter)`) of every answer
//!   it got, in memory. With `MESHKV_CONSISTENCY=session` or `=linearizable` every
//!   request names that level (`X-Meshkv-Consistency`), and the key's token
//!   (`X-Meshkv-After`, with `X-Meshkv-Wait-Ms: 2000`) is sent only at the session
//!   level. Unset, no level is named (the server's default level, linearizable as
//!   shipped) and the level the answers echo is remembered: once an answer says
//!   `session`, requests carry the key's token and name the session level; while
//!   answers say `linearizable` no token is sent (a token would downgrade the request
//!   to the session level). One client process so gets Read-Your-Writes and
//!   Monotonic-Reads at the session level and linearizability at the default level.
//!   Another value of `MESHKV_CONSISTENCY` makes init return -1.
//! - **Environment.** `MESHKV_TOKEN`: sent as `Authorization: Bearer <token>`.
//!   `KV739_TIMEOUT_MS`: the whole-request timeout (default 5000 ms; connecting is
//!   bounded by 1 s, or the request timeout if smaller). `KV739_DEBUG`: one line on
//!   stderr per failed attempt or refused call. Without it the library never writes
//!   to stdout or stderr. The environment is read by `kv739_init`.
//! - **Threads and processes.** Every call takes one global lock, so calls are
//!   thread-safe (and serialized). HTTP is plain, synchronous (`ureq`, no background
//!   thread) and opens a new connection per request (no pool), so a process that
//!   forks after init shares no socket with its child.
//! - **No unwinding across the boundary.** Every entry point runs under
//!   `catch_unwind` and returns -1 if anything panicked.

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 128;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 2048;
/// How long a server may wait for replication before answering `ERR_DEP`, sent with
/// every request that carries a session token.
pub const WAIT_MS: u64 = 2000;
/// Default whole-request timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// Connect timeout (capped by the request timeout).
pub const CONNECT_TIMEOUT_MS: u64 = 1000;
/// More entries than this in the server list is an error (a list without terminator).
pub const MAX_SERVERS: usize = 1024;
/// Largest answer body read (the server's own value limit is 1 MiB).
const MAX_BODY: u64 = 2 * 1024 * 1024;

const AFTER: &str = "X-Meshkv-After";
const WAIT: &str = "X-Meshkv-Wait-Ms";
const VERSION: &str = "X-Meshkv-Version";
const CONSISTENCY: &str = "X-Meshkv-Consistency";

/// Bytes sent as-is in a key's path segment: ASCII alphanumerics and `-._~`.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The path of a key: `/kv/` and the key, percent-encoded.
pub fn kv_path(key: &[u8]) -> String {
    format!("/kv/{}", percent_encode(key, KEY_SET))
}

/// A version as meshkv prints it: `<ts>.<origin>.<counter>`; ordered by
/// `(ts, origin, counter)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub ts: u64,
    pub origin: u64,
    pub counter: u64,
}

impl std::str::FromStr for Version {
    type Err = ();
    fn from_str(s: &str) -> Result<Version, ()> {
        let mut parts = s.trim().split('.');
        let mut next = || -> Result<u64, ()> {
            let p = parts.next().ok_or(())?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            p.parse().map_err(|_| ())
        };
        let v = Version {
            ts: next()?,
            origin: next()?,
            counter: next()?,
        };
        if parts.next().is_some() {
            return Err(());
        }
        Ok(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.ts, self.origin, self.counter)
    }
}

/// A consistency level of meshkv.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Session,
    Linearizable,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Session => "session",
            Level::Linearizable => "linearizable",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        match s.trim() {
            "session" => Some(Level::Session),
            "linearizable" => Some(Level::Linearizable),
            _ => None,
        }
    }
}

/// How the level of each request is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `MESHKV_CONSISTENCY` names the level: sent with every request.
    Fixed(Level),
    /// The server's default level; `seen`: the level the last answer echoed.
    Auto { seen: Option<Level> },
}

impl Mode {
    /// The level header to send, and whether to send the key's session token.
    pub fn request_level(self) -> (Option<Level>, bool) {
        match self {
            Mode::Fixed(Level::Session)
            | Mode::Auto {
                seen: Some(Level::Session),
            } => (Some(Level::Session), true),
            Mode::Fixed(Level::Linearizable) => (Some(Level::Linearizable), false),
            Mode::Auto { .. } => (None, false),
        }
    }

    /// Take note of the level an answer was served at.
    pub fn observe(&mut self, echoed: Option<Level>) {
        if let (Mode::Auto { seen }, Some(level)) = (self, echoed) {
            *seen = Some(level);
        }
    }
}

/// One entry of the server list.
#[derive(Clone, Debug)]
struct Server {
    /// The entry as given (compared by fail/recover).
    name: String,
    /// `http://host:port`.
    base: String,
    failed: bool,
}

impl Server {
    fn new(name: &str, base: String) -> Server {
        Server {
            name: name.to_string(),
            base,
            failed: false,
        }
    }
}

/// Parse one server entry: `host:port`, `[v6]:port` or `http://` and either.
pub fn parse_server(s: &str) -> Option<String> {
    let rest = s.strip_prefix("http://").unwrap_or(s);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest
            .bytes()
            .any(|b| !b.is_ascii_graphic() || b"/?#@\\".contains(&b))
    {
        return None;
    }
    let (host, port) = rest.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    if port == 0 {
        return None;
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
    } else if host.is_empty() || host.contains(['[', ']', ':']) {
        return None;
    }
    Some(format!("http://{host}:{port}"))
}

/// Why a key or value is refused, if it is.
pub fn check_key(key: &[u8]) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    if key.len() > MAX_KEY {
        return Err("key longer than 128 bytes");
    }
    if key.contains(&b'[') || key.contains(&b']') {
        return Err("key contains [ or ]");
    }
    Ok(())
}

/// Why a value is refused, if it is.
pub fn check_value(value: &[u8]) -> Result<(), &'static str> {
    if value.len() > MAX_VALUE {
        return Err("value longer than 2048 bytes");
    }
    if value.contains(&b'[') || value.contains(&b']') {
        return Err("value contains [ or ]");
    }
    Ok(())
}

/// A final answer of one server.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

/// The library's state between init and shutdown.
struct State {
    servers: Vec<Server>,
    agent: ureq::Agent,
    mode: Mode,
    tokens: HashMap<Vec<u8>, Version>,
    auth: Option<String>,
    debug: bool,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<State>> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn debug_env() -> bool {
    std::env::var_os("KV739_DEBUG").is_some()
}

/// One line on stderr, only with `KV739_DEBUG`.
fn log(debug: bool, msg: std::fmt::Arguments<'_>) {
    if debug {
        eprintln!("kv739: {msg}");
    }
}

/// Run an entry point: a panic becomes -1.
fn guarded(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(-1)
}

/// The bytes of a C string, or `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        Some(CStr::from_ptr(p).to_bytes())
    }
}

/// Copy `data` and a NUL into the caller's buffer of `MAX_VALUE + 1` bytes.
///
/// # Safety
/// `dst` points to at least `data.len() + 1` writable bytes.
unsafe fn copy_out(dst: *mut c_char, data: &[u8]) {
    std::ptr::copy_nonoverlapping(data.as_ptr(), dst.cast::<u8>(), data.len());
    *dst.add(data.len()) = 0;
}

/// Read the environment into a configuration; `Err` names what is wrong.
fn config_from_env() -> Result<(Mode, Option<String>, Duration), String> {
    let mode = match std::env::var("MESHKV_CONSISTENCY") {
        Err(std::env::VarError::NotPresent) => Mode::Auto { seen: None },
        Ok(v) if v.trim().is_empty() => Mode::Auto { seen: None },
        Ok(v) => Mode::Fixed(
            Level::parse(&v)
                .ok_or_else(|| format!("MESHKV_CONSISTENCY={v:?}: use session or linearizable"))?,
        ),
        Err(e) => return Err(format!("MESHKV_CONSISTENCY: {e}")),
    };
    let auth = match std::env::var("MESHKV_TOKEN") {
        Err(std::env::VarError::NotPresent) => None,
        Ok(t) => {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("MESHKV_TOKEN: empty or not printable ASCII".into());
            }
            Some(format!("Bearer {t}"))
        }
        Err(e) => return Err(format!("MESHKV_TOKEN: {e}")),
    };
    let timeout = match std::env::var("KV739_TIMEOUT_MS") {
        Err(std::env::VarError::NotPresent) => DEFAULT_TIMEOUT_MS,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => ms,
            _ => return Err(format!("KV739_TIMEOUT_MS={v:?}: not a positive integer")),
        },
        Err(e) => return Err(format!("KV739_TIMEOUT_MS: {e}")),
    };
    Ok((mode, auth, Duration::from_millis(timeout)))
}

fn agent(timeout: Duration) -> ureq::Agent {
    let connect = timeout.min(Duration::from_millis(CONNECT_TIMEOUT_MS));
    let config = ureq::Agent::config_builder()
        // 4xx and 5xx are answers, not transport errors.
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .timeout_global(Some(timeout))
        // A new connection per request: no stale pooled connection to a restarted
        // server, no socket shared with a forked child.
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .max_redirects(0)
        .user_agent(concat!("libkv739/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::new_with_config(config)
}

impl State {
    fn new(
        servers: Vec<Server>,
        mode: Mode,
        auth: Option<String>,
        timeout: Duration,
        debug: bool,
    ) -> State {
        State {
            servers,
            agent: agent(timeout),
            mode,
            tokens: HashMap::new(),
            auth,
            debug,
        }
    }

    /// One request for `key`, with failover; `None` when no server gave a final answer.
    fn request(&mut self, key: &[u8], put: Option<&[u8]>) -> Option<Reply> {
        let path = kv_path(key);
        for i in 0..self.servers.len() {
            if self.servers[i].failed {
                continue;
            }
            let url = format!("{}{path}", self.servers[i].base);
            let (level, send_token) = self.mode.request_level();
            let token = if send_token {
                self.tokens.get(key).copied()
            } else {
                None
            };
            let mut headers: Vec<(&str, String)> = Vec::new();
            if let Some(l) = level {
                headers.push((CONSISTENCY, l.name().to_string()));
            }
            if let Some(t) = token {
                headers.push((AFTER, t.to_string()));
                headers.push((WAIT, WAIT_MS.to_string()));
            }
            if let Some(a) = &self.auth {
                headers.push(("Authorization", a.clone()));
            }
            let result = match put {
                Some(value) => {
                    let mut req = self.agent.put(&url);
                    for (k, v) in &headers {
                        req = req.header(*k, v.as_str());
                    }
                    req.send(value)
                }
                None => {
                    let mut req = self.agent.get(&url);
                    for (k, v) in &headers {
                        req = req.header(*k, v.as_str());
                    }
                    req.call()
                }
            };
            let name = &self.servers[i].name;
            let mut resp = match result {
                Ok(r) => r,
                Err(e) => {
                    log(
                        self.debug,
                        format_args!("{name}: {e}; trying the next server"),
                    );
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let header = |h: &str| -> Option<String> {
                resp.headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let version = header(VERSION).and_then(|v| v.parse::<Version>().ok());
            let echoed = header(CONSISTENCY).and_then(|l| Level::parse(&l));
            let body = match resp.body_mut().with_config().limit(MAX_BODY).read_to_vec() {
                Ok(b) => b,
                Err(e) => {
                    log(
                        self.debug,
                        format_args!("{name}: answer {status} broke: {e}; trying the next server"),
                    );
                    continue;
                }
            };
            self.mode.observe(echoed);
            if let Some(v) = version {
                if matches!(status, 200 | 201 | 404) {
                    let slot = self.tokens.entry(key.to_vec()).or_insert(v);
                    if v > *slot {
                        *slot = v;
                    }
                }
            }
            let dep = status == 412 && body.starts_with(b"ERR_DEP");
            if status == 503 || dep {
                log(
                    self.debug,
                    format_args!(
                        "{name}: {status} {}; trying the next server",
                        String::from_utf8_lossy(&body).trim()
                    ),
                );
                continue;
            }
            return Some(Reply { status, body });
        }
        log(self.debug, format_args!("no server could answer"));
        None
    }

    /// Read `key` (checked): `Ok(Some(value))`, `Ok(None)` when it has none.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let reply = self.request(key, None).ok_or(())?;
        match reply.status {
            200 if reply.body.len() <= MAX_VALUE => Ok(Some(reply.body)),
            404 if reply.body.starts_with(b"ERR_KEY") => Ok(None),
            _ => {
                self.refused("get", &reply);
                Err(())
            }
        }
    }

    /// Write `value` under `key` (both checked): `Ok(Some(previous))`, `Ok(None)`
    /// when there was none.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let reply = self.request(key, Some(value)).ok_or(())?;
        match reply.status {
            200 if reply.body.len() <= MAX_VALUE => Ok(Some(reply.body)),
            201 => Ok(None),
            _ => {
                self.refused("put", &reply);
                Err(())
            }
        }
    }

    /// Log an answer the call cannot use.
    fn refused(&self, what: &str, reply: &Reply) {
        let shown = &reply.body[..reply.body.len().min(200)];
        log(
            self.debug,
            format_args!(
                "{what}: answer {} ({} bytes) {}",
                reply.status,
                reply.body.len(),
                String::from_utf8_lossy(shown).trim()
            ),
        );
    }
}

/// Start the library on a list of servers (see the crate docs).
///
/// # Safety
/// `servers` is NULL or an array of string pointers ending at a NULL pointer or an
/// empty string.
#[no_mangle]
pub unsafe extern "C" fn kv739_init(servers: *mut *mut c_char) -> c_int {
    guarded(|| {
        let debug = debug_env();
        if servers.is_null() {
            log(debug, format_args!("init: NULL server list"));
            return -1;
        }
        let mut list = Vec::new();
        for i in 0.. {
            if i >= MAX_SERVERS {
                log(
                    debug,
                    format_args!("init: no terminator in {MAX_SERVERS} entries"),
                );
                return -1;
            }
            let p = *servers.add(i);
            let Some(entry) = bytes(p) else { break };
            if entry.is_empty() {
                break;
            }
            let parsed = std::str::from_utf8(entry)
                .ok()
                .and_then(|s| parse_server(s).map(|base| (s, base)));
            let Some((name, base)) = parsed else {
                log(
                    debug,
                    format_args!(
                        "init: {:?} is not host:port",
                        String::from_utf8_lossy(entry)
                    ),
                );
                return -1;
            };
            list.push(Server::new(name, base));
        }
        if list.is_empty() {
            log(debug, format_args!("init: empty server list"));
            return -1;
        }
        let (mode, auth, timeout) = match config_from_env() {
            Ok(c) => c,
            Err(e) => {
                log(debug, format_args!("init: {e}"));
                return -1;
            }
        };
        *lock() = Some(State::new(list, mode, auth, timeout, debug));
        0
    })
}

/// Mark every entry equal to `server` failed (or not); -1 if there is none.
unsafe fn set_failed(server: *const c_char, failed: bool, what: &str) -> c_int {
    let mut guard = lock();
    let Some(state) = guard.as_mut() else {
        log(debug_env(), format_args!("{what}: not initialized"));
        return -1;
    };
    let Some(name) = bytes(server) else {
        log(state.debug, format_args!("{what}: NULL server"));
        return -1;
    };
    let mut found = false;
    for s in state.servers.iter_mut() {
        if s.name.as_bytes() == name {
            s.failed = failed;
            found = true;
        }
    }
    if !found {
        log(
            state.debug,
            format_args!("{what}: unknown server {:?}", String::from_utf8_lossy(name)),
        );
        return -1;
    }
    0
}

/// Stop using `server` (client-side only). 0 ok, -1 unknown server.
///
/// # Safety
/// `server` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kv739_fail(server: *mut c_char) -> c_int {
    guarded(|| set_failed(server, true, "fail"))
}

/// Use `server` again. 0 ok, -1 unknown server.
///
/// # Safety
/// `server` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kv739_recover(server: *mut c_char) -> c_int {
    guarded(|| set_failed(server, false, "recover"))
}

/// Read `key` into `value` (at most 2048 bytes and a NUL). 0 found, 1 not found,
/// -1 error.
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `value` is NULL or points to at least
/// 2049 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn kv739_get(key: *mut c_char, value: *mut c_char) -> c_int {
    guarded(|| {
        let mut guard = lock();
        let Some(state) = guard.as_mut() else {
            log(debug_env(), format_args!("get: not initialized"));
            return -1;
        };
        let (Some(key), false) = (bytes(key), value.is_null()) else {
            log(state.debug, format_args!("get: NULL argument"));
            return -1;
        };
        if let Err(e) = check_key(key) {
            log(state.debug, format_args!("get: {e}"));
            return -1;
        }
        match state.get(key) {
            Ok(Some(v)) => {
                copy_out(value, &v);
                0
            }
            Ok(None) => 1,
            Err(()) => -1,
        }
    })
}

/// Write `value` under `key`; the previous value goes to `old_value` (at most 2048
/// bytes and a NUL). 0 there was an old value, 1 there was none, -1 error.
///
/// # Safety
/// `key` and `value` are NULL or NUL-terminated strings; `old_value` is NULL or
/// points to at least 2049 writable bytes.
#[no_mangle]
pub unsafe extern "C" fn kv739_put(
    key: *mut c_char,
    value: *mut c_char,
    old_value: *mut c_char,
) -> c_int {
    guarded(|| {
        let mut guard = lock();
        let Some(state) = guard.as_mut() else {
            log(debug_env(), format_args!("put: not initialized"));
            return -1;
        };
        let (Some(key), Some(value), false) = (bytes(key), bytes(value), old_value.is_null())
        else {
            log(state.debug, format_args!("put: NULL argument"));
            return -1;
        };
        if let Err(e) = check_key(key).and_then(|()| check_value(value)) {
            log(state.debug, format_args!("put: {e}"));
            return -1;
        }
        match state.put(key, value) {
            Ok(Some(old)) => {
                copy_out(old_value, &old);
                0
            }
            Ok(None) => {
                copy_out(old_value, b"");
                1
            }
            Err(()) => -1,
        }
    })
}

/// Drop the state (server list, tokens). 0 ok, -1 if not initialized; init may be
/// called again.
#[no_mangle]
pub extern "C" fn kv739_shutdown() -> c_int {
    guarded(|| match lock().take() {
        Some(_) => 0,
        None => {
            log(debug_env(), format_args!("shutdown: not initialized"));
            -1
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::ptr::null_mut;

    /// The tests share the library's global state: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        kv739_shutdown();
        g
    }

    /// An owned NULL-terminated `char *[]`.
    struct List {
        _strings: Vec<CString>,
        ptrs: Vec<*mut c_char>,
    }

    fn list(entries: &[&str]) -> List {
        let strings: Vec<CString> = entries
            .iter()
            .map(|s| CString::new(*s).expect("no NUL in test strings"))
            .collect();
        let mut ptrs: Vec<*mut c_char> = strings.iter().map(|s| s.as_ptr().cast_mut()).collect();
        ptrs.push(null_mut());
        List {
            _strings: strings,
            ptrs,
        }
    }

    fn init(entries: &[&str]) -> c_int {
        let mut l = list(entries);
        unsafe { kv739_init(l.ptrs.as_mut_ptr()) }
    }

    fn c(s: &str) -> CString {
        CString::new(s).expect("no NUL in test strings")
    }

    fn get(key: &str) -> c_int {
        let k = c(key);
        let mut buf = vec![0 as c_char; MAX_VALUE + 1];
        unsafe { kv739_get(k.as_ptr().cast_mut(), buf.as_mut_ptr()) }
    }

    fn put(key: &str, value: &str) -> c_int {
        let (k, v) = (c(key), c(value));
        let mut buf = vec![0 as c_char; MAX_VALUE + 1];
        unsafe {
            kv739_put(
                k.as_ptr().cast_mut(),
                v.as_ptr().cast_mut(),
                buf.as_mut_ptr(),
            )
        }
    }

    fn fail(s: &str) -> c_int {
        let s = c(s);
        unsafe { kv739_fail(s.as_ptr().cast_mut()) }
    }

    fn recover(s: &str) -> c_int {
        let s = c(s);
        unsafe { kv739_recover(s.as_ptr().cast_mut()) }
    }

    #[test]
    fn every_call_before_init_returns_minus_one() {
        let _g = serial();
        assert_eq!(get("k"), -1);
        assert_eq!(put("k", "v"), -1);
        assert_eq!(fail("127.0.0.1:1"), -1);
        assert_eq!(recover("127.0.0.1:1"), -1);
        assert_eq!(kv739_shutdown(), -1);
    }

    #[test]
    fn init_refuses_empty_and_unparsable_lists() {
        let _g = serial();
        assert_eq!(unsafe { kv739_init(null_mut()) }, -1);
        assert_eq!(init(&[]), -1);
        assert_eq!(init(&[""]), -1);
        assert_eq!(init(&["", "127.0.0.1:1"]), -1);
        for bad in [
            "nonsense",
            "host:",
            ":80",
            "h:0",
            "h:99999",
            "h:port",
            "h:+80",
            "a b:80",
            "::1:80",
            "[::1:80",
            "[nothost]:80",
            "https://h:80",
            "h:80/path",
        ] {
            assert_eq!(init(&[bad]), -1, "{bad:?}");
            assert_eq!(init(&["127.0.0.1:1", bad]), -1, "{bad:?} second");
        }
        assert_eq!(get("k"), -1, "a refused init leaves no state");
    }

    #[test]
    fn the_list_ends_at_the_first_empty_string() {
        let _g = serial();
        assert_eq!(
            init(&["127.0.0.1:1", "", "not an address", "127.0.0.1:2"]),
            0
        );
        assert_eq!(fail("127.0.0.1:2"), -1, "past the empty string: unknown");
        assert_eq!(fail("not an address"), -1);
        assert_eq!(fail("127.0.0.1:1"), 0);
        assert_eq!(recover("127.0.0.1:1"), 0);
        assert_eq!(kv739_shutdown(), 0);
        assert_eq!(kv739_shutdown(), -1);
    }

    #[test]
    fn arguments_are_checked_before_anything_is_sent() {
        let _g = serial();
        assert_eq!(
            init(&["127.0.0.1:1", "localhost:2", "[::1]:3", "http://h:4"]),
            0
        );
        let k = c("k");
        let v = c("v");
        let mut buf = vec![0 as c_char; MAX_VALUE + 1];
        unsafe {
            assert_eq!(kv739_get(null_mut(), buf.as_mut_ptr()), -1);
            assert_eq!(kv739_get(k.as_ptr().cast_mut(), null_mut()), -1);
            assert_eq!(
                kv739_put(null_mut(), v.as_ptr().cast_mut(), buf.as_mut_ptr()),
                -1
            );
            assert_eq!(
                kv739_put(k.as_ptr().cast_mut(), null_mut(), buf.as_mut_ptr()),
                -1
            );
            assert_eq!(
                kv739_put(k.as_ptr().cast_mut(), v.as_ptr().cast_mut(), null_mut()),
                -1
            );
            assert_eq!(kv739_fail(null_mut()), -1);
            assert_eq!(kv739_recover(null_mut()), -1);
        }
        assert_eq!(fail("127.0.0.1:9"), -1);
        assert_eq!(recover("somewhere:1"), -1);
        for s in ["127.0.0.1:1", "localhost:2", "[::1]:3", "http://h:4"] {
            assert_eq!(fail(s), 0, "{s}");
        }
        // Every server failed: -1 without a network attempt.
        assert_eq!(get("k"), -1);
        assert_eq!(put("k", "v"), -1);
        assert_eq!(kv739_shutdown(), 0);

        assert_eq!(check_key(&[b'k'; MAX_KEY]), Ok(()));
        assert!(check_key(&[b'k'; MAX_KEY + 1]).is_err());
        assert!(check_key(b"").is_err());
        assert!(check_key(b"a[b").is_err());
        assert!(check_key(b"a]b").is_err());
        assert_eq!(check_value(&[b'v'; MAX_VALUE]), Ok(()));
        assert_eq!(check_value(b""), Ok(()));
        assert!(check_value(&[b'v'; MAX_VALUE + 1]).is_err());
        assert!(check_value(b"[").is_err());
        assert!(check_value(b"]").is_err());
    }

    #[test]
    fn limits_and_unreachable_servers_give_minus_one() {
        let _g = serial();
        assert_eq!(init(&["127.0.0.1:1"]), 0);
        let long_key = "k".repeat(MAX_KEY + 1);
        let long_value = "v".repeat(MAX_VALUE + 1);
        assert_eq!(get(&long_key), -1);
        assert_eq!(put(&long_key, "v"), -1);
        assert_eq!(put("k", &long_value), -1);
        assert_eq!(put("a[b", "v"), -1);
        assert_eq!(put("k", "v]"), -1);
        assert_eq!(get(""), -1);
        // Well-formed, but nothing listens on port 1.
        assert_eq!(get("k"), -1);
        assert_eq!(put("k", "v"), -1);
        assert_eq!(kv739_shutdown(), 0);
    }

    /// A request as a fake server saw it (header names in lower case).
    #[derive(Debug)]
    struct Seen {
        method: String,
        path: String,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(String::as_str)
        }
    }

    /// An answer of a fake server: status, body, extra headers.
    type Answer = (u16, &'static str, Vec<(&'static str, &'static str)>);

    /// A fake meshkv HTTP server on 127.0.0.1: it answers one connection per scripted
    /// answer, in order (the library opens one per request), then closes its port.
    struct Fake {
        addr: String,
        thread: std::thread::JoinHandle<Vec<Seen>>,
    }

    impl Fake {
        fn start(script: Vec<Answer>) -> Fake {
            use std::io::{BufRead, BufReader, Read, Write};
            use std::time::Instant;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("local addr").to_string();
            listener.set_nonblocking(true).expect("nonblocking");
            let thread = std::thread::spawn(move || {
                let mut seen = Vec::new();
                for (status, body, headers) in script {
                    // Bounded wait for the next connection.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let stream = loop {
                        match listener.accept() {
                            Ok((s, _)) => break s,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    && Instant::now() < deadline =>
                            {
                                std::thread::sleep(Duration::from_millis(2))
                            }
                            Err(_) => return seen,
                        }
                    };
                    stream.set_nonblocking(false).expect("blocking");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let mut r = BufReader::new(stream);
                    let mut line = String::new();
                    r.read_line(&mut line).expect("request line");
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let mut hs = HashMap::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).expect("header line");
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            hs.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len: usize = hs
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut req_body = vec![0; len];
                    r.read_exact(&mut req_body).expect("body");
                    seen.push(Seen {
                        method,
                        path,
                        headers: hs,
                        body: req_body,
                    });
                    let mut out = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    out.push_str(body);
                    let mut stream = r.into_inner();
                    stream.write_all(out.as_bytes()).expect("answer");
                }
                seen
            });
            Fake { addr, thread }
        }

        fn join(self) -> Vec<Seen> {
            self.thread.join().expect("fake server thread")
        }
    }

    fn state(addrs: &[&str], mode: Mode, auth: Option<&str>) -> State {
        let servers = addrs
            .iter()
            .map(|a| Server::new(a, parse_server(a).expect("test address")))
            .collect();
        State::new(
            servers,
            mode,
            auth.map(str::to_string),
            Duration::from_secs(5),
            false,
        )
    }

    fn v(s: &str) -> Version {
        s.parse().expect("test version")
    }

    #[test]
    fn answers_saying_session_turn_on_the_token_and_keep_the_newest_version() {
        let ses = |version: &'static str| {
            let mut h = vec![("X-Meshkv-Consistency", "session")];
            if !version.is_empty() {
                h.push(("X-Meshkv-Version", version));
            }
            h
        };
        let fake = Fake::start(vec![
            (201, "", ses("10.1.1")),
            (200, "v1", ses("10.1.1")),
            (200, "v1", ses("9.5.5")),
            (200, "old", ses("11.0.0")),
            (404, "ERR_KEY", ses("")),
        ]);
        let mut st = state(&[&fake.addr], Mode::Auto { seen: None }, Some("Bearer t"));
        assert_eq!(st.put(b"k", b"v1"), Ok(None));
        assert_eq!(st.get(b"k"), Ok(Some(b"v1".to_vec())));
        assert_eq!(st.get(b"k"), Ok(Some(b"v1".to_vec())));
        assert_eq!(st.put(b"k", b"v2"), Ok(Some(b"old".to_vec())));
        assert_eq!(st.get(b"a b/c"), Ok(None));
        assert_eq!(st.tokens.get(&b"k"[..]), Some(&v("11.0.0")));
        let seen = fake.join();
        assert_eq!(seen.len(), 5);
        let first = &seen[0];
        assert_eq!(
            (first.method.as_str(), first.path.as_str()),
            ("PUT", "/kv/k")
        );
        assert_eq!(first.body, b"v1");
        assert_eq!(first.header("authorization"), Some("Bearer t"));
        assert_eq!(first.header("x-meshkv-consistency"), None);
        assert_eq!(first.header("x-meshkv-after"), None);
        for (i, token) in [(1, "10.1.1"), (2, "10.1.1"), (3, "10.1.1")] {
            let r = &seen[i];
            assert_eq!(r.header("x-meshkv-consistency"), Some("session"), "{r:?}");
            assert_eq!(r.header("x-meshkv-after"), Some(token), "{r:?}");
            assert_eq!(r.header("x-meshkv-wait-ms"), Some("2000"), "{r:?}");
        }
        assert_eq!(seen[3].method, "PUT");
        assert_eq!(seen[3].body, b"v2");
        assert_eq!(seen[4].method, "GET");
        assert_eq!(seen[4].path, "/kv/a%20b%2Fc");
        assert_eq!(seen[4].header("x-meshkv-consistency"), Some("session"));
        assert_eq!(
            seen[4].header("x-meshkv-after"),
            None,
            "no token for that key"
        );
    }

    #[test]
    fn no_token_is_sent_at_the_linearizable_level() {
        let lin = || {
            vec![
                ("X-Meshkv-Consistency", "linearizable"),
                ("X-Meshkv-Version", "5.1.1"),
            ]
        };
        for (mode, level) in [
            (Mode::Auto { seen: None }, None),
            (Mode::Fixed(Level::Linearizable), Some("linearizable")),
        ] {
            let fake = Fake::start(vec![(201, "", lin()), (200, "x", lin())]);
            let mut st = state(&[&fake.addr], mode, None);
            assert_eq!(st.put(b"k", b"x"), Ok(None));
            assert_eq!(st.get(b"k"), Ok(Some(b"x".to_vec())));
            for r in fake.join() {
                assert_eq!(r.header("x-meshkv-consistency"), level, "{r:?}");
                assert_eq!(r.header("x-meshkv-after"), None, "{r:?}");
                assert_eq!(r.header("authorization"), None, "{r:?}");
            }
        }
        // Named session level: the token from the first answer on.
        let fake = Fake::start(vec![
            (201, "", vec![("X-Meshkv-Version", "5.1.1")]),
            (200, "x", vec![]),
        ]);
        let mut st = state(&[&fake.addr], Mode::Fixed(Level::Session), None);
        assert_eq!(st.put(b"k", b"x"), Ok(None));
        assert_eq!(st.get(b"k"), Ok(Some(b"x".to_vec())));
        let seen = fake.join();
        assert_eq!(seen[0].header("x-meshkv-consistency"), Some("session"));
        assert_eq!(seen[0].header("x-meshkv-after"), None);
        assert_eq!(seen[1].header("x-meshkv-consistency"), Some("session"));
        assert_eq!(seen[1].header("x-meshkv-after"), Some("5.1.1"));
        assert_eq!(seen[1].header("x-meshkv-wait-ms"), Some("2000"));
    }

    #[test]
    fn failover_on_unreachable_503_and_err_dep_but_not_on_other_answers() {
        let long: &'static str = "v".repeat(MAX_VALUE + 1).leak();
        let a = Fake::start(vec![
            (503, "ERR_NOT_READY", vec![]),
            (412, "ERR_DEP", vec![]),
            (400, "bad request", vec![]),
            (200, long, vec![]),
            (412, "ERR_PRECONDITION", vec![]),
        ]);
        let b = Fake::start(vec![(200, "b", vec![]), (404, "ERR_KEY", vec![])]);
        // Nothing listens on port 1: connection refused, the next one is tried.
        let mut st = state(
            &["127.0.0.1:1", &a.addr, &b.addr],
            Mode::Auto { seen: None },
            None,
        );
        assert_eq!(st.get(b"k"), Ok(Some(b"b".to_vec())), "503: next server");
        assert_eq!(st.get(b"k"), Ok(None), "ERR_DEP: next server");
        assert_eq!(st.get(b"k"), Err(()), "400 is final");
        assert_eq!(st.get(b"k"), Err(()), "a value over 2048 bytes");
        assert_eq!(
            st.put(b"k", b"v"),
            Err(()),
            "a 412 other than ERR_DEP is final"
        );
        assert_eq!(a.join().len(), 5);
        assert_eq!(b.join().len(), 2);
        // Both fakes are gone now: every server fails.
        assert_eq!(st.get(b"k"), Err(()));
    }

    #[test]
    fn keys_are_percent_encoded_except_unreserved_bytes() {
        assert_eq!(kv_path(b"aZ09-._~"), "/kv/aZ09-._~");
        assert_eq!(kv_path(b"a/b c%"), "/kv/a%2Fb%20c%25");
        assert_eq!(kv_path(&[0, 0xff, b'+']), "/kv/%00%FF%2B");
    }

    #[test]
    fn versions_parse_and_order_by_ts_origin_counter() {
        let v = |s: &str| s.parse::<Version>();
        assert_eq!(
            v("17.2.3"),
            Ok(Version {
                ts: 17,
                origin: 2,
                counter: 3
            })
        );
        assert_eq!(v("17.2.3").map(|v| v.to_string()), Ok("17.2.3".into()));
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "1..3", "-1.2.3", "1.2.+3"] {
            assert!(v(bad).is_err(), "{bad:?}");
        }
        assert!(v("10.0.0") > v("9.99.99"));
        assert!(v("10.2.0") > v("10.1.99"));
        assert!(v("10.1.10") > v("10.1.9"));
        // Numeric, not textual.
        assert!(v("100.0.0") > v("99.0.0"));
    }

    #[test]
    fn tokens_are_sent_only_at_the_session_level() {
        assert_eq!(
            Mode::Fixed(Level::Session).request_level(),
            (Some(Level::Session), true)
        );
        assert_eq!(
            Mode::Fixed(Level::Linearizable).request_level(),
            (Some(Level::Linearizable), false)
        );
        let mut auto = Mode::Auto { seen: None };
        assert_eq!(auto.request_level(), (None, false));
        auto.observe(None);
        assert_eq!(auto.request_level(), (None, false));
        auto.observe(Some(Level::Linearizable));
        assert_eq!(auto.request_level(), (None, false));
        auto.observe(Some(Level::Session));
        assert_eq!(auto.request_level(), (Some(Level::Session), true));
        let mut fixed = Mode::Fixed(Level::Linearizable);
        fixed.observe(Some(Level::Session));
        assert_eq!(fixed, Mode::Fixed(Level::Linearizable));
    }
}
