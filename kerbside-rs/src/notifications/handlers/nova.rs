//! Nova's versioned instance notifications that end console access.
//!
//! Each entry names the phase Nova publishes once the change has happened (`.end`; evacuate
//! has no phase: nova-api publishes `instance.evacuate` as the rebuild on the new host
//! starts). After any of them the SPICE server a session reaches is gone, stopped, frozen or
//! on another host, so the instance's sessions are ended, its tokens revoked and its
//! consoles marked stale until a fresh Nova lookup. The instance is matched by
//! `nova_object.data.uuid`; `host` is kept for the audit trail only (Nova's host is the
//! compute service name, not the address sessions connect to).
//!
//! Pure: it turns a notification into a [`Plan`]; the plan is carried out by
//! [`crate::notifications::effects`].

use super::{Handler, InstanceEvent, Plan};
use crate::notifications::envelope::{Notification, truncate};
use crate::notifications::error::NotifyError;

/// An event type and what it means, for logs and the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRule {
    /// The full event type, phase included.
    pub event_type: &'static str,
    /// What happened.
    pub what: &'static str,
}

/// The instance events that end console access.
pub const INSTANCE_EVENTS: &[EventRule] = &[
    EventRule {
        event_type: "instance.delete.end",
        what: "the instance was deleted",
    },
    EventRule {
        event_type: "instance.soft_delete.end",
        what: "the instance was soft-deleted",
    },
    EventRule {
        event_type: "instance.shutdown.end",
        what: "the instance was shut down",
    },
    EventRule {
        event_type: "instance.power_off.end",
        what: "the instance was powered off",
    },
    EventRule {
        event_type: "instance.suspend.end",
        what: "the instance was suspended",
    },
    EventRule {
        event_type: "instance.shelve.end",
        what: "the instance was shelved",
    },
    EventRule {
        event_type: "instance.shelve_offload.end",
        what: "the instance was offloaded from its host",
    },
    EventRule {
        event_type: "instance.rescue.end",
        what: "the instance was rebooted into rescue mode",
    },
    EventRule {
        event_type: "instance.rebuild.end",
        what: "the instance was rebuilt",
    },
    EventRule {
        event_type: "instance.evacuate",
        what: "the instance is being evacuated to another host",
    },
    EventRule {
        event_type: "instance.live_migration_post.end",
        what: "the instance was live-migrated to another host",
    },
    EventRule {
        event_type: "instance.resize_finish.end",
        what: "the instance was resized or moved to another host",
    },
    EventRule {
        event_type: "instance.resize_revert.end",
        what: "the instance's resize was reverted",
    },
];

/// Ends console access on the [`INSTANCE_EVENTS`].
#[derive(Clone, Copy, Debug, Default)]
pub struct InstanceHandler;

