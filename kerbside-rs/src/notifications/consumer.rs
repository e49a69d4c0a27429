//! The lapin consumer loop: connect → declare → consume → apply → acknowledge, reconnecting
//! with capped backoff until the shutdown token fires.
//!
//! Delivery policy:
//! - a notification is acknowledged only after its database transaction committed;
//! - a message that cannot be read is logged once and acknowledged, or rejected without
//!   requeue (so RabbitMQ dead-letters it) when `[notifications] dead_letter_exchange` is
//!   set; it is never requeued and never stops the consumer;
//! - while the database is unavailable the message is requeued after a delay that grows
//!   (capped) with each consecutive failure, so nothing is lost and the broker is not spun;
//! - a lost broker connection drops every unacknowledged message back into the queue (the
//!   broker does that); kerbside reconnects, declares its exchange, queues and bindings
//!   again (a restarted broker may have lost non-durable ones) and resumes. The queues are
//!   never auto-deleted, so messages published meanwhile wait for it.
//!
//! Messages are processed one at a time, in delivery order; `prefetch_count` only bounds
//! how many the broker pushes ahead.
//!
//! It owns the broker side: the [`Topology`] (exchange, queues, bindings) and its
//! declaration, the consumers, settling deliveries, reconnecting, and the `connected`
//! gauge. It does not read envelopes, choose what to do or write the database: it hands each
//! delivery to [`super::envelope`], [`super::handlers`] and [`super::effects`] in turn.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SelectAll, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::Rng;
use tokio::sync::oneshot;

use super::effects;
use super::envelope;
use super::error::NotifyError;
use super::handlers::{Dispatcher, Plan, Route};
use super::transport::TransportUrl;
use crate::config::{Config, QueueType};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::telemetry::one_line;

/// Longest a connection attempt (TCP, login, declarations) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest reconnect or requeue delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest a graceful close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Metric label of a message that could not be read.
const UNPARSABLE: &str = "unparsable";
/// Metric label of an event type that does not look like one.
const OTHER: &str = "other";

/// One queue of the pool and what it is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// `<topic>.<pool_name>`.
    pub name: String,
    /// `<topic>.info`, `<topic>.error`.
    pub routing_keys: Vec<String>,
}

/// The exchange, queues and consumer settings, from `[notifications]` and
/// `[oslo_messaging_notifications]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The exchange Nova publishes to (`nova`).
    pub exchange: String,
    /// Whether the exchange and the queues are durable. A quorum queue is always durable,
    /// and oslo.messaging then declares the exchange durable too
    /// (`durable = amqp_durable_queues or rabbit_quorum_queue`), so `quorum` implies it.
    pub durable: bool,
    /// Classic or quorum queues.
    pub queue_type: QueueType,
    /// One queue per topic.
    pub queues: Vec<QueueSpec>,
    /// Unacknowledged deliveries the broker may push ahead (1..=65535).
    pub prefetch: u16,
    /// Where rejected messages go, if anywhere.
    pub dead_letter_exchange: Option<String>,
}

