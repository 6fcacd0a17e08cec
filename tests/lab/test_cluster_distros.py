"""Stage cluster for k3s, KubeEdge and OpenYurt on three fresh lab hosts, with STAND-IN tools.

k3s, keadm and yurtadm are in no registry reachable from the lab, so this module installs
stand-ins for them on the lab hosts (tests/lab/standins/: they record their argv and
environment, leave the files the real tools leave and refuse what the real tools refuse; no role
ever ships them). What goes through the Kubernetes API is real: a kube-apiserver (versions.yml's Kubernetes) with
etcd on the controller's loopback (tests/lab/apiserver.py) is the fleet's cluster, and the Node
objects the stand-ins' kubelets would register are created in it by this module.

Per distribution, one engine each joins one edge host: Ansible lab-1 (control plane) and lab-2,
pyinfra lab-1 and lab-3 (lab-1 again: both engines must agree on it), the first runs at -vvv.
Checked: the stand-ins' exact argv and environment, the token they were given appears in no
output, a second run of each engine changes nothing, and the guards (KubeEdge leftovers reset
before a join; a reinstalled k3s agent has its old node-password Secret deleted).

host_prep and runtime are not run: the stand-ins need neither, and the kubeadm lab module
(test_cluster.py) runs the whole chain with the real tools.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from edge_provision.stages.cluster import common, kube_api
from tests.conftest import ROOT
from tests.lab.apiserver import LocalApi, local_api
from tests.lab.conftest import EngineRun, LabFleet

LAB_HOSTS = 3
STANDINS = ROOT / "tests" / "lab" / "standins"
ANSIBLE_HOSTS = ("--limit", "control_plane,lab-2")
PYINFRA_HOSTS = ("--exclude", "lab-2")
RUNTIME_ENDPOINT = "unix:///run/containerd/containerd.sock"
CRI_SOCKET = "/run/containerd/containerd.sock"


@dataclass
class Runs:
    """One distribution: each engine's first run (-vvv) and second run."""

    ansible: EngineRun
    pyinfra: EngineRun
    ansible_again: EngineRun
    pyinfra_again: EngineRun
    more: dict[str, EngineRun] = field(default_factory=dict)

    def outputs(self) -> dict[str, str]:
        runs = {"ansible -vvv": self.ansible, "pyinfra -vvv": self.pyinfra,
                "ansible (second run)": self.ansible_again, "pyinfra (second run)": self.pyinfra_again,
                **self.more}
        return {name: run.output for name, run in runs.items()}


