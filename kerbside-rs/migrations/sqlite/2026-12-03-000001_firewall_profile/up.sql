-- The SPICE firewall profile a console names (its source's or its Nova flavor's) and the one
-- in force for a session. NULL: the default profile.
ALTER TABLE consoles ADD COLUMN firewall_profile TEXT NULL;
ALTER TABLE sessions ADD COLUMN firewall_profile TEXT NULL;
