//! The proxy's listening sockets: binding them, accepting connections within
//! `[proxy] max_connections` and the per-address admission of `limits`, and handing each
//! connection to its transport (TLS and WebSocket to `session`/`transport`; the plain port is
//! answered here with NEED_SECURED, so no session ever runs in clear text).
//!
//! It owns no session state and never touches the database; what a connection does after it
//! is accepted belongs to `session`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ProxyContext, ProxyHandle, StartError, limits, session, transport};
use crate::spice::{LinkError, SpiceError, encode_link_error, parse_link_message};

/// Binds every listener the configuration asks for (TLS and plain on each `[proxy] bind_host`,
/// WebSocket on each `[html5] bind_host` when browser consoles are on), records their
/// addresses in `handle` and starts their accept loops on the shutdown's tracker.
///
/// # Errors
/// [`StartError::Listen`] for the first address that cannot be bound.
pub(super) fn start_listeners(
    ctx: &Arc<ProxyContext>,
    handle: &mut ProxyHandle,
) -> Result<(), StartError> {
    let config = &ctx.config;
    let max_connections = usize::try_from(config.proxy.max_connections).unwrap_or(10_000);
    let listen = |addr: SocketAddr, kind: ListenerKind| -> Result<SocketAddr, StartError> {
        let failed = |source| StartError::Listen { addr, source };
        let listener = bind(addr).map_err(failed)?;
        let local = listener.local_addr().map_err(failed)?;
        let slots = Arc::new(Semaphore::new(max_connections));
        ctx.shutdown
            .tracker()
            .spawn(accept_loop(ctx.clone(), listener, kind, slots));
        Ok(local)
    };
    for host in &config.proxy.bind_host {
        let local = listen(
            SocketAddr::new(*host, config.proxy.tls_port),
            ListenerKind::Tls,
        )?;
        handle.tls_addrs.push(local);
        tracing::info!(address = %local, tls = true, "SPICE listener ready");
        let local = listen(
            SocketAddr::new(*host, config.proxy.insecure_port),
            ListenerKind::Insecure,
        )?;
        handle.insecure_addrs.push(local);
        tracing::info!(address = %local, tls = false, "SPICE listener ready");
    }
    if config.html5.enabled {
        for host in &config.html5.bind_host {
            let local = listen(
                SocketAddr::new(*host, config.html5.bind_port),
                ListenerKind::WebSocket,
            )?;
            handle.websocket_addrs.push(local);
            tracing::info!(
                address = %local,
                tls = !config.html5.insecure_websocket,
                "SPICE WebSocket listener ready (browser consoles)"
            );
        }
    }
    Ok(())
}

/// Binds a listening socket; IPv6 sockets are IPv6-only so `0.0.0.0` and `::` can be listed
/// together.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListenerKind {
    /// SPICE over TLS.
    Tls,
    /// Plain SPICE, answered with NEED_SECURED.
    Insecure,
    /// SPICE over WebSocket, for browsers (`[html5]`).
    WebSocket,
}

async fn accept_loop(
    ctx: Arc<ProxyContext>,
    listener: TcpListener,
    kind: ListenerKind,
    slots: Arc<Semaphore>,
) {
    let label = match kind {
        ListenerKind::Tls => "tls",
        ListenerKind::Insecure => "insecure",
        ListenerKind::WebSocket => "websocket",
    };
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.token().cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                // Usually out of file descriptors: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            ctx.metrics.proxy.link_failed("connection_limit");
            ctx.limits.log_refusal(
                peer.ip(),
                "connection_limit",
                limits::Level::Warn,
                "connection limit reached: closing new connections",
                None,
            );
            continue;
        };
        // Closing before TLS costs the client's address nothing but a SYN and the node next
        // to nothing.
        let handshake = match ctx.limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                ctx.metrics.proxy.link_failed(refusal.as_str());
                ctx.limits.log_refusal(
                    peer.ip(),
                    refusal.as_str(),
                    limits::Level::Warn,
                    refusal.message(),
                    None,
                );
                continue;
            }
        };
        ctx.metrics
            .proxy
            .connections
            .with_label_values(&[label])
            .inc();
        // One task per connection, spawned per transport: a task is as large as its future,
        // for as long as its channel lives, and a `match` over the transports inside one task
        // would give every TLS channel the WebSocket handler's size too (13 KB against 4).
        let ctx2 = ctx.clone();
        let tracker = ctx.shutdown.tracker();
        match kind {
            ListenerKind::Tls => tracker.spawn(tls_connection(ctx2, tcp, peer, handshake, permit)),
            ListenerKind::Insecure => {
                tracker.spawn(plain_connection(ctx2, tcp, peer, handshake, permit))
            }
            ListenerKind::WebSocket => {
                tracker.spawn(websocket_connection(ctx2, tcp, peer, handshake, permit))
            }
        };
    }
}

