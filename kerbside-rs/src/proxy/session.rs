//! One client connection, from its transport to the end of its channel: a [`Handler`] per
//! connection whose [`Handler::run`] drives an explicit state machine (`Stage`): read the
//! client's link message, route it, authorize the client's ticket, link the hypervisor, relay.
//! Every stage before the relay runs under `[proxy] handshake_timeout` (counted from accept)
//! and selects on the process's stop token; the relay selects on its session's.
//!
//! Main and other channels take the same stages; where they differ is what routing finds:
//! - main: a new session. The client is answered at once with a fixed set of capabilities and
//!   a ticket key; once its token is authorized and a `max_sessions` slot taken, the
//!   hypervisor is linked and authenticated while the session row is created, then OK is sent;
//! - other channels: the connection id names a live session, so routing already links the
//!   hypervisor (unauthenticated), and the client is offered the capabilities the hypervisor
//!   granted (minus what the proxy cannot carry); once its token is checked against the
//!   session, the hypervisor leg is authenticated, then OK is sent.
//!
//! The database is asked as little as the link needs: one query authorizes a token (token,
//! console and source together); a session remembers its console and its firewall profile, so
//! its other channels on the same node route without a query (a node that sees a session
//! first reads both with it, the profile as recorded when the session started); channel rows
//! and audit events are written after the client has its link result, never before.
//!
//! Whatever the channel, an address that used up its failed links (see `limits`) is refused
//! right after its link message, before any key or database work; a connection holds its
//! handshake slot from accept until the link stage ends.
//!
//! The client's link result is only sent once the hypervisor accepted, and it is flushed in a
//! TLS record of its own before any hypervisor byte is relayed (spice-gtk 0.42 stalls when the
//! result shares a record with the next message). Any failure gets the matching SPICE link
//! error, never an OK followed by a dropped socket.
//!
//! The handler is generic over the client's byte transport: [`serve_tls`] makes a TLS stream of
//! an accepted TCP connection, the `transport` module a WebSocket, and both hand it to
//! [`serve_client`], so both transports share one code path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ProxyContext;
use super::end::EndReason;
use super::error::{DenyReason, ProxyError};
use super::limits::{HandshakeSlot, Level};
use super::registry::LocalSession;
use super::relay::{self, Filtering, Meter, RecordWrite, RelayEnd};
use super::store::{Authorized, ConsoleTarget};
use super::upstream::{self, Linked, Target, UpstreamStream};
use crate::spice::consts::{
    AUTH_SPICE, COMMON_CAP_AUTH_SELECTION, COMMON_CAP_AUTH_SPICE, COMMON_CAP_MINI_HEADER,
    MAIN_CAP_AGENT_CONNECTED_TOKENS, MAIN_CAP_NAME_AND_UUID, TICKET_LEN,
};
use crate::spice::firewall::{ChannelFilters, Direction, Mode, Profile, allows_channel};
use crate::spice::{
    Caps, ChannelType, HeaderKind, LinkError, LinkMessage, LinkReply, SpiceError,
    encode_link_error, encode_link_result, parse_link_message,
};

/// Where the client is in the SPICE link stage, which decides how a failure is reported.
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
    /// The client's transport (TLS, or another byte stream carrying SPICE).
    stream: S,
    /// How a failure is reported.
    state: LinkState,
    /// The client's address.
    peer: SocketAddr,
    /// True from taking a ticket key until the client's ticket arrived: a failure of the
    /// client meanwhile wasted the key, and counts as a failed link of its address.
    ticket_pending: bool,
    /// How the client reached the proxy (recorded on its session).
    transport: Transport,
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
        self.ticket_pending = false;
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

/// The span every log line of one client connection goes in; `channel.kind`, `session.id` and
/// `console.uuid` are filled in as the link stage learns them.
pub fn connection_span(peer: SocketAddr) -> tracing::Span {
    tracing::info_span!("spice", client.addr = %peer, channel.kind = tracing::field::Empty, session.id = tracing::field::Empty, console.uuid = tracing::field::Empty)
}

