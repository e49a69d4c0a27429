#!/usr/bin/env python3
"""Seed the test Keystone for the kerbside API integration tests (stdlib only).

usage: seed_keystone.py KEYSTONE_V3_URL NOVA_V2_1_URL

Creates:
  projects  service, demo
  kerbside / kerbsidepass          admin + service on service (kerbside's service user)
  nova / novapass                  admin + service on service (Nova's keystonemiddleware user)
  kerbside-noadmin / noadminpass   service on service only (validates tokens; no Nova admin)
  demo / demopass                  member on demo (implies reader)
  compute service + public/internal/admin endpoints in RegionOne
Prints the ids as JSON.
"""
import json
import sys
import urllib.error
import urllib.request

KS, NOVA_URL = sys.argv[1], sys.argv[2]


def req(method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(KS + path, data=data, method=method)
    r.add_header('Content-Type', 'application/json')
    if token:
        r.add_header('X-Auth-Token', token)
    try:
        with urllib.request.urlopen(r) as resp:
            raw = resp.read()
            return dict(resp.headers), (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raise SystemExit('%s %s -> %s %s' % (method, path, e.code, e.read()[:500]))


def main():
    h, _ = req('POST', '/auth/tokens', {'auth': {
        'identity': {'methods': ['password'], 'password': {'user': {
            'name': 'admin', 'domain': {'id': 'default'}, 'password': 'adminpass'}}},
        'scope': {'project': {'name': 'admin', 'domain': {'id': 'default'}}}}})
    t = h['X-Subject-Token']
    ids = {}
    for name in ('service', 'demo'):
        _, b = req('POST', '/projects', {'project': {'name': name, 'domain_id': 'default'}}, t)
        ids['project_' + name] = b['project']['id']
    _, b = req('GET', '/roles', token=t)
    roles = {r['name']: r['id'] for r in b['roles']}
    users = [
        ('kerbside', 'kerbsidepass', 'service', ('admin', 'service')),
        ('nova', 'novapass', 'service', ('admin', 'service')),
        ('kerbside-noadmin', 'noadminpass', 'service', ('service',)),
        ('demo', 'demopass', 'demo', ('member',)),
    ]
    for name, password, project, granted in users:
        _, b = req('POST', '/users', {'user': {
            'name': name, 'domain_id': 'default', 'password': password,
            'default_project_id': ids['project_' + project]}}, t)
        uid = b['user']['id']
        ids['user_' + name] = uid
        for role in granted:
            req('PUT', '/projects/%s/users/%s/roles/%s'
                % (ids['project_' + project], uid, roles[role]), token=t)
    _, b = req('POST', '/services', {'service': {'name': 'nova', 'type': 'compute'}}, t)
    sid = b['service']['id']
    for iface in ('public', 'internal', 'admin'):
        req('POST', '/endpoints', {'endpoint': {
            'service_id': sid, 'interface': iface, 'url': NOVA_URL,
            'region_id': 'RegionOne', 'enabled': True}}, t)
    json.dump(ids, sys.stdout)
    print()


if __name__ == '__main__':
    main()
