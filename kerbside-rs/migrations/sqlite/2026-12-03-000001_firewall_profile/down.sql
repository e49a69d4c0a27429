ALTER TABLE sessions DROP COLUMN firewall_profile;
ALTER TABLE consoles DROP COLUMN firewall_profile;
