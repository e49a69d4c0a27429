//! Client transports: how a client's SPICE bytes reach the link stage. A SPICE client speaks
//! SPICE over TLS; a browser (the spice-html5 client) speaks SPICE over WebSocket, one channel
//! per WebSocket, in binary frames, as websockify carries it.
//!
//! This module owns the WebSocket listener's side of a connection: TLS (unless `[html5]
//! insecure_websocket`), the HTTP upgrade with its `Origin` check and `binary` subprotocol,
//! and [`WsStream`], which turns the frames into a byte stream. From there the connection goes
//! through exactly the same code as a TLS one ([`session::serve_client`]): link stage, limits,
//! timeouts, authorization, upstream link, firewall, relay, metrics and audit. It does not
//! know SPICE.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};
use tracing::Instrument;

use super::ProxyContext;
use super::limits::HandshakeSlot;
use super::relay::RecordWrite;
use super::session::{self, Accepted, Transport};

/// The WebSocket subprotocol spice-html5 asks for: raw bytes in binary frames.
const SUBPROTOCOL: &str = "binary";
/// Largest WebSocket message (and frame) accepted from a browser. spice-html5 sends one SPICE
/// message per frame, and spice-server's largest client message is 26 KiB.
const MAX_CLIENT_MESSAGE: usize = 256 * 1024;
/// Largest binary frame sent to the browser; larger writes are split.
const MAX_SERVER_FRAME: usize = 64 * 1024;
/// The close reason a browser's page is given when its Origin is refused.
pub const ORIGIN_REFUSED: &str = "origin not allowed";

/// What the upgrade request said, kept for after the handshake.
#[derive(Debug, Default)]
struct Upgrade {
    /// Why the Origin is refused, if it is.
    origin_refused: Option<String>,
}

/// Serves one accepted TCP connection on the WebSocket listener, start to end: TLS unless
/// `[html5] insecure_websocket`, the upgrade, then [`session::serve_client`]. `handshake` is
/// held until the link stage ends, and `[proxy] handshake_timeout` covers TLS, the upgrade and
/// the link stage together.
pub async fn serve_websocket(
    ctx: Arc<ProxyContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: HandshakeSlot,
) {
    let span = tracing::info_span!("spice", client.addr = %peer, transport = "websocket", channel.kind = tracing::field::Empty, session.id = tracing::field::Empty, console.uuid = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let started = Instant::now();
        let timeout = Duration::from_secs(ctx.config.proxy.handshake_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        if ctx.config.html5.insecure_websocket {
            upgrade(&ctx, tcp, peer, handshake, started, deadline).await;
            return;
        }
        match tokio::time::timeout_at(deadline, ctx.tls.accept(tcp)).await {
            Ok(Ok(tls)) => upgrade(&ctx, tls, peer, handshake, started, deadline).await,
            Ok(Err(e)) => {
                ctx.metrics().link_failed("client_tls");
                tracing::debug!(error = %e, "TLS handshake with browser failed");
            }
            Err(_) => {
                ctx.metrics().link_failed("handshake_timeout");
                tracing::debug!("browser did not complete TLS in time");
            }
        }
    }
    .instrument(span)
    .await;
}

/// The HTTP upgrade to a WebSocket, the Origin check, then the link stage and relay.
async fn upgrade<S>(
    ctx: &Arc<ProxyContext>,
    stream: S,
    peer: SocketAddr,
    handshake: HandshakeSlot,
    started: Instant,
    deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let seen = Arc::new(Mutex::new(Upgrade::default()));
    let callback = UpgradeCheck {
        allowed: ctx.config.html5.allowed_origins.clone(),
        seen: seen.clone(),
    };
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(MAX_CLIENT_MESSAGE);
    config.max_frame_size = Some(MAX_CLIENT_MESSAGE);
    let accepted = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)),
    )
    .await;
    let mut ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            ctx.metrics().link_failed("websocket_handshake");
            tracing::debug!(error = %e, "WebSocket upgrade failed");
            return;
        }
        Err(_) => {
            ctx.metrics().link_failed("handshake_timeout");
            tracing::debug!("browser did not complete the WebSocket upgrade in time");
            return;
        }
    };
    let refused = seen.lock().ok().and_then(|s| s.origin_refused.clone());
    if let Some(origin) = refused {
        ctx.metrics().link_failed("websocket_origin");
        ctx.limits.log_refusal(
            peer.ip(),
            "websocket_origin",
            super::limits::Level::Info,
            "WebSocket from a page of another origin refused",
            None,
        );
        tracing::debug!(origin = %origin, "WebSocket Origin not allowed");
        // The page learns why from the close frame (a refused upgrade would only tell it
        // that the connection failed). Nothing else is ever sent on this WebSocket.
        let close = CloseFrame {
            code: CloseCode::Policy,
            reason: ORIGIN_REFUSED.into(),
        };
        let _ = tokio::time::timeout_at(deadline, ws.close(Some(close))).await;
        return;
    }
    let accepted = Accepted {
        peer,
        handshake,
        started,
        deadline,
        transport: Transport::WebSocket,
    };
    session::serve_client(ctx, WsStream::new(ws), accepted).await;
}

