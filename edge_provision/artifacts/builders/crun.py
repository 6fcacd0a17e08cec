"""Build crun with ONE Wasm engine (wasmtime) from Debian's source package, for the lab.

Inputs, all pinned in ``edge_provision/artifacts/versions.yml`` (the single source of truth):

* crun: ``apt-get source crun=<debian_version>`` (bookworm; apt checks it against the signed
  Sources index). deb-src is enabled on demand by :func:`edge_provision.artifacts.debian.ensure_deb_src`.
* libwasmtime: ``_libwasmtime.so`` out of the PyPI ``wasmtime`` wheel, whose sha256 is checked
  against the pin before use. The wheel has no C headers; ``wasmtime_c_api.h`` beside this
  file declares what crun 1.8.1's handler needs (crun dlopen()s ``libwasmtime.so`` at run time,
  so nothing links against it at build time).

Output: a cache directory (``edge_provision.artifacts.build_dir``) holding ``crun``,
``libwasmtime.so`` and ``manifest.json``. Everything that shapes the build is part of the cache
key, so an unchanged input returns the cached directory at once. Builds run in a temporary
directory and the result is renamed into place atomically; a lock file serialises concurrent
builders of the same key.

Only one engine per binary: a crun built with two engines tries WasmEdge first.
Every architecture is built in the builders' root (:mod:`builders.build_root`): the controller's own
natively, arm64 with Debian's cross toolchain (``--host=aarch64-linux-gnu``), by the same steps.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_provision.artifacts import ArtifactBuildError, build_dir, input_key, run, sha256_file
from edge_provision.artifacts.builders import build_root
from edge_provision.artifacts.builders._common import (
    PINS_STEP,
    apt_source,
    cached_manifest,
    enable_deb_src,
    load_versions,
    staged_build,
)
from edge_provision.artifacts.fetch import VERSIONS_FILE

log = logging.getLogger(__name__)

HEADER_FILE = Path(__file__).resolve().parent / "wasmtime_c_api.h"

# Bump when the build steps change in a way that changes the output (the cache key includes it).
BUILDER_REVISION = "2"  # 2: built in the build root (builders/build_root.py), any arch

ENGINES = ("wasmtime",)


@dataclass(frozen=True)
class ArchInfo:
    deb: str  # Debian architecture name
    machine: str  # platform.machine() / uname -m
    wheel_platform: str  # pip --platform tag
    wheel_dir: str  # directory of _libwasmtime.so inside the wheel


ARCHES: Mapping[str, ArchInfo] = {
    "amd64": ArchInfo("amd64", "x86_64", "manylinux2014_x86_64", "linux-x86_64"),
    "arm64": ArchInfo("arm64", "aarch64", "manylinux2014_aarch64", "linux-aarch64"),
}

# crun 1.8.1's build dependencies (debian/control minus debhelper and the Go spec packages that
# Debian's rules copy over libocispec's vendored schemas), plus what unpacking/building needs.
BUILD_DEPS = (
    "build-essential",  # gcc, make, binutils (strip, nm, readelf)
    "dpkg-dev",  # dpkg-source (apt-get source unpacks with it), dpkg-buildflags
    "xz-utils",
    "pkg-config",
    "gperf",
    "python3",  # libocispec's generator
    "go-md2man",
    "libsystemd-dev",
    "libyajl-dev",
    "libseccomp-dev",
    "libcap-dev",
)

# Every wasmtime/WASI function crun 1.8.1's src/libcrun/handlers/wasmtime.c dlsym()s. crun refuses
# to run a Wasm container ("could not find symbol in `libwasmtime.so`") if any is missing.
CRUN_WASMTIME_FUNCTIONS = (
    "wasm_byte_vec_delete",
    "wasm_byte_vec_new_uninitialized",
    "wasm_engine_delete",
    "wasm_engine_new",
    "wasi_config_inherit_argv",
    "wasi_config_inherit_env",
    "wasi_config_inherit_stderr",
    "wasi_config_inherit_stdin",
    "wasi_config_inherit_stdout",
    "wasi_config_new",
    "wasi_config_preopen_dir",
    "wasi_config_set_argv",
    "wasmtime_context_set_wasi",
    "wasmtime_error_delete",
    "wasmtime_error_message",
    "wasmtime_func_call",
    "wasmtime_linker_define_wasi",
    "wasmtime_linker_get_default",
    "wasmtime_linker_module",
    "wasmtime_linker_new",
    "wasmtime_module_delete",
    "wasmtime_module_new",
    "wasmtime_store_context",
    "wasmtime_store_delete",
    "wasmtime_store_new",
    "wasmtime_wat2wasm",
)

CONFIGURE_FLAGS: dict[str, tuple[str, ...]] = {"wasmtime": ("--with-wasmtime",)}
# Debian's own hardening for crun (debian/rules: DEB_BUILD_MAINT_OPTIONS = hardening=+all).
DEB_BUILD_MAINT_OPTIONS = "hardening=+all"
INCLUDE_SUBDIR = "edge-provision-include"  # inside the source tree: -ffile-prefix-map covers it
HEADER_SHIMS = ("wasm.h", "wasi.h", "wasmtime.h")  # what crun's handler and configure include

OUTPUT_FILES = ("crun", "libwasmtime.so")


class CrunBuildError(ArtifactBuildError):
    """A step of a crun build (either engine) failed."""

    build = "crun build"


@dataclass(frozen=True)
class Pins:
    crun_version: str
    crun_debian_version: str
    wasmtime_version: str
    wheel_file: str
    wheel_sha256: str


def load_pins(arch: str, versions_file: Path = VERSIONS_FILE) -> Pins:
    """crun and wasmtime pins for ``arch`` from versions.yml."""
    step = PINS_STEP
    data = load_versions(versions_file, CrunBuildError)
    try:
        crun = data["crun"]
        wasmtime = data["wasmtime"]
        wheel = wasmtime["wheels"][arch]
        pins = Pins(
            crun_version=str(crun["version"]),
            crun_debian_version=str(crun["debian_version"]),
            wasmtime_version=str(wasmtime["version"]),
            wheel_file=str(wheel["file"]),
            wheel_sha256=str(wheel["sha256"]).lower(),
        )
    except (KeyError, TypeError) as exc:
        raise CrunBuildError(
            step, f"{versions_file} lacks {exc} (need crun.version, crun.debian_version, "
            f"wasmtime.version, wasmtime.wheels.{arch}.file/sha256)"
        ) from exc
    if not pins.crun_debian_version.startswith(f"{pins.crun_version}-"):
        raise CrunBuildError(
            step, f"crun.debian_version {pins.crun_debian_version!r} is not a revision of "
            f"crun.version {pins.crun_version!r} in {versions_file}"
        )
    if f"-{pins.wasmtime_version}-" not in pins.wheel_file:
        raise CrunBuildError(
            step, f"wheel {pins.wheel_file!r} does not match wasmtime.version {pins.wasmtime_version!r}"
        )
    return pins


def verify_sha256(path: Path, expected: str, *, step: str = "verify wheel checksum") -> str:
    """Return the sha256 of ``path``; raise CrunBuildError naming expected and actual if it differs."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise CrunBuildError(
            step, f"sha256 mismatch for {path.name}: expected {expected.lower()}, actual {actual} "
            "(pinned in edge_provision/artifacts/versions.yml)"
        )
    return actual


