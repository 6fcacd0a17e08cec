"""The lab's container images, built from Debian packages into registry-less OCI tarballs.

Three images, each a tarball for ``ctr -n k8s.io images import`` (see ``artifacts.oci``):

``edge-provision.local/wasi-demo:<WASI_DEMO_VERSION>``
    ``/wasi_demo.wasm`` (compiled here from ``artifacts/wasi_demo/wasi_demo.c`` with Debian's
    clang + lld + wasi-libc), entrypoint ``["/wasi_demo.wasm"]``, manifest annotation
    ``module.wasm.image/variant=compat-smart``.
``edge-provision.local/busybox:<busybox version>``
    Debian's busybox-static: ``/bin/busybox`` and the ``sh``, ``echo``, ``sleep``, ``cat``
    links, ``/tmp``; the container-workload sample.
``edge-provision.local/pause:<pause version>``
    Kubernetes' ``build/pause/linux/pause.c`` from Debian's ``kubernetes`` source package,
    compiled ``-static -O2``; the CRI's sandbox ("pause") image.
``edge-provision.local/<component>:v<kubernetes version>``
    One static Kubernetes server binary (``kube-apiserver``, ``kube-controller-manager``,
    ``kube-scheduler``, from :mod:`builders.kubernetes`) at ``/usr/local/bin/<component>``:
    what kubeadm's static pods run when ``imageRepository`` is ``edge-provision.local``.

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

import hashlib
import io
import json
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
from edge_provision.artifacts.builders._common import elf_info
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
PAUSE_SOURCE_PACKAGE = "kubernetes"
PAUSE_MEMBERS = ("build/pause/linux/pause.c", "build/pause/Makefile")
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


def _write_image(image: oci.Image, out: Path, filename: str, inputs: Mapping[str, str]) -> None:
    path = oci.write_archive(image, out / filename)
    info = {
        "reference": image.reference,
        "digest": image.digest,
        "platforms": sorted(image.manifests),
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "inputs": dict(inputs),
    }
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


def deb_member(deb: Path, member: str) -> bytes:
    """The file ``member`` (an absolute path) of a .deb's data archive (``dpkg-deb --fsys-tarfile``)."""
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False,
                          env=_TOOL_ENV)
    if proc.returncode != 0:
        error = proc.stderr.decode(errors="replace")
        raise ImageBuildError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {error}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
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


# --------------------------------------------------------------------------- pause


@dataclass(frozen=True)
class PauseSource:
    pause_c: Path
    version: str  # the pause image's version (TAG in build/pause/Makefile), e.g. "3.4"
    kubernetes_version: str  # upstream version of the source package, e.g. "1.20.2"
    debian_version: str  # of the source package, e.g. "1.20.5+really1.20.2-1.1+deb12u1"


def pause_tag(makefile: str) -> str:
    """The pause version in Kubernetes' build/pause/Makefile (``TAG = 3.4`` / ``TAG ?= 3.9``)."""
    match = re.search(r"^TAG\s*[?:]?=\s*(\S+)\s*$", makefile, re.MULTILINE)
    if not match:
        raise ImageBuildError("no TAG in build/pause/Makefile")
    return match.group(1)


def fetch_pause_source() -> PauseSource:
    """pause.c (and its Makefile, for the version) from Debian's kubernetes source package.

    Only the two files are kept, under ``<cache>/artifacts/sources/kubernetes-<version>/``;
    the 34 MB upstream tarball is downloaded with ``apt-get source --download-only`` into a
    temporary directory (apt checks it against the signed Sources index) and removed.
    """
    debian_version = debian.source_version(PAUSE_SOURCE_PACKAGE)
    if not debian_version:
        debian.ensure_deb_src()
        debian_version = debian.source_version(PAUSE_SOURCE_PACKAGE)
    if not debian_version:
        raise ImageBuildError(f"no Debian source package {PAUSE_SOURCE_PACKAGE!r} (deb-src missing?)")
    dest = artifacts.ARTIFACTS_DIR / "sources" / f"{PAUSE_SOURCE_PACKAGE}-{debian_version}"
    pause_c, makefile = dest / "pause.c", dest / "Makefile"
    with artifacts.locked(dest.parent / ".lock"):  # one download, also for the hosts of another architecture
        if not (pause_c.is_file() and makefile.is_file()):
            _download_pause_source(debian_version, dest)
    return PauseSource(
        pause_c=pause_c,
        version=pause_tag(makefile.read_text()),
        kubernetes_version=upstream_version(debian_version),
        debian_version=debian_version,
    )


def _download_pause_source(debian_version: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp_name:
        tmp = Path(tmp_name)
        _tool("apt-get source",
              ["apt-get", "source", "--download-only", f"{PAUSE_SOURCE_PACKAGE}={debian_version}"], cwd=tmp)
        origs = sorted(tmp.glob(f"{PAUSE_SOURCE_PACKAGE}_*.orig.tar.*"))
        if not origs:
            raise ImageBuildError(f"apt-get source {PAUSE_SOURCE_PACKAGE} gave no .orig tarball")
        found = _extract_members(origs[0], PAUSE_MEMBERS)
        out = tmp / "out"
        out.mkdir()
        (out / "pause.c").write_bytes(found[PAUSE_MEMBERS[0]])
        (out / "Makefile").write_bytes(found[PAUSE_MEMBERS[1]])
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)


