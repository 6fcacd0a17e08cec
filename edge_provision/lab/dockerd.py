"""The docker engine the lab runs on: find it, start it when nothing answers, stop it after.

Debian's ``docker.io`` engine (dockerd 20.10) is used through Debian's own client
``/usr/bin/docker`` (same API version). When ``/var/run/docker.sock`` does not answer the
lab starts dockerd itself (log and pidfile under ``~/.cache/edge-provision/lab/``) and
remembers that, so :func:`stop_if_idle` can stop it once no lab container remains.

Machines whose capability bounding set lacks a capability ``--privileged`` asks for (a
sandbox without CAP_SYS_RESOURCE, say) cannot run privileged containers with plain runc;
there the lab registers :mod:`edge_provision.lab.runtime_wrapper` as an extra OCI runtime
(``--add-runtime``) and runs its containers with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from edge_provision.lab.processes import alive

SOCKET = Path("/var/run/docker.sock")
RUNTIME_NAME = "edge-lab-runc"
LAB_LABEL = "io.edge-provision.lab"
CAP_SYS_RESOURCE = 24
# Capabilities `docker run --privileged` grants (docker 20.10: every capability up to CAP_CHECKPOINT_RESTORE).
LAST_PRIVILEGED_CAP = 40


class LabError(Exception):
    """An expected lab failure; the message says what happened and what to do."""


def state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "edge-provision" / "lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def docker_cli() -> str:
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise LabError("no docker client found; install Debian's engine with: apt-get install docker.io")


def docker(*args: str, check: bool = True, timeout: float = 300, input: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; raise LabError with its stderr when ``check`` and it fails."""
    cmd = [docker_cli(), *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                                stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`docker {' '.join(args[:3])} ...` did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise LabError(f"`docker {' '.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def missing_capabilities() -> list[int]:
    """Capability bits ``--privileged`` requests that this machine's bounding set lacks."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapBnd:"):
                bnd = int(line.split()[1], 16)
                return [bit for bit in range(LAST_PRIVILEGED_CAP + 1) if not bnd >> bit & 1]
    return []


def needs_wrapper() -> bool:
    return CAP_SYS_RESOURCE in missing_capabilities()


def _wrapper_path() -> Path:
    return state_dir() / RUNTIME_NAME


def install_wrapper() -> Path:
    """Copy the runtime wrapper to a stable place (the registered path must outlive checkouts)."""
    source = Path(__file__).with_name("runtime_wrapper.py").read_text()
    target = _wrapper_path()
    if not target.exists() or target.read_text() != source:
        tmp = target.with_suffix(".tmp")
        tmp.write_text(source)
        tmp.chmod(0o755)
        tmp.replace(target)
    return target


def answers() -> bool:
    if not SOCKET.exists():
        return False
    result = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20)
    return result.returncode == 0


def runtimes() -> set[str]:
    result = docker("info", "--format", "{{range $k, $v := .Runtimes}}{{$k}} {{end}}", timeout=30)
    return set(result.stdout.split())


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(state_dir() / "dockerd.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def in_use() -> Iterator[None]:
    """Hold while using docker: :func:`stop_if_idle` (any process) leaves dockerd running meanwhile."""
    with open(state_dir() / "dockerd.users", "w") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        yield


def _pidfile() -> Path:
    return state_dir() / "dockerd.pid"


def _marker() -> Path:
    """Present while a dockerd started by the lab runs."""
    return state_dir() / "dockerd.started-by-lab"


def ensure_running() -> str | None:
    """Make sure a usable dockerd answers; return the OCI runtime lab containers must use."""
    wrapper = needs_wrapper()
    with _locked():
        if not answers():
            _start(wrapper)
        if not wrapper:
            return None
        install_wrapper()
        if RUNTIME_NAME not in runtimes():
            raise LabError(
                "this machine's capability bounding set lacks CAP_SYS_RESOURCE, so privileged lab "
                f"containers need the '{RUNTIME_NAME}' OCI runtime, but the running dockerd was not started "
                "with it. Stop that dockerd (nothing else must be using it) and run the lab again (it "
                "starts dockerd itself), or restart dockerd with: "
                f"--add-runtime {RUNTIME_NAME}={_wrapper_path()}"
            )
        return RUNTIME_NAME


def _start(wrapper: bool) -> None:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.access(dockerd, os.X_OK):
        raise LabError("dockerd is not installed; install Debian's engine with: apt-get install docker.io")
    if os.geteuid() != 0:
        raise LabError("docker does not answer on /var/run/docker.sock and starting dockerd needs root")
    log = state_dir() / "dockerd.log"
    cmd = [dockerd, "--pidfile", str(_pidfile())]
    if wrapper:
        cmd += ["--add-runtime", f"{RUNTIME_NAME}={install_wrapper()}"]
    with open(log, "ab") as out:
        out.write(f"\n==== {time.ctime()}: edge-provision lab starts: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd="/")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise LabError(f"dockerd exited with status {proc.returncode}; its log ({log}) ends:\n"
                           + "\n".join(tail))
        if answers():
            _marker().write_text(f"{proc.pid}\n")
            return
        time.sleep(0.3)
    raise LabError(f"dockerd did not answer on {SOCKET} within 60 s; see {log}")


def stop_if_idle() -> bool:
    """Stop the dockerd the lab started once no lab container (of any lab) and nothing else runs."""
    with _locked(), open(state_dir() / "dockerd.users", "w") as users:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another lab is between `ensure_running` and its last docker call
        marker = _marker()
        if not marker.exists():
            return False
        try:
            pid = int(marker.read_text().split()[0])
        except (ValueError, IndexError):
            marker.unlink(missing_ok=True)
            return False
        if not alive(pid, "dockerd"):
            marker.unlink(missing_ok=True)
            return False
        others = docker("ps", "-aq", "--filter", f"label={LAB_LABEL}", check=False)
        if others.returncode != 0 or others.stdout.strip():
            return False
        # Someone else's containers may run on the dockerd the lab started: leave it up then.
        running = docker("ps", "-q", check=False)
        if running.returncode != 0 or running.stdout.strip():
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(pid, "dockerd") and time.monotonic() < deadline:
            time.sleep(0.2)
        marker.unlink(missing_ok=True)
        return True
