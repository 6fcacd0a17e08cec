"""Process liveness for the lab's daemons (dockerd, QEMU), which outlive the command that started them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def alive(pid: int, comm: str | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``comm``, under that name: a reused pid does not count).

    A zombie counts as gone; if it is our child it is reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if comm is not None:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() != comm:
                return False
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True
