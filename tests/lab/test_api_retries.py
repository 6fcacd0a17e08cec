"""The controller's API calls ride out an API server that is briefly away; probes that poll on
their own ask once per round, so their own timeouts hold.

A real kube-apiserver (tests/lab/apiserver.py) sits behind a loopback TCP forwarder that, for
its first seconds, resets every connection as QEMU's user-mode port forward does while nothing
listens on the guest's 6443 (measured: a kube-apiserver restart on the control plane VM made a
join token request fail with ConnectionResetError 104). Then it forwards to the API server.
A second API server gives up on requests after 3 s while its etcd is stopped, answering 504
as the VM's did under load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from edge_provision import cli
from edge_provision.stages.cluster import common, kube_api
from edge_provision.stages.workloads import __main__ as workloads_cli
from tests.lab.apiserver import LocalApi, local_api


class ResettingForwarder:
    """Loopback TCP forwarder to ``target`` that resets every connection until ``reset_until``."""

    def __init__(self, target: tuple[str, int], reset_seconds: float) -> None:
        self.target = target
        self.reset_until = time.monotonic() + reset_seconds
        self.resets = 0
        self.forwarded = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.reset_until:
                self.resets += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # RST, as a refused guest port behind QEMU's forward gives
                continue
            self.forwarded += 1
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    with local_api(tmp_path_factory.mktemp("api")) as running:
        yield running


def _kubeconfig_through(api: LocalApi, port: int, directory: Path) -> Path:
    doc = yaml.safe_load(api.kubeconfig)
    doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_join_token_is_made_through_an_api_server_that_resets_connections_for_a_while(
    api: LocalApi, tmp_path: Path
) -> None:
    forwarder = ResettingForwarder(("127.0.0.1", int(api.url.rsplit(":", 1)[1])), reset_seconds=4)
    try:
        kubeconfig = _kubeconfig_through(api, forwarder.port, tmp_path)
        token = kube_api.create_join_token(kubeconfig, 600)
    finally:
        forwarder.close()
    assert forwarder.resets >= 2, "the forwarder never reset a connection: nothing was retried"
    token_id, token_secret = token.token.split(".")
    with kube_api.api_client(_kubeconfig_through(api, int(api.url.rsplit(":", 1)[1]), tmp_path)) as raw:
        secret = client.CoreV1Api(raw).read_namespaced_secret(f"bootstrap-token-{token_id}", "kube-system")
    assert kube_api._holds_token_secret(secret, token_secret)


def test_a_retried_token_create_that_had_reached_the_server_counts_as_made(api: LocalApi, tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text(api.kubeconfig)
    with kube_api.api_client(tmp_path / "kubeconfig") as raw:
        core = client.CoreV1Api(raw)
        args = ("r3try0", "0123456789abcdef", "2099-01-01T00:00:00Z", "retried")
        kube_api.create_bootstrap_secret(core, *args)
        kube_api.create_bootstrap_secret(core, *args)  # the second attempt of the same create
        with pytest.raises(client.ApiException) as refused:  # someone else's token of that id
            kube_api.create_bootstrap_secret(core, "r3try0", "fedcba9876543210", *args[2:])
    assert refused.value.status == 409


def _api_port(api: LocalApi) -> int:
    return int(api.url.rsplit(":", 1)[1])


def test_labels_are_set_on_a_node_through_an_api_server_that_resets_connections_for_a_while(
    api: LocalApi, tmp_path: Path
) -> None:
    (tmp_path / "direct").mkdir()
    with kube_api.api_client(_kubeconfig_through(api, _api_port(api), tmp_path / "direct")) as raw:
        core = client.CoreV1Api(raw)
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="edge-away")))
        forwarder = ResettingForwarder(("127.0.0.1", _api_port(api)), reset_seconds=4)
        try:
            result = kube_api.label_node(
                _kubeconfig_through(api, forwarder.port, tmp_path), "edge-away", {"device": "camera"}, timeout=60
            )
        finally:
            forwarder.close()
        labels = core.read_node("edge-away").metadata.labels
    assert forwarder.resets >= 2, "the forwarder never reset a connection: nothing was waited out"
    assert result == {"changed": True, "labels": {"device": "camera"}}
    assert labels["device"] == "camera"


def test_a_node_that_never_registers_fails_the_label_step_naming_it(api: LocalApi, tmp_path: Path) -> None:
    with pytest.raises(common.ClusterError, match=r"node edge-never not registered \(its labels are not set\)"):
        kube_api.label_node(_kubeconfig_through(api, _api_port(api), tmp_path), "edge-never", {"a": "b"}, timeout=3)


def test_labels_of_a_node_the_cluster_does_not_have_fail_naming_it(
    api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As for a host that failed earlier in the run: one line naming the node, no API dump."""
    kubeconfig = _kubeconfig_through(api, _api_port(api), tmp_path)
    rc = workloads_cli.main(["labels", f"--kubeconfig={kubeconfig}", "--node=edge-failed", '--labels={"a": "b"}',
                             "--wasm", "wasmtime", "crun-wasm"])
    assert rc == 1
    assert capsys.readouterr().err == (
        "edge-provision workloads labels: node edge-failed is not registered with the cluster"
        " (did its cluster stage fail, or not run yet?)\n")


