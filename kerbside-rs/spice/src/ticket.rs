//! SPICE ticket crypto: the per-link RSA-1024 key the proxy offers a client,
//! decrypting the client's ticket with it, and encrypting the hypervisor's
//! ticket under the hypervisor's key. Padding is RSA-OAEP with SHA-1 and
//! MGF1-SHA-1 and an empty label (OpenSSL's `RSA_PKCS1_OAEP_PADDING`); the
//! plaintext is the password plus one NUL, as spice-gtk sends it.
//!
//! A `TicketKey` decrypts exactly one ticket: `decrypt_ticket` consumes it.
//! An attacker therefore gets one timing sample per key, which defeats
//! Marvin-style attacks on the rsa crate's non-constant-time decryption
//! (RUSTSEC-2023-0071). Pooling keys and timeouts belong to the proxy.

use std::fmt;

use rand::{CryptoRng, RngCore};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha1::Sha1;
use zeroize::Zeroizing;

use super::consts::{LinkError, MAX_PASSWORD_LEN, PUBKEY_LEN, TICKET_LEN};
use super::error::SpiceError;

/// A one-shot RSA-1024 key pair (e = 65537) for one client link.
///
/// The private key is zeroed when dropped (the rsa crate zeroizes it).
pub struct TicketKey {
    key: RsaPrivateKey,
    public_der: [u8; PUBKEY_LEN],
}

impl TicketKey {
    /// Generate a fresh key. This costs a few milliseconds of CPU: call it off
    /// the async runtime (e.g. a pool filled by a blocking thread).
    ///
    /// # Errors
    /// `Crypto` if key generation or DER encoding fails.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Result<Self, SpiceError> {
        let key = super::keygen::generate_rsa_1024(rng)
            .map_err(|_| SpiceError::Crypto("RSA key generation failed"))?;
        let der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| SpiceError::Crypto("public key DER encoding failed"))?;
        let public_der = der
            .as_bytes()
            .try_into()
            .map_err(|_| SpiceError::Crypto("public key DER is not 162 bytes"))?;
        Ok(Self { key, public_der })
    }

    /// DER SubjectPublicKeyInfo to put in `LinkReply::pub_key`.
    pub fn public_der(&self) -> &[u8; PUBKEY_LEN] {
        &self.public_der
    }

    /// Decrypt a client's 128-byte encrypted ticket, consuming the key.
    ///
    /// The plaintext is cut at its first NUL (spice-server compares with
    /// `strcmp`), so a ticket sent as password + NUL, or without a NUL,
    /// yields the password.
    ///
    /// # Errors
    /// `Invalid{InvalidData}` if the ciphertext is not 128 bytes, `Crypto`
    /// if OAEP decryption fails, `TicketTooLong` if the ticket is longer
    /// than 60 bytes. All map to a link error for the client via
    /// `SpiceError::link_error` (decryption failures: PERMISSION_DENIED).
    pub fn decrypt_ticket(self, ciphertext: &[u8]) -> Result<Ticket, SpiceError> {
        if ciphertext.len() != TICKET_LEN {
            return Err(SpiceError::invalid(
                LinkError::InvalidData,
                "encrypted ticket is not 128 bytes",
            ));
        }
        let mut plain = Zeroizing::new(
            self.key
                .decrypt(Oaep::new::<Sha1>(), ciphertext)
                .map_err(|_| SpiceError::Crypto("ticket decryption failed"))?,
        );
        // `self` (and the private key) is dropped when this returns.
        let end = plain.iter().position(|&b| b == 0).unwrap_or(plain.len());
        plain.truncate(end);
        if plain.len() > MAX_PASSWORD_LEN {
            return Err(SpiceError::TicketTooLong);
        }
        Ok(Ticket(plain))
    }
}

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

