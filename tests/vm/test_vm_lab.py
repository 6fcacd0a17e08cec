"""VM tier: the lab's VM backend on real QEMU (TCG), one amd64 and one arm64 host, over real SSH.

Slow (image builds are cached; each VM boots for about half a minute to a minute under
emulation): `make vm-tests`. Everything runs through the `edge-provision lab` command.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_provision.lab import Lab, LabError, LabHost
from edge_provision.lab.ssh import ssh_login
from edge_provision.lab.vm import MEMORY_MB, VmLab
from tests.conftest import run, tool

ARCHES = ["amd64", "arm64"]
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass
class VmFleet:
    inventory: Path
    hosts: list[LabHost]
    up: subprocess.CompletedProcess[str]

    def lab(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([tool("edge-provision"), "lab", *args, "--backend", "vm", "--inventory-dir", str(self.inventory)])

    def ssh(self, name: str, command: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
        host = next(h for h in self.hosts if h.name == name)
        return run(["ssh", "-i", str(self.inventory / "id_ed25519"), "-o", f"UserKnownHostsFile={self.inventory / 'known_hosts'}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                    "-p", str(host.port), f"root@{host.address}", command], timeout=timeout)

    def sh(self, name: str, command: str) -> str:
        result = self.ssh(name, command)
        assert result.returncode == 0, f"{name}: {command}: {result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmFleet]:
    inventory = tmp_path_factory.mktemp("vm") / "fleet"
    started = time.monotonic()
    up = run([tool("edge-provision"), "lab", "up", "--backend", "vm", "--hosts", "2", "--arch", ",".join(ARCHES),
              "--inventory-dir", str(inventory)])
    print(f"\nlab up --backend vm (amd64 + arm64): {time.monotonic() - started:.1f} s\n{up.stderr}")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield VmFleet(inventory=inventory, hosts=Lab(inventory, backend="vm").hosts(), up=up)
    finally:
        Lab(inventory, backend="vm").down()


def test_one_host_per_architecture(fleet: VmFleet) -> None:
    assert [(h.name, h.arch, h.group) for h in fleet.hosts] == [
        ("lab-1", "amd64", "control_plane"), ("lab-2", "arm64", "edge")]
    assert all(h.address == "127.0.0.1" and h.backend == "vm" for h in fleet.hosts)
    assert len({h.port for h in fleet.hosts}) == 2


def test_inventory_is_a_valid_fleet_with_node_ips(fleet: VmFleet) -> None:
    check = run([tool("edge-provision"), "check", "-i", str(fleet.inventory)])
    assert check.returncode == 0, check.stderr
    text = (fleet.inventory / "hosts.yml").read_text()
    for host in fleet.hosts:
        assert f"ansible_port: {host.port}, edge_arch: {host.arch}, edge_node_ip: {host.node_ip}," in text
    known = (fleet.inventory / "known_hosts").read_text().splitlines()
    assert sorted(line.split()[0] for line in known) == sorted(f"[127.0.0.1]:{h.port}" for h in fleet.hosts)
    assert all(line.split()[1] == "ssh-ed25519" for line in known)


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_ssh_with_the_lab_key_and_strict_host_key_checking(fleet: VmFleet, name: str) -> None:
    host = next(h for h in fleet.hosts if h.name == name)
    assert ssh_login(fleet.inventory / "id_ed25519", fleet.inventory / "known_hosts", host)
    # The recorded key is the VM's own: the one sshd serves, read on the VM itself.
    served = fleet.sh(name, "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").strip()
    assert f"[127.0.0.1]:{host.port} {served}" in (fleet.inventory / "known_hosts").read_text().splitlines()


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_machine_matches_its_arch(fleet: VmFleet, name: str) -> None:
    host = next(h for h in fleet.hosts if h.name == name)
    assert fleet.sh(name, "uname -m").strip() == UNAME[host.arch]
    assert fleet.sh(name, "hostname").strip() == name
    assert fleet.sh(name, "dpkg --print-architecture").strip() == host.arch


def test_vms_reach_each_other_over_the_lab_network(fleet: VmFleet) -> None:
    one, two = fleet.hosts
    assert f"inet {two.node_ip}/24" in fleet.sh(two.name, "ip -4 -o addr show")
    for src, dst in ((one, two), (two, one)):
        fleet.sh(src.name, f"ping -c 2 -W 5 {dst.node_ip}")
    # TCP as a cluster uses it (the API server's port), arm64 listening, amd64 connecting.
    listener = ("timeout 120 python3 -c 'import socket; s = socket.create_server((\"0.0.0.0\", 6443)); "
                "c, a = s.accept(); c.sendall(a[0].encode())' >/dev/null 2>&1 &")
    fleet.sh(two.name, f"{listener} sleep 0")
    deadline = time.monotonic() + 60
    while True:
        result = fleet.ssh(one.name, f"python3 -c 'import socket; print(socket.create_connection((\"{two.node_ip}\", 6443), 5).recv(64).decode())'")
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.stdout.strip() == one.node_ip, result.stderr  # seen from lab-2: lab-1's node IP


def test_status_lists_running_reachable_vms(fleet: VmFleet) -> None:
    result = fleet.lab("status", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["name"], r["arch"], r["state"], r["ssh"]) for r in rows] == [
        ("lab-1", "amd64", "running", True), ("lab-2", "arm64", "running", True)]


def test_up_again_keeps_the_running_vms(fleet: VmFleet) -> None:
    pids = sorted(VmLab(fleet.inventory).processes())
    again = fleet.lab("up", "--hosts", "2", "--arch", ",".join(ARCHES))
    assert again.returncode == 0, again.stderr
    assert sorted(VmLab(fleet.inventory).processes()) == pids
    assert Lab(fleet.inventory, backend="vm").hosts() == fleet.hosts


def test_up_with_another_memory_size_boots_only_that_vm_anew(fleet: VmFleet) -> None:
    """lab-1 asks for 1536 MiB (the fleet started with the default): it is booted anew with it,
    lab-2 (an empty entry: the default) keeps running."""
    vms = VmLab(fleet.inventory)
    before = set(vms.processes())
    again = fleet.lab("up", "--hosts", "2", "--arch", ",".join(ARCHES), "--memory", "1536,")
    assert again.returncode == 0, again.stderr
    after = set(vms.processes())
    assert len(before - after) == 1 and len(after - before) == 1  # one VM replaced, switch and lab-2 kept
    assert {name: spec.memory_mb for name, spec in vms.specs().items()} == {"lab-1": 1536, "lab-2": MEMORY_MB}
    fleet.hosts = Lab(fleet.inventory, backend="vm").hosts()
    total_mib = int(fleet.sh("lab-1", "awk '/^MemTotal:/ {print $2}' /proc/meminfo")) // 1024
    assert 1536 - 160 < total_mib <= 1536, total_mib  # the kernel keeps some for itself


def test_arch_list_must_fit_the_hosts(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="--arch lists 2 values for 3 hosts"):
        Lab(tmp_path / "fleet", backend="vm").up(3, ["amd64", "arm64"])
    with pytest.raises(LabError, match="unknown VM architecture riscv64"):
        Lab(tmp_path / "fleet", backend="vm").up(1, ["riscv64"])
    assert not (tmp_path / "fleet").exists()


def test_container_backend_refuses_a_vm_lab(fleet: VmFleet) -> None:
    pids = sorted(VmLab(fleet.inventory).processes())
    result = run([tool("edge-provision"), "lab", "up", "--hosts", "1", "--inventory-dir", str(fleet.inventory)])
    assert result.returncode == 1
    assert "holds a VM lab; use --backend vm" in result.stderr
    assert sorted(VmLab(fleet.inventory).processes()) == pids


def test_down_leaves_nothing(fleet: VmFleet) -> None:
    """`lab down` (here without --backend: a directory holding a VM lab is one) removes it all."""
    vms = VmLab(fleet.inventory)
    assert len(vms.processes()) == 3  # two VMs and the switch
    result = run([tool("edge-provision"), "lab", "down", "--inventory-dir", str(fleet.inventory)])
    assert result.returncode == 0, result.stderr
    assert vms.leftovers() == {"processes": [], "files": []}
    assert not fleet.inventory.exists()
    assert not vms._lock_file().exists()
    assert fleet.lab("status").stdout.strip() == "no lab hosts"
