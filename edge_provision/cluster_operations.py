"""pyinfra operations of the cluster stage. The work that needs the cluster (a join token, the
admin kubeconfig, readiness) runs at execution time as Python on the controller
(``FunctionCommand``), with the functions the Ansible roles call (``edge_provision.cluster``).

Secrets: kubeadm's output (it prints the token ``kubeadm init`` creates) is captured, never
printed, and only shown redacted on failure; the join token lives in memory and in a 0600 file
inside a 0700 directory that the join removes again.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Generator, Mapping, Sequence
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any

from pyinfra import logger
from pyinfra.api.command import FunctionCommand
from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.files import File, Sha256File

from edge_provision import cluster
from edge_provision.roles import render_template, role_path
from edge_provision.runtime_facts import CommandOutput
from edge_provision.runtime_operations import _executing, _pending

Commands = Generator[Any, None, None]

ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"


def _failed(target: Any, message: str) -> bool:
    """Report a failed step of a Python callback: pyinfra then fails the operation, no traceback."""
    target.log_styled(message, fg="red", log_func=logger.error)
    return False


def _run(target: Any, command: str, what: str) -> bool:
    """Run ``command`` on ``target`` without echoing it or its output; on failure reset
    kubeadm's work and report the output's tail, tokens redacted."""
    ok, output = target.run_shell_command(command, print_output=False, print_input=False)
    if ok:
        return True
    text = "\n".join(line.line for line in output.combined_lines)
    target.run_shell_command("kubeadm reset --force", print_output=False, print_input=False)
    return _failed(
        target,
        f"host {target.name}: {what} failed (the node was reset; fix and re-run):\n"
        f"{cluster.failure_report(text)}",
    )


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
    """``kubeadm init`` unless the node has /etc/kubernetes/admin.conf."""
    if host.get_fact(File, path=ADMIN_CONF):
        host.noop("the control plane is initialised")
        return
    command = (
        f"kubeadm init --config={shlex.quote(config_file)} "
        f"--skip-phases={shlex.quote(','.join(skip_phases))} --skip-token-print"
    )

    def init(state: Any, host: Any) -> bool:
        return _run(host, command, "kubeadm init")

    yield FunctionCommand(init, (), {})


@operation(is_idempotent=True)
def controller_kubeconfig(kubeconfig: str, server: str) -> Commands:
    """Copy the admin kubeconfig to the controller (0600) with ``server`` as the API address,
    unless the copy there was made from the node's current admin.conf."""
    source = host.get_fact(Sha256File, path=ADMIN_CONF)
    if not source:
        yield from _pending(f"{ADMIN_CONF} does not exist yet")
        return
    path = Path(kubeconfig)
    if cluster.kubeconfig_source(path) == source and path.stat().st_mode & 0o077 == 0:
        host.noop(f"{kubeconfig} is current")
        return

    def fetch(state: Any, host: Any) -> bool:
        buffer = BytesIO()
        if not host.get_file(ADMIN_CONF, buffer, print_output=False, print_input=False):
            return _failed(host, f"host {host.name}: cannot read {ADMIN_CONF}")
        text = buffer.getvalue().decode()
        if hashlib.sha256(text.encode()).hexdigest() != source:
            return _failed(host, f"host {host.name}: {ADMIN_CONF} changed while it was read; re-run")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(cluster.controller_kubeconfig(text, server))
        return True

    yield FunctionCommand(fetch, (), {})


@operation(is_idempotent=True)
def node_ready(kubeconfig: str, node: str, timeout: float) -> Commands:
    """Wait until the Node is Ready (no change when it already is)."""
    path = Path(kubeconfig)
    if not _executing() and not path.is_file():
        yield from _pending(f"{kubeconfig} is written by the control plane stage")
        return
    if _executing():
        try:
            if cluster.node_status(path, node)["ready"]:
                host.noop(f"node {node} is Ready")
                return
        except Exception:  # not reachable yet: wait below
            pass

    def wait(state: Any, host: Any) -> bool:
        try:
            cluster.wait_node_ready(path, node, timeout)
        except cluster.ClusterError as exc:
            return _failed(host, f"host {host.name}: {exc}")
        return True

    yield FunctionCommand(wait, (), {})


@operation(is_idempotent=True)
def kubeadm_joined(
    kubeconfig: str,
    given_token: str,
    config_file: str,
    skip_phases: Sequence[str],
    ttl: str,
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
    command = (
        f"kubeadm join --config={shlex.quote(config_file)} --skip-phases={shlex.quote(','.join(skip_phases))}"
    )

    def run_join(state: Any, host: Any) -> bool:
        try:
            token = cluster.join_token(Path(kubeconfig), ttl, given_token)
        except Exception as exc:
            return _failed(host, f"host {host.name}: cannot create a join token: {exc}")
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
            if not _run(host, prepare, "preparing the join configuration"):
                return False
            if not host.put_file(StringIO(content), config_file, print_output=False, print_input=False):
                return _failed(host, f"host {host.name}: cannot write {config_file}")
            return _run(host, command, "kubeadm join")
        finally:
            host.run_shell_command(f"rm -f {shlex.quote(config_file)}", print_output=False, print_input=False)

    yield FunctionCommand(run_join, (), {})
