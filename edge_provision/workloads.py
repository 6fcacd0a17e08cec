"""Stage workloads: node labels owned by edge-provision, the RuntimeClass of the Wasm handler and
the sample workloads, through the Kubernetes API (the ``kubernetes`` client).

Ansible applies the manifests with kubernetes.core.k8s (server-side apply) and calls
``python -m edge_provision.workloads labels|verify`` for the rest; the pyinfra deploy
(edge_provision/deploys/workloads.py) calls these functions. The manifests are the role's
templates (roles/workloads/templates), rendered the same way for both engines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from edge_provision import cluster
from edge_provision.roles import render_template, role_defaults

MANAGED_LABELS_ANNOTATION = "edge-provision.io/managed-labels"
MANAGED_TAINTS_ANNOTATION = "edge-provision.io/managed-taints"
# crun's version and Wasm engine on the node ("1.8.1 +WASM:wasmtime"), for `edge-provision status`:
# the CRI reports containerd's version only.
CRUN_ANNOTATION = "edge-provision.io/crun"
FIELD_MANAGER = "edge-provision"
MANIFESTS = (
    "runtimeclass.yaml.j2",
    "wasi-demo-job.yaml.j2",
    "wasi-demo-deployment.yaml.j2",
    "camera-deployment.yaml.j2",
)


class WorkloadError(RuntimeError):
    pass


# --- node labels ---------------------------------------------------------------------------


def label_patch(
    current: Mapping[str, str], annotations: Mapping[str, str], wanted: Mapping[str, str]
) -> dict[str, Any] | None:
    """The metadata patch that makes ``wanted`` the labels edge-provision owns on a node: set
    what differs, remove what it set before and the inventory dropped, never touch a label it
    does not own. None when nothing changes."""
    owned = {k for k in annotations.get(MANAGED_LABELS_ANNOTATION, "").split(",") if k}
    labels: dict[str, str | None] = {k: str(v) for k, v in wanted.items() if current.get(k) != str(v)}
    for key in sorted(owned - set(wanted)):
        if key in current:
            labels[key] = None
    record = ",".join(sorted(wanted))
    if not labels and annotations.get(MANAGED_LABELS_ANNOTATION, "") == record:
        return None
    return {"metadata": {"labels": labels, "annotations": {MANAGED_LABELS_ANNOTATION: record}}}


def _taint_id(taint: Mapping[str, Any]) -> str:
    return f"{taint['key']}:{taint['effect']}"


def taint_patch(
    current: Sequence[Mapping[str, Any]], annotations: Mapping[str, str], wanted: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The patch that makes ``wanted`` the taints edge-provision owns (key:effect recorded in an
    annotation): others' taints are kept, owned ones dropped from the inventory removed."""
    owned = {t for t in annotations.get(MANAGED_TAINTS_ANNOTATION, "").split(",") if t}
    want = [
        {
            "key": str(t["key"]),
            "effect": str(t["effect"]),
            **({"value": str(t["value"])} if t.get("value") else {}),
        }
        for t in wanted
    ]
    want_ids = {_taint_id(t) for t in want}
    kept = [dict(t) for t in current if _taint_id(t) not in owned | want_ids]
    taints = kept + want
    record = ",".join(sorted(want_ids))

    def norm(items: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
        return sorted((str(t["key"]), str(t.get("value") or ""), str(t["effect"])) for t in items)

    if norm(taints) == norm(current) and annotations.get(MANAGED_TAINTS_ANNOTATION, "") == record:
        return None
    return {"spec": {"taints": taints}, "metadata": {"annotations": {MANAGED_TAINTS_ANNOTATION: record}}}


def crun_summary(version_output: str) -> str:
    """``<version> +WASM:<engine>`` from ``crun --version`` ("" when there is no crun)."""
    version = ""
    engines: list[str] = []
    for line in version_output.splitlines():
        if line.startswith("crun version "):
            version = line.split()[2]
        engines += [word for word in line.split() if word.startswith("+WASM:")]
    return " ".join([version, *engines]) if version else ""


def annotation_patch(annotations: Mapping[str, str], crun: str) -> dict[str, Any] | None:
    """The patch that records ``crun`` (:func:`crun_summary`) on a node; removes the record when
    the node has no crun. None when it is up to date."""
    if annotations.get(CRUN_ANNOTATION) == (crun or None):
        return None
    return {"metadata": {"annotations": {CRUN_ANNOTATION: crun or None}}}


def wanted_labels(inventory_labels: Mapping[str, Any], wasm_label: str, engine: str) -> dict[str, str]:
    return {**{str(k): str(v) for k, v in inventory_labels.items()}, wasm_label: engine}


def reconcile_labels(
    kubeconfig: Path,
    node: str,
    wanted: Mapping[str, str],
    taints: Sequence[Mapping[str, Any]] = (),
    crun: str = "",
    *,
    dry_run: bool = False,
    retries: int = cluster.API_RETRIES,
) -> bool:
    """Apply :func:`label_patch`, :func:`taint_patch` and :func:`annotation_patch` to Node
    ``node``; return whether it changed (would change)."""
    from kubernetes import client

    with cluster.api_client(kubeconfig, retries=retries) as api:
        core: Any = client.CoreV1Api(api)
        try:
            obj = core.read_node(node)
        except client.ApiException as exc:
            if exc.status == 404:
                raise WorkloadError(f"node {node} is not registered with the cluster (did its cluster stage "
                                    "fail, or not run yet?)") from None
            raise
        annotations = obj.metadata.annotations or {}
        current_taints = [
            {k: v for k, v in t.to_dict().items() if k in ("key", "value", "effect") and v}
            for t in obj.spec.taints or []
        ]
        patches = [
            p
            for p in (
                label_patch(obj.metadata.labels or {}, annotations, wanted),
                taint_patch(current_taints, annotations, taints),
                annotation_patch(annotations, crun),
            )
            if p
        ]
        if patches and not dry_run:
            for patch in patches:
                if "spec" in patch:  # the whole taint list: only over the version it was computed from
                    patch["metadata"]["resourceVersion"] = obj.metadata.resource_version
                core.patch_node(node, patch)
    return bool(patches)


# --- manifests ------------------------------------------------------------------------------


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


def _resource(dynamic: Any, doc: Mapping[str, Any]) -> Any:
    return dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])


