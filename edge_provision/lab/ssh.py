"""Whether a lab host answers SSH: its banner (booted far enough), a login with the lab key (ready)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path

from edge_provision.lab.inventory_writer import LabHost


def ssh_banner(address: str, port: int, timeout: float = 1.0) -> bool:
    """True when an SSH server answers at address:port (its identification string)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            if not conn.recv(64).startswith(b"SSH-"):
                return False
            # Identify ourselves before leaving, so sshd logs a quiet preauth close, not an error.
            with contextlib.suppress(OSError):
                conn.sendall(b"SSH-2.0-edge-provision-lab-probe\r\n")
            return True
    except OSError:
        return False


def ssh_login(key: Path, known_hosts: Path, host: LabHost, timeout: int = 20) -> bool:
    """True when ``ssh root@host`` with the lab key and strict host key checking runs a command
    (within ``timeout`` to connect: an emulated VM on a loaded machine needed more than 5 s)."""
    if not key.exists():
        return False
    cmd = [
        "ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}", "-o", "LogLevel=ERROR",
        "-p", str(host.port), f"root@{host.address}", "true",
    ]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout + 5,
                              stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
