-- Web console sessions: see the MySQL tree for what each column holds. The browser holds only
-- a random cookie; the row is found by its sha-256 and the Keystone token is stored encrypted.
CREATE TABLE IF NOT EXISTS web_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    session_hash TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    project_id TEXT NULL,
    project_name TEXT NULL,
    scoped BOOLEAN NOT NULL DEFAULT 0,
    keystone_token TEXT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_web_sessions_hash ON web_sessions (session_hash);
CREATE INDEX IF NOT EXISTS ix_web_sessions_expires ON web_sessions (expires_at);
