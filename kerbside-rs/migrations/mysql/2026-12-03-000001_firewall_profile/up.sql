-- The SPICE firewall profile a console names (its source's or its Nova flavor's) and the one
-- in force for a session. NULL: the default profile. Re-runnable (MariaDB IF NOT EXISTS).
ALTER TABLE consoles ADD COLUMN IF NOT EXISTS firewall_profile VARCHAR(64) NULL;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS firewall_profile VARCHAR(64) NULL;
