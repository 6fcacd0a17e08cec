"""The ``edge-provision`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from edge_provision import inventory

DEFAULT_LAB_INVENTORY = Path("inventories/lab")


# `check` exits 0 for a valid fleet, CHECK_INVALID for one with problems (nothing touched).
CHECK_INVALID = 2


def _check(args: argparse.Namespace) -> int:
    try:
        fleet = inventory.load(args.inventory)
    except inventory.InventoryError as exc:
        if args.json:
            print(json.dumps({"valid": False, "source": str(exc.source), "problems": exc.problems}))
        else:
            print(exc.render(), file=sys.stderr)
        return CHECK_INVALID
    if args.json:
        hosts = [{"name": h.name, "groups": list(h.groups)} for h in fleet.hosts]
        print(json.dumps({"valid": True, "source": str(fleet.source), "problems": [], "hosts": hosts}))
        return 0
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
            arches = args.arch.split(",") if args.arch else None
            memory = args.memory.split(",") if args.memory else None
            releases = args.os.split(",") if args.os else None
            hosts = lab.up(args.hosts, arches, memory, releases)
            for h in hosts:
                node = f", node {h.node_ip}" if h.node_ip else ""
                where = f"{h.address}:{h.port}"
                print(f"{h.name:10} {h.group:14} {where} ({h.backend}, {h.release}, {h.arch}{node})")
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


def _artifacts_fetch(args: argparse.Namespace) -> int:
    from edge_provision.artifacts import fetch

    try:
        downloads = fetch.load_downloads(Path(args.versions), arch=args.arch)
        problem = fetch.source_problem(args.source)
        if problem:
            raise fetch.ArtifactFetchError(f"--source {problem}")
    except (OSError, fetch.ArtifactFetchError) as exc:
        print(f"artifacts fetch: {exc}", file=sys.stderr)
        return 2
    dest = Path(args.dest)
    failed = 0
    for result in fetch.fetch_bundle(downloads, args.source, dest):
        if result.error is None:
            print(f"ok      {result.download.label:36} {result.path}")
        else:
            failed += 1
            print(f"FAILED  {result.error}", file=sys.stderr)
    print(f"{len(downloads) - failed} of {len(downloads)} artifacts fetched and verified into {dest}"
          f" (manifest: {dest / fetch.MANIFEST})")
    return 1 if failed else 0


def _artifacts(args: argparse.Namespace) -> int:
    from edge_provision import artifacts

    if args.artifacts_command == "fetch":
        return _artifacts_fetch(args)
    if args.artifacts_command == "build":
        from edge_provision.artifacts.builders import crun, images
        from edge_provision.artifacts.builders import kubernetes_modules as modules

        builders: dict[str, Callable[[], Path]] = {
            "crun (Wasm)": lambda: crun.build_crun(args.arch),
            "wasi-demo image": images.build_wasi_demo_image,
            "busybox image": lambda: images.build_busybox_image(args.arch),
            "pause image": lambda: images.build_pause_image(args.arch),
            # Kubernetes, crictl, etcd, CoreDNS, flannel from their Go modules, then their images.
            **{name: partial(modules.build_component, name, args.arch)
               for name in modules.CLUSTER_COMPONENTS},
            **{f"{name} image": partial(images.build_cluster_image, name, args.arch)
               for name in images.CLUSTER_IMAGES},
        }
        for what, build in builders.items():
            try:
                path = build()
            except (artifacts.ArtifactBuildError, images.ImageBuildError) as exc:
                print(f"artifacts build: {what}: {exc}", file=sys.stderr)
                return 1
            print(f"{what:16} {path}")
        return 0
    from edge_provision.artifacts import fetch

    rows = artifacts.cached_builds()
    if not rows:
        print(f"no builds in {artifacts.ARTIFACTS_DIR}")
    for name, path, size in rows:
        print(f"{name:16} {size / 1e6:8.1f} MB  {path}")
    dest = Path(args.dest)
    status = fetch.bundle_status(fetch.load_downloads(Path(args.versions), arch=args.arch), dest)
    print(f"downloads in {dest}:")
    for download, state in status:
        print(f"  {download.label:36} {download.file:48} {state}")
    return 0 if all(state in ("verified", "missing") for _, state in status) else 1


# `status` exits 0 when every node is Ready, STATUS_NOT_READY when one is not, 1 when the API
# cannot be asked.
STATUS_NOT_READY = 3


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("edge-provision")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown (not installed)"


def _status(args: argparse.Namespace) -> int:
    from edge_provision import status
    from edge_provision.stages.cluster import common

    kubeconfig = Path(args.inventory) / common.KUBECONFIG_FILE
    if Path(args.inventory).name == "hosts.yml":
        kubeconfig = Path(args.inventory).parent / common.KUBECONFIG_FILE
    try:
        rows = status.fleet_status(kubeconfig, retries=0)  # what the API answers now, at once
    except Exception as exc:  # no kubeconfig yet, API unreachable: say so, no traceback
        print(f"status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2) if args.json else status.render(rows))
    not_ready = [r["name"] for r in rows if not r["ready"]]
    if not_ready:  # a script or a monitor acts on the exit status
        print(f"status: not Ready: {', '.join(not_ready)}", file=sys.stderr)
        return STATUS_NOT_READY
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-provision", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser(
        "check", help="validate a fleet inventory; changes nothing",
        epilog=f"exit status: 0 the fleet is valid, {CHECK_INVALID} it is not (every problem listed, one"
               " line each)",
    )
    check.add_argument("-i", "--inventory", required=True, help="fleet directory or its hosts.yml")
    check.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    check.set_defaults(func=_check)

    state = sub.add_parser("status", help="the fleet's nodes: Ready, versions, labels, workloads")
    state.add_argument("-i", "--inventory", default=str(DEFAULT_LAB_INVENTORY), help="fleet directory")
    state.add_argument("--json", action="store_true")
    state.set_defaults(func=_status)

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
            p.add_argument("--arch", metavar="ARCH[,ARCH...]",
                           help="vm backend: one architecture for all hosts or one per host, "
                                "e.g. amd64,arm64 (default: this machine's)")
            p.add_argument("--os", metavar="RELEASE[,RELEASE...]",
                           help="Debian release of the hosts, one for all or one per host: "
                                "debian-12 or debian-13 (default: debian-12)")
            p.add_argument("--memory", metavar="MIB[,MIB...]",
                           help="vm backend: memory in MiB, one size for all hosts or one per host "
                                "(an empty one is the default), e.g. 2048,1024 "
                                "(default: EDGE_PROVISION_VM_MEMORY_MB or 1024)")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=_lab)

    arts = sub.add_parser("artifacts", help="pinned, checksummed artifacts the roles install")
    arts_sub = arts.add_subparsers(dest="artifacts_command", required=True)
    build = arts_sub.add_parser("build", help="build what no reachable registry carries (lab)")
    build.add_argument("--arch", choices=inventory.ARCHITECTURES, default="amd64")
    from edge_provision.artifacts import fetch

    fetch_cmd = arts_sub.add_parser(
        "fetch", help="download and verify every pinned download into a bundle directory (offline sites)")
    listing = arts_sub.add_parser("list", help="show the builds in the cache and the downloads in a bundle")
    for p in (fetch_cmd, listing):
        p.add_argument("--arch", choices=inventory.ARCHITECTURES, default=None,
                       help="only this architecture's files (and the source archives); default: all")
        p.add_argument("--dest", default=str(fetch.DOWNLOADS_DIR),
                       help="bundle directory, itself usable as edge_artifact_source (default: %(default)s)")
        p.add_argument("--versions", default=str(fetch.VERSIONS_FILE),
                       help="pins file (default: %(default)s)")
    fetch_cmd.add_argument("--source", default=fetch.UPSTREAM,
                           help="where from: upstream (versions.yml URLs), a directory or an http(s) "
                                "mirror base URL (default: %(default)s)")
    arts.set_defaults(func=_artifacts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
