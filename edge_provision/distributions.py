"""Stage cluster for k3s, KubeEdge and OpenYurt: the commands, files and guards both engines use.

The Ansible roles (k3s_node, k3s_server, k3s_agent, kubeedge_cloud, kubeedge_edge,
openyurt_join) run ``python -m edge_provision.distributions <command>`` on the controller or
render the same templates; the pyinfra deploy (edge_provision/deploys/cluster.py) calls these
functions. What the kubeadm path already has (join tokens and the CA hash, the labels the node
agent may set, labels and secrets through the API, redaction) is edge_provision.cluster's.

Each distribution's own tool gets its flags here and nowhere else, so the unit tests pin them:
  k3s       ``k3s server`` / ``k3s agent`` under systemd, K3S_URL/K3S_TOKEN in a 0600 env file;
  KubeEdge  ``keadm init --advertise-address``, ``keadm gettoken``, ``keadm join ...``,
            ``keadm reset edge`` before a join on a node whose /etc/kubeedge is not empty;
  OpenYurt  ``yurtadm join <server>:6443 --token --node-type=edge
            --discovery-token-ca-cert-hash --cri-socket --node-labels``; the node joins its
            pool by the label ``apps.openyurt.io/nodepool`` (OpenYurt >= 1.7), set through the API.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from edge_provision import cluster, containerd_config
from edge_provision.artifacts.fetch import UPSTREAM, fetch, pinned

K3S_ARTIFACT = "k3s"
OPENYURT_NODEPOOL_LABEL = "apps.openyurt.io/nodepool"
# The first k3s releases whose embedded containerd is 2.x (config schema 3, template
# config-v3.toml.tmpl): v1.31.6+k3s1 and v1.32.2+k3s1 (Feb 2025), and every later minor.
_K3S_CONTAINERD2 = {31: 6, 32: 2}
_K3S_VERSION = re.compile(r"^v?1\.(\d+)\.(\d+)")


class DistributionError(RuntimeError):
    """A k3s, KubeEdge or OpenYurt step that cannot go on, with what to do about it."""


# --- k3s -------------------------------------------------------------------------------------


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
    own = [label for label in cluster.kubelet_node_labels(labels).split(",") if label]
    if own:
        config["node-label"] = own
    if tls_sans:
        config["tls-san"] = list(dict.fromkeys(tls_sans))
    config.update(extra or {})
    return config


def k3s_version(arch: str) -> str:
    """The pinned k3s release (versions.yml) for ``arch``."""
    return pinned(K3S_ARTIFACT, arch).version


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


# --- KubeEdge --------------------------------------------------------------------------------


def keadm_init(keadm: str, advertise_address: str, kubeconfig: str, extra: Sequence[str] = ()) -> list[str]:
    return [keadm, "init", f"--advertise-address={advertise_address}", f"--kube-config={kubeconfig}", *extra]


def keadm_gettoken(keadm: str, kubeconfig: str) -> list[str]:
    return [keadm, "gettoken", f"--kube-config={kubeconfig}"]


def keadm_reset_edge(keadm: str) -> list[str]:
    return [keadm, "reset", "edge", "--force"]


def keadm_join(
    *, keadm: str, cloudcore: str, token: str, node_name: str, runtime_endpoint: str,
    labels: Mapping[str, Any], extra: Sequence[str] = (),
) -> list[str]:
    """``keadm join``: the token is on its command line (keadm takes it nowhere else), so the
    engines run it with their logging off for that command."""
    argv = [
        keadm, "join", f"--cloudcore-ipport={cloudcore}", f"--token={token}",
        f"--edgenode-name={node_name}", f"--remote-runtime-endpoint={runtime_endpoint}",
    ]
    own = cluster.kubelet_node_labels(labels)
    if own:
        argv.append(f"--labels={own}")
    return [*argv, *extra]


def keadm_token(output: str) -> str:
    """The token of ``keadm gettoken``'s output (its last non-empty line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        raise DistributionError("keadm gettoken printed no token")
    return lines[-1]


# --- OpenYurt --------------------------------------------------------------------------------


def yurtadm_join(
    *, yurtadm: str, server: str, token: str, ca_cert_hash: str, cri_socket: str, labels: Mapping[str, Any],
    node_name: str, extra: Sequence[str] = (),
) -> list[str]:
    argv = [
        yurtadm, "join", server, f"--token={token}", "--node-type=edge",
        f"--discovery-token-ca-cert-hash={ca_cert_hash}", f"--cri-socket={cri_socket}",
        f"--node-name={node_name}",
    ]
    own = cluster.kubelet_node_labels(labels)
    if own:
        argv.append(f"--node-labels={own}")
    return [*argv, *extra]


def yurtadm_reset(yurtadm: str) -> list[str]:
    return [yurtadm, "reset", "--force"]


def openyurt_labels(labels: Mapping[str, Any], pool: str) -> dict[str, str]:
    """What the API sets on an OpenYurt edge node: its pool label (which converts it, 1.7) and
    the inventory labels the kubelet may not set itself."""
    if not pool:
        raise DistributionError("openyurt_join_nodepool is empty: an edge node needs a node pool")
    return cluster.api_labels(labels, {OPENYURT_NODEPOOL_LABEL: pool})


# --- CLI for the Ansible roles -----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_provision.distributions")
    sub = parser.add_subparsers(dest="command", required=True)
    binary = sub.add_parser("k3s-binary", help="fetch and verify the pinned k3s binary, as JSON")
    binary.add_argument("--arch", nargs="+", required=True, help="one result per architecture")
    binary.add_argument("--source", default=UPSTREAM)
    args = parser.parse_args(argv)
    try:
        result = {arch: k3s_binary(arch, args.source) for arch in args.arch}
    except Exception as exc:  # the fetcher names the file, source and reason; no traceback
        print(f"edge-provision distributions {args.command}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
