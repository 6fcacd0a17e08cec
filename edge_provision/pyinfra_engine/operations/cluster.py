"""pyinfra operations of the cluster stage. The work that needs the cluster (a join token, the
admin kubeconfig, readiness) runs at execution time as Python on the controller
(``FunctionCommand``), with the functions the Ansible roles call (``edge_provision.stages.cluster``).

Secrets: kubeadm's output (it prints the token ``kubeadm init`` creates) is captured, never
printed, and only shown redacted on failure; the join token lives in memory and in a 0600 file
inside a 0700 directory that the join removes again.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any

from pyinfra.api.command import FunctionCommand
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import File, Sha256File

from edge_provision.pyinfra_engine.facts.common import CommandOutput
from edge_provision.pyinfra_engine.operations.common import (
    Commands,
    executing,
    failed,
    pending,
    python_step,
    run_quietly,
    tool_step,
)
from edge_provision.role_files import render_template, role_path
from edge_provision.stages.cluster import (
    common,
    k3s,
    kube_api,
    kubeadm,
    kubeedge,
    node_removal,
    openyurt,
    pod_network,
)

ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"


KUBEADM_RESET = shlex.join(kubeadm.kubeadm_reset())


@operation(is_idempotent=True)
def cni_loaded(conf_file: str, stamp_file: str) -> Commands:
    """Restart containerd unless it was restarted for this CNI network (files/cni-loaded.sh)."""
    script = role_path("kubernetes_node", "files", "cni-loaded.sh").read_text()
    argv = ["sh", "-c", script, "cni-loaded", conf_file, stamp_file]
    if host.get_fact(CommandOutput, argv=argv).strip() == "current":
        host.noop("containerd has loaded the CNI network")
        return
    yield " ".join(shlex.quote(a) for a in [*argv, "restart"])


@operation(is_idempotent=True)
def kubeadm_initialised(config_file: str, skip_phases: Sequence[str]) -> Commands:
    """``kubeadm init`` (:func:`kubeadm.kubeadm_init`) unless the node has /etc/kubernetes/admin.conf."""
    if host.get_fact(File, path=ADMIN_CONF):
        host.noop("the control plane is initialised")
        return
    init = shlex.join(kubeadm.kubeadm_init(config_file, skip_phases))
    yield tool_step(init, "kubeadm init", reset=KUBEADM_RESET)


@operation(is_idempotent=True)
def controller_kubeconfig(kubeconfig: str, server: str, admin_conf: str = ADMIN_CONF) -> Commands:
    """Copy the admin kubeconfig to the controller (0600) with ``server`` as the API address,
    unless the copy there was made from the node's current admin kubeconfig."""
    source = host.get_fact(Sha256File, path=admin_conf)
    if not source:
        yield from pending(f"{admin_conf} does not exist yet")
        return
    path = Path(kubeconfig)
    if common.kubeconfig_source(path) == source and path.stat().st_mode & 0o077 == 0:
        host.noop(f"{kubeconfig} is current")
        return

    def fetch(state: Any, host: Any) -> bool:
        buffer = BytesIO()
        if not host.get_file(admin_conf, buffer, print_output=False, print_input=False):
            return failed(host, f"host {host.name}: cannot read {admin_conf}")
        text = buffer.getvalue().decode()
        if hashlib.sha256(text.encode()).hexdigest() != source:
            return failed(host, f"host {host.name}: {admin_conf} changed while it was read; re-run")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(common.controller_kubeconfig(text, server))
        return True

    yield FunctionCommand(fetch, (), {})


@operation(is_idempotent=True)
def node_ready(kubeconfig: str, node: str, timeout: float) -> Commands:
    """Wait until the Node is Ready (no change when it already is)."""
    path = Path(kubeconfig)
    if not executing() and not path.is_file():
        yield from pending(f"{kubeconfig} is written by the control plane stage")
        return
    if executing():
        try:
            if kube_api.node_status(path, node, retries=0)["ready"]:
                host.noop(f"node {node} is Ready")
                return
        except Exception:  # not reachable yet: wait below
            pass

    yield python_step(f"node {node} Ready", lambda: kube_api.wait_node_ready(path, node, timeout))


