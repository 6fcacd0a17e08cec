"""Stage cluster, shared by every distribution: the labels a node agent may set and the ones
that go through the API, pod subnets, the controller's copy of the admin kubeconfig, durations,
and failure reports with tokens redacted. Pure functions: no host, no API.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

KUBECONFIG_FILE = "kubeconfig"  # beside the fleet's hosts.yml


KUBECONFIG_SOURCE_MARK = "# edge-provision: from admin.conf sha256 "


# Label namespaces the kubelet refuses to set on its own Node (NodeRestriction): labels there
# are set through the API from the control side (the workloads stage), not by --node-labels.
_KUBELET_ALLOWED = ("kubelet.kubernetes.io", "node.kubernetes.io")


_RESTRICTED_SUFFIXES = ("kubernetes.io", "k8s.io")


class ClusterError(RuntimeError):
    """A cluster step that failed, with what to do about it."""


def kubelet_node_labels(labels: Mapping[str, Any]) -> str:
    """``--node-labels`` for the kubelet: the inventory labels it may set on its own Node."""
    allowed = []
    for key, value in sorted(labels.items()):
        prefix = key.split("/", 1)[0] if "/" in key else ""
        restricted = any(prefix == s or prefix.endswith("." + s) for s in _RESTRICTED_SUFFIXES)
        if restricted and not any(prefix == a or prefix.endswith("." + a) for a in _KUBELET_ALLOWED):
            continue
        allowed.append(f"{key}={value}")
    return ",".join(allowed)


def controller_kubeconfig(admin_conf: str, server: str) -> str:
    """The control plane's admin.conf with ``server`` as the API address the controller uses,
    marked with the source's sha256 (so a run can tell without reading the file whether the
    copy is current)."""
    doc = yaml.safe_load(admin_conf)
    if not isinstance(doc, dict) or not doc.get("clusters"):
        raise ClusterError("admin.conf has no clusters")
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = str.__str__(server)  # a plain str (Ansible hands tagged ones)
    source = hashlib.sha256(admin_conf.encode()).hexdigest()
    return f"{KUBECONFIG_SOURCE_MARK}{source}\n" + yaml.safe_dump(
        doc, default_flow_style=False, sort_keys=True
    )


def kubeconfig_source(path: Path) -> str | None:
    """The admin.conf sha256 a controller kubeconfig was made from (None: absent or unmarked)."""
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first[len(KUBECONFIG_SOURCE_MARK) :] if first.startswith(KUBECONFIG_SOURCE_MARK) else None


# A bootstrap token, <6 chars>.<16 chars> (kubeadm prints the one `kubeadm init` makes).
BOOTSTRAP_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")


def redact_tokens(text: str) -> str:
    return BOOTSTRAP_TOKEN.sub("<token redacted>", text)


def failure_report(output: str, lines: int = 20, secrets: Sequence[str] = ()) -> str:
    """The last ``lines`` non-empty lines of a failed command's output, tokens redacted
    (bootstrap tokens by their shape, and each of ``secrets``, e.g. a KubeEdge token)."""
    for secret in secrets:
        if secret:
            output = output.replace(secret, "<token redacted>")
    kept = [line for line in redact_tokens(output).splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def parse_duration(text: str) -> int:
    """Seconds of ``15m``, ``1h30m``, ``90s``, ``600`` (kubeadm's --ttl style)."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or parts is None:
        raise ClusterError(f"not a duration: {text!r} (e.g. 15m, 1h, 90s)")
    hours, minutes, seconds = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def api_labels(labels: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The labels set through the API rather than by the node agent: the inventory labels in
    the namespaces the kubelet may not set (see :func:`kubelet_node_labels`) and ``extra``
    (e.g. OpenYurt's ``apps.openyurt.io/nodepool``)."""
    own = set(kubelet_node_labels(labels).split(",")) - {""}
    wanted = {str(k): str(v) for k, v in labels.items() if f"{k}={v}" not in own}
    wanted.update({str(k): str(v) for k, v in (extra or {}).items()})
    return dict(sorted(wanted.items()))


def missing_labels(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in wanted.items() if current.get(k) != v}


class DistributionError(RuntimeError):
    """A k3s, KubeEdge or OpenYurt step that cannot go on, with what to do about it."""
