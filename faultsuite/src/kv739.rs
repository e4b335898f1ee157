//! The CS739 (2012) C API backend: the suite's clients drive any library that exports
//! `kv739_init`, `kv739_fail`, `kv739_recover`, `kv739_get`, `kv739_put` and
//! `kv739_shutdown` (e.g. another group's `lib739kv.so`), loaded with `libloading`.
//!
//! **One process per client.** The C API is global per process (one `kv739_init`,
//! one set of failed servers, one set of session tokens inside the library) and every
//! call blocks. The suite's clients are independent sessions, so each logical client
//! (a [`crate::kv::KvClient`]) gets its own library instance: a `meshkv-test
//! kv739-worker` subprocess, started at the client's first request, that loads the
//! library, calls `kv739_init` once and then answers one request per line on
//! stdin/stdout (JSON lines: [`Request`] in, [`Reply`] out). The library's calls run
//! on a blocking thread (`spawn_blocking`), so a worker whose parent closed its stdin
//! exits even while a call hangs. Whatever the library prints goes to stderr (the
//! worker moves its own stdout aside before loading it), never into the protocol.
//!
//! **Pinning.** Every request names the server it is aimed at; the worker pins the
//! library to it by calling `kv739_fail` for every other server (and
//! `kv739_recover` for the target if it was failed), as the course's harnesses do.
//! So the library's own failover never picks a server behind the suite's back: the
//! suite's failover order, its suspect list and the `server` of every [`Op`] record
//! mean what they mean over HTTP. The init list starts with the server of the
//! client's first request (then the others in id order), so a library that ignored
//! `kv739_fail` would still prefer that one.
//!
//! **Outcomes.** `kv739_get` 0 / 1 are recorded as status 200 / 404, `kv739_put`
//! 0 / 1 as 200 (old value returned) / 201 (none); -1, a worker that does not answer
//! within the attempt deadline, or one that died, is an unserved attempt (like an
//! HTTP transport error: the outcome of a PUT is unknown). A worker that timed out
//! or died is killed and replaced by a new one (a new library instance, so a new
//! session) at the client's next attempt.
//!
//! [`Op`]: crate::history::Op

use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_int, CStr};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Longest key the API allows (bytes).
pub const MAX_KEY: usize = 128;
/// Longest value the API allows (bytes).
pub const MAX_VALUE: usize = 2048;
/// The buffer handed to `kv739_get` / `kv739_put` for the value: far more than the
/// 2048 + 1 bytes the API promises, so that a library that writes a little too much
/// does not corrupt the worker.
const VALUE_BUF: usize = 64 * 1024;

/// Where the library is and how its workers are started.
#[derive(Clone, Debug)]
pub struct Kv739Cfg {
    /// The shared library (`lib739kv.so`, `libkv739.so`, ...).
    pub lib: PathBuf,
    /// The `meshkv-test` executable (started as `meshkv-test kv739-worker`).
    pub worker_exe: PathBuf,
    /// Extra environment variables of every worker (the library reads its own, e.g.
    /// `MESHKV_CONSISTENCY`; workers also inherit the suite's environment).
    pub env: Vec<(String, String)>,
}

impl Kv739Cfg {
    /// A library driven by workers of the running executable.
    pub fn new(lib: PathBuf) -> Result<Kv739Cfg, String> {
        let worker_exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the meshkv-test executable: {e}"))?;
        Ok(Kv739Cfg {
            lib,
            worker_exe,
            env: Vec::new(),
        })
    }
}

/// One request to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// `kv739_get`, pinned to `server` (an index into the list the worker was given).
    Get {
        /// The server index.
        server: usize,
        /// The key.
        key: String,
    },
    /// `kv739_put`, pinned to `server`.
    Put {
        /// The server index.
        server: usize,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

/// A worker's answer (also its first line, after `kv739_init`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// What the library returned (0, 1, -1); absent when it was not called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rc: Option<i32>,
    /// The value read, or the old value a put returned (rc 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why the library was not called, or what went wrong around the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    fn rc(rc: c_int, value: Option<String>) -> Reply {
        Reply {
            rc: Some(rc),
            value,
            error: None,
        }
    }

    fn error(e: impl Into<String>) -> Reply {
        Reply {
            rc: None,
            value: None,
            error: Some(e.into()),
        }
    }
}

