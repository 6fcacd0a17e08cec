"""Stages cluster and workloads on three fresh lab hosts: a real kubeadm control plane and two edge nodes that
join with bootstrap tokens, one through each engine (the whole chain: host_prep, runtime,
cluster). lab-1 and lab-2 run Debian 12 (crun with wasmtime), lab-3 Debian 13 (its own crun with
WasmEdge): a mixed fleet, the Wasm samples on each engine.

pyinfra makes the control plane on lab-1, with probe failure thresholds from group_vars/all.yml
(which both engines read); Ansible then runs the same stages on it and must change nothing (both
engines reach the same host state; Molecule's scenario containers has Ansible make a control plane
from scratch). lab-2 joins through Ansible, lab-3 through pyinfra. Once the control plane is up,
each engine first tries a join with a token of the cluster's ID but another secret,
which must fail in kubeadm's discovery and leave the node reset, and pyinfra one with a token the
cluster does not know, which must fail on the controller before the node is touched; then each
joins for real at -vvv. No token of the cluster may appear in any of that output. A second run of
each engine changes nothing (pyinfra's on lab-1 too, after Ansible's).

The cluster is kubeadm's default topology on Kubernetes of today (versions.yml's pin): stacked
etcd over TLS, kube-proxy, CoreDNS and flannel, with every preflight check run; a pod reaches a pod
on another node and a Service by its DNS name, crictl works on every node.

The checks of the cluster and its workloads are tests/checks/cluster.py's, which Molecule's
scenarios cluster and containers (molecule/cluster/tests) run on their hosts too.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from edge_provision.artifacts.builders import images
from edge_provision.artifacts.builders.kubernetes_modules import load_pins
from edge_provision.role_files import role_defaults
from edge_provision.stages.cluster import common, kube_api
from edge_provision.stages.workloads import samples
from tests.checks import cluster
from tests.conftest import run, tool
from tests.lab.conftest import EngineRun, LabFleet, ansible_changed, flat

LAB_HOSTS = 3
LAB_OS = ["debian-12", "debian-12", "debian-13"]
ENGINES = {"lab-3": "wasmedge"}  # the others run wasmtime
UNKNOWN_TOKEN = "abcdef.0123456789abcdef"  # well formed, never made in this cluster
JOIN_CONFIG = role_defaults("node_join_kubeadm")["node_join_kubeadm_config_file"]
# The kubelet's kernel tunables; the lab keeps it from writing the machine's (see lab/image.py).
KUBELET_TUNABLES = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")
BAD_TOKEN_TIMEOUT = "node_join_kubeadm_discovery_timeout=15s"
STAGES = "host_prep,runtime,cluster"
# Not kubeadm's own (startup 24, liveness 8), so the checks see the patches at work.
PROBE_THRESHOLDS = {"startup": 30, "liveness": 12}


@dataclass
class ClusterRuns:
    fleet: LabFleet
    kubeconfig: Path
    machine_tunables_before: dict[str, str]
    control_plane: EngineRun
    ansible_after_control_plane: EngineRun
    bad_ansible: EngineRun
    bad_pyinfra: EngineRun
    clean_after_bad: dict[str, dict[str, bool]]
    unknown_pyinfra: EngineRun
    after_unknown: dict[str, bool]
    ansible: EngineRun
    pyinfra: EngineRun


def _machine_tunables() -> dict[str, str]:
    return {key: Path("/proc/sys", key).read_text().strip() for key in KUBELET_TUNABLES}


def _node_files(fleet: LabFleet, name: str) -> dict[str, bool]:
    host = fleet.testinfra(name)
    return {
        "kubelet.conf": host.file("/etc/kubernetes/kubelet.conf").exists,
        "join config": host.file(JOIN_CONFIG).exists,
        "kubelet running": host.service("kubelet").is_running,
    }


def _wrong_secret(kubeconfig: Path) -> str:
    """A well-formed token with the ID of the cluster's one bootstrap token (kubeadm init's)
    and another secret: cluster-info is signed for its ID, so only the node can refuse it."""
    secrets = client.CoreV1Api(kube_api.api_client(kubeconfig)).list_namespaced_secret(
        "kube-system", field_selector="type=bootstrap.kubernetes.io/token"
    ).items
    assert len(secrets) == 1, [s.metadata.name for s in secrets]
    token_id = base64.b64decode(secrets[0].data["token-id"]).decode()
    secret = base64.b64decode(secrets[0].data["token-secret"]).decode()
    return f"{token_id}.{'0' * 16 if secret != '0' * 16 else '1' * 16}"


def _bad_token_args(option: str, token: str) -> list[str]:
    return [arg for extra in ("node_join_kubeadm_token=" + token, BAD_TOKEN_TIMEOUT) for arg in (option, extra)]


def _set_edge_host_vars(inventory: Path, name: str, **values: object) -> None:
    """Set (None: remove) variables of edge host ``name`` in the fleet's hosts.yml."""
    hosts_file = inventory / "hosts.yml"
    doc = yaml.safe_load(hosts_file.read_text())
    host = doc["all"]["children"]["edge"]["hosts"][name]
    for key, value in values.items():
        if value is None:
            host.pop(key, None)
        else:
            host[key] = value
    hosts_file.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="module")
