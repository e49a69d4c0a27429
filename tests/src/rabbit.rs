//! `TestRabbit`: a real RabbitMQ with per-test names, publishing Nova notification fixtures
//! the way oslo.messaging does.
//!
//! Each `TestRabbit` picks a random exchange (`nova_test_<hex>`) and pool
//! (`kerbside_test_<hex>`), so tests run in parallel without seeing each other's messages.
//! [`TestRabbit::publish_fixture`] loads `tests/fixtures/notifications/nova/<file>`, puts
//! the test's instance uuid into `payload["nova_object.data"]["uuid"]`, adds what oslo adds
//! (`message_id`, `timestamp`, `_context_*`, `_unique_id`) and sends it inside the
//! `messagingv2` envelope to `<topic>.<priority>`, with publisher confirms and `mandatory`
//! so an unroutable message is an error rather than a silent loss. Everything it or the
//! consumer declared under its names is deleted on [`TestRabbit::cleanup`] or on drop.
//!
//! The broker is `KERBSIDE_TEST_AMQP_URL` (an oslo transport URL), else
//! `rabbit://guest:guest@<KERBSIDE_TEST_AMQP_ADDR or 127.0.0.1:5672>/`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use kerbside::notifications::transport::TransportUrl;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use rand::Rng;
use serde_json::{Value, json};

use crate::require::require;

/// The topic Nova publishes versioned notifications on.
pub const TOPIC: &str = "versioned_notifications";

/// Directory of the Nova notification fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/notifications/nova")
}

