//! One client connection on the TLS listener: the link stage as an explicit state machine,
//! then the relay.
//!
//! The link stage differs by channel, because only non-main channels can be routed before the
//! client's ticket is read:
//! - main: reply at once with a fixed set of capabilities and a one-time key, read the ticket,
//!   authorize the token, link and authenticate upstream, create the session, then send OK;
//! - other channels: the connection id names a session, so link upstream first, reply with the
//!   capabilities the hypervisor granted (minus what the proxy cannot carry), read the ticket,
//!   check the token belongs to that session, authenticate upstream, then send OK.
//!
//! The client's link result is only sent once the hypervisor accepted, and it is flushed in a
//! TLS record of its own before any hypervisor byte is relayed (spice-gtk 0.42 stalls when the
//! result shares a record with the next message). Any failure gets the matching SPICE link
//! error, never an OK followed by a dropped socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::ProxyContext;
use super::error::{DenyReason, ProxyError};
use super::registry::LocalSession;
use super::relay::{self, Meter, RelayEnd};
use super::store::{Authorized, ConsoleTarget};
use super::upstream::{self, Linked};
use crate::spice::consts::{
    AUTH_SPICE, COMMON_CAP_AUTH_SELECTION, COMMON_CAP_AUTH_SPICE, COMMON_CAP_MINI_HEADER,
    MAIN_CAP_AGENT_CONNECTED_TOKENS, MAIN_CAP_NAME_AND_UUID, TICKET_LEN,
};
use crate::spice::{
    Caps, ChannelType, HeaderKind, LinkError, LinkMessage, LinkReply, SpiceError,
    encode_link_error, encode_link_result, parse_link_message,
};

/// Where the link stage is, which decides how a failure is reported to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Reading the client's link message: failures get a link error reply.
    AwaitingLinkMessage,
    /// The client got our link reply: failures get a 4-byte link result.
    AwaitingTicket,
    /// The client got OK: failures just close.
    Linked,
}

