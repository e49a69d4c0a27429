//! Captures the log events of one test, so it can assert what kerbside logged (how many lines,
//! with which fields).
//!
//! The capture is the thread's default subscriber, so it sees what runs on the test's thread:
//! with `#[tokio::test]` (a current-thread runtime) that is the test and every task kerbside
//! spawns in process. Events of other threads (blocking database calls, key generation) go to
//! the global subscriber as before.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One log event.
#[derive(Clone, Debug)]
pub struct LogEvent {
    /// Its level.
    pub level: Level,
    /// Its message.
    pub message: String,
    /// Its other fields, formatted.
    pub fields: BTreeMap<String, String>,
}

impl LogEvent {
    /// A field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// The events captured so far. Cheap to clone.
#[derive(Clone, Default)]
pub struct LogCapture {
    events: Arc<Mutex<Vec<LogEvent>>>,
}

impl LogCapture {
    /// Starts capturing on this thread until the guard is dropped (events are still printed
    /// through the test writer).
    pub fn install() -> (LogCapture, DefaultGuard) {
        let capture = LogCapture::default();
        let subscriber = tracing_subscriber::registry()
            .with(CaptureLayer(capture.events.clone()))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_test_writer()
                    .with_filter(EnvFilter::new(kerbside::telemetry::TEST_FILTER)),
            );
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// The events that satisfy `filter`.
    pub fn matching(&self, filter: impl Fn(&LogEvent) -> bool) -> Vec<LogEvent> {
        self.events
            .lock()
            .map(|events| events.iter().filter(|e| filter(e)).cloned().collect())
            .unwrap_or_default()
    }
}

struct CaptureLayer(Arc<Mutex<Vec<LogEvent>>>);

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let Fields { message, fields } = visitor;
        if let Ok(mut events) = self.0.lock() {
            events.push(LogEvent {
                level: *event.metadata().level(),
                message,
                fields,
            });
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}