def runs(lab_fleet: LabFleet) -> Iterator[ClusterRuns]:
    before = _machine_tunables()
    kubeconfig = lab_fleet.inventory / common.KUBECONFIG_FILE
    group_vars = lab_fleet.inventory / "group_vars"
    group_vars.mkdir(exist_ok=True)
    (group_vars / "all.yml").write_text(
        yaml.safe_dump({"control_plane_kubeadm_probe_failure_thresholds": PROBE_THRESHOLDS}))
    control_plane = lab_fleet.pyinfra("--limit", "lab-1", "--data", f"edge_stages={STAGES}")
    assert control_plane.result.returncode == 0, control_plane.output[-3000:]
    ansible_after = lab_fleet.ansible_playbook("--limit", "control_plane", "--tags", STAGES)
    wrong = _wrong_secret(kubeconfig)
    ansible_hosts = ("--limit", "control_plane,lab-2")
    bad_ansible = lab_fleet.ansible_playbook(*ansible_hosts, *_bad_token_args("-e", wrong))
    bad_pyinfra = lab_fleet.pyinfra("--limit", "lab-3", *_bad_token_args("--data", wrong))
    clean = {name: _node_files(lab_fleet, name) for name in ("lab-2", "lab-3")}
    unknown_pyinfra = lab_fleet.pyinfra("--limit", "lab-3", *_bad_token_args("--data", UNKNOWN_TOKEN))
    untouched = _node_files(lab_fleet, "lab-3")
    ansible = lab_fleet.ansible_playbook("-vvv", *ansible_hosts)
    pyinfra = lab_fleet.pyinfra("-vvv", "--limit", "lab-3")
    yield ClusterRuns(
        lab_fleet, kubeconfig, before, control_plane, ansible_after, bad_ansible, bad_pyinfra, clean, unknown_pyinfra,
        untouched, ansible, pyinfra,
    )


def _core(runs: ClusterRuns) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.api_client(runs.kubeconfig))


def test_both_engines_bring_up_the_cluster(runs: ClusterRuns) -> None:
    runs.ansible.ok()
    runs.pyinfra.ok()


def test_control_plane_runs_its_static_pods(runs: ClusterRuns) -> None:
    assert runs.control_plane.changed > 0
    cluster.control_plane_runs_its_static_pods(runs.kubeconfig)


def test_the_control_plane_probes_get_the_inventorys_failure_thresholds(runs: ClusterRuns) -> None:
    cluster.control_plane_probe_failure_thresholds(runs.kubeconfig, "lab-1", PROBE_THRESHOLDS)


def test_ansible_after_pyinfra_changes_nothing_on_the_control_plane(runs: ClusterRuns) -> None:
    assert runs.ansible_after_control_plane.ok().changed == 0


def test_every_node_is_ready_with_its_inventory_labels(runs: ClusterRuns) -> None:
    nodes = cluster.every_node_is_ready_with_the_lab_labels(runs.kubeconfig, ["lab-1", "lab-2", "lab-3"])
    assert "device" not in nodes["lab-3"].metadata.labels


