"""containerd_install_from: release -- pins, the rendered node commands (run for real on a
scratch root), the unit file, and a damaged archive stopping on the controller."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from edge_provision.artifacts import fetch
from edge_provision.role_files import render_template, role_argument_spec, role_defaults
from edge_provision.stages.runtime import controller as runtime_controller

VERSIONS = yaml.safe_load(fetch.VERSIONS_FILE.read_text())
C = role_defaults("containerd")


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_pins_are_the_release_files_of_versions_yml(arch: str) -> None:
    containerd = fetch.pinned("containerd_release", arch)
    v = VERSIONS["containerd_release"]["version"]
    assert v.startswith(("1.6.", "1.7."))  # config schema v2, what containerd_config writes for 1.x
    assert containerd.url == (f"https://github.com/containerd/containerd/releases/download/v{v}/"
                              f"containerd-{v}-linux-{arch}.tar.gz")
    assert containerd.sha256 == VERSIONS["containerd_release"]["downloads"][arch]["sha256"]
    runc = fetch.pinned("runc_release", arch)
    r = VERSIONS["runc_release"]["version"]
    assert runc.url == f"https://github.com/opencontainers/runc/releases/download/v{r}/runc.{arch}"
    assert runc.sha256 == VERSIONS["runc_release"]["downloads"][arch]["sha256"]


def test_release_is_a_choice_of_the_role() -> None:
    spec = role_argument_spec("containerd")["options"]
    assert spec["containerd_install_from"]["choices"] == ["controller", "apt", "release"]


def _files(staging: Path, containerd_tar: bytes, runc: bytes) -> list[dict[str, str]]:
    found = []
    for name, data in (("containerd_release", containerd_tar), ("runc_release", runc)):
        d = fetch.pinned(name, "amd64")
        (staging / d.file).write_bytes(data)
        found.append({"name": name, "file": d.file, "sha256": fetch.sha256_file(staging / d.file)})
    return found


def _containerd_tarball() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("bin/containerd", "bin/ctr", "bin/containerd-shim-runc-v2"):
            data = b"#!/bin/sh\necho " + name.encode() + b"\n"
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_rendered_commands_check_the_pins_then_install(tmp_path: Path) -> None:
    """With the pinned files, the first command checks exactly the versions.yml checksums."""
    staging = "/var/cache/edge-provision/release"
    found = [{"name": n, "file": fetch.pinned(n, "amd64").file, "sha256": fetch.pinned(n, "amd64").sha256}
             for n in runtime_controller.RELEASE_COMPONENTS]
    plan = runtime_controller.release_plan(found, staging_dir=staging, prefix="/usr/local", stamp_file=C["containerd_release_stamp_file"])
    stamp = "\n".join(f"{f['sha256']}  {f['file']}" for f in found)
    assert plan["stamp"] == stamp
    assert plan["commands"] == [
        f"cd {staging} && printf '%s\\n' '{stamp}' | sha256sum --check --strict",
        f"tar -xzf {staging}/containerd-1.7.22-linux-amd64.tar.gz -C /usr/local --no-same-owner bin",
        f"install -D -m 0755 {staging}/runc.amd64 /usr/local/sbin/runc",
        f"install -d -m 0755 /var/lib/edge-provision && printf '%s\\n' '{stamp}' > {C['containerd_release_stamp_file']}",
        f"rm -f {staging}/containerd-1.7.22-linux-amd64.tar.gz {staging}/runc.amd64",
    ]


def _run_all(commands: list[str]) -> subprocess.CompletedProcess[str] | None:
    for command in commands:
        result = subprocess.run(["sh", "-c", command], text=True, capture_output=True, check=False)
        if result.returncode != 0:
            return result
    return None


def test_rendered_commands_install_on_a_scratch_root(tmp_path: Path) -> None:
    staging, prefix = tmp_path / "staging", tmp_path / "root" / "usr" / "local"
    staging.mkdir()
    prefix.mkdir(parents=True)
    found = _files(staging, _containerd_tarball(), b"runc binary")
    plan = runtime_controller.release_plan(found, staging_dir=str(staging), prefix=str(prefix),
                           stamp_file=str(tmp_path / "root" / "var" / "lib" / "stamp"))
    assert _run_all(plan["commands"]) is None
    assert sorted(p.name for p in (prefix / "bin").iterdir()) == ["containerd", "containerd-shim-runc-v2", "ctr"]
    assert (prefix / "sbin" / "runc").read_bytes() == b"runc binary"
    assert (prefix / "sbin" / "runc").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "root" / "var" / "lib" / "stamp").read_text() == plan["stamp"] + "\n"
    assert list(staging.iterdir()) == []


def test_a_damaged_copy_on_the_node_stops_before_anything_is_installed(tmp_path: Path) -> None:
    staging, prefix = tmp_path / "staging", tmp_path / "prefix"
    staging.mkdir()
    prefix.mkdir()
    found = _files(staging, _containerd_tarball(), b"runc binary")
    plan = runtime_controller.release_plan(found, staging_dir=str(staging), prefix=str(prefix), stamp_file=str(tmp_path / "stamp"))
    (staging / "runc.amd64").write_bytes(b"runc binary, damaged in transit")
    failed = _run_all(plan["commands"])
    assert failed is not None and "runc.amd64: FAILED" in failed.stdout
    assert list(prefix.iterdir()) == [] and not (tmp_path / "stamp").exists()


def test_unit_file_runs_the_release_binary() -> None:
    release = {"files": [{"name": "containerd_release", "version": "1.7.22"}]}
    unit = render_template("containerd", "containerd.service.j2",
                           {**C, "containerd_artifacts": {"release": release}})
    assert "ExecStart=/usr/local/bin/containerd\n" in unit
    assert "Description=containerd container runtime 1.7.22 (release archive)" in unit
    assert "Type=notify" in unit and "Delegate=yes" in unit and "KillMode=process" in unit


def test_a_mismatching_archive_stops_on_the_controller(tmp_path: Path) -> None:
    """What the containerd role's preflight runs: an artifact source whose containerd archive
    differs from the pin fails naming the file, expected and actual sha256, and keeps nothing."""
    source, cache = tmp_path / "artifacts", tmp_path / "cache"
    source.mkdir()
    archive = fetch.pinned("containerd_release", "amd64")
    (source / archive.file).write_bytes(_containerd_tarball())
    result = subprocess.run(
        [sys.executable, "-m", "edge_provision.stages.runtime", "--arch", "amd64", "--source", str(source),
         "--release", C["containerd_release_staging_dir"], C["containerd_release_prefix"],
         C["containerd_release_stamp_file"]],
        text=True, capture_output=True, env={**os.environ, "EDGE_PROVISION_CACHE": str(cache)}, check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert (f"sha256 mismatch for {archive.file} from {source / archive.file}: expected {archive.sha256}, "
            f"actual {fetch.sha256_file(source / archive.file)}") in result.stderr
    assert "cannot fetch runc.amd64" in result.stderr  # every missing file named at once
    assert not [p for p in cache.rglob("*") if p.is_file()]
