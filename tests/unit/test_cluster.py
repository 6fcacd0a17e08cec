"""The cluster stage's controller-side Python (edge_provision.stages.cluster) and its templates."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from edge_provision.role_files import render_template, role_defaults
from edge_provision.stages.cluster import common, kube_api, kubeadm

NODE = role_defaults("kubernetes_node")
CONTROL_PLANE = role_defaults("control_plane_kubeadm")
JOIN = role_defaults("node_join_kubeadm")


def test_pod_subnets_follow_sorted_member_names_and_do_not_overlap() -> None:
    members = ["lab-3", "lab-1", "cam-7", "lab-2"]
    subnets = {m: common.node_pod_subnet(m, members, "10.244.0.0/16") for m in members}
    assert subnets["cam-7"] == "10.244.0.0/24"
    assert subnets["lab-1"] == "10.244.1.0/24"
    assert subnets["lab-3"] == "10.244.3.0/24"
    assert len(set(subnets.values())) == len(members)


def test_pod_subnet_errors_name_the_problem() -> None:
    with pytest.raises(common.ClusterError, match="not a cluster member"):
        common.node_pod_subnet("ghost", ["lab-1"], "10.244.0.0/16")
    with pytest.raises(common.ClusterError, match="fewer than 3"):
        common.node_pod_subnet("c", ["a", "b", "c"], "10.244.0.0/23")
    with pytest.raises(common.ClusterError, match="too small"):
        common.node_pod_subnet("a", ["a"], "10.244.0.0/24", 24)


def test_kubelet_gets_only_the_labels_it_may_set_itself() -> None:
    labels = {
        "device": "camera",
        "node-role.kubernetes.io/edge": "",
        "topology.kubernetes.io/zone": "hall-2",
        "node.kubernetes.io/instance-type": "pi4",
        "example.com/owner": "ops",
    }
    assert common.kubelet_node_labels(labels) == (
        "device=camera,example.com/owner=ops,node.kubernetes.io/instance-type=pi4"
    )
    assert common.kubelet_node_labels({}) == ""


def test_ca_cert_hash_matches_the_openssl_recipe(tmp_path: Path) -> None:
    """kubeadm's documented recipe: the CA's public key, DER, sha256."""
    key, cert = tmp_path / "ca.key", tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=kubernetes", "-days", "1"], check=True,
                   capture_output=True)
    pubkey = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(cert)], check=True,
                            capture_output=True).stdout
    der = subprocess.run(["openssl", "rsa", "-pubin", "-outform", "der"], input=pubkey, check=True,
                         capture_output=True).stdout
    digest = subprocess.run(["sha256sum"], input=der, check=True, capture_output=True).stdout.split()[0]
    assert kube_api.ca_cert_hash(cert.read_bytes()) == "sha256:" + digest.decode()


ADMIN_CONF = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://10.0.0.5:6443
  name: edge
contexts:
- context: {cluster: edge, user: kubernetes-admin}
  name: kubernetes-admin@edge
current-context: kubernetes-admin@edge
users:
- name: kubernetes-admin
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}
"""


def test_controller_kubeconfig_points_at_the_given_server_and_records_its_source(tmp_path: Path) -> None:
    text = common.controller_kubeconfig(ADMIN_CONF, "https://127.0.0.1:16443")
    doc = yaml.safe_load(text)
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:16443"
    assert doc["users"] == yaml.safe_load(ADMIN_CONF)["users"]
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    assert common.kubeconfig_source(path) == hashlib.sha256(ADMIN_CONF.encode()).hexdigest()
    path.write_text(ADMIN_CONF)
    assert common.kubeconfig_source(path) is None
    assert common.kubeconfig_source(tmp_path / "absent") is None
    with pytest.raises(common.ClusterError):
        common.controller_kubeconfig("kind: Config\n", "https://x:6443")


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("1h30m", 5400), ("90s", 90), ("600", 600)])
def test_durations(text: str, seconds: int) -> None:
    assert common.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15 minutes", "m", "-5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(common.ClusterError):
        common.parse_duration(text)


