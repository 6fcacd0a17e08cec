"""The Kubernetes-side binaries built from their Go modules on this machine (Go module proxy).

Builds into the REAL cache (``EDGE_PROVISION_CACHE`` or ~/.cache/edge-provision), not a temporary
one: a cold build of everything takes about 20 minutes on 2 cores, and CI keeps the cache, so later
runs (and the lab's provisioning) reuse it. Each binary is run here and must report the version
versions.yml pins; each is a static ELF of this machine's architecture; the manifest's sha256s
match; a second call is a cache hit.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from edge_provision.artifacts import sha256_file
from edge_provision.artifacts.builders import images
from edge_provision.artifacts.builders import kubernetes_modules as builder
from edge_provision.artifacts.builders._common import elf_info
from edge_provision.artifacts.debian import host_arch

pytestmark = pytest.mark.lab

PINS = builder.load_pins()
FLANNEL = builder.load_flannel_pins()
KUBERNETES = f"v{PINS.version}"
# binary -> (arguments, what its output must contain)
VERSIONS: dict[str, tuple[list[str], str]] = {
    "kubeadm": (["version", "-o", "short"], KUBERNETES),
    "kubectl": (["version", "--client", "-o", "json"], f'"gitVersion": "{KUBERNETES}"'),
    **{name: (["--version"], f"Kubernetes {KUBERNETES}") for name in (
        "kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")},
    "crictl": (["--version"], PINS.crictl_version),
    "etcd": (["--version"], f"etcd Version: {PINS.etcd_version}"),
    "etcdctl": (["version"], f"etcdctl version: {PINS.etcd_version}"),
    "coredns": (["-version"], f"CoreDNS-{PINS.coredns_version}"),
    "flanneld": (["--version"], FLANNEL.version),
}


def test_every_binary_reports_the_pinned_version() -> None:
    arch = host_arch()
    directories = builder.build_all(arch)
    seen = set()
    for directory in directories.values():
        manifest = json.loads((directory / "manifest.json").read_text())
        assert builder.verify_build(directory) == []
        for name, entry in manifest["files"].items():
            binary = directory / name
            if name.startswith("wrapper/"):  # the wrapper module's go.mod and go.sum, kept for reading
                continue
            seen.add(name)
            assert elf_info(binary.read_bytes()) == (arch, True), name
            assert entry["sha256"] == sha256_file(binary) and entry["size"] == binary.stat().st_size, name
            if name not in VERSIONS:
                continue
            args, wanted = VERSIONS[name]
            proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, check=False)
            assert proc.returncode == 0, (name, proc.stdout + proc.stderr)
            assert wanted in proc.stdout + proc.stderr, (name, proc.stdout + proc.stderr)
    assert set(VERSIONS) | {"flannel"} == seen

    started = time.monotonic()
    assert builder.build_all(arch) == directories
    assert time.monotonic() - started < 10, "a second call must be a cache hit"


def test_kubeadm_reads_our_v1beta4_configuration() -> None:
    """kubeadm itself validates the configuration the control_plane_kubeadm role writes."""
    from edge_provision.role_files import render_template, role_defaults

    directory = builder.build_kubernetes_modules(host_arch())
    text = render_template("control_plane_kubeadm", "kubeadm-init.yaml.j2", {
        **role_defaults("kubernetes_node"), **role_defaults("control_plane_kubeadm"),
        "kubeadm": {"node_name": "cp-1", "node_ip": "192.0.2.10", "node_labels": "device=camera",
                    "version": PINS.version, "etcd_tag": f"{PINS.etcd_version}-0",
                    "dns_tag": f"v{PINS.coredns_version}", "cert_sans": ["192.0.2.10"],
                    # the probe patches' directory: kubeadm refuses --patches beside --config
                    "patches_dir": "/etc/kubernetes/edge-provision/patches"}})
    assert 'patches:\n  directory: "/etc/kubernetes/edge-provision/patches"' in text
    # Strict: an unknown field fails ('strict decoding error: unknown field "patchez"').
    valid = subprocess.run([str(directory / "kubeadm"), "config", "validate", "--config", "/dev/stdin"],
                           input=text, capture_output=True, text=True, timeout=60, check=False)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    proc = subprocess.run([str(directory / "kubeadm"), "config", "images", "list", "--config", "/dev/stdin"],
                          input=text, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        f"edge-provision.local/kube-apiserver:{KUBERNETES}",
        f"edge-provision.local/kube-controller-manager:{KUBERNETES}",
        f"edge-provision.local/kube-scheduler:{KUBERNETES}",
        f"edge-provision.local/kube-proxy:{KUBERNETES}",
        f"edge-provision.local/coredns:v{PINS.coredns_version}",
        images.pause_reference(),
        f"edge-provision.local/etcd:{PINS.etcd_version}-0",
    ], proc.stdout
