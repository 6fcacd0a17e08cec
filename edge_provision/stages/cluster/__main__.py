"""``python -m edge_provision.stages.cluster <command>``: what the Ansible roles of the cluster
stage run on the controller (delegate_to: localhost), printing JSON. The pyinfra deploy calls
the same functions directly.

``token`` prints a join token: Ansible keeps that task's output out of its logs (``no_log``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_provision.artifacts.fetch import UPSTREAM
from edge_provision.stages.cluster import node_removal, pod_network
from edge_provision.stages.cluster.k3s import k3s_binary
from edge_provision.stages.cluster.kube_api import (
    forget_node_password,
    join_token,
    label_node,
    node_status,
    wait_node_ready,
)
from edge_provision.stages.cluster.kubeadm import artifacts


def _arch_release(platform: str) -> tuple[str, str]:
    arch, _, release = platform.partition("/")
    return arch, release


def _print(value: Any) -> None:
    print(json.dumps(value, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_provision.stages.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="create a join token (prints it: keep this output out of logs)")
    token.add_argument("--kubeconfig", type=Path, required=True)
    token.add_argument("--ttl", default="15m")
    token.add_argument("--given", default="", help="a token made elsewhere, used instead of a new one")
    token.add_argument("--signed-within", default="",
                       help="how long the cluster may take to sign cluster-info with the token (e.g. 5m0s;"
                       " default: node_join_kubeadm_discovery_timeout's)")
    ready = sub.add_parser("wait-ready", help="wait until a node is Ready")
    ready.add_argument("--kubeconfig", type=Path, required=True)
    ready.add_argument("--node", required=True)
    ready.add_argument("--timeout", type=float, default=300)
    build = sub.add_parser("artifacts", help="binaries, images and packages for a node, as JSON")
    build.add_argument("--platform", nargs="+", required=True, metavar="ARCH/RELEASE",
                       help="one result per architecture and OS release (amd64/debian-12 ...)")
    build.add_argument("--kubernetes", required=True, metavar="MINOR",
                       help="the fleet's Kubernetes minor release (edge_kubernetes_version), e.g. 1.34")
    build.add_argument("--binaries", nargs="*", default=[])
    build.add_argument("--cni-plugins", nargs="*", default=[])
    build.add_argument("--images", nargs="*", default=[])
    build.add_argument("--packages", nargs="*", default=[])
    network = sub.add_parser("pod-network", help="apply the pod network (flannel) through the API")
    network.add_argument("--kubeconfig", type=Path, required=True)
    network.add_argument("--image", required=True, help="flanneld's image reference")
    network.add_argument("--vars", type=json.loads, default={}, help="JSON object of role variables")
    network.add_argument("--check", action="store_true", help="report, change nothing")
    status = sub.add_parser("node-status", help="a node's registration, readiness and labels")
    status.add_argument("--kubeconfig", type=Path, required=True)
    status.add_argument("--node", required=True)
    label = sub.add_parser("label", help="set node labels through the API (only the missing ones)")
    label.add_argument("--kubeconfig", type=Path, required=True)
    label.add_argument("--node", required=True)
    label.add_argument("--labels", type=json.loads, required=True, help="a JSON object")
    label.add_argument("--timeout", type=float, default=300)
    forget = sub.add_parser("forget-node-password", help="delete k3s's node-password secret of a node")
    forget.add_argument("--kubeconfig", type=Path, required=True)
    forget.add_argument("--node", required=True)
    binary = sub.add_parser("k3s-binary", help="fetch and verify the pinned k3s binary, as JSON")
    binary.add_argument("--arch", nargs="+", required=True, help="one result per architecture")
    binary.add_argument("--source", default=UPSTREAM)
    removal = sub.add_parser("drain-node", help="cordon a node, evict its pods through the Eviction API")
    removal.add_argument("--kubeconfig", type=Path, required=True)
    removal.add_argument("--node", required=True)
    removal.add_argument("--timeout", type=float, default=300)
    removal.add_argument("--delete-bare-pods", action="store_true",
                         help="evict pods no controller would start elsewhere too")
    deletion = sub.add_parser("delete-node", help="delete a Node (its host reset first)")
    deletion.add_argument("--kubeconfig", type=Path, required=True)
    deletion.add_argument("--node", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "token":
            _print(join_token(args.kubeconfig, args.ttl, args.given, args.signed_within).as_dict())
        elif args.command == "artifacts":
            _print({platform: artifacts(*_arch_release(platform), kubernetes=args.kubernetes,
                                        binaries=args.binaries, cni_plugins=args.cni_plugins,
                                        images=args.images, packages=args.packages)
                    for platform in args.platform})
        elif args.command == "pod-network":
            _print({"changed": pod_network.apply(args.kubeconfig, args.image, args.vars, dry_run=args.check)})
        elif args.command == "wait-ready":
            _print(wait_node_ready(args.kubeconfig, args.node, args.timeout))
        elif args.command == "label":
            _print(label_node(args.kubeconfig, args.node, args.labels, args.timeout))
        elif args.command == "k3s-binary":
            _print({arch: k3s_binary(arch, args.source) for arch in args.arch})
        elif args.command == "drain-node":
            _print(node_removal.evacuate(args.kubeconfig, args.node, args.timeout,
                                         delete_bare_pods=args.delete_bare_pods))
        elif args.command == "delete-node":
            _print(node_removal.delete_node(args.kubeconfig, args.node))
        elif args.command == "forget-node-password":
            _print(forget_node_password(args.kubeconfig, args.node))
        else:
            _print(node_status(args.kubeconfig, args.node))
    except Exception as exc:  # builders, fetcher and API name their step; no traceback in Ansible's log
        print(f"edge-provision cluster {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
