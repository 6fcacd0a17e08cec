"""A real Kubernetes build from Debian's source package on this machine (Debian bookworm, root, apt).

Builds into the REAL cache (``EDGE_PROVISION_CACHE`` or ~/.cache/edge-provision), not a temporary
one: a cold build takes about 9 minutes and 1.4 GB of RAM on 2 cores, and CI keeps the cache, so
later runs (and the lab's provisioning) reuse it. Checks every binary's version, the manifest, the
sha256s and that a second call is a cache hit.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from edge_provision.artifacts.builders import kubernetes as builder
from edge_provision.artifacts.builders._common import elf_info
from edge_provision.artifacts.debian import host_arch

pytestmark = pytest.mark.lab

VERSION_COMMANDS = {
    "kubeadm": ["version", "-o", "short"],
    "kubectl": ["version", "--client", "--short"],
}


def test_build_kubernetes_native() -> None:
    arch = host_arch()
    pins = builder.load_pins()
    directory = builder.build_kubernetes(arch)

    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["kubernetes"]["version"] == pins.version == "1.20.2"
    assert manifest["kubernetes"]["debian_version"] == pins.debian_version
    assert manifest["go"]["version"].startswith("go1.")
    assert manifest["vendor_replacements"]["github.com/modern-go/reflect2"]["vendored"] == "v1.0.1"
    assert builder.verify_build(directory) == []

    for name in builder.BINARIES:
        binary = directory / name
        assert elf_info(binary.read_bytes()) == (arch, True), name
        args = VERSION_COMMANDS.get(name, ["--version"])
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.split()[-1] == "v1.20.2", (name, proc.stdout)
        assert manifest["files"][name]["size"] == binary.stat().st_size
        assert 10_000_000 < manifest["files"][name]["size"] < 200_000_000, name

    started = time.monotonic()
    again = builder.build_kubernetes(arch)
    assert again == directory
    assert time.monotonic() - started < 1.0, "the second call must be a cache hit"


def test_kubeadm_prints_its_config_under_go_1_19() -> None:
    """Runs code that serialises through json-iterator/reflect2 (the vendored 1.0.1 panicked)."""
    directory = builder.build_kubernetes(host_arch())  # a cache hit after the test above
    proc = subprocess.run(
        [str(directory / "kubeadm"), "config", "print", "init-defaults", "--component-configs",
         "KubeletConfiguration,KubeProxyConfiguration"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "panic" not in proc.stderr
    assert "kind: InitConfiguration" in proc.stdout
    assert "kind: KubeletConfiguration" in proc.stdout