/// The upgrade request's check: records whether its Origin is allowed (the WebSocket is
/// refused after the handshake, so the page learns why), and selects the `binary`
/// subprotocol when the client offers it. It never refuses the upgrade itself.
struct UpgradeCheck {
    /// `[html5] allowed_origins`.
    allowed: Vec<String>,
    /// What the request said, for after the handshake.
    seen: Arc<Mutex<Upgrade>>,
}

impl Callback for UpgradeCheck {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        Ok(on_upgrade(request, response, &self.allowed, &self.seen))
    }
}

/// See [`UpgradeCheck`].
fn on_upgrade(
    request: &Request,
    mut response: Response,
    allowed: &[String],
    seen: &Mutex<Upgrade>,
) -> Response {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let origin = header("origin");
    let host = header("host");
    if let Err(why) = check_origin(origin.as_deref(), host.as_deref(), allowed)
        && let Ok(mut seen) = seen.lock()
    {
        seen.origin_refused = Some(format!("{}: {why}", origin.unwrap_or_default()));
    }
    let offers_binary = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    if offers_binary {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    response
}

/// Whether a page at `origin` may open a WebSocket to the host the browser named in `host`,
/// as nova-spicehtml5proxy decides: no Origin (not a browser) passes; otherwise the Origin's
/// host must be the WebSocket's own host or one of `[html5] allowed_origins`.
///
/// # Errors
/// Why it is refused.
pub fn check_origin(
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
) -> Result<(), &'static str> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let url = url::Url::parse(origin).map_err(|_| "the Origin header is not an origin")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the Origin is not an http or https page");
    }
    let origin_host = url
        .host_str()
        .map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        })
        .ok_or("the Origin has no host")?;
    if host.map(host_without_port).as_deref() == Some(origin_host.as_str()) {
        return Ok(());
    }
    if allowed
        .iter()
        .filter_map(|entry| crate::config::html5::origin_host(entry))
        .any(|h| h == origin_host)
    {
        return Ok(());
    }
    Err("the Origin is neither this host nor in [html5] allowed_origins")
}

/// The host of a `Host` header (`name`, `name:port`, `[v6]`, `[v6]:port`), lower-cased and
/// without brackets.
fn host_without_port(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.to_ascii_lowercase()
}

/// A WebSocket as a byte stream: reads give the payloads of binary messages in order, writes
/// are sent as binary messages at each flush (or every 64 KiB). Text
/// messages are refused (SPICE is binary); pings are answered; a close frame reads as the end
/// of the stream, and shutting the stream down sends one.
pub struct WsStream<S> {
    /// The WebSocket.
    ws: WebSocketStream<S>,
    /// What is left of the last binary message read.
    read_buf: tokio_tungstenite::tungstenite::Bytes,
    /// The peer closed its side (or the connection ended): reads return end of stream.
    read_closed: bool,
    /// Bytes written and not yet handed to the WebSocket as a message.
    write_buf: Vec<u8>,
}

impl<S> WsStream<S> {
    /// Wraps an accepted WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsStream {
            ws,
            read_buf: Default::default(),
            read_closed: false,
            write_buf: Vec::new(),
        }
    }
}

/// An `io::Error` for a WebSocket failure; a closed connection is `BrokenPipe`.
fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(e) => e,
        Error::ConnectionClosed | Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Hands the written bytes to the WebSocket as one binary message (not yet flushed).
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_error)?;
        let payload = std::mem::take(&mut self.write_buf);
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(payload.into()))
            .map_err(ws_error)?;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use tokio_tungstenite::tungstenite::Error;
        let this = self.get_mut();
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                let chunk = this.read_buf.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.read_buf = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message (SPICE travels in binary messages)",
                    )));
                }
                // Pings are answered by the WebSocket itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_)))
                | None
                | Some(Err(Error::ConnectionClosed | Error::AlreadyClosed)) => {
                    this.read_closed = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_buf.len() >= MAX_SERVER_FRAME {
            ready!(this.poll_send_pending(cx))?;
        }
        let n = buf
            .len()
            .min(MAX_SERVER_FRAME.saturating_sub(this.write_buf.len()));
        this.write_buf
            .extend_from_slice(buf.get(..n).unwrap_or_default());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use tokio_tungstenite::tungstenite::Error;
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_error(e))),
        }
    }
}

