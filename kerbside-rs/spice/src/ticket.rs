//! SPICE ticket crypto: the RSA-1024 key the proxy offers clients in its link reply,
//! decrypting a client's ticket with it, and encrypting the hypervisor's ticket under the
//! hypervisor's key. Padding is RSA-OAEP with SHA-1 and MGF1-SHA-1 and an empty label
//! (OpenSSL's `RSA_PKCS1_OAEP_PADDING`, what spice-gtk and spice-server use); the plaintext is
//! the password plus one NUL, as spice-gtk sends it.
//!
//! Everything here is done by the system's OpenSSL (the `openssl` crate), the library
//! spice-server itself uses: key generation, and OAEP decryption with blinding and
//! constant-time padding checks. How often a key is reused (and for how long) is the proxy's
//! policy (`proxy::keypool`), not this module's: a `TicketKey` can decrypt any number of tickets.

use std::fmt;

use openssl::rsa::{Padding, Rsa};
use zeroize::Zeroizing;

use super::consts::{LinkError, MAX_PASSWORD_LEN, PUBKEY_LEN, TICKET_LEN};
use super::error::SpiceError;

/// Bits of the RSA keys SPICE uses for tickets (`SPICE_TICKET_KEY_PAIR_LENGTH`).
const KEY_BITS: u32 = 1024;

/// An RSA-1024 key pair (e = 65537) offered to clients in link replies.
///
/// OpenSSL clears the private key's numbers when it is freed.
pub struct TicketKey {
    key: Rsa<openssl::pkey::Private>,
    public_der: [u8; PUBKEY_LEN],
}

impl TicketKey {
    /// Generates a fresh key with OpenSSL. This costs milliseconds of CPU: call it off the
    /// async runtime (the proxy's key pool uses threads of its own).
    ///
    /// # Errors
    /// `Crypto` if key generation or DER encoding fails.
    pub fn generate() -> Result<Self, SpiceError> {
        let key =
            Rsa::generate(KEY_BITS).map_err(|_| SpiceError::Crypto("RSA key generation failed"))?;
        let der = key
            .public_key_to_der()
            .map_err(|_| SpiceError::Crypto("public key DER encoding failed"))?;
        let public_der = der
            .as_slice()
            .try_into()
            .map_err(|_| SpiceError::Crypto("public key DER is not 162 bytes"))?;
        Ok(Self { key, public_der })
    }

    /// DER SubjectPublicKeyInfo to put in `LinkReply::pub_key`.
    pub fn public_der(&self) -> &[u8; PUBKEY_LEN] {
        &self.public_der
    }

    /// Decrypts a client's 128-byte encrypted ticket.
    ///
    /// The plaintext is cut at its first NUL (spice-server compares with `strcmp`), so a ticket
    /// sent as password + NUL, or without a NUL, yields the password.
    ///
    /// # Errors
    /// `Invalid{InvalidData}` if the ciphertext is not 128 bytes, `Crypto` if OAEP decryption
    /// fails, `TicketTooLong` if the ticket is longer than 60 bytes. All map to a link error
    /// for the client via `SpiceError::link_error` (decryption failures: PERMISSION_DENIED).
    pub fn decrypt_ticket(&self, ciphertext: &[u8]) -> Result<Ticket, SpiceError> {
        if ciphertext.len() != TICKET_LEN {
            return Err(SpiceError::invalid(
                LinkError::InvalidData,
                "encrypted ticket is not 128 bytes",
            ));
        }
        let mut plain = Zeroizing::new(vec![0u8; TICKET_LEN]);
        let len = match self.decrypt_aligned(ciphertext, &mut plain) {
            Some(len) => len,
            None => self
                .decrypt_html5_shifted(ciphertext, &mut plain)
                .ok_or(SpiceError::Crypto("ticket decryption failed"))?,
        };
        plain.truncate(len);
        let end = plain.iter().position(|&b| b == 0).unwrap_or(plain.len());
        plain.truncate(end);
        if plain.len() > MAX_PASSWORD_LEN {
            return Err(SpiceError::TicketTooLong);
        }
        Ok(Ticket(plain))
    }
}

impl TicketKey {
    /// OAEP decryption of exactly `ciphertext`; the plaintext's length.
    fn decrypt_aligned(&self, ciphertext: &[u8], plain: &mut [u8]) -> Option<usize> {
        self.key
            .private_decrypt(ciphertext, plain, Padding::PKCS1_OAEP)
            .ok()
    }

