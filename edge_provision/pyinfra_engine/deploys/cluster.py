"""Stage cluster for pyinfra: the same work as playbooks/cluster.yml's roles (kubeadm:
kubernetes_node, control_plane_kubeadm, node_join_kubeadm; k3s: k3s_node, k3s_server, k3s_agent;
KubeEdge: kubeedge_cloud, kubeedge_edge; OpenYurt: openyurt_join), from the same defaults and
templates, computed by the same Python (edge_provision.stages.cluster)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from io import StringIO
from typing import Any
from urllib.parse import urlsplit

from pyinfra.api.deploy import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.context import host, inventory
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from edge_provision.inventory import node_address
from edge_provision.pyinfra_engine.deploys.common import fleet, host_release
from edge_provision.pyinfra_engine.operations import cluster as ops
from edge_provision.pyinfra_engine.operations import runtime as runtime_ops
from edge_provision.role_files import render_template, role_defaults, role_dependencies, role_vars
from edge_provision.stages.cluster import common, distributions, k3s, kubeadm, openyurt, pod_network


@cache
def _artifacts(
    arch: str, release: str, kubernetes: str, binaries: tuple[str, ...], cni_plugins: tuple[str, ...],
    images: tuple[str, ...], packages: tuple[str, ...],
) -> dict[str, Any]:
    return kubeadm.artifacts(arch, release, kubernetes=kubernetes, binaries=binaries, cni_plugins=cni_plugins,
                             images=images, packages=packages)


def _controller(what: str, *, binaries: tuple[str, ...] = (), cni_plugins: tuple[str, ...] = (),
                images: tuple[str, ...] = (), packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """This host's Kubernetes artifacts: for its architecture and the fleet's Kubernetes minor,
    and packages of its OS release."""
    release = host_release()
    try:
        return _artifacts(fleet("edge_arch"), release, str(fleet("edge_kubernetes_version")), binaries,
                          cni_plugins, images, packages)
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


def _rendered(name: str, role: str, template: str, variables: dict[str, Any], dest: str,
              mode: str = "644") -> Any:
    """files.put of one of ``role``'s templates, rendered as the role renders it, owned by root."""
    return files.put(name=name, src=StringIO(render_template(role, template, variables)), dest=dest,
                     user="root", group="root", mode=mode)


def _kubeconfig() -> str:
    return f"{host.data.get('inventory_dir')}/{common.KUBECONFIG_FILE}"


def _node_ip() -> str:
    return node_address(host.data.dict())


