"""pyinfra operations of the workloads stage: API work done at execution time on the controller
(``FunctionCommand``), with the functions the Ansible role calls (edge_provision.stages.workloads).
Each operation first asks the API (a dry run) and reports no change when there is none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyinfra.api.operation import operation
from pyinfra.context import host

from edge_provision.pyinfra_engine.operations.common import Commands, executing, failed, pending, python_step
from edge_provision.stages.cluster import kube_api
from edge_provision.stages.workloads import node_metadata, samples


def _ready(kubeconfig: str) -> bool:
    """Whether the API can be asked now (at execution; at prepare time only when the cluster exists)."""
    return executing() or Path(kubeconfig).is_file()


@operation(is_idempotent=True)
def node_labels(
    kubeconfig: str, node: str, wanted: Mapping[str, str], taints: Sequence[Mapping[str, Any]], crun: str
) -> Commands:
    """Reconcile the labels, taints and crun record edge-provision owns on Node ``node``."""
    if not _ready(kubeconfig):
        yield from pending(f"{kubeconfig} is written by the cluster stage")
        return
    try:  # at prepare time one question (no retries): an API that is away means "not yet"
        needed = node_metadata.reconcile_labels(
            Path(kubeconfig), node, wanted, taints, crun, dry_run=True,
            retries=kube_api.API_RETRIES if executing() else 0,
        )
    except Exception:
        if executing():
            raise
        yield from pending(f"node {node} is not registered yet")
        return
    if not needed:
        host.noop(f"node {node} has its labels")
        return

    yield python_step(
        f"labels of node {node}",
        lambda: node_metadata.reconcile_labels(Path(kubeconfig), node, wanted, taints, crun),
    )


@operation(is_idempotent=True)
def applied(kubeconfig: str, variables: Mapping[str, Any]) -> Commands:
    """Server-side apply the RuntimeClass and the samples."""
    if not _ready(kubeconfig):
        yield from pending(f"{kubeconfig} is written by the cluster stage")
        return
    docs = samples.manifests(variables)
    changes = kube_api.apply(Path(kubeconfig), docs, dry_run=True)
    if not changes:
        host.noop("manifests applied")
        return

    yield python_step(f"applying {', '.join(changes)}", lambda: kube_api.apply(Path(kubeconfig), docs))


@operation(is_idempotent=True)
def misplaced_replaced(kubeconfig: str, variables: Mapping[str, Any]) -> Commands:
    """Delete container-sample pods on nodes that lost its label, so they are placed again."""
    if not _ready(kubeconfig):
        yield from pending(f"{kubeconfig} is written by the cluster stage")
        return
    pods = samples.misplaced_pods(Path(kubeconfig), variables)
    if not pods:
        host.noop("container sample placed by its label")
        return

    yield python_step(
        f"replacing {', '.join(pods)}",
        lambda: samples.misplaced_pods(Path(kubeconfig), variables, delete=True),
    )


@operation(is_idempotent=True)
def verified(kubeconfig: str, variables: Mapping[str, Any]) -> Commands:
    """Fail unless the Wasm Job completed with the demo's output and the container sample runs."""
    if not executing():
        return  # nothing to ask before the run
        yield
    try:
        result = samples.verify(Path(kubeconfig), variables, float(variables["workloads_timeout"]))
    except Exception as exc:
        failed(host, f"host {host.name}: samples: {exc}")
        raise
    where = ", ".join(result["container_nodes"])
    host.noop(f"samples: Wasm Job on {result['wasm_job']['node']}, container on {where}")
