-- Web console sessions (kerbside's own pages): one row per signed-in browser, shared by every
-- API worker and node. The browser holds only a random cookie; the row is found by the
-- cookie's sha-256, and the user's Keystone token is stored encrypted with a key derived from
-- the cookie (a dump of this table lets nobody act as the user). A row lives until its
-- Keystone token expires (expires_at), the user signs out, or Keystone refuses the token.
CREATE TABLE IF NOT EXISTS web_sessions (
    id BIGINT NOT NULL AUTO_INCREMENT,
    session_hash VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id VARCHAR(255) NOT NULL,
    user_name VARCHAR(255) NOT NULL,
    project_id VARCHAR(255) NULL,
    project_name VARCHAR(255) NULL,
    scoped BOOLEAN NOT NULL DEFAULT FALSE,
    keystone_token TEXT CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_web_sessions_hash (session_hash),
    KEY ix_web_sessions_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
