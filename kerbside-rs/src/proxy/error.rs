//! Link-stage errors, each recording which side failed so audit rows and metrics can be keyed
//! on it, and which SPICE link error the client is told. (How a relay ended, once linked, is
//! `relay::RelayEnd`.)

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

/// What went wrong on the way to a hypervisor during the link stage. The words are what
/// users read (no library URLs, see [`io_words`]); the I/O or protocol error stays the source.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorFailure {
    /// The TCP connection failed.
    #[error("{}", io_words(.0))]
    Connect(#[source] std::io::Error),
    /// Nothing came back within `[proxy] connect_timeout`.
    #[error("no answer within {0} s")]
    NoAnswer(u64),
    /// Sending the link message failed.
    #[error("write failed: {}", io_words(.0))]
    Write(#[source] std::io::Error),
    /// The TLS handshake failed (usually the certificate: its name or its CA).
    #[error("TLS handshake failed (expected name '{name}'): {}", io_words(.source))]
    Tls {
        /// The name the certificate had to carry.
        name: String,
        /// The handshake's error.
        source: std::io::Error,
    },
    /// The connection closed before the whole link reply arrived.
    #[error("link reply cut short: {}", io_words(.0))]
    ReplyCut(#[source] std::io::Error),
    /// The link reply does not parse.
    #[error("invalid link reply: {0}")]
    InvalidReply(#[source] SpiceError),
    /// The hypervisor offers only SASL.
    #[error("the hypervisor only offers SASL authentication, which kerbside does not speak")]
    SaslOnly,
    /// The ticket could not be encrypted with the hypervisor's public key.
    #[error("cannot encrypt the ticket: {0}")]
    TicketEncryption(#[source] SpiceError),
    /// Sending the ticket or reading the link result failed.
    #[error("authentication failed: {}", io_words(.0))]
    Authentication(#[source] std::io::Error),
    /// The link result does not parse.
    #[error("invalid link result: {0}")]
    InvalidResult(#[source] SpiceError),
}

/// Why `[proxy] hypervisor_tls` and a console's ports, CA and name allow no connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// `require`, a TLS port, and no CA for its hypervisor.
    #[error("TLS is required but no CA is configured for its hypervisor")]
    TlsRequiredWithoutCa,
    /// `require` and no TLS port.
    #[error("TLS is required but the console has no TLS port")]
    TlsRequiredWithoutTlsPort,
    /// Only a TLS port, and no CA for its hypervisor.
    #[error("no usable port: it has only a TLS port and no CA is configured for its hypervisor")]
    NoUsablePort,
    /// A target with neither port (the policy check refuses those before a link is tried).
    #[error("no port to connect to")]
    NoPort,
    /// The console's hypervisor name cannot be checked against a certificate.
    #[error("hypervisor name '{0}' is not a valid TLS server name")]
    InvalidTlsName(String),
    /// The hypervisor answered NEED_SECURED on its plain port and TLS cannot be used.
    #[error("hypervisor {addr} requires TLS, but {why}")]
    NeedsTls {
        /// host:port.
        addr: String,
        /// Why TLS is not used (see `upstream::Target::no_tls_reason`).
        why: &'static str,
    },
}

/// Everything that can end a connection before or during relaying.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client sent bytes that are not a valid SPICE link stage.
    #[error("invalid link stage from client: {0}")]
    ClientProtocol(#[source] SpiceError),
    /// The client went away or failed at the socket level.
    #[error("client connection failed: {}", io_words(.0))]
    ClientIo(#[source] std::io::Error),
    /// TLS with the client failed.
    #[error("TLS handshake with client failed: {}", io_words(.0))]
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
        #[source]
        cause: HypervisorFailure,
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
        #[source]
        reason: HypervisorFailure,
    },
    /// The console cannot be reached with the configured policy.
    #[error("console {console} cannot be reached: {reason}")]
    ConsoleUnusable {
        /// Console uuid.
        console: String,
        /// Why.
        reason: Unusable,
    },
    /// The TLS configuration for a console's hypervisor could not be built from its source's CA
    /// or host subject.
    #[error("console {console}: invalid hypervisor TLS settings: {source}")]
    HypervisorTlsSetup {
        /// Console uuid.
        console: String,
        /// What is wrong with the CA or host subject.
        source: Box<crate::tlsutil::TlsError>,
    },
    /// The client's address used up its failed links (`[proxy] failed_link_burst`).
    #[error("too many failed links from this address")]
    Throttled,
    /// This node has reached `[proxy] max_sessions`.
    #[error("session limit of {0} reached")]
    TooManySessions(u32),
    /// The process is stopping: a link stage still under way is abandoned.
    #[error("kerbside is shutting down")]
    ShuttingDown,
    /// The console's firewall profile does not allow this channel type.
    #[error("the firewall profile does not allow {} channels", .0.name())]
    ChannelDenied(crate::spice::ChannelType),
    /// The database failed (the cause is kept; its words never hold a secret).
    #[error("database error: {0}")]
    Database(#[source] crate::db::DbError),
    /// No ticket key could be had (the key threads have stopped).
    #[error("no ticket key: {0}")]
    KeyPool(#[source] super::keypool::KeyPoolError),
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
            | ProxyError::Throttled
            | ProxyError::ChannelDenied(_)
            | ProxyError::UnsupportedAuth(_) => Side::Client,
            ProxyError::HypervisorUnreachable { .. }
            | ProxyError::HypervisorRefused { .. }
            | ProxyError::HypervisorProtocol { .. }
            | ProxyError::ConsoleUnusable { .. } => Side::Server,
            // A source's CA or host subject is kerbside's configuration, not the hypervisor's.
            ProxyError::HypervisorTlsSetup { .. } => Side::Internal,
            ProxyError::TooManySessions(_)
            | ProxyError::ShuttingDown
            | ProxyError::Database(_)
            | ProxyError::KeyPool(_) => Side::Internal,
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
            // What spice-server answers for a channel the VM does not have.
            ProxyError::ChannelDenied(_) => LinkError::ChannelNotAvailable,
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
            ProxyError::HypervisorTlsSetup { .. } => "hypervisor_tls_setup",
            ProxyError::Throttled => "failed_link_limit",
            ProxyError::TooManySessions(_) => "too_many_sessions",
            ProxyError::ShuttingDown => "shutting_down",
            ProxyError::ChannelDenied(_) => "firewall_channel",
            ProxyError::Database(_) => "database",
            ProxyError::KeyPool(_) => "key_pool",
        }
    }
}

/// A socket or TLS error in a few words, for end reasons and audit messages that users read.
///
/// The `Display` of an `io::Error` can carry a library's documentation URL (rustls explains a
/// missing `close_notify` with a link to its manual); the words here never do. The full error
/// stays available as the `#[source]` of the [`ProxyError`] for logs.
pub fn io_words(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    // rustls errors travel inside io::Error; their text names the TLS problem.
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return without_urls(&tls.to_string());
    }
    let words = match error.kind() {
        ErrorKind::ConnectionReset => "connection reset",
        ErrorKind::ConnectionAborted => "connection aborted",
        ErrorKind::ConnectionRefused => "connection refused",
        ErrorKind::BrokenPipe => "connection closed while sending",
        ErrorKind::UnexpectedEof => "connection closed unexpectedly",
        ErrorKind::TimedOut => "timed out",
        ErrorKind::WriteZero => "the peer accepted no more data",
        _ => return without_urls(&error.to_string()),
    };
    words.to_owned()
}

/// `text` without the words that are URLs (and the punctuation left dangling before them).
fn without_urls(text: &str) -> String {
    let kept: Vec<&str> = text
        .split_whitespace()
        .filter(|word| !word.contains("://"))
        .collect();
    let joined = kept.join(" ");
    let trimmed = joined.trim_end_matches([':', ';', ',', ' ']);
    if trimmed.is_empty() {
        "I/O error".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn end_reasons_carry_no_urls() {
        // What tokio-rustls returns when a client vanishes without close_notify.
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: \
             https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        assert_eq!(
            ProxyError::ClientIo(eof).to_string(),
            "client connection failed: connection closed unexpectedly"
        );
        let odd = io::Error::other("something odd, see https://example.com/why");
        assert_eq!(io_words(&odd), "something odd, see");
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let words = io_words(&tls);
        assert!(words.contains("certificate"), "{words}");
        assert!(!words.contains("://"), "{words}");
        // The cause stays available for logs.
        let e = ProxyError::ClientIo(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn hypervisor_failures_keep_their_cause_and_read_as_before() {
        let e = ProxyError::HypervisorUnreachable {
            addr: "hv1.test:5901".into(),
            cause: HypervisorFailure::Connect(io::Error::from(io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach hypervisor hv1.test:5901: connection refused"
        );
        let cause = std::error::Error::source(&e).expect("the failure");
        assert!(std::error::Error::source(cause).is_some(), "the io::Error");
        let e = ProxyError::HypervisorProtocol {
            addr: "hv1.test:5901".into(),
            reason: HypervisorFailure::Tls {
                name: "hv1.test".into(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
                ),
            },
        };
        let words = e.to_string();
        assert!(
            words.starts_with(
                "hypervisor hv1.test:5901: TLS handshake failed (expected name 'hv1.test'): "
            ),
            "{words}"
        );
        assert_eq!(e.side(), Side::Server);
        let e = ProxyError::ConsoleUnusable {
            console: "c1".into(),
            reason: Unusable::NeedsTls {
                addr: "hv1.test:5900".into(),
                why: "the console has no TLS port",
            },
        };
        assert_eq!(
            e.to_string(),
            "console c1 cannot be reached: hypervisor hv1.test:5900 requires TLS, but the console has no TLS port"
        );
    }
}

/// Why the proxy could not start. Each names what could not be set up and keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener's certificate/key or the default hypervisor CA.
    #[error(transparent)]
    Tls(#[from] crate::tlsutil::TlsError),
    /// The ticket key threads could not be spawned.
    #[error("cannot start RSA key threads: {0}")]
    KeyThreads(#[source] std::io::Error),
    /// The firewall profiles file is invalid.
    #[error("invalid firewall profiles: {0}")]
    Profiles(#[from] crate::firewall::ProfileError),
    /// The sessions a previous run left open could not be ended.
    #[error("cannot reach the database: {0}")]
    Database(#[source] ProxyError),
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
}
