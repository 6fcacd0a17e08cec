"""The lab itself: real container hosts booting systemd, reached over real SSH, then removed.

One lab of two hosts for the module (tens of seconds once the image is cached); the last
test takes it down and checks nothing of it remains.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from edge_provision import inventory
from edge_provision.lab import Lab, LabHost, dockerd
from edge_provision.lab.containers import ContainerLab
from edge_provision.lab.dockerd import docker
from tests.conftest import run, tool

pytestmark = pytest.mark.lab

# Machine-wide values that move on their own (counters, entropy, ids).
VOLATILE = (
    "kernel.random.", "kernel.ns_last_pid", "kernel.pty.nr", "kernel.tainted",
    "fs.dentry-state", "fs.inode-nr", "fs.inode-state", "fs.file-nr", "fs.aio-nr", "fs.quota.",
)


def machine_state() -> dict[str, str]:
    """kernel./vm./fs. sysctls, active swap and binfmt_misc entries of this machine."""
    out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True).stdout
    state: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" = ")
        if key.startswith(("kernel.", "vm.", "fs.")) and not key.startswith(VOLATILE):
            state[key] = value
    state["/proc/swaps"] = Path("/proc/swaps").read_text()
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    state["binfmt_misc"] = " ".join(sorted(p.name for p in binfmt.iterdir())) if binfmt.is_dir() else ""
    return state


@dataclass
class Fleet:
    lab: Lab
    inventory: Path
    hosts: list[LabHost]
    before: dict[str, str]

    def ssh(self, host: LabHost, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-i", str(self.inventory / "id_ed25519"),
             "-o", f"UserKnownHostsFile={self.inventory / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
             "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(host.port),
             f"root@{host.address}", command],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )

    def check(self, host: LabHost, command: str) -> str:
        result = self.ssh(host, command)
        assert result.returncode == 0, f"{host.name}: {command}: {result.stdout}{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("lab") / "inv"
    lab = Lab(directory)
    before = machine_state()
    try:
        hosts = lab.up(2)
        yield Fleet(lab=lab, inventory=directory, hosts=hosts, before=before)
    finally:
        lab.down()


def container_ids(fleet: Fleet) -> list[str]:
    return sorted(docker("ps", "-q", "--filter", f"label=io.edge-provision.lab={ContainerLab(fleet.inventory).id}")
                  .stdout.split())


def test_hosts_and_inventory(fleet: Fleet) -> None:
    assert [(h.name, h.group, h.port, h.arch, h.backend) for h in fleet.hosts] == [
        ("lab-1", "control_plane", 22, "amd64", "container"),
        ("lab-2", "edge", 22, "amd64", "container"),
    ]
    assert len({h.address for h in fleet.hosts}) == 2
    key = fleet.inventory / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600
    first, second = (h.address for h in fleet.hosts)
    assert (fleet.inventory / "hosts.yml").read_text() == f"""\
# Written by `edge-provision lab up`; removed by `edge-provision lab down`.
all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: {key}
    ansible_ssh_common_args: "-o UserKnownHostsFile={fleet.inventory}/known_hosts -o StrictHostKeyChecking=yes"
    ansible_python_interpreter: /usr/bin/python3
    edge_cluster_distribution: kubeadm
    edge_wasm_engine: wasmtime
    control_plane_kubeadm_kube_proxy_conntrack: {{maxPerCore: 0}}
    kubernetes_node_upstream_dns: [192.0.2.53]
  children:
    control_plane:
      hosts:
        lab-1: {{ansible_host: {first}, ansible_port: 22, edge_arch: amd64, edge_node_labels: {{edge-provision.io/lab: "true"}}}}
    edge:
      hosts:
        lab-2: {{ansible_host: {second}, ansible_port: 22, edge_arch: amd64, edge_node_labels: {{edge-provision.io/lab: "true", device: camera}}}}
