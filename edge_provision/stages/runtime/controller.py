"""Stage runtime, the controller's side: what both engines compute or fetch before touching a node.

One implementation for Ansible (``plugins/filter/runtime.py`` and ``python -m
edge_provision.stages.runtime``) and pyinfra (``edge_provision.pyinfra_engine.deploys.runtime``):

* :func:`containerd_config` -- a node's new ``config.toml`` from its current one (the Wasm
  handler, systemd cgroups, sandbox image, OOM score restriction), on top of
  :func:`edge_provision.stages.runtime.containerd_config.with_wasm_handler`;
* :func:`debs` -- Debian packages and their dependency closure, downloaded on the controller
  into the artifact cache (:func:`edge_provision.artifacts.debian.debs`), so nodes install them
  without reaching a mirror (the air-gapped path), and :func:`debs_plan`, how a node gets them;
* :func:`release_files` and :func:`release_plan` -- containerd and runc from their pinned
  release files (``containerd_install_from: release``), fetched from the fleet's artifact source
  and sha256-checked on the controller, and the node commands that install them;
* :func:`engine_downloads` -- what the Wasm engine's build needs from the artifact source,
  fetched before any node is changed, so a missing file fails the run first;
* :func:`wasm_crun` and :func:`images` -- crun with the Wasm engine and the OCI image tarballs,
  built (or found in the cache) by ``edge_provision.artifacts.builders``.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import tomlkit

from edge_provision.artifacts import debian
from edge_provision.artifacts.fetch import UPSTREAM, ArtifactFetchError, fetch, pinned
from edge_provision.stages.runtime.containerd_config import (
    ContainerdConfigError,
    schema_for,
    subtable,
    with_wasm_handler,
)

# containerd's built-in runtime table for runc (what it uses when the config names none).
RUNC_RUNTIME_TYPE = "io.containerd.runc.v2"


# Bit of CAP_SYS_RESOURCE in /proc/<pid>/status CapBnd.
CAP_SYS_RESOURCE = 24


# Wasm engines crun can be built with: wasmtime from Debian's crun source and the PyPI wheel
# (the lab), wasmedge from the pinned release tarballs in the artifact source (production).
ENGINES = ("wasmtime", "wasmedge")


# What each engine's build takes from the artifact source (versions.yml entries).
ENGINE_DOWNLOADS: dict[str, tuple[str, ...]] = {"wasmtime": (), "wasmedge": ("crun_release", "wasmedge")}


# Release files of containerd_install_from: release (versions.yml entries), in install order.
RELEASE_COMPONENTS = ("containerd_release", "runc_release")


IMAGE_NAMES = ("pause", "busybox", "wasi-demo")
# Seconds apt-get waits for dpkg's lock held by another process (unattended-upgrades, a user's
# apt) before it gives up with its own message.
DPKG_LOCK_TIMEOUT = 300


class RuntimeStageError(RuntimeError):
    """A controller-side step of the runtime stage failed; the message says what to do."""


def resolve_auto(setting: Any, detected: bool) -> Any:
    """``auto`` (or None) becomes what the node needs; anything else is kept as given.

    Kept as given on purpose, wrong types included: containerd validates the config it is
    handed before it replaces the running one, so a bad override fails there, loudly.
    """
    if setting is None or (isinstance(setting, str) and setting.strip().lower() == "auto"):
        return detected
    return setting


def lacks_cap_sys_resource(capbnd_hex: str) -> bool:
    """Whether a CapBnd mask (hex, as in /proc/self/status) lacks CAP_SYS_RESOURCE."""
    return not int(capbnd_hex, 16) >> CAP_SYS_RESOURCE & 1


def containerd_config(
    current: str,
    *,
    version: str,
    handler: str,
    binary: str,
    systemd_cgroup: Any,
    sandbox_image: Any,
    restrict_oom_score_adj: Any,
    systemd_pid1: bool,
    cap_sys_resource: bool,
    default_runtime: str = "runc",
    cni_bin_dir: str = "",
) -> str:
    """The node's new config.toml.

    ``current`` is the node's config (or ``containerd config default`` output when it has
    none); ``version`` the installed containerd's. ``systemd_cgroup`` ``auto`` means true
    when systemd is PID 1 (kubeadm's kubelet uses the systemd cgroup driver, and runc/crun must
    use the same one); ``restrict_oom_score_adj`` ``auto`` means true when the node lacks
    CAP_SYS_RESOURCE (e.g. a container host), where containerd could not lower OOM scores.

    A config that defines any runtime table loses containerd's built-in ``runc`` entry (its
    runtimes map is replaced, not merged), and the CRI plugin then refuses to start for want
    of its default runtime; so the default runtime's table is added when absent, with
    containerd's own defaults.
    """
    schema = schema_for(version)
    original = current
    try:
        doc = tomlkit.parse(current)
    except tomlkit.exceptions.ParseError as exc:
        raise ContainerdConfigError(f"the current config is not valid TOML: {exc}") from None
    if current.strip() and doc.get("version") == schema.version:
        runtimes = subtable(doc, schema.runtimes)
        if default_runtime not in runtimes:
            runc = subtable(runtimes, (default_runtime,))
            runc["runtime_type"] = RUNC_RUNTIME_TYPE
            subtable(runc, ("options",))
        current = tomlkit.dumps(doc)
    wanted = with_wasm_handler(
        current,
        schema=schema,
        handler=handler,
        binary=binary,
        systemd_cgroup=resolve_auto(systemd_cgroup, systemd_pid1),
        sandbox_image=sandbox_image,
        restrict_oom_score_adj=resolve_auto(restrict_oom_score_adj, not cap_sys_resource),
        cni_bin_dir=cni_bin_dir,
    )
    # tomlkit does not round-trip its own output byte for byte (a nested table's header gains
    # indentation on every parse and dump), so a config that already says the same is kept
    # as it is: the file is rewritten, and containerd restarted, only for a real change.
    if original.strip() and tomlkit.parse(original).unwrap() == tomlkit.parse(wanted).unwrap():
        return original
    return wanted


def debs(packages: Sequence[str], arch: str,
         release: str = debian.CONTROLLER_RELEASE) -> list[dict[str, str]]:
    """The .deb files of ``packages`` and their dependency closure for hosts of ``release`` on
    ``arch``, downloaded on the controller and cached (:func:`edge_provision.artifacts.debian.debs`):
    one ``{package, version, path, file, sha256}`` per package, in dependency-closure order."""
    problem = debian.release_error(release)
    if problem:
        raise RuntimeStageError(problem)
    return debian.debs(packages, arch, release)


def distro_crun_packages(engine: str, release: str,
                         distro_packages: Mapping[str, Sequence[str]]) -> list[str]:
    """The packages of ``release``'s own crun with ``engine`` (edge_wasm_distro_packages: Debian
    13's crun is built with WasmEdge), or ``[]`` when crun is built on the controller instead."""
    if engine != "wasmedge":
        return []
    return [str(p) for p in distro_packages.get(release) or []]


