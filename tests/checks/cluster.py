"""Stages cluster and workloads on any fleet's cluster, through its admin kubeconfig (and node
names): the control plane's static pods, the nodes Ready with the lab's labels, the kubeconfig,
kubeadm's probe patches, the Wasm label and samples. The lab's fleets run the Wasm engine of
each host's release (wasmtime on Debian 12, WasmEdge on Debian 13: ``engines`` names the nodes
that do not run wasmtime) and label their first edge host device=camera."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

from edge_provision.artifacts.builders.images import demo_output_problems
from edge_provision.role_files import role_defaults
from edge_provision.stages.cluster import kube_api
from edge_provision.stages.workloads import node_metadata, samples

WORKLOADS = samples.role_variables({"edge_wasm_engine": "wasmtime"})
CONTROL_PLANE_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def _core(kubeconfig: Path) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.api_client(kubeconfig))


def control_plane_runs_its_static_pods(kubeconfig: Path) -> None:
    pods = _core(kubeconfig).list_namespaced_pod("kube-system").items
    running = {p.metadata.labels.get("component"): p.status.phase for p in pods if p.metadata.labels}
    for component in CONTROL_PLANE_COMPONENTS:
        assert running.get(component) == "Running", running
    images = {c.image for p in pods for c in p.spec.containers}
    assert all(i.startswith("edge-provision.local/") for i in images), images


def every_node_is_ready_with_the_lab_labels(kubeconfig: Path, names: Sequence[str]) -> dict[str, client.V1Node]:
    """Exactly ``names`` are nodes, all Ready with the lab's labels: the first is the control
    plane, the second (the first edge host) carries device=camera. Returns the nodes by name."""
    nodes = {n.metadata.name: n for n in _core(kubeconfig).list_node().items}
    assert sorted(nodes) == sorted(names)
    for name, node in nodes.items():
        ready = [c.status for c in node.status.conditions if c.type == "Ready"]
        assert ready == ["True"], (name, node.status.conditions)
        assert node.metadata.labels.get("edge-provision.io/lab") == "true", name
    assert nodes[names[1]].metadata.labels.get("device") == "camera"
    assert "node-role.kubernetes.io/control-plane" in nodes[names[0]].metadata.labels
    return nodes


def admin_kubeconfig_is_private_and_reaches_the_api(kubeconfig: Path, control_plane: str) -> None:
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert kube_api.node_status(kubeconfig, control_plane)["ready"]


def control_plane_probe_failure_thresholds(kubeconfig: Path, control_plane: str, wanted: Mapping[str, int]) -> None:
    """kubeadm's patches (control_plane_kubeadm_probe_failure_thresholds) reached the static
    pods: the mirror pods of the API server, controller manager and scheduler carry ``wanted``."""
    assert wanted, "no thresholds to check"
    core = _core(kubeconfig)
    for component in CONTROL_PLANE_COMPONENTS:
        container = core.read_namespaced_pod(f"{component}-{control_plane}", "kube-system").spec.containers[0]
        found = {"startup": container.startup_probe.failure_threshold,
                 "liveness": container.liveness_probe.failure_threshold}
        assert {k: found[k] for k in wanted} == wanted, component


def _engine(engines: Mapping[str, str] | None, node: str) -> str:
    """The Wasm engine ``node`` runs: its entry in ``engines``, else the lab's Debian 12 one."""
    return (engines or {}).get(node, "wasmtime")


def every_node_carries_the_wasm_label_recorded_as_owned(kubeconfig: Path,
                                                        engines: Mapping[str, str] | None = None) -> None:
    for node in _core(kubeconfig).list_node().items:
        name = node.metadata.name
        assert node.metadata.labels.get("edge-provision.io/wasm") == _engine(engines, name), name
        assert node.metadata.labels.get("edge-provision.io/wasm-handler") == "crun-wasm", name
        owned = node.metadata.annotations[node_metadata.MANAGED_LABELS_ANNOTATION].split(",")
        assert {"edge-provision.io/wasm", "edge-provision.io/wasm-handler", "edge-provision.io/lab"} <= set(owned)


