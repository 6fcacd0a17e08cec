"""Stage cluster for pyinfra: the same work as roles/kubernetes_node, roles/control_plane_kubeadm
and roles/node_join_kubeadm, from the same defaults and templates, computed by the same Python
(edge_provision.cluster)."""

from __future__ import annotations

from functools import cache
from io import StringIO
from typing import Any

from pyinfra.api.deploy import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.context import host, inventory
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from edge_provision import cluster
from edge_provision import cluster_operations as ops
from edge_provision import runtime_operations as runtime_ops
from edge_provision.inventory import node_address
from edge_provision.roles import render_template, role_defaults, role_vars

NODE_GROUPS = ("control_plane", "edge")


def _fleet(name: str) -> Any:
    return host.data.get(name, role_defaults("edge")[name])


@cache
def _artifacts(
    arch: str, binaries: tuple[str, ...], images: tuple[str, ...], packages: tuple[str, ...]
) -> dict[str, Any]:
    return cluster.artifacts(arch, binaries, images, packages)


def _controller(what: str, *args: Any) -> dict[str, Any]:
    try:
        return _artifacts(*args)
    except Exception as exc:  # the builders' own errors name their step and output
        raise DeployError(f"host {host.name}: {what}: {exc}") from exc


def _install_from() -> str:
    return str(
        host.data.get("containerd_install_from", role_defaults("containerd")["containerd_install_from"])
    )


def _packages(debs: list[dict[str, Any]], packages: list[str], name: str) -> None:
    if _install_from() == "apt":
        apt.packages(name=name, packages=packages, no_recommends=True, update=True, cache_time=86400)
    else:
        runtime_ops.debs_installed(
            name=name,
            debs=debs,
            staging_dir=role_vars("containerd", host.data.dict())["containerd_deb_staging_dir"],
        )


def _members() -> list[str]:
    return [h.name for group in NODE_GROUPS for h in inventory.get_group(group, [])]


def _kubeconfig() -> str:
    return f"{host.data.get('inventory_dir')}/{cluster.KUBECONFIG_FILE}"


def _node_ip() -> str:
    return node_address(host.data.dict())


@deploy("Kubernetes node")
def kubernetes_node() -> None:
    v = role_vars("kubernetes_node", host.data.dict())
    if _fleet("edge_cluster_distribution") != "kubeadm":
        raise DeployError(
            f"host {host.name}: edge_cluster_distribution {_fleet('edge_cluster_distribution')} "
            "is not implemented yet; the cluster stage supports kubeadm"
        )
    packages = tuple(v["kubernetes_node_packages"]) if _install_from() == "controller" else ()
    arts = _controller(
        "Kubernetes artifacts", _fleet("edge_arch"), tuple(v["kubernetes_node_binaries"]), (), packages
    )
    subnet = v["kubernetes_node_pod_subnet"] or cluster.node_pod_subnet(
        host.name, _members(), v["kubernetes_node_pod_network"], int(v["kubernetes_node_pod_subnet_prefix"])
    )
    template_vars = {**v, "kubernetes_node_pod_subnet_effective": subnet}

    _packages(arts["debs"], v["kubernetes_node_packages"], "Install the packages")
    binaries = [
        files.put(
            name=f"Install {b['name']}",
            src=b["path"],
            dest=f"{v['kubernetes_node_bin_dir']}/{b['name']}",
            user="root",
            group="root",
            mode="755",
        )
        for b in arts["binaries"]
    ]
    for directory in (
        v["kubernetes_node_cni_bin_dir"],
        v["kubernetes_node_cni_conf_file"].rsplit("/", 1)[0],
        "/etc/systemd/system/kubelet.service.d",
        "/etc/kubernetes/manifests",
    ):
        files.directory(name=f"Make {directory}", path=directory, user="root", group="root", mode="755")
    for plugin in v["kubernetes_node_cni_plugins"]:
        files.link(
            name=f"Link the CNI plugin {plugin}",
            path=f"{v['kubernetes_node_cni_bin_dir']}/{plugin}",
            target=f"{v['kubernetes_node_cni_plugin_dir']}/{plugin}",
            user="root",
            group="root",
        )
    files.put(
        name="Write the node's CNI network",
        src=StringIO(render_template("kubernetes_node", "cni.conflist.j2", template_vars)),
        dest=v["kubernetes_node_cni_conf_file"],
        user="root",
        group="root",
        mode="644",
    )
    ops.cni_loaded(
        name="Restart containerd to load the CNI network",
        conf_file=v["kubernetes_node_cni_conf_file"],
        stamp_file=v["kubernetes_node_cni_stamp_file"],
    )
    units = [
        files.put(
            name=f"Write {dest}",
            src=StringIO(render_template("kubernetes_node", src, template_vars)),
            dest=dest,
            user="root",
            group="root",
            mode="644",
        )
        for src, dest in (
            ("kubelet.service.j2", "/etc/systemd/system/kubelet.service"),
            ("10-kubeadm.conf.j2", "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"),
        )
    ]
    systemd.daemon_reload(name="Reload systemd's units", _if=any_changed(*units))
    systemd.service(name="Enable the kubelet (kubeadm starts it)", service="kubelet", enabled=True)
    systemd.service(
        name="Restart kubelet",
        service="kubelet",
        restarted=True,
        daemon_reload=True,
        _if=any_changed(*binaries, *units),
    )