def _comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {
        k: v
        for k, v in out.get("metadata", {}).items()
        if k not in ("managedFields", "resourceVersion", "generation")
    }
    return {**out, "metadata": meta}


def apply(kubeconfig: Path, docs: Sequence[Mapping[str, Any]], *, dry_run: bool = False) -> list[str]:
    """Server-side apply each manifest; return "<Kind>/<name>" of those that changed (or would)."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError

    changed = []
    with cluster.api_client(kubeconfig) as api:
        dynamic = DynamicClient(api)  # type: ignore[no-untyped-call]
        for doc in docs:
            resource = _resource(dynamic, doc)
            name = doc["metadata"]["name"]
            namespace = doc["metadata"].get("namespace") if resource.namespaced else None
            try:
                before = resource.get(name=name, namespace=namespace).to_dict()
            except NotFoundError:
                before = None
            kwargs = {"dry_run": "All"} if dry_run else {}
            after = resource.server_side_apply(
                body=dict(doc),
                name=name,
                namespace=namespace,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                **kwargs,
            ).to_dict()
            if before is None or _comparable(before) != _comparable(after):
                changed.append(f"{doc['kind']}/{name}")
    return changed


def misplaced_pods(kubeconfig: Path, variables: Mapping[str, Any], *, delete: bool = False) -> list[str]:
    """Pods of the container sample on nodes that no longer carry its node label (node affinity
    is only checked at scheduling): with ``delete``, delete them so they are placed again."""
    from kubernetes import client

    ns = str(variables["workloads_namespace"])
    wanted = {str(k): str(v) for k, v in variables["workloads_container_node_label"].items()}
    name = str(variables["workloads_container_deployment"])
    with cluster.api_client(kubeconfig) as api:
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


# --- verification ---------------------------------------------------------------------------


def job_result(kubeconfig: Path, namespace: str, job: str, timeout: float) -> dict[str, Any]:
    """Wait for Job ``job`` to finish; its pod's node, runtime class, phase and log."""
    from kubernetes import client

    deadline = time.monotonic() + timeout
    with cluster.api_client(kubeconfig) as api:
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
    with cluster.api_client(kubeconfig) as api:
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
    """The workloads role's variables and the fleet's edge_wasm_engine, from ``overrides``
    (fleet values) over their defaults."""
    values = {**role_defaults("workloads"), "edge_wasm_engine": role_defaults("edge")["edge_wasm_engine"]}
    values.update({k: v for k, v in overrides.items() if k in values})
    return values


# --- CLI for the Ansible role ---------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_provision.workloads")
    sub = parser.add_subparsers(dest="command", required=True)
    labels = sub.add_parser("labels", help="reconcile the labels edge-provision owns on a node")
    labels.add_argument("--kubeconfig", type=Path, required=True)
    labels.add_argument("--node", required=True)
    labels.add_argument("--labels", required=True, help="JSON object of the wanted labels")
    labels.add_argument("--taints", default="[]", help="JSON list of the wanted taints")
    labels.add_argument("--crun-version", default="", help="output of the node's `crun --version`")
    labels.add_argument("--check", action="store_true", help="report, change nothing")
    render = sub.add_parser("manifests", help="the rendered manifests, as a JSON list")
    render.add_argument("--vars", required=True, help="JSON object of the workloads role's variables")
    move = sub.add_parser("replace-misplaced", help="delete container-sample pods on nodes without its label")
    move.add_argument("--kubeconfig", type=Path, required=True)
    move.add_argument("--vars", required=True, help="JSON object of the workloads role's variables")
    move.add_argument("--check", action="store_true", help="report, change nothing")
    check = sub.add_parser("verify", help="wait for the sample workloads and check them")
    check.add_argument("--kubeconfig", type=Path, required=True)
    check.add_argument("--vars", required=True, help="JSON object of the workloads role's variables")
    check.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    try:
        if args.command == "labels":
            changed = reconcile_labels(
                args.kubeconfig,
                args.node,
                json.loads(args.labels),
                json.loads(args.taints),
                crun_summary(args.crun_version),
                dry_run=args.check,
            )
            print(json.dumps({"changed": changed}))
        elif args.command == "replace-misplaced":
            pods = misplaced_pods(
                args.kubeconfig, role_variables(json.loads(args.vars)), delete=not args.check
            )
            print(json.dumps({"changed": bool(pods), "pods": pods}))
        elif args.command == "manifests":
            print(json.dumps(manifests(role_variables(json.loads(args.vars)))))
        else:
            print(json.dumps(verify(args.kubeconfig, role_variables(json.loads(args.vars)), args.timeout)))
    except Exception as exc:  # the API's and our own errors, without a traceback for Ansible's log
        print(f"edge-provision workloads {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