def test_every_node_runs_the_pinned_kubernetes(runs: ClusterRuns) -> None:
    cluster.every_node_runs_the_pinned_kubernetes(runs.kubeconfig, load_pins().version)


def test_kube_proxy_flannel_and_coredns_run(runs: ClusterRuns) -> None:
    cluster.addons_run_on_every_node(runs.kubeconfig)


@pytest.mark.parametrize(("server", "client_node"), [("lab-2", "lab-3"), ("lab-3", "lab-1")])
def test_a_pod_reaches_a_pod_on_another_node_and_a_service_by_name(
    runs: ClusterRuns, server: str, client_node: str
) -> None:
    busybox = images.image_info(images.build_busybox_image()).reference
    log = cluster.pods_reach_each_other_across_nodes_and_services_by_name(
        runs.kubeconfig, server, client_node, busybox)
    print(f"{server} <- {client_node}:\n{log}")


def test_etcd_answers_only_over_tls(runs: ClusterRuns) -> None:
    print(cluster.etcd_answers_only_over_tls(lambda command: runs.fleet.sh("lab-1", command)))


@pytest.mark.parametrize("node", ["lab-1", "lab-2", "lab-3"])
def test_crictl_works_on_every_node(runs: ClusterRuns, node: str) -> None:
    cluster.crictl_lists_the_nodes_containers(lambda command: runs.fleet.sh(node, command))


def test_admin_kubeconfig_is_private_and_reaches_the_api(runs: ClusterRuns) -> None:
    cluster.admin_kubeconfig_is_private_and_reaches_the_api(runs.kubeconfig, "lab-1")


def test_bad_token_join_fails_clearly_and_leaves_the_node_clean(runs: ClusterRuns) -> None:
    """A token of the cluster's ID with another secret gets as far as kubeadm's discovery."""
    for bad, host in ((runs.bad_ansible, "lab-2"), (runs.bad_pyinfra, "lab-3")):
        assert bad.result.returncode != 0, bad.output[-3000:]
        assert f"host {host}:" in bad.output and "the node was reset" in bad.output, bad.output[-3000:]
        assert "couldn't validate the identity of the API Server" in bad.output, bad.output[-3000:]
    for host, files in runs.clean_after_bad.items():
        assert files == {"kubelet.conf": False, "join config": False, "kubelet running": False}, host


def test_a_token_the_cluster_never_signed_fails_on_the_controller_before_the_join(runs: ClusterRuns) -> None:
    """No join began: no join configuration, no kubelet.conf. (The kubernetes_node stage started
    the kubelet again, which restarts every few seconds without kubeadm's configuration: whether
    it is running at a given moment says nothing.)"""
    unknown = runs.unknown_pyinfra
    assert unknown.result.returncode != 0, unknown.output[-3000:]
    assert "host lab-3: cannot create a join token" in unknown.output, unknown.output[-3000:]
    assert f"no signature of token ID {UNKNOWN_TOKEN.split('.')[0]}" in unknown.output, unknown.output[-3000:]
    assert {k: runs.after_unknown[k] for k in ("kubelet.conf", "join config")} == {
        "kubelet.conf": False, "join config": False}


def test_join_tokens_appear_in_no_output(runs: ClusterRuns) -> None:
    """Every bootstrap token of the cluster (kubeadm init's and one per join) is looked up through
    the API and searched for in the -vvv output of both engines."""
    secrets = _core(runs).list_namespaced_secret(
        "kube-system", field_selector="type=bootstrap.kubernetes.io/token"
    ).items
    tokens = []
    for secret in secrets:
        data = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
        tokens.append((data["token-id"], data["token-secret"]))
    assert len(tokens) >= 3, "expected kubeadm init's token and one per joined node"
    outputs = {"pyinfra (control plane)": runs.control_plane.output,
               "ansible (control plane, after pyinfra)": runs.ansible_after_control_plane.output,
               "ansible -vvv": runs.ansible.output, "pyinfra -vvv": runs.pyinfra.output,
               "ansible (bad token)": runs.bad_ansible.output, "pyinfra (bad token)": runs.bad_pyinfra.output,
               "pyinfra (unknown token)": runs.unknown_pyinfra.output}
    assert len(runs.ansible.output) > 100_000 and len(runs.pyinfra.output) > 20_000
    for _token_id, token_secret in tokens:
        for what, output in outputs.items():
            assert token_secret not in output, f"a token secret is in the {what} output"


