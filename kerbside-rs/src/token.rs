//! Console access tokens: generation and hashing (pure; no I/O).
//!
//! A token is what a user puts in the SPICE password field, so it must fit SPICE's
//! 60-byte limit and survive copy and paste: 48 characters of `[A-Za-z0-9]` from the OS
//! random source (about 285 bits). Only its sha-256 hex digest is ever stored; the token
//! itself is handed out once and never logged (it is a [`SecretString`]).
//!
//! Storage and lookup live in [`crate::db::models::console_token`].

use rand::Rng;
use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// Length of a generated token, in characters.
pub const TOKEN_LENGTH: usize = 48;

/// Length of a token hash: sha-256 as lowercase hex.
pub const TOKEN_HASH_LENGTH: usize = 64;

/// A new random token: [`TOKEN_LENGTH`] characters of `[A-Za-z0-9]` from the OS RNG.
#[must_use]
pub fn generate_token() -> SecretString {
    let token: String = OsRng
        .sample_iter(&Alphanumeric)
        .take(TOKEN_LENGTH)
        .map(char::from)
        .collect();
    SecretString::from(token)
}

/// The stored form of a token: sha-256 of its bytes, lowercase hex.
#[must_use]
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `s` has the shape of a [`hash_token`] output (64 lowercase hex digits).
#[must_use]
pub fn is_token_hash(s: &str) -> bool {
    s.len() == TOKEN_HASH_LENGTH
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_token_hash(&hash_token("x")));
        assert!(!is_token_hash(&hash_token("x").to_uppercase()));
    }

    #[test]
    fn token_shape() {
        let t = generate_token();
        assert_eq!(t.expose_secret().len(), TOKEN_LENGTH);
        assert!(t.expose_secret().bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
