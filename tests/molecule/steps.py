"""The steps of a ``molecule test`` run and their wall times, read from Molecule's log.

Molecule prints ``HH:MM:SS INFO <scenario> ➜ <step>: Executing`` when a step starts and
``...: Executed: <result>`` when it ends (one line each, with or without colour codes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\s+INFO\s+\S+ ➜ (\w+): (Executing|Executed: (.*))$")
_OK = ("Successful", "Skipped", "disabled")


@dataclass(frozen=True)
class Step:
    step: str
    seconds: float
    ok: bool


def step_times(log: str) -> list[Step]:
    """Each step that ran, in order, with its wall time (a day boundary is allowed for)."""
    steps: list[Step] = []
    started: tuple[str, int] | None = None
    for raw in log.splitlines():
        match = _LINE.match(_ANSI.sub("", raw).strip())
        if not match:
            continue
        hours, minutes, seconds, step, what, result = match.groups()
        at = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        if what == "Executing":
            started = (step, at)
        elif started and started[0] == step:
            steps.append(Step(step, float((at - started[1]) % 86400), any(w in result for w in _OK)))
            started = None
    return steps
