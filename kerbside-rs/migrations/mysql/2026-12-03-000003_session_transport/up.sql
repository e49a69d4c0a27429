-- How the client reached the proxy: 'tls' (a SPICE client over TLS) or 'websocket' (a
-- browser, SPICE over WebSocket). Sessions recorded before browser consoles were TLS ones.
-- Re-runnable (MariaDB IF NOT EXISTS).
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS transport VARCHAR(16) NOT NULL DEFAULT 'tls';
