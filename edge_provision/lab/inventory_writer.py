"""The lab's fleet inventory: hosts.yml (both engines), inventory.py (pyinfra), key and known_hosts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HOSTS_FILE = "hosts.yml"
PYINFRA_FILE = "inventory.py"
KEY_FILE = "id_ed25519"
KNOWN_HOSTS_FILE = "known_hosts"
GENERATED = (HOSTS_FILE, PYINFRA_FILE, KEY_FILE, KEY_FILE + ".pub", KNOWN_HOSTS_FILE)

CONTROL_PLANE = "control_plane"
EDGE = "edge"
LAB_NODE_LABEL = "edge-provision.io/lab"

PYINFRA_INVENTORY = '''\
"""pyinfra inventory for this fleet: reads hosts.yml beside it (one source for both engines)."""
from edge_provision.inventory import pyinfra_groups

control_plane, edge = pyinfra_groups(__file__)
'''


@dataclass(frozen=True)
class LabHost:
    name: str  # inventory hostname, e.g. "lab-1"
    address: str  # its own IP on the lab network
    port: int  # SSH port (22 for containers)
    group: str  # "control_plane" or "edge"
    arch: str  # "amd64" (container backend)
    backend: str  # "container" | "vm"
    node_ip: str = ""  # edge_node_ip when other cluster members reach it elsewhere than `address` (VMs)
    api_server: str = ""  # control_plane_kubeadm_api_server: the controller's way to the API server (VMs)
    release: str = "debian-12"  # the Debian release it runs (edge_provision.artifacts.debian.RELEASES)

    @property
    def cluster_address(self) -> str:
        """The address other fleet members use for this host (edge_node_ip, else ansible_host)."""
        return self.node_ip or self.address


def host_name(index: int) -> str:
    return f"lab-{index}"


def host_group(index: int) -> str:
    return CONTROL_PLANE if index == 1 else EDGE


def node_labels(index: int) -> dict[str, str]:
    labels = {LAB_NODE_LABEL: "true"}
    if index == 2:  # the first edge host
        labels["device"] = "camera"
    return labels


# The lab's Wasm engine per Debian release: Debian 13 ships crun with WasmEdge (the upstream
# guides' engine); on Debian 12 the lab builds crun with wasmtime (WasmEdge's release tarball is
# not reachable here). The all-hosts value is Debian 12's; other releases' hosts override it.
LAB_WASM_ENGINES = {"debian-12": "wasmtime", "debian-13": "wasmedge"}


# Container hosts share this machine's kernel from their own network namespace, where the
# conntrack table's size (nf_conntrack_max) is read-only: kube-proxy must leave it alone. Their
# resolv.conf names Docker's resolver on loopback (127.0.0.11), which no pod can reach (CoreDNS
# stops on the loop): the lab has no DNS upstream (no internet), so pods get a documentation
# address (RFC 5737) that answers nothing; cluster names are CoreDNS' own.
CONTAINER_SETTINGS = (
    "control_plane_kubeadm_kube_proxy_conntrack: {maxPerCore: 0}",
    "kubernetes_node_upstream_dns: [192.0.2.53]",
)


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def _flow(mapping: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {_q(v) if v in ('true', 'false') else v}" for k, v in mapping.items()) + "}"


def render_hosts_yml(directory: Path, hosts: Iterable[LabHost]) -> str:
    directory = directory.absolute()
    hosts = list(hosts)
    containers = any(h.backend == "container" for h in hosts)
    key = directory / KEY_FILE
    known = directory / KNOWN_HOSTS_FILE
    by_group: dict[str, list[str]] = {CONTROL_PLANE: [], EDGE: []}
    for host in sorted(hosts, key=lambda h: int(h.name.rsplit("-", 1)[1])):
        index = int(host.name.rsplit("-", 1)[1])
        node_ip = f"edge_node_ip: {host.node_ip}, " if host.node_ip else ""
        api = f"control_plane_kubeadm_api_server: {_q(host.api_server)}, " if host.api_server else ""
        engine = LAB_WASM_ENGINES[host.release]
        wasm = f"edge_wasm_engine: {engine}, " if engine != LAB_WASM_ENGINES["debian-12"] else ""
        by_group[host.group].append(
            f"        {host.name}: {{ansible_host: {host.address}, ansible_port: {host.port}, "
            f"edge_arch: {host.arch}, {node_ip}{api}{wasm}edge_node_labels: {_flow(node_labels(index))}}}"
        )
    lines = [
        "# Written by `edge-provision lab up`; removed by `edge-provision lab down`.",
        "all:",
        "  vars:",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {key}",
        f"    ansible_ssh_common_args: {_q(f'-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes')}",
        "    ansible_python_interpreter: /usr/bin/python3",
        "    edge_cluster_distribution: kubeadm",
        f"    edge_wasm_engine: {LAB_WASM_ENGINES['debian-12']}",
        *(f"    {line}" for line in (CONTAINER_SETTINGS if containers else ())),
        "  children:",
    ]
    for group, entries in by_group.items():
        if not entries:
            continue
        lines += [f"    {group}:", "      hosts:", *entries]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


def write_inventory(directory: Path, hosts: list[LabHost], host_keys: dict[str, str]) -> None:
    """Write hosts.yml, inventory.py and known_hosts (``host_keys``: address -> "type base64").

    An address may carry a port in known_hosts syntax (``[127.0.0.1]:2201``, VM hosts).
    """
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / HOSTS_FILE, render_hosts_yml(directory, hosts))
    _write(directory / PYINFRA_FILE, PYINFRA_INVENTORY)
    known = "".join(f"{address} {key}\n" for address, key in sorted(host_keys.items()))
    _write(directory / KNOWN_HOSTS_FILE, known)


def remove_inventory(directory: Path) -> None:
    for name in GENERATED:
        (directory / name).unlink(missing_ok=True)
    cache = directory / "__pycache__"
    if cache.is_dir():
        for f in cache.glob("inventory.*.pyc"):
            f.unlink(missing_ok=True)
        if not any(cache.iterdir()):
            cache.rmdir()
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
