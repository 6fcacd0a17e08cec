"""The builders' own Debian root: one cached multiarch build root, so the machine stays untouched.

Every architecture is built the same way, in the same root: an amd64 (the controller's
architecture) Debian bookworm root made by ``mmdebstrap --architectures=<native>,<foreign...>``
holding the native toolchain, ``crossbuild-essential-<arch>`` for each foreign architecture,
the build dependencies of crun for every architecture (``libsystemd-dev:<arch>`` ...) and
qemu-user-static (to run a foreign binary's own checks, e.g. ``crun --version``). A build for
``arch`` then uses ``<triplet>-gcc`` (``x86_64-linux-gnu-gcc`` natively,
``aarch64-linux-gnu-gcc`` for arm64), ``--host=<triplet>`` and the ``<triplet>`` pkg-config
directory: the native and the cross build differ by those names only.

The root is built once, under ``<cache>/build-root/<suite>-<native>-<key>/root``, ``key``
hashing everything that shapes it (suite, architectures, packages, the machine's apt sources,
:data:`BUILDER_REVISION`), and is never changed afterwards: a build runs in it through
``chroot`` in a private mount namespace (``unshare --mount``), with its work directory
bind-mounted at :data:`WORK_MOUNT`; nothing outside that directory is written.
``dpkg --add-architecture`` happens inside the root, never on the machine.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_provision import artifacts
from edge_provision.artifacts import debian, input_key, locked

log = logging.getLogger(__name__)

# Bump when the way the root is made changes (part of the key).
BUILDER_REVISION = "1"
SUITE = "bookworm"
# Architectures the root builds for (the native one is the controller's).
ARCHES = ("amd64", "arm64")
# Debian architecture -> GNU triplet (compiler prefix, multiarch directory) and qemu-user name.
TRIPLETS: Mapping[str, str] = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
QEMU_MACHINES: Mapping[str, str] = {"amd64": "x86_64", "arm64": "aarch64"}
# Native tools: the build systems, crun's generators and man page tool, the emulator.
TOOLS = (
    "build-essential",  # gcc, make, binutils (x86_64-linux-gnu-*)
    "dpkg-dev",  # dpkg-source, dpkg-buildflags, dpkg-parsechangelog
    "xz-utils",
    "pkgconf",
    "gperf",
    "python3",  # libocispec's generator
    "go-md2man",
    "qemu-user-static",  # runs a foreign-arch build's checks (qemu-aarch64-static ./crun --version)
)
# Libraries built against, per architecture: crun 1.8.1's build dependencies.
ARCH_LIBRARIES = ("libc6-dev", "libsystemd-dev", "libyajl-dev", "libseccomp-dev", "libcap-dev")
# Where the build's work directory appears inside the root.
WORK_MOUNT = "/build"
ENV_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class BuildRootError(RuntimeError):
    """The build root could not be made."""


def native_arch() -> str:
    return debian.host_arch()


def packages(native: str, arches: Sequence[str] = ARCHES) -> list[str]:
    """What the root is made with (apt names; foreign-arch packages qualified ``name:arch``)."""
    wanted = list(TOOLS)
    for arch in arches:
        if arch != native:
            wanted.append(f"crossbuild-essential-{arch}")
        wanted += [lib if arch == native else f"{lib}:{arch}" for lib in ARCH_LIBRARIES]
    return wanted


def mmdebstrap_command(target: Path, native: str, sources: Sequence[str],
                       arches: Sequence[str] = ARCHES) -> list[str]:
    order = [native, *(a for a in arches if a != native)]
    return [
        "mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
        f"--architectures={','.join(order)}",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
        f"--include={','.join(packages(native, arches))}",
        SUITE, str(target), *sources,
    ]


def root_key(native: str, sources: Sequence[str], arches: Sequence[str] = ARCHES) -> str:
    return input_key(BUILDER_REVISION, SUITE, native, ",".join(arches), " ".join(packages(native, arches)),
                     *sources)


@dataclass(frozen=True)
class BuildRoot:
    path: Path  # the root directory (chroot target)
    native: str
    key: str

    def triplet(self, arch: str) -> str:
        try:
            return TRIPLETS[arch]
        except KeyError:
            raise BuildRootError(f"the build root knows no architecture {arch!r} "
                                 f"(known: {', '.join(TRIPLETS)})") from None

    def tool(self, arch: str, name: str) -> str:
        """``<triplet>-<name>``: the toolchain program ``name`` (gcc, strip, nm) targeting ``arch``."""
        return f"{self.triplet(arch)}-{name}"

    def emulator(self, arch: str) -> list[str]:
        """The prefix that runs an ``arch`` binary in the root ([] for the native architecture)."""
        return [] if arch == self.native else [f"qemu-{QEMU_MACHINES[arch]}-static"]

    def pkg_config_libdir(self, arch: str) -> str:
        return f"/usr/lib/{self.triplet(arch)}/pkgconfig:/usr/share/pkgconfig"

    def command(self, cmd: Sequence[str], *, work: Path, cwd: str = WORK_MOUNT,
                env: Mapping[str, str] | None = None, read_only: bool = False) -> list[str]:
        """argv that runs ``cmd`` in the root, ``work`` mounted at WORK_MOUNT (``read_only``: not
        writable), from ``cwd`` (inside)."""
        return root_command(self.path, cmd, work=work, cwd=cwd, env=env, read_only=read_only)


ROOT_SCRIPT = (
    'set -eu; root=$1 work=$2 mode=$3; shift 3; '
    'mount --rbind /dev "$root/dev"; mount -t proc proc "$root/proc"; '
    f'mount --bind "$work" "$root{WORK_MOUNT}"; '
    f'if [ "$mode" = ro ]; then mount -o remount,bind,ro "$root{WORK_MOUNT}"; fi; '
    'exec chroot "$root" "$@"'
)


def root_command(root: Path, cmd: Sequence[str], *, work: Path, cwd: str = WORK_MOUNT,
                 env: Mapping[str, str] | None = None, read_only: bool = False) -> list[str]:
    """``unshare --mount`` (mounts vanish with the process) + ``chroot`` with a clean environment."""
    environment = {"PATH": ENV_PATH, "LC_ALL": "C", "HOME": WORK_MOUNT, **(env or {})}
    return [
        "unshare", "--mount", "--fork", "--propagation", "private", "--",
        "sh", "-c", ROOT_SCRIPT, "edge-build-root", str(root), str(work), "ro" if read_only else "rw",
        "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environment.items()),
        "sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd, *cmd,
    ]


def inside(path: Path, work: Path) -> str:
    """Where ``path`` (under ``work``) is seen inside the root."""
    rel = path.relative_to(work)
    return WORK_MOUNT if str(rel) == "." else f"{WORK_MOUNT}/{rel}"


def cache_dir() -> Path:
    return artifacts.CACHE_DIR / "build-root"


def _inputs() -> tuple[str, list[str]]:
    native = native_arch()
    if native not in TRIPLETS:
        raise BuildRootError(f"the build root runs on {', '.join(TRIPLETS)} controllers, not {native}")
    sources = debian.apt_sources()
    if not sources:
        raise BuildRootError("no apt sources in /etc/apt/sources.list*: the build root needs a Debian mirror")
    return native, sources


def current_key(arches: Sequence[str] = ARCHES) -> str:
    """The key of the root :func:`ensure_root` returns (without making it)."""
    native, sources = _inputs()
    return root_key(native, sources, arches)


def ensure_root(arches: Sequence[str] = ARCHES) -> BuildRoot:
    """The cached build root, made (once per key, locked) when missing."""
    native, sources = _inputs()
    key = root_key(native, sources, arches)
    dest = cache_dir() / f"{SUITE}-{native}-{key}"
    result = BuildRoot(dest / "root", native, key)
    if (dest / "manifest.json").is_file():
        return result
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest.parent / f".{dest.name}.lock"):
        if (dest / "manifest.json").is_file():
            return result
        if shutil.which("mmdebstrap") is None:
            raise BuildRootError("the build root is made with mmdebstrap: apt-get install mmdebstrap "
                                 "(scripts/setup.sh installs it)")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        log_file = dest.parent / f"{dest.name}.log"
        # In a mount namespace of its own: the mounts mmdebstrap makes in the root (/dev, /proc, /sys)
        # vanish with it, even when it is killed.
        cmd = ["unshare", "--mount", "--propagation", "private", "--",
               *mmdebstrap_command(partial / "root", native, sources, arches)]
        log.info("making the build root %s (mmdebstrap, %s); log: %s", dest.name, ",".join(arches), log_file)
        started = time.monotonic()
        with log_file.open("w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  check=False, env={"PATH": ENV_PATH, "LC_ALL": "C.UTF-8"})
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
            raise BuildRootError(f"mmdebstrap exited with {proc.returncode} (log: {log_file}):\n{tail}")
        (partial / "root" / WORK_MOUNT.lstrip("/")).mkdir(exist_ok=True)
        seconds = round(time.monotonic() - started, 1)
        (partial / "manifest.json").write_text(json.dumps(
            {"suite": SUITE, "native": native, "arches": list(arches), "key": key,
             "packages": packages(native, arches), "sources": list(sources),
             "builder_revision": BUILDER_REVISION, "build_seconds": seconds}, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        partial.rename(dest)
        log_file.rename(dest / "build.log")
        log.info("build root made in %.0f s: %s", seconds, dest)
        for old in dest.parent.glob(f"{SUITE}-{native}-*"):
            if old != dest and old.is_dir() and not old.name.endswith(".partial"):
                shutil.rmtree(old, ignore_errors=True)  # superseded by this one
    return result


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    root = ensure_root()
    print(f"{root.path}\t{time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
