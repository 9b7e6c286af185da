#!/usr/bin/env python3
"""Checks that docker-compose.yml and the Dockerfile agree with the workspace.

No Docker engine runs where the tests run, so this reads the files instead:

1. every compose service that runs the Lifeline image (it has `build`, or
   the `image` a `build` service tags) runs a binary the workspace builds, a
   `[[bin]]` of services/*/Cargo.toml, and every such binary is run by one;
2. every LIFELINE_* variable the compose file sets is one the services read:
   a "LIFELINE_..." string literal in a .rs file under shared/src or
   services/*/src;
3. the Dockerfile builds every binary with `cargo build` and its last stage
   copies each one into /usr/local/bin, where the compose commands find it;
4. services that run another image (the brokers, the reverse proxy) are
   accepted as they are, but every file or directory a service bind-mounts
   from the repository (`./deploy/nginx.conf:/etc/nginx/nginx.conf:ro`)
   exists, and an nginx configuration mounted that way sends traffic only to
   compose services, on the port a Lifeline service listens on (its
   LIFELINE_*_ADDR);
5. a service run as several replicas (`deploy.replicas` > 1) publishes no
   fixed host port, which the replicas could not share.

Prints one line per problem and exits 1, or a one-line summary and exits 0.
Needs Python 3.11 (tomllib) and ruamel.yaml or PyYAML.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

ENV_LITERAL = re.compile(r'"(LIFELINE_[A-Z0-9_]+)"')
BIN_DIR = "/usr/local/bin"


def load_yaml(path: Path):
    text = path.read_text()
    try:
        from ruamel.yaml import YAML  # what check-jsonschema reads YAML with
    except ImportError:
        import yaml  # PyYAML

        return yaml.safe_load(text)
    return YAML(typ="safe", pure=True).load(text)


class Bin(NamedTuple):
    package: str
    manifest: str  # relative to the root, for messages


def workspace_bins(root: Path) -> dict[str, Bin]:
    """Binary name -> its package, for every binary of services/*/Cargo.toml."""
    bins: dict[str, Bin] = {}
    for manifest in sorted(root.glob("services/*/Cargo.toml")):
        data = tomllib.loads(manifest.read_text())
        package = data.get("package", {})
        crate = manifest.parent
        package_name = package.get("name", crate.name)
        names = [b["name"] for b in data.get("bin", []) if "name" in b]
        if package.get("autobins", True):
            if not names and (crate / "src/main.rs").is_file():
                names.append(package_name)
            names += [p.stem for p in sorted((crate / "src/bin").glob("*.rs"))]
        for name in names:
            bins[name] = Bin(package_name, str(manifest.relative_to(root)))
    return bins


def env_read_by_sources(root: Path) -> set[str]:
    found: set[str] = set()
    dirs = [root / "shared/src", *sorted(root.glob("services/*/src"))]
    for src in dirs:
        for rs in src.rglob("*.rs"):
            found.update(ENV_LITERAL.findall(rs.read_text(errors="replace")))
    return found


def env_keys(environment) -> list[str]:
    """Variable names set by a service's `environment` (map or list form)."""
    if isinstance(environment, dict):
        return [str(k) for k in environment]
    if isinstance(environment, list):
        return [str(item).split("=", 1)[0] for item in environment]
    return []


def as_argv(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def check_compose(compose: dict, bins: dict[str, Bin], env_read: set[str], name: str):
    problems: list[str] = []
    services = compose.get("services") or {}
    built_images = {
        svc.get("image") for svc in services.values() if isinstance(svc, dict) and svc.get("build")
    } - {None}
    lifeline = {
        svc_name: svc
        for svc_name, svc in services.items()
        if isinstance(svc, dict) and (svc.get("build") or svc.get("image") in built_images)
    }
    if not lifeline:
        problems.append(f"{name}: no service builds or runs the Lifeline image (no `build:`)")

    run_bins: set[str] = set()
    for svc_name, svc in lifeline.items():
        argv = as_argv(svc.get("entrypoint")) or as_argv(svc.get("command"))
        if not argv:
            problems.append(
                f"{name}: service {svc_name!r} runs the Lifeline image without a command; "
                f"the image has no default, set `command: [\"<binary>\"]`"
            )
            continue
        program = argv[0]
        binary = os.path.basename(program)
        if binary not in bins:
            known = ", ".join(sorted(bins)) or "none"
            problems.append(
                f"{name}: service {svc_name!r} runs {program!r}, which no services/*/Cargo.toml "
                f"declares as a [[bin]] (the workspace builds: {known})"
            )
            continue
        if "/" in program and os.path.dirname(program) != BIN_DIR:
            problems.append(
                f"{name}: service {svc_name!r} runs {program!r}, but the image installs "
                f"{binary} in {BIN_DIR}"
            )
        run_bins.add(binary)
    for binary in sorted(set(bins) - run_bins):
        problems.append(
            f"{name}: {binary} ({bins[binary].manifest}) is built by the workspace "
            f"but no service runs it"
        )

    setters: dict[str, list[str]] = {}
    for svc_name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        for key in env_keys(svc.get("environment")):
            if key.startswith("LIFELINE_"):
                setters.setdefault(key, []).append(svc_name)
    for key in sorted(set(setters) - env_read):
        problems.append(
            f"{name}: {key} is set for {', '.join(setters[key])} but no service reads it "
            f'(no "{key}" literal in shared/src or services/*/src)'
        )
    return problems, lifeline, setters


class Mount(NamedTuple):
    source: str  # as written in the compose file
    target: str


def bind_mounts(svc: dict) -> list[Mount]:
    """The host paths a service bind-mounts (short or long `volumes` syntax);
    named volumes are left out."""
    mounts: list[Mount] = []
    for item in svc.get("volumes") or []:
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) >= 2:
                source, target = parts[0], parts[1]
                if source.startswith((".", "/", "~")):
                    mounts.append(Mount(source, target))
        elif isinstance(item, dict) and item.get("type") == "bind":
            mounts.append(Mount(str(item.get("source", "")), str(item.get("target", ""))))
    return mounts