def cache_key(arch: str, engine: str, pins: Pins, root_key: str | None = None) -> str:
    """Hash of every input of the build; ``root_key`` (default: the current one) names the build root."""
    return input_key(
        BUILDER_REVISION,
        f"build-root={root_key if root_key is not None else build_root.current_key()}",
        arch,
        engine,
        pins.crun_version,
        pins.crun_debian_version,
        pins.wasmtime_version,
        pins.wheel_file,
        pins.wheel_sha256,
        sha256_file(HEADER_FILE),
        " ".join(CONFIGURE_FLAGS[engine]),
        DEB_BUILD_MAINT_OPTIONS,
    )


def cached_build(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete, intact build in ``directory``, else None."""
    return cached_manifest(directory, OUTPUT_FILES)


def build_crun(arch: str = "amd64", engine: str = "wasmtime", *, versions_file: Path = VERSIONS_FILE) -> Path:
    """Build (or reuse) crun with the ``engine`` Wasm handler for ``arch``; return the cache directory.

    The directory holds ``crun``, ``libwasmtime.so`` and ``manifest.json``. On a node, install
    libwasmtime.so where the dynamic loader finds it (e.g. /usr/local/lib + ldconfig).
    """
    if arch not in ARCHES:
        raise CrunBuildError("check arguments", f"unknown arch {arch!r} (known: {', '.join(ARCHES)})")
    if engine not in ENGINES:
        raise CrunBuildError(
            "check arguments", f"engine {engine!r} is not supported (one engine per binary; known: "
            f"{', '.join(ENGINES)})"
        )
    pins = load_pins(arch, versions_file)
    key = cache_key(arch, engine, pins)
    dest = build_dir(f"crun-{engine}", pins.crun_version, arch, key)
    if cached_build(dest) is not None:
        return dest

    return staged_build(dest, cached_build, lambda work, out: _build(work, out, arch, engine, pins, key),
                        error=CrunBuildError)


def _build(work: Path, out: Path, arch: str, engine: str, pins: Pins, key: str) -> None:
    started = time.monotonic()
    info = ARCHES[arch]
    root = _step_build_root()
    enable_deb_src(error=CrunBuildError)

    def at(path: Path) -> str:
        return build_root.inside(path, work)

    def in_root(step: str, cmd: Sequence[str], cwd: Path = work, env: Mapping[str, str] | None = None, *,
                read_only: bool = False) -> str:
        return run(step, root.command(cmd, work=work, cwd=at(cwd), env=env, read_only=read_only),
                   error=CrunBuildError)

    # -- sources -------------------------------------------------------------------------
    source_dir = _step_apt_source(work, pins, in_root)
    wheel = _step_download_wheel(work, pins, info)
    wheel_member = f"wasmtime/{info.wheel_dir}/_libwasmtime.so"
    lib = work / "libwasmtime.so"
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(wheel_member) as src, lib.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        raise CrunBuildError(
            "extract libwasmtime", f"cannot extract {wheel_member} from {wheel.name}: {exc}"
        ) from exc
    _step_check_exports(in_root("check libwasmtime exports", [root.tool(arch, "nm"), "-D", "--defined-only",
                                                                at(lib)]), lib.name)
    shutil.copy2(lib, out / lib.name)
    (out / lib.name).chmod(0o644)

    # -- configure & make (in the build root, the same commands for every architecture) -----------
    include = source_dir / INCLUDE_SUBDIR
    include.mkdir()
    shutil.copy2(HEADER_FILE, include / HEADER_FILE.name)
    for shim in HEADER_SHIMS:
        (include / shim).write_text(f'/* edge-provision shim */\n#include "{HEADER_FILE.name}"\n')

    env = build_env(arch, root.pkg_config_libdir(arch))
    with contextlib.suppress(ArtifactBuildError):
        epoch = in_root("dpkg-parsechangelog", ["dpkg-parsechangelog", "-STimestamp"], source_dir, env)
        epoch = epoch.strip()
        if epoch.isdigit():
            env["SOURCE_DATE_EPOCH"] = epoch
    flags = {
        name: in_root("dpkg-buildflags", ["dpkg-buildflags", "--get", name], source_dir, env).strip()
        for name in ("CPPFLAGS", "CFLAGS", "LDFLAGS")
    }
    configure_args = [
        *CONFIGURE_FLAGS[engine],
        *cross_args(root.triplet(root.native), root.triplet(arch)),
        f"CPPFLAGS=-I{at(include)} {flags['CPPFLAGS']}",
        f"CFLAGS={flags['CFLAGS']}",
        f"LDFLAGS={flags['LDFLAGS']}",
    ]
    in_root("configure", ["./configure", *configure_args], source_dir, env)
    jobs = f"-j{os.environ.get('EDGE_PROVISION_BUILD_JOBS', '2')}"
    # `make crun` alone races: crun's sources compile while libocispec's generator is still writing
    # the headers they include (BUILT_SOURCES only apply to `make all`), and git-version.h is one
    # of those BUILT_SOURCES. Build libocispec and the header first, then the binary only.
    in_root("make libocispec", ["make", jobs, "-C", "libocispec"], source_dir, env)
    in_root("make git-version.h", ["make", "git-version.h"], source_dir, env)
    in_root("make crun", ["make", jobs, "crun"], source_dir, env)
    in_root("strip", [root.tool(arch, "strip"), "--strip-unneeded", "crun"], source_dir, env)

    # -- checks (a foreign binary runs through qemu-user in the root) ------------------------------
    # crun re-executes itself from a read-only bind mount of /proc/self/exe unless it already runs
    # from a read-only file system; under qemu-user /proc/self/exe is qemu, so the check runs with
    # the work directory mounted read-only.
    version_output = _step_check_version(
        in_root("check crun --version", [*root.emulator(arch), at(source_dir / "crun"), "--version"],
                source_dir, read_only=True),
        pins, engine,
    )
    crun = out / "crun"
    shutil.copy2(source_dir / "crun", crun)
    crun.chmod(0o755)
    if b"libwasmtime.so" not in crun.read_bytes():
        raise CrunBuildError("check crun --version", "the binary does not dlopen libwasmtime.so",
                                 version_output)
    needed = needed_from_readelf(in_root("readelf", ["readelf", "-d", "-W", "crun"], source_dir))

    source_files = {
        p.name: sha256_file(p) for p in sorted(work.iterdir()) if p.is_file() and p.name.startswith("crun_")
    }
    manifest = {
        "name": "crun",
        "engine": engine,
        "arch": arch,
        "key": key,
        "builder_revision": BUILDER_REVISION,
        "crun": {
            "version": pins.crun_version,
            "debian_version": pins.crun_debian_version,
            "source": "debian-source",
            "source_files_sha256": source_files,
            "version_output": version_output,
        },
        "wasmtime": {
            "version": pins.wasmtime_version,
            "source": "pypi",
            "wheel": pins.wheel_file,
            "wheel_sha256": pins.wheel_sha256,
            "wheel_member": wheel_member,
            "header": HEADER_FILE.name,
            "header_sha256": sha256_file(HEADER_FILE),
            "functions_used_by_crun": list(CRUN_WASMTIME_FUNCTIONS),
        },
        "configure_flags": [arg.replace(at(source_dir), "$SRCDIR") for arg in configure_args],
        "build_root": {"key": root.key, "native": root.native, "host": root.triplet(arch)},
        "deb_build_maint_options": DEB_BUILD_MAINT_OPTIONS,
        "stripped": True,
        "runtime": {
            "needed": needed,
            "dlopen": "libwasmtime.so",
            "install_hint": "libwasmtime.so -> /usr/local/lib/libwasmtime.so, then ldconfig",
        },
        "files": {
            name: {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size}
            for name in OUTPUT_FILES
        },
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    out.chmod(0o755)
    log.info(
        "built crun %s (+WASM:%s, %s) in %.0fs", pins.crun_version, engine, arch, manifest["build_seconds"]
    )


# -- steps -------------------------------------------------------------------------------------


def _step_apt_source(work: Path, pins: Pins, in_root: Callable[..., str]) -> Path:
    """Downloaded on the machine (apt checks it against the signed Sources index), unpacked in the root."""
    apt_source(work, "crun", pins.crun_debian_version, "crun.debian_version", download_only=True,
               error=CrunBuildError)
    dscs = sorted(work.glob(f"crun_{pins.crun_debian_version.split(':')[-1]}.dsc"))
    if not dscs:
        raise CrunBuildError("apt-get source", f"no crun .dsc in {work}")
    in_root("dpkg-source", ["dpkg-source", "--no-check", "-x", dscs[0].name, f"crun-{pins.crun_version}"])
    source_dir = work / f"crun-{pins.crun_version}"
    if not (source_dir / "configure").is_file():
        raise CrunBuildError("apt-get source", f"no unpacked source tree with configure at {source_dir}")
    return source_dir


def _step_download_wheel(work: Path, pins: Pins, info: ArchInfo) -> Path:
    dl = work / "wheel"
    run(
        "download wasmtime wheel",
        [
            sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
            f"wasmtime=={pins.wasmtime_version}", "--no-deps", "--only-binary=:all:",
            "--platform", info.wheel_platform, "-d", str(dl),
        ],
        error=CrunBuildError,
    )
    wheel = dl / pins.wheel_file
    if not wheel.is_file():
        got = ", ".join(p.name for p in dl.iterdir()) or "nothing"
        raise CrunBuildError("download wasmtime wheel", f"expected {pins.wheel_file}, pip got {got}")
    verify_sha256(wheel, pins.wheel_sha256)
    return wheel


def _step_check_exports(nm_output: str, library: str) -> None:
    """``nm -D --defined-only`` output of libwasmtime must define every function crun calls."""
    exported = {line.split()[-1] for line in nm_output.splitlines() if line.strip()}
    missing = [name for name in CRUN_WASMTIME_FUNCTIONS if name not in exported]
    if missing:
        raise CrunBuildError(
            "check libwasmtime exports", f"{library} lacks functions crun calls: {', '.join(missing)}"
        )


def _step_check_version(output: str, pins: Pins, engine: str) -> str:
    """``crun --version`` output must name the pinned version and exactly the one engine."""
    step = "check crun --version"
    if f"crun version {pins.crun_version}" not in output:
        raise CrunBuildError(step, f"expected crun version {pins.crun_version}", output)
    features = next((line for line in output.splitlines() if line.startswith("+")), "")
    engines = [word for word in features.split() if word.startswith("+WASM:")]
    if engines != [f"+WASM:{engine}"]:
        raise CrunBuildError(step, f"expected exactly one engine, +WASM:{engine}; got {engines}", output)
    return output.strip()


def needed_from_readelf(output: str) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in output.splitlines() if "(NEEDED)" in line]


def cross_args(build_triplet: str, host_triplet: str) -> list[str]:
    """configure's toolchain arguments: the same for a native (build == host) and a cross build."""
    return [f"--build={build_triplet}", f"--host={host_triplet}", f"CC={host_triplet}-gcc",
            "PKG_CONFIG=pkg-config"]


def build_env(arch: str, pkg_config_libdir: str) -> dict[str, str]:
    """The build's environment in the root: Debian's toolchain, hardening and flags for ``arch``."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "TZ": "UTC",
        "HOME": build_root.WORK_MOUNT,
        "DEB_BUILD_MAINT_OPTIONS": DEB_BUILD_MAINT_OPTIONS,
        "DEB_HOST_ARCH": arch,  # dpkg-buildflags: the flags for the architecture built for
        "PKG_CONFIG_LIBDIR": pkg_config_libdir,
    }


def _step_build_root() -> build_root.BuildRoot:
    try:
        return build_root.ensure_root()
    except build_root.BuildRootError as exc:
        raise CrunBuildError("build root", str(exc)) from exc
