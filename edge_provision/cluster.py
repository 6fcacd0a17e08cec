"""Stage cluster: what both engines compute on the controller for a kubeadm cluster.

Ansible (roles/kubernetes_node, roles/control_plane_kubeadm, roles/node_join_kubeadm) runs
``python -m edge_provision.cluster <command>`` on the controller; the pyinfra deploy
(edge_provision/deploys/cluster.py) calls the same functions.

Join tokens are bootstrap tokens made through the Kubernetes API with the fleet's admin
kubeconfig (the Secret ``kube-system/bootstrap-token-<id>`` that ``kubeadm token create``
writes), short-lived, held in memory and handed to the joining node in a 0600 file that the
join removes again. They are printed only by the ``token`` command, whose output Ansible
keeps out of its logs (``no_log``).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import ipaddress
import json
import re
import secrets
import string
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KUBECONFIG_FILE = "kubeconfig"  # beside the fleet's hosts.yml
KUBECONFIG_SOURCE_MARK = "# edge-provision: from admin.conf sha256 "

# Label namespaces the kubelet refuses to set on its own Node (NodeRestriction): labels there
# are set through the API from the control side (the workloads stage), not by --node-labels.
_KUBELET_ALLOWED = ("kubelet.kubernetes.io", "node.kubernetes.io")
_RESTRICTED_SUFFIXES = ("kubernetes.io", "k8s.io")

TOKEN_ID_CHARS = string.ascii_lowercase + string.digits
TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"


class ClusterError(RuntimeError):
    """A cluster step that failed, with what to do about it."""


# --- per node values (pure) ---------------------------------------------------------------


def node_pod_subnet(name: str, members: Iterable[str], network: str, prefix: int = 24) -> str:
    """The pod subnet of node ``name``: the i-th /``prefix`` of ``network``, i its index in the
    sorted cluster members. Pin a host's subnet with its own variable if membership changes."""
    ordered = sorted(set(members))
    if name not in ordered:
        raise ClusterError(f"{name} is not a cluster member")
    net = ipaddress.ip_network(network)
    if prefix <= net.prefixlen:
        raise ClusterError(f"pod network {network} is too small for /{prefix} node subnets")
    subnets = net.subnets(new_prefix=prefix)
    index = ordered.index(name)
    for i, subnet in enumerate(subnets):
        if i == index:
            return str(subnet)
    raise ClusterError(f"pod network {network} has fewer than {len(ordered)} /{prefix} subnets")


def kubelet_node_labels(labels: Mapping[str, Any]) -> str:
    """``--node-labels`` for the kubelet: the inventory labels it may set on its own Node."""
    allowed = []
    for key, value in sorted(labels.items()):
        prefix = key.split("/", 1)[0] if "/" in key else ""
        restricted = any(prefix == s or prefix.endswith("." + s) for s in _RESTRICTED_SUFFIXES)
        if restricted and not any(prefix == a or prefix.endswith("." + a) for a in _KUBELET_ALLOWED):
            continue
        allowed.append(f"{key}={value}")
    return ",".join(allowed)


PROBES = ("startup", "liveness")


def kubeadm_init(config_file: str, skip_phases: Sequence[str], patches_dir: str = "") -> list[str]:
    """``kubeadm init``'s argv (the token it creates is not printed); ``patches_dir``: the
    directory of :func:`probe_patches` (kubeadm 1.20 names the flag ``--experimental-patches``)."""
    argv = ["kubeadm", "init", f"--config={config_file}", f"--skip-phases={','.join(skip_phases)}",
            "--skip-token-print"]
    return [*argv, f"--experimental-patches={patches_dir}"] if patches_dir else argv


