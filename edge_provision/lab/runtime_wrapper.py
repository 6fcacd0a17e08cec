#!/usr/bin/python3 -IS
"""OCI runtime wrapper for lab containers (installed by the lab, registered with dockerd).

Some machines run inside a sandbox whose capability bounding set lacks capabilities that
``docker run --privileged`` asks for (e.g. CAP_SYS_RESOURCE); runc then fails with
"unable to apply caps: operation not permitted". This wrapper removes every capability the
machine cannot grant from the OCI spec runc is about to use -- the bundle's config.json on
``create``/``run``, the process spec on ``exec`` -- then execs the real runc with the
original arguments. Nothing else is changed.

Standard library only; runs as ``/usr/bin/python3 -IS`` for every runc call.
"""

from __future__ import annotations

import json
import os
import sys

RUNC = os.environ.get("EDGE_LAB_RUNC", "/usr/sbin/runc")

# linux/capability.h, in bit order.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)


def bounding_set() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return -1


def unavailable() -> set[str]:
    bnd = bounding_set()
    if bnd < 0:
        return set()
    return {f"CAP_{name}" for bit, name in enumerate(CAPABILITIES) if not bnd >> bit & 1}


def strip(process: dict[str, object], drop: set[str]) -> bool:
    caps = process.get("capabilities")
    if not isinstance(caps, dict):
        return False
    changed = False
    for kind, names in caps.items():
        if isinstance(names, list):
            kept = [n for n in names if n not in drop]
            if len(kept) != len(names):
                caps[kind] = kept
                changed = True
    return changed


def edit(path: str, *, bundle: bool) -> None:
    drop = unavailable()
    if not drop:
        return
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    process = spec.get("process") if bundle else spec
    if isinstance(process, dict) and strip(process, drop):
        tmp = f"{path}.edge-lab.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        os.replace(tmp, path)


def option(args: list[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def subcommand(args: list[str]) -> tuple[str | None, list[str]]:
    """The runc subcommand and the arguments after it (global options take a value or not)."""
    valued = {"--root", "--log", "--log-format", "--criu", "--rootless"}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            return arg, args[i + 1:]
        i += 2 if arg in valued else 1
    return None, []


def main() -> None:
    args = sys.argv[1:]
    command, rest = subcommand(args)
    if command in ("create", "run"):
        bundle = option(rest, ("--bundle", "-b")) or "."
        edit(os.path.join(bundle, "config.json"), bundle=True)
    elif command == "exec":
        process = option(rest, ("--process", "-p"))
        if process:
            edit(process, bundle=False)
    os.execv(RUNC, [RUNC, *args])


if __name__ == "__main__":
    main()
