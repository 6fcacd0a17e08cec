"""Stage host_prep for pyinfra: the same work as roles/host_prep, from the same files."""

from __future__ import annotations

from io import StringIO
from typing import Any

from pyinfra.api.deploy import deploy
from pyinfra.context import host, inventory
from pyinfra.operations import files

from edge_provision.inventory import cluster_members
from edge_provision.pyinfra_engine.deploys.common import fleet
from edge_provision.pyinfra_engine.facts.host_prep import Preflight
from edge_provision.pyinfra_engine.operations import host_prep as operations
from edge_provision.role_files import render_template, role_vars

ROLE = "host_prep"


@deploy("Host prep")
def host_prep() -> None:
    v = role_vars(ROLE, host.data.dict())
    edge_arch = fleet("edge_arch")

    operations.preflight_checked(
        name="Preflight", edge_arch=edge_arch, arch_names=v["host_prep_arch_names"],
    )
    systemd = bool(host.get_fact(Preflight)["systemd_pid1"])

    if v["host_prep_swap_off"]:
        operations.swap_off(name="Turn swap off now")
        operations.fstab_swap_commented(
            name="Comment out swap lines in /etc/fstab",
            regexp=v["host_prep_fstab_swap_regexp"],
            replace=v["host_prep_fstab_swap_replace"],
            reload_systemd=systemd,
        )
        if systemd:
            operations.swap_units_masked(name="Mask swap units")

    files.put(
        name="List kernel modules for boot",
        src=StringIO(render_template(ROLE, "modules-load.conf.j2", v)),
        dest=v["host_prep_modules_load_file"],
        user="root", group="root", mode="644",
    )
    operations.kernel_modules_loaded(
        name="Load missing kernel modules", modules=v["host_prep_kernel_modules"],
    )

    files.put(
        name="Write kernel parameters",
        src=StringIO(render_template(ROLE, "sysctl.conf.j2", v)),
        dest=v["host_prep_sysctl_file"],
        user="root", group="root", mode="644",
    )
    operations.sysctl_applied(
        name="Apply and verify kernel parameters live",
        path=v["host_prep_sysctl_file"], settings=v["host_prep_sysctl"],
    )

    if v["host_prep_manage_etc_hosts"]:
        etc_hosts_block(v)


def etc_hosts_block(v: dict[str, Any]) -> None:
    """The managed block of fleet members in /etc/hosts (roles/host_prep/tasks/etc_hosts.yml),
    without the hosts of ``host_prep_hosts_exclude``."""
    members = cluster_members(
        (h.data.dict() for h in inventory if set(h.data.get("edge_groups", ()))),
        v["host_prep_hosts_exclude"],
    )
    files.block(
        name="Keep every fleet member in /etc/hosts",
        path=v["host_prep_hosts_file"],
        content=render_template(ROLE, "hosts_block.j2", {**v, "host_prep_cluster_members": members}).strip(),
        marker=v["host_prep_hosts_block_marker"], begin="BEGIN", end="END",
    )
