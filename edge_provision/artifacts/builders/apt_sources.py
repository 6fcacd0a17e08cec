"""Enable Debian source packages (``deb-src``) for ``apt-get source`` / ``apt-get build-dep``.

The least invasive way: the machine's own ``deb`` entries stay untouched; one extra file,
``sources.list.d/edge-provision-src.sources``, holds a ``Types: deb-src`` stanza copying the
URIs / Suites / Components / Signed-By of each distribution ``deb`` entry that has no
``deb-src`` twin yet. Only entries of the running distribution (their suite is the
``VERSION_CODENAME`` of ``/etc/os-release`` or ``<codename>-*``) are copied: third-party
repositories (nodesource, cloud SDKs, ...) rarely publish sources, and a ``deb-src`` line
for them would make ``apt-get update`` fail or warn.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edge_provision import artifacts

APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")
OWN_FILE = "edge-provision-src.sources"

# one-line format option names -> deb822 field names
_ONE_LINE_OPTIONS = {
    "arch": "Architectures",
    "signed-by": "Signed-By",
    "trusted": "Trusted",
    "lang": "Languages",
    "target": "Targets",
}


@dataclass
class Entry:
    """One repository entry of either sources format, normalised to deb822 fields."""

    types: list[str]
    uris: list[str]
    suites: list[str]
    components: list[str]
    options: dict[str, str] = field(default_factory=dict)
    enabled: bool = True

    def triples(self) -> set[tuple[str, str, str]]:
        comps = self.components or [""]  # flat repositories ("suite/") have no component
        return {(_norm_uri(u), s, c) for u in self.uris for s in self.suites for c in comps}


class AptSourcesError(RuntimeError):
    """The apt configuration could not be read, written, or refreshed."""


def _norm_uri(uri: str) -> str:
    return uri.rstrip("/")


def parse_deb822(text: str) -> list[Entry]:
    """Parse the stanzas of a ``*.sources`` file (comments and continuation lines handled)."""
    entries: list[Entry] = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key: str | None = None
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line
                continue
            if ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "types" not in fields:
            continue
        extra = {
            k: v
            for k, v in fields.items()
            if k not in {"types", "uris", "suites", "components", "enabled"}
        }
        entries.append(
            Entry(
                types=fields["types"].split(),
                uris=fields.get("uris", "").split(),
                suites=fields.get("suites", "").split(),
                components=fields.get("components", "").split(),
                options={_deb822_name(k): v for k, v in extra.items()},
                enabled=fields.get("enabled", "yes").strip().lower() not in {"no", "false", "0"},
            )
        )
    return entries


def _deb822_name(key: str) -> str:
    return "-".join(part.capitalize() for part in key.split("-"))


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
        entries.append(Entry([kind], [words[0]], [words[1]], words[2:], options))
    return entries


def read_entries(apt_dir: Path = APT_DIR, *, skip: str | None = None) -> list[Entry]:
    """Every enabled entry apt reads: ``sources.list``, ``sources.list.d/*.list`` and ``*.sources``."""
    entries: list[Entry] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        entries += parse_one_line(main_list.read_text())
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.name == skip or not path.is_file():
                continue
            if path.suffix == ".list":
                entries += parse_one_line(path.read_text())
            elif path.suffix == ".sources":
                entries += parse_deb822(path.read_text())
    return [e for e in entries if e.enabled]


def distro_codename(os_release: Path = OS_RELEASE) -> str:
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise AptSourcesError(f"no VERSION_CODENAME in {os_release}: cannot tell distribution suites apart")


def _is_distro_suite(suite: str, codename: str) -> bool:
    return suite == codename or suite.startswith((f"{codename}-", f"{codename}/"))


def desired_sources(apt_dir: Path, codename: str) -> str:
    """Text of our deb-src file: one stanza per distribution deb entry lacking deb-src ('' if none)."""
    entries = read_entries(apt_dir, skip=OWN_FILE)
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
        "# Written by edge-provision (edge_provision/artifacts/builders/apt_sources.py):\n"
        "# deb-src twins of this machine's distribution 'deb' entries, for apt-get source/build-dep.\n"
        "# Safe to delete; it is rewritten when needed.\n"
    )
    return header + "\n" + "\n\n".join(stanzas) + "\n"


_COPIED_OPTIONS = {"Signed-By", "Trusted", "Check-Valid-Until", "Check-Date"}


def ensure_deb_src(
    apt_dir: Path = APT_DIR,
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
    own = apt_dir / "sources.list.d" / OWN_FILE
    with artifacts.locked(artifacts.CACHE_DIR / "deb-src.lock"):
        wanted = desired_sources(apt_dir, distro_codename(os_release))
        current = own.read_text() if own.is_file() else None
        if current == (wanted or None):
            return False
        _write_own(own, wanted)  # '' when the machine has its own deb-src lines: ours would duplicate them
        if update:
            try:
                apt_get_update()
            except AptSourcesError:
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
    proc = subprocess.run(
        ["apt-get", "update", "-q"],
        text=True,
        capture_output=True,
        check=False,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise AptSourcesError(f"apt-get update failed (exit {proc.returncode}):\n{tail}")
