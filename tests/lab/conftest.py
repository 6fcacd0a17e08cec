"""Lab tier: real hosts from `edge_provision.lab`, provisioned over real SSH, checked with testinfra."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from edge_provision.lab import Lab, LabHost
from tests.conftest import run, tool


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@dataclass
class LabFleet:
    """A lab started for one test module: its inventory directory and hosts."""

    lab: Lab
    inventory: Path
    hosts: list[LabHost]

    def testinfra(self, name: str) -> testinfra.host.Host:
        return testinfra.get_host(f"ansible://{name}?ansible_inventory={self.inventory / 'hosts.yml'}")

    def sh(self, name: str, command: str) -> str:
        """Run a command on a lab host over SSH as root; return its stdout."""
        return str(self.testinfra(name).check_output(command))

    def ansible_playbook(self, *args: str) -> EngineRun:
        result = run([tool("ansible-playbook"), "-i", str(self.inventory), "playbooks/site.yml", *args])
        return EngineRun(result, changed=ansible_changed(result.stdout))

    def pyinfra(self, *args: str) -> EngineRun:
        result = run([tool("pyinfra"), "-y", str(self.inventory / "inventory.py"), "deploy.py", *args])
        if result.returncode != 0:  # no results table: a failed run's changes are not counted
            return EngineRun(result, changed=-1)
        return EngineRun(result, changed=pyinfra_changed(result.stdout + result.stderr))


@dataclass
class EngineRun:
    result: subprocess.CompletedProcess[str]
    changed: int

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def ok(self) -> EngineRun:
        assert self.result.returncode == 0, self.output[-6000:]
        return self


def ansible_changed(stdout: str) -> int:
    recap = stdout.split("PLAY RECAP", 1)[1]
    counts = [int(n) for n in re.findall(r"\bchanged=(\d+)", recap)]
    assert counts, recap
    return sum(counts)


def flat(text: str) -> str:
    """Output with its whitespace runs made single spaces (Ansible's callback wraps long lines)."""
    return " ".join(text.split())


def pyinfra_changed(output: str) -> int:
    """Operations that ran commands ("Success" in pyinfra's results table), summed over hosts."""
    total = re.search(r"^\s*Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", output, re.M)
    assert total, output[-3000:]
    success = total.group(2)
    return 0 if success == "-" else int(success)


@pytest.fixture(scope="module")
def lab_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFleet]:
    """A fresh lab for the module; `LAB_HOSTS` in the module sets its size (default 2), `LAB_OS` the
    Debian release of each host (default: Debian 12 for all)."""
    count = getattr(request.module, "LAB_HOSTS", 2)
    releases = getattr(request.module, "LAB_OS", None)
    inventory = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "fleet"
    lab = Lab(inventory)
    try:
        hosts = lab.up(count, releases=releases)
        yield LabFleet(lab=lab, inventory=inventory, hosts=hosts)
    finally:
        lab.down()