def _extract_members(tarball: Path, wanted: Sequence[str]) -> dict[str, bytes]:
    """The files ``<top>/<member>`` of a source tarball, read in one streaming pass."""
    found: dict[str, bytes] = {}
    with tarfile.open(tarball, mode="r|*") as tar:
        for member in tar:
            _, _, rel = member.name.partition("/")
            if rel in wanted and member.isfile():
                f = tar.extractfile(member)
                if f is not None:
                    found[rel] = f.read()
                if len(found) == len(wanted):
                    break
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ImageBuildError(f"{tarball.name} has no {', '.join(missing)}")
    return found


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


def build_pause_image(arch: str = "amd64") -> Path:
    """Tarball of ``edge-provision.local/pause:<version>`` for ``arch`` (Debian arch name)."""
    source = fetch_pause_source()
    binary = compile_pause(arch, source).read_bytes()
    reference = f"{REGISTRY}/pause:{source.version}"
    inputs = {
        "pause": hashlib.sha256(binary).hexdigest(),
        "kubernetes-source": source.debian_version,
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
                    f"Kubernetes build/pause/linux/pause.c from Debian's kubernetes {source.debian_version}"
                ),
            },
        )
        _write_image(image, out, "pause.tar", inputs)

    return _cached("pause-image", source.version, arch, key, "pause.tar", make)


def pause_reference() -> str:
    """``edge-provision.local/pause:<version>`` (reads the version from the cached source)."""
    return f"{REGISTRY}/pause:{fetch_pause_source().version}"


# --------------------------------------------------------------------------- control plane

CONTROL_PLANE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def control_plane_reference(component: str, version: str) -> str:
    """The name kubeadm gives ``component``'s image with ``imageRepository: edge-provision.local``."""
    return f"{REGISTRY}/{component}:v{version}"


def build_control_plane_image(component: str, arch: str = "amd64") -> Path:
    """Tarball of ``edge-provision.local/<component>:v<version>`` for ``arch``.

    The binary comes from the Kubernetes build (:func:`builders.kubernetes.build_kubernetes`,
    cached); kubeadm's static pod runs ``<component> --flags...``, found on ``PATH``.
    """
    from edge_provision.artifacts.builders.kubernetes import build_kubernetes

    if component not in CONTROL_PLANE_COMPONENTS:
        raise ImageBuildError(f"unknown control-plane component {component!r}")
    build = build_kubernetes(arch)
    manifest = json.loads((build / "manifest.json").read_text())
    version = manifest["kubernetes"]["version"]
    binary = build / component
    inputs = {
        component: manifest["files"][component]["sha256"],
        "kubernetes-build": manifest["key"],
        "zlib": oci.zlib_version(),
    }
    key = input_key(BUILDER_REVISION, *(f"{k}={v}" for k, v in sorted(inputs.items())))
    reference = control_plane_reference(component, version)

    def make(out: Path) -> None:
        image = oci.build_image(
            reference,
            [[oci.FileEntry.executable(f"/usr/local/bin/{component}", binary.read_bytes())]],
            config=oci.ImageConfig(
                entrypoint=[f"/usr/local/bin/{component}"],
                env=["PATH=/usr/local/bin:/usr/bin:/bin"],
            ),
            platforms=[oci.Platform.linux(arch)],
            annotations={
                "org.opencontainers.image.title": component,
                "org.opencontainers.image.version": f"v{version}",
                "org.opencontainers.image.description": (
                    f"{component} {version} built from Debian's kubernetes "
                    f"{manifest['kubernetes']['debian_version']}"
                ),
            },
        )
        _write_image(image, out, f"{component}.tar", inputs)

    return _cached(f"{component}-image", version, arch, key, f"{component}.tar", make)


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
    """``python -m edge_provision.artifacts.builders.images [wasi-demo|busybox|pause[:arch]]...``"""
    names = list(argv if argv is not None else sys.argv[1:]) or ["wasi-demo", "busybox", "pause"]
    for name in names:
        kind, _, arch = name.partition(":")
        if kind == "wasi-demo":
            path = build_wasi_demo_image()
        elif kind == "busybox":
            path = build_busybox_image(arch or host_arch())
        elif kind == "pause":
            path = build_pause_image(arch or host_arch())
        elif kind in CONTROL_PLANE_COMPONENTS:
            path = build_control_plane_image(kind, arch or host_arch())
        else:
            print(f"unknown image {name!r}", file=sys.stderr)
            return 2
        info = image_info(path)
        print(f"{info.reference}\t{info.digest}\t{info.size}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CONTROL_PLANE_COMPONENTS",
    "ImageBuildError",
    "ImageInfo",
    "ImageStepError",
    "build_busybox_image",
    "build_control_plane_image",
    "build_pause_image",
    "build_wasi_demo_image",
    "compile_pause",
    "compile_wasi_demo",
    "control_plane_reference",
    "demo_output_problems",
    "fetch_pause_source",
    "image_entry",
    "image_info",
    "pause_reference",
    "wasi_demo_reference",
]