/// Serves one accepted TCP connection on the TLS listener, start to end: the TLS handshake,
/// then a [`Handler`]. `handshake` is held until the link stage ends.
///
/// # Cancel safety
/// Dropping the future closes the connection; a session it created is ended (see
/// [`Handler::run`]).
pub async fn serve_tls(
    ctx: Arc<ProxyContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: HandshakeSlot,
) {
    async move {
        let _ = tcp.set_nodelay(true);
        let started = Instant::now();
        let deadline = link_deadline(&ctx);
        let stop = ctx.shutdown.stop_token().clone();
        // One deadline for TLS and the link stage together: a client that is slow in both
        // still goes at handshake_timeout. The handshake's future and its stream live on the
        // heap (see `Handler::advance`); the stream moves on as a pointer.
        let tls = {
            let accept = Box::pin(ctx.tls.accept(tcp));
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                tls = tokio::time::timeout_at(deadline, accept) => tls,
            };
            match accepted {
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
            }
        };
        let accepted = Accepted {
            peer,
            handshake,
            started,
            deadline,
            transport: Transport::Tls,
        };
        serve_client(&ctx, tls, accepted).await;
    }
    .instrument(connection_span(peer))
    .await;
}

/// How a client reached the proxy; recorded on its session and used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// SPICE over TLS (remote-viewer and other SPICE clients).
    Tls,
    /// SPICE over WebSocket (browsers), with or without TLS underneath.
    WebSocket,
}

impl Transport {
    /// The name stored on sessions and used in metrics: `tls` or `websocket`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::WebSocket => "websocket",
        }
    }
}

/// A client connection whose byte transport is ready (TLS done, or a WebSocket accepted),
/// about to enter the link stage.
pub struct Accepted {
    /// The client's address.
    pub peer: SocketAddr,
    /// Held until the link stage ends.
    pub handshake: HandshakeSlot,
    /// When the TCP connection was accepted.
    pub started: Instant,
    /// When the handshake (transport and link stage together) times out.
    pub deadline: tokio::time::Instant,
    /// How the client reached the proxy.
    pub transport: Transport,
}

/// The link stage and the relay of one channel, whatever byte transport carries it: the
/// same limits, timeouts, authorization, upstream link, firewall and bookkeeping for a TLS
/// connection and for a WebSocket (see [`Handler`]). Runs inside the caller's span.
///
/// # Cancel safety
/// As [`Handler::run`].
pub async fn serve_client<S>(ctx: &Arc<ProxyContext>, stream: S, accepted: Accepted)
where
    S: AsyncRead + RecordWrite + Unpin + Send,
{
    Handler::new(ctx.clone(), stream, accepted).run().await;
}

/// When a link stage that starts now must be over: `[proxy] handshake_timeout` from now.
pub fn link_deadline(ctx: &ProxyContext) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(ctx.config.proxy.handshake_timeout)
}

/// The stages of one connection, in order. Every stage but `Relay` runs under the link-stage
/// deadline and the stop token (see [`Handler::run`]).
enum Stage {
    /// Reading the client's link message.
    ReadLink,
    /// Deciding what the channel joins: a new session (main), or the live session its
    /// connection id names, whose hypervisor is then linked to learn what it grants.
    Route(LinkMessage),
    /// Sending the link reply with a ticket key, reading the ticket and authorizing its token.
    Authorize(Box<Linking>),
    /// Linking (main) and authenticating the hypervisor leg, creating the session (main),
    /// then telling the client OK.
    LinkUpstream(Box<Linking>, Box<Authorized>),
    /// Both legs linked: relaying until the channel ends.
    Relay(Box<Ready>),
}

/// A link stage in progress, past routing.
struct Linking {
    /// The client's link message.
    message: LinkMessage,
    /// Header format on both legs.
    kind: HeaderKind,
    /// The client's capabilities as the hypervisor may see them.
    upstream_caps: Caps,
    /// The capabilities the client is offered in the link reply.
    reply_caps: Caps,
    /// What the channel joins.
    route: Route,
}

