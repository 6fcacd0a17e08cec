"""host_prep on fresh lab hosts, once per engine, each on its own hosts.

The container backend shares the machine's kernel: swap is machine-wide there, so these
hosts get a swap line in /etc/fstab but no active swap (activating one would swap for the
whole machine). net.* sysctls are per host (network namespace) and are exercised fully.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.checks import host_prep
from tests.lab.conftest import EngineRun, LabFleet

LAB_HOSTS = 2
SWAP_LINE = "/swapfile none swap sw 0 0"
VENDOR_SYSCTL = "/etc/sysctl.d/10-network-security.conf"


@pytest.fixture(scope="module", params=["ansible", "pyinfra"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def fleet(engine: str, lab_fleet: LabFleet) -> Iterator[LabFleet]:
    yield lab_fleet


def converge(fleet: LabFleet, engine: str, *extra: str) -> EngineRun:
    if engine == "ansible":
        return fleet.ansible_playbook("--tags", "host_prep", *extra)
    return fleet.pyinfra("--data", "edge_stages=host_prep", *extra)


@pytest.fixture(scope="module")
def cold_run(fleet: LabFleet, engine: str) -> EngineRun:
    # An edge host as a user might hand it over: swap in fstab, Ubuntu's vendor
    # rp_filter=2 file applied, forwarding off.
    fleet.sh("lab-2", f"echo '{SWAP_LINE}' >> /etc/fstab")
    fleet.sh(
        "lab-2",
        f"printf 'net.ipv4.conf.all.rp_filter = 2\\nnet.ipv4.conf.default.rp_filter = 2\\n' > {VENDOR_SYSCTL}"
        f" && sysctl -p {VENDOR_SYSCTL}",
    )
    fleet.sh("lab-1", "sysctl -w net.ipv4.ip_forward=0")
    assert fleet.sh("lab-2", "sysctl -n net.ipv4.conf.all.rp_filter").strip() == "2"
    return converge(fleet, engine).ok()


def test_cold_run_changes_the_hosts(cold_run: EngineRun) -> None:
    assert cold_run.changed > 0


def test_swap_lines_commented_not_deleted(fleet: LabFleet, cold_run: EngineRun) -> None:
    fstab = fleet.sh("lab-2", "cat /etc/fstab").splitlines()
    assert f"# {SWAP_LINE}  # swap disabled by edge-provision" in fstab
    assert SWAP_LINE not in fstab
    host_prep.no_swap_active(fleet.testinfra("lab-2"))


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_kernel_modules_listed_and_present(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    host_prep.kernel_modules_listed_and_present(fleet.testinfra(name))


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_every_sysctl_is_live(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    host_prep.every_sysctl_is_live(fleet.testinfra(name))


def test_sysctl_file_wins_over_vendor_file_at_boot(fleet: LabFleet, cold_run: EngineRun) -> None:
    """Apply the sysctl.d files in boot order (as systemd-sysctl does at boot), for the
    rp_filter keys only so nothing machine-wide is touched: ours must win over 10-…"""
    fleet.sh("lab-2", "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2")
    fleet.sh("lab-2", "/lib/systemd/systemd-sysctl --prefix=net.ipv4.conf.all.rp_filter "
                      "--prefix=net.ipv4.conf.default.rp_filter")
    assert fleet.sh("lab-2", "sysctl -n net.ipv4.conf.all.rp_filter net.ipv4.conf.default.rp_filter").split() == ["1", "1"]
    assert "rp_filter = 2" in fleet.sh("lab-2", f"cat {VENDOR_SYSCTL}")  # vendor file untouched


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_etc_hosts_block_lists_the_fleet(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    host_prep.etc_hosts_block_lists_the_fleet(fleet.testinfra(name), {h.name: h.cluster_address for h in fleet.hosts})


def test_preflight_facts_reported(cold_run: EngineRun) -> None:
    out = cold_run.output
    for fact in ("x86_64", "Debian GNU/Linux 12", "cgroup", "systemd PID 1"):
        assert fact in out, fact


def test_second_run_changes_nothing(fleet: LabFleet, engine: str, cold_run: EngineRun) -> None:
    again = converge(fleet, engine).ok()
    assert again.changed == 0, again.output[-6000:]


def test_the_other_engine_finds_nothing_to_change(fleet: LabFleet, engine: str, cold_run: EngineRun) -> None:
    """Both engines reach the same host state: after one converged the hosts, the other
    (Ansible in --check mode, pyinfra for real) has nothing left to do."""
    other = "pyinfra" if engine == "ansible" else "ansible"
    extra = ("--check", "--diff") if other == "ansible" else ()
    result = converge(fleet, other, *extra).ok()
    assert result.changed == 0, result.output[-6000:]


def test_ansible_check_mode_on_converged_hosts(fleet: LabFleet, cold_run: EngineRun) -> None:
    result = fleet.ansible_playbook("--tags", "host_prep", "--check").ok()
    assert result.changed == 0, result.output[-6000:]
