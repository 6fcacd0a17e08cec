"""Per-host options of `edge-provision lab up`: one value for every host, or one each."""

from __future__ import annotations

from collections.abc import Sequence

from edge_provision.artifacts.debian import CONTROLLER_RELEASE, RELEASES
from edge_provision.lab.dockerd import LabError


def per_host(values: Sequence[str] | None, count: int, option: str) -> list[str]:
    """One value per host from a ``--option`` list: none or one -> every host, else one each."""
    given = [v.strip() for v in (values or [])]
    if len(given) <= 1:
        return given * count if given and given[0] else [""] * count
    if len(given) != count:
        raise LabError(f"--{option} lists {len(given)} values for {count} hosts; give one, or one per host")
    return given


def parse_releases(releases: Sequence[str] | None, count: int) -> list[str]:
    """The Debian release of each host (``--os``): none given -> Debian 12, one -> all, else one each."""
    wanted = [r or CONTROLLER_RELEASE for r in per_host(releases, count, "os")]
    unknown = sorted(set(wanted) - set(RELEASES))
    if unknown:
        raise LabError(f"unknown --os {', '.join(unknown)}; choose from: {', '.join(RELEASES)}")
    return wanted
