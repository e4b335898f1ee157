//! The master's error type: why a command (or a call on a child) failed. The `Display`
//! of each is the one line the master prints on stderr before going on.

use crate::topology::CommandError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The command does not fit the cluster (unknown id, wrong kind, not running, …).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A child process could not be started or did not come up.
    #[error("{0}")]
    Start(String),
    /// A child did not answer on its control channel, or answered something unexpected.
    #[error("{0}")]
    Control(String),
    /// A client's request was refused, or found no reachable server.
    #[error("{0}")]
    Request(String),
    /// `stabilize` gave up: the stores still differ.
    #[error("{0}")]
    Stabilize(String),
}