impl Handler for InstanceHandler {
    /// `nova-instance`.
    fn name(&self) -> &'static str {
        "nova-instance"
    }

    /// Every event type of [`INSTANCE_EVENTS`].
    fn event_types(&self) -> Vec<&'static str> {
        INSTANCE_EVENTS.iter().map(|r| r.event_type).collect()
    }

    /// [`Plan::EndInstanceAccess`] for the instance `nova_object.data.uuid` names (checked to
    /// be a UUID), with the host and publisher cut to 255 characters for the audit trail.
    fn plan(
        &self,
        event_type: &'static str,
        notification: &Notification,
    ) -> Result<Plan, NotifyError> {
        let what = INSTANCE_EVENTS
            .iter()
            .find(|r| r.event_type == event_type)
            .map_or("the instance changed", |r| r.what);
        let data = notification
            .versioned()
            .ok_or_else(|| {
                NotifyError::malformed(format!("{event_type} without a versioned payload"))
            })?
            .data;
        let uuid = data
            .get("uuid")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                NotifyError::malformed(format!("{event_type} payload has no nova_object.data.uuid"))
            })?;
        let uuid = uuid::Uuid::parse_str(uuid).map_err(|_| {
            NotifyError::malformed(format!(
                "{event_type} payload uuid '{}' is not a UUID",
                truncate(uuid, 40)
            ))
        })?;
        let host = data
            .get("host")
            .and_then(serde_json::Value::as_str)
            .map(|h| truncate(h, 255));
        Ok(Plan::EndInstanceAccess(InstanceEvent {
            event_type,
            what,
            instance_uuid: uuid.hyphenated().to_string(),
            host,
            publisher_id: notification
                .publisher_id
                .as_deref()
                .map(|p| truncate(p, 255)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Dispatcher, Ignored, Route};
    use super::*;
    use crate::notifications::envelope::parse;
    use crate::notifications::nova_fixture as fixture;
    use serde_json::{Value, json};

    fn route(value: &Value) -> Result<Route, NotifyError> {
        Dispatcher::nova().route(&parse(&serde_json::to_vec(value).unwrap()).unwrap())
    }

    const ACTING: &[(&str, &str)] = &[
        ("instance-delete-end.json", "instance.delete.end"),
        ("instance-soft_delete-end.json", "instance.soft_delete.end"),
        ("instance-shutdown-end.json", "instance.shutdown.end"),
        ("instance-power_off-end.json", "instance.power_off.end"),
        ("instance-suspend-end.json", "instance.suspend.end"),
        ("instance-shelve-end.json", "instance.shelve.end"),
        (
            "instance-shelve_offload-end.json",
            "instance.shelve_offload.end",
        ),
        ("instance-rescue-end.json", "instance.rescue.end"),
        ("instance-rebuild-end.json", "instance.rebuild.end"),
        ("instance-evacuate.json", "instance.evacuate"),
        (
            "instance-live_migration_post-end.json",
            "instance.live_migration_post.end",
        ),
        (
            "instance-resize_finish-end.json",
            "instance.resize_finish.end",
        ),
        (
            "instance-resize_revert-end.json",
            "instance.resize_revert.end",
        ),
    ];

    const IGNORED: &[&str] = &[
        "instance-create-end.json",
        "instance-delete-start.json",
        "instance-live_migration_post_dest-end.json",
        "instance-live_migration_rollback-end.json",
        "instance-pause-end.json",
        "instance-power_on-end.json",
        "instance-reboot-end.json",
        "instance-reboot-error.json",
        "instance-resize_confirm-end.json",
        "instance-unrescue-end.json",
        "instance-unshelve-end.json",
        "instance-update.json",
        "service-update.json",
        "compute-exception.json",
    ];

    #[test]
    fn samples_with_effects() {
        assert_eq!(Dispatcher::nova().event_types().len(), ACTING.len());
        for (file, event_type) in ACTING {
            let sample = fixture(file);
            assert_eq!(
                sample["event_type"], *event_type,
                "{file}: the sample's event type"
            );
            let Route::Act(Plan::EndInstanceAccess(e)) = route(&sample).unwrap() else {
                panic!("{file}: no effect");
            };
            assert_eq!(e.event_type, *event_type);
            assert_eq!(e.instance_uuid, "178b0921-8f85-4257-88b6-2e743b5a975c");
            assert!(e.publisher_id.as_deref().unwrap().starts_with("nova-"));
        }
    }

    #[test]
    fn other_samples_are_ignored() {
        for file in IGNORED {
            assert_eq!(
                route(&fixture(file)).unwrap(),
                Route::Ignore(Ignored::NotSubscribed),
                "{file}"
            );
        }
    }

    #[test]
    fn payload_details() {
        // shelve_offload: host is null; evacuate: the new host.
        let Route::Act(Plan::EndInstanceAccess(e)) =
            route(&fixture("instance-shelve_offload-end.json")).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.host, None);
        let Route::Act(Plan::EndInstanceAccess(e)) =
            route(&fixture("instance-evacuate.json")).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.host.as_deref(), Some("host2"));
        // Upper-case uuids are normalised to the database's lower case.
        let mut sample = fixture("instance-delete-end.json");
        sample["payload"]["nova_object.data"]["uuid"] =
            json!("178B0921-8F85-4257-88B6-2E743B5A975C");
        let Route::Act(Plan::EndInstanceAccess(e)) = route(&sample).unwrap() else {
            panic!()
        };
        assert_eq!(e.instance_uuid, "178b0921-8f85-4257-88b6-2e743b5a975c");
    }

    #[test]
    fn unversioned_and_broken_payloads() {
        let legacy = json!({"event_type": "instance.delete.end", "payload": {"instance_id": "178b0921-8f85-4257-88b6-2e743b5a975c"}});
        assert_eq!(route(&legacy).unwrap(), Route::Ignore(Ignored::Unversioned));
        let mut no_uuid = fixture("instance-delete-end.json");
        no_uuid["payload"]["nova_object.data"]
            .as_object_mut()
            .unwrap()
            .remove("uuid");
        assert!(matches!(
            route(&no_uuid),
            Err(NotifyError::Malformed { .. })
        ));
        let mut bad_uuid = fixture("instance-power_off-end.json");
        bad_uuid["payload"]["nova_object.data"]["uuid"] = json!("'; drop table consoles; --");
        assert!(matches!(
            route(&bad_uuid),
            Err(NotifyError::Malformed { .. })
        ));
    }
}
