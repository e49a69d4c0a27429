//! Why a session or channel ended, as a type: each reason names the side that caused it (when
//! one did) and renders the words recorded in the database (`sessions.end_reason`) and in the
//! `channel.ended` / `session.ended` audit events.
//!
//! The words are part of what operators read and search, so they are written here once; a
//! relay failure keeps its typed cause ([`RelayEnd`]) for logs while its words leave out the
//! library's details. This module does not record anything: `bookkeeping` and `store` do.

use std::fmt;
use std::sync::Arc;

use super::error::{DenyReason, ProxyError, Side};
use super::relay::RelayEnd;

/// Why a session (or one of its channels) ended.
#[derive(Clone, Debug)]
pub enum EndReason {
    /// A channel's relay ended by itself (closed, idle, failed, blocked by the firewall); for
    /// a session, its main channel's.
    Relay(Arc<RelayEnd>),
    /// A termination request (an operator, the API or a Nova notification), with its reason.
    Terminated(String),
    /// Another node recorded the session's end (its main channel lives there), in these words.
    EndedElsewhere(String),
    /// The session's main channel was refused before the client was told OK.
    Denied(DenyReason),
    /// The new session's hypervisor link failed: the error's words and side (the error itself
    /// goes back to the link stage, which logs it and tells the client).
    HypervisorLinkFailed {
        /// Who failed.
        side: Side,
        /// The error in words.
        words: String,
    },
    /// The client's link stage did not complete (it went away, or its deadline passed).
    LinkIncomplete,
    /// The process stopped while the session was live.
    ShuttingDown,
    /// The node restarted without closing the session (found open at start-up).
    NodeRestarted,
}

impl EndReason {
    /// The side that caused the end, when one did (a termination request and another node's
    /// verdict name none).
    pub fn side(&self) -> Option<Side> {
        match self {
            EndReason::Relay(end) => end.side(),
            EndReason::HypervisorLinkFailed { side, .. } => Some(*side),
            EndReason::Denied(_) | EndReason::LinkIncomplete => Some(Side::Client),
            EndReason::ShuttingDown | EndReason::NodeRestarted => Some(Side::Internal),
            EndReason::Terminated(_) | EndReason::EndedElsewhere(_) => None,
        }
    }

    /// The underlying error, for logs (never part of the words).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EndReason::Relay(end) => end.cause(),
            _ => None,
        }
    }
}

impl EndReason {
    /// The end of a new session whose hypervisor link failed with `error`.
    pub fn hypervisor_link_failed(error: &ProxyError) -> Self {
        EndReason::HypervisorLinkFailed {
            side: error.side(),
            words: error.to_string(),
        }
    }
}

impl From<RelayEnd> for EndReason {
    fn from(end: RelayEnd) -> Self {
        EndReason::Relay(Arc::new(end))
    }
}

impl fmt::Display for EndReason {
    /// The words recorded in the database and audit events.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Relay(end) => end.fmt(f),
            EndReason::Terminated(reason) => write!(f, "terminated: {reason}"),
            EndReason::EndedElsewhere(words) => f.write_str(words),
            EndReason::Denied(reason) => write!(f, "denied: {reason}"),
            EndReason::HypervisorLinkFailed { words, .. } => {
                write!(f, "hypervisor link failed: {words}")
            }
            EndReason::LinkIncomplete => f.write_str("the client's link did not complete"),
            EndReason::ShuttingDown => f.write_str("proxy shutting down"),
            EndReason::NodeRestarted => f.write_str("proxy restarted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_sides() {
        let cases = [
            (
                EndReason::Terminated("instance deleted".into()),
                "terminated: instance deleted",
                None,
            ),
            (
                EndReason::Denied(DenyReason::BoundElsewhere),
                "denied: bound_to_other_client",
                Some(Side::Client),
            ),
            (
                EndReason::from(RelayEnd::Closed(Side::Server)),
                "the hypervisor closed the connection",
                Some(Side::Server),
            ),
            (
                EndReason::hypervisor_link_failed(&ProxyError::HandshakeTimeout(10)),
                "hypervisor link failed: client did not complete the link stage within 10 s",
                Some(Side::Client),
            ),
            (
                EndReason::ShuttingDown,
                "proxy shutting down",
                Some(Side::Internal),
            ),
            (
                EndReason::NodeRestarted,
                "proxy restarted",
                Some(Side::Internal),
            ),
            (
                EndReason::LinkIncomplete,
                "the client's link did not complete",
                Some(Side::Client),
            ),
            (
                EndReason::EndedElsewhere("idle timeout".into()),
                "idle timeout",
                None,
            ),
        ];
        for (reason, words, side) in cases {
            assert_eq!(reason.to_string(), words);
            assert_eq!(reason.side(), side, "{words}");
        }
        let io = EndReason::from(RelayEnd::Io {
            side: Side::Client,
            error: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        });
        assert!(io.cause().is_some());
        assert_eq!(io.to_string(), "client connection failed: connection reset");
    }
}
