"""Build the Kubernetes server binaries (and kubectl) from Debian's source package, for the lab.

Inputs, pinned in ``edge_provision/artifacts/versions.yml`` (``kubernetes:``):

* the source: ``apt-get source kubernetes=<debian_version>`` (bookworm, 1.20.2 under the version
  ``1.20.5+really1.20.2-...``; apt checks it against the signed Sources index). deb-src is
  enabled on demand by :func:`edge_provision.artifacts.debian.ensure_deb_src`. The tree is
  complete (vendor/) and carries its version (``git archive`` substitutions in
  hack/lib/version.sh: v1.20.2, tree state "archive"), so Kubernetes' own ``make WHAT=cmd/...``
  stamps ``--version`` correctly.
* Debian's Go (golang-go, 1.19), GOPATH mode (hack/lib/init.sh exports GO111MODULE=off).
* the vendored ``github.com/modern-go/reflect2`` 1.0.1 panics at run time under Go >= 1.18
  (``reflect.mapiterinit``); it is replaced by Debian's golang-github-modern-go-reflect2-dev
  (1.0.2, ``/usr/share/gocode/src/github.com/modern-go/reflect2``), whose version is part of
  the cache key.

Every binary is built static (CGO_ENABLED=0, and ``KUBE_STATIC_OVERRIDES=kubelet``: without it
Kubernetes' scripts turn cgo on for a cross-built kubelet and want aarch64-linux-gnu-gcc), so
``arch="arm64"`` cross-builds on amd64 with no C toolchain. ``SOURCE_DATE_EPOCH`` (the Debian
changelog's date) fixes the embedded build date.

Output: a cache directory (``edge_provision.artifacts.build_dir``) holding the binaries of
:data:`BINARIES` and ``manifest.json``. Everything that shapes the build is part of the cache
key, so an unchanged input returns the cached directory at once (the fast path checks sizes,
:func:`verify_build` the sha256s). The build runs in a work directory beside the cache (about
3 GB: source, Go build cache) and the result is renamed into place atomically; a lock file
serialises concurrent builders of the same key. A cold build takes about 9 minutes and 1.4 GB
of RAM on 2 shared cores.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_provision.artifacts import ArtifactBuildError, build_dir, input_key, run, sha256_file
from edge_provision.artifacts.builders._common import (
    PINS_STEP,
    apt_source,
    cached_manifest,
    enable_deb_src,
    install_build_deps,
    load_versions,
    staged_build,
    static_elf_problem,
)
from edge_provision.artifacts.debian import APT_ENV, host_arch, package_version, upstream_version
from edge_provision.artifacts.fetch import VERSIONS_FILE

log = logging.getLogger(__name__)

# Bump when the build steps change in a way that changes the output (the cache key includes it).
BUILDER_REVISION = "1"

SOURCE_PACKAGE = "kubernetes"
# The server binaries a kubeadm node needs, and the client built from the same tree.
BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kubeadm",
    "kubectl",
)
# Debian architecture -> GOARCH (Kubernetes' KUBE_BUILD_PLATFORMS takes linux/<GOARCH>).
GOARCHES: Mapping[str, str] = {"amd64": "amd64", "arm64": "arm64"}

REFLECT2_PACKAGE = "golang-github-modern-go-reflect2-dev"
REFLECT2_IMPORT_PATH = "github.com/modern-go/reflect2"
REFLECT2_DEBIAN_DIR = Path("/usr/share/gocode/src") / REFLECT2_IMPORT_PATH
# Present in reflect2 >= 1.0.2 only: the Go 1.18+ map iterator that fixes the panic.
REFLECT2_FIX_FILE = "go_above_118.go"

# Debian's Build-Depends (minus debhelper, bash-completion: no packaging here) plus what
# `apt-get source` needs to unpack and the reflect2 replacement.
BUILD_DEPS = (
    "golang-go",
    "make",
    "rsync",
    "jq",
    "dpkg-dev",  # dpkg-source (apt-get source unpacks with it), dpkg-parsechangelog
    "xz-utils",
    REFLECT2_PACKAGE,
)
# What shapes the binaries besides the sources and the toolchain (part of the cache key).
BUILD_FLAGS: Mapping[str, str] = {
    "CGO_ENABLED": "0",
    "KUBE_STATIC_OVERRIDES": "kubelet",
    "GOPROXY": "off",
}
NICE = "10"  # the build shares its machine (lab tests, people): do not starve them


class KubernetesBuildError(ArtifactBuildError):
    """A step of the Kubernetes build failed."""

    build = "kubernetes build"


@dataclass(frozen=True)
class Pins:
    version: str  # upstream, e.g. "1.20.2"
    debian_version: str  # of the source package, e.g. "1.20.5+really1.20.2-1.1+deb12u1"


@dataclass(frozen=True)
class Toolchain:
    go_version: str  # e.g. "go1.19.8" (from `go version`)
    golang_go: str  # Debian version of golang-go, e.g. "2:1.19~1"
    reflect2: str  # Debian version of golang-github-modern-go-reflect2-dev, e.g. "1.0.2-2"


def load_pins(versions_file: Path = VERSIONS_FILE) -> Pins:
    """The ``kubernetes:`` pins from versions.yml."""
    step = PINS_STEP
    data = load_versions(versions_file, KubernetesBuildError)
    try:
        entry = data["kubernetes"]
        pins = Pins(version=str(entry["version"]), debian_version=str(entry["debian_version"]))
        source = str(entry["source"])
    except (KeyError, TypeError) as exc:
        raise KubernetesBuildError(
            step, f"{versions_file} lacks {exc} (need kubernetes.version, kubernetes.source, "
            "kubernetes.debian_version)"
        ) from exc
    if source != "debian-source":
        raise KubernetesBuildError(
            step, f"kubernetes.source is {source!r} in {versions_file}; this builder only builds "
            "from the Debian source package (debian-source)"
        )
    if upstream_version(pins.debian_version) != pins.version:
        raise KubernetesBuildError(
            step, f"kubernetes.debian_version {pins.debian_version!r} is not a revision of "
            f"kubernetes.version {pins.version!r} in {versions_file} (its upstream version is "
            f"{upstream_version(pins.debian_version)!r})"
        )
    return pins


def toolchain() -> Toolchain | None:
    """The installed Go and reflect2 replacement (None when either is missing)."""
    go = shutil.which("go", path=APT_ENV["PATH"])
    golang_go = package_version("golang-go")
    reflect2 = package_version(REFLECT2_PACKAGE)
    if go is None or not golang_go or not reflect2:
        return None
    try:
        out = subprocess.run(
            [go, "version"], text=True, capture_output=True, check=True, env=dict(APT_ENV)
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    go_version = out[2] if len(out) > 2 else ""
    return Toolchain(go_version=go_version, golang_go=golang_go, reflect2=reflect2) if go_version else None


def cache_key(arch: str, pins: Pins, tools: Toolchain) -> str:
    return input_key(
        BUILDER_REVISION,
        arch,
        pins.version,
        pins.debian_version,
        tools.go_version,
        tools.golang_go,
        tools.reflect2,
        " ".join(BINARIES),
        *(f"{k}={v}" for k, v in sorted(BUILD_FLAGS.items())),
    )


def cached_build(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete build in ``directory`` (every binary there, of its size), else None.

    Sizes only, so a cache hit stays well under a second; :func:`verify_build` checks the sha256s.
    """
    return cached_manifest(directory, BINARIES, check="size")


