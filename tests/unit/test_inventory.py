"""The fleet inventory: one loader for both engines, and validation before any host is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_provision import inventory
from tests.conftest import ROOT, run, tool

EXAMPLE = ROOT / "inventories" / "example"

GOOD = """
all:
  vars:
    edge_cluster_distribution: k3s
  children:
    control_plane:
      hosts:
        cp: {ansible_host: 192.0.2.1}
    edge:
      vars:
        edge_arch: arm64
        edge_node_labels: {site: north}
      hosts:
        cam: {ansible_host: 192.0.2.2, edge_node_labels: {device: camera}}
        gw: {ansible_host: gw.example.org, ansible_port: 2222}
"""


def test_example_fleet_passes_check() -> None:
    result = run([tool("edge-provision"), "check", "-i", "inventories/example"])
    assert result.returncode == 0, result.stderr
    assert "OK, 3 host(s)" in result.stdout


def test_precedence_follows_ansible(write_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = inventory.load(write_fleet(GOOD, "edge_wasm_engine: wasmtime\n"))
    hosts = {h.name: h for h in fleet.hosts}
    assert hosts["cp"].vars["edge_arch"] == "amd64"  # fleet default
    assert hosts["cam"].vars["edge_arch"] == "arm64"  # group vars
    assert hosts["cam"].vars["edge_node_labels"] == {"device": "camera"}  # host replaces group
    assert hosts["gw"].vars["edge_node_labels"] == {"site": "north"}
    assert hosts["gw"].vars["edge_wasm_engine"] == "wasmtime"  # group_vars/all.yml
    assert hosts["cp"].vars["edge_cluster_distribution"] == "k3s"
    assert [h.name for h in fleet.group("edge")] == ["cam", "gw"]


def test_pyinfra_sees_what_ansible_sees() -> None:
    """Every variable ansible-inventory reports for a host is in pyinfra's host data."""
    listed = run([tool("ansible-inventory"), "-i", str(EXAMPLE), "--list"])
    assert listed.returncode == 0, listed.stderr
    ansible_vars = json.loads(listed.stdout)["_meta"]["hostvars"]
    groups = inventory.pyinfra_groups(EXAMPLE / "inventory.py")
    pyinfra_hosts = {name: data for group in groups for name, data in group}
    assert set(pyinfra_hosts) == set(ansible_vars) == {"cp-1", "cam-1", "gw-1"}
    for name, variables in ansible_vars.items():
        data = pyinfra_hosts[name]
        for key, value in variables.items():
            assert data[key] == value, (name, key)
        assert data["ssh_hostname"] == variables["ansible_host"]
        assert data["ssh_port"] == variables.get("ansible_port", 22)
        assert data.get("ssh_user") == variables.get("ansible_user")


