//! The hypervisor leg: connecting (plain or TLS), sending the link message, reading the reply
//! and authenticating with the console's ticket.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::error::{HypervisorFailure, ProxyError, Unusable};
use crate::spice::consts::{AUTH_SPICE, COMMON_CAP_AUTH_SELECTION, COMMON_CAP_AUTH_SPICE};
use crate::spice::{
    LinkError, LinkMessage, LinkReply, SpiceError, encode_auth_mechanism, encrypt_ticket,
    parse_link_reply, parse_link_result,
};

/// A connection to a hypervisor, plain or TLS.
pub type UpstreamStream = Either<TcpStream, TlsStream<TcpStream>>;

/// Where and how to reach one console's hypervisor.
#[derive(Clone)]
pub struct Target {
    /// The console's uuid, for messages.
    pub console: String,
    /// Host or address to connect to (the console's `hypervisor_ip`).
    pub host: String,
    /// The name the hypervisor's TLS certificate must carry (the console's `hypervisor`), unless
    /// the TLS configuration checks a host subject instead.
    pub tls_name: String,
    /// Plain SPICE port, if the hypervisor has one.
    pub plain_port: Option<u16>,
    /// TLS SPICE port and the TLS configuration to use on it.
    pub tls: Option<(u16, Arc<ClientConfig>)>,
    /// Whether that configuration checks a host subject instead of `tls_name`.
    pub subject_checked: bool,
    /// Why `tls` is `None`, for the error when the hypervisor insists on TLS.
    pub no_tls_reason: &'static str,
    /// The console's SPICE ticket (password); empty when the hypervisor has none.
    pub ticket: Vec<u8>,
    /// Time allowed for connect, TLS and the link exchange.
    pub timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("console", &self.console)
            .field("host", &self.host)
            .field("tls_name", &self.tls_name)
            .field("plain_port", &self.plain_port)
            .field("tls_port", &self.tls.as_ref().map(|t| t.0))
            .finish_non_exhaustive()
    }
}

/// A linked (not yet authenticated) hypervisor connection.
pub struct Linked {
    /// The stream, positioned after the link reply.
    pub stream: UpstreamStream,
    /// The hypervisor's link reply (its capabilities and public key).
    pub reply: LinkReply,
    /// host:port, for messages.
    pub addr: String,
}

/// Connects and sends the link message: over TLS when the target has a TLS port and a CA to
/// verify it with, else plain. A plain link answered with NEED_SECURED fails with an error
/// that says what TLS lacks (a TLS port, or a CA): kerbside never speaks TLS to a hypervisor
/// whose certificate it cannot verify.
///
/// # Errors
/// Unreachable hypervisor, TLS failure, a refused link (with its code), protocol errors.
pub async fn link(target: &Target, message: &LinkMessage) -> Result<Linked, ProxyError> {
    let attempt = async {
        if let Some((port, config)) = &target.tls {
            return link_once(target, *port, Some(config.clone()), message).await;
        }
        let Some(port) = target.plain_port else {
            return Err(ProxyError::ConsoleUnusable {
                console: target.console.clone(),
                reason: Unusable::NoPort,
            });
        };
        link_once(target, port, None, message).await
    };
    tokio::time::timeout(target.timeout, attempt)
        .await
        .map_err(|_| timeout_error(target))?
}

fn timeout_error(target: &Target) -> ProxyError {
    ProxyError::HypervisorUnreachable {
        addr: target.host.clone(),
        cause: HypervisorFailure::NoAnswer(target.timeout.as_secs()),
    }
}

