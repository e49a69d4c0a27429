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
    /// Accepted connections by listener (tls, insecure).
    pub connections: IntCounterVec,
    /// Link stages that failed, by reason.
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
                "Failed link stages by reason",
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
        Ok(Arc::new(Metrics {
            registry,
            proxy,
            notifications,
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
    .bind(addr)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}
