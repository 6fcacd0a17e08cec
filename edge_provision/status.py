"""``edge-provision status``: each node of a fleet as the Kubernetes API sees it (Ready, OS release,
kubelet and container runtime versions, crun's version and Wasm engine as the workloads stage recorded them,
labels, the sample workloads running there), read with the fleet's admin kubeconfig
(inventories/<fleet>/kubeconfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_provision.stages.cluster import kube_api
from edge_provision.stages.workloads import node_metadata, samples

# Labels every node has, and the Wasm ones (their own column); left out of LABELS (--json keeps them).
_COMMON_PREFIXES = ("kubernetes.io/", "beta.kubernetes.io/", "node-role.kubernetes.io/")
_WASM_LABELS = ("edge-provision.io/wasm", "edge-provision.io/wasm-handler")


def fleet_status(kubeconfig: Path, *, retries: int = kube_api.API_RETRIES) -> list[dict[str, Any]]:
    from kubernetes import client

    wasm_label = str(samples.role_variables({})["workloads_wasm_label"])
    with kube_api.api_client(kubeconfig, retries=retries) as api:
        core: Any = client.CoreV1Api(api)
        nodes = core.list_node().items
        pods = core.list_pod_for_all_namespaces(label_selector="app.kubernetes.io/name").items
    running: dict[str, list[str]] = {}
    for pod in pods:
        if pod.spec.node_name and pod.status.phase in ("Running", "Succeeded"):
            name = pod.metadata.labels["app.kubernetes.io/name"]
            running.setdefault(pod.spec.node_name, []).append(f"{name} ({pod.status.phase})")
    rows = []
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        labels = node.metadata.labels or {}
        info = node.status.node_info
        ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        rows.append(
            {
                "name": node.metadata.name,
                "ready": ready,
                "roles": sorted(
                    k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")
                ),
                "os": info.os_image,  # the kubelet's reading of /etc/os-release (PRETTY_NAME)
                "kubelet": info.kubelet_version,
                "container_runtime": info.container_runtime_version,
                "crun": (node.metadata.annotations or {}).get(node_metadata.CRUN_ANNOTATION, ""),
                "architecture": info.architecture,
                "wasm_engine": labels.get(wasm_label, ""),
                "labels": dict(sorted(labels.items())),
                "workloads": sorted(running.get(node.metadata.name, [])),
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as a table whose columns are as wide as their widest cell."""
    header = ("NODE", "READY", "OS", "KUBELET", "RUNTIME", "CRUN", "WASM", "LABELS", "WORKLOADS")
    table = [header]
    for r in rows:
        own = ",".join(
            f"{k}={v}"
            for k, v in r["labels"].items()
            if not k.startswith(_COMMON_PREFIXES) and k not in _WASM_LABELS
        )
        table.append((r["name"], "yes" if r["ready"] else "NO", r.get("os") or "-", r["kubelet"],
                      r["container_runtime"], r["crun"] or "-", r["wasm_engine"] or "-", own or "-",
                      ", ".join(r["workloads"]) or "-"))
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    lines = ("  ".join(f"{cell:{width}}" for cell, width in zip(line, widths, strict=True)) for line in table)
    return "\n".join(line.rstrip() for line in lines)
