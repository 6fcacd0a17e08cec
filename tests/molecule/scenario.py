"""What a scenario's verify (molecule/<scenario>/tests) reads of the scenario Molecule runs:
its platforms and lab backend (the scenario's molecule.yml, ``MOLECULE_FILE``), the inventory
Ansible converged with (the lab's hosts.yml with the group and host variables Molecule wrote
beside it, in ``MOLECULE_EPHEMERAL_DIRECTORY``/inventory), the lab's hosts it lists and a
testinfra host for each, which the shared checks (tests/checks) take."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testinfra
import yaml

from edge_provision.artifacts.debian import CONTROLLER_RELEASE, debian_arch
from edge_provision.lab import Lab, LabHost
from edge_provision.lab.inventory_writer import LAB_WASM_ENGINES


@dataclass(frozen=True)
class Scenario:
    platforms: list[dict[str, Any]]
    inventory: Path

    @classmethod
    def current(cls) -> Scenario:
        """The scenario Molecule is verifying (from the environment Molecule sets)."""
        config = yaml.safe_load(Path(os.environ["MOLECULE_FILE"]).read_text())
        return cls(platforms=list(config["platforms"]),
                   inventory=Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory")

    @property
    def backend(self) -> str:
        """The lab backend of every platform (molecule/shared/lab.yml: vm unless they say container)."""
        backends = {p.get("backend", "vm") for p in self.platforms}
        assert len(backends) == 1, backends
        return backends.pop()

    def arch(self, name: str) -> str:
        """A platform's architecture: its ``arch``, else the machine's (what `lab up` gives it)."""
        return str(next(p for p in self.platforms if p["name"] == name).get("arch") or debian_arch())

    def release(self, name: str) -> str:
        """A platform's Debian release: its ``os``, else Debian 12 (what `lab up` gives it)."""
        return str(next(p for p in self.platforms if p["name"] == name).get("os") or CONTROLLER_RELEASE)

    def wasm_engine(self, name: str) -> str:
        """The Wasm engine the lab's inventory gives a platform (by its release)."""
        return LAB_WASM_ENGINES[self.release(name)]

    def hosts(self) -> list[LabHost]:
        """The lab's hosts the inventory lists, in platform order (lab-1 first)."""
        return Lab(self.inventory, backend=self.backend).hosts()

    def host(self, name: str) -> testinfra.host.Host:
        """A host over SSH as root, through Ansible's connection and the inventory's hosts.yml."""
        return testinfra.get_host(f"ansible://{name}?ansible_inventory={self.inventory / 'hosts.yml'}")

    def group_vars(self) -> dict[str, Any]:
        return self._vars("group_vars", "all")

    def host_vars(self, name: str) -> dict[str, Any]:
        return self._vars("host_vars", name)

    def _vars(self, kind: str, name: str) -> dict[str, Any]:
        path = self.inventory / kind / name
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