/// What a channel joins.
enum Route {
    /// A main channel: a new session of the console the client's token names.
    NewSession,
    /// Another channel of a live session; its hypervisor leg is linked already.
    Join(Box<Joining>),
}

/// A non-main channel of a live session, routed.
struct Joining {
    /// The session its connection id names.
    session: Arc<LocalSession>,
    /// The session's console.
    console: Arc<ConsoleTarget>,
    /// How to reach the console's hypervisor.
    target: Target,
    /// The session's firewall profile.
    profile: Arc<Profile>,
    /// The hypervisor leg, linked but not yet authenticated.
    upstream: Linked,
}

/// A channel that completed the link stage on both legs.
struct Ready {
    /// The hypervisor connection, authenticated (on the heap, like the client's: each holds
    /// over a kilobyte of TLS state that the relay's task should not carry twice).
    upstream: Box<UpstreamStream>,
    /// The hypervisor's address, for logs.
    hypervisor: String,
    /// The channel.
    channel: ChannelType,
    /// Its channel id.
    channel_id: u8,
    /// Header format on both legs.
    kind: HeaderKind,
    /// The session it belongs to, registered in this process.
    session: Arc<LocalSession>,
    /// The channel's row id.
    channel_row: crate::db::models::ChannelId,
    /// Whether this is the session's main channel.
    is_main: bool,
    /// The firewall profile in force.
    profile: Arc<Profile>,
}

/// One client connection, from its established transport to the end of its channel.
pub struct Handler<S> {
    /// What every connection shares.
    ctx: Arc<ProxyContext>,
    /// The client, and how a failure is reported to it. The stream is boxed: it moves from
    /// the link stage into the relay as a pointer.
    client: ClientLink<Box<S>>,
    /// The connection's handshake slot, released when the link stage ends.
    handshake: Option<HandshakeSlot>,
    /// When the connection was accepted (for the handshake duration metric).
    started: Instant,
    /// When the link stage must be over.
    deadline: tokio::time::Instant,
    /// The process's stop token: the link stage is abandoned when it fires.
    stop: CancellationToken,
}