def probe_patches(thresholds: Mapping[str, Any], components: Sequence[str]) -> dict[str, str]:
    """kubeadm patch files (name -> text) that set the ``failureThreshold`` of the ``startup``
    and ``liveness`` probes in ``thresholds`` on the static pods ``components``; none when
    ``thresholds`` is empty (kubeadm's own: startup 24, liveness 8, each probe every 10 s)."""
    field = "control_plane_kubeadm_probe_failure_thresholds"
    unknown = sorted(set(thresholds) - set(PROBES))
    if unknown:
        raise ClusterError(f"{field}: unknown probe {', '.join(unknown)} (choose from {', '.join(PROBES)})")
    for probe, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClusterError(f"{field}.{probe}: {value!r} is not a positive whole number")
    if not thresholds:
        return {}
    # Plain int and str: Ansible passes its own subclasses, which yaml.safe_dump refuses.
    probes = {f"{p}Probe": {"failureThreshold": int(thresholds[p])} for p in PROBES if p in thresholds}
    return {
        f"{name}+strategic.yaml": yaml.safe_dump({"spec": {"containers": [{"name": str(name), **probes}]}})
        for name in components
    }


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


def controller_kubeconfig(admin_conf: str, server: str) -> str:
    """The control plane's admin.conf with ``server`` as the API address the controller uses,
    marked with the source's sha256 (so a run can tell without reading the file whether the
    copy is current)."""
    doc = yaml.safe_load(admin_conf)
    if not isinstance(doc, dict) or not doc.get("clusters"):
        raise ClusterError("admin.conf has no clusters")
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = str.__str__(server)  # a plain str (Ansible hands tagged ones)
    source = hashlib.sha256(admin_conf.encode()).hexdigest()
    return f"{KUBECONFIG_SOURCE_MARK}{source}\n" + yaml.safe_dump(
        doc, default_flow_style=False, sort_keys=True
    )


def kubeconfig_source(path: Path) -> str | None:
    """The admin.conf sha256 a controller kubeconfig was made from (None: absent or unmarked)."""
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return first[len(KUBECONFIG_SOURCE_MARK) :] if first.startswith(KUBECONFIG_SOURCE_MARK) else None


# A bootstrap token, <6 chars>.<16 chars> (kubeadm prints the one `kubeadm init` makes).
_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")


def redact_tokens(text: str) -> str:
    return _TOKEN.sub("<token redacted>", text)


