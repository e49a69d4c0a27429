#!/usr/bin/env python3
"""Seed the Keystone of the full test OpenStack (stdlib only).

usage: seed.py KEYSTONE_URL NOVA_PORT PLACEMENT_PORT GLANCE_PORT NEUTRON_PORT

Creates (domain Default):
  projects  service, demo, other
  kerbside / kerbsidepass                      admin + service on service
  nova, placement, glance, neutron / <name>pass  admin + service on service
  demo / demopass                              member on demo
  other / otherpass                            member on other
  compute, placement, image and network services with endpoints in RegionOne
"""
import json
import sys
import urllib.error
import urllib.request

KS = sys.argv[1].rstrip('/') + '/v3'
NOVA, PLACEMENT, GLANCE, NEUTRON = sys.argv[2:6]


def req(method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(KS + path, data=data, method=method)
    r.add_header('Content-Type', 'application/json')
    if token:
        r.add_header('X-Auth-Token', token)
    try:
        with urllib.request.urlopen(r, timeout=120) as resp:
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
    for name in ('service', 'demo', 'other'):
        _, b = req('POST', '/projects', {'project': {'name': name, 'domain_id': 'default'}}, t)
        ids['project_' + name] = b['project']['id']
    _, b = req('GET', '/roles', token=t)
    roles = {r['name']: r['id'] for r in b['roles']}
    if 'service' not in roles:
        _, b = req('POST', '/roles', {'role': {'name': 'service'}}, t)
        roles['service'] = b['role']['id']
    users = [('demo', 'demopass', 'demo', ('member',)),
             ('other', 'otherpass', 'other', ('member',)),
             ('kerbside', 'kerbsidepass', 'service', ('admin', 'service'))]
    for name in ('nova', 'placement', 'glance', 'neutron'):
        users.append((name, name + 'pass', 'service', ('admin', 'service')))
    for name, password, project, granted in users:
        _, b = req('POST', '/users', {'user': {
            'name': name, 'domain_id': 'default', 'password': password,
            'default_project_id': ids['project_' + project]}}, t)
        uid = b['user']['id']
        ids['user_' + name] = uid
        for role in granted:
            req('PUT', '/projects/%s/users/%s/roles/%s'
                % (ids['project_' + project], uid, roles[role]), token=t)
    services = [('nova', 'compute', 'http://127.0.0.1:%s/v2.1' % NOVA),
                ('placement', 'placement', 'http://127.0.0.1:%s' % PLACEMENT),
                ('glance', 'image', 'http://127.0.0.1:%s' % GLANCE),
                ('neutron', 'network', 'http://127.0.0.1:%s' % NEUTRON)]
    for name, kind, url in services:
        _, b = req('POST', '/services', {'service': {'name': name, 'type': kind}}, t)
        sid = b['service']['id']
        for iface in ('public', 'internal', 'admin'):
            req('POST', '/endpoints', {'endpoint': {
                'service_id': sid, 'interface': iface, 'url': url,
                'region_id': 'RegionOne', 'enabled': True}}, t)
    json.dump(ids, sys.stdout)
    print()


if __name__ == '__main__':
    main()
