"""Verify of scenarios cluster (VMs) and containers (container hosts): the checks the lab tier
runs (tests/checks), on the scenario's hosts.

Host prep and runtime: scenario default's verify module (molecule/default/tests/test_default.py),
which both scenarios' molecule.yml add to the verifier's files. Cluster and workloads: the checks
of tests/checks/cluster.py over the admin kubeconfig the cluster stage wrote beside the inventory,
plus each node's own address (edge_node_ip on VMs, whose user-mode NICs are all 10.0.2.15; the
address the lab gave a container host). The Wasm sample must have run on lab-2, the edge host,
where the inventory (.config/molecule/config.yml) puts its node selector's label.
"""

from __future__ import annotations

import os

import pytest
from kubernetes import client

from edge_provision.stages.cluster import common, kube_api
from tests.checks import cluster
from tests.molecule.scenario import Scenario

SCENARIO = Scenario.current()
HOSTS = SCENARIO.hosts()
NAMES = [h.name for h in HOSTS]
STAGES = os.environ.get("EDGE_MOLECULE_STAGES", "host_prep,runtime,cluster,workloads").split(",")
KUBECONFIG = SCENARIO.inventory / common.KUBECONFIG_FILE
CONTROL_PLANE, EDGE = NAMES[0], NAMES[1]
ARCH = {h.name: h.arch for h in HOSTS}
# The address cluster members know a node by: edge_node_ip where the lab wrote one (VMs), else
# the address the controller reaches it at (ansible_host, a container host's own).
NODE_IP = {h.name: h.node_ip or h.address for h in HOSTS}
USER_MODE_IP = "10.0.2.15"
WASM_SAMPLE_LABEL = "edge-provision.io/wasm-sample"
ENGINES = {name: SCENARIO.wasm_engine(name) for name in NAMES}  # by each platform's Debian release


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.api_client(KUBECONFIG))


def test_every_node_has_its_own_address() -> None:
    assert sorted(NODE_IP) == ["lab-1", "lab-2"]
    assert all(NODE_IP.values()) and len(set(NODE_IP.values())) == 2, NODE_IP
    if SCENARIO.backend == "vm":  # the lab switch's, never the user-mode NIC's
        assert all(h.node_ip and h.node_ip != USER_MODE_IP for h in HOSTS), NODE_IP


def test_the_inventory_puts_the_wasm_sample_label_on_the_edge_host_only() -> None:
    """The inventory Molecule wrote beside the lab's hosts.yml gives lab-2 the label the Wasm
    sample's pods require, keeping the lab's own labels."""
    selector = SCENARIO.group_vars()["workloads_wasm_node_selector"]
    labels = SCENARIO.host_vars(EDGE)["edge_node_labels"]
    assert selector == {WASM_SAMPLE_LABEL: "true"} and labels[WASM_SAMPLE_LABEL] == "true"
    assert labels["device"] == "camera" and labels["edge-provision.io/lab"] == "true"
    assert SCENARIO.host_vars(CONTROL_PLANE) == {}


if "cluster" in STAGES:

    def test_control_plane_runs_its_static_pods() -> None:
        cluster.control_plane_runs_its_static_pods(KUBECONFIG)

    def test_every_node_is_ready_with_the_lab_labels() -> None:
        nodes = cluster.every_node_is_ready_with_the_lab_labels(KUBECONFIG, NAMES)
        for name, node in nodes.items():
            assert node.metadata.labels["kubernetes.io/arch"] == ARCH[name], name

    def test_admin_kubeconfig_is_private_and_reaches_the_api() -> None:
        cluster.admin_kubeconfig_is_private_and_reaches_the_api(KUBECONFIG, CONTROL_PLANE)

    @pytest.mark.parametrize("name", NAMES)
    def test_node_is_known_by_its_own_address(name: str) -> None:
        """On a VM not 10.0.2.15, which every VM has: the kubelet's --node-ip is edge_node_ip."""
        node = _core().read_node(name)
        internal = [a.address for a in node.status.addresses if a.type == "InternalIP"]
        assert internal == [NODE_IP[name]], node.status.addresses
        flags = SCENARIO.host(name).check_output("cat /var/lib/kubelet/kubeadm-flags.env")
        assert f"--node-ip={NODE_IP[name]}" in flags, flags

    def test_api_server_advertises_the_control_planes_own_address() -> None:
        endpoints = _core().read_namespaced_endpoints("kubernetes", "default")
        addresses = [a.ip for s in endpoints.subsets for a in s.addresses]
        assert addresses == [NODE_IP[CONTROL_PLANE]], addresses

    THRESHOLDS = SCENARIO.group_vars().get("control_plane_kubeadm_probe_failure_thresholds")
    if THRESHOLDS:  # scenario cluster's, for its emulated control plane

        def test_control_plane_probes_have_the_scenarios_failure_thresholds() -> None:
            cluster.control_plane_probe_failure_thresholds(KUBECONFIG, CONTROL_PLANE, THRESHOLDS)

    def test_edge_node_reaches_the_api_server_at_the_control_planes_own_address() -> None:
        kubelet_conf = SCENARIO.host(EDGE).check_output("cat /etc/kubernetes/kubelet.conf")
        assert f"server: https://{NODE_IP[CONTROL_PLANE]}:" in kubelet_conf, kubelet_conf


if "workloads" in STAGES:

    def test_every_node_carries_the_wasm_label_recorded_as_owned() -> None:
        cluster.every_node_carries_the_wasm_label_recorded_as_owned(KUBECONFIG, ENGINES)

    def test_wasm_job_ran_on_the_edge_host_and_printed_the_demo() -> None:
        result = cluster.wasm_job_ran_with_the_wasm_handler_and_printed_the_demo(KUBECONFIG, engines=ENGINES)
        assert result["node"] == EDGE, result
        node = _core().read_node(EDGE)
        assert node.metadata.labels["kubernetes.io/arch"] == ARCH[EDGE] == SCENARIO.arch(EDGE)
        assert node.metadata.labels[WASM_SAMPLE_LABEL] == "true"

    def test_wasm_deployment_keeps_running_on_the_edge_host() -> None:
        nodes = cluster.wasm_deployment_keeps_running_with_the_wasm_handler(KUBECONFIG, engines=ENGINES)
        assert nodes == [EDGE]

    def test_only_the_edge_host_carries_the_wasm_sample_label() -> None:
        carrying = [n.metadata.name for n in _core().list_node(label_selector=WASM_SAMPLE_LABEL).items]
        assert carrying == [EDGE]

    def test_container_sample_runs_only_on_the_camera_node() -> None:
        cluster.container_sample_runs_only_on(KUBECONFIG, EDGE)

