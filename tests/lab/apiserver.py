"""A real Kubernetes API on the controller for lab tests that have no control plane on a host.

etcd and kube-apiserver (built from their Go modules by `edge-provision artifacts build`, the
same binaries the kubeadm control plane's images carry) listen on loopback with a CA and serving certificate made here, and a static admin token. The joins of
k3s, KubeEdge and OpenYurt with stand-in tools talk to it for everything that goes through the
API (bootstrap tokens, the CA hash, node labels, k3s's node-password Secret).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import secrets
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from edge_provision.artifacts.builders.kubernetes_modules import build_etcd, build_kubernetes_modules


@dataclass
class LocalApi:
    url: str
    kubeconfig: str  # the admin kubeconfig's text
    etcd_pid: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _certificates(directory: Path) -> bytes:
    now = dt.datetime.now(dt.UTC)
    ca_key, key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-provision-lab-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    (directory / "ca.crt").write_bytes(ca_pem)
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(_pem_key(key))
    (directory / "sa.key").write_bytes(_pem_key(_key()))
    return ca_pem


@contextmanager
def local_api(directory: Path, apiserver_args: Sequence[str] = ()) -> Iterator[LocalApi]:
    """etcd and kube-apiserver (with ``apiserver_args`` too) on loopback until the context ends
    (both stopped, then)."""
    directory.mkdir(parents=True, exist_ok=True)
    etcd = build_etcd("amd64") / "etcd"
    apiserver = build_kubernetes_modules("amd64") / "kube-apiserver"
    ca_pem = _certificates(directory)
    admin_token = secrets.token_hex(16)
    (directory / "tokens.csv").write_text(f'{admin_token},admin,admin,"system:masters"\n')
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    logs = [open(directory / name, "w") for name in ("etcd.log", "apiserver.log")]  # noqa: SIM115
    processes = []
    try:
        processes.append(subprocess.Popen(
            [str(etcd), "--data-dir", str(directory / "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}"],
            stdout=logs[0], stderr=subprocess.STDOUT,
        ))
        processes.append(subprocess.Popen(
            [str(apiserver), f"--etcd-servers=http://127.0.0.1:{etcd_port}", "--bind-address=127.0.0.1",
             f"--secure-port={api_port}", f"--cert-dir={directory}",
             f"--tls-cert-file={directory / 'server.crt'}", f"--tls-private-key-file={directory / 'server.key'}",
             f"--token-auth-file={directory / 'tokens.csv'}", "--authorization-mode=RBAC",
             f"--service-account-key-file={directory / 'sa.key'}",
             f"--service-account-signing-key-file={directory / 'sa.key'}",
             "--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/12",
             *apiserver_args],
            stdout=logs[1], stderr=subprocess.STDOUT,
        ))
        url = f"https://127.0.0.1:{api_port}"
        kubeconfig = yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "admin",
            "clusters": [{"name": "lab", "cluster": {
                "server": url, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
            "users": [{"name": "admin", "user": {"token": admin_token}}],
            "contexts": [{"name": "admin", "context": {"cluster": "lab", "user": "admin"}}],
        })
        _wait_ready(directory, kubeconfig, processes)
        yield LocalApi(url=url, kubeconfig=kubeconfig, etcd_pid=processes[0].pid)
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def _wait_ready(directory: Path, kubeconfig: str, processes: list[subprocess.Popen[bytes]]) -> None:
    """Until /readyz answers ok: every post-start hook has finished. A hook that fails exits the
    API server (kube-apiserver 1.34: "PostStartHook scheduling/bootstrap-system-priority-classes
    failed" when a test stalled etcd while it still ran), so a test must not start before."""
    from edge_provision.stages.cluster import kube_api

    path = directory / "kubeconfig"
    path.write_text(kubeconfig)
    from kubernetes import client

    deadline = time.monotonic() + 120
    while True:
        try:
            with kube_api.api_client(path, retries=0) as api:
                client.CoreV1Api(api).read_namespace("kube-system")
            doc = yaml.safe_load(kubeconfig)
            request = urllib.request.Request(
                doc["clusters"][0]["cluster"]["server"] + "/readyz",
                headers={"Authorization": f"Bearer {doc['users'][0]['user']['token']}"},
            )
            context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
            with urllib.request.urlopen(request, context=context, timeout=5) as answer:  # 500 until ready
                if answer.read() == b"ok":
                    return
        except Exception as exc:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                tail = (directory / "apiserver.log").read_text()[-3000:]
                raise RuntimeError(f"the lab API server did not come up ({exc}):\n{tail}") from exc
            time.sleep(1)