def check_engine(engine: str, build_on_node: bool = False) -> None:
    """Fail clearly for what this project cannot install."""
    if build_on_node:
        raise RuntimeStageError(
            "wasm_runtime_build_on_node is not implemented: crun is built once on the controller "
            "(edge_provision.artifacts.builders) and shipped; set wasm_runtime_build_on_node: false"
        )
    if engine not in ENGINES:
        raise RuntimeStageError(f"unknown Wasm engine {engine!r}; choose one of {', '.join(ENGINES)}")


def _fetched(names: Sequence[str], arch: str, source: str) -> list[dict[str, Any]]:
    """The pinned downloads ``names`` for ``arch``, fetched from ``source`` and verified; one
    error naming every file that could not be had."""
    found, problems = [], []
    for name in names:
        try:
            download = pinned(name, arch)
            path = fetch(download, source)
        except ArtifactFetchError as exc:
            problems.append(str(exc))
            continue
        found.append({"name": name, "version": download.version, "file": download.file, "path": str(path),
                      "sha256": download.sha256, "url": download.url})
    if problems:
        raise RuntimeStageError(f"edge_artifact_source {source}: " + "; ".join(problems))
    return found


def engine_downloads(engine: str, arch: str, source: str = UPSTREAM) -> list[dict[str, Any]]:
    """The files ``engine``'s crun build takes from the artifact source, fetched and verified.

    Called before any node is changed (the containerd role's preflight, the pyinfra deploy while
    it prepares), so a source lacking one stops the run with its name and nothing touched."""
    check_engine(engine)
    return _fetched(ENGINE_DOWNLOADS[engine], arch, source)


