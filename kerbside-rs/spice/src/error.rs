//! `SpiceError`: the one error type of the SPICE protocol module. It separates
//! "need more bytes" (`Incomplete`) from "these bytes are wrong" (`Invalid`)
//! so a reader loop knows whether to read again or give up, and maps every
//! failure to the `SpiceLinkErr` code to send a client. Messages never carry
//! secrets (tickets, keys, decrypted bytes).

use super::consts::LinkError;

/// Errors from parsing, encoding and ticket crypto.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiceError {
    /// The buffer is a valid prefix so far; at least `needed` more bytes are
    /// required before the parser can decide.
    #[error("incomplete SPICE data: need at least {needed} more bytes")]
    Incomplete {
        /// Lower bound on the number of additional bytes required.
        needed: usize,
    },
    /// The bytes violate the protocol; `code` is what spice-server would
    /// answer for the same input.
    #[error("invalid SPICE data ({code}): {reason}")]
    Invalid {
        /// Link error code to report to the peer.
        code: LinkError,
        /// What was wrong, for logs.
        reason: &'static str,
    },
    /// RSA key generation, key parsing, encryption or decryption failed.
    #[error("SPICE ticket crypto failed: {0}")]
    Crypto(&'static str),
    /// A ticket (password) longer than 60 bytes.
    #[error("SPICE ticket is longer than 60 bytes")]
    TicketTooLong,
    /// A ticket to encrypt contains a NUL byte; the server would compare only
    /// the part before it.
    #[error("SPICE ticket contains a NUL byte")]
    TicketContainsNul,
}

impl SpiceError {
    /// Shorthand for an `Invalid` error.
    pub(crate) fn invalid(code: LinkError, reason: &'static str) -> Self {
        Self::Invalid { code, reason }
    }

    /// The link error code to send the client for this failure, matching
    /// spice-server: bad tickets and failed decryption are PERMISSION_DENIED.
    /// `Incomplete` only reaches a client when its stream ended early, so it
    /// maps to the generic ERROR.
    pub fn link_error(&self) -> LinkError {
        match self {
            Self::Incomplete { .. } => LinkError::Error,
            Self::Invalid { code, .. } => *code,
            Self::Crypto(_) | Self::TicketTooLong | Self::TicketContainsNul => {
                LinkError::PermissionDenied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_error_codes() {
        assert_eq!(
            SpiceError::Incomplete { needed: 3 }.link_error(),
            LinkError::Error
        );
        assert_eq!(
            SpiceError::invalid(LinkError::InvalidMagic, "x").link_error(),
            LinkError::InvalidMagic
        );
        assert_eq!(
            SpiceError::Crypto("x").link_error(),
            LinkError::PermissionDenied
        );
        assert_eq!(
            SpiceError::TicketTooLong.link_error(),
            LinkError::PermissionDenied
        );
    }

    #[test]
    fn messages_are_readable() {
        assert_eq!(
            SpiceError::invalid(LinkError::InvalidData, "too many caps").to_string(),
            "invalid SPICE data (invalid_data): too many caps"
        );
        assert_eq!(
            SpiceError::Incomplete { needed: 16 }.to_string(),
            "incomplete SPICE data: need at least 16 more bytes"
        );
    }
}
