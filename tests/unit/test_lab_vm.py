"""The VM lab's QEMU user-mode NIC and inventory: the controller reaches the control plane's API
server through a forwarded loopback port (every VM's own address there is 10.0.2.15)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from edge_provision import inventory
from edge_provision.lab import LabError, vm_image
from edge_provision.lab import inventory_writer as inv
from edge_provision.lab.vm import MEMORY_MB, VmLab, VmSpec, parse_memory


def _spec(index: int, api_port: int = 0) -> VmSpec:
    return VmSpec(name=f"lab-{index}", index=index, arch="amd64" if index == 1 else "arm64",
                  ssh_port=2200 + index, node_ip=f"192.168.77.{10 + index}", lab_mac="52:54:00:ed:01:01",
                  user_mac="52:54:00:ed:00:01", image="debian-bookworm", api_port=api_port)


def test_only_ssh_is_forwarded_to_an_edge_vm() -> None:
    spec = _spec(2)
    assert spec.user_netdev() == "user,id=user,restrict=on,hostfwd=tcp:127.0.0.1:2202-:22"
    assert spec.host().api_server == ""


def test_the_control_plane_vm_also_forwards_its_api_server() -> None:
    spec = _spec(1, api_port=40123)
    assert spec.user_netdev() == ("user,id=user,restrict=on,hostfwd=tcp:127.0.0.1:2201-:22,"
                                  "hostfwd=tcp:127.0.0.1:40123-:6443")
    assert spec.host().api_server == "https://127.0.0.1:40123"


def test_a_spec_recorded_before_api_ports_still_loads() -> None:
    recorded = {k: v for k, v in _spec(1).__dict__.items() if k != "api_port"}
    assert VmSpec(**recorded).api_port == 0


def test_inventory_names_the_forwarded_api_server_for_the_control_plane_only(tmp_path: Path) -> None:
    hosts = [_spec(1, api_port=40123).host(), _spec(2).host()]
    (tmp_path / "hosts.yml").write_text(inv.render_hosts_yml(tmp_path, hosts))
    doc = yaml.safe_load((tmp_path / "hosts.yml").read_text())
    cp = doc["all"]["children"]["control_plane"]["hosts"]["lab-1"]
    edge = doc["all"]["children"]["edge"]["hosts"]["lab-2"]
    assert cp["control_plane_kubeadm_api_server"] == "https://127.0.0.1:40123"
    assert cp["edge_node_ip"] == "192.168.77.11" and cp["ansible_host"] == "127.0.0.1"
    assert "control_plane_kubeadm_api_server" not in edge
    assert inventory.validate(inventory.load(tmp_path / "hosts.yml")) == []


def test_memory_is_one_size_for_all_or_one_per_host() -> None:
    assert parse_memory(None, 2) == [MEMORY_MB, MEMORY_MB]
    assert parse_memory(["2048"], 3) == [2048, 2048, 2048]
    assert parse_memory(["2048", ""], 2) == [2048, MEMORY_MB]  # molecule: a platform without memory_mb
    assert parse_memory(["", ""], 2) == [MEMORY_MB, MEMORY_MB]
    with pytest.raises(LabError, match="--memory lists 2 values for 3 hosts"):
        parse_memory(["2048", "1024"], 3)
    for bad in ("2G", "128", "-1"):
        with pytest.raises(LabError, match=f"--memory '{bad}' is not a size in MiB of at least 256"):
            parse_memory([bad], 1)


def test_each_vm_boots_with_its_own_memory(tmp_path: Path) -> None:
    base = vm_image.BaseImage(arch="amd64", kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd",
                              disk=tmp_path / "disk.qcow2")
    lab = VmLab(tmp_path / "fleet")
    argv = lab._qemu_command(replace(_spec(1), memory_mb=2048), base, tmp_path / "o.qcow2", "ssh-ed25519 AAAA")
    assert argv[argv.index("-m") + 1] == "2048"
    argv = lab._qemu_command(_spec(2), base, tmp_path / "o.qcow2", "ssh-ed25519 AAAA")
    assert argv[argv.index("-m") + 1] == str(MEMORY_MB)


def test_a_spec_recorded_before_memory_sizes_has_the_default() -> None:
    recorded = {k: v for k, v in _spec(1).__dict__.items() if k != "memory_mb"}
    assert VmSpec(**recorded).memory_mb == MEMORY_MB
