"""The Kubernetes API from the controller (the ``kubernetes`` client) for the cluster stage:
bootstrap join tokens and the CA hash, node readiness and labels, k3s's node-password record.

Join tokens are bootstrap tokens made with the fleet's admin kubeconfig (the Secret
``kube-system/bootstrap-token-<id>`` that ``kubeadm token create`` writes), short-lived, held in
memory and handed to the joining node in a 0600 file that the join removes again.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_provision.stages.cluster.common import BOOTSTRAP_TOKEN, ClusterError, missing_labels, parse_duration

TOKEN_ID_CHARS = string.ascii_lowercase + string.digits


TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"


def ca_cert_hash(ca_pem: bytes | str) -> str:
    """kubeadm's ``--discovery-token-ca-cert-hash``: sha256 of the CA's SubjectPublicKeyInfo."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
    cert = x509.load_pem_x509_certificate(data)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


# An API server that restarts (measured on an emulated control plane VM at load 11-15; a static
# pod updated) refuses or resets connections for a while, and one that is overloaded answers 5xx
# (measured there: a token request got "504 Timeout: request did not complete within 1m0s" while
# etcd lagged): a call retries both for about three minutes (backoff 1, 2, 4, ... 30 s; a 429's or
# 503's Retry-After is honoured). Every write here is a PATCH or server-side apply, or a create
# that recognises its own earlier success, or a delete that takes "not found" as done, so a
# retried write is safe. Probes that poll on their own (``wait_node_ready``, ``label_node``,
# ``wait_token_signed``, the pyinfra checks) and ``edge-provision status`` ask with ``retries=0``
# so their own timeouts hold.
API_RETRIES = 10


API_BACKOFF_MAX = 30.0


# What an API server answers while it cannot serve yet: too many requests, etcd errors ("etcdserver:
# request timed out" is a 500), not ready, timed out.
API_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def api_retry(retries: int = API_RETRIES) -> Any:
    from urllib3.util.retry import Retry

    return Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                 status_forcelist=API_RETRY_STATUSES, backoff_factor=1.0, backoff_max=API_BACKOFF_MAX,
                 allowed_methods=None, raise_on_status=False)


def api_client(kubeconfig: Path, *, retries: int = API_RETRIES) -> Any:
    from kubernetes import client, config

    if not kubeconfig.is_file():
        raise ClusterError(f"{kubeconfig} not found: the control plane stage writes it")
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    configuration.retries = api_retry(retries)
    return client.ApiClient(configuration)


def _kubeconfig_ca(kubeconfig: Path) -> bytes:
    doc = yaml.safe_load(kubeconfig.read_text())
    data = doc["clusters"][0]["cluster"].get("certificate-authority-data")
    if not data:
        raise ClusterError(f"{kubeconfig}: no certificate-authority-data")
    return base64.b64decode(data)


@dataclass(frozen=True)
class JoinToken:
    token: str  # <id>.<secret>: a secret
    ca_cert_hash: str
    expires: str  # RFC 3339

    def as_dict(self) -> dict[str, str]:
        return {"token": self.token, "ca_cert_hash": self.ca_cert_hash, "expires": self.expires}


def create_join_token(
    kubeconfig: Path, ttl_seconds: int, description: str = "edge-provision join"
) -> JoinToken:
    """A new bootstrap token (what ``kubeadm token create --ttl`` makes), expiring after
    ``ttl_seconds``; the cluster's token cleaner deletes it then."""
    from kubernetes import client

    if ttl_seconds <= 0:
        raise ClusterError("a join token needs a positive lifetime")
    token_id = "".join(secrets.choice(TOKEN_ID_CHARS) for _ in range(6))
    token_secret = "".join(secrets.choice(TOKEN_ID_CHARS) for _ in range(16))
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with api_client(kubeconfig) as api:
        create_bootstrap_secret(client.CoreV1Api(api), token_id, token_secret, expires, description)
    return JoinToken(f"{token_id}.{token_secret}", ca_cert_hash(_kubeconfig_ca(kubeconfig)), expires)


