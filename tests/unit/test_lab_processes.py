"""Process liveness as the lab's stop paths see it (real processes, no mocks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from edge_provision.lab import vm
from edge_provision.lab.processes import alive


def test_a_running_process_is_alive_under_its_own_name_only() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert alive(child.pid)
        assert alive(child.pid, "sleep")
        assert not alive(child.pid, "dockerd")  # a reused pid under another name does not count
    finally:
        child.kill()
        child.wait()


def test_an_exited_child_counts_as_gone_and_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child.pid)
    # alive() reaped the zombie: nothing is left to wait for.
    try:
        os.waitpid(child.pid, os.WNOHANG)
    except ChildProcessError:
        pass
    else:
        raise AssertionError(f"pid {child.pid} was not reaped")
    child.returncode = 0  # keep Popen's destructor from waiting on a pid that is gone


def test_each_free_port_is_bindable_and_recorded_as_taken() -> None:
    taken = {1}
    first, second = vm._free_port(taken), vm._free_port(taken)
    assert first != second
    assert taken == {1, first, second}
    with socket.socket() as s:
        s.bind(("127.0.0.1", first))
