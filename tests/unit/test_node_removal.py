"""Taking a node out of a kubeadm cluster: which pods a drain evicts, the names given on the
command line, and the host's reset (both engines run the same commands)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from edge_provision.role_files import role_defaults
from edge_provision.stages.cluster import node_removal
from plugins.filter.cluster import FilterModule


def _pod(owner: str | None = None, *, mirror: bool = False, phase: str = "Running") -> client.V1Pod:
    refs = [client.V1OwnerReference(api_version="apps/v1", kind=owner or "", name="x", uid="u", controller=True)]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", namespace="n", owner_references=refs if owner else None,
                                     annotations={node_removal.MIRROR_ANNOTATION: "h"} if mirror else None),
        status=client.V1PodStatus(phase=phase),
    )


def test_a_drain_evicts_what_a_controller_starts_elsewhere_and_leaves_the_rest() -> None:
    assert node_removal._kind(_pod("ReplicaSet"), False) == "evict"
    assert node_removal._kind(_pod("Job"), False) == "evict"
    assert node_removal._kind(_pod("DaemonSet"), True) == "daemonset"  # kube-proxy, flannel
    assert node_removal._kind(_pod("Node", mirror=True), True) == "static"
    assert node_removal._kind(_pod(None), False) == "bare"
    assert node_removal._kind(_pod(None), True) == "evict"
    assert node_removal._kind(_pod(None, phase="Succeeded"), False) == "evict"  # nothing runs


@pytest.mark.parametrize(("given", "names"), [
    ("lab-3", ["lab-3"]), ("lab-3, lab-4,", ["lab-3", "lab-4"]), (["lab-3"], ["lab-3"]), ("", []), (None, []),
])
def test_the_nodes_to_remove_come_as_a_comma_list_or_a_list(given: object, names: list[str]) -> None:
    assert node_removal.parse_names(given) == names


def test_the_reset_runs_kubeadm_reset_then_clears_what_it_leaves() -> None:
    node = role_defaults("kubernetes_node")
    kubeadm, cni = node_removal.reset_paths(node)
    assert kubeadm == f"{node['kubernetes_node_bin_dir']}/kubeadm"
    commands = node_removal.reset_commands(kubeadm, cni)
    assert commands[:2] == [f"{kubeadm} reset --force", "systemctl disable --now kubelet"]
    assert f"rm -rf {cni} /run/flannel" in commands
    assert any("ip link delete flannel.1" in c for c in commands)
    script = node_removal.reset_script(kubeadm, cni)
    assert script.startswith("set -e; if [ -e /etc/kubernetes/kubelet.conf ]")
    assert node_removal.RESET in script and node_removal.CLEAN in script
    # Ansible's filter renders the same script from a host's variables (a fleet's override wins).
    filters = FilterModule().filters()
    assert filters["edge_provision_node_reset_script"]({}) == script
    moved = filters["edge_provision_node_reset_script"]({"kubernetes_node_bin_dir": "/opt/k8s"})
    assert "/opt/k8s/kubeadm reset --force" in moved


def test_a_left_cni_network_alone_makes_a_reset_needed(tmp_path: Path) -> None:
    """(A clean host, and the second run that finds one, are the lab's: test_cluster.)"""
    present = tmp_path / "10-flannel.conflist"
    present.write_text("{}")
    needed = subprocess.run(["sh", "-c", node_removal.reset_check(str(present), links=())],
                            capture_output=True, text=True, check=False)
    assert needed.stdout.strip() == "needed"
