"""The steps of a ``molecule test`` run and their wall times, read from Molecule's log.

Molecule prints ``INFO <scenario> ➜ <step>: Executing`` when a step starts and
``...: Executed: <result>`` when it ends; without colour (``NO_COLOR``) the same lines read
``INFO [<scenario> > <step>] Executing``. Only the coloured form carries a time, so the log this
reads has ``HH:MM:SS`` written in front of every line as it arrived (:func:`stamp`); a time
Molecule printed itself may follow it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(
    r"^(\d\d):(\d\d):(\d\d)\s+(?:\d\d:\d\d:\d\d\s+)?INFO\s+"
    r"(?:\S+ ➜ (\w+): |\[\S+ > (\w+)\] )(Executing|Executed: (.*))$"
)
_OK = ("Successful", "Skipped", "disabled")


@dataclass(frozen=True)
class Step:
    step: str
    seconds: float
    ok: bool


def stamp(line: str, now: float) -> str:
    """``line`` as :func:`step_times` reads it: the local time ``now`` (``time.time()``) in front."""
    return f"{time.strftime('%H:%M:%S', time.localtime(now))} {line}"


def step_times(log: str) -> list[Step]:
    """Each step that ran, in order, with its wall time (a day boundary is allowed for)."""
    steps: list[Step] = []
    started: tuple[str, int] | None = None
    for raw in log.splitlines():
        match = _LINE.match(_ANSI.sub("", raw).strip())
        if not match:
            continue
        hours, minutes, seconds, coloured_step, plain_step, what, result = match.groups()
        step = coloured_step or plain_step
        at = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        if what == "Executing":
            started = (step, at)
        elif started and started[0] == step:
            steps.append(Step(step, float((at - started[1]) % 86400), any(w in result for w in _OK)))
            started = None
    return steps
