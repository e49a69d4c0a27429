-- kerbside initial schema, MySQL / MariaDB (Galera-safe: InnoDB, every table has a primary key).
--
-- Conventions:
--  * every table defaults to utf8mb4 with a binary collation, so string comparison is exact,
--    as on SQLite (MariaDB's default utf8mb4_general_ci would make 'ABC' = 'abc');
--  * ids, uuids, hashes and addresses are ASCII with ascii_bin;
--  * times are DATETIME(6) in UTC written by the service (plain DATETIME drops microseconds);
--  * surrogate keys are signed BIGINT AUTO_INCREMENT (Diesel BigInt = i64);
--  * CREATE TABLE IF NOT EXISTS with indexes declared inline: MySQL commits each DDL
--    statement, so a half-applied migration must be safe to run again.
--  * The SQLite tree has the same tables and columns; keep the two in step.

CREATE TABLE IF NOT EXISTS sources (
    id BIGINT NOT NULL AUTO_INCREMENT,
    name VARCHAR(255) NOT NULL,
    source_type VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    errored BOOLEAN NOT NULL DEFAULT FALSE,
    error_message TEXT NULL,
    ca_cert TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_sources_name (name)
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS consoles (
    id BIGINT NOT NULL AUTO_INCREMENT,
    source_id BIGINT NOT NULL,
    uuid VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name VARCHAR(255) NOT NULL,
    hypervisor VARCHAR(255) NOT NULL,
    hypervisor_ip VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    insecure_port INT NULL,
    secure_port INT NULL,
    host_subject VARCHAR(1024) NULL,
    ticket VARCHAR(255) NULL,
    stale BOOLEAN NOT NULL DEFAULT FALSE,
    discovered_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_consoles_source_uuid (source_id, uuid),
    KEY ix_consoles_uuid (uuid),
    CONSTRAINT fk_consoles_source FOREIGN KEY (source_id)
        REFERENCES sources (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS console_tokens (
    id BIGINT NOT NULL AUTO_INCREMENT,
    token_hash VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    console_id BIGINT NOT NULL,
    session_id VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    client_address VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    revoked_at DATETIME(6) NULL,
    revoke_reason VARCHAR(255) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_console_tokens_hash (token_hash),
    KEY ix_console_tokens_console (console_id),
    KEY ix_console_tokens_expires (expires_at),
    KEY ix_console_tokens_session (session_id),
    -- Only a sha-256 hex digest fits: a plain token can never be stored by mistake.
    CONSTRAINT ck_console_tokens_hash CHECK (CHAR_LENGTH(token_hash) = 64),
    CONSTRAINT fk_console_tokens_console FOREIGN KEY (console_id)
        REFERENCES consoles (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS sessions (
    id VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    console_id BIGINT NOT NULL,
    token_id BIGINT NULL,
    client_address VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    node VARCHAR(255) NOT NULL,
    proxy_connection_id BIGINT NOT NULL,
    upstream_session_id BIGINT NULL,
    created_at DATETIME(6) NOT NULL,
    ended_at DATETIME(6) NULL,
    end_reason VARCHAR(255) NULL,
    bytes_to_client BIGINT NOT NULL DEFAULT 0,
    bytes_to_server BIGINT NOT NULL DEFAULT 0,
    -- MySQL has no partial indexes: this column is the connection id while the session is
    -- live and NULL once it ended, so the unique key below covers live sessions only.
    -- Not in the Diesel schema (it is never written).
    live_connection_id BIGINT AS (IF(ended_at IS NULL, proxy_connection_id, NULL)) STORED,
    PRIMARY KEY (id),
    UNIQUE KEY uq_sessions_live_connection (live_connection_id),
    KEY ix_sessions_console (console_id),
    KEY ix_sessions_node_ended (node, ended_at),
    KEY ix_sessions_created (created_at),
    KEY ix_sessions_token (token_id),
    CONSTRAINT fk_sessions_console FOREIGN KEY (console_id)
        REFERENCES consoles (id) ON DELETE CASCADE,
    CONSTRAINT fk_sessions_token FOREIGN KEY (token_id)
        REFERENCES console_tokens (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS channels (
    id BIGINT NOT NULL AUTO_INCREMENT,
    session_id VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    node VARCHAR(255) NOT NULL,
    channel_type INT NOT NULL,
    channel_id INT NOT NULL,
    client_address VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at DATETIME(6) NOT NULL,
    ended_at DATETIME(6) NULL,
    bytes_to_client BIGINT NOT NULL DEFAULT 0,
    bytes_to_server BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id),
    KEY ix_channels_session (session_id),
    CONSTRAINT fk_channels_session FOREIGN KEY (session_id)
        REFERENCES sessions (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS session_terminations (
    id BIGINT NOT NULL AUTO_INCREMENT,
    session_id VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    requested_at DATETIME(6) NOT NULL,
    reason VARCHAR(255) NOT NULL,
    requested_by VARCHAR(255) NOT NULL,
    handled_at DATETIME(6) NULL,
    handled_by VARCHAR(255) NULL,
    PRIMARY KEY (id),
    KEY ix_session_terminations_session (session_id),
    KEY ix_session_terminations_handled (handled_at),
    CONSTRAINT fk_session_terminations_session FOREIGN KEY (session_id)
        REFERENCES sessions (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- No foreign keys: the audit trail outlives the sources, consoles and sessions it names.
CREATE TABLE IF NOT EXISTS audit_events (
    id BIGINT NOT NULL AUTO_INCREMENT,
    event_time DATETIME(6) NOT NULL,
    node VARCHAR(255) NOT NULL,
    event_type VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    source_id BIGINT NULL,
    console_id BIGINT NULL,
    session_id VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    channel_id BIGINT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (id),
    KEY ix_audit_events_console (console_id, id),
    KEY ix_audit_events_session (session_id, id),
    KEY ix_audit_events_source (source_id, id),
    KEY ix_audit_events_time (event_time)
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
