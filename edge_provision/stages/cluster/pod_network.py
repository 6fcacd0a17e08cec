"""The pod network of a kubeadm cluster: flannel's namespace, RBAC, configuration and DaemonSet,
rendered from the control_plane_kubeadm role's template (the same bytes for both engines) and
applied server-side through the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from edge_provision.role_files import render_template, role_defaults
from edge_provision.stages.cluster import kube_api

TEMPLATE = "pod-network.yaml.j2"
# The role variables the template reads, with the role whose defaults hold each.
SETTINGS = {
    "kubernetes_node_pod_network": "kubernetes_node",
    "kubernetes_node_flannel_backend": "kubernetes_node",
    "control_plane_kubeadm_pod_network_namespace": "control_plane_kubeadm",
}


def settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The template's variables: each role default, overridden by the fleet's value."""
    return {name: overrides.get(name, role_defaults(role)[name]) for name, role in SETTINGS.items()}


def manifests(image: str, overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """flannel's objects, with ``image`` as the flanneld image (its reference as imported)."""
    values = settings(overrides)
    values["pod_network"] = {
        "image": image,
        "namespace": values["control_plane_kubeadm_pod_network_namespace"],
    }
    text = render_template("control_plane_kubeadm", TEMPLATE, values)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def apply(kubeconfig: Path, image: str, overrides: Mapping[str, Any], *, dry_run: bool = False) -> list[str]:
    """Server-side apply the pod network; "<Kind>/<name>" of what changed (or would)."""
    return kube_api.apply(kubeconfig, manifests(image, overrides), dry_run=dry_run)
