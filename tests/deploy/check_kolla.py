#!/usr/bin/env python3
"""Check what tests/deploy/render.yml produced with the kerbside Kolla-Ansible role.

  check_kolla.py --node-config DIR --manage PATH/kerbside-manage --repo REPO

For each container directory (kerbside-api, kerbside-proxy, kerbside-notifications):
  * config.json is valid JSON; its command runs a program the crate builds, for the
    right --component, reading the kerbside.conf that config.json installs;
  * every config_files source is a file the role's config tasks copied into the
    directory, and every file there is installed by config.json;
  * after copying the files where kolla_set_configs would (under a scratch root), every
    /etc/kerbside path named in kerbside.conf exists, and kerbside.conf passes
    check_conf.py (known options only, `kerbside-manage config check`).
Then the HAProxy, ProxySQL and Nova files, and the image/bootstrap wiring.
One line per check; exit 1 when any fails.
"""

import argparse
import configparser
import json
import os
import re
import shutil
import subprocess
import sys

SERVICES = {
    "kerbside-api": ("kerbside_api", "api"),
    "kerbside-proxy": ("kerbside_proxy", "proxy"),
    "kerbside-notifications": ("kerbside_notifications", "notifications"),
}

failures = []


def check(ok, what, detail=""):
    if ok:
        print(f"kolla: ok: {what}")
    else:
        failures.append(what)
        print(f"kolla: FAIL: {what}" + (f": {detail}" if detail else ""))
    return ok


def read_ini(path):
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path, encoding="utf-8")
    return parser


def crate_binaries(repo):
    text = open(os.path.join(repo, "kerbside-rs", "Cargo.toml"), encoding="utf-8").read()
    return set(re.findall(r'\[\[bin\]\]\s*\nname\s*=\s*"([^"]+)"', text))


