//! The `[DEFAULT]` section: logging, node identity, state directory, messaging URL.

use std::path::PathBuf;

use super::section::section;
use super::value::Secret;

section! {
    /// Options every kerbside program reads.
    pub struct DefaultSection("DEFAULT") {
        /// Log at debug level instead of info.
        debug: bool = "false",
        /// Write logs to this file instead of standard error. A relative path is taken under
        /// log_dir.
        log_file: Option<PathBuf>,
        /// Directory for log files. When set without log_file, each program logs to
        /// `<log_dir>/<program>.log`.
        log_dir: Option<PathBuf>,
        /// Write logs as JSON objects, one per line, for log collectors.
        use_json: bool = "false",
        /// Messaging URL (`rabbit://user:password@host:5672/vhost`) used for Nova notifications
        /// when `[oslo_messaging_notifications] transport_url` is not set.
        transport_url: Option<Secret>,
        /// Name of this node in sessions, channels and audit events. Each node of a deployment
        /// needs its own name. Defaults to the host name.
        node_name: Option<String>,
        /// Directory for kerbside's own state: the embedded SQLite database and generated TLS
        /// material. Other options may refer to it as $state_path.
        state_path: PathBuf = "/var/lib/kerbside",
    }
}
