//! meshkv-test: the seed's fault test suite (throughput, base consistency by the
//! old/new chain, failure, manual partition, stress partition), over HTTP only, so it
//! runs against any server that speaks the meshkv HTTP API (SPEC §5).

pub mod check;
pub mod faults;
pub mod history;
pub mod http;
pub mod kv;
pub mod mock;
pub mod progress;
pub mod report;
pub mod workloads;
