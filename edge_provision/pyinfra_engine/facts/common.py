"""pyinfra facts every stage uses."""

from __future__ import annotations

import shlex
from typing import Any

from pyinfra.api.facts import FactBase

from edge_provision.role_files import role_path


class CommandOutput(FactBase[str]):
    """stdout of a read-only command (stderr dropped, exit status ignored): what the
    Ansible roles register and hand to the same parsing filters."""

    def command(self, argv: list[str]) -> str:
        return " ".join(shlex.quote(a) for a in argv) + " 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return "\n".join(output) + ("\n" if output else "")


class OsRelease(FactBase[dict[str, Any]]):
    """The host's OS release, ``{release: "debian-13", pretty_name: ...}`` (the edge role's
    os_release.sh, which the Ansible roles run too)."""

    def command(self) -> str:
        return role_path("edge", "files", "os_release.sh").read_text()

    def process(self, output: list[str]) -> dict[str, Any]:
        lines = [*output, "unknown", "unknown"]
        return {"release": lines[0].strip(), "pretty_name": lines[1].strip()}
