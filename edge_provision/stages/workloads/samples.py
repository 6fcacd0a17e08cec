"""The RuntimeClass of the Wasm handler and the sample workloads: rendered from the workloads role's
templates (the same bytes for both engines), applied server-side, the container sample's
misplaced pods replaced, and everything verified running (the Wasm demo's every output line).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from edge_provision.role_files import render_template, role_defaults
from edge_provision.stages.cluster import kube_api

MANIFESTS = (
    "runtimeclass.yaml.j2",
    "wasi-demo-job.yaml.j2",
    "wasi-demo-deployment.yaml.j2",
    "camera-deployment.yaml.j2",
)


class WorkloadError(RuntimeError):
    pass


def image_references(variables: Mapping[str, Any]) -> dict[str, str]:
    """The sample images: the configured ones, else those the runtime stage imported."""
    from edge_provision.artifacts.builders import images

    wasm = str(variables.get("workloads_wasm_image") or images.wasi_demo_reference())
    container = str(variables.get("workloads_container_image") or "")
    if not container:
        container = images.image_info(images.build_busybox_image()).reference
    return {"wasm": wasm, "container": container}


def manifests(variables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The role's manifests rendered with ``variables`` (role defaults + fleet values)."""
    values = {**variables, "workloads_images": image_references(variables)}
    docs: list[dict[str, Any]] = []
    for name in MANIFESTS:
        docs.extend(d for d in yaml.safe_load_all(render_template("workloads", name, values)) if d)
    return docs


def misplaced_pods(kubeconfig: Path, variables: Mapping[str, Any], *, delete: bool = False) -> list[str]:
    """Pods of the container sample on nodes that no longer carry its node label (node affinity
    is only checked at scheduling): with ``delete``, delete them so they are placed again."""
    from kubernetes import client

    ns = str(variables["workloads_namespace"])
    wanted = {str(k): str(v) for k, v in variables["workloads_container_node_label"].items()}
    name = str(variables["workloads_container_deployment"])
    with kube_api.api_client(kubeconfig) as api:
        core: Any = client.CoreV1Api(api)
        labels = {n.metadata.name: n.metadata.labels or {} for n in core.list_node().items}
        pods = core.list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/name={name}").items
        misplaced = [
            p.metadata.name
            for p in pods
            if p.spec.node_name
            and not p.metadata.deletion_timestamp
            and any(labels.get(p.spec.node_name, {}).get(k) != v for k, v in wanted.items())
        ]
        if delete:
            for pod in misplaced:
                try:
                    core.delete_namespaced_pod(pod, ns)
                except client.ApiException as exc:
                    if exc.status != 404:  # gone already (or by a retried delete that had landed)
                        raise
    return misplaced


def job_result(kubeconfig: Path, namespace: str, job: str, timeout: float) -> dict[str, Any]:
    """Wait for Job ``job`` to finish; its pod's node, runtime class, phase and log."""
    from kubernetes import client

    deadline = time.monotonic() + timeout
    with kube_api.api_client(kubeconfig) as api:
        core: Any = client.CoreV1Api(api)
        batch: Any = client.BatchV1Api(api)
        while True:
            status = batch.read_namespaced_job(job, namespace).status
            if status.succeeded or status.failed or time.monotonic() > deadline:
                break
            time.sleep(2)
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        if not pods:
            raise WorkloadError(f"Job {namespace}/{job} has no pod after {timeout:.0f} s")
        pod = pods[-1]
        log = (
            core.read_namespaced_pod_log(pod.metadata.name, namespace)
            if pod.status.phase in ("Succeeded", "Failed")
            else ""
        )
    return {
        "succeeded": bool(status.succeeded),
        "node": pod.spec.node_name,
        "phase": pod.status.phase,
        "runtime_class": pod.spec.runtime_class_name,
        "log": log,
    }


