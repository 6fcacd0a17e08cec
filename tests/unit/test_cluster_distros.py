"""k3s, KubeEdge and OpenYurt (edge_provision.stages.cluster and the shared parts of
edge_provision.stages.cluster): pins, rendered files, the exact command lines and the guards' inputs,
the same through the Ansible filters. No host: the lab tier runs them (tests/lab/test_cluster_distros.py)."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from edge_provision import PROJECT_ROOT
from edge_provision.artifacts.fetch import ArtifactFetchError, fetch, load_downloads, pinned
from edge_provision.role_files import render_template, role_argument_spec, role_defaults
from edge_provision.stages.cluster import common, distributions, k3s, kubeadm, kubeedge, openyurt
from edge_provision.stages.runtime.containerd_config import SCHEMAS, runtime_handler

LABELS = {"device": "camera", "edge-provision.io/lab": "true", "node-role.kubernetes.io/edge": ""}
# k3s's own template "base" for containerd 2, trimmed to the tables it shares with the handler.
K3S_BASE_V3 = """version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = true
"""


def _filters() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("cluster_filters", PROJECT_ROOT / "plugins" / "filter" / "cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    filters: dict[str, Any] = module.FilterModule().filters()
    return filters


# --- pins ----------------------------------------------------------------------------------------


def test_k3s_is_pinned_per_architecture_with_a_sha256() -> None:
    found = {d.arch: d for d in load_downloads(names=["k3s"])}
    assert sorted(found) == ["amd64", "arm64"]
    for arch, download in found.items():
        assert re.fullmatch(r"[0-9a-f]{64}", download.sha256), arch
        assert download.url.startswith(
            f"https://github.com/k3s-io/k3s/releases/download/{download.version.replace('+', '%2B')}/"
        )
    assert found["amd64"].file == "k3s" and found["arm64"].file == "k3s-arm64"
    assert found["amd64"].sha256 != found["arm64"].sha256


def test_a_k3s_binary_that_does_not_match_its_pin_is_refused(tmp_path: Path) -> None:
    source, dest = tmp_path / "mirror", tmp_path / "downloads"
    source.mkdir()
    (source / "k3s").write_bytes(b"#!/bin/sh\necho not k3s\n")
    with pytest.raises(ArtifactFetchError, match="sha256 mismatch for k3s") as error:
        fetch(pinned("k3s", "amd64"), str(source), dest)
    assert pinned("k3s", "amd64").sha256 in str(error.value)
    assert not list(dest.iterdir())


# --- k3s -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "schema"), [
    ("v1.30.14+k3s1", 2), ("v1.31.5+k3s1", 2), ("v1.31.6+k3s1", 3), ("v1.31.14+k3s1", 3),
    ("v1.32.1+k3s1", 2), ("v1.32.2+k3s1", 3), ("v1.33.0+k3s1", 3), ("v1.35.0+k3s1", 3),
])
def test_k3s_containerd_schema_follows_the_embedded_containerd(version: str, schema: int) -> None:
    assert k3s.k3s_containerd_schema(version).version == schema
    expected = "config-v3.toml.tmpl" if schema == 3 else "config.toml.tmpl"
    assert k3s.k3s_containerd_template_name(version) == expected


def test_the_pinned_k3s_reads_config_v3_toml_tmpl() -> None:
    for arch in ("amd64", "arm64"):
        assert k3s.k3s_containerd_template_name(k3s.k3s_version(arch)) == "config-v3.toml.tmpl"
    with pytest.raises(common.DistributionError, match="not a k3s version"):
        k3s.k3s_containerd_schema("latest")


def test_k3s_containerd_template_adds_a_separate_wasm_handler_to_k3s_base() -> None:
    text = k3s.k3s_containerd_template("v1.31.6+k3s1", "crun-wasm", "/usr/local/bin/crun-wasm", True)
    assert '{{ template "base" . }}' in text
    assert "version" not in text.split('{{ template "base" . }}', 1)[1]
    merged = text.replace('{{ template "base" . }}', K3S_BASE_V3)
    doc = tomllib.loads(merged)  # no table defined twice
    runtimes = doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
    assert set(runtimes) == {"runc", "crun-wasm"}
    assert runtimes["runc"]["options"] == {"SystemdCgroup": True}
    handler = runtime_handler(merged, SCHEMAS[3], "crun-wasm")
    assert handler["options"] == {"BinaryName": "/usr/local/bin/crun-wasm", "SystemdCgroup": True}
    assert handler["runtime_type"] == "io.containerd.runc.v2"
    assert "module.wasm.image/variant" in handler["pod_annotations"]


def test_k3s_config_yaml_holds_the_labels_the_kubelet_may_set() -> None:
    config = k3s.k3s_config(
        node_name="lab-2", node_ip="192.0.2.2", labels=LABELS, tls_sans=["192.0.2.1", "192.0.2.1", "cp"],
        extra={"disable": ["traefik"]},
    )
    rendered = render_template("k3s_node", "config.yaml.j2", {"k3s_node_rendered_config": config})
    assert rendered.startswith("# Managed by edge-provision")
    assert yaml.safe_load(rendered) == {
        "node-name": "lab-2",
        "node-ip": "192.0.2.2",
        "node-label": ["device=camera", "edge-provision.io/lab=true"],
        "tls-san": ["192.0.2.1", "cp"],
        "disable": ["traefik"],
    }


def test_k3s_units_run_server_and_agent_from_the_installed_binary() -> None:
    node = role_defaults("k3s_node")
    for unit, mode in (("k3s", "server"), ("k3s-agent", "agent")):
        text = render_template("k3s_node", "k3s.service.j2",
                               {**node, "k3s_node_service": {"unit": unit, "mode": mode, "tls_sans": []},
                                "k3s_node_env_path": k3s.service_env_file(unit)})
        assert f"ExecStart=/usr/local/bin/k3s {mode}\n" in text
        assert f"EnvironmentFile=-/etc/systemd/system/{unit}.service.env\n" in text
        assert "Type=notify" in text
        assert k3s.service_unit_file(unit) == f"/etc/systemd/system/{unit}.service"


def test_k3s_agents_read_the_servers_token_file() -> None:
    assert k3s.server_token_file(role_defaults("k3s_node")["k3s_node_data_dir"]) == "/var/lib/rancher/k3s/server/token"


def test_k3s_agent_env_joins_with_url_and_token_and_a_fingerprint() -> None:
    token = "K10abc::server:def"
    text = k3s.k3s_agent_env(token + "\n", "https://192.0.2.1:6443")
    lines = text.splitlines()
    assert "K3S_URL=https://192.0.2.1:6443" in lines
    assert f"K3S_TOKEN={token}" in lines
    assert f"# token sha256 {k3s.token_fingerprint(token)}" in lines
    # the fingerprint is what `tr -d '\n' < token | sha256sum` prints on the server
    import hashlib
    assert k3s.token_fingerprint(token + "\n") == hashlib.sha256(token.encode()).hexdigest()
    with pytest.raises(common.DistributionError, match="empty"):
        k3s.k3s_agent_env(" \n", "https://192.0.2.1:6443")
    assert k3s.k3s_server_env("").count("\n") == 1
    assert k3s.k3s_server_env("s3cret\n").endswith("K3S_TOKEN=s3cret\n")


# --- KubeEdge ------------------------------------------------------------------------------------


def test_keadm_command_lines() -> None:
    assert kubeedge.keadm_init("/usr/local/bin/keadm", "192.0.2.1", "/etc/k.conf", ["--x=y"]) == [
        "/usr/local/bin/keadm", "init", "--advertise-address=192.0.2.1", "--kube-config=/etc/k.conf", "--x=y"]
    assert kubeedge.keadm_gettoken("keadm", "/etc/k.conf") == ["keadm", "gettoken", "--kube-config=/etc/k.conf"]
    assert kubeedge.keadm_reset_edge("keadm") == ["keadm", "reset", "edge", "--force"]
    assert kubeedge.keadm_join(
        keadm="keadm", cloudcore="192.0.2.1:10000", token="t0k.en", node_name="lab-2",
        runtime_endpoint="unix:///run/containerd/containerd.sock", labels=LABELS,
    ) == [
        "keadm", "join", "--cloudcore-ipport=192.0.2.1:10000", "--token=t0k.en", "--edgenode-name=lab-2",
        "--remote-runtime-endpoint=unix:///run/containerd/containerd.sock",
        "--labels=device=camera,edge-provision.io/lab=true",
    ]
    assert "--labels" not in " ".join(kubeedge.keadm_join(
        keadm="keadm", cloudcore="c:1", token="t", node_name="n", runtime_endpoint="e", labels={}))


def test_keadm_token_is_the_last_line_of_gettoken() -> None:
    assert kubeedge.keadm_token("I1124 log line\nabc.def\n\n") == "abc.def"
    with pytest.raises(common.DistributionError, match="no token"):
        kubeedge.keadm_token("\n")


# --- OpenYurt ------------------------------------------------------------------------------------


def test_yurtadm_join_command_line() -> None:
    assert openyurt.yurtadm_join(
        yurtadm="yurtadm", server="192.0.2.1:6443", token="abcdef.0123456789abcdef", ca_cert_hash="sha256:00",
        cri_socket="/run/containerd/containerd.sock", labels=LABELS, node_name="lab-2",
    ) == [
        "yurtadm", "join", "192.0.2.1:6443", "--token=abcdef.0123456789abcdef", "--node-type=edge",
        "--discovery-token-ca-cert-hash=sha256:00", "--cri-socket=/run/containerd/containerd.sock",
        "--node-name=lab-2", "--node-labels=device=camera,edge-provision.io/lab=true",
    ]
    assert openyurt.yurtadm_reset("yurtadm") == ["yurtadm", "reset", "--force"]


def test_openyurt_node_pool_and_restricted_labels_go_through_the_api() -> None:
    assert openyurt.openyurt_labels(LABELS, "hall-2") == {
        "apps.openyurt.io/nodepool": "hall-2", "node-role.kubernetes.io/edge": ""}
    with pytest.raises(common.DistributionError, match="node pool"):
        openyurt.openyurt_labels(LABELS, "")


def test_api_labels_are_what_the_node_agent_may_not_set() -> None:
    assert common.api_labels(LABELS) == {"node-role.kubernetes.io/edge": ""}
    assert common.api_labels({"device": "camera"}) == {}
    assert common.missing_labels({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": ""}) == {"b": "3", "c": ""}


def test_failure_reports_redact_given_secrets_and_bootstrap_tokens() -> None:
    output = "join with abcdef.0123456789abcdef failed\ntoken 5f2a.eyJhbGci rejected\n"
    report = common.failure_report(output, secrets=["5f2a.eyJhbGci"])
    assert "0123456789abcdef" not in report and "eyJhbGci" not in report
    assert report.count("<token redacted>") == 2


# --- both engines, one source --------------------------------------------------------------------


def test_filters_are_the_shared_functions() -> None:
    filters = _filters()
    assert filters["edge_provision_keadm_join"](
        "keadm", "t", "c:1", "n", "e", LABELS, []
    ) == kubeedge.keadm_join(keadm="keadm", cloudcore="c:1", token="t", node_name="n",
                                  runtime_endpoint="e", labels=LABELS)
    assert filters["edge_provision_yurtadm_join"](
        "y", {"token": "t", "ca_cert_hash": "h"}, "s:6443", "/s", LABELS, "n", []
    ) == openyurt.yurtadm_join(yurtadm="y", server="s:6443", token="t", ca_cert_hash="h",
                                    cri_socket="/s", labels=LABELS, node_name="n")
    assert filters["edge_provision_k3s_containerd_template_name"]("arm64") == "config-v3.toml.tmpl"
    assert filters["edge_provision_k3s_containerd_template"]("amd64", "h", "/b", False) == (
        k3s.k3s_containerd_template(k3s.k3s_version("amd64"), "h", "/b", False))
    assert filters["edge_provision_openyurt_labels"](LABELS, "p") == openyurt.openyurt_labels(LABELS, "p")
    assert filters["edge_provision_failure_report"]("x abcdef.0123456789abcdef") == "x <token redacted>"
    assert filters["edge_provision_kubeadm_init"] is kubeadm.kubeadm_init
    assert filters["edge_provision_probe_patches"]({"startup": 2}, ["a"]) == kubeadm.probe_patches({"startup": 2}, ["a"])
    with pytest.raises(AnsibleFilterError, match="unknown probe readiness"):
        filters["edge_provision_probe_patches"]({"readiness": 2}, ["a"])


def test_the_cluster_playbook_runs_the_roles_of_the_one_table() -> None:
    plays = {play["hosts"]: play for play in yaml.safe_load((PROJECT_ROOT / "playbooks" / "cluster.yml").read_text())}
    assert set(plays) == set(distributions.NODE_GROUPS)
    for group, play in plays.items():
        table = {r for d in distributions.ROLES.values() for r in d[group]}
        assert {r["role"] for r in play["roles"]} == table, group
        for role in play["roles"]:
            assert role["when"] == f"'{role['role']}' in edge_cluster_stage_roles"
        assert f"edge_provision_cluster_roles('{group}', edge_cluster_control_plane)" in play["vars"][
            "edge_cluster_stage_roles"]
    choices = role_argument_spec("edge")["options"]["edge_cluster_distribution"]["choices"]
    assert sorted(choices) == sorted(distributions.ROLES)


def test_cluster_roles_per_distribution_and_control_plane() -> None:
    assert distributions.cluster_roles("kubeadm", "control_plane") == ["control_plane_kubeadm"]
    assert distributions.cluster_roles("kubeedge", "control_plane") == ["control_plane_kubeadm", "kubeedge_cloud"]
    assert distributions.cluster_roles("kubeedge", "control_plane", "existing") == ["kubeedge_cloud"]
    assert distributions.cluster_roles("openyurt", "control_plane", "existing") == []
    assert distributions.cluster_roles("k3s", "edge", "existing") == ["k3s_agent"]
    with pytest.raises(ValueError, match="distribution 'rke2'"):
        distributions.cluster_roles("rke2", "edge")


def test_the_pyinfra_deploy_has_a_deploy_for_every_role_of_the_table() -> None:
    from edge_provision.pyinfra_engine.deploys.cluster import ROLE_DEPLOYS

    assert set(ROLE_DEPLOYS) == {r for d in distributions.ROLES.values() for g in d.values() for r in g}


# --- the pyinfra operations' guards (facts in, commands out) ---------------------------------------


def _ops() -> Any:
    from edge_provision.pyinfra_engine.operations import cluster as cluster_operations

    return cluster_operations


def _commands(op: Any, known: dict[type, Any], **kwargs: Any) -> list[str]:
    from tests.unit.test_operations import commands

    return commands(op, known, **kwargs)


def test_keadm_join_runs_only_on_a_node_without_edgecore_config() -> None:
    from pyinfra.facts.files import File

    kwargs = {"keadm": "keadm", "cloud": None, "cloud_kubeconfig": "/k", "cloudcore": "c:10000",
              "config_dir": "/etc/kubeedge", "joined_file": "/etc/kubeedge/config/edgecore.yaml",
              "runtime_endpoint": "unix:///run/containerd/containerd.sock", "labels": {}, "extra": []}
    assert _commands(_ops().keadm_joined, {File: {"mode": 644}}, **kwargs) == []
    assert _commands(_ops().keadm_joined, {File: None}, **kwargs) == ["FunctionCommand:"]


def test_keadm_init_runs_only_when_gettoken_does_not_answer() -> None:
    from edge_provision.pyinfra_engine.facts.common import CommandOutput

    kwargs = {"keadm": "keadm", "kubeconfig": "/k", "advertise_address": "192.0.2.1", "extra": []}
    assert _commands(_ops().keadm_initialised, {CommandOutput: "ready\n"}, **kwargs) == []
    assert _commands(_ops().keadm_initialised, {CommandOutput: None}, **kwargs) == ["FunctionCommand:"]


def test_yurtadm_join_runs_only_on_a_node_without_kubelet_conf() -> None:
    from pyinfra.facts.files import File

    kwargs = {"yurtadm": "yurtadm", "kubeconfig": "/k", "given_token": "", "ttl": "15m", "server": "s:6443",
              "cri_socket": "/run/containerd/containerd.sock", "joined_file": "/etc/kubernetes/kubelet.conf",
              "labels": {}, "extra": []}
    assert _commands(_ops().yurtadm_joined, {File: {"mode": 600}}, **kwargs) == []
    assert _commands(_ops().yurtadm_joined, {File: None}, **kwargs) == ["FunctionCommand:"]


def test_k3s_node_password_is_forgotten_only_when_the_node_lost_it() -> None:
    from pyinfra.facts.files import File

    kwargs = {"kubeconfig": "/k", "node": "lab-2", "password_file": "/etc/rancher/node/password"}
    assert _commands(_ops().k3s_node_password_forgotten, {File: {"mode": 600}}, **kwargs) == []
    assert _commands(_ops().k3s_node_password_forgotten, {File: None}, **kwargs) == ["FunctionCommand:"]


class _Server:
    """The control-plane host as the agent's operation sees it: facts only (the fingerprint)."""

    name = "lab-1"

    def __init__(self, token_file_text: str) -> None:
        self.text = token_file_text

    def get_fact(self, cls: type, argv: list[str]) -> str:
        import hashlib

        return hashlib.sha256(self.text.replace("\n", "").encode()).hexdigest() + "  -\n"


