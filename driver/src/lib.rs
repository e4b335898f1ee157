//! # meshkv-master — the script driver
//!
//! [`script`] parses the command language (a pure parser, usable as a test language);
//! [`cluster`] runs the commands against real server and client processes.

pub mod cluster;
pub mod script;
