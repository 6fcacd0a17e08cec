"""What the builders share: their pins, staged builds into the cache, the Debian steps of a build
from a source package, and the ELF check of what they built.

Each builder raises its own :class:`~edge_provision.artifacts.ArtifactBuildError` subclass (crun
build, kubernetes build, image build), and passes it here as ``error``: a shared step fails with
the builder's name in its message. Commands run through :func:`edge_provision.artifacts.run`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from edge_provision.artifacts import ArtifactBuildError, debian, locked, run, sha256_file
from edge_provision.artifacts.fetch import read_versions

log = logging.getLogger(__name__)

PINS_STEP = "read pins"
MANIFEST = "manifest.json"
# ELF e_machine -> Debian architecture (for checking what a binary really is).
ELF_MACHINES = {62: "amd64", 183: "arm64", 40: "armhf", 3: "i386", 243: "riscv64", 21: "ppc64el"}


# -- pins ----------------------------------------------------------------------------------------


def load_versions(versions_file: Path, error: type[ArtifactBuildError]) -> Any:
    """The pins of ``versions_file`` (:func:`edge_provision.artifacts.fetch.read_versions`); a file
    that cannot be read or parsed is ``error`` at step 'read pins'."""
    try:
        return read_versions(versions_file)
    except (OSError, yaml.YAMLError) as exc:
        raise error(PINS_STEP, f"cannot read {versions_file}: {exc}") from exc


# -- the cache -----------------------------------------------------------------------------------


def cached_manifest(
    directory: Path, files: Iterable[str] | None = None, *, check: Literal["sha256", "size"] = "sha256"
) -> dict[str, Any] | None:
    """The manifest of a complete build in ``directory``, else None.

    Complete: each of ``files`` (default: every file the manifest lists) is there with the sha256
    the manifest records, or with ``check="size"`` only its size (a cache hit of large binaries
    then stays well under a second).
    """
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
        for name in manifest["files"] if files is None else files:
            recorded = manifest["files"][name][check]
            path = directory / name
            if (sha256_file(path) if check == "sha256" else path.stat().st_size) != recorded:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def staged_build(
    dest: Path,
    is_cached: Callable[[Path], object],
    build: Callable[[Path, Path], None],
    *,
    precheck: Callable[[], None] | None = None,
    error: type[ArtifactBuildError] = ArtifactBuildError,
) -> Path:
    """Build into ``dest`` once: locked, in a staging directory renamed into place when complete.

    ``build(work, out)`` gets a scratch directory beside the cache (a source tree can take GBs;
    /tmp is often a small tmpfs) and the staging directory. A failure leaves no partial build,
    and its full output in ``<dest>.failed.log``.
    """
    if is_cached(dest) is not None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest.parent / f".{dest.name}.lock"):
        if is_cached(dest) is not None:  # another process built it while we waited
            return dest
        if precheck is not None:
            precheck()
        if dest.exists():
            log.warning("discarding incomplete or corrupted build %s", dest)
            shutil.rmtree(dest)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        failed_log = dest.parent / f"{dest.name}.failed.log"
        try:
            with tempfile.TemporaryDirectory(prefix=".work-", dir=dest.parent) as work:
                build(Path(work), staging)
            os.rename(staging, dest)
        except ArtifactBuildError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if not exc.output:
                raise
            failed_log.write_text(exc.output)
            raise error(exc.step, f"{exc.message} (full output: {failed_log})", exc.output) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        failed_log.unlink(missing_ok=True)
    return dest


# -- Debian steps --------------------------------------------------------------------------------


def install_build_deps(
    packages: Sequence[str], *, error: type[ArtifactBuildError] = ArtifactBuildError
) -> None:
    """``apt-get install`` on this machine whichever of ``packages`` is not installed."""
    query = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *packages],
        text=True,
        capture_output=True,
        check=False,
        env=dict(debian.APT_ENV),
    )
    installed = {
        line.split()[0] for line in query.stdout.splitlines() if line.split()[1:] == ["installed"]
    }
    missing = [p for p in packages if p not in installed]
    if missing:
        log.info("installing build dependencies: %s", " ".join(missing))
        run(
            "install build dependencies",
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            env=debian.APT_ENV,
            error=error,
        )


def enable_deb_src(*, error: type[ArtifactBuildError] = ArtifactBuildError) -> None:
    """deb-src for this machine's distribution (:func:`edge_provision.artifacts.debian.ensure_deb_src`)."""
    try:
        if debian.ensure_deb_src():
            log.info("enabled deb-src (%s)", debian.OWN_FILE)
    except (OSError, debian.DebianError) as exc:
        raise error("enable deb-src", str(exc)) from exc


def apt_source(
    work: Path, package: str, debian_version: str, pin: str, *, download_only: bool = False,
    error: type[ArtifactBuildError] = ArtifactBuildError,
) -> None:
    """``apt-get source package=debian_version`` into ``work``; ``pin`` names its versions.yml key.

    A deb-src entry whose Sources index is not downloaded yet gets one ``apt-get update``.
    ``download_only``: the files only (apt has checked them), unpacked by the caller.
    """
    cmd = ["apt-get", "source", "-q", "--only-source", *(["--download-only"] if download_only else []),
           f"{package}={debian_version}"]
    try:
        run("apt-get source", cmd, cwd=work, env=debian.APT_ENV, error=error)
    except ArtifactBuildError as first:
        if "Unable to find" not in first.output_tail and "Can not find" not in first.output_tail:
            raise
        try:
            debian.apt_get_update()
        except debian.DebianError as exc:
            raise error("apt-get update", str(exc)) from exc
        try:
            run("apt-get source", cmd, cwd=work, env=debian.APT_ENV, error=error)
        except ArtifactBuildError as exc:
            raise error(
                "apt-get source",
                f"{package}={debian_version} is not in the Debian archive; if bookworm moved to a "
                f"newer revision, update {pin} in edge_provision/artifacts/versions.yml",
                exc.output_tail,
            ) from exc


# -- what was built ------------------------------------------------------------------------------


def elf_info(data: bytes) -> tuple[str, bool]:
    """(Debian architecture, statically linked) of an ELF executable; ValueError for anything else."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(end + "H", data, 18)
    if is64:
        (phoff,) = struct.unpack_from(end + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
    else:
        (phoff,) = struct.unpack_from(end + "I", data, 28)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
    interp = any(
        struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] == 3  # PT_INTERP
        for i in range(phnum)
    )
    arch = ELF_MACHINES.get(machine, f"elf-machine-{machine}")
    if arch == "amd64" and not is64:
        arch = "x32"
    return arch, not interp


def static_elf_problem(data: bytes, name: str, arch: str) -> str:
    """Why the executable ``name`` (its bytes ``data``) is not a static ``arch`` ELF binary, or ``''``."""
    try:
        built_arch, static = elf_info(data)
    except ValueError as exc:
        return f"{name}: {exc}"
    if built_arch != arch or not static:
        return f"{name} came out {built_arch}, static={static}; wanted static {arch}"
    return ""
