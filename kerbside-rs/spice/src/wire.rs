//! Private little-endian cursor over a byte slice. Every read is bounds
//! checked and running off the end reports `Incomplete` with the shortfall,
//! so parsers never index or slice directly.

use super::error::SpiceError;

/// A read position in a borrowed buffer.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Start reading at offset 0.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Start reading at `pos` (may be past the end: the next read is then
    /// `Incomplete`).
    pub(crate) fn at(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    /// Take the next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], SpiceError> {
        let end = self.pos.saturating_add(n);
        match self.buf.get(self.pos..end) {
            Some(out) => {
                self.pos = end;
                Ok(out)
            }
            None => Err(SpiceError::Incomplete {
                needed: end.saturating_sub(self.buf.len()),
            }),
        }
    }

    /// Take the next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], SpiceError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, SpiceError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, SpiceError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, SpiceError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, SpiceError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Read `count` u32 words. The caller bounds `count` by the buffer
    /// length first, so the allocation is bounded by the input size.
    pub(crate) fn u32_words(&mut self, count: usize) -> Result<Vec<u32>, SpiceError> {
        let raw = self.bytes(count.saturating_mul(4))?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w.copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect())
    }
}

/// Append little-endian u32 words.
pub(crate) fn put_u32_words(out: &mut Vec<u8>, words: &[u32]) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// A length or count as u32; lengths we encode are bounded far below 4 GiB,
/// so saturation never happens in practice and never panics.
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_reports_shortfall() {
        let buf = [1, 0, 2, 0, 0, 0, 9];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(r.u32().unwrap(), 2);
        assert_eq!(r.u32(), Err(SpiceError::Incomplete { needed: 3 }));
        // A failed read does not move the cursor.
        assert_eq!(r.u8().unwrap(), 9);
        let mut far = Reader::at(&buf, 100);
        assert_eq!(far.u8(), Err(SpiceError::Incomplete { needed: 94 }));
        let mut words = Reader::new(&[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(words.u32_words(2).unwrap(), vec![1, 2]);
    }
}
