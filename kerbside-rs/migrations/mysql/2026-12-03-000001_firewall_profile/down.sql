ALTER TABLE sessions DROP COLUMN IF EXISTS firewall_profile;
ALTER TABLE consoles DROP COLUMN IF EXISTS firewall_profile;
