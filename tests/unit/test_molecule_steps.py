"""Step times read from a Molecule log (tests/molecule/steps.py)."""

from __future__ import annotations

from tests.molecule.steps import Step, step_times

LOG = """\
23:20:19 INFO     default ➜ discovery: scenario test matrix: dependency, destroy, create
23:20:20 \x1b[36mINFO    \x1b[0m \x1b[32mdefault\x1b[0m ➜ \x1b[33mdependency\x1b[0m: \x1b[36mExecuting\x1b[0m
23:20:20 \x1b[36mINFO    \x1b[0m \x1b[32mdefault\x1b[0m ➜ \x1b[33mdependency\x1b[0m: \x1b[36mExecuted: 2 disabled\x1b[0m
23:20:27 INFO     default ➜ create: Executing
  │ TASK [Start the VMs] ************
23:22:26 INFO     default ➜ create: Executed: Successful
23:59:50 INFO     default ➜ converge: Executing
00:01:05 INFO     default ➜ converge: Executed: Failed
"""


def test_each_step_with_its_wall_time_and_outcome() -> None:
    assert step_times(LOG) == [
        Step("dependency", 0.0, True),
        Step("create", 119.0, True),
        Step("converge", 75.0, False),  # across midnight
    ]


def test_a_step_that_never_ended_is_not_listed() -> None:
    assert step_times("10:00:00 INFO     default ➜ verify: Executing\n") == []
