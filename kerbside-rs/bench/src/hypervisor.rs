//! A scripted SPICE hypervisor: the link stage as spice-server does it (RSA-1024 key in the
//! reply, OAEP-SHA1 ticket, the capabilities QEMU sends), `MAIN_INIT` and `CHANNELS_LIST` on
//! the main channel, pings on demand, and display messages streamed under spice-server's ACK
//! window rule (stop while more than two windows are unacknowledged).
//!
//! In [`Screen::Static`] mode the display channel behaves like spice-server showing a screen
//! that does not change: after the client's `DISPLAY_INIT` it sends the primary surface, the
//! monitor layout, one fill of the whole screen and a mark, once, and then only reads. A
//! client that loses any of those messages never shows a frame; a real spice-gtk client can
//! render them.
//!
//! Unlike spice-server it serves any number of clients at once (a benchmark holds many
//! sessions on one "VM"), and it reuses a few RSA keys instead of generating one per link, so
//! its own key generation does not dominate every configuration's link time alike.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kerbside::spice::consts::{
    AUTH_SPICE, COMMON_CAP_AUTH_SELECTION, COMMON_CAP_AUTH_SPICE, COMMON_CAP_MINI_HEADER,
    MSG_MAIN_CHANNELS_LIST, MSG_MAIN_INIT, MSG_PING, MSG_SET_ACK, MSGC_ACK, MSGC_ACK_SYNC,
    MSGC_MAIN_ATTACH_CHANNELS, MSGC_PONG,
};
use kerbside::spice::{
    Caps, ChannelType, LinkError, LinkMessage, LinkReply, SpiceError, TicketKey,
    encode_link_result, parse_link_message,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::proto::{mini, read_mini};

/// spice-server's default display ACK window (NARROW_CLIENT_ACK_WINDOW).
pub const ACK_WINDOW: u32 = 20;

/// Display message body sizes streamed in turn: draws with compressed images and video
/// stream frames, as QXL produces them for an active desktop.
const DISPLAY_SIZES: [usize; 6] = [48 * 1024, 2 * 1024, 24 * 1024, 512, 64 * 1024, 8 * 1024];

/// Display message types used with those sizes (DRAW_COPY, DRAW_FILL, STREAM_DATA...).
const DISPLAY_TYPES: [u16; 6] = [304, 302, 123, 302, 123, 304];

/// What the display channel shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    /// Display messages streamed on demand (see [`Hypervisor::set_stream_bytes`]).
    Streaming,
    /// One static screen, sent once after `DISPLAY_INIT` (see the module documentation).
    Static,
}

/// Client message: the display channel's `DISPLAY_INIT`.
const MSGC_DISPLAY_INIT: u16 = 101;
/// Display messages of the static screen.
const MSG_DISPLAY_MARK: u16 = 102;
const MSG_DISPLAY_DRAW_FILL: u16 = 302;
const MSG_DISPLAY_SURFACE_CREATE: u16 = 314;
const MSG_DISPLAY_MONITORS_CONFIG: u16 = 317;
/// Size of the static screen.
const STATIC_SCREEN: (u32, u32) = (640, 480);

/// What the coordinator asks of the hypervisor, shared with every connection.
struct Shared {
    password: String,
    screen: Screen,
    keys: Vec<TicketKey>,
    next_key: AtomicU32,
    sessions: Mutex<HashSet<u32>>,
    next_session: AtomicU32,
    /// Bytes each display channel streams once this is non-zero.
    stream_bytes: watch::Receiver<u64>,
    /// Pings each main channel sends once this is non-zero.
    pings: watch::Receiver<u32>,
    /// Round trips measured by main channels.
    rtts: Mutex<Vec<Duration>>,
    payload: Vec<u8>,
}