/// Check a key and a value against the API's limits (so the suite says why rather
/// than counting a -1).
pub fn check_args(key: &str, value: Option<&str>) -> Result<(), String> {
    let bad = |s: &str| s.contains(['[', ']', '\0']);
    if key.is_empty() || key.len() > MAX_KEY || bad(key) {
        return Err(format!(
            "key {key:?}: the CS739 API takes 1..{MAX_KEY} bytes without '[', ']' or NUL"
        ));
    }
    if let Some(v) = value {
        if v.len() > MAX_VALUE || bad(v) {
            return Err(format!(
                "a value of {} bytes: the CS739 API takes at most {MAX_VALUE} bytes without '[', ']' or NUL",
                v.len()
            ));
        }
    }
    Ok(())
}

type InitFn = unsafe extern "C" fn(*mut *mut c_char) -> c_int;
type NameFn = unsafe extern "C" fn(*mut c_char) -> c_int;
type GetFn = unsafe extern "C" fn(*mut c_char, *mut c_char) -> c_int;
type PutFn = unsafe extern "C" fn(*mut c_char, *mut c_char, *mut c_char) -> c_int;
type ShutdownFn = unsafe extern "C" fn() -> c_int;

/// A loaded library: its six functions.
pub struct Api {
    init: InitFn,
    fail: NameFn,
    recover: NameFn,
    get: GetFn,
    put: PutFn,
    shutdown: ShutdownFn,
    // Declared last: the function pointers above must not outlive it.
    _lib: libloading::Library,
}

/// A NUL-terminated, writable copy of a string (the API takes `char *`).
fn c_buf(s: &str) -> Result<Vec<u8>, String> {
    if s.contains('\0') {
        return Err(format!("{s:?} contains a NUL byte"));
    }
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    Ok(v)
}

/// The NUL-terminated string the library wrote into `buf`.
fn from_buf(buf: &[u8]) -> Result<String, String> {
    CStr::from_bytes_until_nul(buf)
        .map(|c| c.to_string_lossy().into_owned())
        .map_err(|_| "the library wrote a value with no NUL terminator".to_string())
}

impl Api {
    /// Load the library and find its six functions.
    pub fn load(path: &Path) -> Result<Api, String> {
        // SAFETY: loading a library runs its initialisers; the library is the one
        // the user asked the suite to test, which is the point of this backend.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        // SAFETY: the types are those of the CS739 (2012) header; the pointers are
        // copied out of their `Symbol`s and used only while `_lib` is loaded (they
        // live in the same struct, which drops them first).
        unsafe {
            let init = *lib
                .get::<InitFn>(b"kv739_init\0")
                .map_err(|e| format!("{}: kv739_init: {e}", path.display()))?;
            let fail = *lib
                .get::<NameFn>(b"kv739_fail\0")
                .map_err(|e| format!("{}: kv739_fail: {e}", path.display()))?;
            let recover = *lib
                .get::<NameFn>(b"kv739_recover\0")
                .map_err(|e| format!("{}: kv739_recover: {e}", path.display()))?;
            let get = *lib
                .get::<GetFn>(b"kv739_get\0")
                .map_err(|e| format!("{}: kv739_get: {e}", path.display()))?;
            let put = *lib
                .get::<PutFn>(b"kv739_put\0")
                .map_err(|e| format!("{}: kv739_put: {e}", path.display()))?;
            let shutdown = *lib
                .get::<ShutdownFn>(b"kv739_shutdown\0")
                .map_err(|e| format!("{}: kv739_shutdown: {e}", path.display()))?;
            Ok(Api {
                init,
                fail,
                recover,
                get,
                put,
                shutdown,
                _lib: lib,
            })
        }
    }

