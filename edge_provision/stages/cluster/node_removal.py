"""Taking a node out of a kubeadm cluster, as both engines do it (playbooks/remove-node.yml,
remove_node.py): cordon it, evict its pods through the Eviction API (PodDisruptionBudgets
honoured: a refused eviction is asked again until the timeout), reset the host
(:func:`reset_script`), then delete its Node (before the reset, its kubelet would register it
again). Pods of DaemonSets and static pods stay where they are, as with
``kubectl drain``; bare pods (no controller to start them elsewhere) too, unless asked.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_provision.stages.cluster.common import ClusterError
from edge_provision.stages.cluster.kube_api import api_client

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
# What reset_script prints when it reset the host, and when there was nothing to reset.
RESET = "edge-provision: node reset"
CLEAN = "edge-provision: nothing to reset"
# flannel's vxlan device and the bridge of its CNI plugin; flannel's state (subnet.env).
LINKS = ("flannel.1", "cni0")
STATE_DIRS = ("/run/flannel",)


def parse_names(value: Any) -> list[str]:
    """``edge_remove_nodes`` as given: a comma-separated string or a list of host names."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(name).strip() for name in items if str(name).strip()]


def _kind(pod: Any, delete_bare_pods: bool) -> str:
    """evict, or why the pod stays: static, daemonset, bare, finished."""
    if (pod.metadata.annotations or {}).get(MIRROR_ANNOTATION):
        return "static"
    owners = [o for o in pod.metadata.owner_references or [] if o.controller]
    if any(o.kind == "DaemonSet" for o in owners):
        return "daemonset"
    if pod.status and pod.status.phase in ("Succeeded", "Failed"):
        return "evict"  # nothing runs: deleting it costs nothing
    if not owners and not delete_bare_pods:
        return "bare"
    return "evict"