/// A running scripted hypervisor.
pub struct Hypervisor {
    /// Its plain SPICE address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stream_tx: watch::Sender<u64>,
    pings_tx: watch::Sender<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hypervisor {
    /// Starts listening on a free loopback port with ticket `password`, streaming on demand.
    ///
    /// # Errors
    /// When it cannot listen or make keys.
    pub async fn start(password: &str) -> Result<Self> {
        Self::start_with(password, Screen::Streaming).await
    }

    /// Starts listening on a free loopback port with ticket `password` and display `screen`.
    ///
    /// # Errors
    /// When it cannot listen or make keys.
    pub async fn start_with(password: &str, screen: Screen) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut keys = Vec::new();
        for _ in 0..4 {
            // OpenSSL, as spice-server uses.
            keys.push(TicketKey::generate()?);
        }
        let (stream_tx, stream_bytes) = watch::channel(0);
        let (pings_tx, pings) = watch::channel(0);
        let payload: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let shared = Arc::new(Shared {
            password: password.to_owned(),
            screen,
            keys,
            next_key: AtomicU32::new(0),
            sessions: Mutex::new(HashSet::new()),
            next_session: AtomicU32::new(0x1000),
            stream_bytes,
            pings,
            rtts: Mutex::new(Vec::new()),
            payload,
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let _ = serve(tcp, &shared).await;
                });
            }
        });
        Ok(Hypervisor {
            addr,
            shared,
            stream_tx,
            pings_tx,
            task,
        })
    }

    /// Makes every display channel (linked now or later) stream `bytes`; 0 stops new streams.
    pub fn set_stream_bytes(&self, bytes: u64) {
        self.stream_tx.send_replace(bytes);
    }

    /// Makes every main channel send `count` pings one after another.
    pub fn start_pings(&self, count: u32) {
        self.pings_tx.send_replace(count);
    }

    /// Round trips measured so far (and clears them).
    pub fn take_rtts(&self) -> Vec<Duration> {
        self.shared
            .rtts
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// Number of round trips measured so far.
    pub fn rtt_count(&self) -> usize {
        self.shared.rtts.lock().map(|r| r.len()).unwrap_or(0)
    }
}

async fn read_link<S: AsyncRead + Unpin>(tcp: &mut S) -> Result<LinkMessage> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match parse_link_message(&buf) {
            Ok((m, _)) => return Ok(m),
            Err(SpiceError::Incomplete { needed }) => {
                let start = buf.len();
                buf.resize(start + needed, 0);
                tcp.read_exact(buf.get_mut(start..).context("buffer")?)
                    .await?;
            }
            Err(e) => bail!("bad link message: {e}"),
        }
    }
}

/// The capabilities QEMU's spice-server replies with, per channel.
fn qemu_caps(channel: ChannelType) -> Caps {
    let mut caps = Caps::default();
    caps.set_common(COMMON_CAP_AUTH_SELECTION);
    caps.set_common(COMMON_CAP_AUTH_SPICE);
    caps.set_common(COMMON_CAP_MINI_HEADER);
    caps.channel = match channel {
        ChannelType::Main => vec![0xf],
        ChannelType::Display => vec![0x1052],
        ChannelType::Inputs => vec![0x1],
        _ => Vec::new(),
    };
    caps
}