def wasm_crun(arch: str, engine: str, source: str = UPSTREAM) -> dict[str, Any]:
    """crun built with ``engine`` for ``arch`` (cached): paths, checksums and the engine library."""
    engine_downloads(engine, arch, source)
    if engine == "wasmedge":
        from edge_provision.artifacts.builders.crun_wasmedge import build_crun_wasmedge

        directory = build_crun_wasmedge(arch=arch, source=source)
    else:
        from edge_provision.artifacts.builders.crun import build_crun

        directory = build_crun(arch=arch, engine=engine)
    manifest = json.loads((directory / "manifest.json").read_text())
    # The wasmtime build dlopen()s its library, the WasmEdge build links against it.
    library = manifest["runtime"].get("library") or manifest["runtime"]["dlopen"]
    return {
        "engine": engine,
        "version": manifest["crun"]["version"],
        "crun": str(directory / "crun"),
        "crun_sha256": manifest["files"]["crun"]["sha256"],
        "library": library,
        "library_path": str(directory / library),
        "library_sha256": manifest["files"][library]["sha256"],
        "needed": manifest["runtime"]["needed"],
    }


def release_files(arch: str, source: str = UPSTREAM, *, build: bool = False) -> list[dict[str, Any]]:
    """containerd's release archive and runc for ``arch``, fetched and verified on the controller;
    with ``build``, the same files made on the controller from their Go modules instead
    (versions.yml ``containerd_build``: containerd 2.x and runc, laid out as upstream's)."""
    if build:
        from edge_provision.artifacts.builders.kubernetes_modules import containerd_release_files

        return containerd_release_files(arch)
    return _fetched(RELEASE_COMPONENTS, arch, source)


def release_plan(files: Sequence[Mapping[str, Any]], *, staging_dir: str, prefix: str,
                 stamp_file: str) -> dict[str, Any]:
    """Node commands that install the shipped release files (from :func:`release_files`).

    The files wait in ``staging_dir``; each is checked against its sha256 again on the node
    before anything is unpacked (a damaged copy stops there), containerd's archive is unpacked
    into ``prefix`` (bin/), runc installed as ``prefix``/sbin/runc, then ``stamp_file`` records
    what was installed (the node runs this only while its stamp differs) and the staged files
    are removed. Returns ``{commands, stamp, stamp_file}``.
    """
    by_name = {str(f["name"]): f for f in files}
    missing = [n for n in RELEASE_COMPONENTS if n not in by_name]
    if missing:
        raise RuntimeStageError(f"release files lack {', '.join(missing)}")
    q = shlex.quote
    staged = {n: f"{staging_dir}/{by_name[n]['file']}" for n in RELEASE_COMPONENTS}
    stamp = "\n".join(f"{by_name[n]['sha256']}  {by_name[n]['file']}" for n in RELEASE_COMPONENTS)
    commands = [
        f"cd {q(staging_dir)} && printf '%s\\n' {q(stamp)} | sha256sum --check --strict",
        f"tar -xzf {q(staged['containerd_release'])} -C {q(prefix)} --no-same-owner bin",
        f"install -D -m 0755 {q(staged['runc_release'])} {q(prefix + '/sbin/runc')}",
        f"install -d -m 0755 {q(os.path.dirname(stamp_file))} && printf '%s\\n' {q(stamp)} > {q(stamp_file)}",
        f"rm -f {' '.join(q(p) for p in staged.values())}",
    ]
    return {"commands": commands, "stamp": stamp, "stamp_file": stamp_file}