def test_join_configuration_is_gone_and_its_directory_private(runs: ClusterRuns) -> None:
    for name in ("lab-2", "lab-3"):
        host = runs.fleet.testinfra(name)
        assert not host.file(JOIN_CONFIG).exists
        assert host.file(str(Path(JOIN_CONFIG).parent)).mode == 0o700


def test_the_machine_keeps_its_kernel_tunables(runs: ClusterRuns) -> None:
    assert _machine_tunables() == runs.machine_tunables_before
    assert runs.fleet.sh("lab-2", "cat /proc/sys/kernel/panic").strip() == "10"  # what the kubelet saw


def test_second_ansible_run_changes_nothing(runs: ClusterRuns) -> None:
    assert runs.fleet.ansible_playbook("--limit", "control_plane,lab-2").ok().changed == 0


def test_second_pyinfra_run_changes_nothing(runs: ClusterRuns) -> None:
    """lab-3 after its join, lab-1 after Ansible's runs."""
    assert runs.fleet.pyinfra("--limit", "lab-1,lab-3").ok().changed == 0


# --- workloads (after the second runs above: these change the fleet) ------------------------


def test_every_node_carries_the_wasm_label_recorded_as_owned(runs: ClusterRuns) -> None:
    cluster.every_node_carries_the_wasm_label_recorded_as_owned(runs.kubeconfig, ENGINES)


def test_wasm_job_runs_on_a_wasm_node_with_the_wasm_handler_and_prints_the_demo(runs: ClusterRuns) -> None:
    cluster.wasm_job_ran_with_the_wasm_handler_and_printed_the_demo(runs.kubeconfig, engines=ENGINES)


def test_wasm_deployment_keeps_running_on_wasm_nodes_with_the_wasm_handler(runs: ClusterRuns) -> None:
    cluster.wasm_deployment_keeps_running_with_the_wasm_handler(runs.kubeconfig, engines=ENGINES)


@pytest.mark.parametrize("node", ["lab-2", "lab-3"])
def test_wasm_job_runs_under_each_nodes_engine(runs: ClusterRuns, node: str) -> None:
    """The Wasm sample on lab-2 (Debian 12, wasmtime) and lab-3 (Debian 13, WasmEdge)."""
    engine = ENGINES.get(node, "wasmtime")
    seconds = cluster.wasm_job_runs_on(runs.kubeconfig, node, engine)
    print(f"\nWasm Job on {node} ({engine}): created to succeeded in {seconds:.1f} s")


def test_container_sample_runs_only_on_the_camera_node(runs: ClusterRuns) -> None:
    cluster.container_sample_runs_only_on(runs.kubeconfig, "lab-2")


def test_a_pod_asking_for_a_label_nobody_has_stays_pending(runs: ClusterRuns) -> None:
    core = _core(runs)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="wants-thermometer"),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="c", image="edge-provision.local/busybox:1.35.0",
                                           image_pull_policy="Never", command=["sleep", "60"])],
            affinity=client.V1Affinity(node_affinity=client.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=client.V1NodeSelector(node_selector_terms=[
                    client.V1NodeSelectorTerm(match_expressions=[client.V1NodeSelectorRequirement(
                        key="device", operator="In", values=["thermometer"])])])))))
    core.create_namespaced_pod("default", pod)
    try:
        reason = None
        for _ in range(30):
            status = core.read_namespaced_pod("wants-thermometer", "default").status
            scheduled = [c for c in status.conditions or [] if c.type == "PodScheduled"]
            if scheduled:
                reason = scheduled[0].reason
                break
            time.sleep(1)
        assert status.phase == "Pending" and reason == "Unschedulable", status
    finally:
        core.delete_namespaced_pod("wants-thermometer", "default", grace_period_seconds=0)


