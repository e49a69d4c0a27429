#!/bin/bash
# devstack/plugin.sh: DevStack entry point of the kerbside-rs plugin.
#
# DevStack sources this file as `plugin.sh <mode> [<phase>]` at each step of stack.sh,
# unstack.sh and clean.sh. The work is done by the functions in devstack/lib/kerbside.

# shellcheck source-path=SCRIPTDIR source=lib/kerbside
source "$(dirname "${BASH_SOURCE[0]}")/lib/kerbside"

if [[ "$1" == "stack" && "${2:-}" == "pre-install" ]]; then
    if is_kerbside_enabled; then
        echo_summary "Installing kerbside system packages"
        install_kerbside_packages
    fi

elif [[ "$1" == "stack" && "${2:-}" == "install" ]]; then
    if is_kerbside_enabled; then
        echo_summary "Installing kerbside"
        install_kerbside
    fi

elif [[ "$1" == "stack" && "${2:-}" == "post-config" ]]; then
    # Keystone and the database are up; Nova is configured but not started yet.
    if is_kerbside_enabled; then
        echo_summary "Configuring kerbside"
        if is_service_enabled kerbside-api; then
            create_kerbside_accounts
        fi
        configure_kerbside
        init_kerbside
    fi
    if [[ "$(trueorfalse True KERBSIDE_CONFIGURE_NOVA)" == "True" ]]; then
        echo_summary "Configuring Nova for kerbside (spice-direct, spice-html5 with KERBSIDE_HTML5, versioned notifications)"
        configure_nova_for_kerbside
    fi

elif [[ "$1" == "stack" && "${2:-}" == "extra" ]]; then
    if is_kerbside_enabled; then
        echo_summary "Starting kerbside"
        start_kerbside
    fi
fi

if [[ "$1" == "unstack" ]]; then
    stop_kerbside
fi

if [[ "$1" == "clean" ]]; then
    cleanup_kerbside
fi