def drain(kubeconfig: Path, node: str, timeout: float, *, delete_bare_pods: bool = False,
          refuse_bare: bool = False, poll: float = 2.0,
          clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Cordon ``node`` and evict its pods; return ``{cordoned, evicted, left}`` (``left``: the
    pods that stay, by why). A pod whose eviction is still refused, or that is still there, when
    ``timeout`` seconds have passed stops the drain with a ClusterError naming it; with
    ``refuse_bare``, so do bare pods, before anything is evicted."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    deadline = clock() + timeout
    with api_client(kubeconfig) as api, api_client(kubeconfig, retries=0) as once:
        core, core_once = client.CoreV1Api(api), client.CoreV1Api(once)
        current: Any = core.read_node(node)
        cordoned = not current.spec.unschedulable
        if cordoned:
            core.patch_node(node, {"spec": {"unschedulable": True}})
        pods: list[Any] = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        left: dict[str, list[str]] = {}
        pending: dict[str, Any] = {}
        for pod in pods:
            kind = _kind(pod, delete_bare_pods)
            name = f"{pod.metadata.namespace}/{pod.metadata.name}"
            if kind == "evict":
                pending[name] = pod
            else:
                left.setdefault(kind, []).append(name)
        if refuse_bare and left.get("bare"):  # they would go down with the node, nothing to restart them
            raise ClusterError(
                f"node {node} runs pods no controller starts elsewhere: "
                f"{', '.join(sorted(left['bare']))}; move them, or set node_remove_delete_bare_pods: true "
                "to evict them (the node stays cordoned)"
            )
        evicted, refused = [], {}
        while pending:
            for name, pod in list(pending.items()):
                body = client.V1Eviction(metadata=client.V1ObjectMeta(
                    name=pod.metadata.name, namespace=pod.metadata.namespace))
                try:
                    core_once.create_namespaced_pod_eviction(pod.metadata.name, pod.metadata.namespace, body)
                except ApiException as exc:
                    if exc.status == 429:  # a PodDisruptionBudget says not now
                        refused[name] = "its PodDisruptionBudget allows no disruption now"
                        continue
                    if exc.status != 404:
                        raise
                refused.pop(name, None)
                evicted.append(pending.pop(name))
            if pending and clock() >= deadline:
                raise ClusterError(
                    f"node {node}: draining timed out after {timeout:g} s; not evicted: "
                    + "; ".join(f"{name} ({refused.get(name, 'refused')})" for name in pending)
                    + " (the node stays cordoned)"
                )
            if pending:
                time.sleep(poll)
        while True:
            remaining = [f"{p.metadata.namespace}/{p.metadata.name}" for p in evicted
                         if _still_there(core, p)]
            if not remaining:
                break
            if clock() >= deadline:
                raise ClusterError(f"node {node}: evicted pods still terminating after {timeout:g} s: "
                                   f"{', '.join(remaining)} (the node stays cordoned)")
            time.sleep(poll)
    names = sorted(f"{p.metadata.namespace}/{p.metadata.name}" for p in evicted)
    return {"cordoned": cordoned, "evicted": names,
            "left": {kind: sorted(pods) for kind, pods in sorted(left.items())}}


def _still_there(core: Any, pod: Any) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        now = core.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return bool(now.metadata.uid == pod.metadata.uid)


def _node_call(kubeconfig: Path, call: Callable[[Any], object]) -> bool:
    """``call(CoreV1Api)`` on a Node; False when the API answers 404 (no such Node)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with api_client(kubeconfig) as api:
        try:
            call(client.CoreV1Api(api))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
    return True


def evacuate(
    kubeconfig: Path, node: str, timeout: float, *, delete_bare_pods: bool = False
) -> dict[str, Any]:
    """The first step of a removal: drain ``node`` (bare pods stop it, see :func:`drain`);
    ``{"changed": False}`` when the cluster has no such Node (removed before)."""
    if not _node_call(kubeconfig, lambda core: core.read_node(node)):
        return {"changed": False}
    return {"changed": True, **drain(kubeconfig, node, timeout, delete_bare_pods=delete_bare_pods,
                                     refuse_bare=True)}


def delete_node(kubeconfig: Path, node: str) -> dict[str, Any]:
    """The last step, once the host is reset: delete the Node (a kubelet still running would
    register it again); ``{"changed": False}`` when it is gone already."""
    return {"changed": _node_call(kubeconfig, lambda core: core.delete_node(node))}


def _traces(cni_conf_file: str, links: Sequence[str]) -> str:
    """A shell test: true while the host has anything of a kubeadm node (kubelet.conf, the kubelet
    enabled or running, the CNI network, the pod network's links)."""
    q = shlex.quote
    return " || ".join([
        "[ -e /etc/kubernetes/kubelet.conf ]", f"[ -e {q(cni_conf_file)} ]",
        "systemctl -q is-enabled kubelet 2>/dev/null", "systemctl -q is-active kubelet",
        *(f"ip link show {q(link)} >/dev/null 2>&1" for link in links),
    ])


def reset_check(cni_conf_file: str, links: Sequence[str] = LINKS) -> str:
    """Shell printing ``needed`` when the host has anything of a kubeadm node, else ``clean``."""
    return f"if {_traces(cni_conf_file, links)}; then echo needed; else echo clean; fi"


def reset_commands(kubeadm: str, cni_conf_file: str, links: Sequence[str] = LINKS,
                   state_dirs: Sequence[str] = STATE_DIRS) -> list[str]:
    """What resets a kubeadm node: ``kubeadm reset`` stops the kubelet and removes the node's
    kubeconfig, certificates, static pods and containers; the enabled kubelet, the CNI network
    and the pod network's links and state are not its business, so they go after it."""
    q = shlex.quote
    return [
        f"{q(kubeadm)} reset --force",
        "systemctl disable --now kubelet",
        f"rm -rf {q(cni_conf_file)} {' '.join(q(d) for d in state_dirs)}",
        *(f"if ip link show {q(link)} >/dev/null 2>&1; then ip link delete {q(link)}; fi" for link in links),
    ]


def reset_script(kubeadm: str, cni_conf_file: str) -> str:
    """:func:`reset_commands` when :func:`reset_check` says ``needed``, printing :data:`RESET`;
    otherwise nothing changes and it prints :data:`CLEAN`."""
    q = shlex.quote
    steps = "; ".join([*reset_commands(kubeadm, cni_conf_file), f"echo {q(RESET)}"])
    return f"set -e; if {_traces(cni_conf_file, LINKS)}; then {steps}; else echo {q(CLEAN)}; fi"


def reset_paths(kubernetes_node_vars: Mapping[str, Any]) -> tuple[str, str]:
    """(kubeadm's path, the CNI network file) of a host, from the kubernetes_node role's variables."""
    return (f"{kubernetes_node_vars['kubernetes_node_bin_dir']}/kubeadm",
            str(kubernetes_node_vars["kubernetes_node_cni_conf_file"]))
