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


def kubeadm_init(config_file: str, skip_phases: Sequence[str]) -> list[str]:
    """``kubeadm init``'s argv (the token it creates is not printed). The directory of
    :func:`probe_patches` is named in the InitConfiguration: kubeadm refuses ``--patches``
    beside ``--config``."""
    argv = ["kubeadm", "init", f"--config={config_file}", "--skip-token-print"]
    return [*argv, f"--skip-phases={','.join(skip_phases)}"] if skip_phases else argv


def cert_sans(node_ip: str, address: str, name: str, api_server: str = "") -> list[str]:
    """The API server certificate's names: the node's IP, its SSH address and inventory name,
    and the host of ``api_server`` (control_plane_kubeadm_api_server) when one is given."""
    from urllib.parse import urlsplit

    extra = [urlsplit(api_server).hostname or ""] if api_server else []
    return list(dict.fromkeys(str(n) for n in [node_ip, address, name, *extra] if n))


def kubeadm_join(config_file: str, skip_phases: Sequence[str]) -> list[str]:
    """``kubeadm join``'s argv: everything else (endpoint, token, CA hash, node) is in the 0600
    JoinConfiguration ``config_file``, so no secret is on the command line."""
    argv = ["kubeadm", "join", f"--config={config_file}"]
    return [*argv, f"--skip-phases={','.join(skip_phases)}"] if skip_phases else argv


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


def _binaries(names: Sequence[str], arch: str, minor: str, what: str) -> list[dict[str, str]]:
    """``names`` as built from their Go modules for ``arch`` (each by the component that holds
    it: kubernetes-modules, crictl, flannel-cni, ...): name, path and sha256."""
    from edge_provision.artifacts.builders import kubernetes_modules as modules

    holder = {binary: component for component in modules.all_components()
              for binary in modules.pinned_component(component, minor=minor).binaries}
    unknown = sorted(set(names) - set(holder))
    if unknown:
        raise ClusterError(f"no such {what}: {', '.join(unknown)} (built: {', '.join(sorted(holder))})")
    entries = []
    for name in names:
        directory = modules.build_component(holder[name], arch, minor=minor)
        sha256 = json.loads((directory / "manifest.json").read_text())["files"][name]["sha256"]
        entries.append({"name": name, "path": str(directory / name), "sha256": sha256})
    return entries


def artifacts(
    arch: str,
    release: str,
    *,
    kubernetes: str,
    binaries: Sequence[str] = (),
    cni_plugins: Sequence[str] = (),
    images: Sequence[str] = (),
    packages: Sequence[str] = (),
) -> dict[str, Any]:
    """What a kubeadm node of ``arch`` running Kubernetes ``kubernetes`` (a minor, e.g. ``1.34``)
    gets from the controller, each built once and cached: ``binaries`` (kubelet, kubeadm, kubectl,
    crictl, ...), ``cni_plugins`` (flannel), ``images`` (by component name: kube-apiserver, etcd,
    kube-proxy, coredns, flannel, ...; ``references`` names each as kubeadm and the manifests do)
    and the .deb files of ``packages`` for hosts of ``release`` with their dependency closure
    (empty: the node's apt)."""
    from edge_provision.artifacts.builders import images as image_builders
    from edge_provision.artifacts.builders.kubernetes_modules import load_pins
    from edge_provision.stages.runtime import controller as runtime_controller

    pins = load_pins(minor=kubernetes)
    tarballs = {name: image_builders.build_cluster_image(name, arch, minor=kubernetes) for name in images}
    return {
        "version": pins.version,
        "binaries": _binaries(binaries, arch, kubernetes, "Kubernetes binary"),
        "cni_plugins": _binaries(cni_plugins, arch, kubernetes, "CNI plugin"),
        "images": [image_builders.image_entry(name, tarball) for name, tarball in tarballs.items()],
        "references": image_builders.references(minor=kubernetes),
        "debs": runtime_controller.debs(packages, arch, release) if packages else [],
    }
