"""Molecule tier: ``molecule test`` of scenarios on real lab hosts.

By default (``make test``, CI) ``containers`` (the whole chain on two container hosts, minutes)
and ``default`` (host_prep and runtime on an amd64 and an arm64 QEMU VM);
``EDGE_MOLECULE_SCENARIOS`` names others, e.g. ``cluster`` (the whole chain on the VMs, about
40 minutes: beside the rest of CI's 40 it would leave too little of the 90). Each test runs a
scenario's whole sequence (destroy, syntax, create, converge, idempotence, verify, destroy)
exactly as ``make molecule SCENARIO=<name>`` does, and passes only when Molecule does.
Molecule's own output goes to a log file (its path and tail are in the failure message); the
wall time of each step is printed at the end of the pytest run.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.conftest import BIN, ROOT
from tests.molecule.conftest import STEP_TIMES
from tests.molecule.steps import boot_times, stamp, step_times

pytestmark = pytest.mark.molecule

TAIL_LINES = 60
SCENARIOS = os.environ.get("EDGE_MOLECULE_SCENARIOS", "containers,default").split(",")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario_passes(scenario: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    log = tmp_path_factory.mktemp("molecule") / f"{scenario}.log"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1", "PY_COLORS": "0"}
    env.pop("EDGE_MOLECULE_STAGES", None)  # the scenario's own stages
    started = time.monotonic()
    with log.open("w") as out, subprocess.Popen(
        [str(BIN / "molecule"), "test", "-s", scenario],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, errors="replace",
    ) as molecule:
        assert molecule.stdout is not None
        for line in molecule.stdout:  # each line stamped with the time it arrived
            out.write(stamp(line, time.time()))
            out.flush()
        returncode = molecule.wait()
    text = log.read_text(errors="replace")
    STEP_TIMES[scenario] = (time.monotonic() - started, step_times(text), boot_times(text))
    tail = "\n".join(text.splitlines()[-TAIL_LINES:])
    assert returncode == 0, f"molecule test -s {scenario} failed (log: {log}):\n{tail}"
    steps = [s.step for s in STEP_TIMES[scenario][1]]
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert step in steps, f"molecule test -s {scenario} ran no {step} step (log: {log})"
