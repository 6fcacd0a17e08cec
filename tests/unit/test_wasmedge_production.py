"""The WasmEdge production path by contract: pins, the rendered build, and failing before any
node changes when the artifact source lacks a file (WasmEdge is carried by no registry here)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from edge_provision.artifacts import fetch
from edge_provision.artifacts.builders import crun_wasmedge as cw
from edge_provision.stages.runtime import controller as runtime_controller

VERSIONS = yaml.safe_load(fetch.VERSIONS_FILE.read_text())
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_pins_are_the_release_tarballs_of_versions_yml(arch: str) -> None:
    pins = cw.load_pins(arch)
    v = VERSIONS["wasmedge"]["version"]
    assert pins.wasmedge.url == (f"https://github.com/WasmEdge/WasmEdge/releases/download/{v}/"
                                 f"WasmEdge-{v}-manylinux2014_{MACHINE[arch]}.tar.gz")
    assert pins.wasmedge.sha256 == VERSIONS["wasmedge"]["downloads"][arch]["sha256"]
    c = VERSIONS["crun_release"]["version"]
    assert pins.crun.url == f"https://github.com/containers/crun/releases/download/{c}/crun-{c}.tar.xz"
    assert pins.crun.sha256 == VERSIONS["crun_release"]["downloads"]["any"]["sha256"]
    assert pins.archive_root == f"WasmEdge-{v}-Linux"


def test_crun_release_source_is_the_crun_the_lab_builds() -> None:
    assert VERSIONS["crun_release"]["version"] == VERSIONS["crun"]["version"]


def test_build_plan_renders_the_guide_steps(tmp_path: Path) -> None:
    pins = cw.load_pins("amd64")
    tarball, source = tmp_path / "we.tar.gz", tmp_path / "crun.tar.xz"
    plan = cw.build_plan(pins, tmp_path, wasmedge_tarball=tarball, crun_tarball=source, jobs=3)
    prefix, lib = tmp_path / "wasmedge", tmp_path / "wasmedge" / "lib64"
    crun_dir = tmp_path / "crun-1.8.1"
    assert [(s.argv, s.cwd) for s in plan] == [
        (("tar", "-xzf", str(tarball), "-C", str(prefix), "--strip-components=1",
          "WasmEdge-0.13.5-Linux/include", "WasmEdge-0.13.5-Linux/lib64"), tmp_path),
        (("ldconfig", "-n", str(lib)), tmp_path),
        (("tar", "-xJf", str(source), "-C", str(tmp_path)), tmp_path),
        (("./configure", "--with-wasmedge", f"CPPFLAGS=-I{prefix}/include", f"LDFLAGS=-L{lib}"), crun_dir),
        (("make", "-j3", "-C", "libocispec"), crun_dir),
        (("make", "git-version.h"), crun_dir),
        (("make", "-j3", "crun"), crun_dir),
        (("strip", "--strip-unneeded", "crun"), crun_dir),
        (("env", f"LD_LIBRARY_PATH={lib}", "./crun", "--version"), crun_dir),
    ]


def _fake_wasmedge_tarball(path: Path) -> None:
    """A tarball with the release's layout (bin/, include/, lib64/ with the SONAME symlink)."""
    root = "WasmEdge-0.13.5-Linux"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((f"{root}/bin/wasmedge", b"#!/bin/sh\n"),
                           (f"{root}/include/wasmedge/wasmedge.h", b"/* api */\n"),
                           (f"{root}/lib64/libwasmedge.so.0.0.3", b"not really ELF\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(f"{root}/lib64/libwasmedge.so.0")
        link.type, link.linkname = tarfile.SYMTYPE, "libwasmedge.so.0.0.3"
        tar.addfile(link)


def test_extraction_steps_take_include_and_lib64_only(tmp_path: Path) -> None:
    """The first rendered steps, run for real on a tarball of the release's layout."""
    tarball = tmp_path / "we.tar.gz"
    _fake_wasmedge_tarball(tarball)
    work = tmp_path / "work"
    (work / "wasmedge").mkdir(parents=True)
    plan = cw.build_plan(cw.load_pins("amd64"), work, wasmedge_tarball=tarball, crun_tarball=tmp_path / "x")
    subprocess.run(plan[0].argv, cwd=plan[0].cwd, check=True)
    prefix = work / "wasmedge"
    assert sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*")) == [
        "include", "include/wasmedge", "include/wasmedge/wasmedge.h",
        "lib64", "lib64/libwasmedge.so.0", "lib64/libwasmedge.so.0.0.3",
    ]


def test_wasmedge_is_an_engine_now() -> None:
    runtime_controller.check_engine("wasmedge", False)
    assert runtime_controller.ENGINE_DOWNLOADS["wasmedge"] == ("crun_release", "wasmedge")


def _controller(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_PROVISION_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "edge_provision.stages.runtime", *args],
                          text=True, capture_output=True, env=env, check=False)


@pytest.mark.parametrize("flag", ["--engine-downloads", "--engine"])
def test_a_source_without_the_tarballs_fails_naming_them_and_builds_nothing(tmp_path: Path, flag: str) -> None:
    """What the roles' preflight runs on the controller (and the pyinfra deploy calls while it
    prepares): an artifact source lacking the files fails, naming each, with nothing fetched
    or built."""
    source, cache = tmp_path / "artifacts", tmp_path / "cache"
    source.mkdir()
    result = _controller(["--arch", "amd64", flag, "wasmedge", "--source", str(source)], cache)
    assert result.returncode == 1
    assert result.stdout == ""
    for d in (fetch.pinned("wasmedge", "amd64"), fetch.pinned("crun_release", "amd64")):
        assert f"cannot fetch {d.file} from {source / d.file}: no such file" in result.stderr
    assert not [p for p in cache.rglob("*") if p.is_file()], "nothing fetched or built"


def test_a_tampered_tarball_in_the_source_is_named_with_both_checksums(tmp_path: Path) -> None:
    source = tmp_path / "artifacts"
    source.mkdir()
    wasmedge = fetch.pinned("wasmedge", "amd64")
    tampered = source / wasmedge.file
    _fake_wasmedge_tarball(tampered)
    result = _controller(["--arch", "amd64", "--engine-downloads", "wasmedge", "--source", str(source)],
                         tmp_path / "cache")
    assert result.returncode == 1
    assert (f"sha256 mismatch for {wasmedge.file} from {tampered}: expected {wasmedge.sha256}, "
            f"actual {fetch.sha256_file(tampered)}") in result.stderr


def test_wasmtime_needs_no_download(tmp_path: Path) -> None:
    result = _controller(["--arch", "amd64", "--engine-downloads", "wasmtime", "--source", str(tmp_path)],
                         tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["engine_downloads"] == []


def test_cached_build_needs_every_listed_file_intact(tmp_path: Path) -> None:
    (tmp_path / "crun").write_bytes(b"crun")
    (tmp_path / "libwasmedge.so.0").write_bytes(b"lib")
    files = {n: {"sha256": fetch.sha256_file(tmp_path / n)} for n in ("crun", "libwasmedge.so.0")}
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    assert cw.cached_build(tmp_path) is not None
    (tmp_path / "libwasmedge.so.0").write_bytes(b"changed")
    assert cw.cached_build(tmp_path) is None
