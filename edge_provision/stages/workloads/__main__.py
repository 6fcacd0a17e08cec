"""``python -m edge_provision.stages.workloads labels|manifests|replace-misplaced|verify``: what the
workloads role runs on the controller (it applies the manifests itself, with kubernetes.core.k8s).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_provision.stages.workloads.node_metadata import crun_summary, reconcile_labels, wanted_labels
from edge_provision.stages.workloads.samples import manifests, misplaced_pods, role_variables, verify


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_provision.stages.workloads")
    sub = parser.add_subparsers(dest="command", required=True)
    labels = sub.add_parser("labels", help="reconcile the labels edge-provision owns on a node")
    labels.add_argument("--kubeconfig", type=Path, required=True)
    labels.add_argument("--node", required=True)
    labels.add_argument("--labels", required=True, help="JSON object of the inventory's and detected labels")
    labels.add_argument("--wasm", nargs=2, required=True, metavar=("ENGINE", "HANDLER"),
                        help="the node's Wasm engine and the fleet's handler (labelled as the role says)")
    labels.add_argument("--vars", default="{}", help="JSON object of the role's settings (overrides)")
    labels.add_argument("--taints", default="[]", help="JSON list of the wanted taints")
    labels.add_argument("--crun-version", default="", help="output of the node's `crun --version`")
    labels.add_argument("--check", action="store_true", help="report, change nothing")
    render = sub.add_parser("manifests", help="the rendered manifests, as a JSON list")
    render.add_argument("--vars", required=True, help="JSON object of the workloads role's variables")
    move = sub.add_parser("replace-misplaced", help="delete container-sample pods on nodes without its label")
    move.add_argument("--kubeconfig", type=Path, required=True)
    move.add_argument("--vars", required=True, help="JSON object of the workloads role's variables")
    move.add_argument("--check", action="store_true", help="report, change nothing")
    check = sub.add_parser("verify", help="wait for the sample workloads and check them")
    check.add_argument("--kubeconfig", type=Path, required=True)
    check.add_argument("--vars", required=True, help="JSON object of the workloads role's variables")
    check.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    try:
        if args.command == "labels":
            changed = reconcile_labels(
                args.kubeconfig,
                args.node,
                wanted_labels(json.loads(args.labels), role_variables(json.loads(args.vars)), *args.wasm),
                json.loads(args.taints),
                crun_summary(args.crun_version),
                dry_run=args.check,
            )
            print(json.dumps({"changed": changed}))
        elif args.command == "replace-misplaced":
            pods = misplaced_pods(
                args.kubeconfig, role_variables(json.loads(args.vars)), delete=not args.check
            )
            print(json.dumps({"changed": bool(pods), "pods": pods}))
        elif args.command == "manifests":
            print(json.dumps(manifests(role_variables(json.loads(args.vars)))))
        else:
            print(json.dumps(verify(args.kubeconfig, role_variables(json.loads(args.vars)), args.timeout)))
    except Exception as exc:  # the API's and our own errors, without a traceback for Ansible's log
        print(f"edge-provision workloads {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
