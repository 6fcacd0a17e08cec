"""pyinfra facts of the runtime stage: one probe each, read-only."""

from __future__ import annotations

import base64
import json
import shlex
from typing import Any

from pyinfra.api.facts import FactBase

from edge_provision.role_files import role_path


class ContainerdNode(FactBase[dict[str, Any]]):
    """containerd's version, current config (decoded), CAP_SYS_RESOURCE, systemd as PID 1,
    service state (the containerd role's facts.sh)."""

    def command(self, config_file: str) -> str:
        script = role_path("containerd", "files", "facts.sh").read_text()
        return f"set -- {shlex.quote(config_file)}\n{script}"

    def process(self, output: list[str]) -> dict[str, Any]:
        facts: dict[str, Any] = json.loads("\n".join(output))
        facts["config"] = base64.b64decode(facts["config"]).decode() if facts["config"] else ""
        return facts
