"""Which roles the cluster stage runs on each node group, per distribution: the one table that
playbooks/cluster.yml (through the filter edge_provision_cluster_roles) and the pyinfra deploy
read. A role's own dependencies (roles/*/meta/main.yml, e.g. kubernetes_node under the kubeadm
roles) come with it in both engines."""

from __future__ import annotations

NODE_GROUPS = ("control_plane", "edge")
# kubeadm's control plane; left out where the fleet's is `existing` (made elsewhere).
KUBEADM_CONTROL_PLANE = "control_plane_kubeadm"
ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "kubeadm": {"control_plane": (KUBEADM_CONTROL_PLANE,), "edge": ("node_join_kubeadm",)},
    "k3s": {"control_plane": ("k3s_server",), "edge": ("k3s_agent",)},
    "kubeedge": {"control_plane": (KUBEADM_CONTROL_PLANE, "kubeedge_cloud"), "edge": ("kubeedge_edge",)},
    "openyurt": {"control_plane": (KUBEADM_CONTROL_PLANE,), "edge": ("openyurt_join",)},
}


def cluster_roles(distribution: str, group: str, control_plane: str = "provision") -> list[str]:
    """The roles, in order, that node group ``group`` of a ``distribution`` fleet runs;
    ``control_plane``: the fleet's edge_cluster_control_plane (provision or existing)."""
    try:
        roles = ROLES[distribution][group]
    except KeyError:
        raise ValueError(
            f"no cluster roles for distribution {distribution!r}, group {group!r}"
            f" (distributions: {', '.join(ROLES)}; groups: {', '.join(NODE_GROUPS)})"
        ) from None
    return [r for r in roles if not (r == KUBEADM_CONTROL_PLANE and control_plane == "existing")]