def create_bootstrap_secret(
    core: Any, token_id: str, token_secret: str, expires: str, description: str
) -> None:
    """The bootstrap-token Secret of ``<token_id>.<token_secret>``. If it exists already holding
    ``token_secret`` it is this call's own, from an attempt that reached the server before its
    connection was reset (the client retries writes): that counts as made."""
    from kubernetes import client

    name = f"bootstrap-token-{token_id}"
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace="kube-system"),
        type="bootstrap.kubernetes.io/token",
        string_data={
            "token-id": token_id,
            "token-secret": token_secret,
            "expiration": expires,
            "description": description,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": TOKEN_GROUP,
        },
    )
    try:
        core.create_namespaced_secret("kube-system", body)
    except client.ApiException as exc:
        if exc.status != 409 or not _holds_token_secret(core.read_namespaced_secret(name, "kube-system"),
                                                         token_secret):
            raise


def _holds_token_secret(secret: Any, token_secret: str) -> bool:
    data = secret.data or {}
    return bool(data.get("token-secret")) and base64.b64decode(data["token-secret"]).decode() == token_secret


def join_token(kubeconfig: Path, ttl: str, given: str = "", signed_within: str = "") -> JoinToken:
    """``given`` (a token made elsewhere) with the cluster's CA hash, or a new token; once the
    cluster has signed its cluster-info with it (:func:`wait_token_signed`), within
    ``signed_within`` (by default node_join_kubeadm's discovery timeout: as long as a node waits)."""
    if not signed_within:
        from edge_provision.role_files import role_defaults

        signed_within = str(role_defaults("node_join_kubeadm")["node_join_kubeadm_discovery_timeout"])
    if given:
        if not BOOTSTRAP_TOKEN.fullmatch(given):
            raise ClusterError(
                "node_join_kubeadm_token is not a bootstrap token (<6 chars>.<16 chars>, a-z0-9)"
            )
        token = JoinToken(given, ca_cert_hash(_kubeconfig_ca(kubeconfig)), "")
    else:
        token = create_join_token(kubeconfig, parse_duration(ttl))
    wait_token_signed(kubeconfig, token.token.split(".")[0], parse_duration(signed_within))
    return token


def wait_token_signed(kubeconfig: Path, token_id: str, timeout: float) -> bool:
    """Wait until ``kube-public/cluster-info`` carries the signature of token ``token_id``
    (``jws-kubeconfig-<id>``, which the controller manager's bootstrap signer adds in its own
    time): a kubeadm node's discovery trusts cluster-info only with it, and gives up after its own
    timeout. False at once where there is no cluster-info (no kubeadm discovery to serve)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    def signature() -> str:
        with api_client(kubeconfig, retries=0) as api:
            try:
                config_map = client.CoreV1Api(api).read_namespaced_config_map("cluster-info", "kube-public")
            except ApiException as exc:
                if exc.status == 404:
                    return "no cluster-info"
                raise
        return "signed" if f"jws-kubeconfig-{token_id}" in (config_map.data or {}) else "not signed"

    state = _poll(
        signature, timeout, lambda s: s != "not signed",
        f"kube-public/cluster-info has no signature of token ID {token_id} (the controller manager's"
        " bootstrap signer adds one for each bootstrap token of the cluster: is the token this"
        " cluster's, and does kube-controller-manager run?)",
    )
    return bool(state == "signed")


def node_status(kubeconfig: Path, name: str, *, retries: int = API_RETRIES) -> dict[str, Any]:
    """``{"registered": bool, "ready": bool, "labels": {...}}`` of Node ``name``."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with api_client(kubeconfig, retries=retries) as api:
        try:
            node = client.CoreV1Api(api).read_node(name)
        except ApiException as exc:
            if exc.status == 404:
                return {"registered": False, "ready": False, "labels": {}}
            raise
    conditions = node.status.conditions if node.status else None
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions or [])
    labels = node.metadata.labels if node.metadata else None
    return {"registered": True, "ready": ready, "labels": dict(labels or {})}


