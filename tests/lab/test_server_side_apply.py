"""kube_api.apply against a real kube-apiserver on loopback (tests/lab/apiserver.py): what a dry
run says would change is what the real apply then changes, including objects in a namespace the
same manifests create (pyinfra asks that dry run while it decides whether to apply the pod
network on a new control plane, where kube-flannel does not exist yet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from edge_provision.stages.cluster import kube_api
from tests.lab.apiserver import LocalApi, local_api

NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "edge-apply"}}
CONFIG = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "edge-apply"},
          "data": {"backend": "vxlan"}}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    with local_api(tmp_path_factory.mktemp("api")) as running:
        yield running


def test_a_dry_run_counts_objects_of_a_namespace_it_would_create_and_creates_nothing(
    api: LocalApi, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(api.kubeconfig)
    core = client.CoreV1Api(kube_api.api_client(kubeconfig))

    assert kube_api.apply(kubeconfig, [NAMESPACE, CONFIG], dry_run=True) == ["Namespace/edge-apply",
                                                                             "ConfigMap/settings"]
    assert "edge-apply" not in [n.metadata.name for n in core.list_namespace().items]

    assert kube_api.apply(kubeconfig, [NAMESPACE, CONFIG]) == ["Namespace/edge-apply", "ConfigMap/settings"]
    assert core.read_namespaced_config_map("settings", "edge-apply").data == {"backend": "vxlan"}
    assert kube_api.apply(kubeconfig, [NAMESPACE, CONFIG], dry_run=True) == []

    host_gw = {**CONFIG, "data": {"backend": "host-gw"}}
    assert kube_api.apply(kubeconfig, [NAMESPACE, host_gw], dry_run=True) == ["ConfigMap/settings"]
    assert core.read_namespaced_config_map("settings", "edge-apply").data == {"backend": "vxlan"}
