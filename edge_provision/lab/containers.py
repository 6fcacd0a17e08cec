"""Container hosts: privileged docker containers booting systemd, each with its own address.

Every docker object of a lab carries the label ``io.edge-provision.lab=<lab id>``; the id
is a hash of the lab's absolute inventory directory, so labs in different directories
coexist. Objects are named ``edgelab-<id>`` (network), ``edgelab-<id>-lab-N``
(containers) and ``edgelab-<id>-lab-N-containerd`` (volumes).

A host is ``docker run --privileged --cgroupns=private`` of the lab image (see
:mod:`edge_provision.lab.image`) on the lab's bridge network, with a fixed address
(host N gets the N+1-th address of the network), its inventory name as hostname and
network alias, tmpfs /run and /run/lock, SIGRTMIN+3 as stop signal (systemd's clean
shutdown) and a named volume at /var/lib/containerd (overlayfs cannot stack on the
container's overlay root). The machine's /sys/fs/cgroup is never bind-mounted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import edge_provision.lab.dockerd as dockerd
import edge_provision.lab.image as image
import edge_provision.lab.inventory_writer as inv
from edge_provision.artifacts.debian import CONTROLLER_RELEASE, debian_arch
from edge_provision.lab.dockerd import LAB_LABEL, LabError, docker
from edge_provision.lab.inventory_writer import LabHost
from edge_provision.lab.ssh import ssh_banner

DIR_LABEL = f"{LAB_LABEL}.dir"
HOST_LABEL = f"{LAB_LABEL}.host"
INDEX_LABEL = f"{LAB_LABEL}.index"
RELEASE_LABEL = f"{LAB_LABEL}.release"
CONTAINERD_DIR = "/var/lib/containerd"
BOOT_TIMEOUT = 60.0


def lab_id(inventory_dir: Path) -> str:
    return hashlib.sha256(str(inventory_dir.absolute()).encode()).hexdigest()[:12]



def _stderr_log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


class ContainerLab:
    """The docker side of one lab (one inventory directory)."""

    def __init__(self, inventory_dir: Path, log: Callable[[str], None] = _stderr_log) -> None:
        self.dir = inventory_dir.absolute()
        self.id = lab_id(self.dir)
        self.prefix = f"edgelab-{self.id}"
        self.network = self.prefix
        self.log = log

    # -- naming -----------------------------------------------------------------------

    def container(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def volume(self, name: str) -> str:
        return f"{self.prefix}-{name}-containerd"

    def labels(self, **extra: str) -> list[str]:
        args = ["--label", f"{LAB_LABEL}={self.id}", "--label", f"{DIR_LABEL}={self.dir}"]
        for key, value in extra.items():
            args += ["--label", f"{LAB_LABEL}.{key}={value}"]
        return args

    def _lock_file(self) -> Path:
        return dockerd.state_dir() / f"lab-{self.id}.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One `up`/`down` of this lab at a time."""
        with open(self._lock_file(), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def forget_lock(self) -> None:
        """Remove the lock file (by `down`, while holding it: the lab leaves no file behind)."""
        self._lock_file().unlink(missing_ok=True)

    # -- inspection -------------------------------------------------------------------

    def _inspect_containers(self) -> list[dict[str, Any]]:
        ids = docker("ps", "-aq", "--no-trunc", "--filter", f"label={LAB_LABEL}={self.id}").stdout.split()
        if not ids:
            return []
        data: list[dict[str, Any]] = json.loads(docker("container", "inspect", *ids).stdout)
        return data

    def _host_of(self, c: dict[str, Any]) -> tuple[LabHost, str]:
        labels = c["Config"]["Labels"]
        name = labels[HOST_LABEL]
        index = int(labels[INDEX_LABEL])
        net = (c["NetworkSettings"]["Networks"] or {}).get(self.network) or {}
        address = net.get("IPAddress") or ((net.get("IPAMConfig") or {}).get("IPv4Address")) or ""
        host = LabHost(name=name, address=address, port=22, group=inv.host_group(index),
                       arch=debian_arch(), backend="container",
                       release=labels.get(RELEASE_LABEL, CONTROLLER_RELEASE))
        return host, str(c["State"]["Status"])

    def existing(self) -> dict[str, tuple[LabHost, str]]:
        """Lab hosts docker knows: name -> (host, docker state)."""
        result: dict[str, tuple[LabHost, str]] = {}
        for c in self._inspect_containers():
            host, state = self._host_of(c)
            result[host.name] = (host, state)
        return result

    # -- network ----------------------------------------------------------------------

    def _network_subnet(self) -> ipaddress.IPv4Network | None:
        result = docker("network", "inspect", self.network, check=False)
        if result.returncode != 0:
            return None
        net = json.loads(result.stdout)[0]
        if net.get("Labels", {}).get(LAB_LABEL) != self.id:
            raise LabError(f"docker network {self.network} exists but does not belong to this lab; remove it")
        for cfg in net["IPAM"]["Config"] or []:
            with contextlib.suppress(ValueError, KeyError):
                subnet = ipaddress.ip_network(cfg["Subnet"])
                if isinstance(subnet, ipaddress.IPv4Network):
                    return subnet
        raise LabError(
            f"docker network {self.network} has no IPv4 subnet; run `edge-provision lab down` first"
        )

    def ensure_network(self) -> ipaddress.IPv4Network:
        """The lab's bridge network, with an explicit subnet so host addresses can be pinned.

        Docker picks a free subnet from its address pools; the network is then recreated with
        that subnet written down explicitly (``--ip`` needs a user-configured subnet).
        """
        subnet = self._network_subnet()
        if subnet is not None:
            return subnet
        # One lab at a time picks a subnet (probe, then create), so parallel labs don't collide.
        with open(dockerd.state_dir() / "network.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._create_network()

    def _create_network(self) -> ipaddress.IPv4Network:
        create = ["network", "create", "--driver", "bridge", *self.labels(),
                  "--opt", f"com.docker.network.bridge.name=el{self.id[:10]}"]
        for _attempt in range(5):
            probe = f"{self.network}-probe"
            docker("network", "rm", probe, check=False)
            docker("network", "create", "--driver", "bridge", *self.labels(), probe)
            info = json.loads(docker("network", "inspect", probe).stdout)[0]
            docker("network", "rm", probe)
            cfg = info["IPAM"]["Config"][0]
            result = docker(*create, "--subnet", cfg["Subnet"], "--gateway", cfg["Gateway"], self.network,
                            check=False)
            if result.returncode == 0:
                return ipaddress.IPv4Network(cfg["Subnet"])
            if "overlap" not in result.stderr:
                raise LabError(f"cannot create docker network {self.network}: {result.stderr.strip()}")
            time.sleep(0.5)
        raise LabError(f"cannot create docker network {self.network}: address pools keep overlapping")

    # -- hosts ------------------------------------------------------------------------

    def _address(self, subnet: ipaddress.IPv4Network, index: int) -> str:
        address = subnet.network_address + index + 1
        if address not in subnet or address == subnet.broadcast_address:
            raise LabError(f"lab network {subnet} is too small for {index} hosts")
        return str(address)

    def _run(self, tag: str, runtime: str | None, subnet: ipaddress.IPv4Network, index: int,
             public_key: str, release: str) -> None:
        name = inv.host_name(index)
        container = self.container(name)
        volume = self.volume(name)
        docker("rm", "-f", "-v", container, check=False)
        if docker("volume", "inspect", volume, check=False).returncode != 0:
            docker("volume", "create", *self.labels(host=name), volume)
        args = [
            "run", "--detach", "--name", container, "--hostname", name,
            "--network", self.network, "--ip", self._address(subnet, index), "--network-alias", name,
            "--privileged", "--cgroupns=private", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "--stop-signal", "SIGRTMIN+3", "--stop-timeout", "10",
            "--volume", f"{volume}:{CONTAINERD_DIR}",
            "--env", f"EDGE_LAB_AUTHORIZED_KEY={public_key}",
            *self.labels(host=name, index=str(index), release=release),
        ]
        if runtime:
            args += ["--runtime", runtime]
        docker(*args, tag)

    def _start(self, name: str) -> None:
        docker("start", self.container(name))

    def _authorize(self, name: str, public_key: str) -> None:
        """Make sure a kept host accepts the lab's current key (the inventory may be new)."""
        keys = "/root/.ssh/authorized_keys"
        script = (f'mkdir -p -m 700 /root/.ssh && touch {keys} && chmod 600 {keys} && '
                  f'{{ grep -qxF "$1" {keys} || printf "%s\\n" "$1" >> {keys}; }}')
        docker("exec", self.container(name), "sh", "-c", script, "authorize", public_key, timeout=30)

    def host_key(self, name: str, deadline: float) -> str:
        """The host's own SSH host key ("ssh-ed25519 AAAA..."), read through docker exec."""
        path = "/etc/ssh/ssh_host_ed25519_key.pub"
        while True:
            result = docker("exec", self.container(name), "cat", path, check=False, timeout=30)
            words = result.stdout.split()
            if result.returncode == 0 and len(words) >= 2:
                return f"{words[0]} {words[1]}"
            if time.monotonic() > deadline:
                state = docker("inspect", "-f", "{{.State.Status}}", self.container(name), check=False)
                logs = docker("logs", "--tail", "20", self.container(name), check=False)
                raise LabError(
                    f"{name} did not generate its SSH host key within {BOOT_TIMEOUT:.0f} s "
                    f"(container {state.stdout.strip() or 'missing'}); its output ends:\n"
                    f"{(logs.stdout + logs.stderr)[-2000:]}"
                )
            time.sleep(0.2)

    def wait_ssh(self, host: LabHost, deadline: float) -> None:
        while not ssh_banner(host.address, host.port):
            if time.monotonic() > deadline:
                raise LabError(
                    f"{host.name} ({host.address}) does not answer SSH within {BOOT_TIMEOUT:.0f} s"
                )
            time.sleep(0.1)

    def up(self, count: int, public_key: str, runtime: str | None, releases: list[str] | None = None,
           ) -> tuple[list[LabHost], dict[str, str]]:
        """Create/complete ``count`` hosts; return them and their host keys (address -> key).

        ``runtime`` is the OCI runtime :func:`dockerd.ensure_running` asked for (None: docker's default);
        ``releases`` the Debian release of each host (Debian 12 when None). A host of another
        release than asked is made anew.
        """
        releases = releases or [CONTROLLER_RELEASE] * count
        tags = {release: image.ensure_image(docker, self.log, release) for release in dict.fromkeys(releases)}
        subnet = self.ensure_network()
        have = self.existing()
        wanted = {inv.host_name(i): i for i in range(1, count + 1)}
        release_of = {inv.host_name(i): releases[i - 1] for i in range(1, count + 1)}
        # Extra hosts (an earlier, larger `up`) are removed: the lab is exactly `count` hosts.
        extra = [name for name in have if name not in wanted]
        if extra:
            self.remove_hosts(extra)

        def bring_up(name: str, index: int) -> tuple[LabHost, str]:
            deadline = time.monotonic() + BOOT_TIMEOUT
            current = have.get(name)
            expected = self._address(subnet, index)
            release = release_of[name]
            stale = current is not None and (
                current[0].address not in ("", expected) or current[1] in ("dead", "removing")
                or current[0].release != release
            )
            if current is None or stale:
                self._run(tags[release], runtime, subnet, index, public_key, release)
            else:
                if current[1] != "running":
                    try:
                        self._start(name)
                    except LabError:
                        self._run(tags[release], runtime, subnet, index, public_key, release)
                self._authorize(name, public_key)
            host = LabHost(name=name, address=expected, port=22, group=inv.host_group(index),
                           arch=debian_arch(), backend="container", release=release)
            key = self.host_key(name, deadline)
            self.wait_ssh(host, deadline)
            return host, key

        with ThreadPoolExecutor(max_workers=min(8, max(1, count))) as pool:
            futures = [pool.submit(bring_up, name, index) for name, index in wanted.items()]
            results = [f.result() for f in futures]
        hosts = [host for host, _key in results]
        return hosts, {host.address: key for host, key in results}

    def remove_hosts(self, names: list[str]) -> None:
        containers = [self.container(n) for n in names]
        if containers:
            docker("rm", "-f", "-v", *containers, check=False, timeout=120)
        for name in names:
            docker("volume", "rm", "-f", self.volume(name), check=False)

    def down(self) -> None:
        """Remove every docker object of this lab (containers, volumes, network)."""
        ids = docker("ps", "-aq", "--filter", f"label={LAB_LABEL}={self.id}").stdout.split()
        if ids:
            docker("rm", "-f", "-v", *ids, timeout=180)
        volumes = docker("volume", "ls", "-q", "--filter", f"label={LAB_LABEL}={self.id}").stdout.split()
        if volumes:
            docker("volume", "rm", "-f", *volumes)
        networks = docker("network", "ls", "-q", "--filter", f"label={LAB_LABEL}={self.id}").stdout.split()
        if networks:
            docker("network", "rm", *networks)

    def leftovers(self) -> dict[str, list[str]]:
        """Docker objects still labelled with this lab (empty lists after :meth:`down`)."""
        found: dict[str, list[str]] = {}
        for kind, cmd in (("containers", ["ps", "-aq"]), ("volumes", ["volume", "ls", "-q"]),
                          ("networks", ["network", "ls", "-q"])):
            found[kind] = docker(*cmd, "--filter", f"label={LAB_LABEL}={self.id}").stdout.split()
        return found
