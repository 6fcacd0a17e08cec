"""Stage runtime, the controller's side: what both engines compute or fetch before touching a node.

One implementation for Ansible (``plugins/filter/runtime.py`` and ``python -m
edge_provision.stages.runtime``) and pyinfra (``edge_provision.pyinfra_engine.deploys.runtime``):

* :func:`containerd_config` -- a node's new ``config.toml`` from its current one (the Wasm
  handler, systemd cgroups, sandbox image, OOM score restriction), on top of
  :func:`edge_provision.stages.runtime.containerd_config.with_wasm_handler`;
* :func:`debs` -- Debian packages and their dependency closure, downloaded on the controller
  with ``apt-get download`` into the artifact cache, so nodes install them without reaching a
  mirror (the air-gapped path);
* :func:`release_files` and :func:`release_plan` -- containerd and runc from their pinned
  release files (``containerd_install_from: release``), fetched from the fleet's artifact source
  and sha256-checked on the controller, and the node commands that install them;
* :func:`engine_downloads` -- what the Wasm engine's build needs from the artifact source,
  fetched before any node is changed, so a missing file fails the run first;
* :func:`wasm_crun` and :func:`images` -- crun with the Wasm engine and the OCI image tarballs,
  built (or found in the cache) by ``edge_provision.artifacts.builders``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomlkit

from edge_provision.artifacts import ARTIFACTS_DIR, CACHE_DIR, locked, sha256_file
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
    )
    # tomlkit does not round-trip its own output byte for byte (a nested table's header gains
    # indentation on every parse and dump), so a config that already says the same is kept
    # as it is: the file is rewritten, and containerd restarted, only for a real change.
    if original.strip() and tomlkit.parse(original).unwrap() == tomlkit.parse(wanted).unwrap():
        return original
    return wanted


def _apt_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        list(cmd), cwd=cwd, env=_apt_env(), text=True, capture_output=True, stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeStageError(
            f"{what}: `{' '.join(cmd)}` exited with {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc.stdout


# apt's view of one architecture: a private state (lists, package cache, an empty dpkg status)
# under <cache>/apt/<arch>/ and a private sources.list holding this machine's distribution `deb`
# entries (signatures are checked with the machine's keyrings, as for any apt run). The machine's
# own apt state and its dpkg architectures are left alone: no `dpkg --add-architecture`. Every
# architecture, the controller's own included, goes through the same options.
APT_LISTS_MAX_AGE = 6 * 3600  # seconds before the private lists are refreshed (apt-get update)


def apt_dir(arch: str) -> Path:
    return CACHE_DIR / "apt" / arch


def apt_options(arch: str) -> list[str]:
    """``-o`` options giving apt the private view of ``arch`` (see :func:`apt_dir`)."""
    base = apt_dir(arch)
    options = {
        "APT::Architecture": arch,
        "APT::Architectures": arch,
        "Dir::State": f"{base}/state",
        "Dir::State::status": f"{base}/state/status",
        "Dir::Cache": f"{base}/cache",
        "Dir::Etc::SourceList": f"{base}/sources.list",
        "Dir::Etc::SourceParts": f"{base}/sources.list.d",
        "Acquire::Languages": "none",
        "APT::Sandbox::User": "root",
    }
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def apt_sources_list(entries: Sequence[str]) -> str:
    header = "# Written by edge-provision (runtime_controller.apt_options): this machine's deb entries.\n"
    return header + "".join(f"{entry}\n" for entry in entries)


def _apt_update(arch: str, force: bool = False) -> None:
    """Prepare the private apt state of ``arch``; ``apt-get update`` it when new, stale or ``force``."""
    from edge_provision.lab.image import apt_sources

    base = apt_dir(arch)
    for sub in ("state/lists/partial", "cache/archives/partial", "sources.list.d"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "state" / "status").touch()
    entries = apt_sources()
    if not entries:
        raise RuntimeStageError("no apt sources in /etc/apt/sources.list*: downloading packages needs "
                                "a Debian mirror")
    sources = base / "sources.list"
    text = apt_sources_list(entries)
    stamp = base / "state" / "updated"
    if not sources.is_file() or sources.read_text() != text:
        sources.write_text(text)
        force = True
    if force or not stamp.is_file() or time.time() - stamp.stat().st_mtime > APT_LISTS_MAX_AGE:
        _run(["apt-get", "update", "-q", *apt_options(arch)], f"apt-get update ({arch} package lists)")
        stamp.touch()


def dependency_closure(packages: Sequence[str], arch: str) -> list[str]:
    """``packages`` and everything they Depend/Pre-Depend on, recursively (no Recommends)."""
    out = _run(
        ["apt-cache", *apt_options(arch), "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages],
        "resolve package dependencies",
    )
    names = []
    for line in out.splitlines():
        if line and not line.startswith((" ", "<")):
            name = line.split(":", 1)[0]
            if name not in names:
                names.append(name)
    return names


def _candidates(names: Sequence[str], arch: str) -> dict[str, str]:
    out = _run(["apt-cache", *apt_options(arch), "show", "--no-all-versions", *names],
               "read candidate versions")
    versions: dict[str, str] = {}
    package = ""
    for line in out.splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1].strip()
        elif line.startswith("Version: ") and package and package not in versions:
            versions[package] = line.split(": ", 1)[1].strip()
    missing = [n for n in names if n not in versions]
    if missing:
        raise RuntimeStageError(f"no installable {arch} version of {', '.join(missing)} in the apt lists "
                                f"of {apt_dir(arch)}")
    return versions


def debs(packages: Sequence[str], arch: str) -> list[dict[str, str]]:
    """The .deb files of ``packages`` and their dependency closure for ``arch``.

    Downloaded with ``apt-get download`` (apt checks every file against the signed indexes)
    through :func:`apt_options` into ``<cache>/artifacts/debs/<arch>/``, reused while the
    candidate version is unchanged; a version the lists replaced (a point release, a security
    update) leaves the cache when its successor arrives (:func:`_prune_superseded`). Returns one
    ``{package, version, path, sha256}`` per package, in dependency-closure order.
    """
    cache = ARTIFACTS_DIR / "debs" / arch
    cache.mkdir(parents=True, exist_ok=True)
    with locked(apt_dir(arch).with_suffix(".lock")):
        _apt_update(arch)
        try:
            return _debs(packages, arch, cache)
        except RuntimeStageError:  # lists older than the mirror (a point release moved a version)
            _apt_update(arch, force=True)
            return _debs(packages, arch, cache)


def _debs(packages: Sequence[str], arch: str, cache: Path) -> list[dict[str, str]]:
    closure = dependency_closure(packages, arch)
    versions = _candidates(closure, arch)
    result = []
    with locked(cache / ".lock"):
        index_file = cache / "index.json"
        index: dict[str, dict[str, str]] = json.loads(index_file.read_text()) if index_file.exists() else {}
        wanted = [n for n in closure if not _cached_deb(cache, index.get(f"{n}={versions[n]}"))]
        if wanted:
            with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
                wanted_versions = [f"{n}={versions[n]}" for n in wanted]
                _run(["apt-get", "download", "-q", *apt_options(arch), *wanted_versions],
                     "download packages", cwd=Path(tmp))
                for deb in sorted(Path(tmp).glob("*.deb")):
                    fields = _run(["dpkg-deb", "--show", "--showformat=${Package}\\t${Version}", str(deb)],
                                  "read package fields").split("\t")
                    os.replace(deb, cache / deb.name)
                    digest = sha256_file(cache / deb.name)
                    index[f"{fields[0]}={fields[1]}"] = {"file": deb.name, "sha256": digest}
            _prune_superseded(cache, index, versions)
            index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for name in closure:
            entry = index.get(f"{name}={versions[name]}")
            if not _cached_deb(cache, entry):
                raise RuntimeStageError(f"apt-get download did not yield {name}={versions[name]}")
            assert entry is not None
            result.append({"package": name, "version": versions[name], "path": str(cache / entry["file"]),
                           "file": entry["file"], "sha256": entry["sha256"]})
    return result


def _prune_superseded(cache: Path, index: dict[str, dict[str, str]], versions: Mapping[str, str]) -> None:
    """Drop from ``index`` and ``cache`` every .deb of a package in ``versions`` at another version
    than its candidate there (this architecture's lists no longer offer it), and the archives
    (:func:`debs_plan`) that packed one. Called with the cache's lock held."""
    stale = {}
    for key, entry in index.items():
        package, version = key.split("=", 1)
        if package in versions and version != versions[package]:
            stale[key] = entry
    if not stale:
        return
    files = {entry["file"] for entry in stale.values()}
    for archive in (cache / "archives").glob("debs-*.tar"):
        with tarfile.open(archive) as tar:
            packed = set(tar.getnames())
        if packed & files:
            archive.unlink()
    for key, entry in stale.items():
        (cache / entry["file"]).unlink(missing_ok=True)
        del index[key]


def _cached_deb(cache: Path, entry: Mapping[str, str] | None) -> bool:
    return bool(entry) and (cache / entry["file"]).is_file() and (  # type: ignore[index]
        sha256_file(cache / entry["file"]) == entry["sha256"]  # type: ignore[index]
    )


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


def release_files(arch: str, source: str = UPSTREAM) -> list[dict[str, Any]]:
    """containerd's release archive and runc for ``arch``, fetched and verified on the controller."""
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
    ``staging_dir``, check each file's sha256 again, install them in one apt-get call and
    remove what was shipped. Returns ``{archive, file, commands}``.

    The tar is named by its members' sha256s and kept in ``archives/`` beside the .deb files
    (``<cache>/artifacts/debs/<arch>/archives/``), so the next node lacking the same packages
    reuses it, until one of them is superseded (:func:`_prune_superseded`).
    """
    if not debs:
        raise RuntimeStageError("no packages to ship")
    sums = "\n".join(f"{d['sha256']}  {d['file']}" for d in debs)
    name = f"debs-{hashlib.sha256(sums.encode()).hexdigest()[:16]}.tar"
    cache = Path(debs[0]["path"]).parent
    archive = cache / "archives" / name
    with locked(cache / ".lock"):  # not while _prune_superseded removes files
        if not archive.is_file():
            _pack(debs, archive)
    q = shlex.quote
    staged = " ".join(q(f"{staging_dir}/{d['file']}") for d in debs)
    commands = [
        f"cd {q(staging_dir)} && tar -xf {q(name)} --no-same-owner"
        f" && printf '%s\\n' {q(sums)} | sha256sum --check --strict --quiet",
        f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {staged}",
        f"rm -f {q(f'{staging_dir}/{name}')} {staged}",
    ]
    return {"archive": str(archive), "file": name, "commands": commands}


def _pack(debs: Sequence[Mapping[str, Any]], archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=archive.parent, prefix=".pack-", delete=False) as tmp:
        try:
            with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for deb in debs:
                    tar.add(str(deb["path"]), arcname=str(deb["file"]), filter=_root_owned)
            tmp.close()
            os.replace(tmp.name, archive)  # whole or absent
        except BaseException:
            os.unlink(tmp.name)
            raise


def _root_owned(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    member.mode = 0o644
    return member


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
