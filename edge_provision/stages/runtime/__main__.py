"""``python -m edge_provision.stages.runtime``: the controller-side artifacts of the runtime stage
as JSON (debs, images, crun, release files), for the Ansible roles containerd and wasm_runtime
(delegated to the controller). pyinfra calls edge_provision.stages.runtime.controller directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from edge_provision.artifacts.debian import CONTROLLER_RELEASE, DebianError
from edge_provision.artifacts.fetch import UPSTREAM, ArtifactFetchError
from edge_provision.stages.runtime.containerd_config import (
    ContainerdConfigError,
)
from edge_provision.stages.runtime.controller import (
    IMAGE_NAMES,
    RuntimeStageError,
    debs,
    engine_downloads,
    images,
    release_files,
    release_plan,
    sandbox_image,
    wasm_crun,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_provision.stages.runtime",
                                     description="Controller-side artifacts of the runtime stage, as JSON.")
    parser.add_argument("--arch", required=True)
    parser.add_argument("--os", default=CONTROLLER_RELEASE, metavar="RELEASE",
                        help="the host's OS release (debian-12, debian-13): where --packages come from")
    parser.add_argument("--packages", nargs="*", default=[], help="Debian packages (with their closure)")
    parser.add_argument("--images", nargs="*", default=[], help=f"images: {', '.join(IMAGE_NAMES)}")
    parser.add_argument("--engine", help="Wasm engine of crun to build or find")
    parser.add_argument("--engine-downloads", metavar="ENGINE",
                        help="fetch and verify what ENGINE's crun build needs, build nothing")
    parser.add_argument("--source", default=UPSTREAM, help="artifact source (edge_artifact_source)")
    parser.add_argument("--release", nargs=3, metavar=("STAGING_DIR", "PREFIX", "STAMP_FILE"),
                        help="containerd and runc release files, and the node commands installing them")
    parser.add_argument("--release-build", action="store_true",
                        help="with --release: build the release files from their Go modules")
    args = parser.parse_args(argv)
    try:
        out: dict[str, Any] = {}
        if args.engine_downloads:
            out["engine_downloads"] = engine_downloads(args.engine_downloads, args.arch, args.source)
        if args.release:
            files = release_files(args.arch, args.source, build=args.release_build)
            staging, prefix, stamp_file = args.release
            plan = release_plan(files, staging_dir=staging, prefix=prefix, stamp_file=stamp_file)
            out["release"] = {"files": files, **plan}
        out["debs"] = debs(args.packages, args.arch, args.os) if args.packages else []
        out["images"] = images(args.images, args.arch)
        if args.engine:
            out["crun"] = wasm_crun(args.arch, args.engine, args.source)
        out["pause_reference"] = sandbox_image("", args.arch)
    except (RuntimeStageError, ContainerdConfigError, ArtifactFetchError, DebianError) as exc:
        print(f"runtime: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a builder's own error class, with its step and output tail
        print(f"runtime: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
