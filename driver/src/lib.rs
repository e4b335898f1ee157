//! # meshkv-master — the script driver
//!
//! [`script`] parses the command language (a pure parser, usable as a test language);
//! [`cluster`] runs the commands against real server and client processes;
//! [`sim_master`] runs them against an in-memory simulated cluster of the same core;
//! [`topology`] is the bookkeeping and the checks of the commands, which both keep.

pub mod cluster;
pub mod error;
pub mod script;
pub mod sim_master;
pub mod topology;
