"""Pinned downloads: where they come from (the artifact source), fetched once and sha256-checked.

The one download-and-verify path of the project: ``edge-provision artifacts fetch``, the
runtime stage's controller side (``edge_provision.stages.runtime``, called by the Ansible
roles and by the pyinfra deploys) and the WasmEdge crun builder all call :func:`fetch`.

An artifact source (the fleet's ``edge_artifact_source``) is one of

* ``upstream`` -- the ``url`` pinned in ``versions.yml``;
* an absolute directory on the controller (or ``file:///...``) -- air-gapped sites, e.g. a
  bundle written by ``edge-provision artifacts fetch``; files go by the last part of ``url``;
* an ``http://`` or ``https://`` mirror base URL -- the same names under that URL.

A file whose sha256 differs from the pin is discarded and the fetch fails naming the file,
the expected and the actual sha256: nothing downstream (no node) ever sees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from edge_provision.artifacts import ARTIFACTS_DIR, sha256_file

VERSIONS_FILE = Path(__file__).resolve().parent / "versions.yml"
UPSTREAM = "upstream"
# Key of a download that is the same for every architecture (a source archive).
ANY_ARCH = "any"
# Where the controller keeps what it fetched (also a valid local artifact source).
DOWNLOADS_DIR = ARTIFACTS_DIR / "downloads"
MANIFEST = "manifest.json"
TIMEOUT_SECONDS = 60
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactFetchError(RuntimeError):
    """A pinned download could not be had or did not verify; the message says which and why."""


@dataclass(frozen=True)
class Download:
    """One pinned file of versions.yml: component name, version, architecture, URL, sha256."""

    name: str
    version: str
    arch: str
    url: str
    sha256: str

    @property
    def file(self) -> str:
        """The file's name: the last part of its URL (also its name in a mirror or bundle)."""
        return PurePosixPath(urllib.parse.urlsplit(self.url).path).name

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.arch})"


def read_versions(versions_file: Path = VERSIONS_FILE) -> Any:
    """The pins of ``versions_file`` as parsed YAML (an empty file: ``{}``); the one reader of
    versions.yml, for the downloads here and the builders' pins. OSError or YAMLError when the
    file cannot be read or parsed."""
    return yaml.safe_load(versions_file.read_text()) or {}


def load_downloads(
    versions_file: Path = VERSIONS_FILE, *, arch: str | None = None, names: Sequence[str] | None = None
) -> list[Download]:
    """Every download pinned in ``versions_file`` (entries with a ``downloads`` mapping).

    ``arch`` keeps that architecture's files and the ``any`` ones; ``names`` keeps those entries
    (an unknown name is an error, so a typo does not silently fetch nothing).
    """
    data = read_versions(versions_file)
    if names is not None:
        unknown = [n for n in names if not isinstance(data.get(n), dict) or "downloads" not in data[n]]
        if unknown:
            raise ArtifactFetchError(f"no downloads pinned for {', '.join(unknown)} in {versions_file}")
    result = []
    for name, entry in data.items():
        if not isinstance(entry, dict) or "downloads" not in entry:
            continue
        if names is not None and name not in names:
            continue
        for key, pin in (entry["downloads"] or {}).items():
            if arch is not None and key not in (arch, ANY_ARCH):
                continue
            pin = pin or {}
            result.append(Download(
                name=str(name), version=str(entry.get("version", "")), arch=str(key),
                url=str(pin.get("url") or ""), sha256=str(pin.get("sha256") or "").lower(),
            ))
    return result


def pinned(name: str, arch: str, versions_file: Path = VERSIONS_FILE) -> Download:
    """The one download of entry ``name`` for ``arch`` (or its ``any`` file)."""
    found = load_downloads(versions_file, arch=arch, names=[name])
    if not found:
        raise ArtifactFetchError(f"{name}: no download for {arch} pinned in {versions_file}")
    return found[0]


def source_problem(source: Any) -> str | None:
    """Why ``source`` is not an artifact source, or None."""
    if not isinstance(source, str) or not source:
        return f"must be {UPSTREAM!r}, an absolute directory or an http(s) URL, found {source!r}"
    if source == UPSTREAM:
        return None
    parts = urllib.parse.urlsplit(source)
    if parts.scheme in ("http", "https"):
        return None if parts.netloc else f"{source!r} has no host"
    path = parts.path if parts.scheme == "file" else source
    if parts.scheme not in ("", "file") or not path.startswith("/"):
        return f"{source!r} is neither {UPSTREAM!r}, an absolute directory nor an http(s) URL"
    return None