"""
    data = yaml.safe_load((fleet.inventory / "hosts.yml").read_text())
    assert data["all"]["vars"]["ansible_ssh_private_key_file"] == str(key)
    assert "StrictHostKeyChecking=yes" in data["all"]["vars"]["ansible_ssh_common_args"]
    assert data["all"]["children"]["control_plane"]["hosts"]["lab-1"]["ansible_host"] == fleet.hosts[0].address
    edge = data["all"]["children"]["edge"]["hosts"]["lab-2"]
    assert edge["edge_node_labels"] == {"edge-provision.io/lab": "true", "device": "camera"}
    known = (fleet.inventory / "known_hosts").read_text().splitlines()
    assert sorted(line.split()[0] for line in known) == sorted(h.address for h in fleet.hosts)
    assert all(line.split()[1] == "ssh-ed25519" for line in known)
    assert len({line.split()[2] for line in known}) == 2, "every host has its own host key"
    assert "pyinfra_groups(__file__)" in (fleet.inventory / "inventory.py").read_text()
    assert len(inventory.load(fleet.inventory).hosts) == 2


def test_real_ssh_to_systemd_hosts(fleet: Fleet) -> None:
    for host in fleet.hosts:
        out = fleet.check(host, "systemctl is-system-running --wait; cat /proc/1/comm; hostname").split()
        assert out == ["running", "systemd", host.name], out


def test_hosts_reach_each_other_by_name(fleet: Fleet) -> None:
    first, second = fleet.hosts
    out = fleet.check(first, f"ping -c 1 -W 3 {second.name}")
    assert second.address in out
    fleet.check(second, f"ping -c 1 -W 3 {first.address}")


def test_ansible_ping(fleet: Fleet) -> None:
    result = run([tool("ansible"), "-i", str(fleet.inventory / "hosts.yml"), "all", "-m", "ansible.builtin.ping"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def test_etc_hosts_is_an_ordinary_file(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    for path in ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf"):
        assert fleet.ssh(host, f"findmnt --noheadings {path}").stdout.strip() == "", f"{path} is a mount"
    # Tools replace /etc/hosts atomically (write a new file, rename over it).
    fleet.check(host, "cp /etc/hosts /etc/hosts.new && echo '192.0.2.1 lab-test' >> /etc/hosts.new"
                      " && mv /etc/hosts.new /etc/hosts && grep -q lab-test /etc/hosts")
    assert fleet.check(host, "stat -c %a /etc/hosts").strip() == "644"


def test_containerd_dir_is_not_overlay(fleet: Fleet) -> None:
    out = fleet.check(fleet.hosts[0], "findmnt --noheadings -o FSTYPE /var/lib/containerd")
    assert out.strip() not in ("", "overlay")


def test_boot_changes_no_machine_wide_state(fleet: Fleet) -> None:
    after = machine_state()
    changed = {k: (fleet.before.get(k), after.get(k)) for k in fleet.before.keys() | after.keys()
               if fleet.before.get(k) != after.get(k)}
    assert not changed


def test_status(fleet: Fleet) -> None:
    rows = fleet.lab.status()
    assert [(r["name"], r["state"], r["ssh"]) for r in rows] == [("lab-1", "running", True), ("lab-2", "running", True)]
    assert [r["address"] for r in rows] == [h.address for h in fleet.hosts]


def test_up_again_is_idempotent(fleet: Fleet) -> None:
    ids = container_ids(fleet)
    known = (fleet.inventory / "known_hosts").read_text()
    assert fleet.lab.up(2) == fleet.hosts
    assert container_ids(fleet) == ids
    assert (fleet.inventory / "known_hosts").read_text() == known
    assert fleet.lab.hosts() == fleet.hosts


def test_down_removes_everything(fleet: Fleet) -> None:
    fleet.lab.down()
    # down() stops a dockerd the lab started once no lab container remains: look with one running.
    started = not dockerd.answers()
    if started:
        dockerd.ensure_running()
    leftovers = ContainerLab(fleet.inventory).leftovers()
    if started:
        dockerd.stop_if_idle()
    assert leftovers == {"containers": [], "volumes": [], "networks": []}
    for name in ("hosts.yml", "inventory.py", "id_ed25519", "id_ed25519.pub", "known_hosts"):
        assert not (fleet.inventory / name).exists(), name
    assert fleet.lab.status() == []
    assert not (dockerd.state_dir() / f"lab-{ContainerLab(fleet.inventory).id}.lock").exists()
    fleet.lab.down()  # again: nothing to do, no error
