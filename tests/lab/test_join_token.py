"""A join token is handed out only once the cluster has signed its cluster-info with it.

kubeadm's (and yurtadm's) token discovery trusts ``kube-public/cluster-info`` only with the
token's JWS signature, which the controller manager's bootstrap signer adds in its own time
(measured on the emulated control plane VM: none after 2 min, while the controller manager
restarted). The controller waits for it, so a node is touched only with a token it can use, and
a token the cluster never signs fails on the controller, naming its ID.

A real kube-apiserver and etcd (tests/lab/apiserver.py) carry a cluster-info like kubeadm's; the
real kube-controller-manager (the control plane's binary) runs only its bootstrapsigner
controller, as kubeadm enables it (it is off by default).
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from edge_provision.artifacts.builders.kubernetes_modules import build_kubernetes_modules
from edge_provision.stages.cluster import common, kube_api
from tests.lab.apiserver import LocalApi, local_api

UNKNOWN_TOKEN = "abcdef.0123456789abcdef"  # well formed, never made in this cluster


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalApi, Path]]:
    directory = tmp_path_factory.mktemp("api")
    with local_api(directory) as running:
        yield running, directory


def _core(kubeconfig: Path) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.api_client(kubeconfig))


def _cluster_info(api: LocalApi) -> client.V1ConfigMap:
    """cluster-info as kubeadm's bootstrap-token phase writes it: a kubeconfig without users."""
    admin = yaml.safe_load(api.kubeconfig)
    public = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"], "contexts": [], "users": []}
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cluster-info", namespace="kube-public"),
                              data={"kubeconfig": yaml.safe_dump(public)})


@pytest.fixture
def kubeconfig(api: tuple[LocalApi, Path]) -> Iterator[Path]:
    """The admin kubeconfig of a cluster whose kube-public/cluster-info exists."""
    running, directory = api
    path = directory / "kubeconfig"
    _core(path).create_namespaced_config_map("kube-public", _cluster_info(running))
    yield path
    _core(path).delete_namespaced_config_map("cluster-info", "kube-public")


@pytest.fixture
def bootstrap_signer(kubeconfig: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(kubeconfig.parent / "controller-manager.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [str(build_kubernetes_modules("amd64") / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
         "--controllers=bootstrap-signer-controller", "--leader-elect=false", "--secure-port=0"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    yield process
    process.terminate()
    process.wait(timeout=20)
    log.close()


def _signatures(kubeconfig: Path) -> set[str]:
    data = _core(kubeconfig).read_namespaced_config_map("cluster-info", "kube-public").data or {}
    return {key.removeprefix("jws-kubeconfig-") for key in data if key.startswith("jws-kubeconfig-")}


def test_a_new_token_comes_back_once_cluster_info_is_signed_with_it(
    kubeconfig: Path, bootstrap_signer: subprocess.Popen[bytes]
) -> None:
    started = time.monotonic()
    token = kube_api.join_token(kubeconfig, "15m", signed_within="2m")
    token_id = token.token.split(".")[0]
    assert token_id in _signatures(kubeconfig)
    assert bootstrap_signer.poll() is None, "the controller manager exited"
    assert time.monotonic() - started < 120


def test_an_unsigned_token_fails_on_the_controller_naming_its_id(kubeconfig: Path) -> None:
    """No bootstrap signer runs: the new token's Secret exists, but nothing signs cluster-info."""
    started = time.monotonic()
    with pytest.raises(common.ClusterError, match=r"no signature of token ID [a-z0-9]{6}\b") as failure:
        kube_api.join_token(kubeconfig, "15m", signed_within="6s")
    assert time.monotonic() - started >= 6
    token_id = str(failure.value).split("token ID ")[1][:6]
    secrets = _core(kubeconfig).list_namespaced_secret("kube-system").items
    assert f"bootstrap-token-{token_id}" in {s.metadata.name for s in secrets}
    assert _signatures(kubeconfig) == set()


def test_a_given_token_the_cluster_does_not_know_fails_naming_its_id(
    kubeconfig: Path, bootstrap_signer: subprocess.Popen[bytes]
) -> None:
    with pytest.raises(common.ClusterError, match="no signature of token ID abcdef") as failure:
        kube_api.join_token(kubeconfig, "15m", given=UNKNOWN_TOKEN, signed_within="6s")
    assert UNKNOWN_TOKEN.split(".")[1] not in str(failure.value)


def test_without_cluster_info_a_token_comes_back_at_once(api: tuple[LocalApi, Path]) -> None:
    """A cluster without kubeadm's discovery (k3s, the lab's API server) has nothing to sign."""
    path = api[1] / "kubeconfig"
    started = time.monotonic()
    token = kube_api.join_token(path, "15m", signed_within="2m")
    assert time.monotonic() - started < 10
    secret = _core(path).read_namespaced_secret(f"bootstrap-token-{token.token.split('.')[0]}", "kube-system")
    assert base64.b64decode(secret.data["token-secret"]).decode() == token.token.split(".")[1]
