"""Verify of scenario cluster: the lab tier's own checks (tests/lab), run on the scenario's VMs.

Host prep and runtime: the checks scenario default runs (its module, imported). Cluster and
workloads: the check functions of tests/lab/test_cluster.py over the admin kubeconfig the
cluster stage wrote beside the inventory, plus what only VMs have: every VM's user-mode NIC is
10.0.2.15, so each node must be known by its address on the lab switch (edge_node_ip). The
Wasm sample must have run on lab-2, the edge VM (arm64), where the scenario's inventory puts
its node selector's label.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from kubernetes import client

from edge_provision import cluster
from tests.lab import test_cluster as lab_cluster
from tests.lab.conftest import LabFleet

SCENARIOS = Path(__file__).resolve().parents[2]


def _default_verify() -> ModuleType:
    """Scenario default's verify module (its file; `molecule` is the installed package's name)."""
    spec = importlib.util.spec_from_file_location(
        "molecule_default_verify", SCENARIOS / "default" / "tests" / "test_default.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The host_prep and runtime checks of scenario default, on these VMs: pytest collects its test
# functions and its fleet fixture as this module's own.
_DEFAULT = _default_verify()
globals().update({k: v for k, v in vars(_DEFAULT).items() if k.startswith("test_")})
fleet = _DEFAULT.fleet
HOSTS, INVENTORY, NAMES = _DEFAULT.HOSTS, _DEFAULT.INVENTORY, _DEFAULT.NAMES

STAGES = os.environ.get("EDGE_MOLECULE_STAGES", "host_prep,runtime,cluster,workloads").split(",")
KUBECONFIG = INVENTORY / cluster.KUBECONFIG_FILE
CONTROL_PLANE, EDGE = NAMES[0], NAMES[1]
ARCH = {h.name: h.arch for h in HOSTS}
NODE_IP = {h.name: h.node_ip for h in HOSTS}
USER_MODE_IP = "10.0.2.15"
WASM_SAMPLE_LABEL = "edge-provision.io/wasm-sample"


def _scenario() -> dict[str, object]:
    doc = yaml.safe_load((Path(__file__).resolve().parent.parent / "molecule.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client(KUBECONFIG))


def test_every_vm_has_its_own_lab_switch_address() -> None:
    assert sorted(NODE_IP) == ["lab-1", "lab-2"]
    assert all(ip and ip != USER_MODE_IP for ip in NODE_IP.values()), NODE_IP
    assert len(set(NODE_IP.values())) == 2, NODE_IP


def test_the_inventory_puts_the_wasm_sample_label_on_the_edge_vm_only() -> None:
    """The scenario's host_vars (beside the lab's hosts.yml) give lab-2 the label the Wasm
    sample's pod requires, keeping the lab's own labels."""
    inventory = _scenario()["provisioner"]
    assert isinstance(inventory, dict)
    selector = inventory["inventory"]["group_vars"]["all"]["workloads_wasm_node_selector"]
    labels = inventory["inventory"]["host_vars"][EDGE]["edge_node_labels"]
    assert selector == {WASM_SAMPLE_LABEL: "true"} and labels[WASM_SAMPLE_LABEL] == "true"
    assert labels["device"] == "camera" and labels["edge-provision.io/lab"] == "true"
    assert CONTROL_PLANE not in inventory["inventory"]["host_vars"]


if "cluster" in STAGES:

    def test_control_plane_runs_its_static_pods() -> None:
        lab_cluster.check_control_plane_runs_its_static_pods(KUBECONFIG)

    def test_every_node_is_ready_with_the_lab_labels() -> None:
        nodes = lab_cluster.check_every_node_is_ready_with_the_lab_labels(KUBECONFIG, NAMES)
        for name, node in nodes.items():
            assert node.metadata.labels["kubernetes.io/arch"] == ARCH[name], name

    def test_admin_kubeconfig_is_private_and_reaches_the_api() -> None:
        lab_cluster.check_admin_kubeconfig_is_private_and_reaches_the_api(KUBECONFIG, CONTROL_PLANE)

    @pytest.mark.parametrize("name", NAMES)
    def test_node_is_known_by_its_lab_switch_address(fleet: LabFleet, name: str) -> None:
        """Not 10.0.2.15, which every VM has: the kubelet's --node-ip is edge_node_ip."""
        node = _core().read_node(name)
        internal = [a.address for a in node.status.addresses if a.type == "InternalIP"]
        assert internal == [NODE_IP[name]], node.status.addresses
        flags = fleet.sh(name, "cat /var/lib/kubelet/kubeadm-flags.env")
        assert f"--node-ip={NODE_IP[name]}" in flags, flags

    def test_api_server_advertises_the_control_plane_lab_switch_address() -> None:
        endpoints = _core().read_namespaced_endpoints("kubernetes", "default")
        addresses = [a.ip for s in endpoints.subsets for a in s.addresses]
        assert addresses == [NODE_IP[CONTROL_PLANE]], addresses

    def test_control_plane_probes_have_the_scenarios_failure_thresholds() -> None:
        provisioner = _scenario()["provisioner"]
        assert isinstance(provisioner, dict)
        fleet_vars = provisioner["inventory"]["group_vars"]["all"]
        lab_cluster.check_control_plane_probe_failure_thresholds(
            KUBECONFIG, CONTROL_PLANE, fleet_vars["control_plane_kubeadm_probe_failure_thresholds"])

    def test_edge_node_reaches_the_api_server_over_the_lab_switch(fleet: LabFleet) -> None:
        kubelet_conf = fleet.sh(EDGE, "cat /etc/kubernetes/kubelet.conf")
        assert f"server: https://{NODE_IP[CONTROL_PLANE]}:" in kubelet_conf, kubelet_conf


if "workloads" in STAGES:

    def test_every_node_carries_the_wasm_label_recorded_as_owned() -> None:
        lab_cluster.check_every_node_carries_the_wasm_label_recorded_as_owned(KUBECONFIG)

    def test_wasm_job_ran_on_the_edge_vm_and_printed_the_demo() -> None:
        result = lab_cluster.check_wasm_job_ran_with_the_wasm_handler_and_printed_the_demo(KUBECONFIG)
        assert result["node"] == EDGE, result
        node = _core().read_node(EDGE)
        assert node.metadata.labels["kubernetes.io/arch"] == ARCH[EDGE] == _scenario_arch(EDGE)
        assert node.metadata.labels[WASM_SAMPLE_LABEL] == "true"

    def test_wasm_deployment_keeps_running_on_the_edge_vm() -> None:
        assert lab_cluster.check_wasm_deployment_keeps_running_with_the_wasm_handler(KUBECONFIG) == [EDGE]

    def test_only_the_edge_vm_carries_the_wasm_sample_label() -> None:
        carrying = [n.metadata.name for n in _core().list_node(label_selector=WASM_SAMPLE_LABEL).items]
        assert carrying == [EDGE]

    def test_container_sample_runs_only_on_the_camera_node() -> None:
        lab_cluster.check_container_sample_runs_only_on(KUBECONFIG, EDGE)


def _scenario_arch(name: str) -> str:
    platforms = _scenario()["platforms"]
    assert isinstance(platforms, list)
    return str(next(p["arch"] for p in platforms if p["name"] == name))