    /// spice-html5 writes its ciphertext as a big number's bytes without leading zeros, then
    /// pads the 128-byte field with zeros at the *end*: about one ticket in 256 (a ciphertext
    /// below 2^1016) arrives shifted left by a byte, and fails to decrypt, on spice-server as
    /// anywhere. A ticket that failed and ends in `k` zero bytes is tried again with its first
    /// `128 - k` bytes right-aligned, for each such `k` up to [`MAX_HTML5_SHIFT`]. OAEP
    /// rejects a wrong alignment, so this accepts nothing a correct client could not send.
    fn decrypt_html5_shifted(&self, ciphertext: &[u8], plain: &mut [u8]) -> Option<usize> {
        let zeros = ciphertext.iter().rev().take_while(|&&b| b == 0).count();
        (1..=zeros.min(MAX_HTML5_SHIFT)).find_map(|shift| {
            let mut aligned = [0u8; TICKET_LEN];
            let kept = ciphertext.get(..TICKET_LEN - shift)?;
            aligned.get_mut(shift..)?.copy_from_slice(kept);
            self.decrypt_aligned(&aligned, plain)
        })
    }
}

/// Most leading zero bytes of a spice-html5 ciphertext [`TicketKey::decrypt_ticket`]
/// realigns (two or more happen once in 65,536 tickets).
const MAX_HTML5_SHIFT: usize = 4;

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(<private>)")
    }
}

/// A decrypted ticket (at most 60 bytes, no NUL). Zeroed when dropped;
/// `Debug` never shows the value and there is no `Display`.
pub struct Ticket(Zeroizing<Vec<u8>>);

impl Ticket {
    /// The ticket bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The ticket as UTF-8, or `None` if it is not valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the ticket is empty (spice-gtk sends "" for no password).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticket(<redacted>)")
    }
}

