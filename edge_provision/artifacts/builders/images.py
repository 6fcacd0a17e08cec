"""The lab's container images, built into registry-less OCI tarballs (see ``artifacts.oci``).

Each image is a tarball for ``ctr -n k8s.io images import``, built in pure Python and cached under
``<cache>/artifacts/<name>-image/``, keyed by every input (binaries' sha256, .deb versions and
sha256, reference, config, zlib); ``image.json`` beside it records reference, digest, layers and
the checks run while building. The samples and the sandbox image:

``edge-provision.local/wasi-demo:<WASI_DEMO_VERSION>``
    ``/wasi_demo.wasm`` (compiled here from ``artifacts/wasi_demo/wasi_demo.c`` with Debian's
    clang + lld + wasi-libc), entrypoint ``["/wasi_demo.wasm"]``, manifest annotation
    ``module.wasm.image/variant=compat-smart``.
``edge-provision.local/busybox:<busybox version>``
    Debian's busybox-static: ``/bin/busybox`` and the ``sh``, ``echo``, ``sleep``, ``cat``
    links, ``/tmp``; the container-workload sample.
``edge-provision.local/pause:<TAG>``
    ``build/pause/linux/pause.c`` of the ``k8s.io/kubernetes`` Go module the Kubernetes build
    downloads (:mod:`builders.kubernetes_modules`; 3.10.1 for 1.34, the ``TAG`` of its
    ``build/pause/Makefile``, what kubeadm expects), compiled ``-static -O2`` in the builders'
    root; the CRI's sandbox ("pause") image.

The Kubernetes images (:data:`CLUSTER_IMAGES`), what kubeadm asks for with
``imageRepository: edge-provision.local``; their binaries come from the Go module builds of
:mod:`builders.kubernetes_modules` (static), their tags from the pins of versions.yml
(:func:`references`: nothing is hard-coded here):

``kube-apiserver``, ``kube-controller-manager``, ``kube-scheduler``: ``:v<kubernetes version>``
    ``/usr/local/bin/<component>`` on ``PATH``: kubeadm's static pods run ``<component> --flags``.
``etcd:<etcd version>-0``
    ``/usr/local/bin/etcd`` and ``etcdctl``; kubeadm's static pod runs ``etcd ...``.
``kube-proxy:v<kubernetes version>``
    ``/usr/local/bin/kube-proxy`` on the iptables/conntrack layer below.
``coredns:v<coredns version>``
    ``/coredns``, the entrypoint (kubeadm's Deployment passes ``-conf /etc/coredns/Corefile``).
``flannel:v<flannel version>``
    ``/opt/bin/flanneld`` (the entrypoint) and the CNI plugin ``/opt/cni/bin/flannel``, on the
    same iptables/conntrack layer.

The iptables/conntrack layer (:func:`netfilter_layer`): Debian's ``iptables`` and ``conntrack``
and their dependency closure (libc6 and the netfilter libraries) of the controller's release for
the image's architecture (:func:`edge_provision.artifacts.debian.debs`), unpacked with
``dpkg-deb --fsys-tarfile`` without documentation or glibc's gconv modules. No maintainer script
runs, so the links Debian's postinst makes with update-alternatives are made here:
``/usr/sbin/{iptables,ip6tables}{,-save,-restore}`` -> ``xtables-nft-multi`` (the nft variant,
what Debian 12 and 13 nodes use). The same files make the same layer bytes, so kube-proxy's and
flannel's images share one blob. Before an image with it is written, ``iptables --version``
(must say ``nf_tables``), ``ip6tables --version`` and ``conntrack --version`` run in a chroot of
the layer (another architecture through qemu-user, :func:`netfilter_check`).

:func:`build_cluster_image` builds one image by name; which images a node imports is the cluster
roles' (``control_plane_kubeadm_images``, ``kubernetes_node_images``).

Platform of the Wasm image. The WasmEdge guides tag Wasm images with the platform
``wasi/wasm``. containerd does not run those through its CRI plugin on a Linux node:
``ctr images import`` of an index whose only manifest is ``wasi/wasm`` fails ("no match for
platform in manifest") unless given ``--platform wasi/wasm``, and even then the CRI plugin
cannot resolve the image for the node ("get image id: no match for platform in manifest",
containerd 1.6.20, checked). So the Wasm image is a *Linux* image: one image index with a
``linux/amd64``, ``linux/arm64`` and ``linux/arm/v7`` manifest, all sharing the one layer
(the .wasm is architecture independent). Each node's containerd picks its own manifest on
import and in the CRI, with no flags. crun (built with a Wasm engine) decides to run the
entrypoint as Wasm from the OCI spec's annotations: the pod carries
``module.wasm.image/variant: compat-smart`` and containerd passes it through
``pod_annotations`` of the Wasm runtime handler (``edge_provision.stages.runtime.containerd_config``).
containerd does not copy image annotations into the spec; the manifest annotation is
there for CRI-O (which does) and for people reading the image.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_provision import artifacts
from edge_provision.artifacts import ArtifactBuildError, build_dir, debian, input_key, oci, run, sha256_file
from edge_provision.artifacts.builders import kubernetes_modules
from edge_provision.artifacts.builders._common import elf_info, static_elf_problem
from edge_provision.artifacts.debian import host_arch, package_version, upstream_version

REGISTRY = "edge-provision.local"
WASI_DEMO_VERSION = "0.2.0"
WASI_DEMO_SOURCE = Path(__file__).resolve().parent.parent / "wasi_demo" / "wasi_demo.c"
WASM_PLATFORMS = ("amd64", "arm64", "armhf")  # Debian arch names; see the module doc
WASM_VARIANT_ANNOTATION = "module.wasm.image/variant"
WASM_VARIANT = "compat-smart"
WASM_CFLAGS = ("--target=wasm32-wasi", "-O2", "-Wall", "-Wextra", "-Werror", "-Wl,--strip-all")
PAUSE_CFLAGS = ("-static", "-O2", "-Wall", "-Werror", "-s")
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "cat")
BUSYBOX_PATH = Path("/bin/busybox")
BUSYBOX_PACKAGE = "busybox-static"
# The files of the k8s.io/kubernetes module the pause image is made from (kept as name -> member).
PAUSE_MEMBERS: Mapping[str, str] = {"pause.c": "build/pause/linux/pause.c",
                                     "Makefile": "build/pause/Makefile"}
# Bump when a builder's output changes for the same inputs (it is part of every cache key).
BUILDER_REVISION = "1"

_TOOL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"}


class ImageBuildError(RuntimeError):
    """A build input or tool is missing, or a tool failed (then an :class:`ImageStepError`)."""


class ImageStepError(ArtifactBuildError, ImageBuildError):
    """A tool an image build runs failed: the step, the command and the last lines of its output."""

    build = "image build"


# --------------------------------------------------------------------------- helpers


def _tool(what: str, args: Sequence[str], cwd: Path | None = None) -> str:
    """stdout of a build tool run with the images' tool environment."""
    return run(what, args, cwd=cwd, env=_TOOL_ENV, error=ImageStepError, stdout_only=True)


