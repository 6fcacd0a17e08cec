"""The ``edge-provision`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_provision import inventory

DEFAULT_LAB_INVENTORY = Path("inventories/lab")


def _check(args: argparse.Namespace) -> int:
    try:
        fleet = inventory.load(args.inventory)
    except inventory.InventoryError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    groups = "; ".join(
        f"{g}: {', '.join(h.name for h in fleet.group(g)) or '-'}" for g in inventory.NODE_GROUPS
    )
    print(f"{fleet.source}: OK, {len(fleet.hosts)} host(s) ({groups})")
    return 0


def _lab(args: argparse.Namespace) -> int:
    from edge_provision.lab import Lab, LabError

    lab = Lab(Path(args.inventory_dir), backend=args.backend)
    try:
        if args.lab_command == "up":
            hosts = lab.up(args.hosts)
            for h in hosts:
                print(f"{h.name:10} {h.group:14} {h.address}:{h.port} ({h.backend}, {h.arch})")
            print(f"inventory: {Path(args.inventory_dir) / inventory.INVENTORY_FILE}")
        elif args.lab_command == "down":
            lab.down()
            print("lab removed")
        else:
            rows = lab.status()
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print("no lab hosts")
            for row in [] if args.json else rows:
                print("  ".join(f"{k}={v}" for k, v in row.items()))
    except LabError as exc:
        print(f"lab {args.lab_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _artifacts(args: argparse.Namespace) -> int:
    from edge_provision import artifacts

    if args.artifacts_command == "build":
        from edge_provision.artifacts.builders import crun, images, kubernetes

        builders: dict[str, Callable[[], Path]] = {
            "crun (Wasm)": lambda: crun.build_crun(args.arch),
            "wasi-demo image": images.build_wasi_demo_image,
            "busybox image": images.build_busybox_image,
            "pause image": lambda: images.build_pause_image(args.arch),
            "kubernetes": lambda: kubernetes.build_kubernetes(args.arch),
        }
        for what, build in builders.items():
            try:
                path = build()
            except (crun.ArtifactBuildError, images.ImageBuildError) as exc:
                print(f"artifacts build: {what}: {exc}", file=sys.stderr)
                return 1
            print(f"{what:16} {path}")
        return 0
    rows = artifacts.cached_builds()
    if not rows:
        print(f"no artifacts in {artifacts.ARTIFACTS_DIR}")
    for name, path, size in rows:
        print(f"{name:16} {size / 1e6:8.1f} MB  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-provision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a fleet inventory; changes nothing")
    check.add_argument("-i", "--inventory", required=True, help="fleet directory or its hosts.yml")
    check.set_defaults(func=_check)

    lab = sub.add_parser("lab", help="disposable local hosts to provision")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    for name, text in (
        ("up", "create (or complete) the lab and write its inventory"),
        ("down", "remove every host, network, volume and file of the lab"),
        ("status", "show the lab hosts"),
    ):
        p = lab_sub.add_parser(name, help=text)
        p.add_argument("--inventory-dir", default=str(DEFAULT_LAB_INVENTORY),
                       help="where the lab inventory lives (default: %(default)s)")
        p.add_argument("--backend", choices=("container", "vm"), default="container")
        if name == "up":
            p.add_argument("--hosts", type=int, default=3, help="number of hosts (default: %(default)s)")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=_lab)

    arts = sub.add_parser("artifacts", help="pinned, checksummed artifacts the roles install")
    arts_sub = arts.add_subparsers(dest="artifacts_command", required=True)
    build = arts_sub.add_parser("build", help="build what no reachable registry carries (lab)")
    build.add_argument("--arch", choices=inventory.ARCHITECTURES, default="amd64")
    arts_sub.add_parser("list", help="show the artifacts present in the cache")
    arts.set_defaults(func=_artifacts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
