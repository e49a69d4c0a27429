//! Prometheus metrics of every component and the `/metrics` endpoint on `[metrics]`.
//!
//! Metric handles are created once with their label values resolved, so the relay's hot path
//! only performs atomic adds.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::spice::ChannelType;

/// Every metric of the process.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// The SPICE proxy's metrics.
    pub proxy: ProxyMetrics,
    /// The Nova notification consumer's metrics.
    pub notifications: NotificationMetrics,
    /// The proxy's write-behind queue of database records.
    pub db_writes: DbWriteMetrics,
    /// The HTTP API's metrics.
    pub api: ApiMetrics,
}

/// Metrics of the proxy's write-behind queue (records kept while the database is down).
pub struct DbWriteMetrics {
    /// Records waiting to be written.
    pub queue_length: IntGauge,
    /// Records dropped because the queue was full, could not be written, or the process
    /// stopped before the database came back.
    pub dropped: IntCounter,
}

/// Metrics of the HTTP API.
pub struct ApiMetrics {
    /// Console-token lookups sent to Nova, by result (`found`, `not_found`,
    /// `not_spice_direct`, `error`).
    pub nova_lookups: IntCounterVec,
    /// Console-token lookups answered without asking Nova (cached, or shared with a
    /// concurrent lookup).
    pub nova_lookup_cache_hits: IntCounter,
    /// Requests refused with 429, by endpoint.
    pub rate_limited: IntCounterVec,
}

/// Metrics of the Nova notification consumer.
pub struct NotificationMetrics {
    /// Deliveries received, by event type (`unparsable` when it could not be read).
    pub received: IntCounterVec,
    /// Notifications whose effects were committed, by event type.
    pub handled: IntCounterVec,
    /// Notifications needing nothing done (unversioned or not acted on), by event type.
    pub ignored: IntCounterVec,
    /// Notifications that could not be processed (malformed, or the database failed), by
    /// event type.
    pub failed: IntCounterVec,
    /// 1 while connected to the broker and consuming, else 0.
    pub connected: IntGauge,
}

/// Metrics of the SPICE proxy.
pub struct ProxyMetrics {
    /// Accepted connections by listener (tls, insecure, websocket).
    pub connections: IntCounterVec,
    /// Link stages that failed or were refused (limits included), by reason.
    pub link_failures: IntCounterVec,
    /// Authorization results by result and reason.
    pub auth: IntCounterVec,
    /// Live sessions on this node.
    pub sessions_active: IntGauge,
    /// Live channels on this node by channel type.
    pub channels_active: IntGaugeVec,
    /// Bytes relayed by direction and channel type.
    pub bytes: IntCounterVec,
    /// Time from accepting a connection to the client's link result.
    pub handshake_seconds: Histogram,
    /// Sessions ended by a termination request.
    pub terminations: IntCounter,
    /// SPICE firewall rule hits by channel type, direction, rule and action.
    pub firewall_verdicts: IntCounterVec,
    /// Sessions started, by the transport their client used (tls, websocket).
    pub transport_sessions: IntCounterVec,
    /// Live channels on this node, by transport (tls, websocket).
    pub transport_channels_active: IntGaugeVec,
}

