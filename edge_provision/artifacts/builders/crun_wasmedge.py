"""Build crun with WasmEdge: the production path of the upstream guide (edge_wasm_engine: wasmedge).

Inputs, pinned in ``edge_provision/artifacts/versions.yml`` and read from the fleet's artifact
source through :func:`edge_provision.artifacts.fetch.fetch` (sha256-checked, never WasmEdge's
install.sh):

* ``crun_release`` -- crun's release source tarball;
* ``wasmedge`` -- WasmEdge's release tarball for the architecture; only its ``include/`` and
  library directory are extracted, into a private prefix.

Both are fetched before anything else happens, so a source that lacks one fails at once,
naming the file, before any node is touched. The build then runs the steps of
:func:`build_plan` once per architecture on the controller (cached like the wasmtime build,
keyed by the inputs' checksums); the result -- ``crun`` and the WasmEdge library it links
against -- is shipped to the nodes by the wasm_runtime role / the pyinfra deploy, which put the
library where the loader finds it (ldconfig) and check ``crun --version`` lists
``+WASM:wasmedge``. One engine per binary (a crun with two tries WasmEdge first).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_provision.artifacts import build_dir, debian, input_key, run, sha256_file
from edge_provision.artifacts.builders._common import (
    PINS_STEP,
    cached_manifest,
    install_build_deps,
    load_versions,
    staged_build,
)
from edge_provision.artifacts.builders.crun import BUILD_DEPS, CrunBuildError, needed_from_readelf
from edge_provision.artifacts.fetch import UPSTREAM, VERSIONS_FILE, Download, fetch, pinned

ENGINE = "wasmedge"
# Bump when the build steps change in a way that changes the output (the cache key includes it).
BUILDER_REVISION = "1"
CONFIGURE_FLAGS = ("--with-wasmedge",)


@dataclass(frozen=True)
class Pins:
    crun: Download
    wasmedge: Download
    archive_root: str  # top directory of the WasmEdge tarball
    archive_lib_dir: str  # its library directory (lib64 in the manylinux2014 tarballs)


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    cwd: Path


def load_pins(arch: str, versions_file: Path = VERSIONS_FILE) -> Pins:
    data = load_versions(versions_file, CrunBuildError)
    try:
        root, lib_dir = str(data["wasmedge"]["archive_root"]), str(data["wasmedge"]["archive_lib_dir"])
    except (KeyError, TypeError) as exc:
        raise CrunBuildError(
            PINS_STEP, f"{versions_file} lacks wasmedge.{exc.args[0]} (the tarball's layout)") from exc
    return Pins(crun=pinned("crun_release", arch, versions_file),
                wasmedge=pinned("wasmedge", arch, versions_file), archive_root=root, archive_lib_dir=lib_dir)


def build_plan(pins: Pins, work: Path, *, wasmedge_tarball: Path, crun_tarball: Path,
               jobs: int = 2) -> list[Step]:
    """The build, as the commands it runs: WasmEdge's include/ and library directory into a
    prefix (ldconfig'd), crun's source configured ``--with-wasmedge`` against it, built,
    stripped, and ``crun --version`` run with that library."""
    prefix = work / "wasmedge"
    lib = prefix / pins.archive_lib_dir
    source = work / f"crun-{pins.crun.version}"
    make = ("make", f"-j{jobs}")
    return [
        Step("extract WasmEdge include/ and libraries",
             ("tar", "-xzf", str(wasmedge_tarball), "-C", str(prefix), "--strip-components=1",
              f"{pins.archive_root}/include", f"{pins.archive_root}/{pins.archive_lib_dir}"), work),
        Step("ldconfig the WasmEdge prefix", ("ldconfig", "-n", str(lib)), work),
        Step("extract crun source", ("tar", "-xJf", str(crun_tarball), "-C", str(work)), work),
        Step("configure", ("./configure", *CONFIGURE_FLAGS, f"CPPFLAGS=-I{prefix / 'include'}",
                           f"LDFLAGS=-L{lib}"), source),
        # As in the wasmtime build: libocispec's generated headers and git-version.h first,
        # then the binary alone (`make crun` on its own races the header generator).
        Step("make libocispec", (*make, "-C", "libocispec"), source),
        Step("make git-version.h", ("make", "git-version.h"), source),
        Step("make crun", (*make, "crun"), source),
        Step("strip", ("strip", "--strip-unneeded", "crun"), source),
        Step("check crun --version", ("env", f"LD_LIBRARY_PATH={lib}", "./crun", "--version"), source),
    ]


def fetch_inputs(arch: str, source: str = UPSTREAM, versions_file: Path = VERSIONS_FILE) -> dict[str, Path]:
    """Both tarballs, fetched from ``source`` and verified (ArtifactFetchError names a missing one)."""
    pins = load_pins(arch, versions_file)
    return {"crun_release": fetch(pins.crun, source), "wasmedge": fetch(pins.wasmedge, source)}


def cached_build(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete, intact build in ``directory`` (every file it lists), else None."""
    return cached_manifest(directory)


def build_crun_wasmedge(arch: str = "amd64", source: str = UPSTREAM, *,
                        versions_file: Path = VERSIONS_FILE) -> Path:
    """Build (or reuse) crun with WasmEdge for ``arch``; return the cache directory
    (``crun``, the WasmEdge library named by its SONAME, ``manifest.json``)."""
    pins = load_pins(arch, versions_file)
    inputs = fetch_inputs(arch, source, versions_file)
    key = input_key(BUILDER_REVISION, arch, ENGINE, pins.crun.sha256, pins.wasmedge.sha256,
                    pins.archive_root, pins.archive_lib_dir, " ".join(CONFIGURE_FLAGS))
    dest = build_dir(f"crun-{ENGINE}", pins.crun.version, arch, key)

    def check_arch() -> None:
        host = debian.host_arch()
        if arch != host:
            raise CrunBuildError(
                "check arguments", f"cross-building crun for {arch} on {host} is not implemented "
                "(build on an arm64 controller or build host)")

    return staged_build(
        dest, cached_build, lambda work, out: _build(work, out, arch, pins, inputs, key), precheck=check_arch,
        error=CrunBuildError,
    )


def _build(work: Path, out: Path, arch: str, pins: Pins, inputs: dict[str, Path], key: str) -> None:
    started = time.monotonic()
    install_build_deps(BUILD_DEPS, error=CrunBuildError)
    (work / "wasmedge").mkdir()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "TZ": "UTC", "HOME": str(work)}
    jobs = int(os.environ.get("EDGE_PROVISION_BUILD_JOBS", "2"))
    version_output = ""
    plan = build_plan(pins, work, wasmedge_tarball=inputs["wasmedge"], crun_tarball=inputs["crun_release"],
                      jobs=jobs)
    for step in plan:
        version_output = run(step.name, step.argv, cwd=step.cwd, env=env, error=CrunBuildError)
    source = work / f"crun-{pins.crun.version}"
    engines = [w for w in version_output.split() if w.startswith("+WASM:")]
    if engines != [f"+WASM:{ENGINE}"]:
        raise CrunBuildError(
            "check crun --version", f"expected exactly one engine, +WASM:{ENGINE}; got {engines}",
            version_output)
    needed = needed_from_readelf(
        run("readelf", ["readelf", "-d", "-W", str(source / "crun")], env=env, error=CrunBuildError))
    libraries = [n for n in needed if n.startswith("libwasmedge")]
    if len(libraries) != 1:
        raise CrunBuildError("check libraries", f"crun links no single WasmEdge library: {needed}")
    library = libraries[0]
    shutil.copy2(source / "crun", out / "crun")
    shutil.copyfile(work / "wasmedge" / pins.archive_lib_dir / library, out / library)  # follows symlinks
    (out / library).chmod(0o644)
    manifest = {
        "name": "crun",
        "engine": ENGINE,
        "arch": arch,
        "key": key,
        "builder_revision": BUILDER_REVISION,
        "crun": {"version": pins.crun.version, "source": pins.crun.url, "sha256": pins.crun.sha256,
                 "version_output": version_output.strip()},
        "wasmedge": {"version": pins.wasmedge.version, "source": pins.wasmedge.url,
                     "sha256": pins.wasmedge.sha256},
        "configure_flags": list(CONFIGURE_FLAGS),
        "runtime": {"needed": needed, "library": library,
                    "install_hint": f"{library} -> /usr/local/lib/{library}, then ldconfig"},
        "files": {name: {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size}
                  for name in ("crun", library)},
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    out.chmod(0o755)