/// A fixture, as stored.
///
/// # Errors
/// The file is missing or not JSON.
pub fn fixture(file: &str) -> Result<Value> {
    let path = fixtures_dir().join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A fixture about `instance_uuid`.
///
/// # Errors
/// The file is missing, or is not a versioned notification.
pub fn fixture_for(file: &str, instance_uuid: &str) -> Result<Value> {
    let mut value = fixture(file)?;
    let data = value
        .get_mut("payload")
        .and_then(|p| p.get_mut("nova_object.data"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow!("{file} has no payload.nova_object.data"))?;
    data.insert("uuid".to_owned(), json!(instance_uuid));
    Ok(value)
}

/// What oslo.messaging's `messagingv2` driver sends for a notification dict.
///
/// # Errors
/// `notification` is not a JSON object.
pub fn oslo_envelope(notification: &Value) -> Result<Vec<u8>> {
    let mut inner = notification.clone();
    let map = inner
        .as_object_mut()
        .ok_or_else(|| anyhow!("a notification is a JSON object"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    map.insert("message_id".into(), json!(uuid::Uuid::new_v4().to_string()));
    map.insert(
        "timestamp".into(),
        json!(format!(
            "2026-11-22 12:00:{:02}.{:06}",
            now.as_secs() % 60,
            now.subsec_micros()
        )),
    );
    map.insert(
        "_context_request_id".into(),
        json!(format!("req-{}", uuid::Uuid::new_v4())),
    );
    map.insert("_context_user_id".into(), json!("fake"));
    map.insert(
        "_context_project_id".into(),
        json!("6f70656e737461636b20342065766572"),
    );
    map.insert("_context_roles".into(), json!(["admin"]));
    map.insert(
        "_unique_id".into(),
        json!(uuid::Uuid::new_v4().simple().to_string()),
    );
    Ok(serde_json::to_vec(
        &json!({"oslo.version": "2.0", "oslo.message": inner.to_string()}),
    )?)
}

/// A connection to the test broker with per-test names.
pub struct TestRabbit {
    /// The broker, as an oslo transport URL.
    url: String,
    /// The parsed URL.
    transport: TransportUrl,
    /// The exchange tests configure as `[notifications] exchange`.
    pub exchange: String,
    /// The pool tests configure as `[notifications] pool_name`.
    pub pool: String,
    /// An open connection (kept alive for `channel`).
    _connection: Connection,
    /// A channel in publisher-confirm mode.
    channel: Channel,
    /// Extra exchanges and queues declared through this helper, deleted on cleanup.
    declared: Mutex<(Vec<String>, Vec<String>)>,
}

impl TestRabbit {
    /// Connects with fresh random names.
    ///
    /// # Errors
    /// RabbitMQ is not reachable (a failure, not a skip).
    pub async fn new() -> Result<Self> {
        require("rabbitmq")?;
        let url = match std::env::var("KERBSIDE_TEST_AMQP_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                let addr = std::env::var("KERBSIDE_TEST_AMQP_ADDR")
                    .unwrap_or_else(|_| "127.0.0.1:5672".to_owned());
                format!("rabbit://guest:guest@{addr}/")
            }
        };
        let transport = TransportUrl::parse(&url).map_err(|e| anyhow!("{e}"))?;
        let (connection, channel) = connect(&transport).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
        let suffix: String = (0..12)
            .map(|_| format!("{:x}", rand::thread_rng().gen_range(0..16u8)))
            .collect();
        Ok(TestRabbit {
            url,
            transport,
            exchange: format!("nova_test_{suffix}"),
            pool: format!("kerbside_test_{suffix}"),
            _connection: connection,
            channel,
            declared: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    /// The oslo transport URL of the broker (`rabbit://user:pass@host:port/`).
    pub fn transport_url(&self) -> &str {
        &self.url
    }

    /// `host:port` of the first broker (what a `ChaosProxy` forwards to).
    ///
    /// # Errors
    /// Never for a parsed URL.
    pub fn broker_addr(&self) -> Result<String> {
        let host = self
            .transport
            .hosts
            .first()
            .ok_or_else(|| anyhow!("no broker"))?;
        Ok(format!("{}:{}", host.host, host.port))
    }

    /// The same transport URL pointing at `addr` instead (e.g. a `ChaosProxy`).
    ///
    /// # Errors
    /// Never for a parsed URL.
    pub fn transport_url_via(&self, addr: &str) -> Result<String> {
        let broker = self.broker_addr()?;
        Ok(self.url.replacen(&broker, addr, 1))
    }

    /// The pool's queue kerbside declares: `<topic>.<pool>`.
    pub fn queue(&self) -> String {
        format!("{TOPIC}.{}", self.pool)
    }

    /// Declares the test exchange (topic) with the given durability, as Nova would.
    ///
    /// # Errors
    /// The broker refused.
    pub async fn declare_exchange(&self, durable: bool) -> Result<()> {
        let options = ExchangeDeclareOptions {
            durable,
            ..ExchangeDeclareOptions::default()
        };
        self.channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange {}", self.exchange))
    }

    /// Declares a fanout exchange and a queue bound to it, for dead-lettered messages.
    /// Returns (exchange, queue).
    ///
    /// # Errors
    /// The broker refused.
    pub async fn declare_dead_letter(&self) -> Result<(String, String)> {
        let exchange = format!("{}_dlx", self.exchange);
        let queue = format!("{}_dead", self.pool);
        self.remember(Some(exchange.clone()), Some(queue.clone()));
        self.channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("declaring the dead-letter exchange")?;
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("declaring the dead-letter queue")?;
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the dead-letter queue")?;
        Ok((exchange, queue))
    }

    /// Declares a plain classic queue named like the pool's queue, before kerbside does.
    ///
    /// # Errors
    /// The broker refused.
    pub async fn declare_pool_queue(&self, durable: bool) -> Result<()> {
        let options = QueueDeclareOptions {
            durable,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(self.queue().as_str().into(), options, FieldTable::default())
            .await
            .map(drop)
            .context("declaring the pool queue")
    }

    /// Publishes fixture `file` about `instance_uuid`, wrapped like oslo.messaging does.
    ///
    /// # Errors
    /// The fixture is unusable, or the broker did not route the message to any queue.
    pub async fn publish_fixture(&self, file: &str, instance_uuid: &str) -> Result<()> {
        let notification = fixture_for(file, instance_uuid)?;
        self.publish_notification(&notification).await
    }

    /// Publishes a notification dict inside the oslo envelope to `<topic>.<priority>`.
    ///
    /// # Errors
    /// Not a JSON object, or unroutable.
    pub async fn publish_notification(&self, notification: &Value) -> Result<()> {
        let priority = notification
            .get("priority")
            .and_then(Value::as_str)
            .unwrap_or("INFO")
            .to_ascii_lowercase();
        self.publish_raw(&priority, &oslo_envelope(notification)?)
            .await
    }

    /// Publishes `body` as is to `<topic>.<priority>`.
    ///
    /// # Errors
    /// The broker did not confirm it, or no queue is bound for it.
    pub async fn publish_raw(&self, priority: &str, body: &[u8]) -> Result<()> {
        let key = format!("{TOPIC}.{priority}");
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .context("basic.publish")?
            .await
            .context("waiting for the publisher confirm")?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => bail!(
                "{key} on {} reached no queue (is the consumer's queue declared?)",
                self.exchange
            ),
            other => bail!("the broker did not take the message: {other:?}"),
        }
    }

    /// Takes one message from `queue`, if any.
    ///
    /// # Errors
    /// The broker refused.
    pub async fn get(&self, queue: &str) -> Result<Option<Vec<u8>>> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .with_context(|| format!("basic.get {queue}"))?;
        Ok(message.map(|m| m.delivery.data))
    }

    /// How many messages wait in the pool's queue.
    ///
    /// # Errors
    /// The queue does not exist.
    pub async fn pool_queue_depth(&self) -> Result<u32> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = self
            .channel
            .queue_declare(self.queue().as_str().into(), options, FieldTable::default())
            .await
            .context("passive queue.declare")?;
        Ok(queue.message_count())
    }

    fn remember(&self, exchange: Option<String>, queue: Option<String>) {
        if let Ok(mut d) = self.declared.lock() {
            d.0.extend(exchange);
            d.1.extend(queue);
        }
    }

    fn names(&self) -> (Vec<String>, Vec<String>) {
        let (mut exchanges, mut queues) =
            self.declared.lock().map(|d| d.clone()).unwrap_or_default();
        exchanges.push(self.exchange.clone());
        queues.push(self.queue());
        (exchanges, queues)
    }

    /// Deletes the test's exchanges and queues.
    ///
    /// # Errors
    /// The broker is unreachable.
    pub async fn cleanup(&self) -> Result<()> {
        let (exchanges, queues) = self.names();
        delete_all(&self.transport, &exchanges, &queues).await
    }
}

impl Drop for TestRabbit {
    fn drop(&mut self) {
        // The test's runtime may be gone: delete on a thread with its own.
        let transport = self.transport.clone();
        let (exchanges, queues) = self.names();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if let Err(e) = rt.block_on(delete_all(&transport, &exchanges, &queues)) {
                eprintln!("TestRabbit: cleanup failed: {e:#}");
            }
        })
        .join();
    }
}

async fn connect(transport: &TransportUrl) -> Result<(Connection, Channel)> {
    let (uri, shown) = transport.amqp_uri(0).ok_or_else(|| anyhow!("no broker"))?;
    let connection = Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {shown}"))?;
    let channel = connection.create_channel().await.context("channel.open")?;
    Ok((connection, channel))
}

async fn delete_all(
    transport: &TransportUrl,
    exchanges: &[String],
    queues: &[String],
) -> Result<()> {
    let (connection, channel) = connect(transport).await?;
    for queue in queues {
        // A missing queue closes the channel (NOT_FOUND): use a fresh one each time.
        let ch = connection.create_channel().await.context("channel.open")?;
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in exchanges {
        let ch = connection.create_channel().await.context("channel.open")?;
        let _ = ch
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    drop(channel);
    let _ = connection.close(200, "cleanup done".into()).await;
    Ok(())
}
