"""kubeadm: every ``kubeadm`` command line both engines run (init, join, reset), the probe patches
of the control-plane static pods, and the controller-side artifacts of a kubeadm node (binaries,
control-plane images, .deb files).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from edge_provision.stages.cluster.common import ClusterError

PROBES = ("startup", "liveness")


def kubeadm_init(config_file: str, skip_phases: Sequence[str], patches_dir: str = "") -> list[str]:
    """``kubeadm init``'s argv (the token it creates is not printed); ``patches_dir``: the
    directory of :func:`probe_patches` (kubeadm 1.20 names the flag ``--experimental-patches``)."""
    argv = ["kubeadm", "init", f"--config={config_file}", f"--skip-phases={','.join(skip_phases)}",
            "--skip-token-print"]
    return [*argv, f"--experimental-patches={patches_dir}"] if patches_dir else argv


def kubeadm_join(config_file: str, skip_phases: Sequence[str]) -> list[str]:
    """``kubeadm join``'s argv: everything else (endpoint, token, CA hash, node) is in the 0600
    JoinConfiguration ``config_file``, so no secret is on the command line."""
    return ["kubeadm", "join", f"--config={config_file}", f"--skip-phases={','.join(skip_phases)}"]


def kubeadm_reset(kubeadm: str = "kubeadm") -> list[str]:
    """What undoes a failed ``kubeadm init`` or ``join``, so a later run starts clean."""
    return [kubeadm, "reset", "--force"]


def probe_patches(thresholds: Mapping[str, Any], components: Sequence[str]) -> dict[str, str]:
    """kubeadm patch files (name -> text) that set the ``failureThreshold`` of the ``startup``
    and ``liveness`` probes in ``thresholds`` on the static pods ``components``; none when
    ``thresholds`` is empty (kubeadm's own: startup 24, liveness 8, each probe every 10 s)."""
    field = "control_plane_kubeadm_probe_failure_thresholds"
    unknown = sorted(set(thresholds) - set(PROBES))
    if unknown:
        raise ClusterError(f"{field}: unknown probe {', '.join(unknown)} (choose from {', '.join(PROBES)})")
    for probe, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClusterError(f"{field}.{probe}: {value!r} is not a positive whole number")
    if not thresholds:
        return {}
    # Plain int and str: Ansible passes its own subclasses, which yaml.safe_dump refuses.
    probes = {f"{p}Probe": {"failureThreshold": int(thresholds[p])} for p in PROBES if p in thresholds}
    return {
        f"{name}+strategic.yaml": yaml.safe_dump({"spec": {"containers": [{"name": str(name), **probes}]}})
        for name in components
    }


def artifacts(
    arch: str, release: str, *, binaries: Sequence[str], images: Sequence[str], packages: Sequence[str]
) -> dict[str, Any]:
    """Kubernetes binaries and control-plane images for ``arch`` (built once, cached) and the
    .deb files of ``packages`` for hosts of ``release`` with their dependency closure (empty:
    the node's apt)."""
    from edge_provision.artifacts.builders import images as image_builders
    from edge_provision.artifacts.builders.kubernetes import build_kubernetes
    from edge_provision.stages.runtime import controller as runtime_controller

    build = build_kubernetes(arch)
    manifest = json.loads((build / "manifest.json").read_text())
    unknown = sorted(set(binaries) - set(manifest["files"]))
    if unknown:
        raise ClusterError(
            f"no such Kubernetes binary: {', '.join(unknown)} (built: {', '.join(manifest['files'])})"
        )
    return {
        "version": manifest["kubernetes"]["version"],
        "binaries": [
            {"name": name, "path": str(build / name), "sha256": manifest["files"][name]["sha256"]}
            for name in binaries
        ],
        "images": [
            image_builders.image_entry(name, image_builders.build_control_plane_image(name, arch))
            for name in images
        ],
        "debs": runtime_controller.debs(packages, arch, release) if packages else [],
    }