def verify_build(directory: Path) -> list[str]:
    """What is wrong with a cached build (``[]`` when every binary matches its recorded sha256)."""
    manifest = cached_build(directory)
    if manifest is None:
        return [f"{directory}: no complete build (manifest.json or a binary missing or truncated)"]
    return [
        f"{name}: sha256 {sha256_file(directory / name)} != recorded {manifest['files'][name]['sha256']}"
        for name in BINARIES
        if sha256_file(directory / name) != manifest["files"][name]["sha256"]
    ]


def build_kubernetes(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> Path:
    """Build (or reuse) the Kubernetes binaries for ``arch``; return the cache directory.

    The directory holds :data:`BINARIES` (static, stripped) and ``manifest.json``.
    """
    if arch not in GOARCHES:
        raise KubernetesBuildError(
            "check arguments", f"unknown arch {arch!r} (known: {', '.join(GOARCHES)})"
        )
    pins = load_pins(versions_file)
    tools = toolchain()
    if tools is None:
        install_build_deps(BUILD_DEPS, error=KubernetesBuildError)
        tools = toolchain()
        if tools is None:
            raise KubernetesBuildError(
                "install build dependencies", f"go or {REFLECT2_PACKAGE} still missing after installing "
                f"{' '.join(BUILD_DEPS)}"
            )
    key = cache_key(arch, pins, tools)
    dest = build_dir("kubernetes", pins.version, arch, key)
    return staged_build(
        dest, cached_build, lambda work, out: _build(work, out, arch, pins, tools, key),
        error=KubernetesBuildError,
    )


def _build(work: Path, out: Path, arch: str, pins: Pins, tools: Toolchain, key: str) -> None:
    started = time.monotonic()
    goarch = GOARCHES[arch]
    install_build_deps(BUILD_DEPS, error=KubernetesBuildError)

    source_dir = _apt_source(work, pins)
    replaced = _replace_reflect2(source_dir)

    env = _build_env(source_dir, goarch)
    jobs = env["GOMAXPROCS"]
    what = " ".join(f"cmd/{name}" for name in BINARIES)
    log.info(
        "building kubernetes %s (%s) for %s with %s, GOMAXPROCS=%s: takes ~9 min on 2 cores",
        pins.version, pins.debian_version, arch, tools.go_version, jobs,
    )
    run("make", ["nice", "-n", NICE, "make", f"WHAT={what}"], cwd=source_dir, env=env,
        error=KubernetesBuildError)

    bindir = source_dir / "_output" / "local" / "bin" / "linux" / goarch
    for name in BINARIES:
        built = bindir / name
        if not built.is_file():
            raise KubernetesBuildError("make", f"make left no {built.relative_to(source_dir)}")
        shutil.copy2(built, out / name)
        (out / name).chmod(0o755)

    checks = {name: _check_binary(out / name, name, arch, pins) for name in BINARIES}
    source_files = {
        p.name: sha256_file(p)
        for p in sorted(work.iterdir())
        if p.is_file() and p.name.startswith(f"{SOURCE_PACKAGE}_")
    }
    reported = checks["kubeadm"] if arch == host_arch() else f"v{pins.version}"
    manifest = {
        "name": "kubernetes",
        "arch": arch,
        "key": key,
        "builder_revision": BUILDER_REVISION,
        "kubernetes": {
            "version": reported.removeprefix("v"),
            "version_check": "ran --version" if arch == host_arch() else "version string found in binary",
            "debian_version": pins.debian_version,
            "source": "debian-source",
            "source_files_sha256": source_files,
        },
        "go": {"version": tools.go_version, "golang-go": tools.golang_go},
        "vendor_replacements": {
            REFLECT2_IMPORT_PATH: {"vendored": replaced, "debian_package": REFLECT2_PACKAGE,
                                   "debian_version": tools.reflect2},
        },
        "build_env": {
            **BUILD_FLAGS,
            "KUBE_BUILD_PLATFORMS": env["KUBE_BUILD_PLATFORMS"],
            "SOURCE_DATE_EPOCH": env.get("SOURCE_DATE_EPOCH", ""),
            "GOMAXPROCS": jobs,
        },
        "make": f"make WHAT='{what}'",
        "files": {
            name: {
                "sha256": sha256_file(out / name),
                "size": (out / name).stat().st_size,
                "version_output": checks[name],
            }
            for name in BINARIES
        },
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    out.chmod(0o755)
    log.info("built kubernetes %s (%s) in %.0fs", pins.version, arch, manifest["build_seconds"])


# -- steps -------------------------------------------------------------------------------------


def _apt_source(work: Path, pins: Pins) -> Path:
    enable_deb_src(error=KubernetesBuildError)
    apt_source(work, SOURCE_PACKAGE, pins.debian_version, "kubernetes.debian_version",
               error=KubernetesBuildError)
    trees = [
        p for p in work.glob(f"{SOURCE_PACKAGE}-*") if (p / "hack" / "make-rules" / "build.sh").is_file()
    ]
    if len(trees) != 1:
        raise KubernetesBuildError(
            "apt-get source", f"expected one unpacked Kubernetes tree in {work}, found {len(trees)}"
        )
    return trees[0]


def _replace_reflect2(source_dir: Path) -> str:
    """Swap the vendored reflect2 for Debian's; return what was vendored (its version if known)."""
    step = "replace vendored reflect2"
    vendored = source_dir / "vendor" / REFLECT2_IMPORT_PATH
    if not (REFLECT2_DEBIAN_DIR / REFLECT2_FIX_FILE).is_file():
        raise KubernetesBuildError(
            step, f"{REFLECT2_DEBIAN_DIR} has no {REFLECT2_FIX_FILE} (need {REFLECT2_PACKAGE} >= 1.0.2, "
            "whose map iterator works with Go >= 1.18)"
        )
    if not vendored.is_dir():
        raise KubernetesBuildError(step, f"the source has no {vendored.relative_to(source_dir)}")
    was = "unknown"
    with contextlib.suppress(OSError):
        modules = (source_dir / "vendor" / "modules.txt").read_text()
        match = re.search(rf"^# {re.escape(REFLECT2_IMPORT_PATH)} (v\S+)", modules, re.MULTILINE)
        was = match.group(1) if match else was
    shutil.rmtree(vendored)
    shutil.copytree(REFLECT2_DEBIAN_DIR, vendored, symlinks=False)
    return was


def _build_env(source_dir: Path, goarch: str) -> dict[str, str]:
    """A clean environment: Debian's Go only (no GOFLAGS: Kubernetes' scripts parse it for -tags)."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "TZ": "UTC",
        "HOME": str(source_dir),
        "GOMAXPROCS": os.environ.get("EDGE_PROVISION_BUILD_JOBS", "2"),
        "KUBE_BUILD_PLATFORMS": f"linux/{goarch}",
        **BUILD_FLAGS,
    }
    epoch = run(
        "dpkg-parsechangelog", ["dpkg-parsechangelog", "-STimestamp"], cwd=source_dir, env=env,
        error=KubernetesBuildError,
    ).strip()
    if epoch.isdigit():
        env["SOURCE_DATE_EPOCH"] = epoch
    return env


def _check_binary(path: Path, name: str, arch: str, pins: Pins) -> str:
    """The version a binary reports (``v1.20.2``); runs it when native, else reads its ELF header."""
    step = f"check {name}"
    data = path.read_bytes()
    problem = static_elf_problem(data, name, arch)
    if problem:
        raise KubernetesBuildError(step, problem)
    want = f"v{pins.version}"
    if arch != host_arch():
        if want.encode() not in data:
            raise KubernetesBuildError(step, f"{name} does not embed its version {want}")
        return want
    cmd = {
        "kubeadm": [str(path), "version", "-o", "short"],
        "kubectl": [str(path), "version", "--client", "--short"],
    }.get(name, [str(path), "--version"])
    output = run(step, cmd, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/nonexistent"},
                 error=KubernetesBuildError).strip()
    reported = output.split()[-1] if output else ""
    if reported != want:
        raise KubernetesBuildError(step, f"{name} reports {reported!r}, expected {want}", output)
    return reported