impl<S> Handler<S>
where
    S: AsyncRead + RecordWrite + Unpin + Send,
{
    /// A handler for an accepted client connection whose transport is up: `stream` carries
    /// the client's SPICE bytes. The link stage must be over by `accepted.deadline` (see
    /// [`link_deadline`]); its handshake slot is held until then.
    pub fn new(ctx: Arc<ProxyContext>, stream: S, accepted: Accepted) -> Self {
        let Accepted {
            peer,
            handshake,
            started,
            deadline,
            transport,
        } = accepted;
        let stop = ctx.shutdown.stop_token().clone();
        Handler {
            ctx,
            client: ClientLink {
                stream: Box::new(stream),
                state: LinkState::AwaitingLinkMessage,
                peer,
                ticket_pending: false,
                transport,
            },
            handshake: Some(handshake),
            started,
            deadline,
            stop,
        }
    }

    /// Runs the connection to its end: the link stage one `Stage` at a time, each under the
    /// deadline and the stop token, then the relay, which ends with its session's cancel
    /// token (a child of the stop token). A link-stage failure is counted, logged once and
    /// reported to the client as the SPICE link error its state expects.
    ///
    /// # Cancel safety
    /// Dropping the future closes the connection. A session created by an unfinished main
    /// link is ended; a relaying channel is not recorded as ended (the caller should let the
    /// relay end through the session's cancel token instead).
    pub async fn run(mut self) {
        let mut stage = Stage::ReadLink;
        loop {
            stage = match stage {
                Stage::Relay(ready) => {
                    drop(self.handshake.take());
                    self.ctx
                        .metrics()
                        .handshake_seconds
                        .observe(self.started.elapsed().as_secs_f64());
                    let by_transport = self.ctx.metrics().transport(self.client.transport.as_str());
                    if ready.is_main {
                        by_transport.sessions.inc();
                    }
                    by_transport.channels_active.inc();
                    let Handler { ctx, client, .. } = self;
                    relay(ctx, client.stream, ready).await;
                    by_transport.channels_active.dec();
                    return;
                }
                stage => match self.advance(stage).await {
                    Ok(next) => next,
                    Err(error) => {
                        self.report_link_failure(&error);
                        self.client.send_failure(&error).await;
                        return;
                    }
                },
            };
        }
    }

    /// Runs one link-stage stage under the deadline and the stop token.
    ///
    /// The stage's future lives on the heap while it runs: the link stage's futures (a TLS
    /// connection to the hypervisor, the session's database work) are many times larger than
    /// the relay's, and a connection's task is as large as the largest future it ever awaits
    /// inline, for as long as the connection lives.
    async fn advance(&mut self, stage: Stage) -> Result<Stage, ProxyError> {
        let stop = self.stop.clone();
        let deadline = self.deadline;
        let timeout = self.ctx.config.proxy.handshake_timeout;
        let step = Box::pin(self.step(stage));
        tokio::select! {
            biased;
            () = stop.cancelled() => Err(ProxyError::ShuttingDown),
            step = tokio::time::timeout_at(deadline, step) => {
                step.unwrap_or(Err(ProxyError::HandshakeTimeout(timeout)))
            }
        }
    }

    async fn step(&mut self, stage: Stage) -> Result<Stage, ProxyError> {
        match stage {
            Stage::ReadLink => self.read_link().await,
            Stage::Route(message) => self.route(message).await,
            Stage::Authorize(linking) => self.authorize(*linking).await,
            Stage::LinkUpstream(linking, authorized) => {
                self.link_upstream(*linking, *authorized).await
            }
            Stage::Relay(ready) => Ok(Stage::Relay(ready)),
        }
    }

    /// Reads the client's link message; an address that keeps failing gets an error at once,
    /// before any key or database work.
    async fn read_link(&mut self) -> Result<Stage, ProxyError> {
        let message = self.client.read_link_message().await?;
        tracing::Span::current().record("channel.kind", message.channel_type.name());
        if !self.ctx.limits.link_allowed(self.client.peer.ip()) {
            return Err(ProxyError::Throttled);
        }
        Ok(Stage::Route(message))
    }

    /// Decides what the channel joins and what the client is offered.
    async fn route(&mut self, message: LinkMessage) -> Result<Stage, ProxyError> {
        let channel = message.channel_type;
        let kind = HeaderKind::for_peer(&message.caps);
        let upstream_caps = message.caps.filter_for_proxy(channel);
        let mut reply_caps = proxy_common_caps(&message.caps);
        let route = if channel == ChannelType::Main {
            // Migration is never offered (the proxy blocks it); name/uuid and agent tokens are.
            reply_caps.set_channel(MAIN_CAP_NAME_AND_UUID);
            reply_caps.set_channel(MAIN_CAP_AGENT_CONNECTED_TOKENS);
            Route::NewSession
        } else {
            let joining = self.join(&message, &upstream_caps).await?;
            // Tell the client what the hypervisor granted for this channel, minus what the
            // proxy cannot carry.
            reply_caps.channel = joining
                .upstream
                .reply
                .caps
                .filter_for_proxy(channel)
                .channel;
            Route::Join(Box::new(joining))
        };
        Ok(Stage::Authorize(Box::new(Linking {
            message,
            kind,
            upstream_caps,
            reply_caps,
            route,
        })))
    }

    /// Finds the live session a non-main channel names, checks its profile allows the
    /// channel, and links the hypervisor (without authenticating yet).
    async fn join(
        &self,
        message: &LinkMessage,
        upstream_caps: &Caps,
    ) -> Result<Joining, ProxyError> {
        let ctx = &self.ctx;
        let channel = message.channel_type;
        let session = ctx.find_session(message.connection_id).await?;
        tracing::Span::current().record("session.id", session.id.as_str());
        // The session remembers its console; only a session first seen here is read from the
        // database (by `find_session`, in the same query).
        let console: Arc<ConsoleTarget> = match session.target() {
            Some(console) => console,
            None => {
                let console = ctx.store.console_target(session.console_id).await?;
                session.set_target(console)
            }
        };
        // The profile the session started with, wherever its main channel is; only a session
        // that recorded none (started before the firewall) takes its console's.
        let profile = match session.firewall_profile() {
            Some(profile) => profile,
            None => ctx.firewall_profile(console.firewall_profile.as_deref()).1,
        };
        // Like spice-server for a channel the VM lacks: refused before any ticket work.
        check_channel_type(ctx, &profile, channel)?;
        let target = ctx.hypervisors.target(&console)?;
        let upstream_id = session
            .upstream_session_id()
            .ok_or(ProxyError::Denied(DenyReason::UnknownSession))?;
        let upstream_message = LinkMessage::new(
            upstream_id,
            channel,
            message.channel_id,
            as_link_client(upstream_caps.clone()),
        );
        let upstream = upstream::link(&target, &upstream_message)
            .await
            .inspect_err(|e| ctx.audit_hypervisor_failure(&console, Some(&session.id), e))?;
        Ok(Joining {
            session,
            console,
            target,
            profile,
            upstream,
        })
    }

    /// Sends the link reply with a ticket key, reads the client's ticket and authorizes its
    /// token: for this client's address, and for a non-main channel, for its session.
    async fn authorize(&mut self, linking: Linking) -> Result<Stage, ProxyError> {
        let authorized = authorize(
            &self.ctx,
            &mut self.client,
            linking.reply_caps.clone(),
            &linking.message.caps,
        )
        .await?;
        if let Route::Join(joining) = &linking.route
            && Some(authorized.token_id) != joining.session.token_id
        {
            return Err(ProxyError::Denied(DenyReason::WrongSession));
        }
        let client_ip = self.client.peer.ip().to_string();
        if authorized
            .bound_address
            .as_deref()
            .is_some_and(|bound| bound != client_ip)
        {
            return Err(ProxyError::Denied(DenyReason::BoundElsewhere));
        }
        Ok(Stage::LinkUpstream(Box::new(linking), Box::new(authorized)))
    }

    /// Completes the hypervisor leg (a main channel links it and creates its session at the
    /// same time), tells the client OK and records the channel.
    async fn link_upstream(
        &mut self,
        linking: Linking,
        authorized: Authorized,
    ) -> Result<Stage, ProxyError> {
        let ctx = self.ctx.clone();
        let Linking {
            message,
            kind,
            upstream_caps,
            route,
            ..
        } = linking;
        match route {
            Route::NewSession => {
                let client_ip = self.client.peer.ip().to_string();
                // The new session ends if its client is not told OK.
                let (unfinished, upstream, profile) = self
                    .open_session(&message, upstream_caps, &authorized, &client_ip)
                    .await?;
                self.client.send_ok().await?;
                let session = unfinished.finish();
                Ok(self.linked(&message, kind, session, upstream, profile, true))
            }
            Route::Join(joining) => {
                let Joining {
                    session,
                    console,
                    target,
                    profile,
                    mut upstream,
                } = *joining;
                upstream::authenticate(&mut upstream, &target)
                    .await
                    .inspect_err(|e| {
                        ctx.audit_hypervisor_failure(&console, Some(&session.id), e)
                    })?;
                self.client.send_ok().await?;
                Ok(self.linked(&message, kind, session, upstream, profile, false))
            }
        }
    }

    /// For an authorized main channel: takes a session slot, links and authenticates the
    /// hypervisor while the session is created, and records the session's profile.
    async fn open_session(
        &self,
        message: &LinkMessage,
        upstream_caps: Caps,
        authorized: &Authorized,
        client_ip: &str,
    ) -> Result<(UnfinishedSession, Linked, Arc<Profile>), ProxyError> {
        let ctx = &self.ctx;
        // Only an authorized client takes a session slot, so clients that never send a ticket
        // cannot keep others out.
        let permit = ctx
            .session_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::TooManySessions(ctx.config.proxy.max_sessions))?;
        let target = ctx.hypervisors.target(&authorized.console)?;
        let (profile_name, profile) =
            ctx.firewall_profile(authorized.console.firewall_profile.as_deref());
        // A non-zero connection id would make the hypervisor treat this as a migration target.
        let upstream_message = LinkMessage::new(
            0,
            ChannelType::Main,
            message.channel_id,
            as_link_client(upstream_caps),
        );
        // The hypervisor link and the session's database row do not depend on each other, so
        // they run at the same time: the link result waits for the slower of the two, not both.
        let hypervisor = async {
            let mut linked = upstream::link(&target, &upstream_message).await?;
            upstream::authenticate(&mut linked, &target).await?;
            Ok::<_, ProxyError>(linked)
        };
        // The session is guarded as soon as it exists: should this stage be dropped while
        // the hypervisor is still linking, the guard ends it.
        let transport = self.client.transport;
        let session = async {
            let session = ctx
                .start_session(authorized, client_ip, permit, &profile_name, transport)
                .await?;
            Ok::<_, ProxyError>(UnfinishedSession {
                ctx: ctx.clone(),
                session,
                settled: false,
            })
        };
        let (linked, session) = tokio::join!(hypervisor, session);
        match (linked, session) {
            (Ok(linked), Ok(unfinished)) => {
                // Later channels use this profile even if the profiles file changes meanwhile.
                unfinished.session.set_firewall_profile(profile.clone());
                tracing::Span::current().record("session.id", unfinished.session.id.as_str());
                Ok((unfinished, linked, profile))
            }
            (Err(e), session) => {
                ctx.audit_hypervisor_failure(&authorized.console, None, &e);
                if let Ok(unfinished) = session {
                    // Recorded as an attempt that the hypervisor refused or never answered.
                    unfinished.abandon(EndReason::hypervisor_link_failed(&e));
                }
                Err(e)
            }
            // Dropping the authenticated hypervisor connection closes it.
            (Ok(_), Err(e)) => Err(e),
        }
    }

    /// Bookkeeping that the client need not wait for, after its link result.
    fn linked(
        &self,
        message: &LinkMessage,
        kind: HeaderKind,
        session: Arc<LocalSession>,
        upstream: Linked,
        profile: Arc<Profile>,
        is_main: bool,
    ) -> Stage {
        let channel = message.channel_type;
        let client_ip = self.client.peer.ip().to_string();
        self.ctx
            .audit_hypervisor_connected(&session, channel, &upstream.addr);
        let channel_row = self
            .ctx
            .start_channel(&session, channel, message.channel_id, &client_ip);
        Stage::Relay(Box::new(Ready {
            upstream: Box::new(upstream.stream),
            hypervisor: upstream.addr,
            channel,
            channel_id: message.channel_id,
            kind,
            session,
            channel_row,
            is_main,
            profile,
        }))
    }

    /// Counts a failed link stage, charges the client's failed-link bucket when the failure
    /// is the client's (a denial, or a wasted key), and logs it: failures of the client and
    /// refusals go through the refusal log, so a flood writes a line per address and interval.
    fn report_link_failure(&self, error: &ProxyError) {
        let ctx = &self.ctx;
        ctx.metrics().link_failed(error.kind());
        let ip = self.client.peer.ip();
        let client_failure = matches!(
            error,
            ProxyError::ClientIo(_)
                | ProxyError::ClientTls(_)
                | ProxyError::ClientProtocol(_)
                | ProxyError::HandshakeTimeout(_)
                | ProxyError::UnsupportedAuth(_)
        );
        if matches!(error, ProxyError::Denied(_)) || (client_failure && self.client.ticket_pending)
        {
            ctx.limits.link_failed(ip);
        }
        let limits = &ctx.limits;
        match error {
            ProxyError::Denied(reason) => {
                ctx.metrics().auth_denied(reason.as_str());
                limits.log_refusal(ip, reason.as_str(), Level::Info, "client denied", None);
            }
            ProxyError::Throttled => limits.log_refusal(
                ip,
                error.kind(),
                Level::Warn,
                "too many failed links from this address: refusing its links",
                None,
            ),
            ProxyError::TooManySessions(_) => limits.log_refusal(
                ip,
                error.kind(),
                Level::Warn,
                "session limit reached: refusing new sessions",
                Some(error),
            ),
            ProxyError::ShuttingDown => {
                tracing::debug!("link stage abandoned: kerbside is shutting down");
            }
            _ if client_failure => limits.log_refusal(
                ip,
                error.kind(),
                Level::Info,
                "client link failed",
                Some(error),
            ),
            _ => {
                // The words, and the underlying error (socket, TLS, protocol) for whoever
                // debugs it.
                let cause = std::error::Error::source(error).map(|c| format!("{c:?}"));
                tracing::warn!(error = %error, side = error.side().as_str(), cause, "link failed");
            }
        }
    }
}

