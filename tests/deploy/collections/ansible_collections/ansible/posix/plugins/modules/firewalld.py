#!/usr/bin/python
# tests/deploy: a stand-in for ansible.posix.firewalld, so that Kolla-Ansible's
# haproxy-config role parses without downloading the ansible.posix collection (the
# tests never enable firewalld, so it never runs). It fails if it ever does.
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: firewalld
short_description: Test stand-in for ansible.posix.firewalld (always fails)
"""


def main():
    module = AnsibleModule(argument_spec={}, bypass_checks=True)
    module.fail_json(msg="ansible.posix.firewalld is a test stand-in and must not run")


if __name__ == "__main__":
    main()
