"""Stage runtime for pyinfra: the same work as roles/containerd and roles/wasm_runtime, from
the same defaults, computed by the same Python (edge_provision.stages.runtime)."""

from __future__ import annotations

from functools import cache
from io import StringIO
from typing import Any

from pyinfra.api.deploy import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.context import host
from pyinfra.operations import apt, files, systemd

from edge_provision.pyinfra_engine.deploys.common import fleet, host_release
from edge_provision.pyinfra_engine.operations import runtime as ops
from edge_provision.role_files import render_template, role_vars
from edge_provision.stages.runtime import controller as runtime_controller


# Controller-side artifacts, once per argument set (every host of an architecture shares them).
@cache
def _debs(packages: tuple[str, ...], arch: str, release: str) -> list[dict[str, str]]:
    return runtime_controller.debs(packages, arch, release)


@cache
def _images(names: tuple[str, ...], arch: str) -> list[dict[str, Any]]:
    return runtime_controller.images(names, arch)


@cache
def _crun(arch: str, engine: str, source: str) -> dict[str, Any]:
    return runtime_controller.wasm_crun(arch, engine, source)


@cache
def _engine_downloads(engine: str, arch: str, source: str) -> list[dict[str, Any]]:
    return runtime_controller.engine_downloads(engine, arch, source)


@cache
def _release(
    arch: str, source: str, build: bool, staging_dir: str, prefix: str, stamp_file: str
) -> dict[str, Any]:
    found = runtime_controller.release_files(arch, source, build=build)
    plan = runtime_controller.release_plan(
        found, staging_dir=staging_dir, prefix=prefix, stamp_file=stamp_file
    )
    return {"files": found, **plan}


def _controller(what: str, fetch: Any, *args: Any) -> Any:
    try:
        return fetch(*args)
    except Exception as exc:  # the builders' own errors name their step and output
        raise DeployError(f"host {host.name}: {what}: {exc}") from exc


def _packages(v: dict[str, Any], packages: list[str], arch: str, release: str, name: str) -> None:
    """Debian packages of the host's ``release`` from the node's apt sources, or shipped from the
    controller (also for a release install of containerd, whose neighbours still come from Debian)."""
    if v["containerd_install_from"] == "apt":
        apt.packages(name=name, packages=packages, no_recommends=True, update=True, cache_time=86400)
    else:
        ops.debs_installed(
            name=name, debs=_controller("packages", _debs, tuple(packages), arch, release),
            staging_dir=v["containerd_deb_staging_dir"],
        )


def _node() -> tuple[str, list[str]]:
    """The host's OS release and the packages of its own crun with its Wasm engine ([] when crun
    is built on the controller), as the containerd role's preflight finds them."""
    release = host_release()
    distro = runtime_controller.distro_crun_packages(
        fleet("edge_wasm_engine"), release, fleet("edge_wasm_distro_packages"))
    return release, distro


@deploy("containerd")
def containerd() -> None:
    v = role_vars("containerd", host.data.dict())
    arch, source = fleet("edge_arch"), fleet("edge_artifact_source")
    install_from = v["containerd_install_from"]
    if install_from not in ("controller", "apt", "release"):
        raise DeployError(f"host {host.name}: containerd_install_from must be controller, apt or release, "
                          f"not {install_from!r}")
    release_of_os, distro = _node()
    # Before any operation: what the Wasm engine's build and a release install take from the
    # artifact source, fetched and verified, so a missing or damaged file stops the run here.
    if not distro:
        _controller("Wasm engine downloads", _engine_downloads, fleet("edge_wasm_engine"), arch, source)
    release = None
    if install_from == "release":
        release = _controller("release files", _release, arch, source, bool(v["containerd_release_build"]),
                              v["containerd_release_staging_dir"],
                              v["containerd_release_prefix"], v["containerd_release_stamp_file"])
    images = _controller("images", _images, tuple(v["containerd_images"]), arch)
    sandbox = v["containerd_sandbox_image"]
    if sandbox is None or sandbox == "":
        sandbox = _controller("pause image", runtime_controller.sandbox_image, "", arch)

    ops.systemd_pid1_required(name="Check that systemd runs the host")
    if release is None:
        _packages(v, v["containerd_packages"], arch, release_of_os, "Install containerd")
    else:
        ops.release_installed(
            name="Check the sha256 of the release files again, unpack and install them",
            release=release, staging_dir=v["containerd_release_staging_dir"],
        )
        unit = files.put(
            name="Write containerd's systemd unit",
            src=StringIO(render_template("containerd", "containerd.service.j2",
                                         {**v, "containerd_artifacts": {"release": release}})),
            dest=v["containerd_release_unit_file"], user="root", group="root", mode="644",
        )
        systemd.daemon_reload(name="Reload systemd's units", _if=unit.did_change)
        systemd.service(name="Restart containerd on a new unit", service="containerd", restarted=True,
                        _if=unit.did_change)
    systemd.service(name="Run containerd now and at boot", service="containerd", running=True, enabled=True)
    ops.containerd_configured(
        name="Write the config with the Wasm handler, validated by containerd first",
        config_file=v["containerd_config_file"],
        settings={
            "handler": fleet("edge_wasm_handler"),
            "binary": fleet("edge_wasm_crun_path"),
            "systemd_cgroup": v["containerd_systemd_cgroup"],
            "sandbox_image": sandbox,
            "restrict_oom_score_adj": v["containerd_restrict_oom_score_adj"],
            "default_runtime": v["containerd_default_runtime"],
            "cni_bin_dir": v["containerd_cni_bin_dir"],
        },
    )
    ops.cri_plugin_running(name="Check that the CRI plugin runs")
    ops.images_imported(
        name="Import missing images", images=images,
        namespace=v["containerd_namespace"], image_dir=v["containerd_image_dir"],
    )


@deploy("Wasm runtime")
def wasm_runtime() -> None:
    v = role_vars("wasm_runtime", host.data.dict())
    c = role_vars("containerd", host.data.dict())
    arch, engine, source = fleet("edge_arch"), fleet("edge_wasm_engine"), fleet("edge_artifact_source")
    try:
        runtime_controller.check_engine(engine, bool(v["wasm_runtime_build_on_node"]))
    except runtime_controller.RuntimeStageError as exc:
        raise DeployError(f"host {host.name}: {exc}") from exc
    release, distro = _node()
    images = _controller("images", _images, tuple(v["wasm_runtime_images"]), arch)
    if distro:
        _packages(c, distro, arch, release, "Install the distribution's crun with the Wasm engine")
        files.link(
            name="Point the Wasm handler's crun at the distribution's", path=fleet("edge_wasm_crun_path"),
            target=fleet("edge_wasm_distro_crun"), force=True,
        )
    else:
        crun = _controller("crun", _crun, arch, engine, source)
        _packages(c, v["wasm_runtime_packages"], arch, release, "Install the libraries crun needs")
        files.put(
            name="Install crun with the Wasm engine", src=crun["crun"], dest=fleet("edge_wasm_crun_path"),
            user="root", group="root", mode="755",
        )
        library = f"{v['wasm_runtime_lib_dir']}/{crun['library']}"
        files.put(
            name="Install the engine library", src=crun["library_path"], dest=library,
            user="root", group="root", mode="644",
        )
        ops.loader_cache_has(name="Refresh the loader cache", path=library)
    ops.wasm_crun_verified(name="Verify crun", crun_path=fleet("edge_wasm_crun_path"), engine=engine)
    ops.images_imported(
        name="Import missing images", images=images,
        namespace=c["containerd_namespace"], image_dir=c["containerd_image_dir"],
    )
