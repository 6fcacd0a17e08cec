"""Verify of scenario default: the lab tier's own checks (tests/lab), run on the scenario's hosts.

The check functions are imported from tests/lab, not copied: a LabFleet over the inventory
the lab wrote into Molecule's inventory directory stands in for the lab tier's fixture.
Runtime checks run when the scenario converged the runtime stage (EDGE_MOLECULE_STAGES).
Scenarios cluster and containers run these checks too, containers on container hosts, which
share the machine's kernel: what only a VM has of its own is checked on VMs.
"""

from __future__ import annotations

import os

import pytest

from edge_provision.lab import Lab
from tests.lab import test_host_prep as host_prep
from tests.lab import test_runtime as runtime
from tests.lab.conftest import LabFleet
from tests.molecule.scenario import Scenario

SCENARIO = Scenario.current()
INVENTORY = SCENARIO.inventory
STAGES = os.environ.get("EDGE_MOLECULE_STAGES", "host_prep,runtime").split(",")
LAB = Lab(INVENTORY, backend=SCENARIO.backend)
HOSTS = LAB.hosts()
NAMES = [h.name for h in HOSTS]
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


@pytest.fixture(scope="module")
def fleet() -> LabFleet:
    return LabFleet(lab=LAB, inventory=INVENTORY, hosts=HOSTS)


def test_every_platform_is_up() -> None:
    assert NAMES == ["lab-1", "lab-2"], NAMES


@pytest.mark.parametrize("name", NAMES)
def test_machine_is_its_platforms_architecture(fleet: LabFleet, name: str) -> None:
    assert fleet.sh(name, "uname -m").strip() == UNAME[SCENARIO.arch(name)]


@pytest.mark.parametrize("name", NAMES)
def test_kernel_modules_listed_and_present(fleet: LabFleet, name: str) -> None:
    host_prep.test_kernel_modules_listed_and_present(fleet, None, name)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_every_sysctl_is_live(fleet: LabFleet, name: str) -> None:
    host_prep.test_every_sysctl_is_live(fleet, None, name)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_etc_hosts_block_lists_the_fleet(fleet: LabFleet, name: str) -> None:
    host_prep.test_etc_hosts_block_lists_the_fleet(fleet, None, name)  # type: ignore[arg-type]


if SCENARIO.backend == "vm":

    @pytest.mark.parametrize("name", NAMES)
    def test_no_swap_active(fleet: LabFleet, name: str) -> None:
        """A VM has its own swap (unlike a container host): none may be active after host_prep."""
        assert fleet.sh(name, "tail -n +2 /proc/swaps").strip() == ""


if "runtime" in STAGES:

    @pytest.mark.parametrize("name", NAMES)
    def test_containerd_runs_with_the_cri_plugin(fleet: LabFleet, name: str) -> None:
        runtime.test_containerd_runs_with_the_cri_plugin(fleet, None, name)  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", NAMES)
    def test_crun_has_the_wasm_engine(fleet: LabFleet, name: str) -> None:
        runtime.test_crun_has_the_wasm_engine(fleet, None, name)  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", NAMES)
    def test_images_imported(fleet: LabFleet, name: str) -> None:
        runtime.test_images_imported(fleet, None, name)  # type: ignore[arg-type]

    # On every VM: the amd64 one and the arm64 one (crun cross-built, arm64 images and .debs).
    @pytest.mark.parametrize("name", NAMES)
    def test_wasm_image_runs_with_crun_wasm(fleet: LabFleet, name: str) -> None:
        runtime.test_wasm_image_runs_with_crun_wasm(fleet, None, name)  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", NAMES)
    def test_wasm_image_fails_with_runc(fleet: LabFleet, name: str) -> None:
        runtime.test_wasm_image_fails_with_runc(fleet, None, name)  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", NAMES)
    def test_busybox_runs_with_runc(fleet: LabFleet, name: str) -> None:
        runtime.test_busybox_runs_with_runc(fleet, None, name)  # type: ignore[arg-type]
