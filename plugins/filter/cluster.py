"""Jinja filters of the cluster stage: the same Python the pyinfra deploy calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

from edge_provision.inventory import node_address
from edge_provision.role_files import role_vars
from edge_provision.stages.cluster import (
    common,
    distributions,
    k3s,
    kubeadm,
    kubeedge,
    node_removal,
    openyurt,
)


def controller_kubeconfig(admin_conf: str, server: str) -> str:
    try:
        return common.controller_kubeconfig(admin_conf, server)
    except common.ClusterError as exc:
        raise AnsibleFilterError(f"admin kubeconfig: {exc}") from exc


def _filter_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (common.ClusterError, common.DistributionError) as exc:
            raise AnsibleFilterError(f"{function.__name__}: {exc}") from exc

    return wrapped


def k3s_containerd_template(arch: str, handler: str, binary: str, systemd_cgroup: bool) -> str:
    version = k3s.k3s_version(arch)
    return k3s.k3s_containerd_template(version, handler, binary, systemd_cgroup)


def k3s_containerd_template_name(arch: str) -> str:
    return k3s.k3s_containerd_template_name(k3s.k3s_version(arch))


def k3s_config(
    name: str, node_ip: str, labels: Mapping[str, Any], tls_sans: Sequence[str], extra: Mapping[str, Any]
) -> dict[str, Any]:
    return k3s.k3s_config(
        node_name=name, node_ip=node_ip, labels=labels, tls_sans=tls_sans, extra=extra
    )


def keadm_join(keadm: str, token: str, cloudcore: str, node_name: str, runtime_endpoint: str,
               labels: Mapping[str, Any], extra: Sequence[str]) -> list[str]:
    return kubeedge.keadm_join(keadm=keadm, cloudcore=cloudcore, token=token, node_name=node_name,
                                    runtime_endpoint=runtime_endpoint, labels=labels, extra=extra)


def yurtadm_join(yurtadm: str, token: Mapping[str, str], server: str, cri_socket: str,
                 labels: Mapping[str, Any], node_name: str, extra: Sequence[str]) -> list[str]:
    return openyurt.yurtadm_join(yurtadm=yurtadm, server=server, token=token["token"],
                                      ca_cert_hash=token["ca_cert_hash"], cri_socket=cri_socket,
                                      labels=labels, node_name=node_name, extra=extra)


def node_reset_script(host_vars: Mapping[str, Any]) -> str:
    """node_removal.reset_script for a host, with its kubernetes_node variables (kubeadm's
    directory, the CNI network file) as the fleet sets them or the role's defaults."""
    return node_removal.reset_script(*node_removal.reset_paths(role_vars("kubernetes_node", host_vars)))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "edge_provision_cluster_roles": distributions.cluster_roles,
            "edge_provision_kubelet_node_labels": common.kubelet_node_labels,
            "edge_provision_kubeadm_init": kubeadm.kubeadm_init,
            "edge_provision_kubeadm_join": kubeadm.kubeadm_join,
            "edge_provision_kubeadm_reset": kubeadm.kubeadm_reset,
            "edge_provision_cert_sans": kubeadm.cert_sans,
            "edge_provision_node_names": node_removal.parse_names,
            "edge_provision_node_reset_script": node_reset_script,
            "edge_provision_probe_patches": _filter_errors(kubeadm.probe_patches),
            "edge_provision_api_labels": common.api_labels,
            "edge_provision_controller_kubeconfig": controller_kubeconfig,
            "edge_provision_failure_report": common.failure_report,
            "edge_provision_node_address": node_address,
            "edge_provision_k3s_containerd_template": _filter_errors(k3s_containerd_template),
            "edge_provision_k3s_containerd_template_name": _filter_errors(k3s_containerd_template_name),
            "edge_provision_k3s_config": _filter_errors(k3s_config),
            "edge_provision_k3s_server_env": k3s.k3s_server_env,
            "edge_provision_k3s_token_file": k3s.server_token_file,
            "edge_provision_k3s_unit_file": k3s.service_unit_file,
            "edge_provision_k3s_env_file": k3s.service_env_file,
            "edge_provision_k3s_agent_env": _filter_errors(k3s.k3s_agent_env),
            "edge_provision_keadm_init": kubeedge.keadm_init,
            "edge_provision_keadm_gettoken": kubeedge.keadm_gettoken,
            "edge_provision_keadm_reset_edge": kubeedge.keadm_reset_edge,
            "edge_provision_yurtadm_reset": openyurt.yurtadm_reset,
            "edge_provision_keadm_token": _filter_errors(kubeedge.keadm_token),
            "edge_provision_keadm_join": _filter_errors(keadm_join),
            "edge_provision_yurtadm_join": _filter_errors(yurtadm_join),
            "edge_provision_openyurt_labels": _filter_errors(openyurt.openyurt_labels),
        }
