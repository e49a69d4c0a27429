-- How the client reached the proxy: 'tls' (a SPICE client over TLS) or 'websocket' (a
-- browser, SPICE over WebSocket). Sessions recorded before browser consoles were TLS ones.
ALTER TABLE sessions ADD COLUMN transport TEXT NOT NULL DEFAULT 'tls';