/// Relays a linked channel until it ends, then records how it ended. Everything it is given
/// is a pointer: the streams' TLS state stays where the link stage put it.
async fn relay<S>(ctx: Arc<ProxyContext>, client: Box<S>, ready: Box<Ready>)
where
    S: AsyncRead + RecordWrite + Unpin + Send,
{
    let Ready {
        upstream,
        hypervisor,
        channel,
        channel_id,
        kind,
        session,
        channel_row,
        is_main,
        profile,
    } = *ready;
    let meter = Arc::new(Meter::new(ctx.metrics().byte_counters(channel)));
    session.add_meter(meter.clone());
    ctx.metrics().channel_opened(channel);
    tracing::info!(channel.id = channel_id, hypervisor = %hypervisor, "channel linked");
    let idle = Duration::from_secs(ctx.config.proxy.idle_timeout);
    let cancel = session.cancel.clone();
    let mut on_main_init: Option<relay::MainInitHook<'_>> = None;
    let filtering = if ctx.firewall_mode == Mode::Off && !needs_framing_when_off(channel) {
        Filtering::Opaque
    } else {
        let mut filters = ChannelFilters::new(profile, ctx.firewall_mode, channel, kind);
        let inspect = ctx.config.proxy.inspect;
        filters.client_to_server.set_inspect(inspect);
        filters.server_to_client.set_inspect(inspect);
        if is_main {
            filters
                .server_to_client
                .set_main_session_id(session.proxy_connection_id);
            let hook_ctx = ctx.clone();
            let hook_session = session.clone();
            on_main_init = Some(Box::new(move |upstream_id| {
                Box::pin(async move {
                    hook_ctx
                        .record_upstream_session(&hook_session, upstream_id)
                        .await
                })
            }));
        }
        Filtering::Firewall(Box::new(filters))
    };
    let hooks = relay::FilterHooks {
        verdicts: ctx.metrics().firewall_verdicts.clone(),
        on_main_init,
    };
    let (end, summary) = relay::relay_channel(
        client,
        upstream,
        kind,
        filtering,
        hooks,
        meter.clone(),
        idle,
        cancel,
    )
    .await;
    if summary.any_hits() {
        ctx.audit_firewall(&session, channel, channel_id, channel_row, &summary);
    }
    let (to_client, to_server) = meter.totals();
    ctx.metrics().channel_closed(channel);
    let reason = match end {
        RelayEnd::Cancelled => session.end_reason().unwrap_or(EndReason::ShuttingDown),
        other => EndReason::from(other),
    };
    // The reason is in words; the cause of a failure (with its library details) goes to
    // logs.
    let side = reason.side().map(super::error::Side::as_str);
    let cause = reason.cause().map(|c| format!("{c:?}"));
    tracing::info!(channel.id = channel_id, bytes_to_client = to_client, bytes_to_server = to_server, reason = %reason, side, cause, "channel ended");
    ctx.end_channel(
        &session,
        channel,
        channel_id,
        channel_row,
        &reason,
        (to_client, to_server),
    );
    if is_main {
        // The session ends with its main channel: close its other channels on this node.
        session.end(reason.clone());
        ctx.end_session(&session, &reason);
    }
}