def check_container(name, args, facts, binaries):
    ccd = facts["container_config_directory"].rstrip("/")
    service_dir = os.path.join(args.node_config, name)
    container_name, component = SERVICES[name]
    service = facts["kerbside_services"][name]
    check(service["container_name"] == container_name, f"{name}: container {container_name}")
    check(service["image"].rsplit(":", 1)[0].endswith("/" + name), f"{name}: image {name}", service["image"])
    check(any(v.startswith(f"{facts['node_config_directory']}/{name}/:{ccd}/") for v in service["volumes"]),
          f"{name}: its config directory is mounted at {ccd}")
    check(service["healthcheck"]["test"][0] == "CMD-SHELL", f"{name}: health check",
          str(service["healthcheck"]["test"]))
    if component == "proxy":
        # Two sockets per channel, about eight channels per session, [proxy] max_sessions = 1000.
        nofile = (service.get("dimensions") or {}).get("ulimits", {}).get("nofile", {})
        check(int(nofile.get("soft", 0)) >= 16256 and int(nofile.get("hard", 0)) >= int(nofile.get("soft", 0)),
              f"{name}: nofile ulimit holds the default max_sessions", str(nofile))

    try:
        config = json.load(open(os.path.join(service_dir, "config.json"), encoding="utf-8"))
    except (OSError, ValueError) as e:
        check(False, f"{name}: config.json is valid JSON", str(e))
        return
    check(True, f"{name}: config.json is valid JSON")

    words = config["command"].split()
    check(words[0] in binaries, f"{name}: command runs `{words[0]}`, a binary of the crate", str(binaries))
    check(words[-2:] == ["--component", component], f"{name}: command runs --component {component}",
          config["command"])
    conf_dest = words[words.index("--config-file") + 1] if "--config-file" in words else None

    copied = set(os.listdir(service_dir)) - {"config.json"}
    installed = {}
    for entry in config["config_files"]:
        source, dest = entry["source"], entry["dest"]
        if not source.startswith(ccd + "/"):
            check(False, f"{name}: {source} comes from {ccd}")
            continue
        rel = source[len(ccd) + 1:]
        exists = os.path.exists(os.path.join(service_dir, rel))
        check(exists or entry.get("optional", False), f"{name}: config.json source {rel} was copied by the role")
        check(entry.get("owner") in ("kerbside", "root") and "perm" in entry, f"{name}: {rel} has owner and perm")
        copied.discard(rel)
        installed[dest] = os.path.join(service_dir, rel)
    check(not copied, f"{name}: every copied file is installed by config.json", str(sorted(copied)))
    check(conf_dest in installed, f"{name}: the command's --config-file {conf_dest} is installed")
    if conf_dest not in installed:
        return

    # What kolla_set_configs does at container start, under a scratch root.
    root = os.path.join(args.node_config, "rendered", "root-" + name)
    shutil.rmtree(root, ignore_errors=True)
    for dest, source in installed.items():
        target = root + dest
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(source):
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    conf_path = root + conf_dest
    conf_text = open(conf_path, encoding="utf-8").read()
    named = sorted(set(re.findall(r"=\s*(/etc/kerbside/\S+)", conf_text)))
    missing = [p for p in named if not os.path.exists(root + p)]
    check(not missing, f"{name}: the {len(named)} /etc/kerbside paths kerbside.conf names are installed", str(missing))
    rebased = re.sub(r"(=\s*)(/etc/kerbside/)", lambda m: m.group(1) + root + m.group(2), conf_text)
    checked_conf = os.path.join(args.node_config, "rendered", name + ".conf")
    with open(checked_conf, "w", encoding="utf-8") as f:
        f.write(rebased)
    result = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "check_conf.py"),
                             "--manage", args.manage, checked_conf], capture_output=True, text=True)
    check(result.returncode == 0, f"{name}: kerbside.conf passes kerbside-manage config check",
          (result.stdout + result.stderr).strip())

    ini = read_ini(os.path.join(service_dir, "kerbside.conf"))
    check(ini.get("DEFAULT", "log_file", fallback="").endswith(f"/{name}.log"), f"{name}: logs to its own file")
    if component in ("api", "proxy"):
        check(ini.get("proxy", "tls_port", fallback="") == "5898" and ini.get("proxy", "public_tls_port", fallback="") == "5900",
              f"{name}: proxy listens on 5898, clients use HAProxy's 5900")
        check(ini.has_option("proxy", "cert_file"), f"{name}: SPICE certificate configured")
        check(ini.get("html5", "enabled", fallback="") == "true"
              and ini.get("html5", "bind_port", fallback="") == "6082"
              and ini.get("html5", "public_url", fallback="") == f"wss://{facts['kerbside_public_host']}:6082/"
              and not ini.has_option("html5", "insecure_websocket"),
              f"{name}: browser consoles on 6082, wss:// at the public host (TLS by kerbside)",
              str(dict(ini["html5"])) if ini.has_section("html5") else "no [html5]")
    if component == "api":
        check(ini.get("api", "bind_port", fallback="") == "13002", f"{name}: API on 13002")
        check(ini.get("keystone_authtoken", "username", fallback="") == "kerbside", f"{name}: keystone user kerbside")
        check(ini.get("database", "connection", fallback="").startswith("mysql+pymysql://kerbside:"),
              f"{name}: MariaDB connection for user kerbside")
        check(ini.get("api", "web_console", fallback="") == "True", f"{name}: web console served")
        plain = facts["kerbside_public_endpoint"].startswith("http://")
        check(ini.get("api", "insecure_cookies", fallback="") == ("True" if plain else "False"),
              f"{name}: web console cookie Secure unless the public endpoint is plain HTTP",
              facts["kerbside_public_endpoint"])
    if component == "notifications":
        check(ini.get("oslo_messaging_notifications", "transport_url", fallback="").startswith("rabbit://"),
              f"{name}: notify_transport_url")
        check(ini.get("notifications", "queue_type", fallback="") == "quorum"
              and ini.get("notifications", "durable", fallback="") == "true",
              f"{name}: durable quorum queue, as Kolla-Ansible's RabbitMQ expects")
        check(not ini.has_section("keystone_authtoken") and not ini.has_section("proxy"),
              f"{name}: no credentials or TLS material it does not use")