    /// `kv739_init` with these (NUL-terminated, writable) names. The caller keeps
    /// them alive for as long as the library is used: a library may keep the
    /// pointers instead of copying the strings.
    fn init(&self, names: &mut [Vec<u8>]) -> c_int {
        let mut ptrs: Vec<*mut c_char> = names
            .iter_mut()
            .map(|n| n.as_mut_ptr().cast::<c_char>())
            .collect();
        ptrs.push(std::ptr::null_mut());
        // SAFETY: a NULL-terminated array of NUL-terminated strings, as the API asks.
        unsafe { (self.init)(ptrs.as_mut_ptr()) }
    }

    fn fail(&self, name: &mut [u8]) -> c_int {
        // SAFETY: a NUL-terminated string.
        unsafe { (self.fail)(name.as_mut_ptr().cast()) }
    }

    fn recover(&self, name: &mut [u8]) -> c_int {
        // SAFETY: a NUL-terminated string.
        unsafe { (self.recover)(name.as_mut_ptr().cast()) }
    }

    fn get(&self, key: &str) -> Result<(c_int, Option<String>), String> {
        let mut k = c_buf(key)?;
        let mut buf = vec![0u8; VALUE_BUF];
        // SAFETY: a NUL-terminated key and a buffer larger than the API's 2049 bytes.
        let rc = unsafe { (self.get)(k.as_mut_ptr().cast(), buf.as_mut_ptr().cast()) };
        let value = if rc == 0 { Some(from_buf(&buf)?) } else { None };
        Ok((rc, value))
    }

    fn put(&self, key: &str, value: &str) -> Result<(c_int, Option<String>), String> {
        let (mut k, mut v) = (c_buf(key)?, c_buf(value)?);
        let mut buf = vec![0u8; VALUE_BUF];
        // SAFETY: NUL-terminated key and value, and a buffer larger than 2049 bytes.
        let rc = unsafe {
            (self.put)(
                k.as_mut_ptr().cast(),
                v.as_mut_ptr().cast(),
                buf.as_mut_ptr().cast(),
            )
        };
        let old = if rc == 0 { Some(from_buf(&buf)?) } else { None };
        Ok((rc, old))
    }

    fn shutdown(&self) -> c_int {
        // SAFETY: no arguments.
        unsafe { (self.shutdown)() }
    }
}

/// The order a worker gives `kv739_init`: `first`, then the others in id order.
pub fn init_order(n: usize, first: usize) -> Vec<usize> {
    let first = if n == 0 { 0 } else { first % n };
    std::iter::once(first)
        .chain((0..n).filter(|&i| i != first))
        .take(n)
        .collect()
}

/// The library inside a worker, with the servers it was given and which of them
/// are failed (client-side) right now.
struct Pinned {
    api: Api,
    /// Server names, in id order (kept alive: the library may hold the pointers).
    names: Vec<Vec<u8>>,
    failed: Vec<bool>,
}

impl Pinned {
    /// Make `server` the only server the library may use.
    fn pin(&mut self, server: usize) -> Result<(), String> {
        if server >= self.names.len() {
            return Err(format!(
                "server {server}: only {} servers",
                self.names.len()
            ));
        }
        for i in 0..self.names.len() {
            let want = i != server;
            if self.failed[i] == want {
                continue;
            }
            let (what, rc) = if want {
                ("kv739_fail", self.api.fail(&mut self.names[i]))
            } else {
                ("kv739_recover", self.api.recover(&mut self.names[i]))
            };
            if rc != 0 {
                let name = String::from_utf8_lossy(&self.names[i][..self.names[i].len() - 1]);
                return Err(format!("{what}({name}) returned {rc}"));
            }
            self.failed[i] = want;
        }
        Ok(())
    }

    fn serve(&mut self, req: Request) -> Reply {
        let (server, key, value) = match &req {
            Request::Get { server, key } => (*server, key, None),
            Request::Put { server, key, value } => (*server, key, Some(value.as_str())),
        };
        if let Err(e) = check_args(key, value).and_then(|()| self.pin(server)) {
            return Reply::error(e);
        }
        let r = match value {
            None => self.api.get(key),
            Some(v) => self.api.put(key, v),
        };
        match r {
            Ok((rc, v)) => Reply::rc(rc, v),
            Err(e) => Reply::error(e),
        }
    }
}