impl Topology {
    /// The topology `config` describes.
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        let n = &config.notifications;
        let pool = &n.pool_name;
        let queues = config
            .oslo_messaging_notifications
            .topics
            .iter()
            .filter(|t| !t.is_empty())
            .map(|topic| QueueSpec {
                // oslo.messaging names a pool's queue after the pool alone; kerbside adds the
                // topic so one pool can follow several topics and never shares a queue with
                // another service's pool of the same name on another topic.
                name: format!("{topic}.{pool}"),
                routing_keys: vec![format!("{topic}.info"), format!("{topic}.error")],
            })
            .collect();
        Topology {
            exchange: n.exchange.clone(),
            durable: n.durable || n.queue_type == QueueType::Quorum,
            queue_type: n.queue_type,
            queues,
            prefetch: u16::try_from(n.prefetch_count.max(1)).unwrap_or(u16::MAX),
            dead_letter_exchange: n.dead_letter_exchange.clone().filter(|s| !s.is_empty()),
        }
    }

    /// What kerbside declares its queues with, in configuration terms.
    fn declared(&self) -> String {
        let dlx = self
            .dead_letter_exchange
            .as_deref()
            .map(|d| format!(", dead_letter_exchange = {d}"))
            .unwrap_or_default();
        format!(
            "durable = {}, queue_type = {}{dlx}",
            self.durable,
            self.queue_type.as_str()
        )
    }

    /// Declares the exchange, the queues and their bindings on `channel`, as oslo.messaging
    /// would (so they exist before Nova's first notification, and again after a restarted
    /// broker lost non-durable ones), and checks that the dead-letter exchange exists.
    /// Declaring what already exists with the same settings changes nothing.
    ///
    /// It does not consume: [`start_consumers`] does, once this succeeded.
    ///
    /// # Errors
    /// [`NotifyError::ExchangeMismatch`] or [`NotifyError::QueueMismatch`] when the broker
    /// holds one with other settings (RabbitMQ's PRECONDITION_FAILED, which also closes
    /// `channel`); [`NotifyError::Broker`] for any other refused operation.
    ///
    /// # Cancel safety
    /// Cancel safe: every declaration is idempotent, so a dropped call is simply made again.
    async fn declare(
        &self,
        connection: &Connection,
        channel: &Channel,
        transport: &TransportUrl,
    ) -> Result<(), NotifyError> {
        self.declare_exchange(channel, transport).await?;
        if let Some(dlx) = &self.dead_letter_exchange {
            check_exchange_exists(connection, dlx, transport).await?;
        }
        self.declare_queues(channel, transport).await
    }

    /// The topic exchange Nova publishes to, with the configured durability. A different
    /// durability is refused by RabbitMQ with PRECONDITION_FAILED, which closes the channel:
    /// the error says which option to change instead of leaving a dead channel.
    async fn declare_exchange(
        &self,
        channel: &Channel,
        transport: &TransportUrl,
    ) -> Result<(), NotifyError> {
        let options = ExchangeDeclareOptions {
            durable: self.durable,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| match precondition_failed(&e) {
                Some(detail) => NotifyError::ExchangeMismatch {
                    exchange: self.exchange.clone(),
                    durable: self.durable,
                    detail,
                },
                None => broker_error(transport, format!("exchange.declare {}", self.exchange))(e),
            })
    }

    /// One queue per topic (never auto-deleted, never exclusive), each bound to the
    /// exchange with its routing keys.
    async fn declare_queues(
        &self,
        channel: &Channel,
        transport: &TransportUrl,
    ) -> Result<(), NotifyError> {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
        }
        let queue_options = QueueDeclareOptions {
            durable: self.durable,
            // Never auto-deleted and never exclusive: the queue outlives a consumer's
            // connection, so notifications published during a reconnect wait for it, and
            // every node of the pool shares it.
            auto_delete: false,
            exclusive: false,
            ..QueueDeclareOptions::default()
        };
        for queue in &self.queues {
            channel
                .queue_declare(queue.name.as_str().into(), queue_options, arguments.clone())
                .await
                .map_err(|e| match precondition_failed(&e) {
                    Some(detail) => NotifyError::QueueMismatch {
                        queue: queue.name.clone(),
                        declared: self.declared(),
                        detail,
                    },
                    None => broker_error(transport, format!("queue.declare {}", queue.name))(e),
                })?;
            for key in &queue.routing_keys {
                channel
                    .queue_bind(
                        queue.name.as_str().into(),
                        self.exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(broker_error(
                        transport,
                        format!("queue.bind {} {key}", queue.name),
                    ))?;
            }
        }
        Ok(())
    }
}

/// Warns when exchange `name` does not exist: RabbitMQ drops dead-lettered messages
/// silently when it is missing. The check runs on a channel of its own, since a passive
/// declaration of a missing exchange closes the channel it runs on.
///
/// # Errors
/// [`NotifyError::Broker`] when no channel can be opened; a missing exchange is only logged.
async fn check_exchange_exists(
    connection: &Connection,
    name: &str,
    transport: &TransportUrl,
) -> Result<(), NotifyError> {
    let probe = connection
        .create_channel()
        .await
        .map_err(broker_error(transport, "channel.open"))?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    match probe
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = probe.close(200, "checked".into()).await;
        }
        Err(e) => tracing::warn!(exchange = %name, error = %one_line(&e.to_string()),
            "[notifications] dead_letter_exchange does not exist: RabbitMQ will drop unreadable notifications until it does"),
    }
    Ok(())
}