/// Encrypts `password` for a hypervisor, as spice-gtk does: the password plus one NUL,
/// RSA-OAEP-SHA1 under the server's `LinkReply::pub_key`.
///
/// # Errors
/// `TicketTooLong` (> 60 bytes), `TicketContainsNul`, or `Crypto` if the key is not an
/// RSA-1024 SubjectPublicKeyInfo (e.g. the all-zero key a SASL server sends) or encryption
/// fails.
pub fn encrypt_ticket(
    server_spki_der: &[u8],
    password: &[u8],
) -> Result<[u8; TICKET_LEN], SpiceError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(SpiceError::TicketTooLong);
    }
    if password.contains(&0) {
        return Err(SpiceError::TicketContainsNul);
    }
    let key = Rsa::public_key_from_der(server_spki_der)
        .map_err(|_| SpiceError::Crypto("server public key is not an RSA SubjectPublicKeyInfo"))?;
    if usize::try_from(key.size()).ok() != Some(TICKET_LEN) {
        return Err(SpiceError::Crypto("server public key is not RSA-1024"));
    }
    let mut plain = Zeroizing::new(Vec::with_capacity(password.len() + 1));
    plain.extend_from_slice(password);
    plain.push(0);
    let mut ciphertext = [0u8; TICKET_LEN];
    let len = key
        .public_encrypt(&plain, &mut ciphertext, Padding::PKCS1_OAEP)
        .map_err(|_| SpiceError::Crypto("ticket encryption failed"))?;
    if len != TICKET_LEN {
        return Err(SpiceError::Crypto("ciphertext is not 128 bytes"));
    }
    Ok(ciphertext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::link::parse_link_reply;

    fn new_key() -> TicketKey {
        TicketKey::generate().unwrap()
    }

    /// Encrypt exactly `plain` under `key`'s public half, like spice-gtk's
    /// `RSA_public_encrypt(strlen(pw) + 1, pw, ..., RSA_PKCS1_OAEP_PADDING)`.
    fn gtk_encrypt(key: &TicketKey, plain: &[u8]) -> Vec<u8> {
        let public = Rsa::public_key_from_der(key.public_der()).unwrap();
        let mut out = vec![0u8; TICKET_LEN];
        let n = public
            .public_encrypt(plain, &mut out, Padding::PKCS1_OAEP)
            .unwrap();
        out.truncate(n);
        out
    }

    const DER_PREFIX: [u8; 29] = [
        0x30, 0x81, 0x9f, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
        0x01, 0x05, 0x00, 0x03, 0x81, 0x8d, 0x00, 0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00,
    ];

    #[test]
    fn public_der_looks_like_spice_servers() {
        let key = new_key();
        let der = key.public_der();
        assert_eq!(der.len(), PUBKEY_LEN);
        assert_eq!(der[..29], DER_PREFIX);
        assert_eq!(der[PUBKEY_LEN - 5..], [0x02, 0x03, 0x01, 0x00, 0x01]);
        // The real spice-server key in the capture has the same layout.
        let (reply, _) = parse_link_reply(&golden::main_s2c_reply()).unwrap();
        assert_eq!(reply.pub_key[..29], DER_PREFIX);
        assert_eq!(
            reply.pub_key[PUBKEY_LEN - 5..],
            [0x02, 0x03, 0x01, 0x00, 0x01]
        );
        assert_eq!(format!("{key:?}"), "TicketKey(<private>)");
    }

    #[test]
    fn round_trip() {
        let key = new_key();
        let ciphertext = encrypt_ticket(key.public_der(), b"s3cret").unwrap();
        let ticket = key.decrypt_ticket(&ciphertext).unwrap();
        assert_eq!(ticket.as_bytes(), b"s3cret");
        assert_eq!(ticket.as_str(), Some("s3cret"));
        assert_eq!(ticket.len(), 6);
        assert_eq!(format!("{ticket:?}"), "Ticket(<redacted>)");
    }

    #[test]
    fn decrypts_gtk_style_tickets() {
        // password + NUL, 60-byte maximum, and the "" ticket gtk sends for
        // no password.
        let max = [b'x'; MAX_PASSWORD_LEN];
        for (plain, want) in [
            (&b"s3cret\0"[..], &b"s3cret"[..]),
            (&[&max[..], b"\0"].concat()[..], &max[..]),
            (&b"\0"[..], &b""[..]),
            // No NUL at all, and bytes after the first NUL, are tolerated.
            (&b"abc\0junk"[..], &b"abc"[..]),
        ] {
            let key = new_key();
            let ciphertext = gtk_encrypt(&key, plain);
            let ticket = key.decrypt_ticket(&ciphertext).unwrap();
            assert_eq!(ticket.as_bytes(), want);
        }
    }

    #[test]
    fn rejects_long_tickets_and_bad_ciphertexts() {
        let key = new_key();
        let long = gtk_encrypt(&key, &[b'y'; MAX_PASSWORD_LEN + 1]);
        assert_eq!(
            key.decrypt_ticket(&long).unwrap_err(),
            SpiceError::TicketTooLong
        );

        let key = new_key();
        let err = key.decrypt_ticket(&[0u8; 127]).unwrap_err();
        assert_eq!(err.link_error(), LinkError::InvalidData);

        // The real client ciphertext was made for spice-server's key.
        let key = new_key();
        let captured = golden::main_c2s_ticket();
        let err = key.decrypt_ticket(&captured[4..]).unwrap_err();
        assert_eq!(err, SpiceError::Crypto("ticket decryption failed"));
        assert_eq!(err.link_error(), LinkError::PermissionDenied);
    }

    #[test]
    fn spice_html5_tickets_with_a_leading_zero_byte_are_realigned() {
        let key = new_key();
        // A ciphertext whose first byte is zero (one in 256), as spice-html5 sends it: its
        // remaining bytes first, then a zero.
        let ciphertext = (0..20_000)
            .map(|_| encrypt_ticket(key.public_der(), b"s3cret").unwrap())
            .find(|c| c[0] == 0)
            .expect("no ciphertext below 2^1016 in 20000 tries");
        let mut shifted = [0u8; TICKET_LEN];
        shifted[..TICKET_LEN - 1].copy_from_slice(&ciphertext[1..]);
        assert_eq!(key.decrypt_ticket(&shifted).unwrap().as_bytes(), b"s3cret");
        // The correctly aligned one still decrypts, and garbage ending in zeros does not.
        assert_eq!(
            key.decrypt_ticket(&ciphertext).unwrap().as_bytes(),
            b"s3cret"
        );
        let mut garbage = [0x5a_u8; TICKET_LEN];
        garbage[TICKET_LEN - 3..].fill(0);
        assert_eq!(
            key.decrypt_ticket(&garbage).unwrap_err(),
            SpiceError::Crypto("ticket decryption failed")
        );
    }

    #[test]
    fn encrypts_for_a_real_spice_server_key() {
        let (reply, _) = parse_link_reply(&golden::display_s2c_reply()).unwrap();
        let ciphertext = encrypt_ticket(&reply.pub_key, b"s3cret").unwrap();
        assert_eq!(ciphertext.len(), TICKET_LEN);
        assert_ne!(ciphertext, [0; TICKET_LEN]);
    }

    #[test]
    fn encrypt_rejects_bad_input() {
        let (reply, _) = parse_link_reply(&golden::main_s2c_reply()).unwrap();
        assert_eq!(
            encrypt_ticket(&reply.pub_key, &[b'z'; 61]),
            Err(SpiceError::TicketTooLong)
        );
        assert!(encrypt_ticket(&reply.pub_key, &[b'z'; 60]).is_ok());
        assert_eq!(
            encrypt_ticket(&reply.pub_key, b"a\0b"),
            Err(SpiceError::TicketContainsNul)
        );
        // SASL servers send an all-zero key.
        assert!(matches!(
            encrypt_ticket(&[0; PUBKEY_LEN], b"pw"),
            Err(SpiceError::Crypto(_))
        ));
    }
}
