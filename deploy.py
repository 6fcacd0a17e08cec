"""The whole chain for a fleet with pyinfra: pyinfra inventories/<fleet>/inventory.py deploy.py

Run some stages only with --data edge_stages=host_prep[,...]. The fleet was validated when
pyinfra loaded its inventory, before connecting to any host.
"""

from collections.abc import Callable

from pyinfra.context import host

from edge_provision.pyinfra_engine.deploys.cluster import cluster_stage
from edge_provision.pyinfra_engine.deploys.host_prep import host_prep
from edge_provision.pyinfra_engine.deploys.runtime import containerd, wasm_runtime
from edge_provision.pyinfra_engine.deploys.workloads import workloads_stage


def runtime() -> None:
    containerd()
    wasm_runtime()


STAGES: dict[str, Callable[[], object]] = {
    "host_prep": host_prep,
    "runtime": runtime,
    "cluster": cluster_stage,
    "workloads": workloads_stage,
}

requested = host.data.get("edge_stages") or ",".join(STAGES)
selected = [s.strip() for s in str(requested).split(",") if s.strip()]
unknown = sorted(set(selected) - set(STAGES))
if unknown:
    raise SystemExit(f"unknown edge_stages {', '.join(unknown)}; choose from {', '.join(STAGES)}")

for stage, run in STAGES.items():
    if stage in selected:
        run()
