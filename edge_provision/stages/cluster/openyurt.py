"""OpenYurt: ``yurtadm join <server>:6443 --token --node-type=edge --discovery-token-ca-cert-hash
--cri-socket --node-labels`` and its reset; the node joins its pool by the label
``apps.openyurt.io/nodepool`` (OpenYurt >= 1.7), set through the API. The bootstrap token and CA
hash come as kubeadm joins get them (edge_provision.stages.cluster.kube_api).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge_provision.stages.cluster import common
from edge_provision.stages.cluster.common import DistributionError

OPENYURT_NODEPOOL_LABEL = "apps.openyurt.io/nodepool"


def yurtadm_join(
    *, yurtadm: str, server: str, token: str, ca_cert_hash: str, cri_socket: str, labels: Mapping[str, Any],
    node_name: str, extra: Sequence[str] = (),
) -> list[str]:
    argv = [
        yurtadm, "join", server, f"--token={token}", "--node-type=edge",
        f"--discovery-token-ca-cert-hash={ca_cert_hash}", f"--cri-socket={cri_socket}",
        f"--node-name={node_name}",
    ]
    own = common.kubelet_node_labels(labels)
    if own:
        argv.append(f"--node-labels={own}")
    return [*argv, *extra]


def yurtadm_reset(yurtadm: str) -> list[str]:
    return [yurtadm, "reset", "--force"]


def openyurt_labels(labels: Mapping[str, Any], pool: str) -> dict[str, str]:
    """What the API sets on an OpenYurt edge node: its pool label (which converts it, 1.7) and
    the inventory labels the kubelet may not set itself."""
    if not pool:
        raise DistributionError("openyurt_join_nodepool is empty: an edge node needs a node pool")
    return common.api_labels(labels, {OPENYURT_NODEPOOL_LABEL: pool})
