"""containerd's config.toml with a separate Wasm runtime handler, for both config schemas.

containerd 1.6/1.7 read config version 2, where the CRI plugin is
``plugins."io.containerd.grpc.v1.cri"``; containerd 2.x reads version 3, where runtimes
live under ``plugins."io.containerd.cri.v1.runtime"`` and the sandbox image under
``plugins."io.containerd.cri.v1.images".pinned_images``. Writing the old paths into a
2.x config is silently ignored, so the schema follows the installed version.

The document is edited with tomlkit (comments, order and every other setting kept); only
the keys below are set, and existing runtime tables are never replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.items import Table

WASM_ANNOTATIONS = ("module.wasm.image/variant", "run.oci.handler")


@dataclass(frozen=True)
class Schema:
    version: int
    runtimes: tuple[str, ...]  # table that holds containerd.runtimes.<name>
    sandbox_image: tuple[str, ...]  # (table..., key)
    restrict_oom_score_adj: tuple[str, ...]
    cni_bin_dir: tuple[str, ...]


SCHEMAS = {
    2: Schema(
        version=2,
        runtimes=("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
        sandbox_image=("plugins", "io.containerd.grpc.v1.cri", "sandbox_image"),
        restrict_oom_score_adj=("plugins", "io.containerd.grpc.v1.cri", "restrict_oom_score_adj"),
        cni_bin_dir=("plugins", "io.containerd.grpc.v1.cri", "cni", "bin_dir"),
    ),
    3: Schema(
        version=3,
        runtimes=("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
        sandbox_image=("plugins", "io.containerd.cri.v1.images", "pinned_images", "sandbox"),
        restrict_oom_score_adj=("plugins", "io.containerd.cri.v1.runtime", "restrict_oom_score_adj"),
        cni_bin_dir=("plugins", "io.containerd.cri.v1.runtime", "cni", "bin_dir"),
    ),
}


class ContainerdConfigError(ValueError):
    pass


def schema_for(containerd_version: str) -> Schema:
    """Config schema of an installed containerd (``1.6.20~ds1-1`` → 2, ``2.0.2`` → 3)."""
    digits = containerd_version.lstrip("v").split(".", 1)[0]
    if not digits.isdigit():
        raise ContainerdConfigError(f"cannot read a containerd version from {containerd_version!r}")
    return SCHEMAS[3] if int(digits) >= 2 else SCHEMAS[2]


def with_wasm_handler(
    current: str,
    *,
    schema: Schema,
    handler: str,
    binary: str,
    systemd_cgroup: bool,
    sandbox_image: str,
    restrict_oom_score_adj: bool,
    cni_bin_dir: str = "",
    annotations: Sequence[str] = WASM_ANNOTATIONS,
    systemd_cgroup_runtimes: Sequence[str] = ("runc",),
) -> str:
    """``current`` (config.toml text, may be empty) with the Wasm handler and CRI settings."""
    try:
        doc = tomlkit.parse(current)
    except tomlkit.exceptions.ParseError as exc:
        raise ContainerdConfigError(f"the current config is not valid TOML: {exc}") from None
    found = doc.get("version")
    if current.strip() and found != schema.version:
        raise ContainerdConfigError(
            f"the current config is version {found}, this containerd reads version {schema.version}: "
            "regenerate it with `containerd config default` (or remove it)"
        )
    doc["version"] = schema.version

    runtimes = subtable(doc, schema.runtimes)
    _set_wasm_handler(runtimes, handler, binary, systemd_cgroup, annotations)
    for name in systemd_cgroup_runtimes:
        if name in runtimes:  # set the key, never redefine someone else's runtime table
            subtable(runtimes[name], ("options",))["SystemdCgroup"] = systemd_cgroup

    *sandbox_path, sandbox_key = schema.sandbox_image
    subtable(doc, tuple(sandbox_path))[sandbox_key] = sandbox_image
    *oom_path, oom_key = schema.restrict_oom_score_adj
    subtable(doc, tuple(oom_path))[oom_key] = restrict_oom_score_adj
    if cni_bin_dir:  # Debian's containerd looks in /usr/lib/cni, upstream's in /opt/cni/bin
        *cni_path, cni_key = schema.cni_bin_dir
        subtable(doc, tuple(cni_path))[cni_key] = cni_bin_dir
    return tomlkit.dumps(doc)


def wasm_handler_tables(
    *,
    schema: Schema,
    handler: str,
    binary: str,
    systemd_cgroup: bool,
    annotations: Sequence[str] = WASM_ANNOTATIONS,
) -> str:
    """Only the Wasm handler's tables, to append to a config someone else generates (k3s's
    ``{{ template "base" . }}``): leaf table headers, no ``version`` and no parent tables, so
    the result merges with the base document instead of redefining any of its tables."""
    doc = tomlkit.document()
    parent: Any = doc
    for key in schema.runtimes:
        parent[key] = tomlkit.table(is_super_table=True)
        parent = parent[key]
    _set_wasm_handler(parent, handler, binary, systemd_cgroup, annotations)
    return tomlkit.dumps(doc)


def _set_wasm_handler(
    runtimes: Any, handler: str, binary: str, systemd_cgroup: bool, annotations: Sequence[str]
) -> None:
    wasm = subtable(runtimes, (handler,))
    wasm["runtime_type"] = "io.containerd.runc.v2"
    wasm["pod_annotations"] = _merged(wasm.get("pod_annotations"), annotations)
    wasm["container_annotations"] = _merged(wasm.get("container_annotations"), annotations)
    options = subtable(wasm, ("options",))
    options["BinaryName"] = binary
    options["SystemdCgroup"] = systemd_cgroup


def runtime_handler(text: str, schema: Schema, handler: str) -> dict[str, Any]:
    """The handler's table from a config's text, as plain values (for checks and tests)."""
    node: Any = tomlkit.parse(text).unwrap()
    for key in (*schema.runtimes, handler):
        node = node[key]
    result: dict[str, Any] = node
    return result


def subtable(parent: Any, path: tuple[str, ...]) -> Any:
    """The table at ``path`` under ``parent``, made (empty) where missing."""
    node = parent
    for key in path:
        if key not in node:
            node[key] = tomlkit.table()
        node = node[key]
        if not isinstance(node, (Table, dict)):
            raise ContainerdConfigError(f"'{key}' in the current config is not a table")
    return node


def _merged(existing: Any, wanted: Sequence[str]) -> list[str]:
    values = [str(v) for v in (existing or [])]
    return values + [a for a in wanted if a not in values]
