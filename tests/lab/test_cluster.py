"""Stage cluster on three fresh lab hosts: a real kubeadm control plane and two edge nodes that
join with bootstrap tokens, one through each engine (the whole chain: host_prep, runtime,
cluster).

lab-1 (control plane) and lab-2 are provisioned by Ansible, lab-3 by pyinfra. Each engine first
tries a join with a token the cluster does not know, which must fail with kubeadm's reason and
leave the node clean, then joins for real at -vvv; no token of the cluster may appear in any of
that output. A second run of each engine changes nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from edge_provision import cluster
from edge_provision.roles import role_defaults
from tests.lab.conftest import EngineRun, LabFleet

LAB_HOSTS = 3
UNKNOWN_TOKEN = "abcdef.0123456789abcdef"  # well formed, never made in this cluster
JOIN_CONFIG = role_defaults("node_join_kubeadm")["node_join_kubeadm_config_file"]
# The kubelet's kernel tunables; the lab keeps it from writing the machine's (see lab/image.py).
KUBELET_TUNABLES = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")
BAD_TOKEN_ARGS = ("node_join_kubeadm_token=" + UNKNOWN_TOKEN, "node_join_kubeadm_discovery_timeout=15s")


@dataclass
class ClusterRuns:
    fleet: LabFleet
    kubeconfig: Path
    machine_tunables_before: dict[str, str]
    bad_ansible: EngineRun
    bad_pyinfra: EngineRun
    clean_after_bad: dict[str, dict[str, bool]]
    ansible: EngineRun
    pyinfra: EngineRun


def _machine_tunables() -> dict[str, str]:
    return {key: Path("/proc/sys", key).read_text().strip() for key in KUBELET_TUNABLES}


def _node_files(fleet: LabFleet, name: str) -> dict[str, bool]:
    host = fleet.testinfra(name)
    return {
        "kubelet.conf": host.file("/etc/kubernetes/kubelet.conf").exists,
        "join config": host.file(JOIN_CONFIG).exists,
        "kubelet running": host.service("kubelet").is_running,
    }


@pytest.fixture(scope="module")
def runs(lab_fleet: LabFleet) -> Iterator[ClusterRuns]:
    before = _machine_tunables()
    ansible_hosts = ("--limit", "control_plane,lab-2")
    bad_ansible = lab_fleet.ansible_playbook(
        *ansible_hosts, *(arg for extra in BAD_TOKEN_ARGS for arg in ("-e", extra))
    )
    bad_pyinfra = lab_fleet.pyinfra(
        "--limit", "lab-3", *(arg for extra in BAD_TOKEN_ARGS for arg in ("--data", extra))
    )
    clean = {name: _node_files(lab_fleet, name) for name in ("lab-2", "lab-3")}
    ansible = lab_fleet.ansible_playbook("-vvv", *ansible_hosts)
    pyinfra = lab_fleet.pyinfra("-vvv", "--limit", "lab-3")
    yield ClusterRuns(
        lab_fleet, lab_fleet.inventory / cluster.KUBECONFIG_FILE, before,
        bad_ansible, bad_pyinfra, clean, ansible, pyinfra,
    )


def _core(runs: ClusterRuns) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client(runs.kubeconfig))


def test_both_engines_bring_up_the_cluster(runs: ClusterRuns) -> None:
    runs.ansible.ok()
    runs.pyinfra.ok()


def test_control_plane_runs_its_static_pods(runs: ClusterRuns) -> None:
    pods = _core(runs).list_namespaced_pod("kube-system").items
    running = {p.metadata.labels.get("component"): p.status.phase for p in pods if p.metadata.labels}
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert running.get(component) == "Running", running
    images = {c.image for p in pods for c in p.spec.containers}
    assert all(i.startswith("edge-provision.local/") for i in images), images


def test_every_node_is_ready_with_its_inventory_labels(runs: ClusterRuns) -> None:
    nodes = {n.metadata.name: n for n in _core(runs).list_node().items}
    assert sorted(nodes) == ["lab-1", "lab-2", "lab-3"]
    for name, node in nodes.items():
        ready = [c.status for c in node.status.conditions if c.type == "Ready"]
        assert ready == ["True"], (name, node.status.conditions)
        assert node.metadata.labels.get("edge-provision.io/lab") == "true", name
    assert nodes["lab-2"].metadata.labels.get("device") == "camera"
    assert "device" not in nodes["lab-3"].metadata.labels
    assert "node-role.kubernetes.io/control-plane" in nodes["lab-1"].metadata.labels


def test_admin_kubeconfig_is_private_and_reaches_the_api(runs: ClusterRuns) -> None:
    assert runs.kubeconfig.stat().st_mode & 0o777 == 0o600
    assert cluster.node_status(runs.kubeconfig, "lab-1")["ready"]


def test_bad_token_join_fails_clearly_and_leaves_the_node_clean(runs: ClusterRuns) -> None:
    for run, host in ((runs.bad_ansible, "lab-2"), (runs.bad_pyinfra, "lab-3")):
        assert run.result.returncode != 0, run.output[-3000:]
        assert f"host {host}:" in run.output and "the node was reset" in run.output, run.output[-3000:]
        assert "couldn't validate the identity of the API Server" in run.output, run.output[-3000:]
    for host, files in runs.clean_after_bad.items():
        assert files == {"kubelet.conf": False, "join config": False, "kubelet running": False}, host


def test_join_tokens_appear_in_no_output(runs: ClusterRuns) -> None:
    """Every bootstrap token of the cluster (kubeadm init's and one per join) is looked up through
    the API and searched for in the -vvv output of both engines."""
    secrets = _core(runs).list_namespaced_secret(
        "kube-system", field_selector="type=bootstrap.kubernetes.io/token"
    ).items
    tokens = []
    for secret in secrets:
        data = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
        tokens.append((data["token-id"], data["token-secret"]))
    assert len(tokens) >= 3, "expected kubeadm init's token and one per joined node"
    outputs = {"ansible -vvv": runs.ansible.output, "pyinfra -vvv": runs.pyinfra.output,
               "ansible (bad token)": runs.bad_ansible.output, "pyinfra (bad token)": runs.bad_pyinfra.output}
    assert len(runs.ansible.output) > 100_000 and len(runs.pyinfra.output) > 20_000
    for _token_id, token_secret in tokens:
        for what, output in outputs.items():
            assert token_secret not in output, f"a token secret is in the {what} output"


def test_join_configuration_is_gone_and_its_directory_private(runs: ClusterRuns) -> None:
    for name in ("lab-2", "lab-3"):
        host = runs.fleet.testinfra(name)
        assert not host.file(JOIN_CONFIG).exists
        assert host.file(str(Path(JOIN_CONFIG).parent)).mode == 0o700


def test_the_machine_keeps_its_kernel_tunables(runs: ClusterRuns) -> None:
    assert _machine_tunables() == runs.machine_tunables_before
    assert runs.fleet.sh("lab-2", "cat /proc/sys/kernel/panic").strip() == "10"  # what the kubelet saw


def test_second_ansible_run_changes_nothing(runs: ClusterRuns) -> None:
    assert runs.fleet.ansible_playbook("--limit", "control_plane,lab-2").ok().changed == 0


def test_second_pyinfra_run_changes_nothing(runs: ClusterRuns) -> None:
    assert runs.fleet.pyinfra("--limit", "lab-3").ok().changed == 0