def _data(settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The same settings as Ansible extra vars (JSON, typed) and pyinfra --data."""
    ansible = ["-e", json.dumps(settings)]
    pyinfra = [arg for key, value in settings.items()
               for arg in ("--data", f"{key}={json.dumps(value) if not isinstance(value, str) else value}")]
    return ansible, pyinfra


def _both(fleet: LabFleet, settings: dict[str, Any], verbose: bool) -> tuple[EngineRun, EngineRun]:
    ansible_args, pyinfra_args = _data({"edge_stages": "cluster", **settings})
    v = ["-vvv"] if verbose else []
    ansible = fleet.ansible_playbook(*v, "--tags", "cluster", *ansible_args, *ANSIBLE_HOSTS)
    pyinfra = fleet.pyinfra(*v, *pyinfra_args, *PYINFRA_HOSTS)
    return ansible, pyinfra


def _distribution(fleet: LabFleet, settings: dict[str, Any]) -> Runs:
    first = _both(fleet, settings, verbose=True)
    again = _both(fleet, settings, verbose=False)
    return Runs(first[0], first[1], again[0], again[1])


def _records(fleet: LabFleet, name: str, tool: str) -> list[dict[str, Any]]:
    text = fleet.sh(name, f"cat /var/lib/edge-standin/{tool}.jsonl 2>/dev/null || true")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _node_ip(fleet: LabFleet, name: str) -> str:
    doc = yaml.safe_load((fleet.inventory / "hosts.yml").read_text())
    for group in doc["all"]["children"].values():
        if name in group["hosts"]:
            host = group["hosts"][name]
            return str(host.get("edge_node_ip") or host["ansible_host"])
    raise KeyError(name)


@dataclass
class Lab:
    fleet: LabFleet
    api: LocalApi
    kubeconfig: Path

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(kube_api.api_client(self.kubeconfig))


@pytest.fixture(scope="module")
def lab(lab_fleet: LabFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with local_api(tmp_path_factory.mktemp("api")) as api:
        kubeconfig = lab_fleet.inventory / common.KUBECONFIG_FILE
        kubeconfig.touch(mode=0o600)
        kubeconfig.write_text(api.kubeconfig)
        this = Lab(lab_fleet, api, kubeconfig)
        for host in lab_fleet.hosts:  # what each stand-in's kubelet would register
            this.core().create_node(client.V1Node(metadata=client.V1ObjectMeta(name=host.name)))
            for tool in ("k3s", "keadm", "yurtadm"):
                script = (STANDINS / tool).read_text()
                lab_fleet.sh(host.name, f"cat > /usr/local/bin/{tool} <<'STANDIN'\n{script}STANDIN\n"
                                        f"chmod 755 /usr/local/bin/{tool}")
        # the admin kubeconfig the k3s stand-in leaves, as k3s writes it (server on loopback)
        k3s_yaml = yaml.safe_load(api.kubeconfig)
        k3s_yaml["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:6443"
        lab_fleet.sh("lab-1", "install -d -m 700 /var/lib/edge-standin && cat > /var/lib/edge-standin/k3s.yaml "
                              f"<<'KUBECONFIG'\n{yaml.safe_dump(k3s_yaml)}KUBECONFIG\n")
        yield this


# --- k3s -----------------------------------------------------------------------------------------

K3S = {"edge_cluster_distribution": "k3s", "k3s_node_install_binary": False}


@pytest.fixture(scope="module")
def k3s(lab: Lab) -> Runs:
    settings = {**K3S, "k3s_server_api_server": lab.api.url}
    runs = _distribution(lab.fleet, settings)
    # a reinstalled agent: its password is gone, the server still has the old one's Secret
    lab.fleet.sh("lab-2", "systemctl stop k3s-agent && rm -f /etc/rancher/node/password")
    lab.core().create_namespaced_secret("kube-system", client.V1Secret(
        metadata=client.V1ObjectMeta(name="lab-2.node-password.k3s"), string_data={"hash": "old"}))
    ansible_args, _ = _data({"edge_stages": "cluster", **settings})
    runs.more["ansible (reinstalled agent)"] = lab.fleet.ansible_playbook(
        "--tags", "cluster", *ansible_args, *ANSIBLE_HOSTS)
    return runs


def test_k3s_stand_in_server_and_agents_run_with_the_expected_argv_and_env(lab: Lab, k3s: Runs) -> None:
    k3s.ansible.ok()
    k3s.pyinfra.ok()
    server = _records(lab.fleet, "lab-1", "k3s")
    assert server and {tuple(r["argv"]) for r in server} == {("server",)}
    token = lab.fleet.sh("lab-1", "cat /var/lib/rancher/k3s/server/token").strip()
    for agent in ("lab-2", "lab-3"):
        records = _records(lab.fleet, agent, "k3s")
        assert records, agent
        assert records[0] == {"argv": ["agent"], "env": {
            "K3S_URL": f"https://{_node_ip(lab.fleet, 'lab-1')}:6443", "K3S_TOKEN": token}}
        config = yaml.safe_load(lab.fleet.sh(agent, "cat /etc/rancher/k3s/config.yaml"))
        assert config["node-name"] == agent
        assert "edge-provision.io/lab=true" in config["node-label"]
        env = lab.fleet.testinfra(agent).file("/etc/systemd/system/k3s-agent.service.env")
        assert env.mode == 0o600
        template = lab.fleet.sh(agent, "cat /var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl")
        assert template.startswith("# Managed") and '{{ template "base" . }}' in template
        assert '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.crun-wasm.options]' in template
    assert "device=camera" in yaml.safe_load(lab.fleet.sh("lab-2", "cat /etc/rancher/k3s/config.yaml"))["node-label"]


def test_k3s_admin_kubeconfig_reaches_the_api_from_the_controller(lab: Lab, k3s: Runs) -> None:
    assert lab.kubeconfig.stat().st_mode & 0o777 == 0o600
    assert common.kubeconfig_source(lab.kubeconfig)  # the k3s server's copy, marked
    assert kube_api.node_status(lab.kubeconfig, "lab-1")["registered"]


def test_k3s_second_runs_change_nothing(k3s: Runs) -> None:
    assert k3s.ansible_again.ok().changed == 0
    assert k3s.pyinfra_again.ok().changed == 0


def test_k3s_reinstalled_agent_has_its_old_node_password_forgotten(lab: Lab, k3s: Runs) -> None:
    run = k3s.more["ansible (reinstalled agent)"].ok()
    assert "Forget the password of a reinstalled node" in run.output
    names = [s.metadata.name for s in lab.core().list_namespaced_secret("kube-system").items]
    assert "lab-2.node-password.k3s" not in names
    assert lab.fleet.testinfra("lab-2").file("/etc/rancher/node/password").exists  # the agent started again
    assert lab.fleet.testinfra("lab-2").service("k3s-agent").is_running


def test_k3s_token_appears_in_no_output(lab: Lab, k3s: Runs) -> None:
    token = lab.fleet.sh("lab-1", "cat /var/lib/rancher/k3s/server/token").strip()
    secret = token.rsplit(":", 1)[-1]
    assert len(k3s.ansible.output) > 50_000 and len(k3s.pyinfra.output) > 10_000
    for what, output in k3s.outputs().items():
        assert secret not in output, f"the k3s token is in the {what} output"


# --- KubeEdge ------------------------------------------------------------------------------------

KUBEEDGE = {"edge_cluster_distribution": "kubeedge", "edge_cluster_control_plane": "existing"}


@pytest.fixture(scope="module")
def kubeedge(lab: Lab, k3s: Runs) -> Runs:
    runs = _distribution(lab.fleet, KUBEEDGE)
    # a node reprovisioned with leftovers of an earlier install: keadm join would refuse it
    lab.fleet.sh("lab-3", "rm -f /etc/kubeedge/config/edgecore.yaml && : > /var/lib/edge-standin/keadm.jsonl")
    _, pyinfra_args = _data({"edge_stages": "cluster", **KUBEEDGE})
    runs.more["pyinfra (leftovers)"] = lab.fleet.pyinfra(*pyinfra_args, *PYINFRA_HOSTS)
    return runs


def test_kubeedge_stand_in_keadm_init_and_joins_run_with_the_expected_argv(lab: Lab, kubeedge: Runs) -> None:
    kubeedge.ansible.ok()
    kubeedge.pyinfra.ok()
    cloud_ip = _node_ip(lab.fleet, "lab-1")
    cloud = [r["argv"] for r in _records(lab.fleet, "lab-1", "keadm")]
    kubeconfig = "--kube-config=/etc/edge-provision/kubeedge/admin.conf"
    inits = [argv for argv in cloud if argv[0] == "init"]
    assert inits == [["init", f"--advertise-address={cloud_ip}", kubeconfig]]  # once, by the first engine
    assert ["gettoken", kubeconfig] in cloud
    token = lab.fleet.sh("lab-1", "keadm gettoken " + kubeconfig).strip()
    joins = {name: [r["argv"] for r in _records(lab.fleet, name, "keadm") if r["argv"][0] == "join"]
             for name in ("lab-2", "lab-3")}
    assert joins["lab-2"] == [[
        "join", f"--cloudcore-ipport={cloud_ip}:10000", f"--token={token}", "--edgenode-name=lab-2",
        f"--remote-runtime-endpoint={RUNTIME_ENDPOINT}", "--labels=device=camera,edge-provision.io/lab=true",
    ]]
    assert joins["lab-3"] == [[  # after the leftovers run: the log was emptied before it
        "join", f"--cloudcore-ipport={cloud_ip}:10000", f"--token={token}", "--edgenode-name=lab-3",
        f"--remote-runtime-endpoint={RUNTIME_ENDPOINT}", "--labels=edge-provision.io/lab=true",
    ]]
    assert lab.fleet.testinfra("lab-1").file("/etc/edge-provision/kubeedge/admin.conf").mode == 0o600


def test_kubeedge_second_runs_change_nothing(kubeedge: Runs) -> None:
    assert kubeedge.ansible_again.ok().changed == 0
    assert kubeedge.pyinfra_again.ok().changed == 0


def test_kubeedge_leftovers_are_reset_before_the_join(lab: Lab, kubeedge: Runs) -> None:
    kubeedge.more["pyinfra (leftovers)"].ok()
    steps = [r["argv"][:2] for r in _records(lab.fleet, "lab-3", "keadm")]
    assert steps == [["reset", "edge"], ["join", steps[1][1]]], steps
    assert lab.fleet.testinfra("lab-3").file("/etc/kubeedge/config/edgecore.yaml").exists


def test_kubeedge_token_appears_in_no_output(lab: Lab, kubeedge: Runs) -> None:
    token = lab.fleet.sh("lab-1", "keadm gettoken --kube-config=/etc/edge-provision/kubeedge/admin.conf").strip()
    for what, output in kubeedge.outputs().items():
        for part in token.split("."):
            assert part not in output, f"the KubeEdge token is in the {what} output"


# --- OpenYurt ------------------------------------------------------------------------------------

OPENYURT = {"edge_cluster_distribution": "openyurt", "edge_cluster_control_plane": "existing",
            "openyurt_join_nodepool": "hall-2"}


@pytest.fixture(scope="module")
def openyurt(lab: Lab, kubeedge: Runs) -> Runs:
    return _distribution(lab.fleet, OPENYURT)


def test_openyurt_stand_in_yurtadm_joins_with_the_expected_argv(lab: Lab, openyurt: Runs) -> None:
    openyurt.ansible.ok()
    openyurt.pyinfra.ok()
    ca_hash = kube_api.ca_cert_hash(kube_api._kubeconfig_ca(lab.kubeconfig))
    server = f"{_node_ip(lab.fleet, 'lab-1')}:6443"
    labels = {"lab-2": "device=camera,edge-provision.io/lab=true", "lab-3": "edge-provision.io/lab=true"}
    tokens = _bootstrap_tokens(lab)
    for name in ("lab-2", "lab-3"):
        joins = [r["argv"] for r in _records(lab.fleet, name, "yurtadm")]
        assert len(joins) == 1, joins
        token = joins[0][2].removeprefix("--token=")
        assert token in tokens, "yurtadm got a token the cluster does not know"
        assert joins[0] == [
            "join", server, f"--token={token}", "--node-type=edge", f"--discovery-token-ca-cert-hash={ca_hash}",
            f"--cri-socket={CRI_SOCKET}", f"--node-name={name}", f"--node-labels={labels[name]}",
        ]


def test_openyurt_node_pool_label_is_set_through_the_api(lab: Lab, openyurt: Runs) -> None:
    for name in ("lab-2", "lab-3"):
        assert kube_api.node_status(lab.kubeconfig, name)["labels"].get("apps.openyurt.io/nodepool") == "hall-2"
    assert "apps.openyurt.io/nodepool" not in kube_api.node_status(lab.kubeconfig, "lab-1")["labels"]


def test_openyurt_second_runs_change_nothing(openyurt: Runs) -> None:
    assert openyurt.ansible_again.ok().changed == 0
    assert openyurt.pyinfra_again.ok().changed == 0


def _bootstrap_tokens(lab: Lab) -> list[str]:
    import base64

    secrets = lab.core().list_namespaced_secret(
        "kube-system", field_selector="type=bootstrap.kubernetes.io/token").items
    return [
        f"{base64.b64decode(s.data['token-id']).decode()}.{base64.b64decode(s.data['token-secret']).decode()}"
        for s in secrets
    ]


def test_openyurt_tokens_appear_in_no_output(lab: Lab, openyurt: Runs) -> None:
    tokens = _bootstrap_tokens(lab)
    assert len(tokens) >= 2, "one bootstrap token per joined node"
    for what, output in openyurt.outputs().items():
        for token in tokens:
            assert token.split(".")[1] not in output, f"a bootstrap token is in the {what} output"
