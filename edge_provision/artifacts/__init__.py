"""Pinned, checksummed artifacts: what the roles install, and where it comes from.

``versions.yml`` beside this file is the single source of every external component
(version, per-architecture URL, sha256). What no registry reachable from the lab carries
is built by a builder in ``builders/`` into the cache (never into the repository); Debian
packages are downloaded into it by :mod:`edge_provision.artifacts.debian`.

This layer imports nothing above it (no stage, engine, inventory or lab). Here: the cache's
paths, keys and lock, and :func:`run`, the one way a step runs a tool, failing with an
:class:`ArtifactBuildError` that names the step and ends with the tail of the tool's output.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

CACHE_DIR = Path(os.environ.get("EDGE_PROVISION_CACHE", Path.home() / ".cache" / "edge-provision"))
ARTIFACTS_DIR = CACHE_DIR / "artifacts"
LOCK_POLL_SECONDS = 0.2
TAIL_LINES = 25
ERROR_LINES = 15
_ERROR_LINE = re.compile(r"\berror\b:|\*\*\*|fatal|undefined reference", re.IGNORECASE)

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_dir(name: str, version: str, arch: str, key: str) -> Path:
    """Cache directory of one build: ``<cache>/artifacts/<name>/<version>-<arch>-<key>``.

    ``key`` is a short hash of everything that shapes the build (inputs' checksums,
    build flags), so a changed input builds anew and an unchanged one is reused.
    """
    return ARTIFACTS_DIR / name / f"{version}-{arch}-{key}"


def input_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def cached_builds() -> list[tuple[str, Path, int]]:
    """Every build in the cache: (name, directory, total bytes)."""
    rows = []
    for directory in sorted(ARTIFACTS_DIR.glob("*/*")):
        if directory.is_dir():
            size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
            rows.append((directory.parent.name, directory, size))
    return rows


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) so one process builds at a time.

    Taken without blocking, retried after a sleep: under pyinfra (gevent, every host a greenlet of
    one process) a blocking flock() would stop the whole process, the holder's subprocess included
    (hosts of one architecture share a lock), and never return.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(LOCK_POLL_SECONDS)  # gevent's sleep when pyinfra patched it: others run
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ArtifactBuildError(RuntimeError):
    """A step making an artifact failed: the message names the build (:attr:`build`, which each
    kind of artifact's subclass sets) and the step, and ends with the last lines of its output."""

    build = "artifact build"

    def __init__(self, step: str, message: str, output: str = "") -> None:
        self.step = step
        self.message = message
        self.output = output
        lines = output.rstrip().splitlines()
        self.output_tail = "\n".join(lines[-TAIL_LINES:])
        text = f"{self.build}, step '{step}': {message}"
        # Parallel make interleaves jobs: the compiler's error may sit above the tail.
        errors = [line for line in lines[:-TAIL_LINES] if _ERROR_LINE.search(line)][-ERROR_LINES:]
        if errors:
            text += "\n--- error lines above the tail ---\n" + "\n".join(errors)
        if self.output_tail:
            text += f"\n--- last lines of output ---\n{self.output_tail}"
        super().__init__(text)


def run(
    step: str,
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    error: type[ArtifactBuildError] = ArtifactBuildError,
    stdout_only: bool = False,
) -> str:
    """Run ``cmd`` (no stdin; ``env`` None: this process's environment) and return its output:
    stdout and stderr together, or with ``stdout_only`` stdout alone (for output that is parsed).

    A tool that cannot be started or exits non-zero raises ``error`` naming ``step`` and the
    command, with stdout and stderr as its output (the message ends with their last lines).
    """
    log.debug("[%s] %s", step, " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stdout_only else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except OSError as exc:
        raise error(step, f"cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        output = proc.stdout
        if stdout_only and proc.stderr:
            output = "\n".join(part for part in (proc.stdout.rstrip("\n"), proc.stderr) if part)
        raise error(step, f"`{' '.join(cmd)}` exited with {proc.returncode}", output)
    return proc.stdout
