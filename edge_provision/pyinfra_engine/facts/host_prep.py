"""pyinfra facts of the host_prep stage: one probe each, read-only."""

from __future__ import annotations

import json
import shlex
from typing import Any

from pyinfra.api.facts import FactBase

from edge_provision.role_files import role_path


class Preflight(FactBase[dict[str, Any]]):
    """Architecture, OS release, kernel, cgroup version, systemd as PID 1 (host_prep's script)."""

    def command(self) -> str:
        return role_path("host_prep", "files", "preflight.sh").read_text()

    def process(self, output: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = json.loads("\n".join(output))
        return result


class ActiveSwaps(FactBase[list[str]]):
    """Swap devices and files in use (/proc/swaps without its header)."""

    def command(self) -> str:
        return "cat /proc/swaps"

    def process(self, output: list[str]) -> list[str]:
        return [line.split()[0] for line in output[1:] if line.strip()]


class SwapUnits(FactBase[dict[str, str]]):
    """systemd swap units and their load state (loaded, masked, ...)."""

    def requires_command(self) -> str:
        return "systemctl"

    def command(self) -> str:
        return "systemctl list-units --type=swap --all --plain --no-legend"

    def process(self, output: list[str]) -> dict[str, str]:
        units = {}
        for line in output:
            words = line.split()
            if len(words) >= 2:
                units[words[0]] = words[1]
        return units


class ExistingPaths(FactBase[list[str]]):
    """Which of the given paths exist."""

    def command(self, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        return f'for p in {quoted}; do if [ -e "$p" ]; then echo "$p"; fi; done'

    def process(self, output: list[str]) -> list[str]:
        return [line for line in output if line]


class SysctlValues(FactBase[list[str]]):
    """Live values of the given kernel parameters, in the order asked."""

    def command(self, keys: list[str]) -> str:
        return "sysctl -n " + " ".join(shlex.quote(k) for k in keys)

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output]