def _binary_info(data: bytes) -> tuple[str, bool]:
    """:func:`elf_info` of a binary an image is made of, an ImageBuildError when it is no ELF file."""
    try:
        return elf_info(data)
    except ValueError as exc:
        raise ImageBuildError(str(exc)) from None


def _cached(
    name: str, version: str, arch: str, key: str, filename: str, make: Callable[[Path], None]
) -> Path:
    """``<build_dir>/<filename>``, made by ``make(tmpdir)`` unless a previous build left it.

    The build happens in a temporary sibling directory renamed into place, so a directory
    that exists always holds a whole build.
    """
    final = build_dir(name, version, arch, key)
    if (final / filename).is_file():
        return final / filename
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the cache directory
    try:
        make(tmp)
        if not (tmp / filename).is_file():
            raise ImageBuildError(f"the build of {name} made no {filename}")
        if final.exists():  # a half-made or older directory without the file
            shutil.rmtree(final)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / filename).is_file():  # a concurrent build did not win either
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / filename


def _write_image(
    image: oci.Image, out: Path, filename: str, inputs: Mapping[str, str],
    *, checks: Mapping[str, str] | None = None,
) -> None:
    """The tarball and ``image.json`` beside it (reference, digest, size, inputs, the layers'
    digests, and what was checked while building, e.g. commands run in its root file system)."""
    path = oci.write_archive(image, out / filename)
    info: dict[str, Any] = {
        "reference": image.reference,
        "digest": image.digest,
        "platforms": sorted(image.manifests),
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "inputs": dict(inputs),
        "layers": [layer.blob.digest for layer in image.layers],
    }
    if checks:
        info["checks"] = dict(checks)
    (out / "image.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class ImageInfo:
    reference: str
    digest: str  # the image index's digest, as ``ctr images ls`` shows it
    platforms: tuple[str, ...]
    size: int
    sha256: str  # of the tarball


def image_info(tarball: Path) -> ImageInfo:
    """What a builder recorded beside the tarball it returned."""
    doc = json.loads((tarball.parent / "image.json").read_text())
    return ImageInfo(doc["reference"], doc["digest"], tuple(doc["platforms"]), doc["size"], doc["sha256"])


# --------------------------------------------------------------------------- the Wasm sample


def image_entry(name: str, tarball: Path) -> dict[str, Any]:
    """What the roles and deploys import: name, reference, digest, tarball path, file, size, sha256."""
    info = image_info(tarball)
    return {"name": name, "reference": info.reference, "digest": info.digest, "path": str(tarball),
            "file": tarball.name, "size": info.size, "sha256": info.sha256}


def compile_wasi_demo(source: Path = WASI_DEMO_SOURCE) -> Path:
    """``wasi_demo.wasm`` compiled from ``source`` (cached; Debian clang, lld, wasi-libc).

    Debian's wasi-libc installs into clang's multiarch paths (``/usr/include/wasm32-wasi``,
    ``/usr/lib/wasm32-wasi``), so no ``--sysroot`` is given: the wasi-sdk style
    ``/usr/share/wasi-sysroot`` does not exist on Debian 12.
    """
    clang = shutil.which("clang", path=_TOOL_ENV["PATH"])
    if clang is None:
        raise ImageBuildError(
            "clang not found: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32"
        )
    if not package_version("wasi-libc"):
        raise ImageBuildError("wasi-libc is not installed: apt-get install wasi-libc")
    clang_version = _tool("clang --version", [clang, "--version"]).splitlines()[0]
    key = input_key(
        BUILDER_REVISION,
        sha256_file(source),
        clang_version,
        package_version("wasi-libc"),
        package_version("lld"),
        *WASM_CFLAGS,
    )

    def make(out: Path) -> None:
        # Compile a copy under a fixed name so the output does not depend on the checkout path.
        src = out / "wasi_demo.c"
        shutil.copyfile(source, src)
        _tool("clang (wasm32-wasi)", [clang, *WASM_CFLAGS, "-o", "wasi_demo.wasm", "wasi_demo.c"], cwd=out)
        src.unlink()
        if (out / "wasi_demo.wasm").read_bytes()[:4] != b"\0asm":
            raise ImageBuildError("clang made no WebAssembly module")

    return _cached("wasi-demo-wasm", WASI_DEMO_VERSION, "wasm32", key, "wasi_demo.wasm", make)


def wasi_demo_reference() -> str:
    return f"{REGISTRY}/wasi-demo:{WASI_DEMO_VERSION}"


def build_wasi_demo_image(platforms: Sequence[str] = WASM_PLATFORMS) -> Path:
    """Tarball of ``edge-provision.local/wasi-demo:<version>`` (one manifest per Linux arch)."""
    wasm_path = compile_wasi_demo()
    wasm = wasm_path.read_bytes()
    inputs = {
        "wasi_demo.wasm": hashlib.sha256(wasm).hexdigest(),
        "platforms": ",".join(platforms),
        "zlib": oci.zlib_version(),
    }
    key = input_key(BUILDER_REVISION, *(f"{k}={v}" for k, v in sorted(inputs.items())))

    def make(out: Path) -> None:
        image = oci.build_image(
            wasi_demo_reference(),
            [[oci.FileEntry.executable("/wasi_demo.wasm", wasm)]],
            config=oci.ImageConfig(entrypoint=["/wasi_demo.wasm"]),
            platforms=[oci.Platform.linux(a) for a in platforms],
            annotations={
                "org.opencontainers.image.title": "wasi-demo",
                "org.opencontainers.image.version": WASI_DEMO_VERSION,
                "org.opencontainers.image.description": "edge-provision's sample WASI workload",
            },
            manifest_annotations={WASM_VARIANT_ANNOTATION: WASM_VARIANT},
        )
        _write_image(image, out, "wasi-demo.tar", inputs)

    return _cached("wasi-demo-image", WASI_DEMO_VERSION, "wasm", key, "wasi-demo.tar", make)


# --------------------------------------------------------------------------- busybox


def busybox_deb(arch: str) -> tuple[Path, str]:
    """Debian's busybox-static .deb for ``arch`` and its version, downloaded on the controller with
    ``apt-get download`` (:func:`edge_provision.artifacts.debian.debs`: apt checks it against the
    signed indexes)."""
    for deb in debian.debs([BUSYBOX_PACKAGE], arch):
        if deb["package"] == BUSYBOX_PACKAGE:
            return Path(deb["path"]), deb["version"]
    raise ImageBuildError(f"apt-get download yielded no {BUSYBOX_PACKAGE} for {arch}")


def _deb_fsys_tar(deb: Path) -> bytes:
    """The data archive of a .deb, as a tar (``dpkg-deb --fsys-tarfile``)."""
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False,
                          env=_TOOL_ENV)
    if proc.returncode != 0:
        error = proc.stderr.decode(errors="replace")
        raise ImageBuildError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {error}")
    return proc.stdout