/// Encrypt `password` for a hypervisor, as spice-gtk does: the password plus
/// one NUL, RSA-OAEP-SHA1 under the server's `LinkReply::pub_key`.
///
/// # Errors
/// `TicketTooLong` (> 60 bytes), `TicketContainsNul`, or `Crypto` if the key
/// is not an RSA-1024 SubjectPublicKeyInfo (e.g. the all-zero key a SASL
/// server sends) or encryption fails.
pub fn encrypt_ticket<R: CryptoRng + RngCore>(
    rng: &mut R,
    server_spki_der: &[u8],
    password: &[u8],
) -> Result<[u8; TICKET_LEN], SpiceError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(SpiceError::TicketTooLong);
    }
    if password.contains(&0) {
        return Err(SpiceError::TicketContainsNul);
    }
    let key = RsaPublicKey::from_public_key_der(server_spki_der)
        .map_err(|_| SpiceError::Crypto("server public key is not an RSA SubjectPublicKeyInfo"))?;
    if key.size() != TICKET_LEN {
        return Err(SpiceError::Crypto("server public key is not RSA-1024"));
    }
    let mut plain = Zeroizing::new(Vec::with_capacity(password.len() + 1));
    plain.extend_from_slice(password);
    plain.push(0);
    let ciphertext = key
        .encrypt(rng, Oaep::new::<Sha1>(), &plain)
        .map_err(|_| SpiceError::Crypto("ticket encryption failed"))?;
    ciphertext
        .as_slice()
        .try_into()
        .map_err(|_| SpiceError::Crypto("ciphertext is not 128 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use crate::link::parse_link_reply;
    use rand::{SeedableRng, rngs::StdRng};

    /// Keygen is the slow part: tests use a seeded rng and as few keys as
    /// the consume-on-decrypt API allows.
    fn new_key(seed: u64) -> (TicketKey, StdRng) {
        let mut rng = StdRng::seed_from_u64(seed);
        (TicketKey::generate(&mut rng).unwrap(), rng)
    }

    /// Encrypt exactly `plain` under `key`'s public half, like spice-gtk's
    /// `RSA_public_encrypt(strlen(pw) + 1, pw, ..., RSA_PKCS1_OAEP_PADDING)`.
    fn gtk_encrypt(key: &TicketKey, rng: &mut StdRng, plain: &[u8]) -> Vec<u8> {
        RsaPublicKey::from_public_key_der(key.public_der())
            .unwrap()
            .encrypt(rng, Oaep::new::<Sha1>(), plain)
            .unwrap()
    }

    const DER_PREFIX: [u8; 29] = [
        0x30, 0x81, 0x9f, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
        0x01, 0x05, 0x00, 0x03, 0x81, 0x8d, 0x00, 0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00,
    ];

    #[test]
    fn public_der_looks_like_spice_servers() {
        let (key, _) = new_key(1);
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
        let (key, mut rng) = new_key(2);
        let ciphertext = encrypt_ticket(&mut rng, key.public_der(), b"s3cret").unwrap();
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
        for (seed, plain, want) in [
            (3, &b"s3cret\0"[..], &b"s3cret"[..]),
            (4, &[&max[..], b"\0"].concat()[..], &max[..]),
            (5, &b"\0"[..], &b""[..]),
            // No NUL at all, and bytes after the first NUL, are tolerated.
            (6, &b"abc\0junk"[..], &b"abc"[..]),
        ] {
            let (key, mut rng) = new_key(seed);
            let ciphertext = gtk_encrypt(&key, &mut rng, plain);
            let ticket = key.decrypt_ticket(&ciphertext).unwrap();
            assert_eq!(ticket.as_bytes(), want);
        }
    }

    #[test]
    fn rejects_long_tickets_and_bad_ciphertexts() {
        let (key, mut rng) = new_key(7);
        let long = gtk_encrypt(&key, &mut rng, &[b'y'; MAX_PASSWORD_LEN + 1]);
        assert_eq!(
            key.decrypt_ticket(&long).unwrap_err(),
            SpiceError::TicketTooLong
        );

        let (key, _) = new_key(8);
        let err = key.decrypt_ticket(&[0u8; 127]).unwrap_err();
        assert_eq!(err.link_error(), LinkError::InvalidData);

        // The real client ciphertext was made for spice-server's key.
        let (key, _) = new_key(9);
        let captured = golden::main_c2s_ticket();
        let err = key.decrypt_ticket(&captured[4..]).unwrap_err();
        assert_eq!(err, SpiceError::Crypto("ticket decryption failed"));
        assert_eq!(err.link_error(), LinkError::PermissionDenied);
    }

    #[test]
    fn encrypts_for_a_real_spice_server_key() {
        let mut rng = StdRng::seed_from_u64(10);
        let (reply, _) = parse_link_reply(&golden::display_s2c_reply()).unwrap();
        let ciphertext = encrypt_ticket(&mut rng, &reply.pub_key, b"s3cret").unwrap();
        assert_eq!(ciphertext.len(), TICKET_LEN);
        assert_ne!(ciphertext, [0; TICKET_LEN]);
    }

    #[test]
    fn encrypt_rejects_bad_input() {
        let mut rng = StdRng::seed_from_u64(11);
        let (reply, _) = parse_link_reply(&golden::main_s2c_reply()).unwrap();
        assert_eq!(
            encrypt_ticket(&mut rng, &reply.pub_key, &[b'z'; 61]),
            Err(SpiceError::TicketTooLong)
        );
        assert!(encrypt_ticket(&mut rng, &reply.pub_key, &[b'z'; 60]).is_ok());
        assert_eq!(
            encrypt_ticket(&mut rng, &reply.pub_key, b"a\0b"),
            Err(SpiceError::TicketContainsNul)
        );
        // SASL servers send an all-zero key.
        assert!(matches!(
            encrypt_ticket(&mut rng, &[0; PUBKEY_LEN], b"pw"),
            Err(SpiceError::Crypto(_))
        ));
    }
}
