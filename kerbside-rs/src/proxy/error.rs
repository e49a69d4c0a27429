//! Proxy errors, each recording which side failed so audit rows and metrics can be keyed on it,
//! and which SPICE link error the client is told.

use std::fmt;

use crate::spice::{LinkError, SpiceError};

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The SPICE client.
    Client,
    /// The hypervisor.
    Server,
    /// Kerbside itself (database, key pool, limits).
    Internal,
}

impl Side {
    /// A label for metrics and audit rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "hypervisor",
            Side::Internal => "internal",
        }
    }
}

/// Why a client was refused access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The ticket did not decrypt or is malformed.
    BadTicket,
    /// No token has this hash.
    UnknownToken,
    /// The token has expired.
    ExpiredToken,
    /// The token was revoked.
    RevokedToken,
    /// The token is bound to a session of another client address.
    BoundElsewhere,
    /// The channel's connection id names a session the token does not belong to.
    WrongSession,
    /// No live session has the channel's connection id.
    UnknownSession,
    /// The console was marked stale (instance deleted, moved, stopped...).
    StaleConsole,
}

impl DenyReason {
    /// A label for metrics and audit rows.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::BadTicket => "bad_ticket",
            DenyReason::UnknownToken => "unknown_token",
            DenyReason::ExpiredToken => "expired_token",
            DenyReason::RevokedToken => "revoked_token",
            DenyReason::BoundElsewhere => "bound_to_other_client",
            DenyReason::WrongSession => "wrong_session",
            DenyReason::UnknownSession => "unknown_session",
            DenyReason::StaleConsole => "stale_console",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can end a connection before or during relaying.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent bytes that are not a valid SPICE link stage.
    #[error("invalid link stage from client: {0}")]
    ClientProtocol(#[source] SpiceError),
    /// The client went away or failed at the socket level.
    #[error("client connection failed: {0}")]
    ClientIo(#[source] std::io::Error),
    /// TLS with the client failed.
    #[error("TLS handshake with client failed: {0}")]
    ClientTls(#[source] std::io::Error),
    /// The client did not finish the link stage in time.
    #[error("client did not complete the link stage within {0} s")]
    HandshakeTimeout(u64),
    /// The client is not allowed in.
    #[error("access denied: {0}")]
    Denied(DenyReason),
    /// The client chose an authentication mechanism the proxy does not offer.
    #[error("client asked for unsupported authentication mechanism {0}")]
    UnsupportedAuth(u32),
    /// The hypervisor could not be reached.
    #[error("cannot reach hypervisor {addr}: {cause}")]
    HypervisorUnreachable {
        /// host:port tried.
        addr: String,
        /// Why.
        cause: String,
    },
    /// The hypervisor answered the link with an error.
    #[error("hypervisor {addr} refused the link: {code}")]
    HypervisorRefused {
        /// host:port.
        addr: String,
        /// Its link error.
        code: LinkError,
    },
    /// The hypervisor broke the protocol or needs something the proxy cannot do.
    #[error("hypervisor {addr}: {reason}")]
    HypervisorProtocol {
        /// host:port.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The console cannot be reached with the configured policy.
    #[error("console {console} cannot be reached: {reason}")]
    ConsoleUnusable {
        /// Console uuid.
        console: String,
        /// Why.
        reason: String,
    },
    /// This node has reached `[proxy] max_sessions`.
    #[error("session limit of {0} reached")]
    TooManySessions(u32),
    /// A message exceeded the proxy's size limit or broke framing during relaying.
    #[error("{side} sent an invalid message: {error}", side = side.as_str())]
    Framing {
        /// Who sent it.
        side: Side,
        /// The framing error.
        #[source]
        error: SpiceError,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// Anything else inside kerbside.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::ClientProtocol(_)
            | ProxyError::ClientIo(_)
            | ProxyError::ClientTls(_)
            | ProxyError::HandshakeTimeout(_)
            | ProxyError::Denied(_)
            | ProxyError::UnsupportedAuth(_) => Side::Client,
            ProxyError::HypervisorUnreachable { .. }
            | ProxyError::HypervisorRefused { .. }
            | ProxyError::HypervisorProtocol { .. }
            | ProxyError::ConsoleUnusable { .. } => Side::Server,
            ProxyError::Framing { side, .. } => *side,
            ProxyError::TooManySessions(_) | ProxyError::Database(_) | ProxyError::Internal(_) => {
                Side::Internal
            }
        }
    }

    /// The link error to send the client, when it is still waiting for one.
    pub fn link_error(&self) -> LinkError {
        match self {
            ProxyError::ClientProtocol(e) => e.link_error(),
            // spice-server's answer for a connection id it does not know.
            ProxyError::Denied(DenyReason::UnknownSession) => LinkError::BadConnectionId,
            ProxyError::Denied(_) => LinkError::PermissionDenied,
            ProxyError::UnsupportedAuth(_) => LinkError::InvalidData,
            // Pass the hypervisor's verdict through (expired ticket, missing channel...).
            ProxyError::HypervisorRefused { code, .. } => *code,
            _ => LinkError::Error,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::ClientProtocol(_) => "client_protocol",
            ProxyError::ClientIo(_) => "client_io",
            ProxyError::ClientTls(_) => "client_tls",
            ProxyError::HandshakeTimeout(_) => "handshake_timeout",
            ProxyError::Denied(reason) => reason.as_str(),
            ProxyError::UnsupportedAuth(_) => "unsupported_auth",
            ProxyError::HypervisorUnreachable { .. } => "hypervisor_unreachable",
            ProxyError::HypervisorRefused { .. } => "hypervisor_refused",
            ProxyError::HypervisorProtocol { .. } => "hypervisor_protocol",
            ProxyError::ConsoleUnusable { .. } => "console_unusable",
            ProxyError::TooManySessions(_) => "too_many_sessions",
            ProxyError::Framing { .. } => "framing",
            ProxyError::Database(_) => "database",
            ProxyError::Internal(_) => "internal",
        }
    }
}
