"""Stage cluster's kubeadm control plane made by pyinfra, then Ansible on the same host.

test_cluster.py makes its control plane with Ansible and joins one node with each engine. Here
pyinfra runs the chain (host_prep, runtime, cluster) on a fresh one-host fleet whose inventory
sets probe failure thresholds (group_vars/all.yml, which both engines read), and its control
plane is checked through the API (tests/checks/cluster.py). Then ansible-playbook runs the same
stages on the same host and must change nothing: both engines reach the same host state. A second
pyinfra run changes nothing either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from edge_provision.stages.cluster import common
from tests.checks import cluster
from tests.lab.conftest import EngineRun, LabFleet

LAB_HOSTS = 1
CONTROL_PLANE = "lab-1"
STAGES = "host_prep,runtime,cluster"
# Not kubeadm's own (startup 24, liveness 8), so the checks see the patches at work.
THRESHOLDS = {"startup": 30, "liveness": 12}


@dataclass
class Runs:
    kubeconfig: Path
    pyinfra: EngineRun
    ansible_after: EngineRun
    pyinfra_again: EngineRun


@pytest.fixture(scope="module")
def runs(lab_fleet: LabFleet) -> Runs:
    group_vars = lab_fleet.inventory / "group_vars"
    group_vars.mkdir(exist_ok=True)
    (group_vars / "all.yml").write_text(
        yaml.safe_dump({"control_plane_kubeadm_probe_failure_thresholds": THRESHOLDS}))
    pyinfra = lab_fleet.pyinfra("--data", f"edge_stages={STAGES}")
    ansible_after = lab_fleet.ansible_playbook("--tags", STAGES)
    pyinfra_again = lab_fleet.pyinfra("--data", f"edge_stages={STAGES}")
    return Runs(lab_fleet.inventory / common.KUBECONFIG_FILE, pyinfra, ansible_after, pyinfra_again)


def test_pyinfra_makes_the_control_plane(runs: Runs) -> None:
    assert runs.pyinfra.ok().changed > 0
    cluster.control_plane_runs_its_static_pods(runs.kubeconfig)
    cluster.admin_kubeconfig_is_private_and_reaches_the_api(runs.kubeconfig, CONTROL_PLANE)


def test_pyinfra_patches_the_probe_thresholds_from_the_inventory(runs: Runs) -> None:
    runs.pyinfra.ok()
    cluster.control_plane_probe_failure_thresholds(runs.kubeconfig, CONTROL_PLANE, THRESHOLDS)


def test_ansible_after_pyinfra_changes_nothing(runs: Runs) -> None:
    assert runs.ansible_after.ok().changed == 0


def test_second_pyinfra_run_changes_nothing(runs: Runs) -> None:
    assert runs.pyinfra_again.ok().changed == 0
