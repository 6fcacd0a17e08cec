"""pyinfra operations of the host_prep stage: read state with facts, yield only what changes it."""

from __future__ import annotations

import re
import shlex
from collections.abc import Generator, Mapping, Sequence
from io import StringIO
from typing import Any

from pyinfra.api.exceptions import OperationError
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import FileContents
from pyinfra.operations import files

from edge_provision.artifacts.debian import release_error
from edge_provision.pyinfra_engine.facts.common import OsRelease
from edge_provision.pyinfra_engine.facts.host_prep import (
    ActiveSwaps,
    ExistingPaths,
    Preflight,
    SwapUnits,
    SysctlValues,
)

Commands = Generator[Any, None, None]


@operation(is_idempotent=True)
def preflight_checked(edge_arch: str, arch_names: Mapping[str, Sequence[str]]) -> Commands:
    """Report the host's preflight facts; fail when its architecture is not ``edge_arch`` or its
    OS release is not one the fleet supports."""
    facts = host.get_fact(Preflight)
    os_release = host.get_fact(OsRelease)
    summary = (
        f"{facts['architecture']} · {os_release['pretty_name']} ({os_release['release']}) · "
        f"kernel {facts['kernel']} · "
        f"cgroup {facts['cgroup']} · systemd PID 1: {str(facts['systemd_pid1']).lower()}"
    )
    if facts["architecture"] not in arch_names.get(edge_arch, ()):
        raise OperationError(
            f"host {host.name}: field 'edge_arch' says {edge_arch} but the machine is "
            f"{facts['architecture']}; fix edge_arch in the inventory"
        )
    problem = release_error(os_release["release"])
    if problem:
        raise OperationError(f"host {host.name} runs {os_release['pretty_name']}: {problem}")
    host.log(f"preflight: {summary}")
    yield from ()


@operation(is_idempotent=True)
def swap_off() -> Commands:
    """Turn every active swap off now."""
    if host.get_fact(ActiveSwaps):
        yield "swapoff -a"
    else:
        host.noop("no swap active")


@operation(is_idempotent=True)
def fstab_swap_commented(regexp: str, replace: str, reload_systemd: bool) -> Commands:
    """Comment out swap lines in /etc/fstab with the role's own (Python) expression."""
    lines = host.get_fact(FileContents, path="/etc/fstab")
    if lines is None:
        host.noop("no /etc/fstab")
        return
    current = "\n".join(lines) + "\n"
    wanted = re.sub(regexp, replace, current, flags=re.MULTILINE)
    if wanted == current:
        host.noop("no active swap line in /etc/fstab")
        return
    yield from files.put._inner(src=StringIO(wanted), dest="/etc/fstab")
    if reload_systemd:
        yield "systemctl daemon-reload"


@operation(is_idempotent=True)
def swap_units_masked() -> Commands:
    """Mask every systemd swap unit that is not masked yet."""
    units = host.get_fact(SwapUnits) or {}
    pending = sorted(name for name, load in units.items() if load != "masked")
    if not pending:
        host.noop("no unmasked swap unit")
    for name in pending:
        yield f"systemctl mask {shlex.quote(name)}"


@operation(is_idempotent=True)
def kernel_modules_loaded(modules: Sequence[Mapping[str, Any]]) -> Commands:
    """modprobe each module unless one of its present_paths shows it loaded or built in."""
    paths = [p for m in modules for p in m["present_paths"]]
    found: list[str] = host.get_fact(ExistingPaths, paths=paths)
    existing = set(found)
    missing = [m["name"] for m in modules if not existing.intersection(m["present_paths"])]
    if not missing:
        host.noop("kernel modules present (loaded or built in)")
    for name in missing:
        yield f"modprobe {shlex.quote(name)}"


@operation(is_idempotent=True)
def sysctl_applied(path: str, settings: Mapping[str, Any]) -> Commands:
    """Apply the sysctl file live when a live value differs, then verify every value."""
    keys = sorted(settings)
    wanted = [str(settings[k]) for k in keys]
    if host.get_fact(SysctlValues, keys=keys) == wanted:
        host.noop("kernel parameters already live")
        return
    read = "sysctl -n " + " ".join(shlex.quote(k) for k in keys)
    expected = shlex.quote("\n".join(wanted))
    yield (
        f"sysctl -p {shlex.quote(path)} >/dev/null && "
        f'if [ "$({read})" != {expected} ]; then '
        f"echo 'live kernel parameters differ from {path} after applying it' >&2; {read} >&2; "
        "exit 1; fi"
    )
