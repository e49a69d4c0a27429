//! The oslo.messaging notification envelope, and Nova's versioned payloads inside it.
//!
//! Pure code (no broker, no database). A `messagingv2` notifier sends
//! `{"oslo.version": "2.0", "oslo.message": "<JSON string>"}` whose inner object carries
//! `event_type`, `publisher_id`, `priority`, `payload`, `message_id`, `timestamp` and the
//! flattened `_context_*` keys; the older `messaging` driver sends that inner object bare.
//! Both are accepted. A versioned payload is an oslo.versionedobject
//! (`nova_object.name`/`.version`/`.data`); anything else is a legacy, unversioned payload.
//!
//! It does not interpret the event type or the payload's fields: the handlers do.

use serde_json::{Map, Value};

use super::error::NotifyError;

/// The oslo envelope major version this parser understands.
const OSLO_MAJOR: &str = "2";
/// Longest event type accepted (Nova's are under 50 characters).
const MAX_EVENT_TYPE: usize = 255;

/// How the notification was wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrapping {
    /// The oslo 2.0 envelope (`messagingv2`).
    Oslo2,
    /// The bare message (`messaging`, or a hand-written publisher).
    Bare,
}

/// A notification, unwrapped.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// E.g. `instance.delete.end`.
    pub event_type: String,
    /// E.g. `nova-compute:compute1`.
    pub publisher_id: Option<String>,
    /// `INFO`, `ERROR`, ...
    pub priority: Option<String>,
    /// oslo's message id.
    pub message_id: Option<String>,
    /// oslo's timestamp (`2024-01-01 12:00:00.123456`).
    pub timestamp: Option<String>,
    /// The payload, as sent.
    pub payload: Value,
    /// How it was wrapped.
    pub wrapping: Wrapping,
}

/// A versioned (oslo.versionedobject) payload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VersionedPayload<'a> {
    /// E.g. `InstanceActionPayload`.
    pub name: &'a str,
    /// E.g. `1.9`.
    pub version: Option<&'a str>,
    /// The object's fields.
    pub data: &'a Map<String, Value>,
}

impl Notification {
    /// The versioned payload, or `None` for a legacy (unversioned) one.
    #[must_use]
    pub fn versioned(&self) -> Option<VersionedPayload<'_>> {
        let name = self.payload.get("nova_object.name")?.as_str()?;
        let data = self.payload.get("nova_object.data")?.as_object()?;
        let version = self
            .payload
            .get("nova_object.version")
            .and_then(Value::as_str);
        Some(VersionedPayload {
            name,
            version,
            data,
        })
    }
}

/// Parses a message body: the oslo 2.0 envelope or a bare message, then the fields every
/// notification has. The payload is kept as sent; only `event_type` is required.
///
/// # Errors
/// [`NotifyError::Malformed`] when the body is not a JSON object, the envelope is broken or of
/// another major version, or there is no usable `event_type`.
pub fn parse(body: &[u8]) -> Result<Notification, NotifyError> {
    let outer: Value = serde_json::from_slice(body)
        .map_err(|e| NotifyError::malformed(format!("not JSON: {e}")))?;
    let Value::Object(mut outer) = outer else {
        return Err(NotifyError::malformed("not a JSON object"));
    };
    let (mut message, wrapping) = match outer.remove("oslo.message") {
        Some(Value::String(inner)) => {
            match outer.get("oslo.version") {
                Some(Value::String(v)) if v.split('.').next() == Some(OSLO_MAJOR) => {}
                Some(Value::String(v)) => {
                    return Err(NotifyError::malformed(format!(
                        "unsupported oslo.version '{}'",
                        truncate(v, 16)
                    )));
                }
                _ => {
                    return Err(NotifyError::malformed(
                        "oslo.message without an oslo.version string",
                    ));
                }
            }
            let inner: Value = serde_json::from_str(&inner)
                .map_err(|e| NotifyError::malformed(format!("oslo.message is not JSON: {e}")))?;
            let Value::Object(inner) = inner else {
                return Err(NotifyError::malformed("oslo.message is not a JSON object"));
            };
            (inner, Wrapping::Oslo2)
        }
        Some(_) => return Err(NotifyError::malformed("oslo.message is not a string")),
        None => (outer, Wrapping::Bare),
    };
    let event_type = match message.remove("event_type") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_EVENT_TYPE => s,
        Some(Value::String(s)) if s.is_empty() => {
            return Err(NotifyError::malformed("empty event_type"));
        }
        Some(Value::String(_)) => return Err(NotifyError::malformed("event_type too long")),
        Some(_) => return Err(NotifyError::malformed("event_type is not a string")),
        None => return Err(NotifyError::malformed("no event_type")),
    };
    let mut text = |key: &str| match message.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let publisher_id = text("publisher_id");
    let priority = text("priority");
    let message_id = text("message_id");
    let timestamp = text("timestamp");
    let payload = message.remove("payload").unwrap_or(Value::Null);
    Ok(Notification {
        event_type,
        publisher_id,
        priority,
        message_id,
        timestamp,
        payload,
        wrapping,
    })
}