def failure_report(output: str, lines: int = 20, secrets: Sequence[str] = ()) -> str:
    """The last ``lines`` non-empty lines of a failed command's output, tokens redacted
    (bootstrap tokens by their shape, and each of ``secrets``, e.g. a KubeEdge token)."""
    for secret in secrets:
        if secret:
            output = output.replace(secret, "<token redacted>")
    kept = [line for line in redact_tokens(output).splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# --- controller-side artifacts -----------------------------------------------------------


def artifacts(
    arch: str, binaries: Sequence[str], images: Sequence[str], packages: Sequence[str]
) -> dict[str, Any]:
    """Kubernetes binaries and control-plane images for ``arch`` (built once, cached) and the
    .deb files of ``packages`` with their dependency closure (empty: the node's apt)."""
    from edge_provision import runtime_controller
    from edge_provision.artifacts.builders import images as image_builders
    from edge_provision.artifacts.builders.kubernetes import build_kubernetes

    build = build_kubernetes(arch)
    manifest = json.loads((build / "manifest.json").read_text())
    unknown = sorted(set(binaries) - set(manifest["files"]))
    if unknown:
        raise ClusterError(
            f"no such Kubernetes binary: {', '.join(unknown)} (built: {', '.join(manifest['files'])})"
        )
    return {
        "version": manifest["kubernetes"]["version"],
        "binaries": [
            {"name": name, "path": str(build / name), "sha256": manifest["files"][name]["sha256"]}
            for name in binaries
        ],
        "images": [
            image_builders.image_entry(name, image_builders.build_control_plane_image(name, arch))
            for name in images
        ],
        "debs": runtime_controller.debs(packages, arch) if packages else [],
    }


# --- the API (kubernetes client) -----------------------------------------------------------


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
        from edge_provision.roles import role_defaults

        signed_within = str(role_defaults("node_join_kubeadm")["node_join_kubeadm_discovery_timeout"])
    if given:
        if not _TOKEN.fullmatch(given):
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


def parse_duration(text: str) -> int:
    """Seconds of ``15m``, ``1h30m``, ``90s``, ``600`` (kubeadm's --ttl style)."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or parts is None:
        raise ClusterError(f"not a duration: {text!r} (e.g. 15m, 1h, 90s)")
    hours, minutes, seconds = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


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


def api_labels(labels: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The labels set through the API rather than by the node agent: the inventory labels in
    the namespaces the kubelet may not set (see :func:`kubelet_node_labels`) and ``extra``
    (e.g. OpenYurt's ``apps.openyurt.io/nodepool``)."""
    own = set(kubelet_node_labels(labels).split(",")) - {""}
    wanted = {str(k): str(v) for k, v in labels.items() if f"{k}={v}" not in own}
    wanted.update({str(k): str(v) for k, v in (extra or {}).items()})
    return dict(sorted(wanted.items()))


def missing_labels(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in wanted.items() if current.get(k) != v}


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


# --- CLI for the Ansible roles ------------------------------------------------------------


def _print(value: Any) -> None:
    print(json.dumps(value, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_provision.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="create a join token (prints it: keep this output out of logs)")
    token.add_argument("--kubeconfig", type=Path, required=True)
    token.add_argument("--ttl", default="15m")
    token.add_argument("--given", default="", help="a token made elsewhere, used instead of a new one")
    token.add_argument("--signed-within", default="",
                       help="how long the cluster may take to sign cluster-info with the token (e.g. 5m0s;"
                       " default: node_join_kubeadm_discovery_timeout's)")
    ready = sub.add_parser("wait-ready", help="wait until a node is Ready")
    ready.add_argument("--kubeconfig", type=Path, required=True)
    ready.add_argument("--node", required=True)
    ready.add_argument("--timeout", type=float, default=300)
    build = sub.add_parser("artifacts", help="binaries, images and packages for a node, as JSON")
    build.add_argument("--arch", nargs="+", required=True, help="one result per architecture")
    build.add_argument("--binaries", nargs="*", default=[])
    build.add_argument("--images", nargs="*", default=[])
    build.add_argument("--packages", nargs="*", default=[])
    status = sub.add_parser("node-status", help="a node's registration, readiness and labels")
    status.add_argument("--kubeconfig", type=Path, required=True)
    status.add_argument("--node", required=True)
    label = sub.add_parser("label", help="set node labels through the API (only the missing ones)")
    label.add_argument("--kubeconfig", type=Path, required=True)
    label.add_argument("--node", required=True)
    label.add_argument("--labels", type=json.loads, required=True, help="a JSON object")
    label.add_argument("--timeout", type=float, default=300)
    forget = sub.add_parser("forget-node-password", help="delete k3s's node-password secret of a node")
    forget.add_argument("--kubeconfig", type=Path, required=True)
    forget.add_argument("--node", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "token":
            _print(join_token(args.kubeconfig, args.ttl, args.given, args.signed_within).as_dict())
        elif args.command == "artifacts":
            _print({arch: artifacts(arch, args.binaries, args.images, args.packages) for arch in args.arch})
        elif args.command == "wait-ready":
            _print(wait_node_ready(args.kubeconfig, args.node, args.timeout))
        elif args.command == "label":
            _print(label_node(args.kubeconfig, args.node, args.labels, args.timeout))
        elif args.command == "forget-node-password":
            _print(forget_node_password(args.kubeconfig, args.node))
        else:
            _print(node_status(args.kubeconfig, args.node))
    except Exception as exc:  # builders and the API name their step; no traceback for Ansible's log
        print(f"edge-provision cluster {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
