"""The steps of a ``molecule test`` run and their wall times, and the VMs' boot times, read
from Molecule's log.

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
# What `edge-provision lab up` says of a VM it booted (molecule/shared/create.yml shows it).
_BOOT = re.compile(r"lab: (\S+) \((\w+)\) answers SSH on \S+ (\d+) s after start")


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


@dataclass(frozen=True)
class Boot:
    host: str
    arch: str
    seconds: float


def boot_times(log: str) -> list[Boot]:
    """Each VM the create step booted, with the seconds from its start until its host key was
    on the console (the lab's ``answers SSH ... s after start``); none for container hosts."""
    return [Boot(host, arch, float(seconds)) for host, arch, seconds in _BOOT.findall(log)]

