"""The command line's own contract: --version, and `status`'s exit status (a script or a monitor
acts on it): 0 when every node is Ready, 3 when one is not (named on stderr), 1 without an API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_provision import cli, status


def _row(name: str, ready: bool) -> dict[str, Any]:
    return {"name": name, "ready": ready, "os": "Debian GNU/Linux 13 (trixie)", "kubelet": "v1.20.2",
            "container_runtime": "containerd://1.7.24", "crun": "1.21 +WASM:wasmedge", "wasm_engine": "wasmedge",
            "labels": {}, "workloads": []}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == "edge-provision 0.1.0"


@pytest.mark.parametrize(("ready", "code"), [((True, True), 0), ((True, False), cli.STATUS_NOT_READY)])
def test_status_exit_status_says_whether_every_node_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    ready: tuple[bool, bool], code: int,
) -> None:
    rows = [_row("lab-1", ready[0]), _row("lab-2", ready[1])]
    monkeypatch.setattr(status, "fleet_status", lambda kubeconfig, retries: rows)
    assert cli.main(["status", "-i", str(tmp_path)]) == code
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split()[:2] == ["NODE", "READY"] and len(out.splitlines()) == 3
    assert ("not Ready: lab-2" in err) == (code != 0)


def test_status_without_an_api_says_why_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "-i", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("status: ") and "Traceback" not in err
