"""What `lab up` accepts for container hosts before it starts anything: the machine's
architecture only (an empty ``--arch`` entry is the machine's, as for VMs: a Molecule scenario
whose platforms name no architecture passes one) and no memory sizes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from edge_provision.artifacts.debian import debian_arch
from edge_provision.lab import Lab, LabError, dockerd

OTHER_ARCH = "arm64" if debian_arch() == "amd64" else "amd64"


@pytest.fixture
def docker_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Docker engine is where `up` would go next: stop there with a known error."""

    def refuse() -> None:
        raise LabError("the Docker engine was asked for")

    monkeypatch.setattr(dockerd, "in_use", contextlib.nullcontext)
    monkeypatch.setattr(dockerd, "ensure_running", refuse)


@pytest.mark.parametrize("arches", [None, ["", ""], [debian_arch()], ["", debian_arch()]])
def test_the_machines_architecture_or_none_named_goes_on_to_docker(
        tmp_path: Path, docker_refused: None, arches: list[str] | None) -> None:
    with pytest.raises(LabError, match="Docker engine was asked for"):
        Lab(tmp_path / "lab").up(2, arches, ["", ""])


@pytest.mark.parametrize("arches", [[OTHER_ARCH], ["", OTHER_ARCH]])
def test_another_architecture_fails_before_docker_and_writes_nothing(
        tmp_path: Path, docker_refused: None, arches: list[str]) -> None:
    with pytest.raises(LabError, match=r"container hosts run the machine's architecture .* --backend vm"):
        Lab(tmp_path / "lab").up(2, arches)
    assert not (tmp_path / "lab").exists()


def test_a_memory_size_fails_before_docker(tmp_path: Path, docker_refused: None) -> None:
    with pytest.raises(LabError, match="--memory is for --backend vm"):
        Lab(tmp_path / "lab").up(2, None, ["", "1024"])