def deployment_pods(
    kubeconfig: Path, namespace: str, deployment: str, timeout: float, *, logs: bool = False
) -> list[dict[str, Any]]:
    """Wait until Deployment ``deployment`` is fully available; its running pods (name, node,
    runtime class, and with ``logs`` the log), by node."""
    from kubernetes import client

    deadline = time.monotonic() + timeout
    with kube_api.api_client(kubeconfig) as api:
        apps: Any = client.AppsV1Api(api)
        core: Any = client.CoreV1Api(api)
        while True:
            dep = apps.read_namespaced_deployment(deployment, namespace)
            want = dep.spec.replicas or 0
            status = dep.status
            settled = (
                status.observed_generation == dep.metadata.generation
                and (status.updated_replicas or 0) == want
                and (status.available_replicas or 0) == want
                and (status.replicas or 0) == want
            )
            if settled:
                break
            if time.monotonic() > deadline:
                raise WorkloadError(
                    f"Deployment {namespace}/{deployment} not available after {timeout:.0f} s"
                )
            time.sleep(2)
        selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
        pods = [
            {
                "name": p.metadata.name,
                "node": p.spec.node_name,
                "runtime_class": p.spec.runtime_class_name,
            }
            for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        ]
        for pod in pods if logs else ():
            pod["log"] = core.read_namespaced_pod_log(pod["name"], namespace)
    return sorted(pods, key=lambda p: (str(p["node"]), str(p["name"])))


def deployment_nodes(kubeconfig: Path, namespace: str, deployment: str, timeout: float) -> list[str]:
    """Wait until Deployment ``deployment`` is fully available; the nodes its pods run on."""
    return [str(p["node"]) for p in deployment_pods(kubeconfig, namespace, deployment, timeout)]


def wasm_output_problems(log: str, variables: Mapping[str, Any], *, heartbeat: bool = False) -> list[str]:
    """What a Wasm sample's log lacks: every demo line for the sample's arguments (then the
    heartbeat lines with ``heartbeat``), and each of the sample's environment variables."""
    from edge_provision.artifacts.builders.images import demo_output_problems

    args = ["/wasi_demo.wasm", *variables["workloads_wasm_args"]]
    problems = demo_output_problems(log, args=args, heartbeat=heartbeat)
    return problems + [
        f"env {k}={v} not listed"
        for k, v in variables["workloads_wasm_env"].items()
        if f"{k}: {v}" not in log.splitlines()
    ]


def verify(kubeconfig: Path, variables: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """The Wasm Job completed with every demo line; the Wasm Deployment is available and each of
    its pods printed the demo and a heartbeat (so it runs on, rather than completed); the
    container Deployment is available."""
    ns = str(variables["workloads_namespace"])
    job = job_result(kubeconfig, ns, str(variables["workloads_wasm_job"]), timeout)
    problems = wasm_output_problems(job["log"], variables)
    if not job["succeeded"] or problems:
        raise WorkloadError(
            f"Wasm Job on {job['node']}: {job['phase']}; {'; '.join(problems) or job['log'][-500:]}"
        )
    wasm_deployment = str(variables["workloads_wasm_deployment"])
    wasm_pods = deployment_pods(kubeconfig, ns, wasm_deployment, timeout, logs=True)
    for pod in wasm_pods:
        problems = wasm_output_problems(pod["log"], variables, heartbeat=True)
        if problems:
            raise WorkloadError(f"Wasm Deployment pod {pod['name']} on {pod['node']}: {'; '.join(problems)}")
    nodes = deployment_nodes(kubeconfig, ns, str(variables["workloads_container_deployment"]), timeout)
    return {
        "wasm_job": {k: job[k] for k in ("node", "phase", "runtime_class")},
        "wasm_deployment_nodes": [p["node"] for p in wasm_pods],
        "container_nodes": nodes,
    }


def role_variables(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The workloads role's variables and the fleet's edge_wasm_engine and edge_wasm_handler, from
    ``overrides`` (fleet values) over their defaults."""
    edge = role_defaults("edge")
    values = {**role_defaults("workloads"), **{k: edge[k] for k in ("edge_wasm_engine", "edge_wasm_handler")}}
    values.update({k: v for k, v in overrides.items() if k in values})
    return values
