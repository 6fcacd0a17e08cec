"""What every stage's pyinfra deploy reads of the current host: fleet-wide variables, its OS release."""

from __future__ import annotations

from typing import Any

from pyinfra.api.exceptions import DeployError
from pyinfra.context import host

from edge_provision.artifacts.debian import release_error
from edge_provision.pyinfra_engine.facts.common import OsRelease
from edge_provision.role_files import fleet_value


def fleet(name: str) -> Any:
    """The current host's fleet-wide variable ``name`` (the edge role's default when unset)."""
    return fleet_value(name, host.data.dict())


def host_release() -> str:
    """The current host's OS release (``debian-13``); a release the fleet does not support stops
    the deploy here, naming the host and its OS, before the stage changes anything."""
    os_release = host.get_fact(OsRelease)
    problem = release_error(str(os_release["release"]))
    if problem:
        raise DeployError(f"host {host.name} runs {os_release['pretty_name']}: {problem}")
    return str(os_release["release"])