def test_pyinfra_honours_ansible_ssh_options(write_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = write_fleet(
        GOOD,
        'ansible_ssh_private_key_file: /k/id\n'
        'ansible_ssh_common_args: "-o UserKnownHostsFile=/k/known -o StrictHostKeyChecking=yes"\n',
    )
    (cp,), _ = inventory.pyinfra_groups(fleet / "inventory.py")
    assert cp[1]["ssh_key"] == "/k/id"
    assert cp[1]["ssh_known_hosts_file"] == "/k/known"
    assert cp[1]["ssh_strict_host_key_checking"] == "yes"


def test_cluster_members_use_node_ip_when_given() -> None:
    members = inventory.cluster_members(
        [
            {"inventory_hostname": "b", "ansible_host": "192.0.2.2", "edge_node_ip": "10.0.0.2"},
            {"inventory_hostname": "a", "ansible_host": "192.0.2.1"},
        ]
    )
    assert members == [{"name": "a", "address": "192.0.2.1"}, {"name": "b", "address": "10.0.0.2"}]


def _fleet(body: str) -> str:
    return "all:\n  children:\n" + textwrap.indent(textwrap.dedent(body), "    ")


CP = "control_plane:\n  hosts:\n    cp: {ansible_host: 192.0.2.1}\n"

# (case, hosts.yml, fragments every one of which the error must contain)
MALFORMED = [
    ("a misspelt variable of ours",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_lables: {device: camera}}\n"),
     ["host 'e1'", "field 'edge_node_lables'", "unknown variable", "did you mean 'edge_node_labels'?"]),
    ("a misspelt role variable under all: vars, one line for every host",
     "all:\n  vars:\n    containerd_install_frm: apt\n  children:\n" + textwrap.indent(
         CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2}\n", "    "),
     ["hosts 'cp', 'e1'", "field 'containerd_install_frm'", "did you mean 'containerd_install_from'?"]),
    ("a fleet-wide value that differs between hosts (kubeadm control plane, k3s edge host)",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_cluster_distribution: k3s}\n"),
     ["field 'edge_cluster_distribution'", "differs between hosts", "'k3s': e1", "'kubeadm': cp", "fleet-wide"]),
    ("a host in neither node group",
     _fleet(CP + "bastions:\n  hosts:\n    b1: {ansible_host: 192.0.2.9}\n"),
     ["host 'b1'", "in none of the groups control_plane, edge", "no stage would provision it"]),
    ("a host listed twice under one group",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2}\n    e1: {ansible_host: 192.0.2.3}\n"),
     ["key 'e1' appears twice", "lines 8 and 9", "silently lost"]),
    ("a role variable of the wrong type, caught before any host is contacted",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, kubernetes_node_ready_timeout: soon}\n"),
     ["host 'e1'", "field 'kubernetes_node_ready_timeout'", "unable to convert to int"]),
    ("a role variable outside its choices",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, containerd_install_from: tarball}\n"),
     ["host 'e1'", "field 'containerd_install_from'", "must be one of: controller, apt, release"]),
    ("a Kubernetes version YAML reads as a number",
     "all:\n  vars:\n    edge_kubernetes_version: 1.34\n  children:\n" + textwrap.indent(CP, "    "),
     ["field 'edge_kubernetes_version'", "unknown value 1.34", "quote it"]),
    ("unknown distribution",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_cluster_distribution: microk8s}\n"),
     ["host 'e1'", "field 'edge_cluster_distribution'", "'microk8s'", "kubeadm, k3s, kubeedge, openyurt"]),
    ("an existing control plane with k3s",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_cluster_distribution: k3s,"
                " edge_cluster_control_plane: existing}\n"),
     ["host 'e1'", "field 'edge_cluster_control_plane'", "kubeedge and openyurt only", "use 'provision'"]),
    ("missing address",
     _fleet(CP + "edge:\n  hosts:\n    e1: {edge_arch: arm64}\n"),
     ["host 'e1'", "field 'ansible_host'", "missing address"]),
    ("address that is not an address",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 'not an address!'}\n"),
     ["host 'e1'", "field 'ansible_host'", "neither an IP address nor a host name"]),
    ("bad label key",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_labels: {'Bad Key!': x}}\n"),
     ["host 'e1'", "field 'edge_node_labels'", "label key 'Bad Key!'"]),
    ("bad label prefix",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_labels: {'Example.COM/x': y}}\n"),
     ["host 'e1'", "field 'edge_node_labels'", "prefix must be a lowercase DNS subdomain"]),
    ("bad label value",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_labels: {device: 'usb camera'}}\n"),
     ["host 'e1'", "field 'edge_node_labels'", "value 'usb camera'"]),
    ("label value of the wrong type",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_labels: {gpu: true}}\n"),
     ["host 'e1'", "field 'edge_node_labels'", "a boolean", "quote it"]),
    ("duplicate addresses",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.1}\n"),
     ["'cp', 'e1'", "field 'ansible_host'", "duplicate address 192.0.2.1:22"]),
    ("edge nodes without a control plane",
     _fleet("edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2}\n"),
     ["group 'edge'", "group 'control_plane' has none"]),
    ("port of the wrong type",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, ansible_port: ssh}\n"),
     ["host 'e1'", "field 'ansible_port'", "integer from 1 to 65535"]),
    ("labels of the wrong type",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_labels: [camera]}\n"),
     ["host 'e1'", "field 'edge_node_labels'", "must be a mapping", "a list"]),
    ("unknown architecture",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_arch: armhf}\n"),
     ["host 'e1'", "field 'edge_arch'", "'armhf'", "amd64, arm64"]),
    ("unknown wasm engine",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_wasm_engine: wamr}\n"),
     ["host 'e1'", "field 'edge_wasm_engine'", "wasmedge, wasmtime"]),
    ("host in both node groups",
     _fleet(CP + "edge:\n  hosts:\n    cp:\n"),
     ["host 'cp'", "both 'control_plane' and 'edge'"]),
    ("host variables of the wrong type",
     _fleet(CP + "edge:\n  hosts:\n    e1: [192.0.2.2]\n"),
     ["host 'e1'", "must be a mapping", "a list"]),
    ("group field of the wrong type",
     _fleet(CP + "edge:\n  hosts: [e1, e2]\n"),
     ["group 'edge'", "field 'hosts'", "must be a mapping"]),
    ("not YAML",
     "all:\n  children: [\n",
     ["not valid YAML", "line"]),
    ("node address not an IP",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_ip: gateway}\n"),
     ["host 'e1'", "field 'edge_node_ip'", "must be an IP address"]),
    ("taint with an unknown effect",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_taints: [{key: a, effect: Never}]}\n"),
     ["host 'e1'", "field 'edge_node_taints'", "effect 'Never' must be one of"]),
    ("taints not a list",
     _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_node_taints: {key: a}}\n"),
     ["host 'e1'", "field 'edge_node_taints'", "must be a list"]),
]


