#!/usr/bin/env python3
"""Check kerbside configuration files written by the deployment tooling.

  check_conf.py --manage PATH/kerbside-manage CONF [CONF ...]

1. Every section and option in the files must be one kerbside knows: the list comes
   from `kerbside-manage config sample` (one "#option = default" line per option), so
   a misspelt or invented option fails here instead of being ignored with a warning.
2. `kerbside-manage --config-file CONF ... config check` must say "configuration OK"
   and exit 0 (it reads the files in order, later ones winning, as the services do,
   and checks that the certificate and sources files they name are readable).

Exit status 0 when both pass, 1 otherwise; one line per finding.
"""

import argparse
import re
import subprocess
import sys

SECTION = re.compile(r"^\[([^\]]+)\]\s*$")
SAMPLE_OPTION = re.compile(r"^#([a-z_][a-z0-9_]*) = ")
OPTION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[=:]")


def known_options(manage):
    out = subprocess.run([manage, "config", "sample"], check=True, capture_output=True, text=True).stdout
    known, section = {}, None
    for line in out.splitlines():
        m = SECTION.match(line)
        if m:
            section = m.group(1)
            known.setdefault(section, set())
            continue
        m = SAMPLE_OPTION.match(line)
        if m and section is not None:
            known[section].add(m.group(1))
    if sum(len(v) for v in known.values()) < 20:
        raise SystemExit(f"check_conf: FAIL: `{manage} config sample` listed too few options")
    return known


def unknown_options(path, known):
    problems, section = [], None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith(("#", ";")) or line[0] in " \t":
                continue
            m = SECTION.match(line)
            if m:
                section = m.group(1)
                if section not in known:
                    problems.append(f"{path}:{number}: unknown section [{section}]")
                continue
            m = OPTION.match(line)
            if not m:
                problems.append(f"{path}:{number}: not an option line: {line.rstrip()}")
            elif section in known and m.group(1) not in known[section]:
                problems.append(f"{path}:{number}: unknown option [{section}] {m.group(1)}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manage", required=True, help="path to kerbside-manage")
    parser.add_argument("confs", nargs="+", help="configuration files, in reading order")
    args = parser.parse_args()

    known = known_options(args.manage)
    problems = []
    for conf in args.confs:
        problems.extend(unknown_options(conf, known))

    command = [args.manage]
    for conf in args.confs:
        command += ["--config-file", conf]
    command += ["config", "check"]
    result = subprocess.run(command, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or "configuration OK" not in result.stdout:
        problems.append(f"`config check` exited {result.returncode}: {output}")

    names = " + ".join(args.confs)
    for problem in problems:
        print(f"check_conf: FAIL: {problem}")
    if problems:
        return 1
    print(f"check_conf: ok: {names} (known options only; config check: {output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
