"""Jinja filters that let Ansible compute values with the same code as the pyinfra deploys."""

from __future__ import annotations

from typing import Any

from edge_provision.artifacts.debian import release_error
from edge_provision.inventory import cluster_members


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "edge_provision_cluster_members": cluster_members,
            "edge_provision_release_error": release_error,
        }