def test_opt_in_device_detection_labels_a_node_with_a_gpio_chip(runs: ClusterRuns) -> None:
    """A real character device /dev/gpiochip0 (major 254) on lab-1; with workloads_detect_devices
    the node gets edge-provision.io/gpio=true; without it, the next run removes it again."""
    runs.fleet.sh("lab-1", "mknod /dev/gpiochip0 c 254 0")
    try:
        runs.fleet.ansible_playbook("--tags", "workloads", "-e", "workloads_detect_devices=true").ok()
        assert _core(runs).read_node("lab-1").metadata.labels.get("edge-provision.io/gpio") == "true"
        same = runs.fleet.pyinfra("--data", "edge_stages=workloads", "--data", "workloads_detect_devices=true")
        assert same.ok().changed == 0  # pyinfra detects the same device and proposes the same label
    finally:
        runs.fleet.sh("lab-1", "rm -f /dev/gpiochip0")
    runs.fleet.ansible_playbook("--tags", "workloads").ok()
    assert "edge-provision.io/gpio" not in _core(runs).read_node("lab-1").metadata.labels


def test_inventory_taints_are_set_and_removed_others_kept(runs: ClusterRuns) -> None:
    core = _core(runs)
    foreign = {"key": "example.com/maintenance", "effect": "PreferNoSchedule"}
    core.patch_node("lab-3", {"spec": {"taints": [foreign]}})
    ours = {"key": "dedicated", "value": "sensors", "effect": "PreferNoSchedule"}
    _set_edge_host_vars(runs.fleet.inventory, "lab-3", edge_node_taints=[ours])
    try:
        runs.fleet.ansible_playbook("--tags", "workloads").ok()
        taints = [t.to_dict() for t in core.read_node("lab-3").spec.taints or []]
        assert {"key": "dedicated", "value": "sensors", "effect": "PreferNoSchedule", "time_added": None} in taints
        assert any(t["key"] == "example.com/maintenance" for t in taints), taints
        assert runs.fleet.pyinfra("--data", "edge_stages=workloads").ok().changed == 0
    finally:
        _set_edge_host_vars(runs.fleet.inventory, "lab-3", edge_node_taints=None)
    runs.fleet.ansible_playbook("--tags", "workloads").ok()
    keys = [t.key for t in core.read_node("lab-3").spec.taints or []]
    assert keys == ["example.com/maintenance"]
    core.patch_node("lab-3", {"spec": {"taints": []}})


def test_moving_the_camera_label_in_the_inventory_moves_the_container_sample(runs: ClusterRuns) -> None:
    """device=camera moves from lab-2 to lab-3 in hosts.yml; a label someone else put on lab-2
    stays; a re-run (Ansible, then pyinfra finds nothing left to do) moves the pod."""
    core = _core(runs)
    core.patch_node("lab-2", {"metadata": {"labels": {"example.com/owner": "ops"}}})
    hosts_file = runs.fleet.inventory / "hosts.yml"
    doc = yaml.safe_load(hosts_file.read_text())
    edge = doc["all"]["children"]["edge"]["hosts"]
    edge["lab-3"]["edge_node_labels"]["device"] = edge["lab-2"]["edge_node_labels"].pop("device")
    hosts_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    moved = runs.fleet.ansible_playbook("--tags", "workloads").ok()
    assert moved.changed >= 2, moved.output[-3000:]  # the labels task, the pod replaced
    labels = {n.metadata.name: n.metadata.labels for n in core.list_node().items}
    assert "device" not in labels["lab-2"] and labels["lab-3"]["device"] == "camera"
    assert labels["lab-2"]["example.com/owner"] == "ops"
    assert samples.deployment_nodes(runs.kubeconfig, "default", "camera-app", 180) == ["lab-3"]
    assert runs.fleet.pyinfra("--data", "edge_stages=workloads").ok().changed == 0


