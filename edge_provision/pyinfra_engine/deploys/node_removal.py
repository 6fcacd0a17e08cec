"""Take edge nodes out of a kubeadm cluster with pyinfra: playbooks/remove-node.yml's twin
(remove_node.py at the repository's root runs it). On each host named in ``edge_remove_nodes``:
drain through the Eviction API, reset the host, delete the Node; on every other member,
the /etc/hosts block without them."""

from __future__ import annotations

from pyinfra.api.deploy import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.context import host, inventory

from edge_provision.pyinfra_engine.deploys.common import fleet
from edge_provision.pyinfra_engine.deploys.host_prep import etc_hosts_block
from edge_provision.pyinfra_engine.operations import cluster as ops
from edge_provision.role_files import role_vars
from edge_provision.stages.cluster import common, node_removal


def _names() -> list[str]:
    names = node_removal.parse_names(host.data.get("edge_remove_nodes"))
    if not names:
        raise DeployError("edge_remove_nodes: name the nodes to remove, e.g. --data edge_remove_nodes=lab-3")
    unknown = sorted(set(names) - {h.name for h in inventory})
    if unknown:
        raise DeployError(f"edge_remove_nodes: not in the fleet: {', '.join(unknown)}")
    return names


@deploy("Remove nodes")
def remove_nodes() -> None:
    names = _names()
    if host.name not in names:
        v = {**role_vars("host_prep", host.data.dict()), "host_prep_hosts_exclude": names}
        if v["host_prep_manage_etc_hosts"] and set(host.data.get("edge_groups", ())):
            etc_hosts_block(v)
        return
    if "control_plane" in host.data.get("edge_groups", ()):
        raise DeployError(f"host {host.name}: remove-node takes edge nodes out of a kubeadm cluster "
                          "(this host is the control plane)")
    distribution = fleet("edge_cluster_distribution")
    if distribution != "kubeadm":
        raise DeployError(f"host {host.name}: remove-node takes edge nodes out of a kubeadm cluster "
                          f"(this host is in a {distribution} fleet)")
    v = role_vars("node_remove", host.data.dict())
    kubeconfig = f"{host.data.get('inventory_dir')}/{common.KUBECONFIG_FILE}"
    ops.node_drained(
        name="Drain the node through the Eviction API",
        kubeconfig=kubeconfig,
        node=host.name,
        timeout=float(v["node_remove_drain_timeout"]),
        delete_bare_pods=bool(v["node_remove_delete_bare_pods"]),
    )
    kubeadm, cni_conf_file = node_removal.reset_paths(role_vars("kubernetes_node", host.data.dict()))
    ops.node_reset(
        name="Reset the host (kubeadm reset, the kubelet disabled, the pod network's traces removed)",
        kubeadm=kubeadm, cni_conf_file=cni_conf_file,
    )
    ops.node_deleted(name="Delete the Node (after the reset, or its kubelet would register it again)",
                     kubeconfig=kubeconfig, node=host.name)
