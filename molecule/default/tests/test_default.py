"""Verify of scenario default: the checks the lab tier runs (tests/checks), on the scenario's hosts.

Each check takes a testinfra host over the inventory the lab wrote into Molecule's inventory
directory (tests/molecule/scenario.py). Runtime checks run when the scenario converged the
runtime stage (EDGE_MOLECULE_STAGES). Scenarios cluster and containers run this module too (their
molecule.yml names it in the verifier's additional_files_or_dirs), containers on container hosts,
which share the machine's kernel: what only a VM has of its own is checked on VMs.
"""

from __future__ import annotations

import os

import pytest

from edge_provision.artifacts.debian import RELEASES
from tests.checks import host_prep, runtime
from tests.molecule.scenario import Scenario

SCENARIO = Scenario.current()
STAGES = os.environ.get("EDGE_MOLECULE_STAGES", "host_prep,runtime").split(",")
HOSTS = SCENARIO.hosts()
NAMES = [h.name for h in HOSTS]
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


def test_every_platform_is_up() -> None:
    assert NAMES == ["lab-1", "lab-2"], NAMES


@pytest.mark.parametrize("name", NAMES)
def test_machine_is_its_platforms_architecture(name: str) -> None:
    assert SCENARIO.host(name).check_output("uname -m").strip() == UNAME[SCENARIO.arch(name)]


@pytest.mark.parametrize("name", NAMES)
def test_machine_runs_its_platforms_release(name: str) -> None:
    codename = SCENARIO.host(name).check_output(". /etc/os-release && echo $VERSION_CODENAME").strip()
    assert codename == RELEASES[SCENARIO.release(name)]


@pytest.mark.parametrize("name", NAMES)
def test_kernel_modules_listed_and_present(name: str) -> None:
    host_prep.kernel_modules_listed_and_present(SCENARIO.host(name))


@pytest.mark.parametrize("name", NAMES)
def test_every_sysctl_is_live(name: str) -> None:
    host_prep.every_sysctl_is_live(SCENARIO.host(name))


@pytest.mark.parametrize("name", NAMES)
def test_etc_hosts_block_lists_the_fleet(name: str) -> None:
    host_prep.etc_hosts_block_lists_the_fleet(SCENARIO.host(name), {h.name: h.cluster_address for h in HOSTS})


if SCENARIO.backend == "vm":

    @pytest.mark.parametrize("name", NAMES)
    def test_no_swap_active(name: str) -> None:
        """A VM has its own swap (unlike a container host): none may be active after host_prep."""
        host_prep.no_swap_active(SCENARIO.host(name))


if "runtime" in STAGES:

    @pytest.mark.parametrize("name", NAMES)
    def test_containerd_runs_with_the_cri_plugin(name: str) -> None:
        runtime.containerd_runs_with_the_cri_plugin(SCENARIO.host(name))

    @pytest.mark.parametrize("name", NAMES)
    def test_crun_has_the_wasm_engine(name: str) -> None:
        runtime.crun_has_the_wasm_engine(SCENARIO.host(name), engine=SCENARIO.wasm_engine(name))

    @pytest.mark.parametrize("name", NAMES)
    def test_images_imported(name: str) -> None:
        runtime.images_imported(SCENARIO.host(name))

    # On every host: on VMs the amd64 one and the arm64 one (crun cross-built, arm64 images and .debs).
    @pytest.mark.parametrize("name", NAMES)
    def test_wasm_image_runs_with_crun_wasm(name: str) -> None:
        runtime.wasm_image_runs_with_crun_wasm(SCENARIO.host(name))

    @pytest.mark.parametrize("name", NAMES)
    def test_wasm_image_fails_with_runc(name: str) -> None:
        runtime.wasm_image_fails_with_runc(SCENARIO.host(name))

    @pytest.mark.parametrize("name", NAMES)
    def test_busybox_runs_with_runc(name: str) -> None:
        runtime.busybox_runs_with_runc(SCENARIO.host(name))
