"""Debian 12 and 13 in one fleet, without hosts: what `lab up --os` accepts, the Wasm engine the
lab's inventory gives each release, where a host's crun comes from, one lab image per release,
and `status`'s table."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml

import edge_provision.lab.inventory_writer as inv
from edge_provision.artifacts.debian import RELEASES
from edge_provision.lab import Lab, LabError, dockerd, image
from edge_provision.lab.options import parse_releases
from edge_provision.role_files import role_defaults
from edge_provision.stages.runtime.controller import RuntimeStageError, debs, distro_crun_packages
from edge_provision.status import render

EDGE = role_defaults("edge")


def test_releases_one_for_all_or_one_per_host() -> None:
    assert parse_releases(None, 2) == ["debian-12", "debian-12"]
    assert parse_releases(["debian-13"], 3) == ["debian-13"] * 3
    assert parse_releases(["", "debian-13"], 2) == ["debian-12", "debian-13"]
    with pytest.raises(LabError, match="--os lists 2 values for 3 hosts"):
        parse_releases(["debian-12", "debian-13"], 3)
    with pytest.raises(LabError, match="unknown --os debian-11; choose from: debian-12, debian-13"):
        parse_releases(["debian-11"], 1)


def test_an_unknown_release_fails_before_docker_and_writes_nothing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dockerd, "in_use", contextlib.nullcontext)
    monkeypatch.setattr(dockerd, "ensure_running", lambda: pytest.fail("docker was asked for"))
    with pytest.raises(LabError, match="unknown --os ubuntu-24"):
        Lab(tmp_path / "lab").up(1, releases=["ubuntu-24"])
    assert not (tmp_path / "lab").exists()


def test_the_lab_inventory_gives_each_release_its_wasm_engine(tmp_path: Path) -> None:
    hosts = [inv.LabHost("lab-1", "10.0.0.2", 22, inv.CONTROL_PLANE, "amd64", "container"),
             inv.LabHost("lab-2", "10.0.0.3", 22, inv.EDGE, "amd64", "container", release="debian-13")]
    doc = yaml.safe_load(inv.render_hosts_yml(tmp_path, hosts))
    assert doc["all"]["vars"]["edge_wasm_engine"] == "wasmtime"
    assert "edge_wasm_engine" not in doc["all"]["children"]["control_plane"]["hosts"]["lab-1"]
    assert doc["all"]["children"]["edge"]["hosts"]["lab-2"]["edge_wasm_engine"] == "wasmedge"
    assert set(inv.LAB_WASM_ENGINES) == set(RELEASES)


def test_debian_13_brings_its_own_crun_with_wasmedge_only() -> None:
    table = EDGE["edge_wasm_distro_packages"]
    assert distro_crun_packages("wasmedge", "debian-13", table) == ["crun", "libwasmedge0"]
    assert distro_crun_packages("wasmtime", "debian-13", table) == []  # built on the controller
    assert distro_crun_packages("wasmedge", "debian-12", table) == []  # the release tarball build
    assert set(table) <= set(RELEASES)


def test_packages_of_an_unsupported_release_are_refused_before_apt() -> None:
    with pytest.raises(RuntimeStageError, match="unsupported OS release 'debian-11'"):
        debs(["containerd"], "amd64", "debian-11")


def test_one_lab_image_per_release() -> None:
    assert image.image_key("bookworm", ["deb x"]) != image.image_key("trixie", ["deb x"])


def test_status_table_columns_fit_their_widest_cell() -> None:
    row = {"name": "lab-3", "ready": True, "os": "Debian GNU/Linux 13 (trixie)", "kubelet": "v1.20.2",
           "container_runtime": "containerd://1.7.24~ds1", "crun": "1.21 +WASM:wasmedge",
           "wasm_engine": "wasmedge", "labels": {"edge-provision.io/lab": "true"}, "workloads": []}
    short = {**row, "name": "lab-1", "os": "Debian GNU/Linux 12 (bookworm)", "crun": "1.8.1 +WASM:wasmtime"}
    lines = render([row, short]).splitlines()
    assert lines[0].split() == ["NODE", "READY", "OS", "KUBELET", "RUNTIME", "CRUN", "WASM", "LABELS",
                                "WORKLOADS"]
    # every column starts at the same offset on every line
    start = lines[0].index("KUBELET")
    assert all(line[start:].startswith("v1.20.2") for line in lines[1:]), lines
    assert "Debian GNU/Linux 13 (trixie)" in lines[1]
