"""The workloads stage's Python (edge_provision.stages.workloads) and manifests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_provision.role_files import role_path
from edge_provision.stages.workloads import node_metadata, samples

A = node_metadata.MANAGED_LABELS_ANNOTATION


def test_labels_are_added_and_the_owned_keys_recorded() -> None:
    patch = node_metadata.label_patch({"kubernetes.io/os": "linux"}, {}, {"device": "camera", "edge-provision.io/wasm": "wasmtime"})
    assert patch == {"metadata": {"labels": {"device": "camera", "edge-provision.io/wasm": "wasmtime"},
                                  "annotations": {A: "device,edge-provision.io/wasm"}}}


def test_nothing_to_do_when_labels_and_record_match() -> None:
    assert node_metadata.label_patch({"device": "camera", "x": "1"}, {A: "device"}, {"device": "camera"}) is None


def test_dropped_owned_labels_are_removed_but_foreign_ones_kept() -> None:
    current = {"device": "camera", "example.com/owner": "ops", "zone": "a"}
    patch = node_metadata.label_patch(current, {A: "device,zone"}, {"zone": "b"})
    assert patch == {"metadata": {"labels": {"zone": "b", "device": None}, "annotations": {A: "zone"}}}


def test_a_label_someone_else_set_is_taken_over_only_when_the_inventory_names_it() -> None:
    patch = node_metadata.label_patch({"device": "gpio"}, {}, {"device": "camera"})
    assert patch is not None and patch["metadata"]["labels"] == {"device": "camera"}
    assert node_metadata.label_patch({"device": "gpio"}, {}, {}) is None


def test_wanted_labels_add_the_wasm_engine_and_handler() -> None:
    v = samples.role_variables({})
    assert node_metadata.wanted_labels({"device": "camera"}, v, "wasmedge", "crun-wasm") == {
        "device": "camera", "edge-provision.io/wasm": "wasmedge", "edge-provision.io/wasm-handler": "crun-wasm"}


def test_manifests() -> None:
    v = samples.role_variables({"edge_wasm_engine": "wasmedge", "workloads_wasm_image": "r.example/w:1",
                                  "workloads_container_image": "r.example/c:1"})
    runtime_class, job, _wasm_deployment, deployment = samples.manifests(v)
    assert runtime_class["handler"] == "crun-wasm"
    # by the handler, not the engine: one RuntimeClass for nodes of every engine (a mixed fleet)
    assert runtime_class["scheduling"]["nodeSelector"] == {"edge-provision.io/wasm-handler": "crun-wasm"}
    pod = job["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"module.wasm.image/variant": "compat-smart"}
    assert pod["spec"]["runtimeClassName"] == "crun-wasm"
    assert pod["spec"]["containers"][0]["image"] == "r.example/w:1"
    assert pod["spec"]["containers"][0]["args"] == ["1", "2", "3"]
    assert "nodeSelector" not in pod["spec"]  # any node the RuntimeClass selects
    terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "device", "operator": "In", "values": ["camera"]}]}]


def test_wasm_deployment_runs_the_demo_in_heartbeat_mode_on_the_wasm_handler() -> None:
    v = samples.role_variables({"workloads_wasm_heartbeat_seconds": 5, "workloads_wasm_replicas": 2})
    docs = {d["metadata"]["name"]: d for d in samples.manifests(v)}
    wasm = docs["wasi-demo-heartbeat"]
    assert wasm["kind"] == "Deployment" and wasm["spec"]["replicas"] == 2
    pod = wasm["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"module.wasm.image/variant": "compat-smart"}
    assert pod["spec"]["runtimeClassName"] == "crun-wasm"
    assert wasm["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == docs["wasi-demo"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["args"] == ["1", "2", "3"]
    assert container["env"] == [{"name": "WASI_DEMO_HEARTBEAT_SECONDS", "value": "5"},
                                {"name": "A_TEST", "value": "hello"}]


DEMO_LOG = """Random number: 12
Random bytes: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
Printed from wasi: This is from a main function
This is from a main function
The env vars are as follows.
A_TEST: hello
The args are as follows.
/wasi_demo.wasm
1
2
3
File content is This is in a file
"""


def test_wasm_output_problems_accepts_the_demo_and_names_what_is_missing() -> None:
    v = samples.role_variables({})
    assert samples.wasm_output_problems(DEMO_LOG, v) == []
    assert samples.wasm_output_problems(DEMO_LOG.replace("A_TEST: hello\n", ""), v) == [
        "env A_TEST=hello not listed"]
    assert samples.wasm_output_problems(DEMO_LOG.replace("3\n", ""), v) != []


def test_heartbeat_output_needs_the_demo_then_counted_beats() -> None:
    v = samples.role_variables({})
    assert samples.wasm_output_problems(DEMO_LOG, v, heartbeat=True) != []  # no beat yet
    beating = DEMO_LOG + "Heartbeat 1\nHeartbeat 2\n"
    assert samples.wasm_output_problems(beating, v, heartbeat=True) == []
    assert samples.wasm_output_problems(beating, v) != []  # a Job's demo ends at the file line
    assert samples.wasm_output_problems(DEMO_LOG + "Heartbeat 2\n", v, heartbeat=True) != []
    assert samples.wasm_output_problems(beating + "oops\n", v, heartbeat=True) != []


@pytest.mark.parametrize(("output", "summary"), [
    ("crun version 1.8.1\ncommit: abc\nrundir: /run/crun\nspec: 1.0.0\n"
     "+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +WASM:wasmtime +YAJL\n", "1.8.1 +WASM:wasmtime"),
    ("crun version 1.8.1\n+SYSTEMD +CAP +SECCOMP +YAJL\n", "1.8.1"),
    ("", ""),
])
def test_crun_summary(output: str, summary: str) -> None:
    assert node_metadata.crun_summary(output) == summary


def test_crun_annotation_is_set_changed_and_removed_only_when_it_differs() -> None:
    key = node_metadata.CRUN_ANNOTATION
    assert node_metadata.annotation_patch({}, "1.8.1 +WASM:wasmtime") == {
        "metadata": {"annotations": {key: "1.8.1 +WASM:wasmtime"}}}
    assert node_metadata.annotation_patch({key: "1.8.1 +WASM:wasmtime"}, "1.8.1 +WASM:wasmtime") is None
    assert node_metadata.annotation_patch({key: "1.8.1 +WASM:wasmtime"}, "") == {"metadata": {"annotations": {key: None}}}
    assert node_metadata.annotation_patch({}, "") is None


def test_wasm_sample_node_selector_places_its_pod() -> None:
    v = samples.role_variables({"workloads_wasm_node_selector": {"edge-provision.io/wasm-sample": "true"},
                                  "workloads_wasm_image": "r.example/w:1", "workloads_container_image": "r.example/c:1"})
    _runtime_class, job, wasm_deployment, deployment = samples.manifests(v)
    for wasm in (job, wasm_deployment):  # both Wasm samples
        assert wasm["spec"]["template"]["spec"]["nodeSelector"] == {"edge-provision.io/wasm-sample": "true"}
        assert wasm["spec"]["template"]["spec"]["runtimeClassName"] == "crun-wasm"
    assert "nodeSelector" not in deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("key", ["workloads_namespace", "edge_wasm_engine", "workloads_wasm_node_selector"])
def test_role_variables_take_fleet_overrides(key: str) -> None:
    assert samples.role_variables({key: "x", "unrelated": 1})[key] == "x"
    assert "unrelated" not in samples.role_variables({"unrelated": 1})


def _detect(root: Path) -> dict[str, str]:
    script = role_path("workloads", "files", "devices.sh").read_text()
    result = subprocess.run(["sh", "-c", script, "devices", str(root)], capture_output=True, text=True, check=True)
    detected: dict[str, str] = json.loads(result.stdout)
    return detected


def test_device_detection_proposes_labels(tmp_path: Path) -> None:
    assert _detect(tmp_path) == {}
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "video0").touch()
    (tmp_path / "dev" / "ttyUSB1").touch()
    assert _detect(tmp_path) == {"device": "camera", "edge-provision.io/serial": "true"}
    (tmp_path / "dev" / "gpiochip0").touch()
    (tmp_path / "sys" / "class" / "bluetooth" / "hci0").mkdir(parents=True)
    assert _detect(tmp_path) == {"device": "camera", "edge-provision.io/gpio": "true",
                                 "edge-provision.io/serial": "true", "edge-provision.io/bluetooth": "true"}


T = node_metadata.MANAGED_TAINTS_ANNOTATION
MASTER = {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}


def test_taints_are_added_beside_others_and_recorded() -> None:
    patch = node_metadata.taint_patch([MASTER], {}, [{"key": "dedicated", "value": "camera", "effect": "NoSchedule"}])
    assert patch == {"spec": {"taints": [MASTER, {"key": "dedicated", "effect": "NoSchedule", "value": "camera"}]},
                     "metadata": {"annotations": {T: "dedicated:NoSchedule"}}}


def test_taints_in_place_need_nothing() -> None:
    current = [MASTER, {"key": "dedicated", "value": "camera", "effect": "NoSchedule"}]
    assert node_metadata.taint_patch(current, {T: "dedicated:NoSchedule"},
                                 [{"key": "dedicated", "value": "camera", "effect": "NoSchedule"}]) is None
    assert node_metadata.taint_patch([MASTER], {}, []) is None


def test_owned_taints_dropped_from_the_inventory_are_removed_others_kept() -> None:
    current = [MASTER, {"key": "dedicated", "effect": "NoSchedule"}]
    patch = node_metadata.taint_patch(current, {T: "dedicated:NoSchedule"}, [])
    assert patch == {"spec": {"taints": [MASTER]}, "metadata": {"annotations": {T: ""}}}