/// The client side of one connection during the link stage.
struct ClientLink<S> {
    stream: S,
    state: LinkState,
    peer: SocketAddr,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientLink<S> {
    async fn read_link_message(&mut self) -> Result<LinkMessage, ProxyError> {
        let mut buf = Vec::with_capacity(64);
        loop {
            match parse_link_message(&buf) {
                Ok((message, _)) => return Ok(message),
                Err(SpiceError::Incomplete { needed }) => {
                    read_more(&mut self.stream, &mut buf, needed).await?
                }
                Err(e) => return Err(ProxyError::ClientProtocol(e)),
            }
        }
    }

    async fn send_reply(&mut self, reply: &LinkReply) -> Result<(), ProxyError> {
        self.stream
            .write_all(&reply.encode())
            .await
            .map_err(ProxyError::ClientIo)?;
        self.stream.flush().await.map_err(ProxyError::ClientIo)?;
        self.state = LinkState::AwaitingTicket;
        Ok(())
    }

    /// Reads the auth mechanism word (present iff the client advertised AUTH_SELECTION) and the
    /// encrypted ticket.
    async fn read_ticket(&mut self, client_caps: &Caps) -> Result<[u8; TICKET_LEN], ProxyError> {
        if client_caps.has_common(COMMON_CAP_AUTH_SELECTION) {
            let mut word = [0u8; 4];
            self.stream
                .read_exact(&mut word)
                .await
                .map_err(ProxyError::ClientIo)?;
            let mechanism = u32::from_le_bytes(word);
            if mechanism != AUTH_SPICE {
                return Err(ProxyError::UnsupportedAuth(mechanism));
            }
        }
        let mut ticket = [0u8; TICKET_LEN];
        self.stream
            .read_exact(&mut ticket)
            .await
            .map_err(ProxyError::ClientIo)?;
        Ok(ticket)
    }

    /// Sends OK in a TLS record of its own: the flush pushes the record out before the caller
    /// writes anything else.
    async fn send_ok(&mut self) -> Result<(), ProxyError> {
        self.stream
            .write_all(&encode_link_result(LinkError::Ok))
            .await
            .map_err(ProxyError::ClientIo)?;
        self.stream.flush().await.map_err(ProxyError::ClientIo)?;
        self.state = LinkState::Linked;
        Ok(())
    }

    /// Tells the client why it failed, in the form its state expects.
    async fn send_failure(&mut self, error: &ProxyError) {
        let code = error.link_error();
        let bytes = match self.state {
            LinkState::AwaitingLinkMessage => encode_link_error(code),
            LinkState::AwaitingTicket => encode_link_result(code).to_vec(),
            LinkState::Linked => return,
        };
        if matches!(error, ProxyError::ClientIo(_) | ProxyError::ClientTls(_)) {
            return; // nobody to tell
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.stream.write_all(&bytes).await;
            let _ = self.stream.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    needed: usize,
) -> Result<(), ProxyError> {
    let start = buf.len();
    buf.resize(start + needed, 0);
    let slot = buf.get_mut(start..).unwrap_or_default();
    stream
        .read_exact(slot)
        .await
        .map_err(ProxyError::ClientIo)?;
    Ok(())
}

/// The capabilities the proxy itself offers clients in its link reply.
fn proxy_common_caps(client: &Caps) -> Caps {
    let mut caps = Caps::default();
    caps.set_common(COMMON_CAP_AUTH_SELECTION);
    caps.set_common(COMMON_CAP_AUTH_SPICE);
    // Each side picks its header format from the peer's caps. Mirroring the client's choice
    // (and forwarding it upstream) keeps both legs on the same format, so no translation.
    if client.has_common(COMMON_CAP_MINI_HEADER) {
        caps.set_common(COMMON_CAP_MINI_HEADER);
    }
    caps
}

/// The capabilities the proxy links upstream with: the client's (already filtered), plus
/// AUTH_SELECTION, because the proxy itself always sends the mechanism word when the
/// hypervisor offers selection, and the hypervisor reads that word only from clients that
/// advertised it, whatever the real client supports.
fn as_link_client(mut caps: Caps) -> Caps {
    caps.set_common(COMMON_CAP_AUTH_SELECTION);
    caps.clear_common(COMMON_CAP_AUTH_SPICE);
    caps
}

/// Serves one accepted TCP connection on the TLS listener, start to end.
pub async fn serve_tls(ctx: Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("spice", client.addr = %peer, channel.kind = tracing::field::Empty, session.id = tracing::field::Empty, console.uuid = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let started = Instant::now();
        let timeout = Duration::from_secs(ctx.config.proxy.handshake_timeout);
        let tls = match tokio::time::timeout(timeout, ctx.tls.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                ctx.metrics().link_failed("client_tls");
                tracing::debug!(error = %e, "TLS handshake with client failed");
                return;
            }
            Err(_) => {
                ctx.metrics().link_failed("handshake_timeout");
                tracing::debug!("client did not complete TLS in time");
                return;
            }
        };
        let mut client = ClientLink {
            stream: tls,
            state: LinkState::AwaitingLinkMessage,
            peer,
        };
        let linked = tokio::time::timeout(timeout, link_stage(&ctx, &mut client)).await;
        let ready = match linked {
            Ok(Ok(ready)) => ready,
            Ok(Err(error)) => {
                report_link_failure(&ctx, &error).await;
                client.send_failure(&error).await;
                return;
            }
            Err(_) => {
                let error = ProxyError::HandshakeTimeout(timeout.as_secs());
                report_link_failure(&ctx, &error).await;
                client.send_failure(&error).await;
                return;
            }
        };
        ctx.metrics()
            .handshake_seconds
            .observe(started.elapsed().as_secs_f64());
        run_channel(&ctx, client.stream, ready).await;
    }
    .instrument(span)
    .await;
}

async fn report_link_failure(ctx: &ProxyContext, error: &ProxyError) {
    ctx.metrics().link_failed(error.kind());
    match error {
        ProxyError::Denied(reason) => {
            ctx.metrics().auth_denied(reason.as_str());
            tracing::info!(reason = reason.as_str(), "client denied");
        }
        ProxyError::ClientIo(_)
        | ProxyError::ClientProtocol(_)
        | ProxyError::HandshakeTimeout(_)
        | ProxyError::UnsupportedAuth(_) => {
            tracing::info!(error = %error, "client link failed");
        }
        _ => tracing::warn!(error = %error, side = error.side().as_str(), "link failed"),
    }
}

/// A channel that completed the link stage on both legs.
pub struct Ready {
    /// The hypervisor connection, authenticated.
    upstream: Linked,
    /// The channel.
    channel: ChannelType,
    /// Its channel id.
    channel_id: u8,
    /// Header format on both legs.
    kind: HeaderKind,
    /// The session it belongs to, registered in this process.
    session: Arc<LocalSession>,
    /// The channel's row id.
    channel_row: i64,
    /// Whether this is the session's main channel.
    is_main: bool,
}

async fn link_stage<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<ProxyContext>,
    client: &mut ClientLink<S>,
) -> Result<Ready, ProxyError> {
    let message = client.read_link_message().await?;
    let channel = message.channel_type;
    tracing::Span::current().record("channel.kind", channel.name());
    let kind = HeaderKind::for_peer(&message.caps);
    let upstream_caps = message.caps.filter_for_proxy(channel);
    if channel == ChannelType::Main {
        link_main(ctx, client, &message, upstream_caps, kind).await
    } else {
        link_other(ctx, client, &message, upstream_caps, kind).await
    }
}

/// Decrypts the ticket with a one-time key and authorizes the token it carries.
async fn authorize<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &ProxyContext,
    client: &mut ClientLink<S>,
    reply_caps: Caps,
    client_caps: &Caps,
) -> Result<Authorized, ProxyError> {
    let key = ctx
        .keys
        .take()
        .await
        .map_err(|e| ProxyError::Internal(e.to_owned()))?;
    let reply = LinkReply {
        error: LinkError::Ok,
        pub_key: *key.public_der(),
        caps: reply_caps,
    };
    client.send_reply(&reply).await?;
    let ciphertext = client.read_ticket(client_caps).await?;
    let ticket = key
        .decrypt_ticket(&ciphertext)
        .map_err(|_| ProxyError::Denied(DenyReason::BadTicket))?;
    let token = ticket
        .as_str()
        .ok_or(ProxyError::Denied(DenyReason::BadTicket))?;
    let authorized = ctx
        .store
        .authorize(token)
        .await?
        .map_err(ProxyError::Denied)?;
    if authorized.console.stale {
        return Err(ProxyError::Denied(DenyReason::StaleConsole));
    }
    tracing::Span::current().record("console.uuid", authorized.console.uuid.as_str());
    Ok(authorized)
}

