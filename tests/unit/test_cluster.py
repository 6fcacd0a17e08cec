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
        "node_name": "cp-1", "node_ip": "192.0.2.10", "node_labels": labels, "version": "1.34.12",
        "etcd_tag": "3.6.17-0", "dns_tag": "v1.12.1", "cert_sans": ["192.0.2.10", "cp-1"],
        "patches_dir": ""}}


def _cluster_config(**overrides: object) -> dict[str, object]:
    docs = yaml.safe_load_all(render_template("control_plane_kubeadm", "kubeadm-init.yaml.j2",
                                              {**_init_vars(""), **overrides}))
    return next(d for d in docs if d["kind"] == "ClusterConfiguration")


def test_kubeadm_init_configuration() -> None:
    docs = list(yaml.safe_load_all(render_template("control_plane_kubeadm", "kubeadm-init.yaml.j2",
                                                   _init_vars("device=camera"))))
    init, cluster_config, kubelet, proxy = docs
    assert init["apiVersion"] == cluster_config["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["kind"] == "InitConfiguration"
    assert init["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "node-ip", "value": "192.0.2.10"}, {"name": "node-labels", "value": "device=camera"}]
    assert init["nodeRegistration"]["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert "ignorePreflightErrors" not in init["nodeRegistration"]  # every preflight check counts
    assert init["bootstrapTokens"][0]["ttl"] == CONTROL_PLANE["control_plane_kubeadm_init_token_ttl"]
    assert init["timeouts"] == {"controlPlaneComponentHealthCheck": "4m0s"}  # kubeadm's own default
    assert cluster_config["imageRepository"] == "edge-provision.local"
    assert cluster_config["kubernetesVersion"] == "v1.34.12"
    # kubeadm's default topology: stacked etcd (a static pod, TLS by kubeadm's CA), our image tag.
    assert cluster_config["etcd"] == {"local": {"imageTag": "3.6.17-0"}}
    assert cluster_config["dns"] == {"imageTag": "v1.12.1"}
    assert cluster_config["networking"] == {"serviceSubnet": "10.96.0.0/12", "podSubnet": "10.244.0.0/16",
                                            "dnsDomain": "cluster.local"}
    assert cluster_config["apiServer"]["certSANs"] == ["192.0.2.10", "cp-1"]
    slow = yaml.safe_load_all(render_template(
        "control_plane_kubeadm", "kubeadm-init.yaml.j2",
        {**_init_vars(""), "control_plane_kubeadm_timeout_for_control_plane": "20m0s"}))
    assert next(slow)["timeouts"] == {"controlPlaneComponentHealthCheck": "20m0s"}
    # One control plane: no leader election to lose while the API server restarts.
    no_election = {"extraArgs": [{"name": "leader-elect", "value": "false"}]}
    assert cluster_config["controllerManager"] == cluster_config["scheduler"] == no_election
    elected = _cluster_config(control_plane_kubeadm_leader_elect=True)
    assert elected["scheduler"] == {"extraArgs": [{"name": "leader-elect", "value": "true"}]}
    assert kubelet == {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                       "cgroupDriver": "systemd", "failSwapOn": True}
    assert proxy == {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                     "mode": "iptables"}
    no_labels = next(yaml.safe_load_all(
        render_template("control_plane_kubeadm", "kubeadm-init.yaml.j2", _init_vars(""))))
    assert [a["name"] for a in no_labels["nodeRegistration"]["kubeletExtraArgs"]] == ["node-ip"]
    assert "patches" not in no_labels


def test_the_probe_patches_directory_is_named_in_the_init_configuration() -> None:
    """kubeadm refuses ``--patches`` beside ``--config`` ("can not mix '--config' with arguments
    [patches]"), so the directory goes in the InitConfiguration and never on the command line."""
    variables = _init_vars("")
    variables["kubeadm"] = {**variables["kubeadm"], "patches_dir": "/etc/k/patches"}  # type: ignore[dict-item]
    init = next(yaml.safe_load_all(render_template("control_plane_kubeadm", "kubeadm-init.yaml.j2", variables)))
    assert init["patches"] == {"directory": "/etc/k/patches"}
    assert not any(a.startswith("--patches") for a in kubeadm.kubeadm_init("/c", []))


def test_kube_proxy_conntrack_and_ignored_preflight_checks_come_from_the_fleet() -> None:
    docs = list(yaml.safe_load_all(render_template("control_plane_kubeadm", "kubeadm-init.yaml.j2", {
        **_init_vars(""), "control_plane_kubeadm_kube_proxy_conntrack": {"maxPerCore": 0},
        "kubernetes_node_ignore_preflight_errors": ["SystemVerification"]})))
    assert docs[3]["conntrack"] == {"maxPerCore": 0}
    assert docs[0]["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification"]


def test_kubeadm_join_configuration() -> None:
    text = render_template("node_join_kubeadm", "kubeadm-join.yaml.j2", {**NODE, **JOIN, "kubeadm": {
        "api_server_endpoint": "192.0.2.10:6443", "token": "ab12cd.0123456789abcdef",
        "ca_cert_hash": "sha256:" + "0" * 64, "node_name": "cam-1", "node_ip": "192.0.2.21",
        "node_labels": "device=camera"}})
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert doc["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "192.0.2.10:6443", "token": "ab12cd.0123456789abcdef",
        "caCertHashes": ["sha256:" + "0" * 64]}
    assert doc["timeouts"] == {"discovery": JOIN["node_join_kubeadm_discovery_timeout"]}
    assert doc["nodeRegistration"]["name"] == "cam-1"
    assert doc["nodeRegistration"]["kubeletExtraArgs"][0] == {"name": "node-ip", "value": "192.0.2.21"}


def test_cni_network_is_flannels() -> None:
    doc = json.loads(render_template("kubernetes_node", "cni.conflist.j2", NODE))
    assert [p["type"] for p in doc["plugins"]] == ["flannel", "portmap"]
    assert "flannel" in NODE["kubernetes_node_cni_controller_plugins"]


def test_pod_network_manifests() -> None:
    from edge_provision.stages.cluster import pod_network

    docs = pod_network.manifests("edge-provision.local/flannel:v0.28.4", {"kubernetes_node_flannel_backend": "host-gw"})
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]
    config = json.loads(docs[4]["data"]["net-conf.json"])
    assert config == {"Network": NODE["kubernetes_node_pod_network"], "Backend": {"Type": "host-gw"}}
    pod = docs[5]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["containers"][0]["image"] == "edge-provision.local/flannel:v0.28.4"
    assert {d["metadata"].get("namespace") for d in docs[1:]} - {None} == {"kube-flannel"}
    default = pod_network.manifests("x", {})
    assert json.loads(default[4]["data"]["net-conf.json"])["Backend"] == {"Type": "vxlan"}


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
    assert kubeadm.kubeadm_init("/etc/k/init.yaml", []) == [
        "kubeadm", "init", "--config=/etc/k/init.yaml", "--skip-token-print"]  # every phase, preflight too
    assert kubeadm.kubeadm_init("/etc/k/init.yaml", ["addon/kube-proxy"])[-1] == "--skip-phases=addon/kube-proxy"
    assert kubeadm.kubeadm_join("/j", []) == ["kubeadm", "join", "--config=/j"]
    # Every phase runs by default, preflight included, at init and at join.
    assert CONTROL_PLANE["control_plane_kubeadm_skip_phases"] == JOIN["node_join_kubeadm_skip_phases"] == []
    assert NODE["kubernetes_node_ignore_preflight_errors"] == []


def test_probe_patches_set_the_failure_thresholds_of_each_static_pod() -> None:
    components = CONTROL_PLANE["control_plane_kubeadm_images"]
    assert CONTROL_PLANE["control_plane_kubeadm_probe_failure_thresholds"] == {}  # kubeadm's own by default
    assert kubeadm.probe_patches({}, components) == {}
    patches = kubeadm.probe_patches({"startup": 90, "liveness": 30}, components)
    assert sorted(patches) == ["etcd+strategic.yaml", "kube-apiserver+strategic.yaml",
                               "kube-controller-manager+strategic.yaml", "kube-scheduler+strategic.yaml"]
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


def test_the_fleets_kubernetes_choices_are_the_pinned_minors() -> None:
    from edge_provision.artifacts.builders.kubernetes_modules import load_pins, pinned_minors
    from edge_provision.role_files import role_argument_spec

    spec = role_argument_spec("edge")["options"]["edge_kubernetes_version"]
    assert spec["choices"] == pinned_minors()
    assert role_defaults("edge")["edge_kubernetes_version"] in pinned_minors()
    assert load_pins(minor=role_defaults("edge")["edge_kubernetes_version"]).version.startswith("1.34.")


def test_an_unknown_binary_is_named_before_anything_is_built() -> None:
    with pytest.raises(common.ClusterError, match=r"no such Kubernetes binary: kubelett \(built: .*kubelet"):
        kubeadm.artifacts("amd64", "debian-12", kubernetes="1.34", binaries=["kubelett"])


def test_the_api_server_certificate_names_the_node_and_the_controllers_address() -> None:
    assert kubeadm.cert_sans("192.0.2.10", "192.0.2.10", "cp-1") == ["192.0.2.10", "cp-1"]
    assert kubeadm.cert_sans("10.0.0.5", "203.0.113.7", "cp-1", "https://k8s.example.net:6443") == [
        "10.0.0.5", "203.0.113.7", "cp-1", "k8s.example.net"]
    # Ansible's filter is the same function.
    from plugins.filter.cluster import FilterModule

    assert FilterModule().filters()["edge_provision_cert_sans"] is kubeadm.cert_sans