/// The metrics of one transport, label values resolved.
pub struct TransportMetrics {
    /// Sessions started over it.
    pub sessions: IntCounter,
    /// Its live channels.
    pub channels_active: IntGauge,
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only on a programming error (duplicate metric names).
    pub fn new() -> prometheus::Result<Arc<Metrics>> {
        let registry = Registry::new_custom(Some("kerbside".to_owned()), None)?;
        let sessions_active =
            IntGauge::new("proxy_sessions_active", "Live SPICE sessions on this node")?;
        registry.register(Box::new(sessions_active.clone()))?;
        let channels_active = IntGaugeVec::new(
            Opts::new(
                "proxy_channels_active",
                "Live SPICE channels on this node by channel type",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(channels_active.clone()))?;
        let handshake_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "proxy_handshake_seconds",
                "Time from TCP accept to the client's link result",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
        )?;
        registry.register(Box::new(handshake_seconds.clone()))?;
        let terminations = IntCounter::new(
            "proxy_terminations_total",
            "Sessions ended by a termination request",
        )?;
        registry.register(Box::new(terminations.clone()))?;
        let transport_channels_active = IntGaugeVec::new(
            Opts::new(
                "proxy_transport_channels_active",
                "Live SPICE channels on this node by client transport (tls, websocket)",
            ),
            &["transport"],
        )?;
        registry.register(Box::new(transport_channels_active.clone()))?;
        let proxy = ProxyMetrics {
            connections: counter_vec(
                &registry,
                "proxy_connections_total",
                "Accepted client connections by listener",
                &["listener"],
            )?,
            link_failures: counter_vec(
                &registry,
                "proxy_link_failures_total",
                "Failed or refused link stages by reason",
                &["reason"],
            )?,
            auth: counter_vec(
                &registry,
                "proxy_auth_total",
                "Authorization results",
                &["result", "reason"],
            )?,
            sessions_active,
            channels_active,
            bytes: counter_vec(
                &registry,
                "proxy_bytes_total",
                "Bytes relayed by direction and channel type",
                &["direction", "channel"],
            )?,
            handshake_seconds,
            terminations,
            firewall_verdicts: counter_vec(
                &registry,
                "firewall_verdicts_total",
                "SPICE firewall rule hits by channel type, direction, rule and action (drop, close, warn_drop, warn_close)",
                &["channel", "direction", "rule", "action"],
            )?,
            transport_sessions: counter_vec(
                &registry,
                "proxy_transport_sessions_total",
                "Sessions started by client transport (tls, websocket)",
                &["transport"],
            )?,
            transport_channels_active,
        };
        let connected = IntGauge::new(
            "notifications_connected",
            "1 while the notification consumer is connected to the broker and consuming",
        )?;
        registry.register(Box::new(connected.clone()))?;
        let by_event = &["event_type"];
        let notifications = NotificationMetrics {
            received: counter_vec(
                &registry,
                "notifications_received_total",
                "Notifications received by event type",
                by_event,
            )?,
            handled: counter_vec(
                &registry,
                "notifications_handled_total",
                "Notifications acted on by event type",
                by_event,
            )?,
            ignored: counter_vec(
                &registry,
                "notifications_ignored_total",
                "Notifications needing nothing done by event type",
                by_event,
            )?,
            failed: counter_vec(
                &registry,
                "notifications_failed_total",
                "Notifications that could not be processed by event type",
                by_event,
            )?,
            connected,
        };
        let queue_length = IntGauge::new(
            "db_write_queue_length",
            "Records (channel and session ends, audit events) waiting to be written to the database",
        )?;
        registry.register(Box::new(queue_length.clone()))?;
        let dropped = IntCounter::new(
            "db_write_queue_dropped_total",
            "Records dropped by the write-behind queue (full, unwritable, or stopped during an outage)",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let nova_lookup_cache_hits = IntCounter::new(
            "api_nova_lookup_cache_hits_total",
            "Console-token lookups answered without asking Nova",
        )?;
        registry.register(Box::new(nova_lookup_cache_hits.clone()))?;
        let api = ApiMetrics {
            nova_lookups: counter_vec(
                &registry,
                "nova_lookups_total",
                "Console-token lookups sent to Nova by result",
                &["result"],
            )?,
            nova_lookup_cache_hits,
            rate_limited: counter_vec(
                &registry,
                "api_rate_limited_total",
                "API requests refused with 429 by endpoint",
                &["endpoint"],
            )?,
        };
        Ok(Arc::new(Metrics {
            registry,
            proxy,
            notifications,
            db_writes: DbWriteMetrics {
                queue_length,
                dropped,
            },
            api,
        }))
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl ProxyMetrics {
    /// Counts a failed link stage.
    pub fn link_failed(&self, reason: &str) {
        self.link_failures.with_label_values(&[reason]).inc();
    }

    /// Counts a denied authorization.
    pub fn auth_denied(&self, reason: &str) {
        self.auth.with_label_values(&["denied", reason]).inc();
    }

    /// Counts a successful authorization.
    pub fn auth_ok(&self) {
        self.auth.with_label_values(&["ok", ""]).inc();
    }

    /// Counters for (to client, to hypervisor) bytes of a channel type.
    pub fn byte_counters(&self, channel: ChannelType) -> (IntCounter, IntCounter) {
        (
            self.bytes.with_label_values(&["to_client", channel.name()]),
            self.bytes
                .with_label_values(&["to_hypervisor", channel.name()]),
        )
    }

    /// A channel started relaying.
    pub fn channel_opened(&self, channel: ChannelType) {
        self.channels_active
            .with_label_values(&[channel.name()])
            .inc();
    }

    /// The metrics of `transport` (`tls` or `websocket`).
    pub fn transport(&self, transport: &str) -> TransportMetrics {
        TransportMetrics {
            sessions: self.transport_sessions.with_label_values(&[transport]),
            channels_active: self
                .transport_channels_active
                .with_label_values(&[transport]),
        }
    }

    /// A channel ended.
    pub fn channel_closed(&self, channel: ChannelType) {
        self.channels_active
            .with_label_values(&[channel.name()])
            .dec();
    }
}

/// Serves `/metrics` until the returned handle is stopped.
///
/// # Errors
/// When the address cannot be bound.
pub fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
) -> std::io::Result<(actix_web::dev::Server, Vec<SocketAddr>)> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new().route(
            "/metrics",
            web::get().to(move || {
                let body = metrics.render();
                async move {
                    HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    // A scrape takes milliseconds: a stop need not wait actix's default 30 s for one.
    .shutdown_timeout(5)
    .bind(addr)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}