async fn link_main<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<ProxyContext>,
    client: &mut ClientLink<S>,
    message: &LinkMessage,
    upstream_caps: Caps,
    kind: HeaderKind,
) -> Result<Ready, ProxyError> {
    let permit = ctx
        .session_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ProxyError::TooManySessions(ctx.config.proxy.max_sessions))?;
    let mut reply_caps = proxy_common_caps(&message.caps);
    // Migration is never offered (the proxy blocks it); name/uuid and agent tokens are.
    reply_caps.set_channel(MAIN_CAP_NAME_AND_UUID);
    reply_caps.set_channel(MAIN_CAP_AGENT_CONNECTED_TOKENS);
    let authorized = authorize(ctx, client, reply_caps, &message.caps).await?;
    let client_ip = client.peer.ip().to_string();
    if let Some(bound) = &authorized.bound_address
        && bound != &client_ip
    {
        return Err(ProxyError::Denied(DenyReason::BoundElsewhere));
    }
    let target = ctx.target(&authorized.console)?;
    // A non-zero connection id would make the hypervisor treat this as a migration target.
    let upstream_message = LinkMessage::new(
        0,
        ChannelType::Main,
        message.channel_id,
        as_link_client(upstream_caps),
    );
    let mut linked = match upstream::link(&target, &upstream_message).await {
        Ok(linked) => linked,
        Err(e) => {
            ctx.audit_hypervisor_failure(&authorized.console, None, &e);
            return Err(e);
        }
    };
    if let Err(e) = upstream::authenticate(&mut linked, &target).await {
        ctx.audit_hypervisor_failure(&authorized.console, None, &e);
        return Err(e);
    }
    let session = ctx.start_session(&authorized, &client_ip, permit).await?;
    ctx.audit_hypervisor_connected(&session, ChannelType::Main, &linked.addr);
    tracing::Span::current().record("session.id", session.id.as_str());
    let channel_row = ctx
        .start_channel(&session, ChannelType::Main, message.channel_id, &client_ip)
        .await?;
    client.send_ok().await?;
    Ok(Ready {
        upstream: linked,
        channel: ChannelType::Main,
        channel_id: message.channel_id,
        kind,
        session,
        channel_row,
        is_main: true,
    })
}

