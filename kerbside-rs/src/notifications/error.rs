//! `NotifyError`: the one error type of the notification consumer.
//!
//! Variants name what failed and its identifier (exchange, queue, redacted broker URL),
//! never a password. Whether a failure is worth retrying is decided here
//! ([`NotifyError::is_config_mismatch`]); the consumer loop decides what to do about it.

use crate::db::DbError;

/// Everything that can go wrong while consuming Nova notifications.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotifyError {
    /// `transport_url` cannot be used.
    #[error("invalid transport_url: {reason}")]
    InvalidTransportUrl {
        /// What is wrong; never contains the password.
        reason: String,
    },

    /// The notification settings cannot work (e.g. no topic to consume).
    #[error("invalid notification settings: {0}")]
    Settings(String),

    /// The broker could not be reached or refused the login.
    #[error("cannot connect to the message broker at {url}: {cause}")]
    Connect {
        /// The broker URL with its password replaced by `***`.
        url: String,
        /// Why, on one line.
        cause: String,
    },

    /// The exchange exists with other settings than `[notifications]` asks for.
    #[error(
        "the exchange '{exchange}' exists with different settings than kerbside declares \
         (durable = {durable}): {detail}. {}",
        exchange_hint(*durable)
    )]
    ExchangeMismatch {
        /// The exchange.
        exchange: String,
        /// The durability kerbside declared it with.
        durable: bool,
        /// The broker's words.
        detail: String,
    },

    /// The pool's queue exists with other settings than `[notifications]` asks for.
    #[error(
        "the queue '{queue}' exists with different settings than kerbside declares \
         ({declared}): {detail}. Set [notifications] durable, queue_type and \
         dead_letter_exchange to what the queue was created with, or delete the queue so \
         kerbside declares it again"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// What kerbside declared, e.g. `durable = true, queue_type = quorum`.
        declared: String,
        /// The broker's words.
        detail: String,
    },

    /// Another broker operation failed (channel closed, connection lost, refused command).
    #[error("message broker {operation} failed: {cause}")]
    Broker {
        /// What was being done, e.g. `"queue.bind versioned_notifications.kerbside"`.
        operation: String,
        /// The broker's or the client library's words.
        cause: String,
    },

    /// A broker operation did not finish in time.
    #[error("message broker {operation} timed out after {seconds} s")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The limit.
        seconds: u64,
    },

    /// A notification cannot be understood (not JSON, no event type, broken envelope,
    /// payload without an instance uuid).
    #[error("malformed notification: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },

    /// Applying a notification's effects failed.
    #[error("{0}")]
    Db(String),
}

impl NotifyError {
    /// A malformed-notification error.
    pub fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed {
            reason: reason.into(),
        }
    }

    /// Whether the broker refused kerbside's exchange or queue declaration because they
    /// exist with other settings: a human must change the configuration (or the broker).
    #[must_use]
    pub fn is_config_mismatch(&self) -> bool {
        matches!(
            self,
            Self::ExchangeMismatch { .. } | Self::QueueMismatch { .. }
        )
    }

    /// Whether retrying the connection can never help (the configuration is wrong).
    #[must_use]
    pub fn is_fatal_at_start(&self) -> bool {
        self.is_config_mismatch()
            || matches!(self, Self::InvalidTransportUrl { .. } | Self::Settings(_))
    }
}

/// What to change when the exchange's durability differs from what kerbside declared.
fn exchange_hint(declared_durable: bool) -> &'static str {
    if declared_durable {
        "The exchange is not durable (DevStack-style): set [notifications] durable = false and \
         queue_type = classic (a quorum queue implies durable)"
    } else {
        "The exchange is durable (Kolla-Ansible-style): set [notifications] durable = true, or \
         queue_type = quorum when the deployment uses quorum queues (rabbit_quorum_queue)"
    }
}

impl From<DbError> for NotifyError {
    fn from(e: DbError) -> Self {
        Self::Db(e.to_string())
    }
}