/// Sets the prefetch window on `channel` and starts one consumer per queue of `topology`
/// (tagged `kerbside-<node>-<random>`), merged into one stream of deliveries. Run it after
/// [`Topology::declare`].
///
/// # Errors
/// [`NotifyError::Broker`] when the broker refuses `basic.qos` or `basic.consume`.
///
/// # Cancel safety
/// Cancel safe: consumers started before the drop end with the channel, and the broker
/// requeues whatever it had pushed to them.
async fn start_consumers(
    channel: &Channel,
    topology: &Topology,
    node: &str,
    transport: &TransportUrl,
) -> Result<SelectAll<lapin::Consumer>, NotifyError> {
    channel
        .basic_qos(topology.prefetch, BasicQosOptions::default())
        .await
        .map_err(broker_error(transport, "basic.qos"))?;
    let mut consumers = Vec::with_capacity(topology.queues.len());
    for queue in &topology.queues {
        let tag = format!("kerbside-{node}-{}", uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                queue.name.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error(
                transport,
                format!("basic.consume {}", queue.name),
            ))?;
        consumers.push(consumer);
    }
    Ok(futures_util::stream::select_all(consumers))
}

/// The error for a failed broker `operation`: the library's words, on one line, with any
/// password of the transport URL scrubbed.
fn broker_error(
    transport: &TransportUrl,
    operation: impl Into<String>,
) -> impl FnOnce(lapin::Error) -> NotifyError + '_ {
    let operation = operation.into();
    move |e| NotifyError::Broker {
        operation,
        cause: one_line(&transport.scrub(&e.to_string())),
    }
}

/// An open connection, consuming.
struct Link {
    /// The connection (closed on drop by the library; closed gracefully by [`Link::close`]).
    connection: Connection,
    /// The channel the consumers run on.
    channel: Channel,
    /// Deliveries of every queue, merged.
    deliveries: SelectAll<lapin::Consumer>,
    /// The broker, for logs (no password).
    shown: String,
}

impl Link {
    /// Closes the channel and the connection with a reply code, waiting at most
    /// [`CLOSE_TIMEOUT`]; the broker requeues whatever was left unacknowledged. Failures are
    /// ignored: the connection is being given up either way.
    async fn close(self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = self
                .channel
                .close(200, "kerbside consumer closing".into())
                .await;
            let _ = self
                .connection
                .close(200, "kerbside consumer closing".into())
                .await;
        })
        .await;
    }
}

/// Why consuming stopped.
enum Ended {
    /// The shutdown token fired.
    Shutdown,
    /// The connection or channel broke; the cause, on one line.
    Lost(String),
}

/// The consumer: long-lived state of the notification component.
pub struct Consumer {
    /// Where the broker is.
    transport: TransportUrl,
    /// What to declare and consume.
    topology: Topology,
    /// Notification handlers.
    dispatcher: Dispatcher,
    /// The database effects are written to.
    db: Db,
    /// Metrics (notifications part).
    metrics: Arc<Metrics>,
    /// This node's name, for the audit trail and the consumer tag.
    node: String,
    /// Process shutdown.
    shutdown: Shutdown,
    /// Which broker of the URL to try next.
    next_host: usize,
    /// Consecutive database failures (drives the requeue delay; 0 when healthy).
    db_failures: u32,
}