@deploy("Control plane (kubeadm)")
def control_plane() -> None:
    v = role_vars("control_plane_kubeadm", host.data.dict())
    n = role_vars("kubernetes_node", host.data.dict())
    c = role_vars("containerd", host.data.dict())
    packages = tuple(v["control_plane_kubeadm_packages"]) if _install_from() == "controller" else ()
    arts = _controller(
        "control-plane artifacts", _fleet("edge_arch"), (), tuple(v["control_plane_kubeadm_images"]), packages
    )
    node_ip = _node_ip()
    labels = cluster.kubelet_node_labels(_fleet("edge_node_labels"))
    sans = list(dict.fromkeys([node_ip, str(host.data.get("ansible_host")), host.name]))

    _packages(arts["debs"], v["control_plane_kubeadm_packages"], "Install etcd")
    systemd.service(name="Run etcd now and at boot", service="etcd", running=True, enabled=True)
    runtime_ops.images_imported(
        name="Import the control-plane images",
        images=arts["images"],
        namespace=c["containerd_namespace"],
        image_dir=c["containerd_image_dir"],
    )
    config = v["control_plane_kubeadm_config_file"]
    files.directory(
        name="Make the directory of edge-provision's kubeadm files",
        path=config.rsplit("/", 1)[0],
        user="root",
        group="root",
        mode="700",
    )
    files.put(
        name="Write kubeadm's configuration",
        src=StringIO(
            render_template(
                "control_plane_kubeadm",
                "kubeadm-init.yaml.j2",
                {
                    **n,
                    **v,
                    "kubeadm": {
                        "node_name": host.name,
                        "node_ip": node_ip,
                        "node_labels": labels,
                        "version": arts["version"],
                        "cert_sans": sans,
                    },
                },
            )
        ),
        dest=config,
        user="root",
        group="root",
        mode="600",
    )
    ops.kubeadm_initialised(
        name="Run kubeadm init", config_file=config, skip_phases=v["control_plane_kubeadm_skip_phases"]
    )
    server = v["control_plane_kubeadm_api_server"] or (
        f"https://{host.data.get('ansible_host')}:{n['kubernetes_node_api_port']}"
    )
    ops.controller_kubeconfig(
        name="Keep the admin kubeconfig in the fleet directory (0600)",
        kubeconfig=_kubeconfig(),
        server=server,
    )


@deploy("Join (kubeadm)")
def node_join() -> None:
    v = role_vars("node_join_kubeadm", host.data.dict())
    n = role_vars("kubernetes_node", host.data.dict())
    control_planes = inventory.get_group("control_plane", [])
    endpoint = f"{node_address(control_planes[0].data.dict())}:{n['kubernetes_node_api_port']}"
    ops.kubeadm_joined(
        name="Join the cluster with a new bootstrap token",
        kubeconfig=_kubeconfig(),
        given_token=str(v["node_join_kubeadm_token"] or ""),
        config_file=v["node_join_kubeadm_config_file"],
        skip_phases=v["node_join_kubeadm_skip_phases"],
        ttl=v["node_join_kubeadm_token_ttl"],
        join={
            "api_server_endpoint": endpoint,
            "node_name": host.name,
            "node_ip": _node_ip(),
            "node_labels": cluster.kubelet_node_labels(_fleet("edge_node_labels")),
        },
        template_vars={**n, **v},
    )
    ops.node_ready(
        name="Wait for the node to be Ready",
        kubeconfig=_kubeconfig(),
        node=host.name,
        timeout=float(n["kubernetes_node_ready_timeout"]),
    )


def _control_plane_ready() -> None:
    """Every host waits here for the control plane to be Ready. Called for all hosts, it also
    orders the run: pyinfra orders operations per host, so the edge hosts' joins come after
    this operation, which comes after every control-plane operation."""
    control_planes = inventory.get_group("control_plane", [])
    if not control_planes:
        raise DeployError(f"host {host.name}: the fleet has no control_plane host")
    n = role_vars("kubernetes_node", host.data.dict())
    ops.node_ready(
        name="Wait for the control plane to be Ready",
        kubeconfig=_kubeconfig(),
        node=control_planes[0].name,
        timeout=float(n["kubernetes_node_ready_timeout"]),
    )


def cluster_stage() -> None:
    """Every node; then the control plane initialised and Ready; then the edge nodes joined."""
    groups = host.data.get("edge_groups") or []
    kubernetes_node()
    if "control_plane" in groups:
        control_plane()
    _control_plane_ready()
    if "edge" in groups:
        node_join()