async fn serve(mut tcp: TcpStream, shared: &Shared) -> Result<()> {
    let message = read_link(&mut tcp).await?;
    let channel = message.channel_type;
    let n = shared.next_key.fetch_add(1, Ordering::Relaxed) as usize;
    let key = shared
        .keys
        .get(n % shared.keys.len().max(1))
        .context("no keys")?;
    let reply = LinkReply {
        error: LinkError::Ok,
        pub_key: *key.public_der(),
        caps: qemu_caps(channel),
    };
    tcp.write_all(&reply.encode()).await?;
    if message.caps.has_common(COMMON_CAP_AUTH_SELECTION) {
        let mut word = [0u8; 4];
        tcp.read_exact(&mut word).await?;
        anyhow::ensure!(u32::from_le_bytes(word) == AUTH_SPICE, "auth mechanism");
    }
    let mut ticket = [0u8; 128];
    tcp.read_exact(&mut ticket).await?;
    let password_ok = key
        .decrypt_ticket(&ticket)
        .is_ok_and(|t| t.as_bytes() == shared.password.as_bytes());
    let mut result = if password_ok {
        LinkError::Ok
    } else {
        LinkError::PermissionDenied
    };
    let session_id = if channel == ChannelType::Main {
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        if result == LinkError::Ok
            && let Ok(mut s) = shared.sessions.lock()
        {
            s.insert(id);
        }
        id
    } else {
        let known = shared
            .sessions
            .lock()
            .map(|s| s.contains(&message.connection_id))
            .unwrap_or(false);
        if result == LinkError::Ok && !known {
            result = LinkError::BadConnectionId;
        }
        message.connection_id
    };
    tcp.write_all(&encode_link_result(result)).await?;
    if result != LinkError::Ok {
        return Ok(());
    }
    let outcome = match channel {
        ChannelType::Main => serve_main(tcp, shared, session_id).await,
        ChannelType::Display if shared.screen == Screen::Static => serve_static_display(tcp).await,
        ChannelType::Display => serve_display(tcp, shared).await,
        _ => serve_idle(tcp).await,
    };
    if channel == ChannelType::Main
        && let Ok(mut s) = shared.sessions.lock()
    {
        s.remove(&session_id);
    }
    outcome
}

