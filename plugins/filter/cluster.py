"""Jinja filters of the cluster stage: the same Python the pyinfra deploy calls."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

from edge_provision import cluster
from edge_provision.inventory import node_address


def pod_subnet(name: str, members: list[str], network: str, prefix: int = 24) -> str:
    try:
        return cluster.node_pod_subnet(name, members, network, int(prefix))
    except (cluster.ClusterError, ValueError) as exc:
        raise AnsibleFilterError(f"host {name}: pod subnet: {exc}") from exc


def controller_kubeconfig(admin_conf: str, server: str) -> str:
    try:
        return cluster.controller_kubeconfig(admin_conf, server)
    except cluster.ClusterError as exc:
        raise AnsibleFilterError(f"admin kubeconfig: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "edge_provision_pod_subnet": pod_subnet,
            "edge_provision_kubelet_node_labels": cluster.kubelet_node_labels,
            "edge_provision_controller_kubeconfig": controller_kubeconfig,
            "edge_provision_failure_report": cluster.failure_report,
            "edge_provision_node_address": node_address,
        }
