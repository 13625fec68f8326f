//! The errors an embedding application sees: per request ([`GroupError`])
//! and for the whole server ([`Fatal`]).

use dledger_proto::ServerError;

use crate::group::GroupFatal;
use crate::state_machine::StateMachineError;

/// Why an [`append`](crate::GroupHandle::append) or [`read`](crate::GroupHandle::read)
/// through a [`GroupHandle`](crate::GroupHandle) failed. None of these stops the server.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The group refused or lost the request: not the leader (with the
    /// leader's id and address when known), leadership lost with the request
    /// in flight (its outcome is unknown), disk full, a request too large,
    /// or the server is shutting down. The same codes a network client gets.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The state machine refused the query (its own error).
    #[error("query failed: {0}")]
    Query(StateMachineError),
    /// The group has no state machine, so there is nothing to query.
    #[error("group {0} has no state machine to query")]
    NoStateMachine(u64),
    /// The server has stopped (see [`Server::wait`](crate::Server::wait) for why).
    #[error("the server has stopped")]
    Stopped,
}

/// What stopped a server: returned by [`Server::wait`](crate::Server::wait).
/// The process is never exited; the application decides what to do.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// A group's log failed (an I/O error, a corrupt entry): a restart
    /// recovers the replica from its files and its peers.
    #[error(transparent)]
    Log(#[from] GroupFatal),
    /// A group's state machine returned an error or panicked.
    #[error("group {group}: {error}")]
    StateMachine {
        /// The group.
        group: u64,
        /// What the state machine reported.
        #[source]
        error: StateMachineError,
    },
    /// A core's event loop could not run or one of its tasks panicked.
    #[error("core {core}: {message}")]
    Core {
        /// The core.
        core: usize,
        /// What went wrong.
        message: String,
    },
}