async fn serve_main(tcp: TcpStream, shared: &Shared, session_id: u32) -> Result<()> {
    let (mut rd, mut wr) = tcp.into_split();
    // MAIN_INIT: session id, display hint, mouse modes, agent, tokens, mm time, ram hint.
    let mut init = Vec::with_capacity(32);
    for v in [session_id, 1, 3, 2, 0, 10, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    wr.write_all(&mini(MSG_MAIN_INIT, &init)).await?;
    loop {
        let (t, _) = read_mini(&mut rd).await?;
        if t == MSGC_MAIN_ATTACH_CHANNELS {
            break;
        }
    }
    let mut list = 3u32.to_le_bytes().to_vec();
    for (ty, id) in [(2u8, 0u8), (3, 0), (4, 0)] {
        list.extend_from_slice(&[ty, id]);
    }
    wr.write_all(&mini(MSG_MAIN_CHANNELS_LIST, &list)).await?;
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = async move {
        loop {
            match read_mini(&mut rd).await {
                Ok((MSGC_PONG, _)) => {
                    let _ = pong_tx.send(Instant::now());
                }
                Ok(_) => {}
                Err(e) => return Err::<(), anyhow::Error>(e),
            }
        }
    };
    let mut pings = shared.pings.clone();
    let pinger = async move {
        let count = *pings.wait_for(|c| *c > 0).await?;
        for id in 0..count {
            let mut body = id.to_le_bytes().to_vec();
            body.extend_from_slice(&0u64.to_le_bytes());
            let sent = Instant::now();
            wr.write_all(&mini(MSG_PING, &body)).await?;
            let Some(back) = pong_rx.recv().await else {
                break;
            };
            if let Ok(mut r) = shared.rtts.lock() {
                r.push(back.duration_since(sent));
            }
        }
        // Keep the write half open until the client leaves.
        std::future::pending::<()>().await;
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = reader => r,
        r = pinger => r,
    }
}

async fn serve_display(tcp: TcpStream, shared: &Shared) -> Result<()> {
    let (mut rd, mut wr) = tcp.into_split();
    wr.write_all(&mini(
        MSG_SET_ACK,
        &[1u32.to_le_bytes(), ACK_WINDOW.to_le_bytes()].concat(),
    ))
    .await?;
    let window = i64::from(ACK_WINDOW);
    let unacked = Arc::new(AtomicI64::new(0));
    let acked = Arc::new(Notify::new());
    let synced = Arc::new(Notify::new());
    let reader = {
        let unacked = unacked.clone();
        let acked = acked.clone();
        let synced = synced.clone();
        async move {
            let mut generation_ok = false;
            loop {
                let (t, body) = match read_mini(&mut rd).await {
                    Ok(m) => m,
                    Err(e) => return Err::<(), anyhow::Error>(e),
                };
                match t {
                    MSGC_ACK_SYNC => {
                        generation_ok = body.get(..4) == Some(&1u32.to_le_bytes()[..]);
                        synced.notify_one();
                    }
                    MSGC_ACK if generation_ok => {
                        unacked.fetch_sub(window, Ordering::AcqRel);
                        acked.notify_one();
                    }
                    _ => {}
                }
            }
        }
    };
    let mut stream_bytes = shared.stream_bytes.clone();
    let payload = &shared.payload;
    let writer = async move {
        synced.notified().await;
        let target = *stream_bytes.wait_for(|b| *b > 0).await?;
        let mut sent = 0u64;
        let mut n = 0usize;
        let mut out = Vec::with_capacity(70 * 1024);
        while sent < target {
            while unacked.load(Ordering::Acquire) > 2 * window {
                acked.notified().await;
            }
            let size = DISPLAY_SIZES
                .get(n % DISPLAY_SIZES.len())
                .copied()
                .unwrap_or(512);
            let ty = DISPLAY_TYPES
                .get(n % DISPLAY_TYPES.len())
                .copied()
                .unwrap_or(304);
            n += 1;
            out.clear();
            crate::proto::mini_into(&mut out, ty, payload.get(..size).unwrap_or_default());
            wr.write_all(&out).await?;
            unacked.fetch_add(1, Ordering::AcqRel);
            sent += out.len() as u64;
        }
        std::future::pending::<()>().await;
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// The display messages of a static screen: primary surface, monitor layout, a fill of the
/// whole surface, and a mark.
fn static_screen() -> Vec<u8> {
    let (width, height) = STATIC_SCREEN;
    let le = |values: &[u32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    // surface id, width, height, format 32_xRGB, flags PRIMARY
    let surface = le(&[0, width, height, 32, 1]);
    // count 1, max allowed 1, then one head: id, surface id, width, height, x, y, flags
    let mut monitors = [1u16.to_le_bytes(), 1u16.to_le_bytes()].concat();
    monitors.extend(le(&[0, 0, width, height, 0, 0, 0]));
    // DisplayBase: surface 0, box (top, left, bottom, right), clip NONE; then the Fill: a
    // solid brush, rop OP_PUT, and an empty mask (flags, position, no bitmap).
    let mut fill = le(&[0, 0, 0, height, width]);
    fill.push(0);
    fill.push(1);
    fill.extend(0x0033_6699u32.to_le_bytes());
    fill.extend(8u16.to_le_bytes());
    fill.push(0);
    fill.extend(le(&[0, 0, 0]));
    [
        mini(MSG_DISPLAY_SURFACE_CREATE, &surface),
        mini(MSG_DISPLAY_MONITORS_CONFIG, &monitors),
        mini(MSG_DISPLAY_DRAW_FILL, &fill),
        mini(MSG_DISPLAY_MARK, &[]),
    ]
    .concat()
}

/// The display channel of [`Screen::Static`]: the screen once, then only reading.
async fn serve_static_display(tcp: TcpStream) -> Result<()> {
    let (mut rd, mut wr) = tcp.into_split();
    wr.write_all(&mini(
        MSG_SET_ACK,
        &[1u32.to_le_bytes(), ACK_WINDOW.to_le_bytes()].concat(),
    ))
    .await?;
    // spice-server draws for a client once it has its DISPLAY_INIT (cache settings).
    loop {
        let (t, _) = read_mini(&mut rd).await?;
        if t == MSGC_DISPLAY_INIT {
            break;
        }
    }
    // One write: the messages reach the proxy together, as a burst from QEMU does.
    wr.write_all(&static_screen()).await?;
    // Nothing more is ever sent: a client that has not drawn by now never will.
    loop {
        read_mini(&mut rd).await?;
    }
}

async fn serve_idle<S: AsyncRead + AsyncWrite + Unpin>(mut tcp: S) -> Result<()> {
    let mut buf = [0u8; 4096];
    while tcp.read(&mut buf).await? > 0 {}
    Ok(())
}