def test_status_command_reports_each_node(runs: ClusterRuns) -> None:
    result = run([tool("edge-provision"), "status", "-i", str(runs.fleet.inventory), "--json"])
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert sorted(rows) == ["lab-1", "lab-2", "lab-3"]
    for name, row in rows.items():
        engine = ENGINES.get(name, "wasmtime")
        assert row["ready"] and row["kubelet"] == f"v{load_pins().version}" and row["wasm_engine"] == engine, row
        assert row["container_runtime"].startswith("containerd://"), row
        # recorded from each node's crun --version; the OS as the kubelet read it
        if engine == "wasmtime":
            assert (row["crun"], row["os"]) == ("1.8.1 +WASM:wasmtime", "Debian GNU/Linux 12 (bookworm)"), row
        else:
            assert (row["crun"], row["os"]) == ("1.21 +WASM:wasmedge", "Debian GNU/Linux 13 (trixie)"), row
    camera = [name for name, row in rows.items() if row["labels"].get("device") == "camera"]
    assert camera and any(w.startswith("camera-app") for w in rows[camera[0]]["workloads"]), rows
    assert any("wasi-demo-heartbeat (Running)" in row["workloads"] for row in rows.values()), rows
    table = run([tool("edge-provision"), "status", "-i", str(runs.fleet.inventory)])
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["NODE", "READY", "OS"], table.stderr
    lab3 = next(line for line in table.stdout.splitlines() if line.startswith("lab-3 "))
    assert "Debian GNU/Linux 13 (trixie)" in lab3 and "1.21 +WASM:wasmedge" in lab3, table.stdout


# --- a node removed and added back (last: these change the fleet) ---------------------------


def _remove(runs: ClusterRuns, node: str) -> EngineRun:
    """playbooks/remove-node.yml for ``node``."""
    result = run([tool("ansible-playbook"), "-i", str(runs.fleet.inventory), "playbooks/remove-node.yml",
                  "-e", f"edge_remove_nodes={node}"])
    return EngineRun(result, changed=ansible_changed(result.stdout) if "PLAY RECAP" in result.stdout else -1)


def _removed_and_reset(runs: ClusterRuns, node: str) -> None:
    assert node not in [n.metadata.name for n in _core(runs).list_node().items]
    host = runs.fleet.testinfra(node)
    assert not host.file("/etc/kubernetes/kubelet.conf").exists
    kubelet = host.service("kubelet")
    assert not kubelet.is_running and not kubelet.is_enabled
    assert host.run("ip link show flannel.1").rc != 0
    assert not host.file(role_defaults("kubernetes_node")["kubernetes_node_cni_conf_file"]).exists
    for other in ("lab-1", "lab-2"):
        assert f" {node}" not in runs.fleet.sh(other, "cat /etc/hosts"), other


def test_remove_node_stops_on_a_bare_pod_and_leaves_the_node_cordoned(runs: ClusterRuns) -> None:
    core = _core(runs)
    bare = client.V1Pod(
        metadata=client.V1ObjectMeta(name="bare-on-lab-3"),
        spec=client.V1PodSpec(node_name="lab-3", containers=[client.V1Container(
            name="c", image="edge-provision.local/busybox:1.35.0", image_pull_policy="Never",
            command=["sleep", "600"])]))
    core.create_namespaced_pod("default", bare)
    try:
        refused = _remove(runs, "lab-3")
        assert refused.result.returncode != 0
        assert ("node lab-3 runs pods no controller starts elsewhere: default/bare-on-lab-3; move them, or set "
                "node_remove_delete_bare_pods: true") in flat(refused.output), refused.output[-3000:]
        assert core.read_node("lab-3").spec.unschedulable is True
    finally:
        core.delete_namespaced_pod("bare-on-lab-3", "default", grace_period_seconds=0)


def test_ansible_removes_a_node_and_a_second_run_changes_nothing(runs: ClusterRuns) -> None:
    """Drained (its Deployments' pods evicted to the other nodes), the host reset, its Node
    deleted, the others' /etc/hosts without it; the same run again has nothing to do."""
    removed = _remove(runs, "lab-3")
    assert removed.ok().changed > 0
    _removed_and_reset(runs, "lab-3")
    assert _remove(runs, "lab-3").ok().changed == 0
