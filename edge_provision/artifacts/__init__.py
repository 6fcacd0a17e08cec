"""Pinned, checksummed artifacts: what the roles install, and where it comes from.

``versions.yml`` beside this file is the single source of every external component
(version, per-architecture URL, sha256). What no registry reachable from the lab carries
is built by a builder in ``builders/`` into the cache (never into the repository).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

CACHE_DIR = Path(os.environ.get("EDGE_PROVISION_CACHE", Path.home() / ".cache" / "edge-provision"))
ARTIFACTS_DIR = CACHE_DIR / "artifacts"
LOCK_POLL_SECONDS = 0.2


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