def deb_member(deb: Path, member: str) -> bytes:
    """The file ``member`` (an absolute path) of a .deb's data archive (``dpkg-deb --fsys-tarfile``)."""
    with tarfile.open(fileobj=io.BytesIO(_deb_fsys_tar(deb))) as tar:
        for entry in tar:
            if entry.name.lstrip(".") == member and entry.isfile():
                f = tar.extractfile(entry)
                if f is not None:
                    return f.read()
    raise ImageBuildError(f"{deb.name} has no {member}")


def build_busybox_image(arch: str | None = None) -> Path:
    """Tarball of ``edge-provision.local/busybox:<version>`` for ``arch`` (default: the controller's)
    from Debian's busybox-static of that architecture (:func:`busybox_deb`); the binary's own ELF
    machine is checked against ``arch``.
    """
    arch = arch or host_arch()
    deb, pkg_version = busybox_deb(arch)
    data = deb_member(deb, str(BUSYBOX_PATH))
    built_arch, static = _binary_info(data)
    if built_arch != arch or not static:
        raise ImageBuildError(
            f"{deb.name}: {BUSYBOX_PATH} is {built_arch}, static={static}; wanted static {arch}"
        )
    version = upstream_version(pkg_version)
    reference = f"{REGISTRY}/busybox:{version}"
    inputs = {
        "busybox": hashlib.sha256(data).hexdigest(),
        "busybox-static": pkg_version,
        "applets": ",".join(BUSYBOX_APPLETS),
        "zlib": oci.zlib_version(),
    }
    key = input_key(BUILDER_REVISION, *(f"{k}={v}" for k, v in sorted(inputs.items())))

    def make(out: Path) -> None:
        files = [
            oci.FileEntry.executable("/bin/busybox", data),
            *(oci.FileEntry.symlink(f"/bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS),
            oci.FileEntry.dir("/tmp", 0o1777),
        ]
        image = oci.build_image(
            reference,
            [files],
            config=oci.ImageConfig(
                cmd=["sh"], env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
            ),
            platforms=[oci.Platform.linux(arch)],
            annotations={
                "org.opencontainers.image.title": "busybox",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.description": f"Debian busybox-static {pkg_version}",
            },
        )
        _write_image(image, out, "busybox.tar", inputs)

    return _cached("busybox-image", version, arch, key, "busybox.tar", make)


# --------------------------------------------------------------------------- Kubernetes pins


def _minor(minor: str | None) -> str:
    return minor or kubernetes_modules.DEFAULT_MINOR


def _pins(minor: str | None) -> Any:
    """The ``kubernetes: <minor>:`` pins of versions.yml (:func:`kubernetes_modules.load_pins`)."""
    return kubernetes_modules.load_pins(minor=_minor(minor))


def _flannel_version() -> str:
    """flannel's pinned version (no leading v), as the module build reads it."""
    return str(kubernetes_modules.load_flannel_pins().version).removeprefix("v")


# --------------------------------------------------------------------------- pause


@dataclass(frozen=True)
class PauseSource:
    pause_c: Path
    version: str  # the pause image's version (TAG in build/pause/Makefile), e.g. "3.10.1"
    kubernetes_version: str  # of the k8s.io/kubernetes module it comes from, e.g. "1.34.12"
    module: str  # e.g. "k8s.io/kubernetes@v1.34.12"
    module_sum: str  # the module zip's go.sum hash ("h1:...")


def pause_tag(makefile: str) -> str:
    """The pause version in Kubernetes' build/pause/Makefile (``TAG = 3.4`` / ``TAG ?= 3.10.1``)."""
    match = re.search(r"^TAG\s*[?:]?=\s*(\S+)\s*$", makefile, re.MULTILINE)
    if not match:
        raise ImageBuildError("no TAG in build/pause/Makefile")
    return match.group(1)


def fetch_pause_source(minor: str | None = None) -> PauseSource:
    """pause.c (and its Makefile, for the version) from the ``k8s.io/kubernetes`` module of
    ``minor``'s pinned release (default :data:`kubernetes_modules.DEFAULT_MINOR`).

    The module is the one the Kubernetes module build downloads
    (:func:`kubernetes_modules.download_module`, the shared Go module cache). The two files and
    the module's go.sum hash are copied to
    ``<cache>/artifacts/sources/kubernetes-module-v<version>/``: from then on
    :func:`pause_reference` reads them without go.
    """
    pins = _pins(minor)
    version = f"v{pins.version}"
    dest = artifacts.ARTIFACTS_DIR / "sources" / f"kubernetes-module-{version}"
    with artifacts.locked(dest.parent / ".lock"):  # one copy, also for the hosts of another architecture
        if not all((dest / name).is_file() for name in (*PAUSE_MEMBERS, "module.json")):
            _copy_pause_source(version, dest)
    module = json.loads((dest / "module.json").read_text())
    return PauseSource(
        pause_c=dest / "pause.c",
        version=pause_tag((dest / "Makefile").read_text()),
        kubernetes_version=pins.version,
        module=f"{module['path']}@{module['version']}",
        module_sum=module["sum"],
    )


def _copy_pause_source(version: str, dest: Path) -> None:
    try:
        info = kubernetes_modules.download_module(kubernetes_modules.KUBERNETES_MODULE, version)
    except kubernetes_modules.KubernetesModulesBuildError as exc:
        raise ImageBuildError(f"pause source: {exc}") from exc
    module_dir = Path(info["Dir"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp_name:
        out = Path(tmp_name) / "out"
        out.mkdir()
        for name, member in PAUSE_MEMBERS.items():
            if not (module_dir / member).is_file():
                raise ImageBuildError(f"{kubernetes_modules.KUBERNETES_MODULE}@{version} has no {member}")
            shutil.copyfile(module_dir / member, out / name)
        record = {"path": info["Path"], "version": info["Version"], "sum": info.get("Sum", ""),
                  "members": dict(PAUSE_MEMBERS)}
        (out / "module.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        out.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)


def compile_pause(arch: str = "amd64", source: PauseSource | None = None) -> Path:
    """A static ``pause`` binary for ``arch`` (Debian arch name), cached.

    Compiled in the builders' root (:mod:`builders.build_root`) with ``<triplet>-gcc``: the same
    command for every architecture, the controller's own included.
    """
    from edge_provision.artifacts.builders import build_root

    source = source or fetch_pause_source()
    try:
        root = build_root.ensure_root()
        gcc = root.tool(arch, "gcc")
    except build_root.BuildRootError as exc:
        raise ImageBuildError(f"pause for {arch}: {exc}") from exc
    define = f"-DVERSION=v{source.version}-kubernetes-{source.kubernetes_version}"
    flags = (*PAUSE_CFLAGS, define)
    key = input_key(BUILDER_REVISION, sha256_file(source.pause_c), f"build-root={root.key}", gcc, *flags)

    def make(out: Path) -> None:
        shutil.copyfile(source.pause_c, out / "pause.c")
        _tool(f"{gcc} pause.c (build root)", root.command([gcc, *flags, "-o", "pause", "pause.c"], work=out))
        (out / "pause.c").unlink()
        built_arch, static = _binary_info((out / "pause").read_bytes())
        if built_arch != arch or not static:
            raise ImageBuildError(f"pause came out {built_arch}, static={static}; wanted static {arch}")

    return _cached("pause-bin", source.version, arch, key, "pause", make)


def build_pause_image(arch: str = "amd64", *, minor: str | None = None) -> Path:
    """Tarball of ``edge-provision.local/pause:<version>`` for ``arch`` (Debian arch name)."""
    source = fetch_pause_source(minor)
    binary = compile_pause(arch, source).read_bytes()
    reference = f"{REGISTRY}/pause:{source.version}"
    inputs = {
        "pause": hashlib.sha256(binary).hexdigest(),
        "kubernetes-module": f"{source.module} {source.module_sum}",
        "zlib": oci.zlib_version(),
    }
    key = input_key(BUILDER_REVISION, *(f"{k}={v}" for k, v in sorted(inputs.items())))

    def make(out: Path) -> None:
        image = oci.build_image(
            reference,
            [[oci.FileEntry.executable("/pause", binary)]],
            config=oci.ImageConfig(entrypoint=["/pause"]),
            platforms=[oci.Platform.linux(arch)],
            annotations={
                "org.opencontainers.image.title": "pause",
                "org.opencontainers.image.version": source.version,
                "org.opencontainers.image.description": (
                    f"Kubernetes build/pause/linux/pause.c of the Go module {source.module}"
                ),
            },
        )
        _write_image(image, out, "pause.tar", inputs)

    return _cached("pause-image", source.version, arch, key, "pause.tar", make)


def pause_reference(minor: str | None = None) -> str:
    """``edge-provision.local/pause:<version>`` (reads the version from the cached source)."""
    return f"{REGISTRY}/pause:{fetch_pause_source(minor).version}"


# --------------------------------------------------------------------------- references

CONTROL_PLANE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Every image of the kubeadm cluster but pause (the runtime stage imports that one with containerd).
CLUSTER_IMAGES = (*CONTROL_PLANE_COMPONENTS, "etcd", "kube-proxy", "coredns", "flannel")
KNOWN_IMAGES = (*CLUSTER_IMAGES, "pause")
ETCD_IMAGE_REVISION = "0"  # kubeadm tags etcd <etcd version>-<image revision>
IMAGE_ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_reference(name: str, minor: str | None = None) -> str:
    """The reference of the image ``name`` (:data:`CLUSTER_IMAGES` or ``pause``) for ``minor``'s pins:
    what its builder tags and what kubeadm asks for with ``imageRepository: edge-provision.local``."""
    if name == "pause":
        return pause_reference(minor)
    if name == "flannel":
        return f"{REGISTRY}/flannel:v{_flannel_version()}"
    pins = _pins(minor)
    if name in (*CONTROL_PLANE_COMPONENTS, "kube-proxy"):
        return f"{REGISTRY}/{name}:v{pins.version}"
    if name == "etcd":
        return f"{REGISTRY}/etcd:{pins.etcd_version}-{ETCD_IMAGE_REVISION}"
    if name == "coredns":
        return f"{REGISTRY}/coredns:v{pins.coredns_version}"
    raise ImageBuildError(f"unknown Kubernetes image {name!r} (known: {', '.join(KNOWN_IMAGES)})")


def references(minor: str | None = None) -> dict[str, str]:
    """Image name -> reference of every image of :data:`CLUSTER_IMAGES` and pause, for ``minor``'s
    pins (versions.yml; nothing is built; pause's tag is read from the Kubernetes module's
    build/pause/Makefile, :func:`fetch_pause_source`)."""
    return {name: image_reference(name, minor) for name in KNOWN_IMAGES}


# --------------------------------------------------------------------------- iptables and conntrack

NETFILTER_PACKAGES = ("iptables", "conntrack")
# What a container does not need of the packages: documentation, and glibc's iconv modules.
DEB_DROPPED = re.compile(r"^usr/share/(doc|man|info|lintian|bug|locale)(/|$)|^usr/lib/[^/]+/gconv(/|$)")
# Debian's iptables postinst makes these alternatives (update-alternatives, which `dpkg-deb -x`
# does not run); the nft variant wins there on a new system, as here.
IPTABLES_NFT = "xtables-nft-multi"
IPTABLES_COMMANDS = ("iptables", "iptables-restore", "iptables-save",
                     "ip6tables", "ip6tables-restore", "ip6tables-save")
SBIN = "/usr/sbin"


def deb_files(deb: Path) -> list[oci.FileEntry]:
    """Every entry of a .deb's data archive as image files (a hard link becomes a copy)."""
    entries: list[oci.FileEntry] = []
    data: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(_deb_fsys_tar(deb))) as tar:
        for member in tar:
            path = posixpath.normpath("/" + member.name)
            if path == "/":
                continue
            mode = member.mode & 0o7777
            if member.isdir():
                entries.append(oci.FileEntry.dir(path, mode))
            elif member.issym():
                entries.append(oci.FileEntry.symlink(path, member.linkname))
            elif member.isreg():
                f = tar.extractfile(member)
                data[path] = f.read() if f is not None else b""
                entries.append(oci.FileEntry.file(path, data[path], mode))
            elif member.islnk():
                target = posixpath.normpath("/" + member.linkname)
                if target not in data:
                    raise ImageBuildError(f"{deb.name}: hard link {path} to {target}, which comes later")
                entries.append(oci.FileEntry.file(path, data[target], mode))
            else:
                raise ImageBuildError(f"{deb.name}: {member.name} is neither file, directory nor link")
    return entries


def merge_package_files(packages: Mapping[str, Sequence[oci.FileEntry]]) -> list[oci.FileEntry]:
    """The files of several packages (package name -> :func:`deb_files`) as one list sorted by path:
    :data:`DEB_DROPPED` left out, a directory of several packages once (the first one's mode); a
    file or link that two packages give differently is an error."""
    merged: dict[str, tuple[str, oci.FileEntry]] = {}
    for package, files in packages.items():
        for entry in files:
            path = entry.path.lstrip("/")
            if DEB_DROPPED.match(path):
                continue
            seen = merged.get(path)
            if seen is None:
                merged[path] = (package, entry)
            elif not (seen[1].kind == entry.kind == "dir") and seen[1] != entry:
                raise ImageBuildError(f"/{path} is in {seen[0]} and in {package}, not the same")
    return [merged[path][1] for path in sorted(merged)]


def iptables_nft_links(files: Sequence[oci.FileEntry]) -> list[oci.FileEntry]:
    """``/usr/sbin/<command> -> xtables-nft-multi`` for each of :data:`IPTABLES_COMMANDS`: the
    alternatives Debian's iptables postinst would make, set to the nft variant (the binary picks
    its command from ``argv[0]``)."""
    paths = {entry.path.lstrip("/"): entry for entry in files}
    multi = paths.get(f"{SBIN}/{IPTABLES_NFT}".lstrip("/"))
    if multi is None or multi.kind != "file":
        raise ImageBuildError(f"the iptables package has no {SBIN}/{IPTABLES_NFT}")
    links = []
    for command in IPTABLES_COMMANDS:
        path = f"{SBIN}/{command}"
        if path.lstrip("/") in paths:
            raise ImageBuildError(f"{path} is in the packages already: the alternatives are not ours to make")
        links.append(oci.FileEntry.symlink(path, IPTABLES_NFT))
    return links


def netfilter_files(debs: Sequence[Mapping[str, str]]) -> list[oci.FileEntry]:
    """The layer of :data:`NETFILTER_PACKAGES`: the files of ``debs`` (:func:`debian.debs` entries,
    the packages and their closure) merged, and the iptables links to the nft variant."""
    files = merge_package_files({deb["package"]: deb_files(Path(deb["path"])) for deb in debs})
    return sorted([*files, *iptables_nft_links(files)], key=lambda entry: entry.path.lstrip("/"))


def materialise(files: Sequence[oci.FileEntry], root: Path) -> None:
    """Write image files under ``root`` (a directory tree to chroot into)."""
    for entry in sorted(files, key=lambda e: e.path.lstrip("/")):
        path = root / entry.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "dir":
            path.mkdir(exist_ok=True)
            path.chmod(entry.mode)
        elif entry.kind == "symlink":
            path.symlink_to(entry.target)
        else:
            path.write_bytes(entry.data)
            path.chmod(entry.mode)


# What iptables-nft and conntrack say under qemu-user, which has no netfilter netlink sockets: they
# got as far as opening one, so the binary, the loader and every library it links were found.
QEMU_NO_NETLINK = {"iptables": "Failed to initialize nft: Protocol not supported",
                   "ip6tables": "Failed to initialize nft: Protocol not supported",
                   "conntrack": "mnl_socket_open: Protocol not supported"}


def netfilter_check(files: Sequence[oci.FileEntry], arch: str) -> dict[str, str]:
    """Run ``iptables --version``, ``ip6tables --version`` and ``conntrack --version`` in a chroot
    of ``files``: command -> output. The iptables ones must say ``(nf_tables)``.

    Another architecture's binaries run through ``qemu-<machine>-static`` (copied into the
    chroot), whose user-mode emulation has no netfilter netlink socket: there a command may fail
    with its :data:`QEMU_NO_NETLINK` message instead (iptables' names nft: the nft variant). Skipped
    (``{"skipped": why}``) when not root or without the emulator.
    """
    from edge_provision.artifacts.builders.build_root import QEMU_MACHINES

    if os.geteuid() != 0:
        return {"skipped": "chroot needs root"}
    emulator = None
    if arch != host_arch():
        qemu = f"qemu-{QEMU_MACHINES.get(arch, arch)}-static"
        emulator = shutil.which(qemu, path=_TOOL_ENV["PATH"])
        if emulator is None:
            return {"skipped": f"no {qemu} to run {arch} binaries"}
    outputs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="netfilter-rootfs-") as tmp:
        root = Path(tmp)
        materialise(files, root)
        prefix = []
        if emulator is not None:
            shutil.copy2(emulator, root / "emulator")
            prefix = ["/emulator"]
        for command in ("iptables", "ip6tables", "conntrack"):
            argv = [f"{SBIN}/{command}", "--version"]
            proc = subprocess.run(["chroot", str(root), *prefix, *argv], capture_output=True, text=True,
                                  env=_TOOL_ENV, check=False, stdin=subprocess.DEVNULL)
            output = (proc.stdout + proc.stderr).strip()
            want = "conntrack v" if command == "conntrack" else "(nf_tables)"
            ok = proc.returncode == 0 and want in output
            if not ok and emulator is not None and QEMU_NO_NETLINK[command] in output:
                ok, output = True, f"{output} (qemu-user: no netfilter netlink; it started)"
            if not ok:
                raise ImageBuildError(f"`{' '.join(argv)}` in a chroot of the {arch} iptables/conntrack "
                                      f"layer exited with {proc.returncode}: {output}")
            outputs[" ".join(argv)] = output
    return outputs


@dataclass(frozen=True)
class NetfilterLayer:
    """Debian's iptables and conntrack for ``arch``, the layer kube-proxy's and flannel's images share
    (the same files make the same bytes: one blob in containerd's content store)."""

    arch: str
    debs: tuple[Mapping[str, str], ...]  # :func:`debian.debs` entries

    @property
    def inputs(self) -> dict[str, str]:
        return {
            "netfilter-debs": " ".join(sorted(f"{d['package']}={d['version']}" for d in self.debs)),
            "netfilter-debs-sha256": input_key(*sorted(d["sha256"] for d in self.debs)),
            "netfilter-layout": input_key(DEB_DROPPED.pattern, SBIN, IPTABLES_NFT, *IPTABLES_COMMANDS),
        }

    @functools.cached_property
    def files(self) -> tuple[oci.FileEntry, ...]:
        return tuple(netfilter_files(self.debs))

    def check(self) -> dict[str, str]:
        return netfilter_check(self.files, self.arch)


def netfilter_layer(arch: str, release: str = debian.CONTROLLER_RELEASE) -> NetfilterLayer:
    """The .debs of :data:`NETFILTER_PACKAGES` and their dependency closure (libc6 included) of
    ``release`` (default the controller's: one image serves nodes of every release) on ``arch``."""
    return NetfilterLayer(arch, tuple(debian.debs(list(NETFILTER_PACKAGES), arch, release)))


# --------------------------------------------------------------------------- Kubernetes images


@dataclass(frozen=True)
class ModuleBuild:
    """A cache directory of :mod:`builders.kubernetes_modules` and its manifest.json."""

    directory: Path
    manifest: Mapping[str, Any]

    @property
    def key(self) -> str:
        return str(self.manifest.get("key", ""))

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "")).removeprefix("v")

    def sha256(self, name: str) -> str:
        try:
            return str(self.manifest["files"][name]["sha256"])
        except (KeyError, TypeError):
            raise ImageBuildError(f"{self.directory}/manifest.json lists no {name}") from None

    def binary(self, name: str, arch: str) -> bytes:
        """The bytes of ``name``, checked against the manifest's sha256 and as a static ``arch`` ELF."""
        data = (self.directory / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256(name):
            raise ImageBuildError(f"{self.directory / name} does not match its manifest.json's sha256")
        problem = static_elf_problem(data, name, arch)
        if problem:
            raise ImageBuildError(problem)
        return data


def module_build(component: str, arch: str, minor: str | None = None) -> ModuleBuild:
    """Build (or reuse) ``component`` of :mod:`builders.kubernetes_modules` for ``arch``:
    ``kubernetes-modules``, ``etcd`` and ``coredns`` of ``minor``'s pins, ``flannel`` (flanneld)
    or ``flannel-cni`` (the CNI plugin)."""
    km = kubernetes_modules
    builds: Mapping[str, Callable[[], Path]] = {
        "kubernetes-modules": lambda: km.build_kubernetes_modules(arch, minor=_minor(minor)),
        "etcd": lambda: km.build_etcd(arch, minor=_minor(minor)),
        "coredns": lambda: km.build_coredns(arch, minor=_minor(minor)),
        "flannel": lambda: km.build_flannel(arch),
        "flannel-cni": lambda: km.build_flannel_cni(arch),
    }
    directory = builds[component]()
    return ModuleBuild(directory, json.loads((directory / "manifest.json").read_text()))


def _build_image(
    name: str,
    arch: str,
    reference: str,
    build: ModuleBuild,
    binaries: Mapping[str, tuple[ModuleBuild, str]],
    *,
    config: oci.ImageConfig,
    netfilter: NetfilterLayer | None = None,
) -> Path:
    """Tarball ``<name>.tar`` of ``reference`` for ``arch``: the ``binaries`` (image path -> (build,
    file)) in one layer, on top of ``netfilter``'s when given; cached under ``<name>-image`` by its
    inputs. ``build``, the image's own, has the version the reference's tag carries."""
    tag = oci.split_reference(reference)[1]
    if not build.version or not re.fullmatch(rf"v?{re.escape(build.version)}(-.+)?", tag):
        raise ImageBuildError(f"{name}: the build in {build.directory} is of version {build.version!r}, "
                              f"the pins make {reference}")
    builds = {str(b.manifest.get("name") or b.directory.parent.name): b for b, _ in binaries.values()}
    inputs = {
        **{path: b.sha256(file) for path, (b, file) in sorted(binaries.items())},
        **{f"{component}-build": b.key for component, b in builds.items()},
        "reference": reference,
        "config": json.dumps(config.as_dict(), sort_keys=True),
        **(netfilter.inputs if netfilter is not None else {}),
        "zlib": oci.zlib_version(),
    }
    key = input_key(BUILDER_REVISION, *(f"{k}={v}" for k, v in sorted(inputs.items())))
    modules = ", ".join(sorted({m for b in builds.values() for m in b.manifest.get("modules") or {}}))
    packages = f", on Debian's {' and '.join(NETFILTER_PACKAGES)}" if netfilter is not None else ""
    description = f"{name} {tag} built from {modules or name}{packages}"

    def make(out: Path) -> None:
        own = [oci.FileEntry.executable(path, b.binary(file, arch)) for path, (b, file) in binaries.items()]
        checks = netfilter.check() if netfilter is not None else None
        image = oci.build_image(
            reference,
            [list(netfilter.files), own] if netfilter is not None else [own],
            config=config,
            platforms=[oci.Platform.linux(arch)],
            annotations={
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": tag,
                "org.opencontainers.image.description": description,
            },
        )
        _write_image(image, out, f"{name}.tar", inputs, checks=checks)

    return _cached(f"{name}-image", build.version, arch, key, f"{name}.tar", make)


def build_control_plane_image(component: str, arch: str = "amd64", *, minor: str | None = None) -> Path:
    """Tarball of ``edge-provision.local/<component>:v<version>`` for ``arch``: ``/usr/local/bin/<component>``
    of the Kubernetes module build (:func:`kubernetes_modules.build_kubernetes_modules`, cached);
    kubeadm's static pod runs ``<component> --flags...``, found on ``PATH``."""
    if component not in CONTROL_PLANE_COMPONENTS:
        raise ImageBuildError(f"unknown control-plane component {component!r}")
    binary = f"/usr/local/bin/{component}"
    build = module_build("kubernetes-modules", arch, minor)
    return _build_image(
        component, arch, image_reference(component, minor), build, {binary: (build, component)},
        config=oci.ImageConfig(entrypoint=[binary], env=[IMAGE_ENV_PATH]),
    )


def build_etcd_image(arch: str = "amd64", *, minor: str | None = None) -> Path:
    """Tarball of ``edge-provision.local/etcd:<etcd version>-0``: ``/usr/local/bin/etcd`` and
    ``etcdctl`` (:func:`kubernetes_modules.build_etcd`); kubeadm's static pod runs ``etcd ...``."""
    build = module_build("etcd", arch, minor)
    return _build_image(
        "etcd", arch, image_reference("etcd", minor), build,
        {"/usr/local/bin/etcd": (build, "etcd"), "/usr/local/bin/etcdctl": (build, "etcdctl")},
        config=oci.ImageConfig(entrypoint=["/usr/local/bin/etcd"], env=[IMAGE_ENV_PATH]),
    )


def build_kube_proxy_image(arch: str = "amd64", *, minor: str | None = None) -> Path:
    """Tarball of ``edge-provision.local/kube-proxy:v<version>``: Debian's iptables (the nft variant)
    and conntrack with their libraries (:func:`netfilter_layer`, the layer flannel's image shares)
    and ``/usr/local/bin/kube-proxy``, which kubeadm's DaemonSet runs."""
    binary = "/usr/local/bin/kube-proxy"
    build = module_build("kubernetes-modules", arch, minor)
    return _build_image(
        "kube-proxy", arch, image_reference("kube-proxy", minor), build, {binary: (build, "kube-proxy")},
        config=oci.ImageConfig(entrypoint=[binary], env=[IMAGE_ENV_PATH]),
        netfilter=netfilter_layer(arch),
    )


def build_coredns_image(arch: str = "amd64", *, minor: str | None = None) -> Path:
    """Tarball of ``edge-provision.local/coredns:v<coredns version>``: ``/coredns``
    (:func:`kubernetes_modules.build_coredns`), the entrypoint; kubeadm's Deployment passes
    ``-conf /etc/coredns/Corefile``."""
    build = module_build("coredns", arch, minor)
    return _build_image(
        "coredns", arch, image_reference("coredns", minor), build, {"/coredns": (build, "coredns")},
        config=oci.ImageConfig(entrypoint=["/coredns"]),
    )


def build_flannel_image(arch: str = "amd64") -> Path:
    """Tarball of ``edge-provision.local/flannel:v<flannel version>``: ``/opt/bin/flanneld`` (the
    entrypoint, :func:`kubernetes_modules.build_flannel`) and the CNI plugin ``/opt/cni/bin/flannel``
    (:func:`kubernetes_modules.build_flannel_cni`) on the iptables and conntrack layer of
    kube-proxy's image."""
    flanneld, plugin = module_build("flannel", arch), module_build("flannel-cni", arch)
    return _build_image(
        "flannel", arch, image_reference("flannel"), flanneld,
        {"/opt/bin/flanneld": (flanneld, "flanneld"), "/opt/cni/bin/flannel": (plugin, "flannel")},
        config=oci.ImageConfig(entrypoint=["/opt/bin/flanneld"], env=[IMAGE_ENV_PATH]),
        netfilter=netfilter_layer(arch),
    )


def build_cluster_image(name: str, arch: str = "amd64", *, minor: str | None = None) -> Path:
    """Tarball of the Kubernetes image ``name`` (one of :data:`CLUSTER_IMAGES`, or ``pause``) for
    ``arch``, tagged :func:`image_reference`; built once, then cached."""
    if name in CONTROL_PLANE_COMPONENTS:
        return build_control_plane_image(name, arch, minor=minor)
    builders: Mapping[str, Callable[[], Path]] = {
        "etcd": lambda: build_etcd_image(arch, minor=minor),
        "kube-proxy": lambda: build_kube_proxy_image(arch, minor=minor),
        "coredns": lambda: build_coredns_image(arch, minor=minor),
        "flannel": lambda: build_flannel_image(arch),
        "pause": lambda: build_pause_image(arch, minor=minor),
    }
    if name not in builders:
        raise ImageBuildError(f"unknown Kubernetes image {name!r} (known: {', '.join(KNOWN_IMAGES)})")
    return builders[name]()


# --------------------------------------------------------------------------- demo output


DEMO_GREETING = "This is from a main function"
DEMO_FILE_LINE = "File content is This is in a file"


def demo_output_problems(
    stdout: str,
    *,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    stderr: str | None = None,
    heartbeat: bool = False,
) -> list[str]:
    """What is wrong with an output of wasi_demo ([] when every expected line is there).

    ``args`` is the whole argv (``/wasi_demo.wasm`` first, as a runtime passes it). With
    ``env``, the env section must list exactly those variables, in any order; without, it
    only has to be there (a container runtime adds PATH, HOSTNAME, KUBERNETES_*, ...).
    ``stderr`` None means stdout and stderr come interleaved in ``stdout`` (``kubectl logs``).
    ``heartbeat``: the output of the heartbeat mode, whose lines ``Heartbeat 1``, ``Heartbeat 2``,
    ... follow the file line.
    """
    lines = stdout.splitlines()
    problems: list[str] = []
    if stderr is not None:
        if DEMO_GREETING not in stderr.splitlines():
            problems.append(f"stderr lacks {DEMO_GREETING!r}")
    elif DEMO_GREETING in lines:
        lines.remove(DEMO_GREETING)
    else:
        problems.append(f"output lacks the stderr line {DEMO_GREETING!r}")

    patterns = [
        ("random number", r"Random number: \d{1,10}"),
        ("random bytes", r"Random bytes: \[\d{1,3}(, \d{1,3}){15}\]"),
        ("greeting", re.escape(f"Printed from wasi: {DEMO_GREETING}")),
        ("env header", re.escape("The env vars are as follows.")),
    ]
    pos = 0
    for what, pattern in patterns:
        while pos < len(lines) and not re.fullmatch(pattern, lines[pos]):
            pos += 1
        if pos == len(lines):
            problems.append(f"no {what} line ({pattern})")
            return problems
        if what == "random number" and int(lines[pos].rsplit(" ", 1)[1]) >= 1 << 32:
            problems.append(f"random number out of range: {lines[pos]}")
        if what == "random bytes" and any(int(b) > 255 for b in re.findall(r"\d+", lines[pos])):
            problems.append(f"random byte out of range: {lines[pos]}")
        pos += 1
    try:
        args_at = lines.index("The args are as follows.", pos)
    except ValueError:
        return [*problems, "no 'The args are as follows.' line"]
    env_lines = lines[pos:args_at]
    if env is not None and sorted(env_lines) != sorted(f"{k}: {v}" for k, v in env.items()):
        problems.append(f"env lines {env_lines} != {sorted(env.items())}")
    end = args_at + 1 + len(args)
    if lines[args_at + 1 : end] != list(args):
        problems.append(f"args lines {lines[args_at + 1 : end]} != {list(args)}")
    if heartbeat:
        beats = [f"Heartbeat {k}" for k in range(1, len(lines) - end)]
        if lines[end : end + 2] != [DEMO_FILE_LINE, "Heartbeat 1"] or lines[end + 1 :] != beats:
            problems.append(
                f"after the args: {lines[end : end + 4]}..., want {DEMO_FILE_LINE!r}, Heartbeat 1, 2, ..."
            )
    elif lines[end:] != [DEMO_FILE_LINE]:
        problems.append(f"after the args: {lines[end:]}, want [{DEMO_FILE_LINE!r}]")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge_provision.artifacts.builders.images [NAME[:arch]]...``: NAME one of wasi-demo,
    busybox, pause and :data:`CLUSTER_IMAGES`; arch the controller's when not given. Prints
    reference, digest, size, path."""
    names = list(argv if argv is not None else sys.argv[1:]) or ["wasi-demo", "busybox", "pause"]
    for name in names:
        kind, _, arch = name.partition(":")
        arch = arch or host_arch()
        if kind == "wasi-demo":
            paths = [build_wasi_demo_image()]
        elif kind == "busybox":
            paths = [build_busybox_image(arch)]
        elif kind in (*CLUSTER_IMAGES, "pause"):
            paths = [build_cluster_image(kind, arch)]
        else:
            print(f"unknown image {name!r}", file=sys.stderr)
            return 2
        for path in paths:
            info = image_info(path)
            print(f"{info.reference}\t{info.digest}\t{info.size}\t{path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CLUSTER_IMAGES",
    "CONTROL_PLANE_COMPONENTS",
    "ImageBuildError",
    "ImageInfo",
    "ImageStepError",
    "NetfilterLayer",
    "build_busybox_image",
    "build_cluster_image",
    "build_control_plane_image",
    "build_coredns_image",
    "build_etcd_image",
    "build_flannel_image",
    "build_kube_proxy_image",
    "build_pause_image",
    "build_wasi_demo_image",
    "compile_pause",
    "compile_wasi_demo",
    "demo_output_problems",
    "fetch_pause_source",
    "image_entry",
    "image_info",
    "image_reference",
    "netfilter_layer",
    "pause_reference",
    "references",
    "wasi_demo_reference",
]
