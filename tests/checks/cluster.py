"""Stages cluster and workloads on any fleet's cluster, through its admin kubeconfig (and node
names): the control plane's static pods, the nodes Ready with the lab's labels, the kubeconfig,
kubeadm's probe patches, the Wasm label and samples. The lab's fleets run the Wasm engine of
each host's release (wasmtime on Debian 12, WasmEdge on Debian 13: ``engines`` names the nodes
that do not run wasmtime) and label their first edge host device=camera."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

from edge_provision.artifacts.builders.images import demo_output_problems
from edge_provision.role_files import role_defaults
from edge_provision.stages.cluster import kube_api
from edge_provision.stages.workloads import node_metadata, samples

WORKLOADS = samples.role_variables({"edge_wasm_engine": "wasmtime"})
CONTROL_PLANE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def _core(kubeconfig: Path) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.api_client(kubeconfig))


def control_plane_runs_its_static_pods(kubeconfig: Path) -> None:
    pods = _core(kubeconfig).list_namespaced_pod("kube-system").items
    running = {p.metadata.labels.get("component"): p.status.phase for p in pods if p.metadata.labels}
    for component in CONTROL_PLANE_COMPONENTS:
        assert running.get(component) == "Running", running
    images = {c.image for p in pods for c in p.spec.containers}
    assert all(i.startswith("edge-provision.local/") for i in images), images


def every_node_is_ready_with_the_lab_labels(kubeconfig: Path, names: Sequence[str]) -> dict[str, client.V1Node]:
    """Exactly ``names`` are nodes, all Ready with the lab's labels: the first is the control
    plane, the second (the first edge host) carries device=camera. Returns the nodes by name."""
    nodes = {n.metadata.name: n for n in _core(kubeconfig).list_node().items}
    assert sorted(nodes) == sorted(names)
    for name, node in nodes.items():
        ready = [c.status for c in node.status.conditions if c.type == "Ready"]
        assert ready == ["True"], (name, node.status.conditions)
        assert node.metadata.labels.get("edge-provision.io/lab") == "true", name
    assert nodes[names[1]].metadata.labels.get("device") == "camera"
    assert "node-role.kubernetes.io/control-plane" in nodes[names[0]].metadata.labels
    return nodes


def admin_kubeconfig_is_private_and_reaches_the_api(kubeconfig: Path, control_plane: str) -> None:
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert kube_api.node_status(kubeconfig, control_plane)["ready"]


def control_plane_probe_failure_thresholds(kubeconfig: Path, control_plane: str, wanted: Mapping[str, int]) -> None:
    """kubeadm's patches (control_plane_kubeadm_probe_failure_thresholds) reached the static
    pods: the mirror pods of the API server, controller manager and scheduler carry ``wanted``."""
    assert wanted, "no thresholds to check"
    core = _core(kubeconfig)
    for component in CONTROL_PLANE_COMPONENTS:
        container = core.read_namespaced_pod(f"{component}-{control_plane}", "kube-system").spec.containers[0]
        found = {"startup": container.startup_probe.failure_threshold,
                 "liveness": container.liveness_probe.failure_threshold}
        assert {k: found[k] for k in wanted} == wanted, component


def _engine(engines: Mapping[str, str] | None, node: str) -> str:
    """The Wasm engine ``node`` runs: its entry in ``engines``, else the lab's Debian 12 one."""
    return (engines or {}).get(node, "wasmtime")


def every_node_carries_the_wasm_label_recorded_as_owned(kubeconfig: Path,
                                                        engines: Mapping[str, str] | None = None) -> None:
    for node in _core(kubeconfig).list_node().items:
        name = node.metadata.name
        assert node.metadata.labels.get("edge-provision.io/wasm") == _engine(engines, name), name
        assert node.metadata.labels.get("edge-provision.io/wasm-handler") == "crun-wasm", name
        owned = node.metadata.annotations[node_metadata.MANAGED_LABELS_ANNOTATION].split(",")
        assert {"edge-provision.io/wasm", "edge-provision.io/wasm-handler", "edge-provision.io/lab"} <= set(owned)