// Frame boundaries mean nothing to spice-html5 (it reassembles messages from any chunks), so
// a record end is an ordinary write; the copy's flushes send the frames.
impl<S: AsyncRead + AsyncWrite + Unpin> RecordWrite for WsStream<S> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_like_novas_websocket_proxy() {
        let none: Vec<String> = Vec::new();
        // Not a browser: no Origin header.
        assert!(check_origin(None, Some("kerbside.example.com:6082"), &none).is_ok());
        // The page came from the WebSocket's own host (any port, either scheme).
        assert!(
            check_origin(
                Some("https://kerbside.example.com:13002"),
                Some("kerbside.example.com:6082"),
                &none
            )
            .is_ok()
        );
        assert!(check_origin(Some("http://[::1]:13002"), Some("[::1]:6082"), &none).is_ok());
        assert!(
            check_origin(
                Some("https://Kerbside.Example.com"),
                Some("kerbside.example.com"),
                &none
            )
            .is_ok()
        );
        // Another host, unless allowed by name or by origin.
        let foreign = check_origin(
            Some("https://evil.example.net"),
            Some("kerbside.example.com:6082"),
            &none,
        );
        assert!(foreign.is_err());
        let allowed = vec![
            "horizon.example.com".to_owned(),
            "https://skyline.example.com:9999".to_owned(),
        ];
        for origin in [
            "https://horizon.example.com",
            "https://skyline.example.com",
            "http://skyline.example.com:1",
        ] {
            assert!(
                check_origin(Some(origin), Some("kerbside.example.com:6082"), &allowed).is_ok(),
                "{origin}"
            );
        }
        // Opaque and odd origins never pass.
        for origin in ["null", "file:///tmp/x.html", "not an origin"] {
            assert!(
                check_origin(Some(origin), Some("kerbside.example.com"), &allowed).is_err(),
                "{origin}"
            );
        }
    }

    #[test]
    fn host_headers_lose_their_port() {
        assert_eq!(host_without_port("Example.com:6082"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:6082"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
    }

    /// A WebSocket client and the server side as a [`WsStream`], over an in-memory pipe.
    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WsStream<tokio::io::DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let check = UpgradeCheck {
                allowed: Vec::new(),
                seen: Arc::new(Mutex::new(Upgrade::default())),
            };
            tokio_tungstenite::accept_hdr_async(server, check)
                .await
                .unwrap()
        });
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                "ws://kerbside.test/websockify",
            )
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
        let (client, response) = tokio_tungstenite::client_async(request, client)
            .await
            .unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "binary");
        (client, WsStream::new(server.await.unwrap()))
    }

    #[tokio::test]
    async fn binary_messages_become_a_byte_stream_both_ways() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut server) = pair().await;
        client
            .send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        client.send(Message::Ping(vec![9].into())).await.unwrap();
        client
            .send(Message::Binary(vec![4, 5].into()))
            .await
            .unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        // Writes become one message at the flush; large ones are split.
        server.write_all(b"hello ").await.unwrap();
        server.write_all(b"browser").await.unwrap();
        server.flush().await.unwrap();
        let mut messages = Vec::new();
        while messages.len() < 2 {
            match client.next().await.unwrap().unwrap() {
                Message::Binary(b) => messages.push(b.to_vec()),
                Message::Pong(p) => assert_eq!(p.to_vec(), vec![9]),
                other => panic!("unexpected {other:?}"),
            }
            if messages.len() == 1 {
                let big = vec![7u8; MAX_SERVER_FRAME + 10];
                server.write_all(&big).await.unwrap();
                server.flush().await.unwrap();
            }
        }
        assert_eq!(messages[0], b"hello browser");
        assert_eq!(messages[1].len(), MAX_SERVER_FRAME);
        // A text message is a protocol error, a close frame the end of the stream.
        client.send(Message::Text("x".into())).await.unwrap();
        let mut one = [0u8; 1];
        assert_eq!(
            server.read(&mut one).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[tokio::test]
    async fn a_close_frame_ends_the_stream_and_shutdown_sends_one() {
        use futures_util::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut server) = pair().await;
        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let (mut client, mut server) = pair().await;
        server.shutdown().await.unwrap();
        assert!(matches!(
            client.next().await,
            Some(Ok(Message::Close(_))) | None
        ));
    }
}
