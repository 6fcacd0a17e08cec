"""Stage workloads for pyinfra: the same work as roles/workloads, from the same defaults and
templates, through the same Python (edge_provision.stages.workloads)."""

from __future__ import annotations

import json

from pyinfra.api.deploy import deploy
from pyinfra.context import host

from edge_provision.pyinfra_engine.deploys.common import fleet
from edge_provision.pyinfra_engine.facts.common import CommandOutput
from edge_provision.pyinfra_engine.operations import workloads as ops
from edge_provision.role_files import role_path
from edge_provision.stages.cluster import common
from edge_provision.stages.workloads import node_metadata, samples


def _kubeconfig() -> str:
    return f"{host.data.get('inventory_dir')}/{common.KUBECONFIG_FILE}"


@deploy("Workloads")
def workloads_stage() -> None:
    """Every node reconciles its own labels; then the control plane host applies and verifies
    the cluster-wide manifests (after every node's labels: the operation is shared by all hosts)."""
    v = samples.role_variables(host.data.dict())
    engine = fleet("edge_wasm_engine")
    labels = dict(fleet("edge_node_labels") or {})
    if str(v["workloads_detect_devices"]).lower() in ("true", "yes", "1", "on"):  # --data gives strings
        script = role_path("workloads", "files", "devices.sh").read_text()
        detected = json.loads(host.get_fact(CommandOutput, argv=["sh", "-c", script, "devices"]) or "{}")
        labels = {**detected, **labels}  # inventory labels win
    wanted = node_metadata.wanted_labels(labels, v, engine, fleet("edge_wasm_handler"))
    crun = host.get_fact(CommandOutput, argv=[fleet("edge_wasm_crun_path"), "--version"])
    ops.node_labels(
        name="Reconcile the labels and taints edge-provision owns",
        kubeconfig=_kubeconfig(),
        node=host.name,
        wanted=wanted,
        taints=list(fleet("edge_node_taints") or []),
        crun=node_metadata.crun_summary(crun or ""),
    )
    if "control_plane" in (host.data.get("edge_groups") or []):
        ops.applied(name="Apply the RuntimeClass and the samples", kubeconfig=_kubeconfig(), variables=v)
        ops.misplaced_replaced(
            name="Replace container-sample pods on nodes that lost its label",
            kubeconfig=_kubeconfig(),
            variables=v,
        )
        ops.verified(name="Verify the samples", kubeconfig=_kubeconfig(), variables=v)
