//! A scripted SPICE client that links like spice-gtk (its capabilities, the auth mechanism
//! word, an OAEP-SHA1 ticket), opens a 4-channel session the way spice-gtk does (main, then
//! display, inputs and cursor in parallel once `CHANNELS_LIST` arrives), answers pings and
//! acknowledges display messages (ACK_SYNC, then one ACK per window).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kerbside::spice::consts::{
    AUTH_SPICE, COMMON_CAP_AUTH_SELECTION, MSG_MAIN_CHANNELS_LIST, MSG_MAIN_INIT, MSG_PING,
    MSG_SET_ACK, MSGC_ACK, MSGC_ACK_SYNC, MSGC_MAIN_ATTACH_CHANNELS, MSGC_PONG,
};
use kerbside::spice::{ChannelType, LinkError, LinkMessage, encrypt_ticket, parse_link_result};
use kerbside_tests::spice_client::{Stream, gtk_caps, read_reply};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::proto::{mini, read_mini, skip_mini};

/// Where the client connects: an address, with TLS or not.
#[derive(Clone)]
pub struct Target {
    /// Address.
    pub addr: SocketAddr,
    /// TLS connector, when the leg is TLS.
    pub tls: Option<TlsConnector>,
}

/// Link timings of one session.
#[derive(Clone, Copy, Debug)]
pub struct SessionTimes {
    /// Main channel: connect to link result.
    pub main: Duration,
    /// Display channel: connect to link result.
    pub display: Duration,
    /// Main connect to the last of the four channels linked.
    pub session: Duration,
}

/// A live session: its channel tasks end when it is dropped.
pub struct Session {
    tasks: Vec<JoinHandle<Result<()>>>,
    /// Display bytes received.
    pub display_bytes: Arc<AtomicU64>,
    /// Link timings.
    pub times: SessionTimes,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn connect(target: &Target) -> Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connect {}", target.addr))?;
    tcp.set_nodelay(true)?;
    match &target.tls {
        None => Ok(Box::new(tcp)),
        Some(tls) => {
            let name = ServerName::try_from(target.addr.ip().to_string())?;
            Ok(Box::new(tls.connect(name, tcp).await.context("TLS")?))
        }
    }
}

/// Links one channel: (stream, time from connect to link result).
///
/// # Errors
/// Connection, TLS or link failures.
pub async fn link(
    target: &Target,
    channel: ChannelType,
    connection_id: u32,
    password: &str,
) -> Result<(Box<dyn Stream>, Duration)> {
    let started = Instant::now();
    let mut stream = connect(target).await?;
    let message = LinkMessage::new(connection_id, channel, 0, gtk_caps(channel));
    stream.write_all(&message.encode()).await?;
    stream.flush().await?;
    let reply = read_reply(&mut stream).await?;
    if reply.error != LinkError::Ok {
        bail!("{} link refused: {:?}", channel.name(), reply.error);
    }
    let mut out = Vec::with_capacity(132);
    if reply.caps.has_common(COMMON_CAP_AUTH_SELECTION) {
        out.extend_from_slice(&AUTH_SPICE.to_le_bytes());
    }
    out.extend_from_slice(&encrypt_ticket(&reply.pub_key, password.as_bytes())?);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut result = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut result).await?;
    match parse_link_result(&result)? {
        LinkError::Ok => Ok((stream, started.elapsed())),
        e => bail!("{} link result {e:?}", channel.name()),
    }
}

/// Opens a 4-channel session as spice-gtk does.
///
/// # Errors
/// Any link failure.
pub async fn open_session(target: &Target, password: &str) -> Result<Session> {
    let started = Instant::now();
    let (mut main, main_time) = link(target, ChannelType::Main, 0, password).await?;
    let (t, init) = read_mini(&mut main).await?;
    anyhow::ensure!(t == MSG_MAIN_INIT, "expected MAIN_INIT, got {t}");
    let session_id = u32::from_le_bytes(
        init.get(..4)
            .context("short MAIN_INIT")?
            .try_into()
            .context("MAIN_INIT")?,
    );
    main.write_all(&mini(MSGC_MAIN_ATTACH_CHANNELS, &[]))
        .await?;
    main.flush().await?;
    loop {
        let (t, _) = read_mini(&mut main).await?;
        if t == MSG_MAIN_CHANNELS_LIST {
            break;
        }
    }
    let (display, inputs, cursor) = tokio::try_join!(
        link(target, ChannelType::Display, session_id, password),
        link(target, ChannelType::Inputs, session_id, password),
        link(target, ChannelType::Cursor, session_id, password),
    )?;
    let session_time = started.elapsed();
    let display_bytes = Arc::new(AtomicU64::new(0));
    let tasks = vec![
        tokio::spawn(run_main(main)),
        tokio::spawn(run_display(display.0, display_bytes.clone())),
        tokio::spawn(run_display(cursor.0, Arc::new(AtomicU64::new(0)))),
        tokio::spawn(run_idle(inputs.0)),
    ];
    Ok(Session {
        tasks,
        display_bytes,
        times: SessionTimes {
            main: main_time,
            display: display.1,
            session: session_time,
        },
    })
}

/// Answers pings with pongs, like spice-gtk.
async fn run_main(mut stream: Box<dyn Stream>) -> Result<()> {
    loop {
        let (t, body) = read_mini(&mut stream).await?;
        if t == MSG_PING {
            let pong = mini(MSGC_PONG, body.get(..12).unwrap_or_default());
            stream.write_all(&pong).await?;
            stream.flush().await?;
        }
    }
}

/// Counts display bytes and acknowledges like spice-gtk: ACK_SYNC on SET_ACK, then one ACK
/// every `window` messages.
async fn run_display(mut stream: Box<dyn Stream>, bytes: Arc<AtomicU64>) -> Result<()> {
    let mut scratch = vec![0u8; 64 * 1024];
    let mut window = 0u32;
    let mut count = 0u32;
    loop {
        let (t, n) = if window == 0 {
            let (t, body) = read_mini(&mut stream).await?;
            if t == MSG_SET_ACK {
                let generation = body.get(..4).context("short SET_ACK")?;
                window = u32::from_le_bytes(
                    body.get(4..8)
                        .context("short SET_ACK")?
                        .try_into()
                        .context("SET_ACK")?,
                );
                stream.write_all(&mini(MSGC_ACK_SYNC, generation)).await?;
                stream.flush().await?;
                continue;
            }
            (t, body.len() + 6)
        } else {
            skip_mini(&mut stream, &mut scratch).await?
        };
        let _ = t;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if window > 0 {
            count += 1;
            if count >= window {
                count = 0;
                stream.write_all(&mini(MSGC_ACK, &[])).await?;
                stream.flush().await?;
            }
        }
    }
}

async fn run_idle(mut stream: Box<dyn Stream>) -> Result<()> {
    let mut buf = [0u8; 1024];
    while tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await? > 0 {}
    Ok(())
}