def check_haproxy(args, facts):
    base = os.path.join(args.node_config, "haproxy", "services.d")
    api = open(os.path.join(base, "kerbside-api.cfg"), encoding="utf-8").read()
    proxy = open(os.path.join(base, "kerbside-proxy.cfg"), encoding="utf-8").read()

    def section(text, name):
        m = re.search(r"^(?:frontend|backend) " + re.escape(name) + r"\n((?:[ \t].*\n?)*)", text, re.M)
        return m.group(1) if m else ""

    api_front = section(api, "kerbside_api_front")
    check("mode http" in api_front and "bind 127.0.0.1:13002" in api_front, "haproxy: API internal frontend, http, :13002")
    api_ext = section(api, "kerbside_api_external_front")
    check("bind 127.0.0.2:13002 ssl crt" in api_ext, "haproxy: API external frontend terminates TLS on :13002")
    api_back = section(api, "kerbside_api_back")
    check("option httpchk GET /healthcheck" in api_back and re.search(r"server \S+ 127\.0\.0\.1:13002 ", api_back),
          "haproxy: API backend health-checks /healthcheck on :13002")
    for name, port, listen in (("kerbside_proxy_tls", 5900, 5898), ("kerbside_proxy_insecure", 5901, 5899),
                               ("kerbside_html5", 6082, 6082)):
        for suffix, vip in (("", "127.0.0.1"), ("_external", "127.0.0.2")):
            front = section(proxy, f"{name}{suffix}_front")
            check("mode tcp" in front and f"bind {vip}:{port}\n" in front + "\n" and "ssl" not in front
                  and "timeout client 3600s" in front,
                  f"haproxy: {name}{suffix} frontend is TCP passthrough on {vip}:{port} with long timeouts",
                  front.strip())
            back = section(proxy, f"{name}{suffix}_back")
            check("mode tcp" in back and "balance source" in back and "timeout server 3600s" in back
                  and re.search(rf"server \S+ 127\.0\.0\.1:{listen} check", back) and "ssl" not in back,
                  f"haproxy: {name}{suffix} backend, balance source, to :{listen}", back.strip())
    users = open(os.path.join(args.node_config, "proxysql", "users", "kerbside.yaml"), encoding="utf-8").read()
    check('username: "kerbside"' in users, "proxysql: kerbside database user routed")


def check_nova(args, facts):
    nova = read_ini(os.path.join(args.node_config, "rendered", "nova.conf"))
    base = facts["kerbside_public_endpoint"] + "/nova"
    check(nova.get("spice", "enabled", fallback="") == "true", "nova override: [spice] enabled")
    check(nova.get("spice", "spice_direct_proxy_base_url", fallback="") == base,
          f"nova override: spice_direct_proxy_base_url = {base}",
          nova.get("spice", "spice_direct_proxy_base_url", fallback=""))
    check(nova.get("spice", "server_proxyclient_address", fallback="") == facts["api_interface_address"],
          "nova override: server_proxyclient_address = api_interface_address")
    html5 = facts["kerbside_public_endpoint"] + "/spice_auto.html"
    check(nova.get("spice", "html5proxy_base_url", fallback="") == html5,
          f"nova override: html5proxy_base_url = {html5} (kerbside replaces nova-spicehtml5proxy)",
          nova.get("spice", "html5proxy_base_url", fallback=""))
    check(nova.get("vnc", "enabled", fallback="") == "false", "nova override: [vnc] enabled = false")
    check(nova.get("notifications", "notification_format", fallback="") in ("versioned", "both"),
          "nova override: versioned notifications")
    check(nova.get("oslo_messaging_notifications", "driver", fallback="") == "messagingv2",
          "nova override: driver = messagingv2")


def check_bootstrap(args, binaries):
    repo = args.repo
    start = open(os.path.join(repo, "kolla/docker/kerbside/kerbside-base/extend_start.sh"), encoding="utf-8").read()
    api_config = json.load(open(os.path.join(args.node_config, "kerbside-api", "config.json"), encoding="utf-8"))
    conf_dest = next(e["dest"] for e in api_config["config_files"] if e["dest"].endswith("/kerbside.conf"))
    check(f"kerbside-manage --config-file {conf_dest} db sync" in start and "kerbside-manage" in binaries,
          "bootstrap: the images' kolla_extend_start runs `kerbside-manage ... db sync` on the installed kerbside.conf")
    service = open(os.path.join(repo, "kolla/ansible/roles/kerbside/tasks/bootstrap_service.yml"), encoding="utf-8").read()
    check("KOLLA_BOOTSTRAP" in service and "kerbside_services['kerbside-api']" in service
          and "restart_policy: oneshot" in service,
          "bootstrap: one-shot container from the kerbside-api image with KOLLA_BOOTSTRAP")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-config", required=True)
    parser.add_argument("--manage", required=True)
    parser.add_argument("--repo", required=True)
    args = parser.parse_args()

    facts = json.load(open(os.path.join(args.node_config, "rendered", "facts.json"), encoding="utf-8"))
    binaries = crate_binaries(args.repo)
    check(set(facts["kerbside_services"]) == set(SERVICES), "three containers defined", str(list(facts["kerbside_services"])))
    for name in SERVICES:
        check_container(name, args, facts, binaries)
    check_haproxy(args, facts)
    check_nova(args, facts)
    check_bootstrap(args, binaries)
    if failures:
        print(f"kolla: {len(failures)} check(s) FAILED")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