NGINX_COMMENT = re.compile(r"#[^\n]*")
NGINX_SERVER = re.compile(r"^\s*server\s+([^\s;]+)", re.MULTILINE)
NGINX_PROXY_PASS = re.compile(r"^\s*proxy_pass\s+https?://([^/\s;]+)", re.MULTILINE)
NGINX_UPSTREAM = re.compile(r"^\s*upstream\s+([A-Za-z0-9_.-]+)\s*\{", re.MULTILINE)


def nginx_destinations(text: str) -> list[str]:
    """`host:port` (or `host`) of every upstream `server` and every
    `proxy_pass` that names a host rather than an upstream group."""
    text = NGINX_COMMENT.sub("", text)
    groups = set(NGINX_UPSTREAM.findall(text))
    found: list[str] = []
    for block in re.finditer(r"upstream\s+[A-Za-z0-9_.-]+\s*\{([^}]*)\}", text):
        found += NGINX_SERVER.findall(block.group(1))
    for dest in NGINX_PROXY_PASS.findall(text):
        if dest not in groups and "$" not in dest:
            found.append(dest)
    return found


def listen_port(svc: dict) -> str | None:
    """The port a Lifeline service listens on, from its LIFELINE_*_ADDR."""
    environment = svc.get("environment")
    if isinstance(environment, dict):
        items = [(str(k), "" if v is None else str(v)) for k, v in environment.items()]
    else:
        items = [tuple((str(i).split("=", 1) + [""])[:2]) for i in environment or []]
    for key, value in items:
        if key.startswith("LIFELINE_") and key.endswith("_ADDR") and ":" in value:
            return value.rsplit(":", 1)[1]
    return None


def replicas(svc: dict) -> int:
    """`deploy.replicas`, 1 when absent or not a number."""
    deploy = svc.get("deploy") or {}
    try:
        return int(deploy.get("replicas", 1))
    except (TypeError, ValueError):
        return 1


def check_mounts_and_replicas(
    compose: dict, lifeline: dict[str, dict], compose_path: Path, name: str
) -> list[str]:
    """Checks 4 and 5 of the module doc: bind mounts, nginx destinations,
    fixed host ports of replicated services."""
    problems: list[str] = []
    services = compose.get("services") or {}
    base = compose_path.resolve().parent
    for svc_name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        for mount in bind_mounts(svc):
            if "$" in mount.source or mount.source.startswith("~"):
                continue  # depends on the environment; nothing to check here
            host = (base / mount.source).resolve()
            if not host.exists():
                problems.append(
                    f"{name}: service {svc_name!r} mounts {mount.source!r}, "
                    f"which does not exist (at {host})"
                )
                continue
            if host.is_file() and "nginx" in mount.target and mount.target.endswith(".conf"):
                for dest in nginx_destinations(host.read_text(errors="replace")):
                    target, _, port = dest.partition(":")
                    if dest.startswith("unix:") or re.fullmatch(r"[0-9.]+|\[.*\]", target):
                        continue  # a socket or an address, not a service name
                    if target not in services:
                        problems.append(
                            f"{mount.source}: nginx sends traffic to {dest!r}, "
                            f"but {name} has no service {target!r}"
                        )
                        continue
                    expected = listen_port(lifeline[target]) if target in lifeline else None
                    if expected and port != expected:
                        problems.append(
                            f"{mount.source}: nginx sends traffic to {dest!r}, but service "
                            f"{target!r} listens on port {expected}"
                        )
        if replicas(svc) > 1:
            for port in svc.get("ports") or []:
                published = (
                    port.get("published")
                    if isinstance(port, dict)
                    else (str(port).rsplit(":", 1)[0] if ":" in str(port) else None)
                )
                if published:
                    problems.append(
                        f"{name}: service {svc_name!r} runs {replicas(svc)} replicas but "
                        f"publishes host port {port!r}, which only one of them can bind"
                    )
    return problems


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    if pending.strip():
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def cargo_builds(run: str, bins: dict[str, Bin]) -> set[str] | None:
    """The workspace binaries one RUN's `cargo build` builds, or None if it has none."""
    built: set[str] | None = None
    for command in re.split(r"&&|\|\||;", run):
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = command.split()
        if "cargo" not in argv:
            continue
        i = argv.index("cargo")
        if argv[i + 1 : i + 2] != ["build"]:
            continue
        args = argv[i + 2 :]
        if "--release" not in args and "-r" not in args:
            continue  # a debug build does not land in target/release
        built = built or set()
        packages = {args[j + 1] for j, a in enumerate(args[:-1]) if a in ("-p", "--package")}
        packages |= {a.split("=", 1)[1] for a in args if a.startswith("--package=")}
        named = {args[j + 1] for j, a in enumerate(args[:-1]) if a == "--bin"}
        named |= {a.split("=", 1)[1] for a in args if a.startswith("--bin=")}
        if named:
            built |= named & set(bins)
            continue
        selective = {"--lib", "--example", "--examples", "--test", "--tests", "--bench", "--benches"}
        if selective & set(args) and "--bins" not in args and "--all-targets" not in args:
            continue
        built |= {b for b, info in bins.items() if not packages or info.package in packages}
    return built


