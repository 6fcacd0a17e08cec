"""Pins and names that must agree across files."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

import yaml

from edge_provision.artifacts.debian import MACHINES, debian_arch
from edge_provision.role_files import role_defaults
from tests.conftest import ROOT


def test_wasmtime_test_dependency_matches_the_libwasmtime_pin() -> None:
    pins = yaml.safe_load((ROOT / "edge_provision" / "artifacts" / "versions.yml").read_text())
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert f"wasmtime=={pins['wasmtime']['version']}" in dev
    assert version("wasmtime") == pins["wasmtime"]["version"]


def test_debian_arch_names() -> None:
    assert debian_arch("x86_64") == "amd64"
    assert debian_arch("aarch64") == "arm64"
    assert debian_arch("riscv64") == "riscv64"


def test_the_controllers_architecture_names_are_the_preflights() -> None:
    """The artifacts layer reads no role: its table of machine names is host_prep's, copied."""
    names = role_defaults("host_prep")["host_prep_arch_names"]
    assert {arch: tuple(machines) for arch, machines in names.items()} == dict(MACHINES)
