"""Architecture names: the fleet's (amd64, arm64) for a machine's `uname -m`."""

from __future__ import annotations

import platform

from edge_provision.role_files import role_defaults


def debian_arch(machine: str | None = None) -> str:
    """``x86_64`` → ``amd64``, ``aarch64`` → ``arm64`` (this machine when not given).

    The mapping is host_prep's ``host_prep_arch_names``, the one the preflight checks
    nodes against; an unknown machine name is returned as it is.
    """
    machine = machine or platform.machine()
    for arch, names in role_defaults("host_prep")["host_prep_arch_names"].items():
        if machine in names:
            return str(arch)
    return machine