def test_a_node_probe_asks_once(api: LocalApi, tmp_path: Path) -> None:
    """The probe under ``wait_node_ready``/``label_node`` and the pyinfra checks: one connection,
    not three minutes of retries inside one round of the caller's loop."""
    forwarder = ResettingForwarder(("127.0.0.1", _api_port(api)), reset_seconds=600)
    try:
        with pytest.raises(Exception, match="Connection reset by peer"):
            kube_api.node_status(_kubeconfig_through(api, forwarder.port, tmp_path), "edge-away", retries=0)
    finally:
        forwarder.close()
    assert forwarder.resets == 1


def test_status_of_a_fleet_whose_api_server_is_away_says_so_at_once(
    api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forwarder = ResettingForwarder(("127.0.0.1", _api_port(api)), reset_seconds=600)
    try:
        _kubeconfig_through(api, forwarder.port, tmp_path).rename(tmp_path / common.KUBECONFIG_FILE)
        rc = cli.main(["status", "--inventory", str(tmp_path)])
    finally:
        forwarder.close()
    assert rc == 1
    assert capsys.readouterr().err.startswith("status: ")
    assert forwarder.resets == 1


# etcd stopped (SIGSTOP) for a while under an API server that gives up on a request after
# REQUEST_TIMEOUT: it answers 504, as the control plane VM's did while its etcd lagged
# (measured: a join token request failed with "504 Timeout: request did not complete within 1m0s").
REQUEST_TIMEOUT = 3
ETCD_STALL = 8.0


@pytest.fixture(scope="module")
def impatient_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    with local_api(tmp_path_factory.mktemp("impatient-api"), [f"--request-timeout={REQUEST_TIMEOUT}s"]) as running:
        yield running


@contextlib.contextmanager
def _etcd_stopped(api: LocalApi, seconds: float) -> Iterator[None]:
    os.kill(api.etcd_pid, signal.SIGSTOP)
    resume = threading.Timer(seconds, os.kill, (api.etcd_pid, signal.SIGCONT))
    resume.start()
    try:
        yield
    finally:
        resume.cancel()
        os.kill(api.etcd_pid, signal.SIGCONT)


def test_an_api_server_whose_etcd_stalls_answers_504(impatient_api: LocalApi, tmp_path: Path) -> None:
    """What the retry below must ride out, asked once."""
    (tmp_path / "kubeconfig").write_text(impatient_api.kubeconfig)
    with (_etcd_stopped(impatient_api, 600), kube_api.api_client(tmp_path / "kubeconfig", retries=0) as raw,
          pytest.raises(client.ApiException) as answered):
        kube_api.create_bootstrap_secret(client.CoreV1Api(raw), "st4ll0", "0123456789abcdef",
                                        "2099-01-01T00:00:00Z", "asked once")
    assert answered.value.status == 504, answered.value


def test_a_join_token_is_made_through_an_api_server_whose_etcd_stalls_for_a_while(
    impatient_api: LocalApi, tmp_path: Path
) -> None:
    (tmp_path / "kubeconfig").write_text(impatient_api.kubeconfig)
    started = time.monotonic()
    with _etcd_stopped(impatient_api, ETCD_STALL):
        token = kube_api.create_join_token(tmp_path / "kubeconfig", 600)
    assert time.monotonic() - started >= ETCD_STALL  # made after etcd came back, through 504s
    token_id, token_secret = token.token.split(".")
    with kube_api.api_client(tmp_path / "kubeconfig") as raw:
        secret = client.CoreV1Api(raw).read_namespaced_secret(f"bootstrap-token-{token_id}", "kube-system")
    assert kube_api._holds_token_secret(secret, token_secret)
