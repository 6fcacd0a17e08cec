"""Node labels, taints and annotations that edge-provision owns, reconciled through the API: what
the inventory declares is set, what edge-provision set before and the inventory dropped is
removed, what someone else set is never touched (the keys owned are recorded in annotations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_provision.stages.cluster import kube_api
from edge_provision.stages.workloads.samples import WorkloadError

MANAGED_LABELS_ANNOTATION = "edge-provision.io/managed-labels"


MANAGED_TAINTS_ANNOTATION = "edge-provision.io/managed-taints"


# crun's version and Wasm engine on the node ("1.8.1 +WASM:wasmtime"), for `edge-provision status`:
# the CRI reports containerd's version only.
CRUN_ANNOTATION = "edge-provision.io/crun"


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


def wanted_labels(inventory_labels: Mapping[str, Any], variables: Mapping[str, Any], engine: str,
                  handler: str) -> dict[str, str]:
    """A node's labels: the inventory's, its Wasm engine under ``workloads_wasm_label`` and the
    Wasm handler (what the RuntimeClass schedules by) under ``workloads_wasm_handler_label``."""
    return {**{str(k): str(v) for k, v in inventory_labels.items()},
            str(variables["workloads_wasm_label"]): engine,
            str(variables["workloads_wasm_handler_label"]): handler}


def reconcile_labels(
    kubeconfig: Path,
    node: str,
    wanted: Mapping[str, str],
    taints: Sequence[Mapping[str, Any]] = (),
    crun: str = "",
    *,
    dry_run: bool = False,
    retries: int = kube_api.API_RETRIES,
) -> bool:
    """Apply :func:`label_patch`, :func:`taint_patch` and :func:`annotation_patch` to Node
    ``node``; return whether it changed (would change)."""
    from kubernetes import client

    with kube_api.api_client(kubeconfig, retries=retries) as api:
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