/// Duplicate stdout for the protocol, then point file descriptor 1 at stderr, so
/// that nothing the library prints can corrupt the protocol.
fn protocol_stdout() -> std::io::Result<std::fs::File> {
    use std::os::fd::AsFd;
    let proto = std::io::stdout().as_fd().try_clone_to_owned()?;
    // SAFETY: dup2 on the process's own standard descriptors, before anything else
    // of the worker writes to stdout.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::fs::File::from(proto))
}

fn send(out: &mut std::fs::File, reply: &Reply) -> Result<(), String> {
    let mut line = serde_json::to_string(reply).map_err(|e| e.to_string())?;
    line.push('\n');
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing to the suite: {e}"))
}

/// `meshkv-test kv739-worker`: load `lib`, `kv739_init` it with `servers` (in id
/// order; the init list starts at `first`), then answer requests from stdin until
/// EOF, when it calls `kv739_shutdown` and returns. Run it on a current-thread
/// runtime: one client, one request at a time.
pub async fn worker(lib: &Path, servers: Vec<String>, first: usize) -> Result<(), String> {
    let mut out = protocol_stdout().map_err(|e| format!("cannot set up stdout: {e}"))?;
    let api = match Api::load(lib) {
        Ok(api) => api,
        Err(e) => {
            send(&mut out, &Reply::error(e.clone()))?;
            return Err(e);
        }
    };
    let mut names = Vec::with_capacity(servers.len());
    for s in &servers {
        names.push(c_buf(s)?);
    }
    let mut init_names: Vec<Vec<u8>> = init_order(servers.len(), first)
        .into_iter()
        .map(|i| names[i].clone())
        .collect();
    let rc = api.init(&mut init_names);
    if rc != 0 {
        let e = format!("kv739_init returned {rc}");
        send(&mut out, &Reply::error(e.clone()))?;
        return Err(e);
    }
    send(&mut out, &Reply::rc(0, None))?;
    let mut state = Some(Pinned {
        api,
        failed: vec![false; names.len()],
        names,
    });
    // Requests come in on their own task, so that EOF (the suite gave up on this
    // client or went away) is seen even while a library call blocks.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let req = match serde_json::from_str::<Request>(&line) {
            Ok(r) => r,
            Err(e) => {
                send(
                    &mut out,
                    &Reply::error(format!("bad request {line:?}: {e}")),
                )?;
                continue;
            }
        };
        let Some(mut pinned) = state.take() else {
            return Err("the library was lost in a failed call".into());
        };
        let call = tokio::task::spawn_blocking(move || {
            let reply = pinned.serve(req);
            (pinned, reply)
        });
        tokio::select! {
            joined = call => match joined {
                Ok((pinned, reply)) => {
                    state = Some(pinned);
                    send(&mut out, &reply)?;
                }
                Err(e) => {
                    let e = format!("the library call failed: {e}");
                    send(&mut out, &Reply::error(e.clone()))?;
                    return Err(e);
                }
            },
            next = rx.recv() => {
                // EOF (or a request while one is in flight): the suite gave up on
                // this call. Leave at once; the blocked thread goes with the process.
                if next.is_some() {
                    eprintln!("meshkv-test kv739-worker: a request arrived while one was in flight");
                }
                std::process::exit(3);
            }
        }
    }
    if let Some(p) = state {
        p.api.shutdown();
    }
    Ok(())
}

/// Why a worker gave no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerError {
    /// No answer within the deadline (the call may still take effect).
    Timeout,
    /// The worker could not start, or died, or broke the protocol.
    Broken(String),
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerError::Timeout => write!(f, "timeout"),
            WorkerError::Broken(e) => write!(f, "kv739 worker: {e}"),
        }
    }
}

