//! A minimal SPICE client and a scripted SPICE server written with kerbside's own protocol
//! module, for the cases real peers cannot produce on demand: exact link error codes, a client
//! from another address, migration messages from the server, malformed bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kerbside::spice::consts::{
    AUTH_SPICE, COMMON_CAP_AUTH_SELECTION, COMMON_CAP_AUTH_SPICE, COMMON_CAP_MINI_HEADER,
};
use kerbside::spice::{
    Caps, ChannelType, HeaderKind, LinkError, LinkMessage, LinkReply, SpiceError, TicketKey,
    encode_link_result, encrypt_ticket, parse_link_message, parse_link_reply, parse_link_result,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// A byte stream to a SPICE peer.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A linked client channel.
pub struct ClientChannel {
    /// The connection, positioned after the link result.
    pub stream: Box<dyn Stream>,
    /// The server's link reply.
    pub reply: LinkReply,
}

/// How the test client connects.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Proxy TLS address.
    pub addr: SocketAddr,
    /// CA to trust (TLS when set).
    pub ca_file: Option<std::path::PathBuf>,
    /// Local address to connect from (e.g. 127.0.0.2 to look like another client).
    pub from: Option<std::net::IpAddr>,
}

/// Opens a TCP (and TLS, with `ca_file`) connection.
///
/// # Errors
/// Connection or TLS failures.
pub async fn connect(opts: &ClientOptions) -> Result<Box<dyn Stream>> {
    let socket = if opts.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(from) = opts.from {
        socket.bind(SocketAddr::new(from, 0))?;
    }
    let tcp = socket
        .connect(opts.addr)
        .await
        .with_context(|| format!("connect {}", opts.addr))?;
    let Some(ca) = &opts.ca_file else {
        return Ok(Box::new(tcp));
    };
    kerbside::proxy::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(opts.addr.ip().to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake with the proxy")?;
    Ok(Box::new(tls))
}

use rustls::pki_types::pem::PemObject;

/// The caps spice-gtk sends for a channel (common: auth selection + mini header).
pub fn gtk_caps(channel: ChannelType) -> Caps {
    let mut caps = Caps::default();
    caps.set_common(COMMON_CAP_AUTH_SELECTION);
    caps.set_common(COMMON_CAP_MINI_HEADER);
    match channel {
        ChannelType::Main => caps.channel = vec![0xf],
        ChannelType::Display => caps.channel = vec![0x3bf],
        _ => {}
    }
    caps
}

/// Sends a link message and reads the reply (which may be an error reply).
///
/// # Errors
/// I/O or an unparsable reply.
pub async fn send_link(stream: &mut Box<dyn Stream>, message: &LinkMessage) -> Result<LinkReply> {
    stream.write_all(&message.encode()).await?;
    // Buffered transports (a WebSocket sends a frame per flush) need the flush.
    stream.flush().await?;
    read_reply(stream).await
}

/// Reads a link reply.
///
/// # Errors
/// I/O or an unparsable reply.
pub async fn read_reply<S: AsyncRead + Unpin + ?Sized>(stream: &mut S) -> Result<LinkReply> {
    let mut buf = Vec::new();
    loop {
        match parse_link_reply(&buf) {
            Ok((reply, _)) => return Ok(reply),
            Err(SpiceError::Incomplete { needed }) => {
                let start = buf.len();
                buf.resize(start + needed, 0);
                stream
                    .read_exact(buf.get_mut(start..).context("buffer")?)
                    .await
                    .context("reading the link reply")?;
            }
            Err(e) => bail!("invalid link reply: {e}"),
        }
    }
}

/// Sends the auth mechanism (when the server offers selection) and the encrypted ticket, and
/// reads the link result.
///
/// # Errors
/// I/O failures.
pub async fn send_ticket(
    stream: &mut Box<dyn Stream>,
    reply: &LinkReply,
    password: &str,
) -> Result<LinkError> {
    let mut out = Vec::new();
    if reply.caps.has_common(COMMON_CAP_AUTH_SELECTION) {
        out.extend_from_slice(&AUTH_SPICE.to_le_bytes());
    }
    let ticket = encrypt_ticket(&reply.pub_key, password.as_bytes())?;
    out.extend_from_slice(&ticket);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut result = [0u8; 4];
    stream
        .read_exact(&mut result)
        .await
        .context("reading the link result")?;
    Ok(parse_link_result(&result)?)
}

/// Links one channel with a password: the link result and, on OK, the channel.
///
/// # Errors
/// I/O failures or a refused link reply (the reply's error is returned as `Ok(Err(code))`).
pub async fn link(
    opts: &ClientOptions,
    channel: ChannelType,
    channel_id: u8,
    connection_id: u32,
    password: &str,
) -> Result<Result<ClientChannel, LinkError>> {
    let mut stream = connect(opts).await?;
    let message = LinkMessage::new(connection_id, channel, channel_id, gtk_caps(channel));
    let reply = send_link(&mut stream, &message).await?;
    if reply.error != LinkError::Ok {
        return Ok(Err(reply.error));
    }
    match send_ticket(&mut stream, &reply, password).await? {
        LinkError::Ok => Ok(Ok(ClientChannel { stream, reply })),
        code => Ok(Err(code)),
    }
}

/// Whether the peer closes `stream` (end of stream or an error) within `limit`, reading and
/// dropping whatever arrives meanwhile.
pub async fn closed_within<S: AsyncRead + Unpin + ?Sized>(stream: &mut S, limit: Duration) -> bool {
    let mut buf = vec![0u8; 65536];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Reads one mini-header message: (type, body).
///
/// # Errors
/// I/O failures or end of stream.
pub async fn read_message<S: AsyncRead + Unpin + ?Sized>(stream: &mut S) -> Result<(u16, Vec<u8>)> {
    let mut header = [0u8; 6];
    stream.read_exact(&mut header).await?;
    let msg_type = u16::from_le_bytes([header[0], header[1]]);
    let size = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
    anyhow::ensure!(size <= 16 * 1024 * 1024, "message of {size} bytes");
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).await?;
    Ok((msg_type, body))
}

/// Encodes a mini-header message.
pub fn mini_message(msg_type: u16, body: &[u8]) -> Vec<u8> {
    kerbside::spice::encode_message(HeaderKind::Mini, 0, msg_type, body)
}

/// A scripted SPICE server that accepts one main-channel link with `password`, sends
/// `MAIN_INIT` with `session_id` and then the given messages, and reports every message the
/// client (the proxy) sends afterwards.
pub struct ScriptedServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Messages received after the link, as (type, body).
    pub received: tokio::sync::mpsc::UnboundedReceiver<(u16, Vec<u8>)>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    /// Starts the server on a free loopback port.
    ///
    /// # Errors
    /// When it cannot listen.
    pub async fn start(password: &str, session_id: u32, script: Vec<Vec<u8>>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let password = password.to_owned();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await?;
            serve_main(&mut tcp, &password, session_id, &script, tx).await
        });
        Ok(ScriptedServer {
            addr,
            received,
            task,
        })
    }
}

