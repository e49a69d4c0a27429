//! The notification sections: `[oslo_messaging_notifications]` (oslo.messaging's names) and
//! `[notifications]` (how kerbside consumes Nova's versioned notifications).

use super::section::section;
use super::value::{Secret, choice_value};

choice_value! {
    /// RabbitMQ queue type.
    QueueType {
        /// A classic queue (DevStack).
        Classic = "classic",
        /// A quorum queue (Kolla-Ansible's default).
        Quorum = "quorum",
    }
}

section! {
    /// Where Nova publishes its notifications.
    pub struct OsloMessagingNotificationsSection("oslo_messaging_notifications") {
        /// Messaging URL; defaults to `[DEFAULT] transport_url`.
        transport_url: Option<Secret>,
        /// Notification topics to consume.
        topics: Vec<String> = "versioned_notifications",
    }
}

section! {
    /// How kerbside consumes Nova notifications.
    pub struct NotificationsSection("notifications") {
        /// Exchange Nova publishes to.
        exchange: String = "nova",
        /// Pool name: every kerbside node with the same pool shares one queue, so each
        /// notification is handled once.
        pool_name: String = "kerbside",
        /// Queue type; it must match what the deployment uses.
        queue_type: QueueType = "classic",
        /// Whether the exchange and queue are durable (Kolla-Ansible: true; DevStack: false).
        durable: bool = "false",
        /// Maximum number of unacknowledged notifications delivered at once.
        prefetch_count: u32 = "10",
        /// Exchange that receives notifications kerbside cannot parse; unset means they are
        /// logged and dropped.
        dead_letter_exchange: Option<String>,
    }
}