/// Whether a channel is framed even with `[firewall] mode = off`: main (its session id is
/// rewritten and migration hidden) and the named channels (QEMU monitor ports stay refused).
fn needs_framing_when_off(channel: ChannelType) -> bool {
    matches!(
        channel,
        ChannelType::Main | ChannelType::Port | ChannelType::Webdav
    )
}

/// A session created for a main channel whose client has not been told OK yet: dropped
/// unfinished (the client went away, the deadline passed, the process is stopping), it ends
/// the session so that neither its row nor its `max_sessions` slot outlives the link.
struct UnfinishedSession {
    ctx: Arc<ProxyContext>,
    session: Arc<LocalSession>,
    /// Set once the session was handed on or ended: the drop then does nothing.
    settled: bool,
}

impl UnfinishedSession {
    /// The session, now that its client was told OK.
    fn finish(mut self) -> Arc<LocalSession> {
        self.settled = true;
        self.session.clone()
    }

    /// Ends the session, for `reason`.
    fn abandon(mut self, reason: EndReason) {
        self.end(reason);
    }

    fn end(&mut self, reason: EndReason) {
        if !self.settled {
            self.settled = true;
            self.session.end(reason.clone());
            self.ctx.end_session(&self.session, &reason);
        }
    }
}

impl Drop for UnfinishedSession {
    fn drop(&mut self) {
        self.end(EndReason::LinkIncomplete);
    }
}

