"""k3s: its config.yaml, the server's and agents' 0600 environment files (K3S_URL, K3S_TOKEN),
the containerd template with the Wasm handler in the schema of k3s's embedded containerd, the
pinned binary, and the paths both engines read (token file, environment files).

k3s runs under systemd (``k3s server`` / ``k3s agent``); roles k3s_node, k3s_server, k3s_agent and
the pyinfra deploy (edge_provision/pyinfra_engine/deploys/cluster.py) read everything here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from edge_provision.artifacts.fetch import UPSTREAM, fetch, pinned
from edge_provision.stages.cluster import common
from edge_provision.stages.cluster.common import DistributionError
from edge_provision.stages.runtime import containerd_config

K3S_ARTIFACT = "k3s"


# The first k3s releases whose embedded containerd is 2.x (config schema 3, template
# config-v3.toml.tmpl): v1.31.6+k3s1 and v1.32.2+k3s1 (Feb 2025), and every later minor.
_K3S_CONTAINERD2 = {31: 6, 32: 2}


_K3S_VERSION = re.compile(r"^v?1\.(\d+)\.(\d+)")


def k3s_containerd_schema(version: str) -> containerd_config.Schema:
    """The containerd config schema of a k3s release (``v1.31.6+k3s1`` -> 3)."""
    found = _K3S_VERSION.match(version)
    if not found:
        raise DistributionError(f"not a k3s version: {version!r} (e.g. v1.31.6+k3s1)")
    minor, patch = int(found.group(1)), int(found.group(2))
    two = minor > max(_K3S_CONTAINERD2) or (minor in _K3S_CONTAINERD2 and patch >= _K3S_CONTAINERD2[minor])
    return containerd_config.SCHEMAS[3 if two else 2]


def k3s_containerd_template_name(version: str) -> str:
    """The file k3s reads its containerd template from (in agent/etc/containerd/)."""
    return "config-v3.toml.tmpl" if k3s_containerd_schema(version).version == 3 else "config.toml.tmpl"


def k3s_containerd_template(version: str, handler: str, binary: str, systemd_cgroup: bool) -> str:
    """k3s's own containerd config (``{{ template "base" . }}``) plus a separately named Wasm
    runtime handler, in the schema of the containerd that k3s release embeds."""
    tables = containerd_config.wasm_handler_tables(
        schema=k3s_containerd_schema(version), handler=handler, binary=binary, systemd_cgroup=systemd_cgroup
    )
    return (
        "# Managed by edge-provision (roles/k3s_node): k3s's containerd config plus the Wasm handler.\n"
        '{{ template "base" . }}\n\n' + tables
    )


def k3s_config(
    *, node_name: str, node_ip: str, labels: Mapping[str, Any], tls_sans: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """/etc/rancher/k3s/config.yaml of a server (``tls_sans``) or an agent. The join itself
    (K3S_URL, K3S_TOKEN) is in the service's env file, not here."""
    config: dict[str, Any] = {"node-name": node_name, "node-ip": node_ip}
    own = [label for label in common.kubelet_node_labels(labels).split(",") if label]
    if own:
        config["node-label"] = own
    if tls_sans:
        config["tls-san"] = list(dict.fromkeys(tls_sans))
    config.update(extra or {})
    return config


def k3s_version(arch: str) -> str:
    """The pinned k3s release (versions.yml) for ``arch``."""
    return pinned(K3S_ARTIFACT, arch).version


SYSTEMD_UNIT_DIR = "/etc/systemd/system"


def server_token_file(data_dir: str) -> str:
    """Where a k3s server keeps the token agents join with (``data_dir``: k3s_node_data_dir)."""
    return f"{data_dir}/server/token"


def service_unit_file(unit: str) -> str:
    """The systemd unit file of ``unit`` (k3s or k3s-agent), where k3s's install.sh puts it."""
    return f"{SYSTEMD_UNIT_DIR}/{unit}.service"


def service_env_file(unit: str) -> str:
    """The 0600 EnvironmentFile of ``unit`` (k3s or k3s-agent): K3S_TOKEN, and K3S_URL for agents."""
    return f"{SYSTEMD_UNIT_DIR}/{unit}.service.env"


def k3s_server_env(token: str) -> str:
    """The k3s server's EnvironmentFile (0600): a given cluster token, or none (k3s makes one)."""
    header = "# Managed by edge-provision (roles/k3s_server). May hold the cluster token: 0600.\n"
    return header + (f"K3S_TOKEN={token.strip()}\n" if token.strip() else "")


def k3s_binary(arch: str, source: str = UPSTREAM) -> dict[str, str]:
    """The pinned k3s binary for ``arch``, fetched from the artifact source and verified."""
    download = pinned(K3S_ARTIFACT, arch)
    path = fetch(download, source)
    return {"version": download.version, "path": str(path), "sha256": download.sha256, "file": download.file}


def token_fingerprint(token: str) -> str:
    """What a file may say about the token it holds without holding it twice (sha256 of the
    token's text, stripped): lets a run tell, without reading a secret, whether it is current."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def k3s_agent_env(token: str, server_url: str) -> str:
    """The k3s agent's systemd EnvironmentFile (0600): the join's URL and token."""
    if not token.strip():
        raise DistributionError("the k3s join token is empty")
    return (
        "# Managed by edge-provision (roles/k3s_agent). Holds the join token: 0600.\n"
        f"# token sha256 {token_fingerprint(token)}\n"
        f"K3S_URL={server_url}\n"
        f"K3S_TOKEN={token.strip()}\n"
    )
