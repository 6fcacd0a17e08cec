"""VM hosts: QEMU virtual machines (amd64 and arm64, TCG) behind the same ``Lab`` API.

Container hosts share the machine's kernel: no kernel modules of their own, machine-wide
swap and kernel./vm./fs. sysctls, the machine's architecture only. A VM host has its own
kernel, and arm64 hosts run through emulation.

Each VM boots the cached base image of its architecture (:mod:`edge_provision.lab.vm_image`)
through a throw-away qcow2 overlay, with the kernel and initrd given to QEMU directly:

- TCG only (``-accel tcg,thread=multi,tb-size=256``; KVM is not usable here), modest memory;
- NIC 1: QEMU user-mode networking, restricted to the VM (``restrict=on``) except SSH,
  forwarded from a loopback port: the inventory's ``ansible_host`` 127.0.0.1 + ``ansible_port``;
  on the control plane (host 1) also the API server's port 6443, from another loopback port the
  inventory names as ``control_plane_kubeadm_api_server`` (the controller's kubeconfig, the
  workloads stage);
- NIC 2: the lab's own ``vde_switch`` (Debian's vde2), a static address from the kernel
  command line: VM-to-VM traffic, and each host's ``edge_node_ip`` (every user-mode NIC
  is 10.0.2.15, so that address cannot identify a node);
- the lab's SSH public key on the kernel command line; the VM prints its own ed25519 host key
  on its serial console, which the lab reads into its ``known_hosts``.

Everything of a lab lives in ``<inventory>/.vm/`` (pid files, overlays, console logs, the
switch's socket); ``down`` kills the processes named by the pid files and removes it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import edge_provision.lab.inventory_writer as inv
import edge_provision.lab.vm_image as vm_image
from edge_provision.artifacts.debian import CONTROLLER_RELEASE
from edge_provision.lab.dockerd import LabError
from edge_provision.lab.inventory_writer import LabHost
from edge_provision.lab.options import per_host
from edge_provision.lab.processes import alive
from edge_provision.lab.ssh import ssh_banner, ssh_login

STATE_DIR = ".vm"
SWITCH = "vde"
LAB_SUBNET = "192.168.77"  # on the lab's own switch only; host N is .(10+N)
LAB_PREFIX = 24
API_SERVER_PORT = 6443  # kubernetes_node_api_port's default
MEMORY_MB = int(os.environ.get("EDGE_PROVISION_VM_MEMORY_MB", "1024"))  # a host given no size of its own
MIN_MEMORY_MB = 256  # Debian's kernel and systemd need about this much to boot at all
CPUS = int(os.environ.get("EDGE_PROVISION_VM_CPUS", "2"))
OVERLAY_SIZE = "8G"  # the root file system grows to it at first boot (x-systemd.growfs)
BOOT_TIMEOUT = float(os.environ.get("EDGE_PROVISION_VM_BOOT_TIMEOUT", "600"))
HOSTKEY_MARKER = "edge-lab-hostkey: "

# Debian arch -> (QEMU system emulator, Debian package, machine options, serial console)
QEMU = {
    "amd64": ("qemu-system-x86_64", "qemu-system-x86", ["-machine", "q35", "-cpu", "max"], "ttyS0"),
    "arm64": ("qemu-system-aarch64", "qemu-system-arm",
              ["-machine", "virt,gic-version=3", "-cpu", "max,pauth-impdef=on"], "ttyAMA0"),
}


def _stderr_log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class VmSpec:
    """One VM of the lab, as recorded in ``.vm/<name>.json``."""

    name: str
    index: int
    arch: str
    ssh_port: int
    node_ip: str
    lab_mac: str
    user_mac: str
    image: str  # base image directory (cache key)
    api_port: int = 0  # loopback port forwarded to the VM's API server port (control plane only)
    memory_mb: int = MEMORY_MB
    release: str = CONTROLLER_RELEASE

    def host(self) -> LabHost:
        api_server = f"https://127.0.0.1:{self.api_port}" if self.api_port else ""
        return LabHost(name=self.name, address="127.0.0.1", port=self.ssh_port,
                       group=inv.host_group(self.index), arch=self.arch, backend="vm", node_ip=self.node_ip,
                       api_server=api_server, release=self.release)

    def user_netdev(self) -> str:
        """NIC 1: user-mode networking, closed but for SSH (and the API server on the control plane)."""
        forwards = [f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"]
        if self.api_port:
            forwards.append(f"hostfwd=tcp:127.0.0.1:{self.api_port}-:{API_SERVER_PORT}")
        return ",".join(["user", "id=user", "restrict=on", *forwards])


def parse_arches(arches: Sequence[str] | None, count: int) -> list[str]:
    """One architecture per host: none given -> the machine's, one -> all hosts, else one each."""
    from edge_provision.artifacts.debian import debian_arch

    wanted = [a or debian_arch() for a in per_host(arches, count, "arch")]
    unknown = sorted(set(wanted) - set(vm_image.ARCHES))
    if unknown:
        raise LabError(f"unknown VM architecture {', '.join(unknown)}; "
                       f"choose from: {', '.join(vm_image.ARCHES)}")
    return wanted


