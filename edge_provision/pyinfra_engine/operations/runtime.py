"""pyinfra operations of the runtime stage: read state with facts, yield only what changes it.

What a node lacks is computed by the same functions the Ansible roles call through
plugins/filter/runtime.py (edge_provision.stages.runtime).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra.api.exceptions import OperationError
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.operations import files

from edge_provision.pyinfra_engine.facts.common import CommandOutput
from edge_provision.pyinfra_engine.facts.runtime import ContainerdNode
from edge_provision.pyinfra_engine.operations.common import Commands, executing, pending
from edge_provision.stages.runtime import controller as runtime_controller


def _dpkg_query(packages: Sequence[str]) -> list[str]:
    return ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *packages]


@operation(is_idempotent=True)
def debs_installed(debs: Sequence[Mapping[str, Any]], staging_dir: str) -> Commands:
    """Ship the .deb files (runtime_controller.debs) of the packages the node lacks in one
    archive and install them (runtime_controller.debs_plan)."""
    output = host.get_fact(CommandOutput, argv=_dpkg_query([str(d["package"]) for d in debs]))
    missing = runtime_controller.debs_missing(debs, output)
    if not missing:
        host.noop("packages installed")
        return
    plan = runtime_controller.debs_plan(missing, staging_dir=staging_dir)
    yield f"install -d -m 755 {shlex.quote(staging_dir)}"
    yield from files.put._inner(src=plan["archive"], dest=f"{staging_dir}/{plan['file']}", mode="644")
    yield from plan["commands"]


@operation(is_idempotent=True)
def release_installed(release: Mapping[str, Any], staging_dir: str) -> Commands:
    """Ship the release files (runtime_controller.release_files) and run the commands of
    runtime_controller.release_plan -- sha256 checked again on the node, then unpacked and
    installed -- unless the node's stamp already names exactly these files."""
    installed = host.get_fact(CommandOutput, argv=["cat", str(release["stamp_file"])])
    if installed.rstrip("\n") == release["stamp"]:
        host.noop("release files installed")
        return
    yield f"install -d -m 755 {shlex.quote(staging_dir)}"
    for item in release["files"]:
        yield from files.put._inner(src=str(item["path"]), dest=f"{staging_dir}/{item['file']}", mode="644")
    yield from release["commands"]


@operation(is_idempotent=True)
def containerd_configured(config_file: str, settings: Mapping[str, Any]) -> Commands:
    """Write containerd's config with the Wasm handler when it differs, validated by
    containerd before it replaces the old file; restart containerd on a new config.

    A rejected config leaves the old file and the running containerd untouched, and the
    operation fails with containerd's error."""
    node = host.get_fact(ContainerdNode, config_file=config_file)
    if not node["version"]:
        yield from pending("containerd is not installed")
        return
    wanted = runtime_controller.containerd_config(
        node["config"], version=node["version"], systemd_pid1=node["systemd_pid1"],
        cap_sys_resource=node["cap_sys_resource"], **settings,
    )
    if node["config_exists"] and wanted == node["config"]:
        host.noop(f"{config_file} has the Wasm handler")
        return
    directory, name = str(Path(config_file).parent), Path(config_file).name
    candidate = f"{directory}/.{name}.edge-provision-new"
    yield f"install -d -m 755 {shlex.quote(directory)}"
    yield from files.put._inner(src=StringIO(wanted), dest=candidate, mode="644")
    q_candidate, q_config = shlex.quote(candidate), shlex.quote(config_file)
    yield (
        f"if ! out=$(containerd --config {q_candidate} config dump 2>&1 >/dev/null); then "
        f"rm -f {q_candidate}; "
        f'echo "containerd rejected the new {config_file} (kept the old one, containerd not restarted): '
        f'$out" >&2; exit 1; fi; '
        f"mv -f {q_candidate} {q_config} && systemctl restart containerd"
    )


@operation(is_idempotent=True)
def cri_plugin_running() -> Commands:
    """Fail unless containerd's CRI plugin loaded (it refuses a config it cannot use)."""
    if not executing():
        return
    output = host.get_fact(CommandOutput, argv=["ctr", "plugins", "ls"])
    for line in output.splitlines():
        words = line.split()
        if words[:2] == ["io.containerd.grpc.v1", "cri"]:
            if words[-1] == "ok":
                host.noop("CRI plugin ok")
                return
            raise OperationError(
                f"containerd's CRI plugin did not start ({words[-1]}); see journalctl -u containerd"
            )
    raise OperationError("containerd lists no CRI plugin (ctr plugins ls)")
    yield


@operation(is_idempotent=True)
def images_imported(images: Sequence[Mapping[str, Any]], namespace: str, image_dir: str) -> Commands:
    """Keep the image tarballs (runtime_controller.images) in image_dir and import into
    containerd each image whose reference is absent or has another digest."""
    yield from files.directory._inner(path=image_dir, mode="755")
    for image in images:
        dest = f"{image_dir}/{image['name']}.tar"
        yield from files.put._inner(src=str(image["path"]), dest=dest, mode="644")
    listed = host.get_fact(CommandOutput, argv=["ctr", "-n", namespace, "images", "ls"])
    missing = runtime_controller.images_missing(images, listed)
    if not missing:
        host.noop("images imported")
    for image in missing:
        tarball = shlex.quote(f"{image_dir}/{image['name']}.tar")
        yield f"ctr -n {shlex.quote(namespace)} images import {tarball}"


@operation(is_idempotent=True)
def loader_cache_has(path: str) -> Commands:
    """Run ldconfig unless the loader cache already maps a library to ``path``."""
    output = host.get_fact(CommandOutput, argv=["ldconfig", "-p"])
    if any(line.split(" => ")[-1].strip() == path for line in output.splitlines()):
        host.noop(f"{path} in the loader cache")
        return
    yield "ldconfig"


@operation(is_idempotent=True)
def wasm_crun_verified(crun_path: str, engine: str) -> Commands:
    """Fail unless ``crun --version`` lists +WASM:<engine> and every shared library resolves."""
    if not executing():
        return
    version = host.get_fact(CommandOutput, argv=[crun_path, "--version"])
    if f"+WASM:{engine}" not in version.split():
        raise OperationError(f"{crun_path} --version does not list +WASM:{engine}:\n{version}")
    ldd = host.get_fact(CommandOutput, argv=["ldd", crun_path])
    if "not found" in ldd or not ldd.strip():
        raise OperationError(f"{crun_path} lacks shared libraries:\n{ldd}")
    lines = version.splitlines()
    host.log(f"wasm runtime: {lines[0]} · {lines[-1]}")
    yield from ()


@operation(is_idempotent=True)
def systemd_pid1_required() -> Commands:
    """Fail unless systemd is PID 1: containerd runs as a systemd service."""
    node = host.get_fact(ContainerdNode, config_file="/dev/null")
    if not node["systemd_pid1"]:
        raise OperationError(
            f"host {host.name}: systemd is not PID 1; containerd is run as a systemd service (and "
            "cgroups are delegated through systemd), other init systems are not supported"
        )
    yield from ()
