"""Wall-clock figures for the closing notes and regressions: lab boot-to-SSH, and the cold
and no-op converge time of each engine on its own fresh lab hosts.

    .venv/bin/python -m benchmarks.converge [--hosts 3] [--stages host_prep] [--json out.json]

Speed targets live here, not in the tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_provision import PROJECT_ROOT
from edge_provision.lab import Lab

BIN = Path(sys.executable).parent


def timed(args: list[str]) -> float:
    start = time.monotonic()
    result = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return elapsed


def engine_command(engine: str, inventory: Path, stages: str) -> list[str]:
    if engine == "ansible":
        return [str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/site.yml", "--tags", stages]
    return [str(BIN / "pyinfra"), "-y", str(inventory / "inventory.py"), "deploy.py",
            "--data", f"edge_stages={stages}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--stages", default="host_prep")
    parser.add_argument("--backend", default="container")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ep-bench-") as tmp:
        for engine in ("ansible", "pyinfra"):
            inventory = Path(tmp) / engine
            lab = Lab(inventory, backend=args.backend)
            try:
                start = time.monotonic()
                lab.up(args.hosts)
                figures[f"{engine}: lab up {args.hosts} hosts to SSH (s)"] = time.monotonic() - start
                command = engine_command(engine, inventory, args.stages)
                figures[f"{engine}: cold converge (s)"] = timed(command)
                figures[f"{engine}: no-op converge (s)"] = timed(command)
                if "workloads" in args.stages.split(","):  # a cluster with the samples: pod start
                    pod_start = [sys.executable, "-m", "benchmarks.pod_start",
                                 "--kubeconfig", str(inventory / "kubeconfig"), "--runs", "5"]
                    subprocess.run(pod_start, cwd=PROJECT_ROOT, check=False)
            finally:
                start = time.monotonic()
                lab.down()
                figures[f"{engine}: lab down (s)"] = time.monotonic() - start

    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:{width}}  {value:7.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