@deploy("Kubernetes node")
def kubernetes_node() -> None:
    v = role_vars("kubernetes_node", host.data.dict())
    # Shipped from the controller unless the node uses its own apt sources: a release install of
    # containerd brings no Debian package, so the CNI plugins come from here too.
    packages = tuple(v["kubernetes_node_packages"]) if _install_from() != "apt" else ()
    c = role_vars("containerd", host.data.dict())
    arts = _controller(
        "Kubernetes artifacts",
        binaries=tuple(v["kubernetes_node_binaries"]),
        cni_plugins=tuple(v["kubernetes_node_cni_controller_plugins"]),
        images=tuple(v["kubernetes_node_images"]),
        packages=packages,
    )
    template_vars = v

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
    for plugin in arts["cni_plugins"]:
        files.put(
            name=f"Install the CNI plugin {plugin['name']}",
            src=plugin["path"],
            dest=f"{v['kubernetes_node_cni_bin_dir']}/{plugin['name']}",
            user="root",
            group="root",
            mode="755",
        )
    for plugin in v["kubernetes_node_cni_plugins"]:
        files.link(
            name=f"Link the CNI plugin {plugin}",
            path=f"{v['kubernetes_node_cni_bin_dir']}/{plugin}",
            target=f"{v['kubernetes_node_cni_plugin_dir']}/{plugin}",
            user="root",
            group="root",
        )
    _rendered("Write the node's CNI network", "kubernetes_node", "cni.conflist.j2", template_vars,
              v["kubernetes_node_cni_conf_file"])
    ops.cni_loaded(
        name="Restart containerd to load the CNI network",
        conf_file=v["kubernetes_node_cni_conf_file"],
        stamp_file=v["kubernetes_node_cni_stamp_file"],
    )
    if v["kubernetes_node_upstream_dns"]:
        resolv_conf = v["kubernetes_node_resolv_conf_file"]
        files.directory(name="Make the directory of the pods' resolv.conf",
                        path=resolv_conf.rsplit("/", 1)[0], user="root", group="root", mode="700")
        _rendered("Write the pods' resolv.conf", "kubernetes_node", "resolv.conf.j2", template_vars,
                  resolv_conf)
    _rendered("Point crictl at containerd", "kubernetes_node", "crictl.yaml.j2", template_vars,
              "/etc/crictl.yaml")
    runtime_ops.images_imported(
        name="Import the node's images",
        images=arts["images"],
        namespace=c["containerd_namespace"],
        image_dir=c["containerd_image_dir"],
    )
    units = [
        _rendered(f"Write {dest}", "kubernetes_node", src, template_vars, dest)
        for src, dest in (
            ("kubelet.service.j2", "/etc/systemd/system/kubelet.service"),
            ("10-kubeadm.conf.j2", "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf"),
        )
    ]
    systemd.daemon_reload(name="Reload systemd's units", _if=any_changed(*units))
    systemd.service(
        name="Run the kubelet now and at boot (it waits for kubeadm's configuration)",
        service="kubelet", running=True, enabled=True,
    )
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
    arts = _controller("control-plane artifacts", images=tuple(v["control_plane_kubeadm_images"]))
    node_ip = _node_ip()
    labels = common.kubelet_node_labels(fleet("edge_node_labels"))
    sans = kubeadm.cert_sans(node_ip, str(host.data.get("ansible_host")), host.name,
                             v["control_plane_kubeadm_api_server"])

    runtime_ops.images_imported(
        name="Import the control-plane images",
        images=arts["images"],
        namespace=c["containerd_namespace"],
        image_dir=c["containerd_image_dir"],
    )
    try:
        patches = kubeadm.probe_patches(
            v["control_plane_kubeadm_probe_failure_thresholds"], v["control_plane_kubeadm_images"]
        )
    except common.ClusterError as exc:
        raise DeployError(f"host {host.name}: {exc}") from exc
    config = v["control_plane_kubeadm_config_file"]
    files.directory(
        name="Make the directory of edge-provision's kubeadm files",
        path=config.rsplit("/", 1)[0],
        user="root",
        group="root",
        mode="700",
    )
    kubeadm_vars = {
        "node_name": host.name,
        "node_ip": node_ip,
        "node_labels": labels,
        "version": arts["version"],
        "etcd_tag": arts["references"]["etcd"].rsplit(":", 1)[1],
        "dns_tag": arts["references"]["coredns"].rsplit(":", 1)[1],
        "cert_sans": sans,
        "patches_dir": v["control_plane_kubeadm_patches_dir"] if patches else "",
    }
    _rendered("Write kubeadm's configuration", "control_plane_kubeadm", "kubeadm-init.yaml.j2",
              {**n, **v, "kubeadm": kubeadm_vars}, config, mode="600")
    if patches:
        files.directory(
            name="Make the directory of the patches",
            path=v["control_plane_kubeadm_patches_dir"],
            user="root",
            group="root",
            mode="700",
        )
    for patch, text in patches.items():
        files.put(
            name=f"Write the patch {patch}",
            src=StringIO(text),
            dest=f"{v['control_plane_kubeadm_patches_dir']}/{patch}",
            user="root",
            group="root",
            mode="600",
        )
    ops.kubeadm_initialised(
        name="Run kubeadm init",
        config_file=config,
        skip_phases=v["control_plane_kubeadm_skip_phases"],
    )
    server = v["control_plane_kubeadm_api_server"] or (
        f"https://{host.data.get('ansible_host')}:{n['kubernetes_node_api_port']}"
    )
    ops.controller_kubeconfig(
        name="Keep the admin kubeconfig in the fleet directory (0600)",
        kubeconfig=_kubeconfig(),
        server=server,
    )
    ops.pod_network_applied(
        name="Apply the pod network (flannel) through the API",
        kubeconfig=_kubeconfig(),
        image=arts["references"]["flannel"],
        variables={name: {**n, **v}[name] for name in pod_network.SETTINGS},
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
        signed_within=v["node_join_kubeadm_discovery_timeout"],
        join={
            "api_server_endpoint": endpoint,
            "node_name": host.name,
            "node_ip": _node_ip(),
            "node_labels": common.kubelet_node_labels(fleet("edge_node_labels")),
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


# --- k3s -------------------------------------------------------------------------------------


@cache
def _k3s_binary(arch: str, source: str) -> dict[str, str]:
    return k3s.k3s_binary(arch, source)


def _control_plane() -> Any:
    control_planes = inventory.get_group("control_plane", [])
    if not control_planes:
        raise DeployError(f"host {host.name}: the fleet has no control_plane host")
    return control_planes[0]


def _api_labels(labels: dict[str, str], timeout: Any) -> None:
    ops.node_labelled(
        name="Set the node's labels through the API",
        kubeconfig=_kubeconfig(),
        node=host.name,
        labels=labels,
        timeout=float(timeout),
    )


def _k3s_node() -> list[Any]:
    """roles/k3s_node: the binary and the containerd template (what restarts the service)."""
    v = role_vars("k3s_node", host.data.dict())
    arch = fleet("edge_arch")
    changed = []
    if v["k3s_node_install_binary"]:
        try:
            binary = _k3s_binary(arch, str(fleet("edge_artifact_source")))
        except Exception as exc:  # the fetcher names the file, source and reason
            raise DeployError(f"host {host.name}: k3s binary: {exc}") from exc
        changed.append(files.put(
            name="Install the k3s binary", src=binary["path"], dest=f"{v['k3s_node_bin_dir']}/k3s",
            user="root", group="root", mode="755",
        ))
    containerd_dir = f"{v['k3s_node_data_dir']}/agent/etc/containerd"
    for directory in (v["k3s_node_config_file"].rsplit("/", 1)[0], containerd_dir):
        files.directory(name=f"Make {directory}", path=directory, user="root", group="root", mode="755")
    version = k3s.k3s_version(arch)
    changed.append(files.put(
        name="Write k3s's containerd template with the Wasm handler",
        src=StringIO(k3s.k3s_containerd_template(
            version, fleet("edge_wasm_handler"), fleet("edge_wasm_crun_path"),
            bool(v["k3s_node_wasm_systemd_cgroup"]),
        )),
        dest=f"{containerd_dir}/{k3s.k3s_containerd_template_name(version)}",
        user="root", group="root", mode="644",
    ))
    return changed


def _k3s_service(unit: str, mode: str, env: Any, tls_sans: list[str], changed: list[Any]) -> None:
    """roles/k3s_node/tasks/service.yml: config.yaml, the 0600 environment, the unit, running."""
    v = role_vars("k3s_node", host.data.dict())
    service = {"unit": unit, "mode": mode, "tls_sans": tls_sans}
    rendered_config = k3s.k3s_config(
        node_name=host.name, node_ip=_node_ip(), labels=fleet("edge_node_labels"),
        tls_sans=tls_sans, extra=v["k3s_node_extra_config"],
    )
    config = _rendered("Write k3s's configuration", "k3s_node", "config.yaml.j2",
                       {"k3s_node_rendered_config": rendered_config}, v["k3s_node_config_file"], mode="600")
    unit_file = _rendered(
        f"Write the unit of {unit}", "k3s_node", "k3s.service.j2",
        {**v, "k3s_node_service": service, "k3s_node_env_path": k3s.service_env_file(unit)},
        k3s.service_unit_file(unit),
    )
    systemd.daemon_reload(name="Reload systemd's units", _if=unit_file.did_change)
    started = systemd.service(name=f"Run {unit} now and at boot", service=unit, running=True, enabled=True)
    systemd.service(
        name=f"Restart {unit} for a new binary, unit, environment or configuration",
        service=unit, restarted=True, daemon_reload=True,
        _if=lambda: not started.did_change()
        and any(op.did_change() for op in (*changed, env, config, unit_file)),
    )


@deploy("k3s server")
def k3s_server() -> None:
    v = role_vars("k3s_server", host.data.dict())
    n = role_vars("k3s_node", host.data.dict())
    changed = _k3s_node()
    controller_url = (
        v["k3s_server_api_server"] or f"https://{host.data.get('ansible_host')}:{n['k3s_node_api_port']}"
    )
    tls_sans = list(dict.fromkeys([
        _node_ip(), str(host.data.get("ansible_host")), host.name, str(urlsplit(controller_url).hostname),
    ]))
    env = files.put(
        name="Write the service's environment, 0600 (k3s)",
        src=StringIO(k3s.k3s_server_env(str(v["k3s_server_token"] or ""))),
        dest=k3s.service_env_file("k3s"), user="root", group="root", mode="600",
    )
    _k3s_service("k3s", "server", env, tls_sans, changed)
    ops.files_present(
        name="Wait for k3s's token and admin kubeconfig",
        paths=[k3s.server_token_file(n["k3s_node_data_dir"]), v["k3s_server_kubeconfig_file"]],
        timeout=float(v["k3s_server_start_timeout"]),
    )
    ops.controller_kubeconfig(
        name="Keep the admin kubeconfig in the fleet directory (0600)",
        kubeconfig=_kubeconfig(), server=controller_url, admin_conf=v["k3s_server_kubeconfig_file"],
    )
    _api_labels(common.api_labels(fleet("edge_node_labels")), n["k3s_node_register_timeout"])


@deploy("k3s agent")
def k3s_agent() -> None:
    v = role_vars("k3s_agent", host.data.dict())
    n = role_vars("k3s_node", host.data.dict())
    server = _control_plane()
    changed = _k3s_node()
    ops.k3s_node_password_forgotten(
        name="Forget the password of a reinstalled node on the server",
        kubeconfig=_kubeconfig(), node=host.name, password_file=v["k3s_agent_node_password_file"],
    )
    env = ops.k3s_agent_env(
        name="Write the service's environment, 0600 (k3s-agent)",
        env_file=k3s.service_env_file("k3s-agent"),
        server_url=f"https://{node_address(server.data.dict())}:{n['k3s_node_api_port']}",
        given_token=str(v["k3s_agent_token"] or ""),
        server=server,
        server_token_file=k3s.server_token_file(n["k3s_node_data_dir"]),
    )
    _k3s_service("k3s-agent", "agent", env, [], changed)
    _api_labels(common.api_labels(fleet("edge_node_labels")), n["k3s_node_register_timeout"])


# --- KubeEdge ----------------------------------------------------------------------------------


@deploy("KubeEdge cloud")
def kubeedge_cloud() -> None:
    v = role_vars("kubeedge_cloud", host.data.dict())
    k = role_vars("kubeedge", host.data.dict())
    kubeconfig = k["kubeedge_cloud_kubeconfig"]
    files.directory(
        name="Make the directory of the kubeconfig for keadm", path=kubeconfig.rsplit("/", 1)[0],
        user="root", group="root", mode="700",
    )
    files.put(
        name="Give keadm the fleet's admin kubeconfig (0600)", src=_kubeconfig(), dest=kubeconfig,
        user="root", group="root", mode="600",
    )
    ops.keadm_initialised(
        name="Run keadm init", keadm=k["kubeedge_keadm"], kubeconfig=kubeconfig,
        advertise_address=_node_ip(), extra=list(v["kubeedge_cloud_init_args"]),
    )


@deploy("KubeEdge edge")
def kubeedge_edge() -> None:
    v = role_vars("kubeedge_edge", host.data.dict())
    k = role_vars("kubeedge", host.data.dict())
    cloud = _control_plane()
    ops.keadm_joined(
        name="Join KubeEdge with a token from keadm gettoken",
        keadm=k["kubeedge_keadm"], cloud=cloud, cloud_kubeconfig=k["kubeedge_cloud_kubeconfig"],
        cloudcore=f"{node_address(cloud.data.dict())}:{k['kubeedge_cloud_port']}",
        config_dir=v["kubeedge_edge_config_dir"], joined_file=v["kubeedge_edge_joined_file"],
        runtime_endpoint=v["kubeedge_edge_runtime_endpoint"], labels=fleet("edge_node_labels"),
        extra=list(v["kubeedge_edge_join_args"]),
    )
    _api_labels(common.api_labels(fleet("edge_node_labels")), v["kubeedge_edge_register_timeout"])


# --- OpenYurt ----------------------------------------------------------------------------------


@deploy("OpenYurt join")
def openyurt_join() -> None:
    v = role_vars("openyurt_join", host.data.dict())
    server = _control_plane()
    ops.yurtadm_joined(
        name="Join OpenYurt with a new bootstrap token",
        yurtadm=v["openyurt_join_yurtadm"], kubeconfig=_kubeconfig(),
        given_token=str(v["openyurt_join_token"] or ""), ttl=v["openyurt_join_token_ttl"],
        server=f"{node_address(server.data.dict())}:{v['openyurt_join_api_port']}",
        cri_socket=v["openyurt_join_cri_socket"], joined_file=v["openyurt_join_joined_file"],
        labels=fleet("edge_node_labels"), extra=list(v["openyurt_join_args"]),
    )
    try:
        labels = openyurt.openyurt_labels(fleet("edge_node_labels"), v["openyurt_join_nodepool"])
    except common.DistributionError as exc:
        raise DeployError(f"host {host.name}: {exc}") from exc
    _api_labels(labels, v["openyurt_join_register_timeout"])


def _control_plane_done() -> None:
    ops.control_plane_done(name="Order: the control plane's steps first", control_plane=_control_plane().name)


# --- the stage ---------------------------------------------------------------------------------


# The pyinfra deploy of each role that stages.cluster.distributions names.
ROLE_DEPLOYS: dict[str, Callable[[], object]] = {
    "control_plane_kubeadm": control_plane,
    "node_join_kubeadm": node_join,
    "k3s_server": k3s_server,
    "k3s_agent": k3s_agent,
    "kubeedge_cloud": kubeedge_cloud,
    "kubeedge_edge": kubeedge_edge,
    "openyurt_join": openyurt_join,
}


def cluster_stage() -> None:
    """playbooks/cluster.yml for pyinfra: the roles stages.cluster.distributions names for the
    fleet's distribution, the control plane's first, then the edge nodes'. kubernetes_node, the
    kubeadm roles' dependency, comes first on every host that runs one of them (the edge nodes
    prepare while the control plane initialises); every host waits for kubeadm's control plane
    to be Ready, and the edge nodes' steps come after every control-plane step."""
    groups = host.data.get("edge_groups") or []
    distribution, mode = fleet("edge_cluster_distribution"), fleet("edge_cluster_control_plane")
    control_plane_roles = distributions.cluster_roles(distribution, "control_plane", mode)
    edge_roles = distributions.cluster_roles(distribution, "edge", mode)
    mine = [*(control_plane_roles if "control_plane" in groups else []),
            *(edge_roles if "edge" in groups else [])]
    if any("kubernetes_node" in role_dependencies(role) for role in mine):
        kubernetes_node()
    for role in control_plane_roles:
        if "control_plane" in groups:
            ROLE_DEPLOYS[role]()
        if role == distributions.KUBEADM_CONTROL_PLANE:
            _control_plane_ready()
    _control_plane_done()
    if "edge" in groups:
        for role in edge_roles:
            ROLE_DEPLOYS[role]()