@pytest.mark.parametrize(("case", "hosts_yml", "fragments"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_fleet_is_rejected_by_check(write_fleet, case, hosts_yml, fragments) -> None:  # type: ignore[no-untyped-def]
    fleet = write_fleet(hosts_yml)
    result = run([tool("edge-provision"), "check", "-i", str(fleet)])
    assert result.returncode == 2, (case, result.stdout)
    assert "Traceback" not in result.stderr
    assert "no host was touched" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (case, fragment, result.stderr)


def test_every_problem_is_reported_at_once(write_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = write_fleet(
        _fleet(CP + "edge:\n  hosts:\n    e1: {edge_arch: sparc}\n    e2: {ansible_host: 192.0.2.1}\n")
    )
    with pytest.raises(inventory.InventoryError) as caught:
        inventory.load(fleet)
    text = caught.value.render()
    assert "host 'e1': field 'ansible_host'" in text
    assert "host 'e1': field 'edge_arch'" in text
    assert "duplicate address" in text


def test_missing_fleet_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = run([tool("edge-provision"), "check", "-i", str(tmp_path / "nowhere")])
    assert result.returncode == 2
    assert "no inventory file" in result.stderr
    assert "Traceback" not in result.stderr


# The engines refuse the same fleet before connecting. The fleet's hosts sit in
# TEST-NET-1 (192.0.2.0/24, never routed): any connection attempt would show up as
# "unreachable" in the output; none may.
BAD_FOR_ENGINES = _fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_cluster_distribution: nomad}\n")


def test_ansible_playbook_stops_before_touching_hosts(write_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = write_fleet(BAD_FOR_ENGINES)
    result = run([tool("ansible-playbook"), "-i", str(fleet), "playbooks/site.yml"])
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "host 'e1': field 'edge_cluster_distribution'" in out
    assert "Traceback" not in out
    assert "UNREACHABLE" not in out
    assert "Gathering Facts" not in out
    recap = out.split("PLAY RECAP", 1)[1]
    assert "cp " not in recap and "e1 " not in recap


def test_pyinfra_stops_before_touching_hosts(write_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = write_fleet(BAD_FOR_ENGINES)
    result = run([tool("pyinfra"), "-y", str(fleet / "inventory.py"), "deploy.py"])
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "host 'e1': field 'edge_cluster_distribution'" in out
    assert "Traceback" not in out
    assert "Connecting" not in out and "Connected" not in out


def test_check_json_lists_the_problems_and_keeps_the_exit_status(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "hosts.yml").write_text(_fleet(CP + "edge:\n  hosts:\n    e1: {ansible_host: 192.0.2.2, edge_arhc: arm64}\n"))
    result = run([tool("edge-provision"), "check", "-i", str(fleet), "--json"])
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["problems"] == [
        "host 'e1': field 'edge_arhc': unknown variable in edge-provision's namespace (did you mean 'edge_arch'?)"]
    (fleet / "hosts.yml").write_text(_fleet(CP))
    ok = run([tool("edge-provision"), "check", "-i", str(fleet), "--json"])
    assert ok.returncode == 0 and json.loads(ok.stdout)["hosts"] == [{"name": "cp", "groups": ["control_plane"]}]


VAULTED_TOKEN = "abcdef.0123456789abcdef"


def _run_with(args: list[str], cwd: Path, password_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``args`` in ``cwd`` with the vault password file given through Ansible's environment (or none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_VAULT")}
    if password_file:
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(password_file)
    return subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, check=False)


def _vaulted_fleet(tmp_path: Path) -> tuple[Path, Path]:
    """A fleet whose group_vars/all.yml holds a join token encrypted by the real ansible-vault."""
    fleet, password = tmp_path / "fleet", tmp_path / "vault-pass"
    (fleet / "group_vars").mkdir(parents=True)
    password.write_text("correct horse\n")
    encrypted = run([tool("ansible-vault"), "encrypt_string", "--vault-password-file", str(password),
                     VAULTED_TOKEN, "--name", "node_join_kubeadm_token"])
    assert encrypted.returncode == 0, encrypted.stderr
    (fleet / "group_vars" / "all.yml").write_text(encrypted.stdout)
    (fleet / "hosts.yml").write_text(_fleet(CP))
    (fleet / "inventory.py").write_text(
        "from edge_provision.inventory import pyinfra_groups\ncontrol_plane, edge = pyinfra_groups(__file__)\n")
    return fleet, password


def test_a_vaulted_token_passes_check_without_a_password_and_is_never_printed(tmp_path: Path) -> None:
    fleet, _ = _vaulted_fleet(tmp_path)
    for args in ([], ["--json"]):
        result = _run_with([tool("edge-provision"), "check", "-i", str(fleet), *args], tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and VAULTED_TOKEN not in result.stdout + result.stderr


def test_pyinfra_gets_the_vaulted_token_with_the_password_and_a_clear_error_without(tmp_path: Path) -> None:
    fleet, password = _vaulted_fleet(tmp_path)
    probe = ("import runpy; g = runpy.run_path('inventory.py');"
             " print(g['control_plane'][0][1]['node_join_kubeadm_token'] == " + repr(VAULTED_TOKEN) + ")")
    opened = _run_with([sys.executable, "-c", probe], fleet, password)
    assert opened.returncode == 0 and opened.stdout.strip() == "True", opened.stderr
    locked = _run_with([sys.executable, "-c", probe], fleet)
    assert locked.returncode == 2 and "Traceback" not in locked.stderr, locked.stderr
    assert ("host 'cp': field 'node_join_kubeadm_token': vaulted, and no vault password was given"
            in locked.stderr), locked.stderr
    assert VAULTED_TOKEN not in locked.stdout + locked.stderr