impl Consumer {
    /// A consumer for `config`; nothing is connected until [`Consumer::run`].
    #[must_use]
    pub fn new(
        config: &Config,
        transport: TransportUrl,
        dispatcher: Dispatcher,
        db: Db,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Self {
        Consumer {
            transport,
            topology: Topology::from_config(config),
            dispatcher,
            db,
            metrics,
            node: config.node_name(),
            shutdown,
            next_host: 0,
            db_failures: 0,
        }
    }

    /// The topology it declares.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Runs until the shutdown token fires. The outcome of the first connection attempt is
    /// sent on `first`; if that outcome is an error that retrying cannot fix (a
    /// configuration mismatch), the loop ends there.
    ///
    /// # Cancel safety
    /// Meant to be spawned; it returns by itself on shutdown. A notification being applied
    /// when the token fires is finished and acknowledged first.
    pub async fn run(mut self, first: oneshot::Sender<Result<(), NotifyError>>) {
        let mut first = Some(first);
        let token = self.shutdown.token().clone();
        let mut failures: u32 = 0;
        let mut last_error: Option<String> = None;
        loop {
            let attempt = tokio::select! {
                biased;
                () = token.cancelled() => break,
                r = tokio::time::timeout(SETUP_TIMEOUT, self.connect()) => r.unwrap_or(Err(NotifyError::Timeout {
                    operation: "connecting and declaring",
                    seconds: SETUP_TIMEOUT.as_secs(),
                })),
            };
            match attempt {
                Ok(mut link) => {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                    if last_error.is_some() {
                        tracing::info!(broker = %link.shown, "connected to the message broker again: consuming Nova notifications");
                    } else {
                        tracing::info!(broker = %link.shown, exchange = %self.topology.exchange,
                            queues = ?self.topology.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
                            "consuming Nova notifications");
                    }
                    failures = 0;
                    self.metrics.notifications.connected.set(1);
                    let ended = self.consume(&mut link).await;
                    self.metrics.notifications.connected.set(0);
                    let shown = link.shown.clone();
                    link.close().await;
                    match ended {
                        Ended::Shutdown => break,
                        Ended::Lost(cause) => {
                            tracing::warn!(broker = %shown, error = %cause, "lost the message broker connection: reconnecting");
                            last_error = Some(cause);
                        }
                    }
                }
                Err(e) => {
                    self.next_host = self.next_host.wrapping_add(1);
                    if let Some(tx) = first.take() {
                        let fatal = e.is_fatal_at_start();
                        let _ = tx.send(Err(e.clone()));
                        if fatal {
                            // start() reports it and the process does not start.
                            return;
                        }
                    }
                    let text = e.to_string();
                    if e.is_config_mismatch() {
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::error!(error = %text, "cannot consume Nova notifications");
                        }
                    } else if failures == 0 {
                        tracing::warn!(error = %text, "cannot reach the message broker: retrying");
                    } else {
                        tracing::debug!(error = %text, attempt = failures + 1, "message broker still unreachable");
                    }
                    last_error = Some(text);
                    failures = failures.saturating_add(1);
                }
            }
            tokio::select! {
                biased;
                () = token.cancelled() => break,
                () = tokio::time::sleep(backoff(failures)) => {}
            }
        }
        self.metrics.notifications.connected.set(0);
        tracing::info!("notification consumer stopped");
    }

    /// Connects to the next broker of the URL, declares the topology
    /// ([`Topology::declare`]) and starts one consumer per queue ([`start_consumers`]).
    ///
    /// # Errors
    /// [`NotifyError::Connect`] when the broker cannot be reached or refuses the login;
    /// [`NotifyError::ExchangeMismatch`] or [`NotifyError::QueueMismatch`] when the broker
    /// holds the exchange or a queue with other settings; [`NotifyError::Broker`] for any
    /// other refused operation.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped part-way, the connection is dropped with it (the library closes
    /// it) and nothing has been consumed yet. [`Consumer::run`] bounds it with a timeout.
    async fn connect(&mut self) -> Result<Link, NotifyError> {
        let (uri, shown) = self.transport.amqp_uri(self.next_host).ok_or_else(|| {
            NotifyError::InvalidTransportUrl {
                reason: "no broker host".to_owned(),
            }
        })?;
        let props = ConnectionProperties::default()
            .with_connection_name(format!("kerbside-notifications@{}", self.node).into());
        let connection =
            Connection::connect_uri(uri, props)
                .await
                .map_err(|e| NotifyError::Connect {
                    url: shown.clone(),
                    cause: one_line(&self.transport.scrub(&e.to_string())),
                })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(broker_error(&self.transport, "channel.open"))?;
        self.topology
            .declare(&connection, &channel, &self.transport)
            .await?;
        let deliveries =
            start_consumers(&channel, &self.topology, &self.node, &self.transport).await?;
        Ok(Link {
            connection,
            channel,
            deliveries,
            shown,
        })
    }

