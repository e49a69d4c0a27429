//! The Nova notification consumer: ends console access when Nova says an instance was
//! deleted, stopped or moved.
//!
//! Nova publishes versioned notifications (`[notifications] notification_format = versioned`
//! or `both`, `[oslo_messaging_notifications] driver = messagingv2`) to the topic exchange
//! `nova` with routing keys `<topic>.info` and `<topic>.error`. Every kerbside node of a pool
//! consumes the same queue `<topic>.<pool_name>`, so each notification is handled once per
//! deployment.
//!
//! Pieces, in data-flow order:
//! - [`transport`]: the oslo transport URL (several brokers, vhost, TLS), shown redacted;
//! - [`consumer`]: the lapin loop (declare, consume, settle, reconnect);
//! - [`envelope`]: the oslo 2.0 envelope and versioned payloads (pure);
//! - [`handlers`]: which event types matter and what to do about them (pure);
//! - [`effects`]: doing it in the database, in one transaction;
//! - [`error`]: [`NotifyError`], and which failures retrying cannot fix.
//!
//! This module owns [`start`]: it checks the settings, spawns the consumer on the shutdown's
//! task tracker and waits for its first connection attempt.
//!
//! It depends on `config`, `db`, `metrics`, `shutdown` and `telemetry`; it never imports the
//! proxy or the API. It does not close connections: sessions end through the database
//! (`session_terminations`), which every proxy node polls. What Nova must be configured to
//! publish, and the exchange and queue settings of DevStack and Kolla-Ansible, are in the
//! README.

pub mod consumer;
pub mod effects;
pub mod envelope;
pub mod error;
pub mod handlers;
pub mod transport;

use std::sync::Arc;

pub use self::error::NotifyError;

use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// A notification payload captured from a real Nova, from
/// `tests/fixtures/notifications/nova/` (for the unit tests of the pure parts).
#[cfg(test)]
pub(crate) fn nova_fixture(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/../tests/fixtures/notifications/nova/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Starts the consumer on the shutdown's task tracker.
///
/// The first connection attempt is awaited (bounded by a timeout): when the broker refuses
/// kerbside's exchange or queue declaration because they exist with other settings, start
/// fails with a message naming the option to change. An unreachable broker is not an error
/// here: the consumer keeps retrying in the background (the broker may start later).
///
/// # Errors
/// No or an invalid `transport_url`; exchange or queue settings that do not match the broker.
///
/// # Cancel safety
/// Not meant to be cancelled: dropped while it waits, the consumer it spawned keeps running
/// on the tracker until the shutdown token fires.
pub async fn start(
    config: Arc<Config>,
    db: Db,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(), NotifyError> {
    let url =
        config
            .notification_transport_url()
            .ok_or_else(|| NotifyError::InvalidTransportUrl {
                reason: "no transport_url is set in [oslo_messaging_notifications] or [DEFAULT]"
                    .to_owned(),
            })?;
    let transport = transport::TransportUrl::parse(url.expose())?;
    let consumer = consumer::Consumer::new(
        &config,
        transport.clone(),
        handlers::Dispatcher::nova(),
        db,
        metrics,
        shutdown.clone(),
    );
    if consumer.topology().queues.is_empty() {
        return Err(NotifyError::Settings(
            "[oslo_messaging_notifications] topics is empty: nothing to consume".to_owned(),
        ));
    }
    let t = consumer.topology();
    tracing::info!(broker = %transport.redacted(), exchange = %t.exchange, durable = t.durable, queue_type = ?t.queue_type,
        prefetch = t.prefetch, dead_letter_exchange = t.dead_letter_exchange.as_deref().unwrap_or(""),
        "starting the Nova notification consumer");
    let (tx, rx) = tokio::sync::oneshot::channel();
    shutdown.tracker().spawn(consumer.run(tx));
    match rx.await {
        Ok(Err(e)) if e.is_fatal_at_start() => Err(e),
        _ => Ok(()),
    }
}