def parse_memory(sizes: Sequence[str] | None, count: int) -> list[int]:
    """Memory (MiB) per host, like :func:`parse_arches`; an empty entry is the default, MEMORY_MB."""
    wanted: list[int] = []
    for size in per_host(sizes, count, "memory"):
        if not size:
            wanted.append(MEMORY_MB)
        elif size.isdigit() and int(size) >= MIN_MEMORY_MB:
            wanted.append(int(size))
        else:
            raise LabError(f"--memory {size!r} is not a size in MiB of at least {MIN_MEMORY_MB}")
    return wanted


def _free_port(taken: set[int]) -> int:
    """A free loopback port not in ``taken`` (a stopped VM's port is free but still its own), added to it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


class VmLab:
    """The QEMU side of one lab (one inventory directory)."""

    def __init__(self, inventory_dir: Path, log: Callable[[str], None] = _stderr_log) -> None:
        self.dir = inventory_dir.absolute()
        self.state = self.dir / STATE_DIR
        self.id = hashlib.sha256(str(self.dir).encode()).hexdigest()[:12]
        self.log = log

    # -- files ------------------------------------------------------------------------

    def _lock_file(self) -> Path:
        return vm_image.cache_dir() / f"lab-{self.id}.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One `up`/`down` of this lab at a time."""
        self._lock_file().parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_file(), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def forget_lock(self) -> None:
        self._lock_file().unlink(missing_ok=True)

    def pid_file(self, name: str) -> Path:
        return self.state / f"{name}.pid"

    def console(self, name: str) -> Path:
        return self.state / f"{name}.console.log"

    @property
    def switch_socket(self) -> Path:
        return self.state / f"{SWITCH}.ctl"

    def _pid(self, name: str) -> int | None:
        """The live process named by ``<name>.pid`` (None: no file, dead, or not ours)."""
        try:
            pid = int(self.pid_file(name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # A recycled pid would not name this lab's state directory.
        return pid if alive(pid) and str(self.state).encode() in cmdline else None

    def specs(self) -> dict[str, VmSpec]:
        found: dict[str, VmSpec] = {}
        for path in sorted(self.state.glob("lab-*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                spec = VmSpec(**json.loads(path.read_text()))
                found[spec.name] = spec
        return found

    def existing(self) -> dict[str, tuple[LabHost, str]]:
        """Lab VMs recorded here: name -> (host, "running" | "exited")."""
        return {name: (spec.host(), "running" if self._pid(name) else "exited")
                for name, spec in self.specs().items()}

    def processes(self) -> list[int]:
        """Live processes of this lab (VMs and the switch)."""
        names = [p.stem for p in self.state.glob("*.pid")]
        return [pid for pid in (self._pid(n) for n in names) if pid]

    # -- processes --------------------------------------------------------------------

    def _ensure_switch(self) -> None:
        if self._pid(SWITCH):
            return
        if shutil.which("vde_switch") is None:
            raise LabError("the vm lab needs vde_switch for the VMs' own network; install it with: "
                           "apt-get install vde2")
        if len(str(self.switch_socket / "ctl")) >= 100:
            raise LabError(f"the lab's switch socket path {self.switch_socket} is too long for a unix "
                           "socket; use a shorter --inventory-dir")
        shutil.rmtree(self.switch_socket, ignore_errors=True)
        result = subprocess.run(
            ["vde_switch", "--sock", str(self.switch_socket), "--dirmode", "0700", "--mode", "0600",
             "--rcfile", "/dev/null", "--daemon", "--pidfile", str(self.pid_file(SWITCH))],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while result.returncode == 0 and not (self._pid(SWITCH) and (self.switch_socket / "ctl").exists()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if result.returncode != 0 or not self._pid(SWITCH):
            raise LabError(f"vde_switch did not start (exit {result.returncode}): {result.stderr.strip()}")

    def _qemu_command(self, spec: VmSpec, base: vm_image.BaseImage, overlay: Path,
                      public_key: str) -> list[str]:
        binary, _package, machine, console = QEMU[spec.arch]
        key = base64.b64encode(public_key.encode()).decode()
        append = (f"root=/dev/vda rw console={console} quiet systemd.hostname={spec.name} "
                  f"edge_lab.net={spec.lab_mac},{spec.node_ip}/{LAB_PREFIX} edge_lab.key={key}")
        return [
            binary, *machine,
            "-accel", "tcg,thread=multi,tb-size=256", "-m", str(spec.memory_mb), "-smp", str(CPUS),
            "-name", f"edge-lab-{self.id}-{spec.name}", "-nodefaults", "-display", "none",
            "-serial", f"file:{self.console(spec.name)}",
            "-kernel", str(base.kernel), "-initrd", str(base.initrd), "-append", append,
            "-drive", f"if=none,id=root,format=qcow2,cache=unsafe,discard=unmap,file={overlay}",
            "-device", "virtio-blk-pci,drive=root",
            "-netdev", spec.user_netdev(),
            "-device", f"virtio-net-pci,netdev=user,mac={spec.user_mac},romfile=",
            "-netdev", f"vde,id=lab,sock={self.switch_socket}",
            "-device", f"virtio-net-pci,netdev=lab,mac={spec.lab_mac},romfile=",
            "-device", "virtio-rng-pci",
            "-daemonize", "-pidfile", str(self.pid_file(spec.name)),
        ]

    def _boot(self, spec: VmSpec, base: vm_image.BaseImage, public_key: str) -> None:
        binary, package, _machine, _console = QEMU[spec.arch]
        if shutil.which(binary) is None:
            raise LabError(f"{spec.name} ({spec.arch}) needs {binary}; "
                           f"install it with: apt-get install {package}")
        self._remove_vm(spec.name)
        overlay = self.state / f"{spec.name}.qcow2"
        made = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.disk), str(overlay),
             OVERLAY_SIZE], capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if made.returncode != 0:
            raise LabError(f"cannot create {spec.name}'s disk {overlay}: {made.stderr.strip()}")
        (self.state / f"{spec.name}.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
        started = subprocess.run(self._qemu_command(spec, base, overlay, public_key),
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if started.returncode != 0:
            raise LabError(f"{spec.name}: {binary} did not start (exit {started.returncode}): "
                           f"{started.stderr.strip()[-2000:]}")

    def _host_key(self, spec: VmSpec, deadline: float) -> str:
        """The VM's host key as it printed it on its serial console, once sshd answers."""
        console = self.console(spec.name)
        key = ""
        while True:
            if not key:
                with contextlib.suppress(OSError):
                    for line in console.read_text(errors="replace").splitlines():
                        if HOSTKEY_MARKER in line:
                            words = line.split(HOSTKEY_MARKER, 1)[1].split()
                            if len(words) >= 2:
                                key = f"{words[0]} {words[1]}"
            if key and ssh_banner("127.0.0.1", spec.ssh_port, timeout=2.0):
                return key
            if not self._pid(spec.name):
                raise LabError(f"{spec.name} ({spec.arch}) stopped while booting; its console "
                               f"({console}) ends:\n{self._console_tail(spec.name)}")
            if time.monotonic() > deadline:
                raise LabError(f"{spec.name} ({spec.arch}) did not answer SSH on 127.0.0.1:{spec.ssh_port} "
                               f"within {BOOT_TIMEOUT:.0f} s; its console ({console}) ends:\n"
                               f"{self._console_tail(spec.name)}")
            time.sleep(0.5)

    def _console_tail(self, name: str) -> str:
        try:
            return "\n".join(self.console(name).read_text(errors="replace").splitlines()[-25:])
        except OSError:
            return "(no console output)"

    def _kill(self, name: str) -> None:
        pid = self._pid(name)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.05)
        self.pid_file(name).unlink(missing_ok=True)

    def _remove_vm(self, name: str) -> None:
        self._kill(name)
        for suffix in (".qcow2", ".json", ".console.log"):
            (self.state / f"{name}{suffix}").unlink(missing_ok=True)

    # -- API --------------------------------------------------------------------------

    def up(self, arches: list[str], public_key: str, memory_mb: Sequence[int],
           releases: Sequence[str] | None = None) -> tuple[list[LabHost], dict[str, str]]:
        """Create/complete one VM per entry of ``arches`` with its ``memory_mb`` (:func:`parse_memory`)
        and Debian release (``releases``, :func:`edge_provision.lab.options.parse_releases`; Debian 12
        when None); return hosts and known_hosts keys. A running VM of another shape is booted anew."""
        releases = list(releases or [CONTROLLER_RELEASE] * len(arches))
        bases = {(arch, release): vm_image.ensure_base(arch, self.log, release)
                 for arch, release in dict.fromkeys(zip(arches, releases, strict=True))}
        self.state.mkdir(parents=True, exist_ok=True)
        self._ensure_switch()
        have = self.specs()
        shapes = zip(arches, memory_mb, releases, strict=True)
        wanted = {inv.host_name(i): (i, arch, size, release)
                  for i, (arch, size, release) in enumerate(shapes, start=1)}
        for name in have:
            if name not in wanted:
                self._remove_vm(name)
        specs: list[VmSpec] = []
        to_boot: list[VmSpec] = []
        taken = {port for s in have.values() for port in (s.ssh_port, s.api_port) if port}
        for name, (index, arch, size, release) in wanted.items():
            base = bases[arch, release]
            current = have.get(name)
            same = current is not None and ((current.arch, current.image, current.memory_mb)
                                            == (arch, base.disk.parent.name, size))
            if current is not None and same and self._pid(name):
                specs.append(current)
                continue
            port = _free_port(taken)
            api_port = _free_port(taken) if inv.host_group(index) == inv.CONTROL_PLANE else 0
            spec = VmSpec(name=name, index=index, arch=arch, ssh_port=port,
                          node_ip=f"{LAB_SUBNET}.{10 + index}", lab_mac=f"52:54:00:ed:01:{index:02x}",
                          user_mac=f"52:54:00:ed:00:{index:02x}", image=base.disk.parent.name,
                          api_port=api_port, memory_mb=size, release=release)
            specs.append(spec)
            to_boot.append(spec)
        started = time.monotonic()
        for spec in to_boot:
            self._boot(spec, bases[spec.arch, spec.release], public_key)
        deadline = started + BOOT_TIMEOUT
        keys: dict[str, str] = {}
        for spec in specs:
            keys[f"[127.0.0.1]:{spec.ssh_port}"] = self._host_key(spec, deadline)
            if spec in to_boot:
                self.log(f"{spec.name} ({spec.arch}) answers SSH on 127.0.0.1:{spec.ssh_port} "
                         f"{time.monotonic() - started:.0f} s after start")
        return [s.host() for s in specs], keys

    def wait_login(self, hosts: list[LabHost], key: Path, known_hosts: Path) -> None:
        """Every host accepts the lab key with strict host key checking (sshd may still be starting)."""
        deadline = time.monotonic() + 120
        for host in hosts:
            while not ssh_login(key, known_hosts, host, timeout=10):
                if time.monotonic() > deadline:
                    console = self.console(host.name)
                    raise LabError(f"{host.name}: ssh root@127.0.0.1 -p {host.port} with the lab key fails; "
                                   f"its console ({console}) ends:\n{self._console_tail(host.name)}")
                time.sleep(1)

    def down(self) -> None:
        """Kill every VM and the switch, remove the state directory."""
        if not self.state.exists():
            return
        for pid_file in self.state.glob("*.pid"):
            if pid_file.stem != SWITCH:
                self._kill(pid_file.stem)
        self._kill(SWITCH)
        shutil.rmtree(self.state)

    def leftovers(self) -> dict[str, list[str]]:
        """What `down` should have removed: live processes and files of this lab."""
        files = sorted(str(p) for p in self.state.rglob("*")) if self.state.exists() else []
        running = subprocess.run(["pgrep", "-f", str(self.state)], capture_output=True, text=True)
        return {"processes": running.stdout.split(), "files": files}