/// Decrypts the ticket with a ticket key from the pool and authorizes the token it carries.
async fn authorize<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &ProxyContext,
    client: &mut ClientLink<S>,
    reply_caps: Caps,
    client_caps: &Caps,
) -> Result<Authorized, ProxyError> {
    let key = ctx.keys.take().await.map_err(ProxyError::KeyPool)?;
    client.ticket_pending = true;
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

/// The link-time firewall rule: refuses a channel type the profile denies (counted as a
/// `close` verdict); in warn mode the channel links and the verdict is counted as
/// `warn_close`; in mode off nothing is checked.
///
/// # Errors
/// `ChannelDenied` when the channel may not link.
fn check_channel_type(
    ctx: &ProxyContext,
    profile: &Profile,
    channel: ChannelType,
) -> Result<(), ProxyError> {
    if ctx.firewall_mode == Mode::Off {
        return Ok(());
    }
    let Err(rule) = allows_channel(profile, channel) else {
        return Ok(());
    };
    let enforced = ctx.firewall_mode == Mode::Enforce;
    ctx.metrics()
        .firewall_verdicts
        .with_label_values(&[
            channel.name(),
            Direction::ClientToServer.name(),
            rule.name(),
            if enforced { "close" } else { "warn_close" },
        ])
        .inc();
    if enforced {
        Err(ProxyError::ChannelDenied(channel))
    } else {
        tracing::info!(
            rule = rule.name(),
            "firewall rule hit: the profile denies this channel type (warn mode: linking it)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Arc<ProxyContext>, TcpStream, SocketAddr, HandshakeSlot) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_connections_task_stays_small_for_as_long_as_it_relays() {
        // A connection's task is as large as the largest future it awaits inline, for as long
        // as the channel lives: the link stage's futures and the TLS streams (each over a
        // kilobyte) must stay on the heap, or every idle channel carries some 15 KiB.
        let size = future_size(serve_tls);
        assert!(size <= 4096, "serve_tls's future is {size} bytes");
    }
}