def test_failure_report_redacts_tokens_and_keeps_the_tail() -> None:
    output = "\n".join(f"line {i}" for i in range(30)) + "\n[bootstrap-token] Using token: ab12cd.0123456789abcdef\n\n"
    report = common.failure_report(output, lines=3)
    assert report == "line 28\nline 29\n[bootstrap-token] Using token: <token redacted>"


def test_a_given_token_must_look_like_one(tmp_path: Path) -> None:
    with pytest.raises(common.ClusterError, match="not a bootstrap token"):
        kube_api.join_token(tmp_path / "kubeconfig", "15m", "not-a-token")


def _init_vars(labels: str) -> dict[str, object]:
    return {**NODE, **CONTROL_PLANE, "kubeadm": {
        "node_name": "cp-1", "node_ip": "192.0.2.10", "node_labels": labels, "version": "1.20.2",
        "cert_sans": ["192.0.2.10", "cp-1"]}}


def test_kubeadm_init_configuration() -> None:
    docs = list(yaml.safe_load_all(render_template("control_plane_kubeadm", "kubeadm-init.yaml.j2",
                                                   _init_vars("device=camera"))))
    init, cluster_config, kubelet = docs
    assert init["kind"] == "InitConfiguration"
    assert init["nodeRegistration"]["kubeletExtraArgs"] == {"node-ip": "192.0.2.10", "node-labels": "device=camera"}
    assert init["bootstrapTokens"][0]["ttl"] == CONTROL_PLANE["control_plane_kubeadm_init_token_ttl"]
    assert cluster_config["imageRepository"] == "edge-provision.local"
    assert cluster_config["kubernetesVersion"] == "v1.20.2"
    assert cluster_config["etcd"] == {"external": {"endpoints": CONTROL_PLANE["control_plane_kubeadm_etcd_endpoints"]}}
    assert cluster_config["apiServer"]["certSANs"] == ["192.0.2.10", "cp-1"]
    assert cluster_config["apiServer"]["timeoutForControlPlane"] == "4m0s"  # kubeadm's own default
    slow = next(d for d in yaml.safe_load_all(render_template(
        "control_plane_kubeadm", "kubeadm-init.yaml.j2",
        {**_init_vars(""), "control_plane_kubeadm_timeout_for_control_plane": "20m0s"})) if d["kind"] == "ClusterConfiguration")
    assert slow["apiServer"]["timeoutForControlPlane"] == "20m0s"
    # One control plane: no leader election to lose while the API server restarts.
    assert cluster_config["controllerManager"] == {"extraArgs": {"leader-elect": "false"}}
    assert cluster_config["scheduler"] == {"extraArgs": {"leader-elect": "false"}}
    elected = next(d for d in yaml.safe_load_all(render_template(
        "control_plane_kubeadm", "kubeadm-init.yaml.j2",
        {**_init_vars(""), "control_plane_kubeadm_leader_elect": True})) if d["kind"] == "ClusterConfiguration")
    assert elected["scheduler"] == {"extraArgs": {"leader-elect": "true"}}
    assert kubelet == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                       "cgroupDriver": "systemd", "failSwapOn": True}
    no_labels = next(yaml.safe_load_all(
        render_template("control_plane_kubeadm", "kubeadm-init.yaml.j2", _init_vars(""))))
    assert "node-labels" not in no_labels["nodeRegistration"]["kubeletExtraArgs"]


def test_kubeadm_join_configuration() -> None:
    text = render_template("node_join_kubeadm", "kubeadm-join.yaml.j2", {**NODE, **JOIN, "kubeadm": {
        "api_server_endpoint": "192.0.2.10:6443", "token": "ab12cd.0123456789abcdef",
        "ca_cert_hash": "sha256:" + "0" * 64, "node_name": "cam-1", "node_ip": "192.0.2.21",
        "node_labels": "device=camera"}})
    doc = yaml.safe_load(text)
    assert doc["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "192.0.2.10:6443", "token": "ab12cd.0123456789abcdef",
        "caCertHashes": ["sha256:" + "0" * 64]}
    assert doc["discovery"]["timeout"] == JOIN["node_join_kubeadm_discovery_timeout"]
    assert doc["nodeRegistration"]["name"] == "cam-1"


