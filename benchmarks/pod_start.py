"""Pod start time of the Wasm sample (crun's Wasm engine) against the container sample (runc),
on a fleet whose workloads stage has run: each pod is created, timed on the controller from the
create call until the API reports its container started, and deleted.

    .venv/bin/python -m benchmarks.pod_start --kubeconfig inventories/lab/kubeconfig [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from edge_provision.stages.cluster import kube_api
from edge_provision.stages.workloads import samples


def _pod(name: str, wasm: bool, variables: dict[str, Any]) -> client.V1Pod:
    images = samples.image_references(variables)
    container = client.V1Container(
        name="c",
        image=images["wasm" if wasm else "container"],
        image_pull_policy="IfNotPresent",
        args=["1"] if wasm else None,
        command=None if wasm else ["sh", "-c", "echo started"],
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name, annotations={"module.wasm.image/variant": "compat-smart"} if wasm else None
        ),
        spec=client.V1PodSpec(
            containers=[container],
            restart_policy="Never",
            runtime_class_name=variables["workloads_runtime_class"] if wasm else None,
            node_selector=None
            if wasm
            else {k: str(v) for k, v in variables["workloads_container_node_label"].items()},
        ),
    )


def start_seconds(core: Any, pod: client.V1Pod) -> float:
    name = pod.metadata.name
    begin = time.monotonic()
    core.create_namespaced_pod("default", pod)
    try:
        for _ in range(600):
            p = core.read_namespaced_pod(name, "default")
            statuses = p.status.container_statuses or []
            state = statuses[0].state if statuses else None
            started = (
                state.running.started_at
                if state and state.running
                else state.terminated.started_at
                if state and state.terminated
                else None
            )
            if started:
                return time.monotonic() - begin
            time.sleep(0.1)
        raise TimeoutError(name)
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    variables = samples.role_variables({})
    core: Any = client.CoreV1Api(kube_api.api_client(args.kubeconfig))
    for kind, wasm in (("wasm", True), ("container", False)):
        times = [start_seconds(core, _pod(f"bench-{kind}-{i}", wasm, variables)) for i in range(args.runs)]
        print(
            f"{kind:9} pod start (create call -> container started, seen via the API): "
            f"median {statistics.median(times):.1f} s, min {min(times):.1f} s, max {max(times):.1f} s"
        )


if __name__ == "__main__":
    main()
