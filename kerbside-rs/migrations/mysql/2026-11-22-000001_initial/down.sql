-- Reverse of up.sql, children first. IF EXISTS keeps it re-runnable after a partial failure.
DROP TABLE IF EXISTS audit_events;
DROP TABLE IF EXISTS session_terminations;
DROP TABLE IF EXISTS channels;
DROP TABLE IF EXISTS sessions;
DROP TABLE IF EXISTS console_tokens;
DROP TABLE IF EXISTS consoles;
DROP TABLE IF EXISTS sources;