def check_dockerfile(text: str, bins: dict[str, Bin], name: str) -> list[str]:
    problems: list[str] = []
    stages: list[list[tuple[str, str]]] = []
    for instr in dockerfile_instructions(text):
        if instr[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    if not stages:
        return [f"{name}: no FROM instruction"]

    built: set[str] = set()
    saw_cargo = False
    for stage in stages:
        for word, args in stage:
            if word == "RUN":
                got = cargo_builds(args, bins)
                if got is not None:
                    saw_cargo = True
                    built |= got
    if not saw_cargo:
        problems.append(f"{name}: no RUN instruction runs `cargo build --release`")
    for binary in sorted(set(bins) - built):
        if saw_cargo:
            problems.append(
                f"{name}: `cargo build` does not build {binary} ({bins[binary].manifest})"
            )

    installed: set[str] = set()
    for word, args in stages[-1]:
        if word not in ("COPY", "ADD"):
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if len(parts) < 2:
            continue
        *sources, dest = parts
        for binary in bins:
            if dest.rstrip("/") == BIN_DIR and any(
                fnmatch.fnmatch(os.path.basename(s.rstrip("/")), binary) for s in sources
            ):
                installed.add(binary)
            elif dest == f"{BIN_DIR}/{binary}" and len(sources) == 1:
                installed.add(binary)
    for binary in sorted(set(bins) - installed):
        problems.append(
            f"{name}: the final stage does not COPY {binary} into {BIN_DIR}/ "
            f"(the compose commands run it from there)"
        )
    return problems


def main() -> int:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=here, help="workspace root")
    parser.add_argument("--compose", type=Path, help="default: ROOT/docker-compose.yml")
    parser.add_argument("--dockerfile", type=Path, help="default: ROOT/Dockerfile")
    opts = parser.parse_args()
    root = opts.root.resolve()
    compose_path = opts.compose or root / "docker-compose.yml"
    dockerfile_path = opts.dockerfile or root / "Dockerfile"

    problems: list[str] = []
    bins = workspace_bins(root)
    if not bins:
        problems.append("no services/*/Cargo.toml declares a binary")
    env_read = env_read_by_sources(root)

    try:
        compose = load_yaml(compose_path)
    except Exception as err:  # noqa: BLE001 - any parse error is the message
        print(f"compose check: cannot read {compose_path}: {err}", file=sys.stderr)
        return 1
    if not isinstance(compose, dict):
        print(f"compose check: {compose_path} is not a mapping", file=sys.stderr)
        return 1
    found, lifeline, setters = check_compose(compose, bins, env_read, compose_path.name)
    problems += found
    problems += check_mounts_and_replicas(compose, lifeline, compose_path, compose_path.name)
    mounts = sum(
        len(bind_mounts(svc)) for svc in (compose.get("services") or {}).values()
        if isinstance(svc, dict)
    )

    if dockerfile_path.is_file():
        problems += check_dockerfile(dockerfile_path.read_text(), bins, dockerfile_path.name)
    else:
        problems.append(f"{dockerfile_path.name}: not found at {dockerfile_path}")

    if problems:
        for p in problems:
            print(f"compose check: {p}", file=sys.stderr)
        print(f"compose check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"compose check: ok ({len(lifeline)} Lifeline services run {len(bins)} binaries, "
        f"all built and installed by the Dockerfile; {len(setters)} LIFELINE_* variables, "
        f"all read by the sources; {mounts} bind mount(s), all present)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
