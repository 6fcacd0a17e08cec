"""Stage host_prep on one host (a testinfra host): what the stage leaves behind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import testinfra

from edge_provision.role_files import role_defaults

HOST_PREP = role_defaults("host_prep")
HOSTS_BLOCK_BEGIN = "# BEGIN edge-provision cluster members"
HOSTS_BLOCK_END = "# END edge-provision cluster members"


def kernel_modules_listed_and_present(host: testinfra.host.Host, values: Mapping[str, Any] = HOST_PREP) -> None:
    """Every module of host_prep_kernel_modules is listed in the modules-load file and loaded
    (or built in): one of its present_paths exists."""
    listed = host.file(values["host_prep_modules_load_file"]).content_string.split()
    for module in values["host_prep_kernel_modules"]:
        assert module["name"] in listed
        present = [p for p in module["present_paths"] if host.file(p).exists]
        assert present, f"{module['name']}: none of {module['present_paths']} exists on {host.backend.get_hostname()}"


def every_sysctl_is_live(host: testinfra.host.Host, values: Mapping[str, Any] = HOST_PREP) -> None:
    """Every host_prep_sysctl value is live and written to the sysctl file (mode 0644)."""
    for key, value in values["host_prep_sysctl"].items():
        assert host.sysctl(key) == value, key
    text = host.file(values["host_prep_sysctl_file"]).content_string
    assert host.file(values["host_prep_sysctl_file"]).mode == 0o644
    for key, value in values["host_prep_sysctl"].items():
        assert f"{key} = {value}" in text.splitlines()


def etc_hosts_block_lists_the_fleet(host: testinfra.host.Host, members: Mapping[str, str]) -> None:
    """The managed /etc/hosts block holds exactly ``members`` (name -> cluster address), by name."""
    lines = host.check_output("cat /etc/hosts").splitlines()
    begin = lines.index(HOSTS_BLOCK_BEGIN)
    end = lines.index(HOSTS_BLOCK_END)
    assert lines[begin + 1:end] == [f"{members[name]} {name}" for name in sorted(members)]


def no_swap_active(host: testinfra.host.Host) -> None:
    assert host.check_output("tail -n +2 /proc/swaps").strip() == ""
