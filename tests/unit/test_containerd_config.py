"""containerd config with a separate Wasm handler, both schemas, from containerd's own defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

from edge_provision.stages.runtime.containerd_config import (
    SCHEMAS,
    ContainerdConfigError,
    runtime_handler,
    schema_for,
    with_wasm_handler,
)

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT_16 = (FIXTURES / "containerd-1.6.20-default.toml").read_text()
SETTINGS = dict(
    handler="crun-wasm", binary="/usr/local/bin/crun-wasm", systemd_cgroup=True,
    sandbox_image="edge-provision.local/pause:3.6", restrict_oom_score_adj=True,
)


@pytest.mark.parametrize(("version", "schema"), [("1.6.20~ds1-1+deb12u3", 2), ("1.7.24", 2), ("2.0.2", 3), ("v2.1.0", 3)])
def test_schema_follows_installed_version(version: str, schema: int) -> None:
    assert schema_for(version).version == schema


def test_v2_handler_added_beside_runc() -> None:
    text = with_wasm_handler(DEFAULT_16, schema=SCHEMAS[2], **SETTINGS)
    doc = tomlkit.parse(text).unwrap()
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    wasm = cri["containerd"]["runtimes"]["crun-wasm"]
    assert wasm["runtime_type"] == "io.containerd.runc.v2"
    assert wasm["options"] == {"BinaryName": "/usr/local/bin/crun-wasm", "SystemdCgroup": True}
    assert set(wasm["pod_annotations"]) >= {"module.wasm.image/variant", "run.oci.handler"}
    assert set(wasm["container_annotations"]) >= {"module.wasm.image/variant", "run.oci.handler"}
    assert cri["sandbox_image"] == "edge-provision.local/pause:3.6"
    assert cri["restrict_oom_score_adj"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["BinaryName"] == ""  # runc's table is kept, only SystemdCgroup set
    assert runc["options"]["SystemdCgroup"] is True
    assert "io.containerd.cri.v1.runtime" not in doc["plugins"]


def test_v3_handler_uses_the_2x_paths() -> None:
    text = with_wasm_handler("version = 3\n", schema=SCHEMAS[3], **SETTINGS)
    doc = tomlkit.parse(text).unwrap()
    assert doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["crun-wasm"]["options"]["BinaryName"] == "/usr/local/bin/crun-wasm"
    assert doc["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == "edge-provision.local/pause:3.6"
    assert doc["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"] is True
    assert "io.containerd.grpc.v1.cri" not in doc["plugins"]


def test_idempotent_and_keeps_everything_else() -> None:
    once = with_wasm_handler(DEFAULT_16, schema=SCHEMAS[2], **SETTINGS)
    assert with_wasm_handler(once, schema=SCHEMAS[2], **SETTINGS) == once
    before = tomlkit.parse(DEFAULT_16).unwrap()
    after = tomlkit.parse(once).unwrap()
    assert after["plugins"]["io.containerd.grpc.v1.cri"]["cni"] == before["plugins"]["io.containerd.grpc.v1.cri"]["cni"]
    assert after["grpc"] == before["grpc"]


def test_annotations_already_present_are_not_repeated() -> None:
    text = with_wasm_handler(DEFAULT_16, schema=SCHEMAS[2], annotations=["run.oci.handler", "run.oci.handler"][:1], **SETTINGS)
    again = with_wasm_handler(text, schema=SCHEMAS[2], **SETTINGS)
    assert runtime_handler(again, SCHEMAS[2], "crun-wasm")["pod_annotations"] == ["run.oci.handler", "module.wasm.image/variant"]


def test_empty_config_gets_the_version_header() -> None:
    text = with_wasm_handler("", schema=SCHEMAS[2], **SETTINGS)
    assert text.startswith("version = 2")


def test_a_config_of_the_other_schema_is_refused() -> None:
    with pytest.raises(ContainerdConfigError, match="version 2, this containerd reads version 3"):
        with_wasm_handler(DEFAULT_16, schema=SCHEMAS[3], **SETTINGS)


def test_invalid_toml_is_refused() -> None:
    with pytest.raises(ContainerdConfigError, match="not valid TOML"):
        with_wasm_handler("version = = 2", schema=SCHEMAS[2], **SETTINGS)


@pytest.mark.parametrize(("schema", "path"), [
    (2, ("plugins", "io.containerd.grpc.v1.cri", "cni", "bin_dir")),
    (3, ("plugins", "io.containerd.cri.v1.runtime", "cni", "bin_dir")),
])
def test_cni_bin_dir_is_set_where_each_schema_reads_it(schema: int, path: tuple[str, ...]) -> None:
    current = DEFAULT_16 if schema == 2 else "version = 3\n"
    doc = tomlkit.parse(with_wasm_handler(current, schema=SCHEMAS[schema], cni_bin_dir="/opt/cni/bin",
                                          **SETTINGS)).unwrap()
    for key in path:
        doc = doc[key]
    assert doc == "/opt/cni/bin"
    kept = tomlkit.parse(with_wasm_handler(DEFAULT_16, schema=SCHEMAS[2], **SETTINGS)).unwrap()
    assert kept["plugins"]["io.containerd.grpc.v1.cri"]["cni"] == tomlkit.parse(DEFAULT_16).unwrap()["plugins"][
        "io.containerd.grpc.v1.cri"]["cni"]  # not given: untouched


def test_the_cluster_stage_installs_cni_plugins_where_containerd_looks() -> None:
    from edge_provision.role_files import role_defaults

    assert (role_defaults("kubernetes_node")["kubernetes_node_cni_bin_dir"]
            == role_defaults("containerd")["containerd_cni_bin_dir"])
