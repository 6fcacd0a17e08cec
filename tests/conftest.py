"""Shared test helpers: the repository and its virtualenv tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# testinfra's ansible backend and Ansible's own helpers look for ansible-* on PATH.
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def tool(name: str) -> str:
    return str(BIN / name)


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0", "NO_COLOR": "1"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        args, cwd=ROOT, text=True, capture_output=True, env=env, **kwargs
    )


@pytest.fixture
def write_fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a fleet directory (hosts.yml + optional group_vars/all.yml) and return it."""

    def _write(hosts_yml: str, all_vars: str | None = None) -> Path:
        fleet = tmp_path / "fleet"
        (fleet / "group_vars").mkdir(parents=True, exist_ok=True)
        (fleet / "hosts.yml").write_text(hosts_yml)
        if all_vars is not None:
            (fleet / "group_vars" / "all.yml").write_text(all_vars)
        (fleet / "inventory.py").write_text(
            (ROOT / "inventories" / "example" / "inventory.py").read_text()
        )
        return fleet

    return _write
