"""The commands each pyinfra operation generates for given facts (no host needed)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.exceptions import OperationError
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.files import FileContents

from edge_provision.pyinfra_engine.facts import host_prep as facts
from edge_provision.pyinfra_engine.facts.common import OsRelease
from edge_provision.pyinfra_engine.operations import host_prep as operations
from edge_provision.role_files import role_defaults

DEFAULTS = role_defaults("host_prep")


def commands(op: Any, known: dict[type, Any], **kwargs: Any) -> list[str]:
    """Run an operation's generator against ``known`` facts; return its commands as text."""
    inventory = Inventory((["edge-1"], {}))
    state = State(inventory, Config())
    host = inventory.get_host("edge-1")

    def get_fact(cls: type, *args: Any, **fact_kwargs: Any) -> Any:
        value = known.get(cls)
        return value(**fact_kwargs) if callable(value) else value

    with ctx_state.use(state), ctx_host.use(host), mock.patch.object(host, "get_fact", get_fact):
        return [_text(c) for c in op._inner(**kwargs)]


def _text(command: Any) -> str:
    if isinstance(command, str):
        return command
    return type(command).__name__ + ":" + " ".join(str(a) for a in getattr(command, "args", ()))


def test_swap_off_only_when_swap_is_active() -> None:
    assert commands(operations.swap_off, {facts.ActiveSwaps: ["/swapfile"]}) == ["swapoff -a"]
    assert commands(operations.swap_off, {facts.ActiveSwaps: []}) == []


FSTAB = [
    "UUID=abc / ext4 errors=remount-ro 0 1",
    "/swapfile none swap sw 0 0",
    "UUID=def none swap sw,pri=5 0 0",
    "# /old-swap none swap sw 0 0",
]


def test_fstab_swap_lines_are_commented_not_deleted() -> None:
    out = commands(
        operations.fstab_swap_commented,
        {FileContents: FSTAB},
        regexp=DEFAULTS["host_prep_fstab_swap_regexp"],
        replace=DEFAULTS["host_prep_fstab_swap_replace"],
        reload_systemd=True,
    )
    assert [c for c in out if c.startswith("FileUploadCommand:")]
    assert out[-1] == "systemctl daemon-reload"


def test_fstab_rewrite_keeps_every_line() -> None:
    text = "\n".join(FSTAB) + "\n"
    new = re.sub(
        DEFAULTS["host_prep_fstab_swap_regexp"], DEFAULTS["host_prep_fstab_swap_replace"], text,
        flags=re.MULTILINE,
    )
    lines = new.splitlines()
    assert lines[0] == FSTAB[0]
    assert lines[1] == "# /swapfile none swap sw 0 0  # swap disabled by edge-provision"
    assert lines[2].startswith("# UUID=def none swap")
    assert lines[3] == FSTAB[3]  # already commented: left alone
    assert re.sub(DEFAULTS["host_prep_fstab_swap_regexp"], "", new, flags=re.MULTILINE) == new


def test_fstab_without_swap_is_left_alone() -> None:
    out = commands(
        operations.fstab_swap_commented,
        {FileContents: [FSTAB[0], FSTAB[3]]},
        regexp=DEFAULTS["host_prep_fstab_swap_regexp"],
        replace=DEFAULTS["host_prep_fstab_swap_replace"],
        reload_systemd=True,
    )
    assert out == []


def test_only_unmasked_swap_units_are_masked() -> None:
    units = {"swapfile.swap": "loaded", "dev-sda2.swap": "masked", "dev-zram0.swap": "not-found"}
    assert commands(operations.swap_units_masked, {facts.SwapUnits: units}) == [
        "systemctl mask dev-zram0.swap",
        "systemctl mask swapfile.swap",
    ]
    assert commands(operations.swap_units_masked, {facts.SwapUnits: {"a.swap": "masked"}}) == []


def paths_fact(existing: set[str]) -> Callable[..., list[str]]:
    return lambda paths: [p for p in paths if p in existing]