/// `s` cut to at most `max` characters (for error messages about hostile input).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifications::nova_fixture as fixture;
    use serde_json::json;

    /// What oslo.messaging's `messagingv2` driver puts on the wire.
    fn oslo_wrap(inner: &Value) -> Vec<u8> {
        let mut inner = inner.clone();
        let m = inner.as_object_mut().unwrap();
        m.insert(
            "message_id".into(),
            json!("5c3bd5a6-0a5f-4d0e-9f53-1b1a4c1d8a10"),
        );
        m.insert("timestamp".into(), json!("2026-11-22 12:00:00.123456"));
        m.insert("_context_request_id".into(), json!("req-1"));
        m.insert(
            "_unique_id".into(),
            json!("0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
        );
        serde_json::to_vec(&json!({"oslo.version": "2.0", "oslo.message": inner.to_string()}))
            .unwrap()
    }

    #[test]
    fn oslo_envelope_with_a_nova_sample() {
        let n = parse(&oslo_wrap(&fixture("instance-delete-end.json"))).unwrap();
        assert_eq!(n.wrapping, Wrapping::Oslo2);
        assert_eq!(n.event_type, "instance.delete.end");
        assert_eq!(n.publisher_id.as_deref(), Some("nova-compute:compute"));
        assert_eq!(n.priority.as_deref(), Some("INFO"));
        assert_eq!(
            n.message_id.as_deref(),
            Some("5c3bd5a6-0a5f-4d0e-9f53-1b1a4c1d8a10")
        );
        assert_eq!(n.timestamp.as_deref(), Some("2026-11-22 12:00:00.123456"));
        let v = n.versioned().unwrap();
        assert_eq!(v.name, "InstanceActionPayload");
        assert_eq!(v.version, Some("1.9"));
        assert_eq!(
            v.data.get("uuid"),
            Some(&json!("178b0921-8f85-4257-88b6-2e743b5a975c"))
        );
        assert_eq!(v.data.get("state"), Some(&json!("deleted")));
    }

    #[test]
    fn bare_message_is_accepted() {
        let body = serde_json::to_vec(&fixture("instance-power_off-end.json")).unwrap();
        let n = parse(&body).unwrap();
        assert_eq!(n.wrapping, Wrapping::Bare);
        assert_eq!(n.event_type, "instance.power_off.end");
        assert!(n.versioned().is_some());
    }

    #[test]
    fn every_fixture_parses() {
        let dir = format!(
            "{}/../tests/fixtures/notifications/nova",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let value: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let parsed = parse(&oslo_wrap(&value)).unwrap();
                assert!(parsed.versioned().is_some(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 20, "only {n} fixtures");
    }

    #[test]
    fn unversioned_payload() {
        let body = json!({"event_type": "compute.instance.delete.end", "publisher_id": "compute.host1",
            "payload": {"instance_id": "178b0921-8f85-4257-88b6-2e743b5a975c", "host": "host1"}});
        let n = parse(&oslo_wrap(&body)).unwrap();
        assert_eq!(n.event_type, "compute.instance.delete.end");
        assert!(n.versioned().is_none());
    }

    #[test]
    fn poison_is_malformed() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\x00\xffgarbage".to_vec(), "not JSON"),
            (b"[1,2,3]".to_vec(), "not a JSON object"),
            (br#"{"payload": {}}"#.to_vec(), "no event_type"),
            (br#"{"event_type": 7}"#.to_vec(), "not a string"),
            (br#"{"event_type": ""}"#.to_vec(), "empty event_type"),
            (
                br#"{"oslo.version": "2.0", "oslo.message": "{\"event_type\": "}"#.to_vec(),
                "oslo.message is not JSON",
            ),
            (
                br#"{"oslo.version": "2.0", "oslo.message": {"event_type": "x"}}"#.to_vec(),
                "not a string",
            ),
            (
                br#"{"oslo.version": "3.0", "oslo.message": "{\"event_type\": \"x\"}"}"#.to_vec(),
                "unsupported oslo.version",
            ),
            (
                br#"{"oslo.message": "{\"event_type\": \"x\"}"}"#.to_vec(),
                "without an oslo.version",
            ),
            (
                br#"{"oslo.version": "2.0", "oslo.message": "[]"}"#.to_vec(),
                "not a JSON object",
            ),
            (
                br#"{"oslo.version": "2.0", "oslo.message": "{}"}"#.to_vec(),
                "no event_type",
            ),
        ];
        for (body, want) in cases {
            let e = parse(&body).unwrap_err();
            assert!(matches!(e, NotifyError::Malformed { .. }));
            assert!(
                e.to_string().contains(want),
                "{}: {e}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