@operation(is_idempotent=True)
def pod_network_applied(kubeconfig: str, image: str, variables: Mapping[str, Any]) -> Commands:
    """Server-side apply the pod network (flannel) when the API has something else."""
    path = Path(kubeconfig)
    if not executing() and not path.is_file():
        yield from pending(f"{kubeconfig} is written by the control plane stage")
        return
    try:  # at prepare time one question: an API that is away means "not yet"
        changes = pod_network.apply(path, image, variables, dry_run=True)
    except Exception:
        if executing():
            raise
        yield from pending("the API server is not answering yet")
        return
    if not changes:
        host.noop("the pod network is applied")
        return

    yield python_step(f"applying {', '.join(changes)}", lambda: pod_network.apply(path, image, variables))


@operation(is_idempotent=True)
def kubeadm_joined(
    kubeconfig: str,
    given_token: str,
    config_file: str,
    skip_phases: Sequence[str],
    ttl: str,
    signed_within: str,
    join: Mapping[str, Any],
    template_vars: Mapping[str, Any],
) -> Commands:
    """``kubeadm join`` with a new bootstrap token, unless the node has its kubelet.conf.

    The token is made at execution time, written into the join configuration (0600, in a
    0700 directory) and removed with it after the join; a failed join is reset."""
    if host.get_fact(File, path=KUBELET_CONF):
        host.noop("the node has joined")
        return
    directory = str(Path(config_file).parent)
    command = shlex.join(kubeadm.kubeadm_join(config_file, skip_phases))

    def run_join(state: Any, host: Any) -> bool:
        try:
            token = kube_api.join_token(Path(kubeconfig), ttl, given_token, signed_within)
        except Exception as exc:
            return failed(host, f"host {host.name}: cannot create a join token: {exc}")
        content = render_template(
            "node_join_kubeadm",
            "kubeadm-join.yaml.j2",
            {**template_vars, "kubeadm": {**join, "token": token.token, "ca_cert_hash": token.ca_cert_hash}},
        )
        prepare = (
            f"install -d -m 700 {shlex.quote(directory)} && "
            f"install -m 600 /dev/null {shlex.quote(config_file)}"
        )
        try:
            if not run_quietly(host, prepare, "preparing the join configuration", reset=KUBEADM_RESET):
                return False
            if not host.put_file(StringIO(content), config_file, print_output=False, print_input=False):
                return failed(host, f"host {host.name}: cannot write {config_file}")
            return run_quietly(host, command, "kubeadm join", reset=KUBEADM_RESET)
        finally:
            host.run_shell_command(f"rm -f {shlex.quote(config_file)}", print_output=False, print_input=False)

    yield FunctionCommand(run_join, (), {})


# --- k3s, KubeEdge, OpenYurt (edge_provision.stages.cluster) -------------------------------------


@operation(is_idempotent=True)
def control_plane_done(control_plane: str) -> Commands:
    """Changes nothing; orders the run. pyinfra merges each host's own order of operations, so an
    operation that every host calls from one place is where they meet: the control plane's
    steps come before it, the edge nodes' joins (which need its token) after it."""
    host.noop(f"after the steps of {control_plane}")
    yield from ()


@operation(is_idempotent=True)
def files_present(paths: Sequence[str], timeout: float) -> Commands:
    """Wait until every one of ``paths`` exists on the host (what a service writes once up)."""
    missing = [p for p in paths if not host.get_fact(File, path=p)]
    if not missing:
        host.noop(f"{', '.join(paths)} exist")
        return
    tests = " && ".join(f"test -e {shlex.quote(p)}" for p in missing)
    yield f"timeout {int(timeout)} sh -c {shlex.quote(f'until {tests}; do sleep 2; done')}"


