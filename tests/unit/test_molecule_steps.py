"""Step times read from a Molecule log (tests/molecule/steps.py)."""

from __future__ import annotations

import time

from tests.molecule.steps import Boot, Step, boot_times, stamp, step_times

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


# What the tier's log holds: Molecule without colour (NO_COLOR), each line stamped on arrival.
PLAIN_LOG = """\
10:00:01 INFO     [default > create] Executing
10:00:01   TASK [Start the VMs] ************
10:02:11 INFO     [default > create] Executed: Successful
10:02:11 INFO     [default > verify] Executing
10:02:11 INFO     [default > verify] Executing Testinfra tests found in /repo/molecule/default/tests/...
10:06:00 INFO     [default > verify] Executed: Successful
"""


def test_plain_molecule_lines_stamped_on_arrival() -> None:
    assert step_times(PLAIN_LOG) == [Step("create", 130.0, True), Step("verify", 229.0, True)]


def test_stamp_puts_the_local_time_in_front() -> None:
    line = stamp("INFO     [default > create] Executing\n", time.mktime((2026, 11, 25, 1, 2, 3, 0, 0, -1)))
    assert line == "01:02:03 INFO     [default > create] Executing\n"
    ended = stamp("INFO     [default > create] Executed: Successful\n", time.mktime((2026, 11, 25, 1, 2, 12, 0, 0, -1)))
    assert step_times(line + ended) == [Step("create", 9.0, True)]


def test_molecules_own_time_after_the_stamp_is_allowed() -> None:
    log = "10:00:00 10:00:00 INFO     default ➜ create: Executing\n10:00:09 10:00:09 INFO     default ➜ create: Executed: Successful\n"
    assert step_times(log) == [Step("create", 9.0, True)]


def test_a_step_that_never_ended_is_not_listed() -> None:
    assert step_times("10:00:00 INFO     default ➜ verify: Executing\n") == []


# The create step's output as the tier's log holds it (molecule/shared/create.yml's debug task).
CREATE_LOG = """\
13:52:51 INFO     [cluster > create] Executing
13:53:30 ok: [localhost] =>
13:53:30     msg:
13:53:30     - 'lab: lab-1 (amd64) answers SSH on 127.0.0.1:35125 19 s after start'
13:53:30     - 'lab: lab-2 (arm64) answers SSH on 127.0.0.1:34517 23 s after start'
13:53:30     - lab-1      control_plane  127.0.0.1:35125 (vm, amd64, node 192.168.77.11)
13:53:31 INFO     [cluster > create] Executed: Successful
"""


def test_each_booted_vm_with_its_architecture_and_boot_time() -> None:
    assert boot_times(CREATE_LOG) == [Boot("lab-1", "amd64", 19.0), Boot("lab-2", "arm64", 23.0)]


def test_container_hosts_report_no_boot() -> None:
    assert boot_times(PLAIN_LOG) == []