def wasm_job_ran_with_the_wasm_handler_and_printed_the_demo(
    kubeconfig: Path, workloads: Mapping[str, Any] = WORKLOADS, engines: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The sample Wasm Job succeeded through the RuntimeClass on a node with the Wasm label and
    logged the demo's lines; returns its result (``node``: where its pod ran)."""
    result = samples.job_result(kubeconfig, "default", workloads["workloads_wasm_job"], 120)
    assert result["succeeded"] and result["runtime_class"] == "crun-wasm", result
    rc = client.NodeV1Api(kube_api.api_client(kubeconfig)).read_runtime_class("crun-wasm")
    assert rc.handler == role_defaults("edge")["edge_wasm_handler"]
    node = _core(kubeconfig).read_node(result["node"])
    assert node.metadata.labels["edge-provision.io/wasm"] == _engine(engines, result["node"])
    assert demo_output_problems(result["log"], args=["/wasi_demo.wasm", "1", "2", "3"]) == [], result["log"]
    assert "A_TEST: hello" in result["log"].splitlines()
    return result


def wasm_deployment_keeps_running_with_the_wasm_handler(
    kubeconfig: Path, workloads: Mapping[str, Any] = WORKLOADS, engines: Mapping[str, str] | None = None
) -> list[str]:
    """The long-running Wasm sample: Running (not Completed) under the Wasm handler on nodes with
    the Wasm label, never restarted, its log the demo followed by heartbeats; returns its nodes."""
    pods = samples.deployment_pods(kubeconfig, "default", workloads["workloads_wasm_deployment"], 120, logs=True)
    assert len(pods) == workloads["workloads_wasm_replicas"], pods
    core = _core(kubeconfig)
    for pod in pods:
        assert pod["runtime_class"] == "crun-wasm", pod
        assert core.read_node(pod["node"]).metadata.labels["edge-provision.io/wasm"] == _engine(engines, pod["node"])
        assert samples.wasm_output_problems(pod["log"], workloads, heartbeat=True) == [], pod["log"]
        status = core.read_namespaced_pod(pod["name"], "default").status
        assert status.phase == "Running" and status.container_statuses[0].restart_count == 0, status
    return [str(pod["node"]) for pod in pods]


def wasm_job_runs_on(kubeconfig: Path, node: str, engine: str, workloads: Mapping[str, Any] = WORKLOADS) -> float:
    """The sample Wasm Job, pinned to ``node`` (a copy named after it), succeeds there through the
    RuntimeClass on a node labelled with ``engine`` and logs the demo's lines; returns the seconds
    from its creation to its pod's success. The copy is deleted afterwards."""
    from kubernetes import client as k8s

    [job] = [d for d in samples.manifests(workloads) if d["kind"] == "Job"]
    job = copy.deepcopy(job)
    name = f"{job['metadata']['name']}-{node}"
    job["metadata"]["name"] = name
    job["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    namespace = job["metadata"]["namespace"]
    api = kube_api.api_client(kubeconfig)
    assert _core(kubeconfig).read_node(node).metadata.labels["edge-provision.io/wasm"] == engine
    batch = k8s.BatchV1Api(api)
    started = time.monotonic()
    batch.create_namespaced_job(namespace, job)
    try:
        result = samples.job_result(kubeconfig, namespace, name, 180)
        seconds = time.monotonic() - started
        assert result["succeeded"] and result["node"] == node, result
        assert result["runtime_class"] == workloads["workloads_runtime_class"], result
        args = ["/wasi_demo.wasm", *workloads["workloads_wasm_args"]]
        assert demo_output_problems(result["log"], args=args) == [], result["log"]
    finally:
        batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
    return seconds


def container_sample_runs_only_on(kubeconfig: Path, node: str) -> None:
    assert samples.deployment_nodes(kubeconfig, "default", "camera-app", 120) == [node]