@pytest.mark.parametrize(("env_fingerprint", "server_token", "given", "expected"), [
    ("current", "K10a::server:b\n", "", []),               # the agent holds the server's token
    ("stale", "K10a::server:b\n", "", ["FunctionCommand:"]),  # the server's token changed
    ("current", "", "", ["FunctionCommand:"]),              # no server token yet: read it at execution
    ("given", "K10a::server:b\n", "K10given", []),          # a given token, already written
])
def test_k3s_agent_env_is_rewritten_only_when_its_token_or_url_changed(
    env_fingerprint: str, server_token: str, given: str, expected: list[str]
) -> None:
    from edge_provision.pyinfra_engine.facts.common import CommandOutput

    fingerprints = {"current": k3s.token_fingerprint("K10a::server:b"), "stale": "0" * 64,
                    "given": k3s.token_fingerprint("K10given")}

    def agent_fact(argv: list[str]) -> str:
        if argv[0] == "sed":
            return fingerprints[env_fingerprint] + "\n"
        return "K3S_URL=https://192.0.2.1:6443\n"

    server = _Server(server_token)
    assert _commands(
        _ops().k3s_agent_env, {CommandOutput: agent_fact},
        env_file="/etc/systemd/system/k3s-agent.service.env", server_url="https://192.0.2.1:6443",
        given_token=given, server=server, server_token_file="/var/lib/rancher/k3s/server/token",
    ) == expected


def test_k3s_waits_for_the_files_the_server_writes() -> None:
    from pyinfra.facts.files import File

    paths = ["/var/lib/rancher/k3s/server/token", "/etc/rancher/k3s/k3s.yaml"]
    assert _commands(_ops().files_present, {File: {"mode": 600}}, paths=paths, timeout=300) == []
    out = _commands(_ops().files_present, {File: None}, paths=paths, timeout=300)
    assert out == ["timeout 300 sh -c 'until test -e /var/lib/rancher/k3s/server/token && "
                   "test -e /etc/rancher/k3s/k3s.yaml; do sleep 2; done'"]
