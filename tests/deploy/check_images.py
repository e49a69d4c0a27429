#!/usr/bin/env python3
"""Check the kerbside image definitions, as kolla-build renders them.

  check_images.py --rendered WORK/docker/kerbside --repo REPO --build-conf FILE

`kolla-build --template-only` (no container engine involved) renders each
kolla/docker/kerbside/<image>/Dockerfile.j2 with Kolla's own macros into
<image>/Dockerfile next to the files of the build context. For every image:
  * the template has Kolla's blocks (labels, <image>_header/_footer), imports
    macros.j2 and applies kolla_patch_sources;
  * every COPY/ADD source exists in the build context, or is the "<image>-archive"
    Kolla makes from a source configured in the kolla-build configuration, or (with
    --from) is produced by that build stage;
  * `cargo build` is --release --locked, and every kerbside program the stages
    install or RUN is a binary the crate declares (kerbside-rs/Cargo.toml [[bin]]);
  * a program is only RUN after the COPY that installs it;
  * service images derive from kerbside-base and run as the kerbside user;
  * the API image installs the distribution's spice-html5 (browser consoles).
One line per check; exit 1 when any fails.
"""

import argparse
import configparser
import os
import re
import shlex
import sys

IMAGES = ["kerbside-base", "kerbside-api", "kerbside-proxy", "kerbside-notifications"]
failures = []


def check(ok, what, detail=""):
    if ok:
        print(f"images: ok: {what}")
    else:
        failures.append(what)
        print(f"images: FAIL: {what}" + (f": {detail}" if detail else ""))
    return ok


def instructions(dockerfile):
    """(instruction, argument string) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", open(dockerfile, encoding="utf-8").read())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def stages(dockerfile):
    """[{name, base, instructions}] in order."""
    result = []
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.append({"name": name, "base": parts[0], "instructions": []})
        elif result:
            result[-1]["instructions"].append((word, rest))
    return result


def commands(run):
    """The program of each command in a RUN line (after &&, ||, ;, |)."""
    programs = []
    for segment in re.split(r"&&|\|\||;|\|", run):
        words = segment.split()
        while words and ("=" in words[0] and not words[0].startswith("-")):
            words = words[1:]  # VAR=value prefixes
        if words:
            programs.append(words[0])
    return programs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rendered", required=True, help="kolla-build's work dir: <work>/docker/kerbside")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--build-conf", required=True, help="the kolla-build configuration used")
    args = parser.parse_args()

    cargo = open(os.path.join(args.repo, "kerbside-rs", "Cargo.toml"), encoding="utf-8").read()
    binaries = set(re.findall(r'\[\[bin\]\]\s*\nname\s*=\s*"([^"]+)"', cargo))
    check({"kerbside", "kerbside-manage"} <= binaries, "the crate builds kerbside and kerbside-manage", str(binaries))
    build_conf = configparser.RawConfigParser()
    build_conf.read(args.build_conf)

    for image in IMAGES:
        template = os.path.join(args.repo, "kolla", "docker", "kerbside", image, "Dockerfile.j2")
        source = open(template, encoding="utf-8").read()
        block = image.replace("-", "_")
        check(all(s in source for s in ("{% block labels %}", "{%% block %s_header %%}" % block,
                                        "{%% block %s_footer %%}" % block,
                                        '{% import "macros.j2" as macros with context %}',
                                        "{{ macros.kolla_patch_sources() }}")),
              f"{image}: Kolla template blocks, macros and kolla_patch_sources")

        context = os.path.join(args.rendered, image)
        dockerfile = os.path.join(context, "Dockerfile")
        if not check(os.path.exists(dockerfile), f"{image}: rendered by kolla-build"):
            continue
        all_stages = stages(dockerfile)
        names = {s["name"] for s in all_stages if s["name"]}
        final = all_stages[-1]
        produced = {}  # stage name -> (install directories, installed programs)
        for stage in all_stages:
            label = f"{image} (stage {stage['name']})" if stage["name"] else image
            installed = set()
            for word, rest in stage["instructions"]:
                if word in ("COPY", "ADD"):
                    parts = shlex.split(rest)
                    flags = [p for p in parts if p.startswith("--")]
                    paths = [p for p in parts if not p.startswith("--")]
                    sources, dest = paths[:-1], paths[-1]
                    from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
                    for src in sources:
                        if from_stage:
                            dirs, programs = produced.get(from_stage, (set(), set()))
                            check(from_stage in names and any(src.rstrip("/") == d.rstrip("/") for d in dirs),
                                  f"{label}: COPY --from={from_stage} {src} is produced by that stage", str(dirs))
                            if dest.rstrip("/") == "/usr/local/bin":
                                installed |= programs
                        elif src == f"{image}-archive":
                            check(build_conf.has_option(image, "type") and build_conf.has_option(image, "location"),
                                  f"{label}: ADD {src}: source [{image}] configured for kolla-build")
                        else:
                            check(os.path.exists(os.path.join(context, src)), f"{label}: {word} {src} exists in the build context")
                elif word == "RUN":
                    if "cargo build" in rest:
                        check("--release" in rest and "--locked" in rest, f"{label}: cargo build --release --locked")
                    release = set(re.findall(r"target/release/([A-Za-z0-9_-]+)", rest))
                    for program in sorted(release):
                        check(program in binaries, f"{label}: installs {program}, a binary of the crate")
                    m = re.search(r"install\b[^&;|]*-t\s+(\S+)", rest)
                    if m and release:
                        produced.setdefault(stage["name"], (set(), set()))
                        produced[stage["name"]][0].add(m.group(1))
                        produced[stage["name"]][1].update(release)
                    for program in commands(rest):
                        if program.startswith("kerbside"):
                            check(program in binaries, f"{label}: RUN {program} is a binary of the crate")
                            check(program in installed, f"{label}: RUN {program} after the COPY that installs it")
        if image == "kerbside-base":
            check(final["base"].endswith("/base:" + final["base"].rsplit(":", 1)[-1]) and final["name"] is None,
                  f"{image}: final image FROM Kolla's base", final["base"])
            check(all(s["base"] == final["base"] for s in all_stages), f"{image}: builder stage from the same base")
            start = os.path.join(context, "extend_start.sh")
            check(os.path.exists(start) and "kerbside-manage" in open(start, encoding="utf-8").read(),
                  f"{image}: kolla_extend_start bootstraps with kerbside-manage")
        else:
            check(len(all_stages) == 1 and re.search(r"/kerbside-base:", final["base"]) is not None,
                  f"{image}: FROM kerbside-base", final["base"])
            check(final["instructions"] and final["instructions"][-1] == ("USER", "kerbside"),
                  f"{image}: ends with USER kerbside")
            if image == "kerbside-api":
                runs = " ".join(rest for word, rest in final["instructions"] if word == "RUN")
                check(re.search(r"\bspice-html5\b", runs) is not None,
                      f"{image}: installs the spice-html5 package (the browser client it serves)")

    if failures:
        print(f"images: {len(failures)} check(s) FAILED")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