/// The suite's end of one worker process (killed when dropped).
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Start a worker for `servers` (names in id order; the init list starts at
    /// `first`) and wait, within `deadline`, for its `kv739_init` to succeed.
    pub async fn spawn(
        cfg: &Arc<Kv739Cfg>,
        servers: &[String],
        first: usize,
        deadline: Duration,
    ) -> Result<Worker, WorkerError> {
        let mut child = Command::new(&cfg.worker_exe)
            .arg("kv739-worker")
            .arg("--lib")
            .arg(&cfg.lib)
            .arg("--servers")
            .arg(servers.join(","))
            .arg("--first")
            .arg(first.to_string())
            .envs(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                WorkerError::Broken(format!("cannot start {}: {e}", cfg.worker_exe.display()))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(WorkerError::Broken("no pipes to the worker".into()));
        };
        let mut w = Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        let hello = w.read(deadline).await?;
        match hello {
            Reply { rc: Some(0), .. } => Ok(w),
            Reply { error: Some(e), .. } => Err(WorkerError::Broken(e)),
            r => Err(WorkerError::Broken(format!("unexpected first line {r:?}"))),
        }
    }

    async fn read(&mut self, deadline: Duration) -> Result<Reply, WorkerError> {
        let line = match tokio::time::timeout(deadline, self.stdout.next_line()).await {
            Err(_) => return Err(WorkerError::Timeout),
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status =
                    match tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await
                    {
                        Ok(Ok(s)) => s.to_string(),
                        _ => "still running".into(),
                    };
                return Err(WorkerError::Broken(format!("it exited ({status})")));
            }
            Ok(Err(e)) => return Err(WorkerError::Broken(format!("reading its answer: {e}"))),
        };
        serde_json::from_str(&line)
            .map_err(|e| WorkerError::Broken(format!("bad answer {line:?}: {e}")))
    }

    /// Send one request and wait, within `deadline`, for the answer. After any
    /// error the worker must be dropped (it may still be inside the call).
    pub async fn call(&mut self, req: &Request, deadline: Duration) -> Result<Reply, WorkerError> {
        let mut line =
            serde_json::to_string(req).map_err(|e| WorkerError::Broken(e.to_string()))?;
        line.push('\n');
        let write = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        };
        match tokio::time::timeout(deadline, write).await {
            Err(_) => return Err(WorkerError::Timeout),
            Ok(Err(e)) => return Err(WorkerError::Broken(format!("writing to it: {e}"))),
            Ok(Ok(())) => {}
        }
        self.read(deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_list_starts_at_the_first_target() {
        assert_eq!(init_order(3, 0), [0, 1, 2]);
        assert_eq!(init_order(3, 2), [2, 0, 1]);
        assert_eq!(init_order(4, 5), [1, 0, 2, 3]);
        assert!(init_order(0, 0).is_empty());
    }

    #[test]
    fn the_protocol_round_trips() {
        let r = Request::Put {
            server: 2,
            key: "k".into(),
            value: "a \"b\"\n".into(),
        };
        let line = serde_json::to_string(&r).expect("json");
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).expect("back"), r);
        let ok = Reply::rc(1, None);
        assert_eq!(serde_json::to_string(&ok).expect("json"), r#"{"rc":1}"#);
        let e: Reply = serde_json::from_str(r#"{"error":"x"}"#).expect("reply");
        assert_eq!(e, Reply::error("x"));
    }

    #[test]
    fn limits_are_checked() {
        assert!(check_args("k", Some("v")).is_ok());
        assert!(check_args(&"k".repeat(MAX_KEY), Some(&"v".repeat(MAX_VALUE))).is_ok());
        assert!(check_args(&"k".repeat(MAX_KEY + 1), None).is_err());
        assert!(check_args("", None).is_err());
        assert!(check_args("a[b", None).is_err());
        assert!(check_args("k", Some("x]")).is_err());
        assert!(check_args("k", Some(&"v".repeat(MAX_VALUE + 1))).is_err());
    }

    #[test]
    fn buffers_are_nul_terminated() {
        assert_eq!(c_buf("ab").expect("buf"), b"ab\0");
        assert!(c_buf("a\0b").is_err());
        assert_eq!(from_buf(b"xy\0zz").expect("str"), "xy");
        assert!(from_buf(b"xy").is_err());
    }

    #[test]
    fn a_missing_library_is_reported() {
        let e = Api::load(Path::new("/nonexistent/lib739kv.so"))
            .err()
            .expect("an error");
        assert!(e.contains("cannot load"), "{e}");
    }
}