@operation(is_idempotent=True)
def k3s_agent_env(
    env_file: str, server_url: str, given_token: str, server: Any, server_token_file: str
) -> Commands:
    """The agent's 0600 environment file with K3S_URL and K3S_TOKEN (the given token, else the
    server's token file read at execution over SSH, never printed). Current when the file
    names this URL and the fingerprint of the token it would get."""
    fingerprint_argv = ["sed", "-n", "s/^# token sha256 //p", env_file]
    have = (host.get_fact(CommandOutput, argv=fingerprint_argv) or "").strip()
    url = (host.get_fact(CommandOutput, argv=["grep", "-x", f"K3S_URL={server_url}", env_file]) or "").strip()
    if given_token:
        want = k3s.token_fingerprint(given_token)
    else:
        want = (server.get_fact(
            CommandOutput, argv=["sh", "-c", f"tr -d '\\n' < {shlex.quote(server_token_file)} | sha256sum"]
        ) or "").split(" ")[0].strip()
        if want == hashlib.sha256(b"").hexdigest():  # no token file yet
            want = ""
    if want and have == want and url:
        host.noop(f"{env_file} holds the current join")
        return

    def write(state: Any, host: Any) -> bool:
        token = given_token
        if not token:
            buffer = BytesIO()
            if not server.get_file(server_token_file, buffer, print_output=False, print_input=False):
                return failed(host, f"host {host.name}: cannot read {server_token_file} on {server.name}")
            token = buffer.getvalue().decode()
        try:
            content = k3s.k3s_agent_env(token, server_url)
        except common.DistributionError as exc:
            return failed(host, f"host {host.name}: {exc}")
        prepare = f"install -m 600 /dev/null {shlex.quote(env_file)}"
        if not run_quietly(host, prepare, f"preparing {env_file}"):
            return False
        if not host.put_file(StringIO(content), env_file, print_output=False, print_input=False):
            return failed(host, f"host {host.name}: cannot write {env_file}")
        return True

    yield FunctionCommand(write, (), {})


@operation(is_idempotent=True)
def k3s_node_password_forgotten(kubeconfig: str, node: str, password_file: str) -> Commands:
    """Delete k3s's record of the node's password when the node has none (reinstalled), so
    the server does not reject it ("Node password rejected")."""
    if host.get_fact(File, path=password_file):
        host.noop(f"{password_file} is kept")
        return

    yield python_step(
        "forgetting the node's k3s password", lambda: kube_api.forget_node_password(Path(kubeconfig), node)
    )


@operation(is_idempotent=True)
def node_labelled(kubeconfig: str, node: str, labels: Mapping[str, str], timeout: float) -> Commands:
    """Set the labels missing on the Node through the API (waiting for it to register)."""
    path = Path(kubeconfig)
    if not labels:
        host.noop("no labels to set through the API")
        return
    if not executing() and not path.is_file():
        yield from pending(f"{kubeconfig} is written by the control plane stage")
        return
    if executing():
        try:
            status = kube_api.node_status(path, node, retries=0)
            if status["registered"] and not common.missing_labels(status["labels"], labels):
                host.noop(f"node {node} has its labels")
                return
        except Exception:  # not reachable yet: wait below
            pass

    yield python_step(f"labels of node {node}", lambda: kube_api.label_node(path, node, labels, timeout))


@operation(is_idempotent=True)
def keadm_initialised(keadm: str, kubeconfig: str, advertise_address: str, extra: Sequence[str]) -> Commands:
    """``keadm init`` unless cloudcore answers ``keadm gettoken`` (whose token stays on the host)."""
    probe = f"{shlex.join(kubeedge.keadm_gettoken(keadm, kubeconfig))} >/dev/null 2>&1 && echo ready"
    if (host.get_fact(CommandOutput, argv=["sh", "-c", probe]) or "").strip() == "ready":
        host.noop("cloudcore is installed")
        return
    command = shlex.join(kubeedge.keadm_init(keadm, advertise_address, kubeconfig, extra))
    yield tool_step(command, "keadm init")


