-- kerbside initial schema, SQLite. Same tables and columns as the MySQL tree; keep in step.
--
-- Conventions:
--  * INTEGER PRIMARY KEY AUTOINCREMENT surrogate keys (64-bit, never reused);
--  * times are TEXT written by Diesel's chrono mapping ("YYYY-MM-DD HH:MM:SS.ffffff", UTC),
--    which sorts and compares correctly as text;
--  * booleans are 0/1; string comparison is exact (BINARY collation), as on MySQL with the
--    binary collations used there;
--  * foreign keys need PRAGMA foreign_keys = ON, which every kerbside connection sets.

CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    name TEXT NOT NULL,
    source_type TEXT NOT NULL,
    errored BOOLEAN NOT NULL DEFAULT 0,
    error_message TEXT NULL,
    ca_cert TEXT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_sources_name ON sources (name);

CREATE TABLE IF NOT EXISTS consoles (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    source_id INTEGER NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
    uuid TEXT NOT NULL,
    name TEXT NOT NULL,
    hypervisor TEXT NOT NULL,
    hypervisor_ip TEXT NOT NULL,
    insecure_port INTEGER NULL,
    secure_port INTEGER NULL,
    host_subject TEXT NULL,
    ticket TEXT NULL,
    stale BOOLEAN NOT NULL DEFAULT 0,
    discovered_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_consoles_source_uuid ON consoles (source_id, uuid);
CREATE INDEX IF NOT EXISTS ix_consoles_uuid ON consoles (uuid);

CREATE TABLE IF NOT EXISTS console_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    -- Only a sha-256 hex digest fits: a plain token can never be stored by mistake.
    token_hash TEXT NOT NULL CHECK (length(token_hash) = 64),
    console_id INTEGER NOT NULL REFERENCES consoles (id) ON DELETE CASCADE,
    session_id TEXT NULL,
    client_address TEXT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT NULL,
    revoke_reason TEXT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_console_tokens_hash ON console_tokens (token_hash);
CREATE INDEX IF NOT EXISTS ix_console_tokens_console ON console_tokens (console_id);
CREATE INDEX IF NOT EXISTS ix_console_tokens_expires ON console_tokens (expires_at);
CREATE INDEX IF NOT EXISTS ix_console_tokens_session ON console_tokens (session_id);

CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY NOT NULL,
    console_id INTEGER NOT NULL REFERENCES consoles (id) ON DELETE CASCADE,
    token_id INTEGER NULL REFERENCES console_tokens (id) ON DELETE SET NULL,
    client_address TEXT NOT NULL,
    node TEXT NOT NULL,
    proxy_connection_id INTEGER NOT NULL,
    upstream_session_id INTEGER NULL,
    created_at TEXT NOT NULL,
    ended_at TEXT NULL,
    end_reason TEXT NULL,
    bytes_to_client INTEGER NOT NULL DEFAULT 0,
    bytes_to_server INTEGER NOT NULL DEFAULT 0
);
-- The proxy's connection id is unique among live sessions only.
CREATE UNIQUE INDEX IF NOT EXISTS uq_sessions_live_connection
    ON sessions (proxy_connection_id) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS ix_sessions_console ON sessions (console_id);
CREATE INDEX IF NOT EXISTS ix_sessions_node_ended ON sessions (node, ended_at);
CREATE INDEX IF NOT EXISTS ix_sessions_created ON sessions (created_at);
CREATE INDEX IF NOT EXISTS ix_sessions_token ON sessions (token_id);

CREATE TABLE IF NOT EXISTS channels (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    channel_type INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    client_address TEXT NOT NULL,
    created_at TEXT NOT NULL,
    ended_at TEXT NULL,
    bytes_to_client INTEGER NOT NULL DEFAULT 0,
    bytes_to_server INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ix_channels_session ON channels (session_id);

CREATE TABLE IF NOT EXISTS session_terminations (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    requested_at TEXT NOT NULL,
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    handled_at TEXT NULL,
    handled_by TEXT NULL
);
CREATE INDEX IF NOT EXISTS ix_session_terminations_session ON session_terminations (session_id);
CREATE INDEX IF NOT EXISTS ix_session_terminations_handled ON session_terminations (handled_at);

-- No foreign keys: the audit trail outlives the sources, consoles and sessions it names.
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    event_time TEXT NOT NULL,
    node TEXT NOT NULL,
    event_type TEXT NOT NULL,
    source_id INTEGER NULL,
    console_id INTEGER NULL,
    session_id TEXT NULL,
    channel_id INTEGER NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_audit_events_console ON audit_events (console_id, id);
CREATE INDEX IF NOT EXISTS ix_audit_events_session ON audit_events (session_id, id);
CREATE INDEX IF NOT EXISTS ix_audit_events_source ON audit_events (source_id, id);
CREATE INDEX IF NOT EXISTS ix_audit_events_time ON audit_events (event_time);
