//! # meshkv-node — the server and client processes
//!
//! Thin adapters around [`meshkv_core`]: QUIC ([`net`], [`pki`], [`frame`]), sled
//! ([`storage`]), the server ([`server`]), the client ([`client`]) and the master's
//! control channel ([`control`]).

pub use meshkv_core;

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod feed;
pub mod frame;
pub mod http;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod server;
pub mod snapshot;
pub mod storage;
pub mod workers;
