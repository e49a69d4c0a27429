//! Mini-header message helpers shared by the scripted hypervisor and client.

use anyhow::Result;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest message body either scripted end accepts.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Encodes a mini-header message.
pub fn mini(msg_type: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + body.len());
    mini_into(&mut out, msg_type, body);
    out
}

/// Appends a mini-header message to `out`.
pub fn mini_into(out: &mut Vec<u8>, msg_type: u16, body: &[u8]) {
    out.extend_from_slice(&msg_type.to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(body);
}

/// Reads one mini-header message: (type, body).
///
/// # Errors
/// I/O failures, end of stream, or an absurd size.
pub async fn read_mini<S: AsyncRead + Unpin + ?Sized>(stream: &mut S) -> Result<(u16, Vec<u8>)> {
    let mut header = [0u8; 6];
    stream.read_exact(&mut header).await?;
    let [t0, t1, s0, s1, s2, s3] = header;
    let msg_type = u16::from_le_bytes([t0, t1]);
    let size = u32::from_le_bytes([s0, s1, s2, s3]) as usize;
    anyhow::ensure!(size <= MAX_BODY, "message of {size} bytes");
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).await?;
    Ok((msg_type, body))
}

/// Reads one message header and skips its body: (type, total bytes).
///
/// # Errors
/// I/O failures, end of stream, or an absurd size.
pub async fn skip_mini<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    scratch: &mut [u8],
) -> Result<(u16, usize)> {
    let mut header = [0u8; 6];
    stream.read_exact(&mut header).await?;
    let [t0, t1, s0, s1, s2, s3] = header;
    let msg_type = u16::from_le_bytes([t0, t1]);
    let size = u32::from_le_bytes([s0, s1, s2, s3]) as usize;
    anyhow::ensure!(size <= MAX_BODY, "message of {size} bytes");
    let mut left = size;
    while left > 0 {
        let want = left.min(scratch.len());
        let slot = scratch.get_mut(..want).unwrap_or_default();
        stream.read_exact(slot).await?;
        left -= want;
    }
    Ok((msg_type, size + 6))
}