def images(names: Sequence[str], arch: str) -> list[dict[str, Any]]:
    """OCI tarballs of the named lab images for ``arch``: reference, tarball path, size."""
    from edge_provision.artifacts.builders import images as builders

    result = []
    for name in names:
        if name == "pause":
            path = builders.build_pause_image(arch)
        elif name == "busybox":
            path = builders.build_busybox_image(arch)
        elif name == "wasi-demo":
            path = builders.build_wasi_demo_image()
        else:
            raise RuntimeStageError(f"unknown image {name!r}; choose from {', '.join(IMAGE_NAMES)}")
        info = builders.image_info(path)
        result.append({"name": name, "reference": info.reference, "digest": info.digest, "path": str(path),
                       "file": path.name, "size": info.size, "sha256": info.sha256})
    return result


def sandbox_image(configured: Any, arch: str) -> Any:
    """The CRI sandbox image: ``configured`` (as given), or the lab's pause image when empty.

    Only its name: the same for every ``arch``, read from the pause source without building the
    image (the image itself comes with :func:`images`)."""
    if configured is None or configured == "":
        from edge_provision.artifacts.builders import images as builders

        return builders.pause_reference()
    return configured


def installed_packages(dpkg_query_output: str) -> set[str]:
    """Installed packages from ``dpkg-query -W -f='${Package} ${db:Status-Status}\\n' ...``."""
    names = set()
    for line in dpkg_query_output.splitlines():
        words = line.split()
        if len(words) == 2 and words[1] == "installed":
            names.add(words[0].split(":", 1)[0])
    return names


def debs_missing(wanted: Sequence[Mapping[str, Any]], dpkg_query_output: str) -> list[Mapping[str, Any]]:
    """The entries of ``wanted`` (from :func:`debs`) whose package is not installed."""
    installed = installed_packages(dpkg_query_output)
    return [d for d in wanted if d["package"] not in installed]


def debs_plan(debs: Sequence[Mapping[str, Any]], *, staging_dir: str) -> dict[str, Any]:
    """How a node gets the .deb files ``debs`` (the ones it lacks, :func:`debs_missing`): one
    uncompressed tar of them, made on the controller, so they travel in one transfer (a copy
    per file cost 10-13 s each on an emulated VM), and the node commands that unpack it in
    ``staging_dir``, check each file's sha256 again, finish what an interrupted dpkg left, install
    them in one apt-get call (waiting for dpkg's lock) and remove what was shipped.
    Returns ``{archive, file, commands}``.

    The tar is :func:`edge_provision.artifacts.debian.pack_debs`'s: named by its members' sha256s
    and kept beside the .deb files, so the next node lacking the same packages reuses it.
    """
    if not debs:
        raise RuntimeStageError("no packages to ship")
    sums = "\n".join(f"{d['sha256']}  {d['file']}" for d in debs)
    archive = debian.pack_debs(debs)
    name = archive.name
    q = shlex.quote
    staged = " ".join(q(f"{staging_dir}/{d['file']}") for d in debs)
    commands = [
        f"cd {q(staging_dir)} && tar -xf {q(name)} --no-same-owner"
        f" && printf '%s\\n' {q(sums)} | sha256sum --check --strict --quiet",
        # A node stopped while dpkg ran (power cut, reboot) refuses apt-get with "dpkg was
        # interrupted, you must manually run 'dpkg --configure -a'": finish that first.
        'if [ -n "$(dpkg --audit)" ]; then DEBIAN_FRONTEND=noninteractive dpkg --configure -a; fi',
        f"DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout={DPKG_LOCK_TIMEOUT}"
        f" install -y -q --no-install-recommends {staged}",
        f"rm -f {q(f'{staging_dir}/{name}')} {staged}",
    ]
    return {"archive": str(archive), "file": name, "commands": commands}


def present_images(ctr_images_ls_output: str) -> dict[str, str]:
    """``reference -> digest`` from ``ctr images ls`` (header line first)."""
    present = {}
    for line in ctr_images_ls_output.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3:
            present[words[0]] = words[2]
    return present


def images_missing(wanted: Sequence[Mapping[str, Any]], ctr_images_ls_output: str) -> list[Mapping[str, Any]]:
    """The images of ``wanted`` (from :func:`images`) absent, or with another digest, in containerd."""
    present = present_images(ctr_images_ls_output)
    return [i for i in wanted if present.get(str(i["reference"])) != i["digest"]]