def location(download: Download, source: str = UPSTREAM) -> str:
    """Where ``download`` is read from with artifact source ``source``: a URL or a local path."""
    problem = source_problem(source)
    if problem:
        raise ArtifactFetchError(f"artifact source {problem}")
    if source == UPSTREAM:
        return download.url
    if source.startswith(("http://", "https://")):
        return f"{source.rstrip('/')}/{urllib.parse.quote(download.file)}"
    directory = urllib.parse.urlsplit(source).path if source.startswith("file:") else source
    return str(Path(directory) / download.file)


def fetch(download: Download, source: str = UPSTREAM, dest: Path | None = None,
          *, timeout: float = TIMEOUT_SECONDS) -> Path:
    """``dest/<file>`` holding ``download``, verified against its pinned sha256.

    A file already there that verifies is kept (no traffic). Otherwise it is read from the
    artifact source into a temporary file beside it, hashed while read, and renamed into place
    only when the sha256 matches; on any failure nothing is left behind and the error names
    the artifact, where it was read from and why it failed.
    """
    if not _SHA256.match(download.sha256):
        raise ArtifactFetchError(
            f"{download.label}: no valid sha256 pinned for {download.file} in versions.yml "
            f"({download.sha256 or 'none'!r}); refusing to use an unchecked download"
        )
    if not download.url:
        raise ArtifactFetchError(f"{download.label}: no url pinned in versions.yml")
    dest = DOWNLOADS_DIR if dest is None else dest
    target = dest / download.file
    if target.is_file() and sha256_file(target) == download.sha256:
        return target
    where = location(download, source)
    dest.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=dest, prefix=f".{download.file}.")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, _open(where, timeout) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ArtifactFetchError(f"{download.label}: cannot fetch {download.file} from {where}: "
                                 f"{_reason(exc)}") from None
    actual = digest.hexdigest()
    if actual != download.sha256:
        Path(temporary).unlink(missing_ok=True)
        raise ArtifactFetchError(
            f"{download.label}: sha256 mismatch for {download.file} from {where}: expected "
            f"{download.sha256}, actual {actual} (pinned in edge_provision/artifacts/versions.yml; "
            "the file was discarded)"
        )
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)
    return target


def _open(where: str, timeout: float) -> Any:
    if where.startswith(("http://", "https://")):
        # A fresh opener reads the proxy settings (https_proxy, no_proxy) of this moment.
        return urllib.request.build_opener().open(where, timeout=timeout)
    return Path(where).open("rb")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, FileNotFoundError):
        return "no such file (put it in the artifact source, e.g. with `edge-provision artifacts fetch`)"
    return str(exc) or type(exc).__name__


# -- bundles: every pinned download in one directory, for offline sites ------------------------


@dataclass(frozen=True)
class Fetched:
    download: Download
    path: Path | None
    error: str | None


def fetch_bundle(downloads: Iterable[Download], source: str, dest: Path) -> list[Fetched]:
    """Fetch every download into ``dest`` (one failure does not stop the others) and record
    the verified ones in ``dest/manifest.json``."""
    results = []
    for download in downloads:
        try:
            results.append(Fetched(download, fetch(download, source, dest), None))
        except ArtifactFetchError as exc:
            results.append(Fetched(download, None, str(exc)))
    entries = _manifest_entries(dest)
    for result in results:
        if result.path is not None:
            entries[result.download.file] = {**asdict(result.download), "file": result.download.file}
    if entries:
        (dest / MANIFEST).write_text(json.dumps({"artifacts": [entries[k] for k in sorted(entries)]},
                                                indent=2) + "\n")
    return results


def _manifest_entries(dest: Path) -> dict[str, dict[str, str]]:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads((dest / MANIFEST).read_text())
        return {str(e["file"]): e for e in data["artifacts"]}
    return {}


def bundle_status(downloads: Iterable[Download], dest: Path) -> list[tuple[Download, str]]:
    """Each download's state in ``dest``: ``verified``, ``missing`` or ``sha256 mismatch (...)``."""
    rows = []
    for download in downloads:
        path = dest / download.file
        if not path.is_file():
            rows.append((download, "missing"))
            continue
        actual = sha256_file(path)
        state = "verified" if actual == download.sha256 else (
            f"sha256 mismatch: expected {download.sha256}, actual {actual}")
        rows.append((download, state))
    return rows
