"""pyinfra facts every stage uses."""

from __future__ import annotations

import shlex

from pyinfra.api.facts import FactBase


class CommandOutput(FactBase[str]):
    """stdout of a read-only command (stderr dropped, exit status ignored): what the
    Ansible roles register and hand to the same parsing filters."""

    def command(self, argv: list[str]) -> str:
        return " ".join(shlex.quote(a) for a in argv) + " 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return "\n".join(output) + ("\n" if output else "")