def wasm_job_ran_with_the_wasm_handler_and_printed_the_demo(
    kubeconfig: Path, workloads: Mapping[str, Any] = WORKLOADS, engines: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The sample Wasm Job succeeded through the RuntimeClass on a node with the Wasm label and
    logged the demo's lines; returns its result (``node``: where its pod ran)."""
    result = samples.job_result(kubeconfig, "default", workloads["workloads_wasm_job"], 120)
    assert result["succeeded"] and result["runtime_class"] == "crun-wasm", result
    rc = client.NodeV1Api(kube_api.api_client(kubeconfig)).read_runtime_class("crun-wasm")
    assert rc.handler == role_defaults("edge")["edge_wasm_handler"]
    node = _core(kubeconfig).read_node(result["node"])
    assert node.metadata.labels["edge-provision.io/wasm"] == _engine(engines, result["node"])
    assert demo_output_problems(result["log"], args=["/wasi_demo.wasm", "1", "2", "3"]) == [], result["log"]
    assert "A_TEST: hello" in result["log"].splitlines()
    return result


def wasm_deployment_keeps_running_with_the_wasm_handler(
    kubeconfig: Path, workloads: Mapping[str, Any] = WORKLOADS, engines: Mapping[str, str] | None = None
) -> list[str]:
    """The long-running Wasm sample: Running (not Completed) under the Wasm handler on nodes with
    the Wasm label, never restarted, its log the demo followed by heartbeats; returns its nodes."""
    pods = samples.deployment_pods(kubeconfig, "default", workloads["workloads_wasm_deployment"], 120, logs=True)
    assert len(pods) == workloads["workloads_wasm_replicas"], pods
    core = _core(kubeconfig)
    for pod in pods:
        assert pod["runtime_class"] == "crun-wasm", pod
        assert core.read_node(pod["node"]).metadata.labels["edge-provision.io/wasm"] == _engine(engines, pod["node"])
        assert samples.wasm_output_problems(pod["log"], workloads, heartbeat=True) == [], pod["log"]
        status = core.read_namespaced_pod(pod["name"], "default").status
        assert status.phase == "Running" and status.container_statuses[0].restart_count == 0, status
    return [str(pod["node"]) for pod in pods]


def wasm_job_runs_on(kubeconfig: Path, node: str, engine: str, workloads: Mapping[str, Any] = WORKLOADS) -> float:
    """The sample Wasm Job, pinned to ``node`` (a copy named after it), succeeds there through the
    RuntimeClass on a node labelled with ``engine`` and logs the demo's lines; returns the seconds
    from its creation to its pod's success. The copy is deleted afterwards."""
    from kubernetes import client as k8s

    [job] = [d for d in samples.manifests(workloads) if d["kind"] == "Job"]
    job = copy.deepcopy(job)
    name = f"{job['metadata']['name']}-{node}"
    job["metadata"]["name"] = name
    job["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    namespace = job["metadata"]["namespace"]
    api = kube_api.api_client(kubeconfig)
    assert _core(kubeconfig).read_node(node).metadata.labels["edge-provision.io/wasm"] == engine
    batch = k8s.BatchV1Api(api)
    started = time.monotonic()
    batch.create_namespaced_job(namespace, job)
    try:
        result = samples.job_result(kubeconfig, namespace, name, 180)
        seconds = time.monotonic() - started
        assert result["succeeded"] and result["node"] == node, result
        assert result["runtime_class"] == workloads["workloads_runtime_class"], result
        args = ["/wasi_demo.wasm", *workloads["workloads_wasm_args"]]
        assert demo_output_problems(result["log"], args=args) == [], result["log"]
    finally:
        batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
    return seconds


def container_sample_runs_only_on(kubeconfig: Path, node: str) -> None:
    assert samples.deployment_nodes(kubeconfig, "default", "camera-app", 120) == [node]


# -- Kubernetes of today: version, addons, pod network, DNS, etcd over TLS ---------------------

NETCHECK_NAMESPACE = "edge-provision-netcheck"
NETCHECK_PAGE = "edge-provision pod network"


def every_node_runs_the_pinned_kubernetes(kubeconfig: Path, version: str) -> None:
    """Every kubelet and the API server report ``v<version>`` (versions.yml's pin)."""
    nodes = _core(kubeconfig).list_node().items
    assert {n.metadata.name: n.status.node_info.kubelet_version for n in nodes} == {
        n.metadata.name: f"v{version}" for n in nodes}
    info = client.VersionApi(kube_api.api_client(kubeconfig)).get_code()
    assert info.git_version == f"v{version}", info


def addons_run_on_every_node(kubeconfig: Path) -> None:
    """kube-proxy and flannel run one Running pod per node; CoreDNS runs Ready; etcd is a static pod."""
    core = _core(kubeconfig)
    nodes = sorted(n.metadata.name for n in core.list_node().items)
    deadline = time.monotonic() + 180
    while True:
        proxies = core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-proxy").items
        flannel = core.list_namespaced_pod("kube-flannel", label_selector="app.kubernetes.io/name=flannel").items
        dns = core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items
        found = {
            "kube-proxy": sorted(p.spec.node_name for p in proxies if p.status.phase == "Running"),
            "flannel": sorted(p.spec.node_name for p in flannel if p.status.phase == "Running"),
        }
        dns_ready = [p.metadata.name for p in dns if p.status.phase == "Running" and all(
            c.ready for c in p.status.container_statuses or [])]
        if (found == {"kube-proxy": nodes, "flannel": nodes} and dns and len(dns_ready) == len(dns)) \
                or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert found == {"kube-proxy": nodes, "flannel": nodes}, found
    assert dns and len(dns_ready) == len(dns), [(p.metadata.name, p.status.phase) for p in dns]
    images = {c.image for p in [*proxies, *flannel, *dns] for c in p.spec.containers}
    assert all(i.startswith("edge-provision.local/") for i in images), images


def _wait_pod(
    core: client.CoreV1Api, namespace: str, name: str, phases: Sequence[str], timeout: float = 180
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.status.phase in phases:
            return pod
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name} is {pod.status.phase}, not {'/'.join(phases)}: {pod.status}")
        time.sleep(2)


def _pod(name: str, node: str, image: str, script: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"operator": "Exists"}],  # the control plane's taint too
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "check", "image": image, "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/busybox", "sh", "-c", script]}],
        },
    }