async fn serve_main(
    tcp: &mut TcpStream,
    password: &str,
    session_id: u32,
    script: &[Vec<u8>],
    tx: tokio::sync::mpsc::UnboundedSender<(u16, Vec<u8>)>,
) -> Result<()> {
    let mut buf = Vec::new();
    let message = loop {
        match parse_link_message(&buf) {
            Ok((m, _)) => break m,
            Err(SpiceError::Incomplete { needed }) => {
                let start = buf.len();
                buf.resize(start + needed, 0);
                tcp.read_exact(buf.get_mut(start..).context("buffer")?)
                    .await?;
            }
            Err(e) => bail!("scripted server got a bad link message: {e}"),
        }
    };
    anyhow::ensure!(
        message.channel_type == ChannelType::Main,
        "scripted server only serves main"
    );
    anyhow::ensure!(
        message.connection_id == 0,
        "main must link with connection id 0"
    );
    let key = TicketKey::generate()?;
    let mut caps = Caps::default();
    caps.set_common(COMMON_CAP_AUTH_SELECTION);
    caps.set_common(COMMON_CAP_AUTH_SPICE);
    caps.set_common(COMMON_CAP_MINI_HEADER);
    caps.channel = vec![0xf];
    let reply = LinkReply {
        error: LinkError::Ok,
        pub_key: *key.public_der(),
        caps,
    };
    tcp.write_all(&reply.encode()).await?;
    if message.caps.has_common(COMMON_CAP_AUTH_SELECTION) {
        let mut word = [0u8; 4];
        tcp.read_exact(&mut word).await?;
        anyhow::ensure!(
            u32::from_le_bytes(word) == AUTH_SPICE,
            "unexpected auth mechanism"
        );
    }
    let mut ticket = [0u8; 128];
    tcp.read_exact(&mut ticket).await?;
    let ok = key
        .decrypt_ticket(&ticket)
        .map(|t| t.as_bytes() == password.as_bytes())
        .unwrap_or(false);
    tcp.write_all(&encode_link_result(if ok {
        LinkError::Ok
    } else {
        LinkError::PermissionDenied
    }))
    .await?;
    if !ok {
        return Ok(());
    }
    let mut init = session_id.to_le_bytes().to_vec();
    init.resize(32, 0);
    tcp.write_all(&mini_message(103, &init)).await?;
    for message in script {
        tcp.write_all(message).await?;
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(30), read_message(tcp)).await {
            Ok(Ok(message)) => {
                let _ = tx.send(message);
            }
            _ => return Ok(()),
        }
    }
}

/// The DstInfo of a migration message pointing at `host`.
pub fn dst_info(host: &str) -> Vec<u8> {
    // u16 port, u16 sport, u32 host_size, ptr32 host, u32 subject_size, ptr32 subject
    let host_bytes = [host.as_bytes(), b"\0"].concat();
    let mut body = Vec::new();
    body.extend_from_slice(&5900u16.to_le_bytes());
    body.extend_from_slice(&5901u16.to_le_bytes());
    body.extend_from_slice(&(host_bytes.len() as u32).to_le_bytes());
    body.extend_from_slice(&20u32.to_le_bytes()); // host data right after the fixed part
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&host_bytes);
    body
}