def _poll(probe: Callable[[], Any], timeout: float, done: Callable[[Any], bool], failure: str) -> Any:
    """``probe()`` every 2 s until ``done`` holds of its answer; after ``timeout`` a
    :class:`ClusterError` of ``failure`` and the last answer. Each probe should ask the API once:
    an API server that is away (still starting, restarting) counts as not done yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if done(last):
                return last
        except ClusterError:  # no kubeconfig: waiting will not make one
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise ClusterError(f"{failure} after {timeout:.0f} s (last seen: {last})")
        time.sleep(2)


def _poll_node(
    kubeconfig: Path, name: str, timeout: float, done: Callable[[dict[str, Any]], bool], failure: str
) -> dict[str, Any]:
    """:func:`node_status` of ``name`` (:func:`_poll`) until ``done`` holds of it."""
    status: dict[str, Any] = _poll(
        lambda: node_status(kubeconfig, name, retries=0), timeout, done, f"node {name} {failure}"
    )
    return status


def wait_node_ready(kubeconfig: Path, name: str, timeout: float) -> dict[str, Any]:
    return _poll_node(kubeconfig, name, timeout, lambda s: bool(s["ready"]), "not Ready")


def label_node(kubeconfig: Path, name: str, labels: Mapping[str, str], timeout: float) -> dict[str, Any]:
    """Set ``labels`` on Node ``name`` through the API (waiting up to ``timeout`` for it to
    register); ``{"changed": bool, "labels": <what was set>}``. Labels already there are left
    alone, so a second run changes nothing."""
    from kubernetes import client

    status = _poll_node(
        kubeconfig, name, timeout, lambda s: bool(s["registered"]), "not registered (its labels are not set)"
    )
    todo = missing_labels(status["labels"], labels)
    if todo:
        with api_client(kubeconfig) as api:
            client.CoreV1Api(api).patch_node(name, {"metadata": {"labels": todo}})
    return {"changed": bool(todo), "labels": todo}


K3S_NODE_PASSWORD_SECRET = "{node}.node-password.k3s"


def forget_node_password(kubeconfig: Path, name: str) -> dict[str, Any]:
    """Delete k3s's record of node ``name``'s password (``kube-system/<node>.node-password.k3s``)
    so a reinstalled agent, which made a new /etc/rancher/node/password, is not refused with
    "Node password rejected". ``{"changed": bool}``: False when there was none."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with api_client(kubeconfig) as api:
        try:
            client.CoreV1Api(api).delete_namespaced_secret(
                K3S_NODE_PASSWORD_SECRET.format(node=name), "kube-system"
            )
        except ApiException as exc:
            if exc.status == 404:
                return {"changed": False}
            raise
    return {"changed": True}


# -- server-side apply ------------------------------------------------------------------------

FIELD_MANAGER = "edge-provision"


def _resource(dynamic: Any, doc: Mapping[str, Any]) -> Any:
    return dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])


def _comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {
        k: v
        for k, v in out.get("metadata", {}).items()
        if k not in ("managedFields", "resourceVersion", "generation")
    }
    return {**out, "metadata": meta}


def apply(kubeconfig: Path, docs: Sequence[Mapping[str, Any]], *, dry_run: bool = False) -> list[str]:
    """Server-side apply each manifest; return "<Kind>/<name>" of those that changed (or would).

    A dry run cannot apply an object to a namespace that the same manifests create (the API
    answers 404 for the namespace): such objects are counted as changes without asking."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError

    changed = []
    new_namespaces = set()
    with api_client(kubeconfig) as api:
        dynamic = DynamicClient(api)  # type: ignore[no-untyped-call]
        for doc in docs:
            resource = _resource(dynamic, doc)
            name = doc["metadata"]["name"]
            namespace = doc["metadata"].get("namespace") if resource.namespaced else None
            if dry_run and namespace in new_namespaces:
                changed.append(f"{doc['kind']}/{name}")
                continue
            try:
                before = resource.get(name=name, namespace=namespace).to_dict()
            except NotFoundError:
                before = None
                if doc["kind"] == "Namespace":
                    new_namespaces.add(name)
            kwargs = {"dry_run": "All"} if dry_run else {}
            after = resource.server_side_apply(
                body=dict(doc),
                name=name,
                namespace=namespace,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                **kwargs,
            ).to_dict()
            if before is None or _comparable(before) != _comparable(after):
                changed.append(f"{doc['kind']}/{name}")
    return changed
