"""What every stage's pyinfra deploy reads of the current host: fleet-wide variables."""

from __future__ import annotations

from typing import Any

from pyinfra.context import host

from edge_provision.role_files import fleet_value


def fleet(name: str) -> Any:
    """The current host's fleet-wide variable ``name`` (the edge role's default when unset)."""
    return fleet_value(name, host.data.dict())
