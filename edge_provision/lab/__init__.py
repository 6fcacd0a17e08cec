"""The lab: disposable Debian 12 hosts on this machine to provision for real.

``Lab(inventory_dir).up(n)`` starts ``n`` hosts and writes their fleet inventory
(``hosts.yml`` for both engines, ``inventory.py`` for pyinfra, an SSH key and a
``known_hosts`` with each host's own host key) to ``inventory_dir``; ``down()`` removes
every trace of it again. Host 1 (``lab-1``) is the control plane, the others (``lab-2``..)
edge nodes.

Backends: ``container`` (default; :mod:`edge_provision.lab.containers`) runs each host as a
privileged docker container booting systemd, with its own address on a private bridge
network; ``vm`` (:mod:`edge_provision.lab.vm`) runs each host as a QEMU virtual machine
(amd64 or arm64, chosen per host) with SSH on a loopback port and a second NIC on the lab's
own switch (its ``edge_node_ip``).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import edge_provision.lab.dockerd as dockerd
import edge_provision.lab.inventory_writer as inv
from edge_provision.artifacts.debian import debian_arch
from edge_provision.lab.containers import ContainerLab
from edge_provision.lab.dockerd import LabError
from edge_provision.lab.inventory_writer import LabHost
from edge_provision.lab.options import parse_releases
from edge_provision.lab.ssh import ssh_login

if TYPE_CHECKING:
    from edge_provision.lab.vm import VmLab

__all__ = ["BACKENDS", "Lab", "LabError", "LabHost"]

BACKENDS = ("container", "vm")


class Lab:
    """One lab, identified by its inventory directory."""

    def __init__(self, inventory_dir: Path, *, backend: str = "container") -> None:
        if backend not in BACKENDS:
            raise LabError(f"unknown lab backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        self.inventory_dir = Path(inventory_dir).absolute()
        self.backend = backend

    # -- files --------------------------------------------------------------------------

    @property
    def key(self) -> Path:
        return self.inventory_dir / inv.KEY_FILE

    @property
    def known_hosts(self) -> Path:
        return self.inventory_dir / inv.KNOWN_HOSTS_FILE

    def _ensure_key(self) -> str:
        """The lab's SSH key pair (generated once, private key 0600); return the public key."""
        self.inventory_dir.mkdir(parents=True, exist_ok=True)
        public = self.key.with_name(self.key.name + ".pub")
        if not (self.key.exists() and public.exists()):
            self.key.unlink(missing_ok=True)
            public.unlink(missing_ok=True)
            result = subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                 "-C", f"edge-provision-lab@{self.inventory_dir}", "-f", str(self.key)],
                capture_output=True, text=True, stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                raise LabError(f"ssh-keygen failed: {result.stderr.strip()}")
        self.key.chmod(0o600)
        words = public.read_text().split()
        return " ".join(words[:2])

    def _containers(self) -> ContainerLab:
        return ContainerLab(self.inventory_dir)

    def _vms(self) -> VmLab:
        from edge_provision.lab.vm import VmLab

        return VmLab(self.inventory_dir)

    def _holds_vms(self) -> bool:
        """Whether the inventory directory holds a VM lab (whatever backend was asked for):
        `down` and `status` then act on its VMs, so none is left running unseen."""
        from edge_provision.lab.vm import STATE_DIR

        return self.backend == "vm" or (self.inventory_dir / STATE_DIR).is_dir()

    # -- API ----------------------------------------------------------------------------

    def up(self, hosts: int, arches: Sequence[str] | None = None,
           memory_mb: Sequence[str] | None = None, releases: Sequence[str] | None = None) -> list[LabHost]:
        """Start (or complete) a lab of ``hosts`` hosts and write its inventory.

        ``arches`` and ``memory_mb`` (vm backend) and ``releases`` (the Debian release, ``--os``):
        one value for every host, or one per host (an empty one is the default).
        """
        if not isinstance(hosts, int) or isinstance(hosts, bool) or hosts < 1:
            raise LabError(f"a lab has at least 1 host (asked for {hosts!r})")
        wanted_releases = parse_releases(releases, hosts)
        if self.backend == "vm":
            return self._up_vms(hosts, arches, memory_mb, wanted_releases)
        if self._holds_vms():
            raise LabError(f"{self.inventory_dir} holds a VM lab; use --backend vm, or remove it first "
                           "with `edge-provision lab down`")
        if memory_mb and any(m.strip() for m in memory_mb):
            raise LabError("container hosts share the machine's memory; --memory is for --backend vm")
        # An empty entry is the machine's architecture, as for VMs (`--arch ,` from a Molecule
        # scenario whose platforms name none).
        if arches and {a.strip() or debian_arch() for a in arches} != {debian_arch()}:
            raise LabError(f"container hosts run the machine's architecture ({debian_arch()}) only; "
                           "use --backend vm for other architectures")
        lab = self._containers()
        with dockerd.in_use():
            runtime = dockerd.ensure_running()  # before any file is written: fail early, leave nothing
            with lab.locked():
                public_key = self._ensure_key()
                started, host_keys = lab.up(hosts, public_key, runtime, wanted_releases)
                inv.write_inventory(self.inventory_dir, started, host_keys)
        return list(started)

    def _up_vms(self, hosts: int, arches: Sequence[str] | None,
                memory_mb: Sequence[str] | None, releases: list[str]) -> list[LabHost]:
        from edge_provision.lab.vm import parse_arches, parse_memory

        wanted = parse_arches(arches, hosts)
        sizes = parse_memory(memory_mb, hosts)
        vms = self._vms()
        with vms.locked():
            public_key = self._ensure_key()
            started, host_keys = vms.up(wanted, public_key, sizes, releases)
            inv.write_inventory(self.inventory_dir, started, host_keys)
            vms.wait_login(started, self.key, self.known_hosts)
        return started

    def down(self) -> None:
        """Remove every host, network, volume and generated file of this lab."""
        if self._holds_vms():
            vms = self._vms()
            with vms.locked():
                vms.down()
                inv.remove_inventory(self.inventory_dir)
                vms.forget_lock()
            return
        lab = self._containers()
        with dockerd.in_use(), lab.locked():
            if dockerd.answers() or self._may_have_objects():
                dockerd.ensure_running()
                lab.down()
            inv.remove_inventory(self.inventory_dir)
            lab.forget_lock()
        dockerd.stop_if_idle()

    def _may_have_objects(self) -> bool:
        """Whether docker (not running now) could still hold objects of this lab."""
        return (self.inventory_dir / inv.HOSTS_FILE).exists() or (self.inventory_dir / inv.KEY_FILE).exists()

    def hosts(self) -> list[LabHost]:
        """The lab's hosts docker knows (any state), in inventory order."""
        if self._holds_vms():
            return sorted((host for host, _state in self._vms().existing().values()), key=_order)
        if not dockerd.answers():
            return []
        found = [host for host, _state in self._containers().existing().values()]
        return sorted(found, key=_order)

    def status(self) -> list[dict[str, Any]]:
        """Per host: name, group, address, port, backend, docker state and SSH reachability."""
        known: dict[str, tuple[LabHost, str]] = {}
        if self._holds_vms():
            known = self._vms().existing()
        elif dockerd.answers():
            known = self._containers().existing()
        for host in self._inventory_hosts():
            known.setdefault(host.name, (host, "absent"))

        def row(item: tuple[LabHost, str]) -> dict[str, Any]:
            host, state = item
            reachable = state == "running" and ssh_login(self.key, self.known_hosts, host)
            fields = {"name": host.name, "group": host.group, "address": host.address, "port": host.port,
                      "backend": host.backend, "os": host.release, "state": state, "ssh": reachable}
            if host.backend == "vm":
                fields |= {"arch": host.arch, "node_ip": host.node_ip}
            return fields

        items = sorted(known.values(), key=lambda item: _order(item[0]))
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(row, items))

    def _inventory_hosts(self) -> list[LabHost]:
        """Hosts named in the lab's hosts.yml (what the last `up` wrote)."""
        path = self.inventory_dir / inv.HOSTS_FILE
        if not path.exists():
            return []
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError, KeyError):
            data = yaml.safe_load(path.read_text())
            hosts: list[LabHost] = []
            for group, body in data["all"]["children"].items():
                for name, hv in (body.get("hosts") or {}).items():
                    hosts.append(LabHost(name=name, address=str(hv.get("ansible_host", "")),
                                         port=int(hv.get("ansible_port", 22)), group=group,
                                         arch=str(hv.get("edge_arch", "")), backend=self.backend,
                                         node_ip=str(hv.get("edge_node_ip", ""))))
            return hosts
        return []


def _order(host: LabHost) -> tuple[int, str]:
    tail = host.name.rsplit("-", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 30, host.name)