async fn link_other<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<ProxyContext>,
    client: &mut ClientLink<S>,
    message: &LinkMessage,
    upstream_caps: Caps,
    kind: HeaderKind,
) -> Result<Ready, ProxyError> {
    let channel = message.channel_type;
    let session = ctx.find_session(message.connection_id).await?;
    tracing::Span::current().record("session.id", session.id.as_str());
    let console: ConsoleTarget = ctx.store.console_target(session.console_id).await?;
    let target = ctx.target(&console)?;
    let upstream_id = session
        .upstream_session_id()
        .ok_or(ProxyError::Denied(DenyReason::UnknownSession))?;
    let upstream_message = LinkMessage::new(
        upstream_id,
        channel,
        message.channel_id,
        as_link_client(upstream_caps),
    );
    let mut linked = match upstream::link(&target, &upstream_message).await {
        Ok(linked) => linked,
        Err(e) => {
            ctx.audit_hypervisor_failure(&console, Some(&session.id), &e);
            return Err(e);
        }
    };
    // Tell the client what the hypervisor granted for this channel, minus what the proxy
    // cannot carry.
    let granted = linked.reply.caps.filter_for_proxy(channel);
    let mut reply_caps = proxy_common_caps(&message.caps);
    reply_caps.channel = granted.channel;
    let authorized = authorize(ctx, client, reply_caps, &message.caps).await?;
    if Some(authorized.token_id) != session.token_id {
        return Err(ProxyError::Denied(DenyReason::WrongSession));
    }
    let client_ip = client.peer.ip().to_string();
    if authorized
        .bound_address
        .as_deref()
        .is_some_and(|bound| bound != client_ip)
    {
        return Err(ProxyError::Denied(DenyReason::BoundElsewhere));
    }
    if let Err(e) = upstream::authenticate(&mut linked, &target).await {
        ctx.audit_hypervisor_failure(&console, Some(&session.id), &e);
        return Err(e);
    }
    ctx.audit_hypervisor_connected(&session, channel, &linked.addr);
    let channel_row = ctx
        .start_channel(&session, channel, message.channel_id, &client_ip)
        .await?;
    client.send_ok().await?;
    Ok(Ready {
        upstream: linked,
        channel,
        channel_id: message.channel_id,
        kind,
        session,
        channel_row,
        is_main: false,
    })
}

/// Relays a linked channel until it ends, then records how it ended.
async fn run_channel<S>(ctx: &Arc<ProxyContext>, client: S, ready: Ready)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Ready {
        upstream,
        channel,
        channel_id,
        kind,
        session,
        channel_row,
        is_main,
    } = ready;
    let meter = Arc::new(Meter::new(ctx.metrics().byte_counters(channel)));
    session.add_meter(meter.clone());
    ctx.metrics().channel_opened(channel);
    tracing::info!(channel.id = channel_id, hypervisor = %upstream.addr, "channel linked");
    let idle = Duration::from_secs(ctx.config.proxy.idle_timeout);
    let cancel = session.cancel.clone();
    let end = if is_main {
        let hook_ctx = ctx.clone();
        let hook_session = session.clone();
        let hook: relay::MainInitHook<'_> = Box::new(move |upstream_id| {
            Box::pin(async move {
                hook_ctx
                    .record_upstream_session(&hook_session, upstream_id)
                    .await
            })
        });
        relay::relay_main(
            client,
            upstream.stream,
            kind,
            session.proxy_connection_id,
            hook,
            meter.clone(),
            idle,
            cancel,
        )
        .await
    } else {
        relay::relay_opaque(client, upstream.stream, meter.clone(), idle, cancel).await
    };
    let (to_client, to_server) = meter.totals();
    ctx.metrics().channel_closed(channel);
    let reason = match &end {
        RelayEnd::Closed(side) => format!("{} closed the connection", side.as_str()),
        RelayEnd::Idle => "idle timeout".to_owned(),
        RelayEnd::Cancelled => session
            .end_reason()
            .unwrap_or_else(|| "proxy shutting down".to_owned()),
        RelayEnd::Failed(e) => e.to_string(),
    };
    tracing::info!(channel.id = channel_id, bytes_to_client = to_client, bytes_to_server = to_server, reason = %reason, "channel ended");
    ctx.end_channel(&session, channel_row, to_client, to_server)
        .await;
    if is_main {
        // The session ends with its main channel: close its other channels on this node.
        session.end(&reason);
        ctx.end_session(&session, &reason).await;
    }
}
