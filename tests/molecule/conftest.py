"""The Molecule tier's report: each scenario's step times, printed after the test summary."""

from __future__ import annotations

from typing import Any

import pytest

from tests.molecule.steps import Boot, Step

# scenario -> (wall seconds of `molecule test`, its steps, the VMs its create step booted)
STEP_TIMES: dict[str, tuple[float, list[Step], list[Boot]]] = {}


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not STEP_TIMES:
        return
    terminalreporter.section("molecule step times")
    for scenario, (total, steps, boots) in STEP_TIMES.items():
        parts = ", ".join(f"{s.step} {s.seconds:.0f} s{'' if s.ok else ' (failed)'}" for s in steps)
        booted = "".join(f"; {b.host} ({b.arch}) booted in {b.seconds:.0f} s" for b in boots)
        terminalreporter.write_line(f"{scenario}: {total:.0f} s in all: {parts}{booted}")