def test_cni_network_uses_the_node_subnet() -> None:
    doc = json.loads(render_template("kubernetes_node", "cni.conflist.j2",
                                     {**NODE, "kubernetes_node_pod_subnet_effective": "10.244.3.0/24"}))
    assert doc["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}]]


class _Target:
    """What python_step's callback touches of a pyinfra Host: its name and its log."""

    name = "lab-9"

    def __init__(self) -> None:
        self.logged: list[str] = []

    def log_styled(self, message: str, **_: object) -> None:
        self.logged.append(message)


def test_python_step_runs_at_execution_and_reports_a_failure_without_traceback() -> None:
    from edge_provision.pyinfra_engine.operations.common import python_step

    calls: list[str] = []
    ok = python_step("counting", lambda: calls.append("ran"))
    target = _Target()
    assert ok.function(None, target) is True and calls == ["ran"] and target.logged == []

    def broken() -> None:
        raise common.ClusterError("the API said no")

    assert python_step("labels of node lab-9", broken).function(None, target) is False
    assert target.logged == ["host lab-9: labels of node lab-9: the API said no"]


def test_kubeadm_init_argv() -> None:
    assert kubeadm.kubeadm_init("/etc/k/init.yaml", ["preflight", "addon/coredns"]) == [
        "kubeadm", "init", "--config=/etc/k/init.yaml", "--skip-phases=preflight,addon/coredns", "--skip-token-print"]
    assert kubeadm.kubeadm_init("/c", [], "/etc/k/patches")[-1] == "--experimental-patches=/etc/k/patches"


def test_probe_patches_set_the_failure_thresholds_of_each_static_pod() -> None:
    components = CONTROL_PLANE["control_plane_kubeadm_images"]
    assert CONTROL_PLANE["control_plane_kubeadm_probe_failure_thresholds"] == {}  # kubeadm's own by default
    assert kubeadm.probe_patches({}, components) == {}
    patches = kubeadm.probe_patches({"startup": 90, "liveness": 30}, components)
    assert sorted(patches) == [
        "kube-apiserver+strategic.yaml", "kube-controller-manager+strategic.yaml", "kube-scheduler+strategic.yaml"]
    assert yaml.safe_load(patches["kube-scheduler+strategic.yaml"]) == {"spec": {"containers": [{
        "name": "kube-scheduler",
        "startupProbe": {"failureThreshold": 90},
        "livenessProbe": {"failureThreshold": 30},
    }]}}
    class Tagged(int):  # what Ansible 2.19 passes a filter for an inventory number
        pass

    class TaggedStr(str):
        pass

    tagged = kubeadm.probe_patches({"startup": Tagged(90), "liveness": Tagged(30)}, [TaggedStr("kube-scheduler")])
    assert tagged == {"kube-scheduler+strategic.yaml": patches["kube-scheduler+strategic.yaml"]}
    only_startup = yaml.safe_load(kubeadm.probe_patches({"startup": 60}, ["kube-apiserver"])["kube-apiserver+strategic.yaml"])
    assert only_startup["spec"]["containers"][0] == {"name": "kube-apiserver", "startupProbe": {"failureThreshold": 60}}


@pytest.mark.parametrize(("thresholds", "message"), [
    ({"readiness": 3}, "unknown probe readiness"),
    ({"startup": 0}, r"startup: 0 is not a positive whole number"),
    ({"liveness": "30"}, r"liveness: '30' is not a positive whole number"),
    ({"liveness": True}, r"liveness: True is not a positive whole number"),
])
def test_probe_patches_refuse_what_kubeadm_could_not_take(thresholds: dict[str, object], message: str) -> None:
    with pytest.raises(common.ClusterError, match=message):
        kubeadm.probe_patches(thresholds, ["kube-apiserver"])


def test_api_calls_retry_what_an_api_server_answers_while_it_cannot_serve() -> None:
    retry = kube_api.api_retry()
    for status in (429, 500, 502, 503, 504):
        assert retry.is_retry("POST", status), status  # writes too: each is safe to repeat
    for status in (400, 401, 403, 404, 409, 422):
        assert not retry.is_retry("POST", status), status
    assert retry.status == kube_api.API_RETRIES and kube_api.api_retry(0).status == 0