def pods_reach_each_other_across_nodes_and_services_by_name(
    kubeconfig: Path, server_node: str, client_node: str, image: str, dns_domain: str = "cluster.local"
) -> str:
    """A web server pod on ``server_node`` behind a Service; a pod on ``client_node`` fetches its
    page by the server pod's IP (the pod network across nodes), resolves the Service's DNS name
    to its ClusterIP (CoreDNS) and fetches the page through it (kube-proxy). ``image``: a busybox
    image. Returns the client's log. Everything is deleted afterwards."""
    core = _core(kubeconfig)
    service = "netcheck"
    namespace = f"{NETCHECK_NAMESPACE}-{server_node}-{client_node}"
    fqdn = f"{service}.{namespace}.svc.{dns_domain}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        serve = (f"/bin/busybox mkdir -p /tmp/www && echo '{NETCHECK_PAGE}' > /tmp/www/index.html"
                 " && exec /bin/busybox httpd -f -p 8080 -h /tmp/www")
        core.create_namespaced_pod(namespace, _pod("server", server_node, image, serve, {"app": service}))
        core.create_namespaced_service(namespace, {
            "metadata": {"name": service},
            "spec": {"selector": {"app": service}, "ports": [{"port": 80, "targetPort": 8080}]},
        })
        server = _wait_pod(core, namespace, "server", ["Running"])
        cluster_ip = core.read_namespaced_service(service, namespace).spec.cluster_ip
        # Debian's busybox-static wget crashes in glibc's static resolver even for an address:
        # the request goes through nc, the page is the response's last line.
        def fetch(address: str, port: int) -> str:
            return (f"$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 10 {address} {port}"
                    " | /bin/busybox tail -n1)")

        script = "; ".join([
            "set -e",
            f"echo pod: {fetch(server.status.pod_ip, 8080)}",
            f"echo dns: $(/bin/busybox nslookup {fqdn} | /bin/busybox grep -A1 'Name:' | /bin/busybox tail -n1)",
            f"echo service: {fetch(cluster_ip, 80)}",
        ])
        core.create_namespaced_pod(namespace, _pod("client", client_node, image, script))
        done = _wait_pod(core, namespace, "client", ["Succeeded", "Failed"])
        log = core.read_namespaced_pod_log("client", namespace)
        assert done.status.phase == "Succeeded", log
        assert done.spec.node_name == client_node and server.spec.node_name == server_node
        lines = log.splitlines()
        assert f"pod: {NETCHECK_PAGE}" in lines, log
        assert f"service: {NETCHECK_PAGE}" in lines, log
        assert any(line.startswith("dns:") and cluster_ip in line for line in lines), (cluster_ip, log)
        return log
    finally:
        core.delete_namespace(namespace)


ETCD_PKI = "/etc/kubernetes/pki/etcd"


def etcd_answers_only_over_tls(sh: Callable[[str], str]) -> str:
    """On the control plane (``sh`` runs a shell command there and returns its output): crictl
    finds the etcd container; etcdctl in it is healthy over https with kubeadm's client
    certificate, and gets no answer over plain http or over https without a certificate.
    Returns the healthy answer."""
    container = sh("crictl ps --name '^etcd$' -q").strip()
    assert container and len(container.splitlines()) == 1, container
    etcdctl = f"crictl exec {container} etcdctl --command-timeout=5s --dial-timeout=5s"
    certs = (f"--cacert={ETCD_PKI}/ca.crt --cert={ETCD_PKI}/healthcheck-client.crt"
             f" --key={ETCD_PKI}/healthcheck-client.key")
    healthy = sh(f"{etcdctl} {certs} --endpoints=https://127.0.0.1:2379 endpoint health 2>&1")
    assert "is healthy" in healthy, healthy
    plain = sh(f"{etcdctl} --endpoints=http://127.0.0.1:2379 endpoint health 2>&1; echo rc=$?")
    assert "rc=0" not in plain and "is healthy" not in plain, plain
    anonymous = sh(f"{etcdctl} --cacert={ETCD_PKI}/ca.crt --endpoints=https://127.0.0.1:2379 endpoint health 2>&1;"
                   " echo rc=$?")
    assert "rc=0" not in anonymous and "is healthy" not in anonymous, anonymous
    return healthy.strip()


def crictl_lists_the_nodes_containers(sh: Callable[[str], str]) -> list[str]:
    """``crictl ps`` on a node (``sh`` runs there) answers through containerd's CRI and lists
    the node's running kube-proxy and flannel containers; returns the container names."""
    names = sh("crictl ps -o json | python3 -c 'import json,sys;"
               " print(*(c[\"metadata\"][\"name\"] for c in json.load(sys.stdin)[\"containers\"]))'").split()
    assert {"kube-proxy", "flanneld"} <= set(names), names
    return names
