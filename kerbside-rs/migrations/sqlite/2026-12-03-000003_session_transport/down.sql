ALTER TABLE sessions DROP COLUMN transport;
