# shellcheck shell=bash
# keystone-setup.sh: sourced by setup.sh and full/setup.sh. keystone_setup VENV CONF URL
# prepares a Keystone database and keys with keystone-manage and bootstraps the admin user,
# project and role, and the identity endpoints at URL (ending in /v3).
keystone_setup() {
  local km=("$1/bin/keystone-manage" --config-file "$2") url="$3"
  "${km[@]}" db_sync
  "${km[@]}" fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
  "${km[@]}" credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
  "${km[@]}" bootstrap --bootstrap-password adminpass \
    --bootstrap-username admin --bootstrap-project-name admin \
    --bootstrap-role-name admin --bootstrap-service-name keystone \
    --bootstrap-region-id RegionOne \
    --bootstrap-admin-url "$url" --bootstrap-public-url "$url" \
    --bootstrap-internal-url "$url"
}