    /// Processes deliveries until the link breaks or the shutdown token fires.
    ///
    /// # Cancel safety
    /// It returns by itself when the token fires. A delivery being processed then is
    /// finished first; one waiting to be requeued is left unacknowledged, and the broker
    /// requeues it when the channel closes.
    async fn consume(&mut self, link: &mut Link) -> Ended {
        let token = self.shutdown.token().clone();
        loop {
            let next = tokio::select! {
                biased;
                () = token.cancelled() => return Ended::Shutdown,
                next = link.deliveries.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    return Ended::Lost(one_line(&self.transport.scrub(&e.to_string())));
                }
                None => {
                    return Ended::Lost(
                        "the broker cancelled the consumer (was the queue deleted?)".to_owned(),
                    );
                }
            };
            if let Err(ended) = self.process(delivery).await {
                return ended;
            }
        }
    }

    /// Handles one delivery and settles it: ack once its effects committed (or when nothing
    /// is to be done), requeue after a delay while the database is unavailable, and
    /// [`Consumer::drop_poison`] for what can never succeed.
    ///
    /// # Errors
    /// [`Ended::Lost`] when the delivery cannot be settled (the channel broke);
    /// [`Ended::Shutdown`] when the token fires during the requeue delay.
    ///
    /// # Cancel safety
    /// Not cancel safe, and not cancelled: [`Consumer::consume`] awaits it to the end. The
    /// database transaction runs on the blocking pool and would finish anyway; the delivery
    /// would then come back after a reconnect and be applied again (effects are idempotent).
    async fn process(&mut self, delivery: Delivery) -> Result<(), Ended> {
        let m = &self.metrics.notifications;
        let notification = match envelope::parse(&delivery.data) {
            Ok(n) => n,
            Err(e) => {
                m.received.with_label_values(&[UNPARSABLE]).inc();
                m.failed.with_label_values(&[UNPARSABLE]).inc();
                return self.drop_poison(&delivery, &e, UNPARSABLE).await;
            }
        };
        let label = metric_label(&notification.event_type);
        m.received.with_label_values(&[label]).inc();
        let plan = match self.dispatcher.route(&notification) {
            Ok(Route::Act(plan)) => plan,
            Ok(Route::Ignore(why)) => {
                m.ignored.with_label_values(&[label]).inc();
                tracing::debug!(event_type = %label, reason = ?why, "notification ignored");
                return settle(&delivery, Settle::Ack).await;
            }
            Err(e) => {
                m.failed.with_label_values(&[label]).inc();
                return self.drop_poison(&delivery, &e, label).await;
            }
        };
        let (db, node, job) = (self.db.clone(), self.node.clone(), plan.clone());
        match db.run(move |conn| effects::apply(conn, &job, &node)).await {
            Ok(outcome) => {
                if self.db_failures > 0 {
                    tracing::info!(
                        failures = self.db_failures,
                        "the database is reachable again: notifications are applied"
                    );
                    self.db_failures = 0;
                }
                let m = &self.metrics.notifications;
                m.handled.with_label_values(&[label]).inc();
                let Plan::EndInstanceAccess(event) = &plan;
                if outcome.consoles > 0 {
                    tracing::info!(event_type = event.event_type, instance.uuid = %event.instance_uuid,
                        sessions = outcome.sessions_terminated, tokens = outcome.tokens_revoked, consoles = outcome.consoles,
                        "Nova notification: console access to the instance ended");
                } else {
                    tracing::debug!(event_type = event.event_type, instance.uuid = %event.instance_uuid, "Nova notification about an instance without consoles");
                }
                settle(&delivery, Settle::Ack).await
            }
            Err(e) if e.is_transient() => {
                self.metrics
                    .notifications
                    .failed
                    .with_label_values(&[label])
                    .inc();
                self.db_failures = self.db_failures.saturating_add(1);
                let delay = backoff(self.db_failures.saturating_sub(1));
                if self.db_failures == 1 {
                    tracing::warn!(error = %e, event_type = plan.event_type(), retry_in_ms = delay.as_millis(),
                        "database unavailable: the notification goes back to the queue");
                } else {
                    tracing::debug!(error = %e, failures = self.db_failures, "database still unavailable");
                }
                tokio::select! {
                    biased;
                    // Unacknowledged: the broker requeues it when the channel closes.
                    () = self.shutdown.token().cancelled() => return Err(Ended::Shutdown),
                    () = tokio::time::sleep(delay) => {}
                }
                settle(&delivery, Settle::Requeue).await
            }
            Err(e) => {
                self.metrics
                    .notifications
                    .failed
                    .with_label_values(&[label])
                    .inc();
                self.drop_poison(&delivery, &NotifyError::from(e), label)
                    .await
            }
        }
    }

    /// Logs a message that cannot be processed (once: it is never requeued) and acks it, or
    /// rejects it without requeue when a dead-letter exchange is configured.
    ///
    /// # Errors
    /// [`Ended::Lost`] when the delivery cannot be settled.
    async fn drop_poison(
        &self,
        delivery: &Delivery,
        error: &NotifyError,
        label: &str,
    ) -> Result<(), Ended> {
        let dead_letter = self.topology.dead_letter_exchange.as_deref();
        tracing::warn!(error = %error, event_type = label, routing_key = %delivery.routing_key.as_str(),
            bytes = delivery.data.len(), redelivered = delivery.redelivered,
            dead_letter_exchange = dead_letter.unwrap_or(""),
            "{}", if dead_letter.is_some() { "notification cannot be processed: dead-lettered" } else { "notification cannot be processed: dropped" });
        settle(
            delivery,
            if dead_letter.is_some() {
                Settle::Reject
            } else {
                Settle::Ack
            },
        )
        .await
    }
}

