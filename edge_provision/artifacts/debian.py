"""Debian on the controller: its apt sources, packages downloaded for any architecture, versions.

Everything the project asks of the controller's apt and dpkg:

* :func:`apt_sources` -- this machine's binary apt sources as one-line entries: the mirror that
  the private apt views below, the lab's images and the builders' root are made from;
* :func:`ensure_deb_src` -- ``deb-src`` twins of the distribution's entries, for
  ``apt-get source``;
* :func:`debs` -- Debian packages and their dependency closure for an architecture, downloaded
  with ``apt-get download`` into the artifact cache, so nodes install them without reaching a
  mirror (the air-gapped path), and :func:`pack_debs`, the one archive a node receives them in;
* :func:`debian_arch`, :func:`package_version`, :func:`source_version`,
  :func:`upstream_version` -- architecture names and version strings.

apt reads two formats of sources: one-line entries (``sources.list``, ``sources.list.d/*.list``,
read by :func:`parse_one_line`) and deb822 stanzas (``sources.list.d/*.sources``, read with
python-debian's :mod:`debian.deb822` by :func:`parse_deb822`); both become :class:`Entry`.

deb-src: the least invasive way. The machine's own ``deb`` entries stay untouched; one extra
file, ``sources.list.d/edge-provision-src.sources``, holds a ``Types: deb-src`` stanza copying
the URIs / Suites / Components / Signed-By of each distribution ``deb`` entry that has no
``deb-src`` twin yet. Only entries of the running distribution (their suite is the
``VERSION_CODENAME`` of ``/etc/os-release`` or ``<codename>-*``) are copied: third-party
repositories (nodesource, cloud SDKs, ...) rarely publish sources, and a ``deb-src`` line for
them would make ``apt-get update`` fail or warn.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian import deb822

from edge_provision import artifacts
from edge_provision.artifacts import ArtifactBuildError, locked, run, sha256_file

APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")
OWN_FILE = "edge-provision-src.sources"
# apt and dpkg run with this environment: no prompt, untranslated output to parse.
APT_ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
                              "DEBIAN_FRONTEND": "noninteractive"}

# Debian architecture -> the `uname -m` names of machines running it. The same table as host_prep's
# host_prep_arch_names (the names the preflight accepts for each edge_arch; a unit test keeps the two
# in step): this layer reads no role.
MACHINES: Mapping[str, tuple[str, ...]] = {"amd64": ("x86_64",), "arm64": ("aarch64", "arm64")}

# The Debian releases a fleet's hosts may run, by the name the project uses for them (``debian-<VERSION_ID>``,
# what a node's /etc/os-release says), and their suite. The one list: the preflight checks a node
# against it, the lab builds its images for each, and packages for a node come from its suite.
RELEASES: Mapping[str, str] = {"debian-12": "bookworm", "debian-13": "trixie"}
# The release of this machine's own apt sources (the controller and the lab's builders run it).
CONTROLLER_RELEASE = "debian-12"


class DebianError(RuntimeError):
    """apt or dpkg on the controller could not do what was asked; the message says what and why."""


class AptSourcesError(DebianError):
    """The apt configuration could not be read, written, or refreshed."""


class AptStepError(ArtifactBuildError, DebianError):
    """apt or dpkg exited with an error: the step, the command and the last lines of its output."""

    build = "apt"


# -- architectures and versions ----------------------------------------------------------------


def debian_arch(machine: str | None = None) -> str:
    """``x86_64`` → ``amd64``, ``aarch64`` → ``arm64`` (this machine when not given).

    An unknown machine name is returned as it is.
    """
    machine = machine or platform.machine()
    for arch, names in MACHINES.items():
        if machine in names:
            return arch
    return machine


def host_arch() -> str:
    """This machine's architecture (``amd64``, ``arm64``, ...)."""
    return debian_arch()