MODULES = DEFAULTS["host_prep_kernel_modules"]


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (set(), ["modprobe br_netfilter", "modprobe overlay"]),
        # built into the kernel: no /sys/module entry for br_netfilter, its sysctl tree exists
        ({"/proc/sys/net/bridge", "/sys/module/overlay"}, []),
        ({"/sys/module/br_netfilter"}, ["modprobe overlay"]),
    ],
)
def test_modules_probed_only_when_absent(existing: set[str], expected: list[str]) -> None:
    out = commands(
        operations.kernel_modules_loaded, {facts.ExistingPaths: paths_fact(existing)}, modules=MODULES
    )
    assert out == expected


SYSCTL = DEFAULTS["host_prep_sysctl"]
SYSCTL_FILE = DEFAULTS["host_prep_sysctl_file"]


def test_sysctl_applied_and_verified_when_a_value_differs() -> None:
    live = ["1"] * len(SYSCTL)
    live[2] = "2"
    (cmd,) = commands(
        operations.sysctl_applied, {facts.SysctlValues: live}, path=SYSCTL_FILE, settings=SYSCTL
    )
    assert cmd.startswith(f"sysctl -p {SYSCTL_FILE} >/dev/null && ")
    assert "sysctl -n " + " ".join(sorted(SYSCTL)) in cmd
    assert "exit 1" in cmd


def test_sysctl_untouched_when_live() -> None:
    live = [str(SYSCTL[k]) for k in sorted(SYSCTL)]
    assert commands(
        operations.sysctl_applied, {facts.SysctlValues: live}, path=SYSCTL_FILE, settings=SYSCTL
    ) == []


def preflight(arch: str) -> dict[str, Any]:
    return {"architecture": arch, "kernel": "6.1.0", "cgroup": "v2", "systemd_pid1": True}


DEBIAN_13 = {"release": "debian-13", "pretty_name": "Debian GNU/Linux 13 (trixie)"}


def test_preflight_accepts_the_declared_architecture() -> None:
    assert commands(
        operations.preflight_checked, {facts.Preflight: preflight("aarch64"), OsRelease: DEBIAN_13},
        edge_arch="arm64", arch_names=DEFAULTS["host_prep_arch_names"],
    ) == []


def test_preflight_rejects_a_wrong_architecture() -> None:
    with pytest.raises(OperationError, match="field 'edge_arch' says arm64 but the machine is x86_64"):
        commands(
            operations.preflight_checked, {facts.Preflight: preflight("x86_64"), OsRelease: DEBIAN_13},
            edge_arch="arm64", arch_names=DEFAULTS["host_prep_arch_names"],
        )


def test_preflight_rejects_an_unsupported_release_naming_host_and_release() -> None:
    ubuntu = {"release": "ubuntu-24", "pretty_name": "Ubuntu 24.04.1 LTS"}
    with pytest.raises(OperationError, match=r"host edge-1 runs Ubuntu 24.04.1 LTS: unsupported OS release "
                                             r"'ubuntu-24'; supported: debian-12, debian-13"):
        commands(
            operations.preflight_checked, {facts.Preflight: preflight("x86_64"), OsRelease: ubuntu},
            edge_arch="amd64", arch_names=DEFAULTS["host_prep_arch_names"],
        )


def test_os_release_fact_reads_the_edge_roles_script() -> None:
    fact = OsRelease()
    assert "VERSION_ID%%.*" in fact.command()
    assert fact.process(["debian-13", "Debian GNU/Linux 13 (trixie)"]) == DEBIAN_13
    assert fact.process([]) == {"release": "unknown", "pretty_name": "unknown"}


def test_fact_parsers() -> None:
    assert facts.ActiveSwaps().process(
        ["Filename Type Size Used Priority", "/swapfile file 1024 0 -2"]
    ) == ["/swapfile"]
    assert facts.SwapUnits().process(["swapfile.swap loaded active active /swapfile"]) == {
        "swapfile.swap": "loaded"
    }
    assert facts.SysctlValues().process(["1", " 0 "]) == ["1", "0"]
    assert facts.ExistingPaths().command(paths=["/a b"]).startswith("for p in '/a b';")