/// How a delivery is settled.
#[derive(Clone, Copy, Debug)]
enum Settle {
    /// Done with it.
    Ack,
    /// Back into the queue.
    Requeue,
    /// Out of the queue, to the dead-letter exchange if the queue has one.
    Reject,
}

/// Settles `delivery` as `how` says.
///
/// # Errors
/// [`Ended::Lost`] when the channel broke: the broker then requeues the message and it comes
/// back after the reconnect.
async fn settle(delivery: &Delivery, how: Settle) -> Result<(), Ended> {
    let result = match how {
        Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
        Settle::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Settle::Reject => {
            delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    // If the channel broke, the broker requeues the message and it comes back after the
    // reconnect (effects are idempotent).
    result.map(drop).map_err(|e| {
        Ended::Lost(format!(
            "cannot settle a delivery ({how:?}): {}",
            one_line(&e.to_string())
        ))
    })
}

/// The broker's text when `e` is a PRECONDITION_FAILED (406) channel error.
fn precondition_failed(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406 => {
            Some(amqp.get_message().as_str().to_owned())
        }
        _ => None,
    }
}

/// The metric label of an event type: itself when it looks like one, else [`OTHER`] (so a
/// hostile publisher cannot create unbounded label values with arbitrary strings).
fn metric_label(event_type: &str) -> &str {
    let plausible = event_type.len() <= 64
        && event_type.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if plausible { event_type } else { OTHER }
}

/// `BACKOFF_MIN * 2^n`, capped at `BACKOFF_MAX`, with ±20 % jitter so a pool of nodes does not
/// reconnect in lockstep.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(n.min(16)))
        .min(BACKOFF_MAX);
    base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        assert!(
            backoff(0) >= Duration::from_millis(800) && backoff(0) <= Duration::from_millis(1200)
        );
        assert!(backoff(3) >= Duration::from_millis(6400));
        for n in [5, 10, 40, u32::MAX] {
            assert!(backoff(n) <= BACKOFF_MAX);
        }
    }

    fn config(text: &str) -> Config {
        let mut problems = Vec::new();
        let mut raw = crate::config::RawConfig::default();
        raw.add_text(std::path::Path::new("k.conf"), 0, text, &mut problems);
        Config::from_raw(raw, problems).unwrap().config
    }

    #[test]
    fn topology_from_config() {
        let t = Topology::from_config(&config(""));
        assert_eq!(t.exchange, "nova");
        assert!(!t.durable);
        assert_eq!(
            t.queues,
            [QueueSpec {
                name: "versioned_notifications.kerbside".into(),
                routing_keys: vec![
                    "versioned_notifications.info".into(),
                    "versioned_notifications.error".into()
                ],
            }]
        );
        assert_eq!(t.prefetch, 10);
        assert_eq!(t.dead_letter_exchange, None);

        let t = Topology::from_config(&config(
            "[oslo_messaging_notifications]\ntopics = versioned_notifications,kerbside_notifications\n\
             [notifications]\nqueue_type = quorum\npool_name = az1\nprefetch_count = 0\ndead_letter_exchange = dead\n",
        ));
        // oslo.messaging: a quorum queue means a durable exchange and queue.
        assert!(t.durable);
        let names: Vec<&str> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            ["versioned_notifications.az1", "kerbside_notifications.az1"]
        );
        assert_eq!(t.prefetch, 1, "prefetch is always bounded");
        assert_eq!(t.dead_letter_exchange.as_deref(), Some("dead"));
        assert_eq!(
            t.declared(),
            "durable = true, queue_type = quorum, dead_letter_exchange = dead"
        );
    }

    #[test]
    fn metric_labels() {
        assert_eq!(metric_label("instance.delete.end"), "instance.delete.end");
        assert_eq!(metric_label("Robert'); DROP"), OTHER);
        assert_eq!(metric_label(&"a".repeat(65)), OTHER);
    }
}