def package_version(package: str) -> str:
    """Installed version of a Debian package ('' when not installed)."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package],
        text=True,
        capture_output=True,
        check=False,
        env=dict(APT_ENV),
    )
    status, _, version = proc.stdout.strip().partition(" ")
    return version if proc.returncode == 0 and status == "installed" else ""


def source_version(package: str) -> str:
    """The newest version of source package ``package`` in the deb-src lists, as ``apt-get
    source`` picks it ('' when the lists have none)."""
    out = subprocess.run(
        ["apt-cache", "showsrc", "--only-source", package],
        text=True,
        capture_output=True,
        check=False,
        env=dict(APT_ENV),
    ).stdout
    versions: list[str] = re.findall(r"^Version: (\S+)$", out, re.MULTILINE)
    if not versions:
        return ""
    best = versions[0]
    for candidate in versions[1:]:
        if subprocess.run(["dpkg", "--compare-versions", candidate, "gt", best], check=False).returncode == 0:
            best = candidate
    return best


def upstream_version(debian_version: str) -> str:
    """``1:1.35.0-4+deb12u1+b1`` -> ``1.35.0``; ``1.20.5+really1.20.2-1.1`` -> ``1.20.2``."""
    version = debian_version.split(":", 1)[-1].rsplit("-", 1)[0]
    return version.split("+really", 1)[-1]


# -- apt sources -------------------------------------------------------------------------------

# one-line format option names -> deb822 field names
_ONE_LINE_OPTIONS = {
    "arch": "Architectures",
    "signed-by": "Signed-By",
    "trusted": "Trusted",
    "lang": "Languages",
    "target": "Targets",
}
_ENTRY_FIELDS = {"types", "uris", "suites", "components", "enabled"}
_COPIED_OPTIONS = {"Signed-By", "Trusted", "Check-Valid-Until", "Check-Date"}


@dataclass
class Entry:
    """One repository entry of either sources format, normalised to deb822 fields."""

    types: list[str]
    uris: list[str]
    suites: list[str]
    components: list[str]
    options: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    line: str = ""  # the one-line entry it was read from ('' for a deb822 stanza)

    def triples(self) -> set[tuple[str, str, str]]:
        comps = self.components or [""]  # flat repositories ("suite/") have no component
        return {(_norm_uri(u), s, c) for u in self.uris for s in self.suites for c in comps}

    def deb_lines(self) -> list[str]:
        """A ``deb`` entry as one-line entries: the line it was read from, or one per URI and suite
        of a stanza, with its Signed-By when that names a keyring file (an embedded key has no
        one-line form) and no other option."""
        if self.line:
            return [self.line]
        signed_by = self.options.get("Signed-By", "")
        options = f"[signed-by={signed_by}] " if signed_by.startswith("/") else ""
        return [f"deb {options}{uri} {suite} {' '.join(self.components)}".strip()
                for uri in self.uris for suite in self.suites]


def _norm_uri(uri: str) -> str:
    return uri.rstrip("/")


def _deb822_name(key: str) -> str:
    return "-".join(part.capitalize() for part in key.split("-"))


def parse_deb822(text: str) -> list[Entry]:
    """The stanzas of a ``*.sources`` file (python-debian's deb822 reader: comments, continuation
    lines); a stanza without ``Types`` is skipped."""
    entries: list[Entry] = []
    for stanza in deb822.Deb822.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
        fields = {str(key).lower(): str(value) for key, value in stanza.items()}
        if "types" not in fields:
            continue
        entries.append(
            Entry(
                types=fields["types"].split(),
                uris=fields.get("uris", "").split(),
                suites=fields.get("suites", "").split(),
                components=fields.get("components", "").split(),
                options={_deb822_name(k): v for k, v in fields.items() if k not in _ENTRY_FIELDS},
                enabled=fields.get("enabled", "yes").strip().lower() not in {"no", "false", "0"},
            )
        )
    return entries


def parse_one_line(text: str) -> list[Entry]:
    """Parse ``sources.list`` one-line entries: ``deb [opt=val ...] uri suite [component ...]``."""
    entries: list[Entry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        match = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
        if match:
            kind, opts, rest = match.groups()
            for opt in opts.split():
                name, _, value = opt.partition("=")
                options[_ONE_LINE_OPTIONS.get(name, _deb822_name(name))] = value.replace(",", " ")
        else:
            kind, _, rest = line.partition(" ")
        words = rest.split()
        if kind not in ("deb", "deb-src") or len(words) < 2:
            continue
        entries.append(Entry([kind], [words[0]], [words[1]], words[2:], options, line=line))
    return entries


def read_entries(etc_apt: Path = APT_DIR, *, skip: str | None = None) -> list[Entry]:
    """Every enabled entry apt reads: ``sources.list``, ``sources.list.d/*.list`` and ``*.sources``."""
    entries: list[Entry] = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        entries += parse_one_line(main_list.read_text(errors="replace"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.name == skip or not path.is_file():
                continue
            if path.suffix == ".list":
                entries += parse_one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                entries += parse_deb822(path.read_text(errors="replace"))
    return [e for e in entries if e.enabled]


def apt_sources(etc_apt: Path = APT_DIR) -> list[str]:
    """This machine's enabled binary apt sources as one-line entries (deb-src ones skipped), each
    once: what the private apt views (:func:`apt_options`), the lab's images and the builders'
    root are made from."""
    lines = [line for entry in read_entries(etc_apt) if "deb" in entry.types for line in entry.deb_lines()]
    return list(dict.fromkeys(lines))


def suite(release: str) -> str:
    """``debian-13`` → ``trixie``; a :class:`DebianError` naming the supported ones otherwise."""
    try:
        return RELEASES[release]
    except KeyError:
        raise DebianError(f"unsupported OS release {release!r}; supported: {', '.join(RELEASES)}") from None


def release_error(release: str) -> str:
    """Why a host of ``release`` (``debian-<VERSION_ID>`` from its /etc/os-release) cannot be part of
    a fleet, or ``''`` when it can."""
    try:
        suite(release)
    except DebianError as exc:
        return str(exc)
    return ""


def release_sources(release: str, etc_apt: Path = APT_DIR) -> list[str]:
    """The binary apt sources for hosts of ``release``: this machine's distribution entries (same
    mirrors, keyrings and components) with their suites moved to ``release``'s (``bookworm``,
    ``bookworm-updates``, ``bookworm-security`` → ``trixie``, ...). This machine's other
    repositories are left out: they are built for its own release. The controller's release gets
    :func:`apt_sources` unchanged."""
    target = suite(release)
    if target == RELEASES[CONTROLLER_RELEASE]:
        return apt_sources(etc_apt)
    own = RELEASES[CONTROLLER_RELEASE]
    lines: list[str] = []
    for entry in read_entries(etc_apt):
        if "deb" not in entry.types:
            continue
        suites = [target + s[len(own):] for s in entry.suites if _is_distro_suite(s, own)]
        if suites:
            moved = Entry(["deb"], entry.uris, suites, entry.components,
                          {k: v for k, v in entry.options.items() if k == "Signed-By"})
            lines += moved.deb_lines()
    if not lines:
        raise AptSourcesError(f"no {own} entries in {etc_apt}/sources.list*: cannot make {target}'s")
    return list(dict.fromkeys(lines))


def distro_codename(os_release: Path = OS_RELEASE) -> str:
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise AptSourcesError(f"no VERSION_CODENAME in {os_release}: cannot tell distribution suites apart")


def _is_distro_suite(suite: str, codename: str) -> bool:
    return suite == codename or suite.startswith((f"{codename}-", f"{codename}/"))


def desired_sources(etc_apt: Path, codename: str) -> str:
    """Text of our deb-src file: one stanza per distribution deb entry lacking deb-src ('' if none)."""
    entries = read_entries(etc_apt, skip=OWN_FILE)
    have_src: set[tuple[str, str, str]] = set()
    for entry in entries:
        if "deb-src" in entry.types:
            have_src |= entry.triples()
    stanzas: list[str] = []
    for entry in entries:
        if "deb" not in entry.types:
            continue
        suites = [s for s in entry.suites if _is_distro_suite(s, codename)]
        if not suites:
            continue
        missing = Entry(["deb-src"], entry.uris, suites, entry.components, entry.options)
        if missing.triples() <= have_src:
            continue
        lines = [
            "Types: deb-src",
            f"URIs: {' '.join(entry.uris)}",
            f"Suites: {' '.join(suites)}",
        ]
        if entry.components:
            lines.append(f"Components: {' '.join(entry.components)}")
        lines += [f"{k}: {v}" for k, v in entry.options.items() if k in _COPIED_OPTIONS]
        stanzas.append("\n".join(lines))
    if not stanzas:
        return ""
    header = (
        "# Written by edge-provision (edge_provision/artifacts/debian.py):\n"
        "# deb-src twins of this machine's distribution 'deb' entries, for apt-get source/build-dep.\n"
        "# Safe to delete; it is rewritten when needed.\n"
    )
    return header + "\n" + "\n\n".join(stanzas) + "\n"


def ensure_deb_src(
    etc_apt: Path = APT_DIR,
    *,
    os_release: Path = OS_RELEASE,
    update: bool = True,
) -> bool:
    """Make sure every distribution ``deb`` entry has a ``deb-src`` twin; return whether anything changed.

    Idempotent: a second call finds the twins (ours or the machine's own) and changes nothing.
    With ``update`` (default) a change is followed by ``apt-get update`` so that
    ``apt-get source`` works at once; if that fails, the file is put back as it was, so the
    next call tries again. One call at a time on this machine: a builder that finds the file
    written waits until the lists that go with it are in (measured: on a fresh machine the
    amd64 and arm64 builds of one run asked at once, and the second found the file but no
    source package yet).
    """
    own = etc_apt / "sources.list.d" / OWN_FILE
    with locked(artifacts.CACHE_DIR / "deb-src.lock"):
        wanted = desired_sources(etc_apt, distro_codename(os_release))
        current = own.read_text() if own.is_file() else None
        if current == (wanted or None):
            return False
        _write_own(own, wanted)  # '' when the machine has its own deb-src lines: ours would duplicate them
        if update:
            try:
                apt_get_update()
            except DebianError:
                _write_own(own, current or "")
                raise
        return True


def _write_own(own: Path, text: str) -> None:
    """Our deb-src file with ``text``, atomically; removed when ``text`` is empty."""
    if not text:
        own.unlink(missing_ok=True)
        return
    own.parent.mkdir(parents=True, exist_ok=True)
    tmp = own.with_name(f".{OWN_FILE}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(own)


def apt_get_update() -> None:
    """``apt-get update`` of this machine's lists (AptStepError with apt's output when it fails)."""
    run("apt-get update", ["apt-get", "update", "-q"], env=APT_ENV, error=AptStepError)


# -- Debian packages for any architecture ------------------------------------------------------

# apt's view of one release and architecture: a private state (lists, package cache, an empty
# dpkg status) under <cache>/apt/<suite>/<arch>/ and a private sources.list holding this machine's
# distribution `deb` entries moved to that release (:func:`release_sources`; signatures are
# checked with the machine's keyrings, as for any apt run). The machine's own apt state and its
# dpkg architectures are left alone: no `dpkg --add-architecture`. Every architecture, the
# controller's own included, goes through the same options.
APT_LISTS_MAX_AGE = 6 * 3600  # seconds before the private lists are refreshed (apt-get update)


def apt_dir(arch: str, release: str = CONTROLLER_RELEASE) -> Path:
    return artifacts.CACHE_DIR / "apt" / suite(release) / arch


def apt_options(arch: str, release: str = CONTROLLER_RELEASE) -> list[str]:
    """``-o`` options giving apt the private view of ``release`` on ``arch`` (see :func:`apt_dir`)."""
    base = apt_dir(arch, release)
    options = {
        "APT::Architecture": arch,
        "APT::Architectures": arch,
        "Dir::State": f"{base}/state",
        "Dir::State::status": f"{base}/state/status",
        "Dir::Cache": f"{base}/cache",
        "Dir::Etc::SourceList": f"{base}/sources.list",
        "Dir::Etc::SourceParts": f"{base}/sources.list.d",
        "Acquire::Languages": "none",
        "APT::Sandbox::User": "root",
    }
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def apt_sources_list(entries: Sequence[str]) -> str:
    header = "# Written by edge-provision (edge_provision/artifacts/debian.py): this machine's deb entries.\n"
    return header + "".join(f"{entry}\n" for entry in entries)


def _apt(step: str, cmd: Sequence[str], cwd: Path | None = None) -> str:
    """stdout of an apt or dpkg command (AptStepError with its output when it fails)."""
    return run(step, cmd, cwd=cwd, env=APT_ENV, error=AptStepError, stdout_only=True)


def _apt_update(arch: str, release: str, force: bool = False) -> None:
    """Prepare the private apt state of ``release`` on ``arch``; ``apt-get update`` it when new, stale
    or ``force``."""
    base = apt_dir(arch, release)
    for sub in ("state/lists/partial", "cache/archives/partial", "sources.list.d"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "state" / "status").touch()
    entries = release_sources(release)
    if not entries:
        raise DebianError("no apt sources in /etc/apt/sources.list*: downloading packages needs "
                          "a Debian mirror")
    sources = base / "sources.list"
    text = apt_sources_list(entries)
    stamp = base / "state" / "updated"
    if not sources.is_file() or sources.read_text() != text:
        sources.write_text(text)
        force = True
    if force or not stamp.is_file() or time.time() - stamp.stat().st_mtime > APT_LISTS_MAX_AGE:
        _apt(f"apt-get update ({suite(release)} {arch} package lists)",
             ["apt-get", "update", "-q", *apt_options(arch, release)])
        stamp.touch()


def dependency_closure(packages: Sequence[str], arch: str, release: str = CONTROLLER_RELEASE) -> list[str]:
    """``packages`` and everything they Depend/Pre-Depend on, recursively (no Recommends)."""
    out = _apt(
        "resolve package dependencies",
        ["apt-cache", *apt_options(arch, release), "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages],
    )
    names = []
    for line in out.splitlines():
        if line and not line.startswith((" ", "<")):
            name = line.split(":", 1)[0]
            if name not in names:
                names.append(name)
    return names


def _candidates(names: Sequence[str], arch: str, release: str) -> dict[str, str]:
    out = _apt("read candidate versions",
               ["apt-cache", *apt_options(arch, release), "show", "--no-all-versions", *names])
    versions: dict[str, str] = {}
    package = ""
    for line in out.splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1].strip()
        elif line.startswith("Version: ") and package and package not in versions:
            versions[package] = line.split(": ", 1)[1].strip()
    missing = [n for n in names if n not in versions]
    if missing:
        raise DebianError(f"no installable {arch} version of {', '.join(missing)} in the apt lists "
                          f"of {apt_dir(arch, release)}")
    return versions


def debs(packages: Sequence[str], arch: str, release: str = CONTROLLER_RELEASE) -> list[dict[str, str]]:
    """The .deb files of ``packages`` and their dependency closure for ``release`` on ``arch``.

    Downloaded with ``apt-get download`` (apt checks every file against the signed indexes)
    through :func:`apt_options` into ``<cache>/artifacts/debs/<suite>/<arch>/``, reused while the
    candidate version is unchanged; a version the lists replaced (a point release, a security
    update) leaves the cache when its successor arrives (:func:`_prune_superseded`). Returns one
    ``{package, version, path, file, sha256}`` per package, in dependency-closure order.
    """
    cache = artifacts.ARTIFACTS_DIR / "debs" / suite(release) / arch
    cache.mkdir(parents=True, exist_ok=True)
    with locked(apt_dir(arch, release).with_suffix(".lock")):
        _apt_update(arch, release)
        try:
            return _debs(packages, arch, release, cache)
        except DebianError:  # lists older than the mirror (a point release moved a version)
            _apt_update(arch, release, force=True)
            return _debs(packages, arch, release, cache)


def _debs(packages: Sequence[str], arch: str, release: str, cache: Path) -> list[dict[str, str]]:
    closure = dependency_closure(packages, arch, release)
    versions = _candidates(closure, arch, release)
    result = []
    with locked(cache / ".lock"):
        index_file = cache / "index.json"
        index: dict[str, dict[str, str]] = json.loads(index_file.read_text()) if index_file.exists() else {}
        wanted = [n for n in closure if not _cached_deb(cache, index.get(f"{n}={versions[n]}"))]
        if wanted:
            with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
                wanted_versions = [f"{n}={versions[n]}" for n in wanted]
                _apt("download packages",
                     ["apt-get", "download", "-q", *apt_options(arch, release), *wanted_versions],
                     cwd=Path(tmp))
                for deb in sorted(Path(tmp).glob("*.deb")):
                    fields = _apt("read package fields",
                                  ["dpkg-deb", "--show", "--showformat=${Package}\\t${Version}", str(deb)]
                                  ).split("\t")
                    os.replace(deb, cache / deb.name)
                    digest = sha256_file(cache / deb.name)
                    index[f"{fields[0]}={fields[1]}"] = {"file": deb.name, "sha256": digest}
            _prune_superseded(cache, index, versions)
            index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for name in closure:
            entry = index.get(f"{name}={versions[name]}")
            if not _cached_deb(cache, entry):
                raise DebianError(f"apt-get download did not yield {name}={versions[name]}")
            assert entry is not None
            result.append({"package": name, "version": versions[name], "path": str(cache / entry["file"]),
                           "file": entry["file"], "sha256": entry["sha256"]})
    return result


def _prune_superseded(cache: Path, index: dict[str, dict[str, str]], versions: Mapping[str, str]) -> None:
    """Drop from ``index`` and ``cache`` every .deb of a package in ``versions`` at another version
    than its candidate there (this architecture's lists no longer offer it), and the archives
    (:func:`pack_debs`) that packed one. Called with the cache's lock held."""
    stale = {}
    for key, entry in index.items():
        package, version = key.split("=", 1)
        if package in versions and version != versions[package]:
            stale[key] = entry
    if not stale:
        return
    files = {entry["file"] for entry in stale.values()}
    for archive in (cache / "archives").glob("debs-*.tar"):
        with tarfile.open(archive) as tar:
            packed = set(tar.getnames())
        if packed & files:
            archive.unlink()
    for key, entry in stale.items():
        (cache / entry["file"]).unlink(missing_ok=True)
        del index[key]


def _cached_deb(cache: Path, entry: Mapping[str, str] | None) -> bool:
    return bool(entry) and (cache / entry["file"]).is_file() and (  # type: ignore[index]
        sha256_file(cache / entry["file"]) == entry["sha256"]  # type: ignore[index]
    )


def pack_debs(debs: Sequence[Mapping[str, Any]]) -> Path:
    """One uncompressed tar of the .deb files ``debs`` (entries of :func:`debs`, at least one), so
    they travel to a node in one transfer (a copy per file cost 10-13 s each on an emulated VM).

    Members are root-owned, mode 0644. The tar is named by its members' sha256s and kept in
    ``archives/`` beside the .deb files (``<cache>/artifacts/debs/<arch>/archives/``), so the next
    node lacking the same packages reuses it, until one of them is superseded
    (:func:`_prune_superseded`).
    """
    sums = "\n".join(f"{d['sha256']}  {d['file']}" for d in debs)
    name = f"debs-{hashlib.sha256(sums.encode()).hexdigest()[:16]}.tar"
    cache = Path(debs[0]["path"]).parent
    archive = cache / "archives" / name
    with locked(cache / ".lock"):  # not while _prune_superseded removes files
        if not archive.is_file():
            _pack(debs, archive)
    return archive


def _pack(debs: Sequence[Mapping[str, Any]], archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=archive.parent, prefix=".pack-", delete=False) as tmp:
        try:
            with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for deb in debs:
                    tar.add(str(deb["path"]), arcname=str(deb["file"]), filter=_root_owned)
            tmp.close()
            os.replace(tmp.name, archive)  # whole or absent
        except BaseException:
            os.unlink(tmp.name)
            raise


def _root_owned(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    member.mode = 0o644
    return member