async fn link_once(
    target: &Target,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    message: &LinkMessage,
) -> Result<Linked, ProxyError> {
    let addr = format!("{}:{port}", target.host);
    let unreachable = |cause: HypervisorFailure| ProxyError::HypervisorUnreachable {
        addr: addr.clone(),
        cause,
    };
    let tcp = TcpStream::connect((target.host.as_str(), port))
        .await
        .map_err(|e| unreachable(HypervisorFailure::Connect(e)))?;
    let _ = tcp.set_nodelay(true);
    let mut stream: UpstreamStream = match tls {
        Some(config) => {
            // The certificate is checked against the hypervisor's name (or the host
            // subject, see `tls`), never against the address connected to.
            let name = ServerName::try_from(target.tls_name.clone())
                .or_else(|e| {
                    // With a host subject the name is not checked: any valid one will do.
                    if target.subject_checked {
                        ServerName::try_from(target.host.clone())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|_| ProxyError::ConsoleUnusable {
                    console: target.console.clone(),
                    reason: Unusable::InvalidTlsName(target.tls_name.clone()),
                })?;
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| ProxyError::HypervisorProtocol {
                    addr: addr.clone(),
                    reason: HypervisorFailure::Tls {
                        name: target.tls_name.clone(),
                        source,
                    },
                })?;
            Either::Right(tls)
        }
        None => Either::Left(tcp),
    };
    stream
        .write_all(&message.encode())
        .await
        .map_err(|e| unreachable(HypervisorFailure::Write(e)))?;
    let reply = read_reply(&mut stream, &addr).await?;
    if reply.error != LinkError::Ok {
        if reply.error == LinkError::NeedSecured && target.tls.is_none() {
            return Err(ProxyError::ConsoleUnusable {
                console: target.console.clone(),
                reason: Unusable::NeedsTls {
                    addr,
                    why: target.no_tls_reason,
                },
            });
        }
        return Err(ProxyError::HypervisorRefused {
            addr,
            code: reply.error,
        });
    }
    Ok(Linked {
        stream,
        reply,
        addr,
    })
}

async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    addr: &str,
) -> Result<LinkReply, ProxyError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match parse_link_reply(&buf) {
            Ok((reply, _)) => return Ok(reply),
            Err(SpiceError::Incomplete { needed }) => {
                let start = buf.len();
                buf.resize(start + needed, 0);
                let slot = buf.get_mut(start..).unwrap_or_default();
                stream
                    .read_exact(slot)
                    .await
                    .map_err(|e| ProxyError::HypervisorProtocol {
                        addr: addr.to_owned(),
                        reason: HypervisorFailure::ReplyCut(e),
                    })?;
            }
            Err(e) => {
                return Err(ProxyError::HypervisorProtocol {
                    addr: addr.to_owned(),
                    reason: HypervisorFailure::InvalidReply(e),
                });
            }
        }
    }
}

/// Authenticates a linked connection with the ticket and reads the link result.
///
/// # Errors
/// A refused ticket (`HypervisorRefused` with the hypervisor's code, normally
/// PERMISSION_DENIED), a hypervisor that only offers SASL, or I/O failures.
pub async fn authenticate(linked: &mut Linked, target: &Target) -> Result<(), ProxyError> {
    let addr = linked.addr.clone();
    let protocol = |reason: HypervisorFailure| ProxyError::HypervisorProtocol {
        addr: addr.clone(),
        reason,
    };
    let caps = &linked.reply.caps;
    let mut out = Vec::with_capacity(4 + 128);
    if caps.has_common(COMMON_CAP_AUTH_SELECTION) {
        if !caps.has_common(COMMON_CAP_AUTH_SPICE) {
            return Err(protocol(HypervisorFailure::SaslOnly));
        }
        out.extend_from_slice(&encode_auth_mechanism(AUTH_SPICE));
    }
    let ticket = encrypt_ticket(&linked.reply.pub_key, &target.ticket)
        .map_err(|e| protocol(HypervisorFailure::TicketEncryption(e)))?;
    out.extend_from_slice(&ticket);
    let io = |e: std::io::Error| ProxyError::HypervisorProtocol {
        addr: addr.clone(),
        reason: HypervisorFailure::Authentication(e),
    };
    linked.stream.write_all(&out).await.map_err(io)?;
    let mut result = [0u8; 4];
    tokio::time::timeout(target.timeout, linked.stream.read_exact(&mut result))
        .await
        .map_err(|_| timeout_error(target))?
        .map_err(io)?;
    match parse_link_result(&result) {
        Ok(LinkError::Ok) => Ok(()),
        Ok(code) => Err(ProxyError::HypervisorRefused { addr, code }),
        Err(e) => Err(protocol(HypervisorFailure::InvalidResult(e))),
    }
}