/// A TLS connection, holding its `[proxy] max_connections` slot.
async fn tls_connection(
    ctx: Arc<ProxyContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: limits::HandshakeSlot,
    _slot: OwnedSemaphorePermit,
) {
    session::serve_tls(ctx, tcp, peer, handshake).await;
}

/// A plain connection (answered NEED_SECURED), holding its `[proxy] max_connections` slot.
async fn plain_connection(
    ctx: Arc<ProxyContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: limits::HandshakeSlot,
    _slot: OwnedSemaphorePermit,
) {
    serve_insecure(&ctx, tcp, peer, handshake).await;
}

/// A WebSocket connection, holding its `[proxy] max_connections` slot.
async fn websocket_connection(
    ctx: Arc<ProxyContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: limits::HandshakeSlot,
    _slot: OwnedSemaphorePermit,
) {
    transport::serve_websocket(ctx, tcp, peer, handshake).await;
}

/// The plain listener: reads a link message and answers NEED_SECURED (or the error the
/// message deserves), so clients retry on the TLS port. No session ever runs in clear text.
/// The connection holds its handshake slot until it is answered.
async fn serve_insecure(
    ctx: &ProxyContext,
    mut tcp: TcpStream,
    peer: SocketAddr,
    _handshake: limits::HandshakeSlot,
) {
    let timeout = Duration::from_secs(ctx.config.proxy.handshake_timeout);
    let read = tokio::time::timeout(timeout, async {
        let mut buf = Vec::with_capacity(64);
        loop {
            match parse_link_message(&buf) {
                Ok(_) => return Ok::<_, std::io::Error>(LinkError::NeedSecured),
                Err(SpiceError::Incomplete { needed }) => {
                    let start = buf.len();
                    buf.resize(start + needed, 0);
                    tcp.read_exact(buf.get_mut(start..).unwrap_or_default())
                        .await?;
                }
                Err(e) => return Ok(e.link_error()),
            }
        }
    })
    .await;
    let code = match read {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            tracing::debug!(client.addr = %peer, error = %e, "plain connection closed during link");
            return;
        }
        Err(_) => {
            ctx.metrics.proxy.link_failed("handshake_timeout");
            tracing::debug!(client.addr = %peer, "plain connection timed out");
            return;
        }
    };
    if code != LinkError::NeedSecured {
        ctx.metrics.proxy.link_failed("client_protocol");
    }
    let _ = tcp.write_all(&encode_link_error(code)).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(
            Arc<ProxyContext>,
            TcpStream,
            SocketAddr,
            limits::HandshakeSlot,
            OwnedSemaphorePermit,
        ) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_tls_connections_task_is_not_as_large_as_a_websockets() {
        // The task spawned for each TLS connection lives as long as its channel: it must be
        // the TLS handler's size, not that of the largest transport's handler.
        let tls = future_size(tls_connection);
        let websocket = future_size(websocket_connection);
        assert!(tls <= 4096, "a TLS connection's task is {tls} bytes");
        assert!(
            tls < websocket,
            "TLS {tls} bytes, WebSocket {websocket} bytes: the test no longer tells them apart"
        );
    }
}
