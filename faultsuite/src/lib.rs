//! meshkv-test: the seed's fault test suite (throughput, base consistency by the
//! old/new chain, failure, manual partition, stress partition), so it runs against
//! any server that speaks the meshkv HTTP API (SPEC §5), or against any store that
//! ships a CS739 (2012) C library (`lib739kv.so`).
//!
//! Two backends feed the same [`history::Op`] records, so every checker runs
//! unchanged on both:
//!
//! * **HTTP** ([`http`], [`kv`]): one keep-alive connection per server and client,
//!   the session token in a header, failover to the other servers.
//! * **CS739 C API** ([`kv739`], `meshkv-test run --kv739 LIB`): the API is global
//!   per process and blocking, and the suite's clients are independent sessions, so
//!   each client gets its own library instance in its own `meshkv-test kv739-worker`
//!   subprocess (one `kv739_init` each), driven over a JSON-lines pipe; each request
//!   is pinned to its target server with `kv739_fail` on every other server (and
//!   `kv739_recover`), so failover stays the suite's and every record names the
//!   server that served it. A -1 is an unserved attempt, like an HTTP transport
//!   error. A single process with a global lock was rejected: all clients would
//!   share one library instance and its session tokens, and a checker would then
//!   judge one session where the seed has many.

pub mod check;
pub mod faults;
pub mod history;
pub mod http;
pub mod kv;
pub mod kv739;
pub mod mock;
pub mod progress;
pub mod report;
pub mod workloads;
