"""KubeEdge: every ``keadm`` command line both engines run (init, gettoken, join, reset edge).

keadm takes the join token on its command line only, so the engines run ``keadm join`` with
their logging off for that command; ``keadm reset edge`` comes before a join on a node whose
/etc/kubeedge is not empty (keadm refuses to join otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge_provision.stages.cluster import common
from edge_provision.stages.cluster.common import DistributionError


def keadm_init(keadm: str, advertise_address: str, kubeconfig: str, extra: Sequence[str] = ()) -> list[str]:
    return [keadm, "init", f"--advertise-address={advertise_address}", f"--kube-config={kubeconfig}", *extra]


def keadm_gettoken(keadm: str, kubeconfig: str) -> list[str]:
    return [keadm, "gettoken", f"--kube-config={kubeconfig}"]


def keadm_reset_edge(keadm: str) -> list[str]:
    return [keadm, "reset", "edge", "--force"]


def keadm_join(
    *, keadm: str, cloudcore: str, token: str, node_name: str, runtime_endpoint: str,
    labels: Mapping[str, Any], extra: Sequence[str] = (),
) -> list[str]:
    """``keadm join``: the token is on its command line (keadm takes it nowhere else), so the
    engines run it with their logging off for that command."""
    argv = [
        keadm, "join", f"--cloudcore-ipport={cloudcore}", f"--token={token}",
        f"--edgenode-name={node_name}", f"--remote-runtime-endpoint={runtime_endpoint}",
    ]
    own = common.kubelet_node_labels(labels)
    if own:
        argv.append(f"--labels={own}")
    return [*argv, *extra]


def keadm_token(output: str) -> str:
    """The token of ``keadm gettoken``'s output (its last non-empty line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        raise DistributionError("keadm gettoken printed no token")
    return lines[-1]