@operation(is_idempotent=True)
def keadm_joined(
    keadm: str, cloud: Any, cloud_kubeconfig: str, cloudcore: str, config_dir: str, joined_file: str,
    runtime_endpoint: str, labels: Mapping[str, Any], extra: Sequence[str],
) -> Commands:
    """``keadm join`` with a token from ``keadm gettoken`` on the cloud host, unless the node
    has edgecore's configuration; leftovers in ``config_dir`` are reset first (keadm refuses to
    join otherwise), a failed join is reset."""
    if host.get_fact(File, path=joined_file):
        host.noop("the node has joined KubeEdge")
        return
    reset = shlex.join(kubeedge.keadm_reset_edge(keadm))

    def join(state: Any, host: Any) -> bool:
        gettoken = shlex.join(kubeedge.keadm_gettoken(keadm, cloud_kubeconfig))
        ok, output = cloud.run_shell_command(gettoken, print_output=False, print_input=False)
        if not ok:
            text = "\n".join(line.line for line in output.combined_lines)
            return failed(host, f"host {host.name}: keadm gettoken on {cloud.name} failed:\n"
                                 f"{common.failure_report(text)}")
        try:
            token = kubeedge.keadm_token("\n".join(output.stdout_lines))
        except common.DistributionError as exc:
            return failed(host, f"host {host.name}: {exc}")
        leftovers = f"if [ -n \"$(ls -A {shlex.quote(config_dir)} 2>/dev/null)\" ]; then {reset}; fi"
        if not run_quietly(host, leftovers, "resetting KubeEdge's leftovers"):
            return False
        argv = kubeedge.keadm_join(
            keadm=keadm, cloudcore=cloudcore, token=token, node_name=host.name,
            runtime_endpoint=runtime_endpoint, labels=labels, extra=extra,
        )
        return run_quietly(host, shlex.join(argv), "keadm join", reset=reset, secrets=[token])

    yield FunctionCommand(join, (), {})


@operation(is_idempotent=True)
def yurtadm_joined(
    yurtadm: str, kubeconfig: str, given_token: str, ttl: str, server: str, cri_socket: str,
    joined_file: str, labels: Mapping[str, Any], extra: Sequence[str],
) -> Commands:
    """``yurtadm join`` with a new bootstrap token and the CA hash (as kubeadm joins get them),
    unless the node has its kubelet.conf; a failed join is reset."""
    if host.get_fact(File, path=joined_file):
        host.noop("the node has joined OpenYurt")
        return

    def join(state: Any, host: Any) -> bool:
        try:
            token = kube_api.join_token(Path(kubeconfig), ttl, given_token)
        except Exception as exc:
            return failed(host, f"host {host.name}: cannot create a join token: {exc}")
        argv = openyurt.yurtadm_join(
            yurtadm=yurtadm, server=server, token=token.token, ca_cert_hash=token.ca_cert_hash,
            cri_socket=cri_socket, labels=labels, node_name=host.name, extra=extra,
        )
        reset = shlex.join(openyurt.yurtadm_reset(yurtadm))
        return run_quietly(host, shlex.join(argv), "yurtadm join", reset=reset, secrets=[token.token])

    yield FunctionCommand(join, (), {})


def _node_absent(path: Path, node: str) -> bool:
    """At prepare time: whether the cluster has no Node ``node`` (an API that does not answer
    now: not known, the operation asks again when it executes)."""
    if executing():
        return False
    try:
        return not kube_api.node_status(path, node, retries=0)["registered"]
    except Exception:
        return False


@operation(is_idempotent=True)
def node_drained(kubeconfig: str, node: str, timeout: float, delete_bare_pods: bool) -> Commands:
    """Cordon ``node`` and evict its pods (:func:`node_removal.evacuate`), unless the cluster has
    no such Node."""
    path = Path(kubeconfig)
    if _node_absent(path, node):
        host.noop(f"the cluster has no node {node}")
        return
    yield python_step(f"drain node {node}",
                      lambda: node_removal.evacuate(path, node, timeout, delete_bare_pods=delete_bare_pods))


@operation(is_idempotent=True)
def node_deleted(kubeconfig: str, node: str) -> Commands:
    """Delete Node ``node`` (after its host is reset), unless the cluster has no such Node."""
    path = Path(kubeconfig)
    if _node_absent(path, node):
        host.noop(f"the cluster has no node {node}")
        return
    yield python_step(f"delete node {node}", lambda: node_removal.delete_node(path, node))


@operation(is_idempotent=True)
def node_reset(kubeadm: str, cni_conf_file: str) -> Commands:
    """Reset a kubeadm node (:func:`node_removal.reset_commands`) while it has anything of one."""
    check = ["sh", "-c", node_removal.reset_check(cni_conf_file)]
    if host.get_fact(CommandOutput, argv=check).strip() == "clean":
        host.noop("nothing of a kubeadm node is left")
        return
    yield from node_removal.reset_commands(kubeadm, cni_conf_file)
