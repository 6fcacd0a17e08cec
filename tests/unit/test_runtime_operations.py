"""The runtime stage's shared logic (both engines): config computation, what a node lacks,
role defaults agreeing with each other and with their argument specs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import tomlkit

from edge_provision.stages.runtime import controller as runtime_controller
from edge_provision.stages.runtime.containerd_config import ContainerdConfigError, runtime_handler, schema_for

DEBIAN_CONFIG = """\
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""
SETTINGS = {
    "version": "1.6.20~ds1",
    "handler": "crun-wasm",
    "binary": "/usr/local/bin/crun-wasm",
    "systemd_cgroup": "auto",
    "sandbox_image": "edge-provision.local/pause:3.4",
    "restrict_oom_score_adj": "auto",
    "systemd_pid1": True,
    "cap_sys_resource": False,
}


def cri(text: str) -> dict:  # type: ignore[type-arg]
    return tomlkit.parse(text).unwrap()["plugins"]["io.containerd.grpc.v1.cri"]  # type: ignore[no-any-return]


def test_debian_config_gets_the_handler_and_keeps_its_settings() -> None:
    new = runtime_controller.containerd_config(DEBIAN_CONFIG, **SETTINGS)
    handler = runtime_handler(new, schema_for("1.6.20"), "crun-wasm")
    assert handler["options"] == {"BinaryName": "/usr/local/bin/crun-wasm", "SystemdCgroup": True}
    assert cri(new)["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/etc/cni/net.d"}
    assert cri(new)["sandbox_image"] == "edge-provision.local/pause:3.4"
    assert cri(new)["restrict_oom_score_adj"] is True


def test_default_runtime_table_added_when_runtimes_are_defined() -> None:
    """containerd replaces (not merges) its runtimes map with the config's: without a runc
    table the CRI plugin would not start for want of its default runtime."""
    runc = cri(runtime_controller.containerd_config(DEBIAN_CONFIG, **SETTINGS))["containerd"]["runtimes"]["runc"]
    assert runc == {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": True}}


def test_existing_runc_table_is_kept() -> None:
    current = DEBIAN_CONFIG + (
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
        '  runtime_type = "io.containerd.runc.v2"\n  privileged_without_host_devices = true\n'
    )
    runc = cri(runtime_controller.containerd_config(current, **SETTINGS))["containerd"]["runtimes"]["runc"]
    assert runc["privileged_without_host_devices"] is True
    assert runc["options"]["SystemdCgroup"] is True


def test_a_config_with_the_handler_is_a_fixpoint() -> None:
    once = runtime_controller.containerd_config(DEBIAN_CONFIG, **SETTINGS)
    assert runtime_controller.containerd_config(once, **SETTINGS) == once
    assert runtime_controller.containerd_config(runtime_controller.containerd_config(once, **SETTINGS), **SETTINGS) == once


def test_empty_config_starts_from_nothing() -> None:
    new = runtime_controller.containerd_config("", **SETTINGS)
    assert runtime_handler(new, schema_for("1.6.20"), "crun-wasm")["options"]["BinaryName"]


def test_containerd_default_config_fixture_is_a_fixpoint() -> None:
    default = (Path(__file__).parent / "fixtures" / "containerd-1.6.20-default.toml").read_text()
    once = runtime_controller.containerd_config(default, **SETTINGS)
    assert runtime_controller.containerd_config(once, **SETTINGS) == once
    assert cri(once)["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True


def test_containerd_2_uses_schema_3() -> None:
    new = runtime_controller.containerd_config("", **{**SETTINGS, "version": "2.0.2"})
    assert tomlkit.parse(new)["version"] == 3
    assert runtime_handler(new, schema_for("2.0.2"), "crun-wasm")


@pytest.mark.parametrize(("setting", "detected", "expected"), [
    ("auto", True, True), ("auto", False, False), (None, True, True), ("AUTO", False, False),
    (True, False, True), (False, True, False),
])
def test_auto_settings(setting: object, detected: bool, expected: bool) -> None:
    assert runtime_controller.resolve_auto(setting, detected) is expected


def test_auto_follows_the_node() -> None:
    no_systemd = runtime_controller.containerd_config(DEBIAN_CONFIG, **{**SETTINGS, "systemd_pid1": False, "cap_sys_resource": True})
    assert runtime_handler(no_systemd, schema_for("1.6"), "crun-wasm")["options"]["SystemdCgroup"] is False
    assert cri(no_systemd)["restrict_oom_score_adj"] is False


def test_wrong_types_pass_through_to_containerd() -> None:
    """containerd validates the file before it replaces the running one; the model does not
    second-guess a wrongly typed override (containerd's error names the key)."""
    assert cri(runtime_controller.containerd_config(DEBIAN_CONFIG, **{**SETTINGS, "sandbox_image": 5}))["sandbox_image"] == 5


def test_invalid_current_config_is_reported() -> None:
    with pytest.raises(ContainerdConfigError, match="not valid TOML"):
        runtime_controller.containerd_config("version = = 2", **SETTINGS)


@pytest.mark.parametrize(("capbnd", "lacks"), [("0000003ffeffffff", True), ("000001ffffffffff", False)])
def test_cap_sys_resource(capbnd: str, lacks: bool) -> None:
    assert runtime_controller.lacks_cap_sys_resource(capbnd) is lacks


def test_debs_missing() -> None:
    wanted = [{"package": p} for p in ("containerd", "runc", "libc6", "libyajl2")]
    dpkg = "libc6 installed\nrunc config-files\nlibyajl2:amd64 installed\n"
    assert [d["package"] for d in runtime_controller.debs_missing(wanted, dpkg)] == ["containerd", "runc"]


def _fake_debs(directory: Path) -> list[dict[str, str]]:
    debs = []
    for name, body in (("runc_1.1.5+ds1-1+deb12u1_amd64.deb", b"runc"), ("conntrack_1%3a1.4.7-1+b2_amd64.deb", b"ct")):
        (directory / name).write_bytes(body * 1000)
        debs.append({"package": name.split("_")[0], "file": name, "path": str(directory / name),
                     "sha256": hashlib.sha256(body * 1000).hexdigest()})
    return debs


def test_debs_plan_ships_one_archive_that_the_node_commands_unpack_and_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge_provision.artifacts.ARTIFACTS_DIR", tmp_path / "artifacts")
    (tmp_path / "cache").mkdir()
    debs = _fake_debs(tmp_path / "cache")
    staging = tmp_path / "node staging"  # a space: the commands quote their paths
    plan = runtime_controller.debs_plan(debs, staging_dir=str(staging))
    with tarfile.open(plan["archive"]) as tar:
        members = tar.getmembers()
    assert [(m.name, m.uid, m.mode) for m in members] == [(d["file"], 0, 0o644) for d in debs]
    assert plan["file"] == Path(plan["archive"]).name
    unpack, recover, install, remove = plan["commands"]
    assert recover.startswith('if [ -n "$(dpkg --audit)" ]; then ') and "dpkg --configure -a" in recover
    assert install.startswith("DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "
                              "--no-install-recommends ")
    staging.mkdir()
    shutil.copy(plan["archive"], staging / plan["file"])
    subprocess.run(["sh", "-c", unpack], check=True)
    assert sorted(p.name for p in staging.iterdir()) == sorted([plan["file"], *(d["file"] for d in debs)])
    subprocess.run(["sh", "-c", remove], check=True)
    assert list(staging.iterdir()) == []
    packed = Path(plan["archive"]).stat().st_mtime_ns
    assert runtime_controller.debs_plan(debs, staging_dir=str(staging)) == plan  # the same packages: the same archive,
    assert Path(plan["archive"]).stat().st_mtime_ns == packed  # reused, not packed again


def test_a_damaged_package_stops_the_node_before_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_provision.artifacts.ARTIFACTS_DIR", tmp_path / "artifacts")
    debs = _fake_debs(tmp_path)
    debs[1]["sha256"] = "0" * 64  # what the node unpacks is not what was pinned
    plan = runtime_controller.debs_plan(debs, staging_dir=str(tmp_path / "staging"))
    (tmp_path / "staging").mkdir()
    shutil.copy(plan["archive"], tmp_path / "staging" / plan["file"])
    checked = subprocess.run(["sh", "-c", plan["commands"][0]], capture_output=True, text=True)
    assert checked.returncode != 0
    assert "conntrack_1%3a1.4.7-1+b2_amd64.deb: FAILED" in checked.stdout


def test_images_missing() -> None:
    listed = (
        "REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
        "edge-provision.local/pause:3.4 application/vnd.oci.image.index.v1+json sha256:aaa 299.1 KiB linux/amd64 -\n"
        "edge-provision.local/busybox:1.35.0 application/vnd.oci.image.index.v1+json sha256:old 1 MiB linux/amd64 -\n"
    )
    wanted = [
        {"reference": "edge-provision.local/pause:3.4", "digest": "sha256:aaa"},
        {"reference": "edge-provision.local/busybox:1.35.0", "digest": "sha256:new"},
        {"reference": "edge-provision.local/wasi-demo:0.1.0", "digest": "sha256:ccc"},
    ]
    assert [i["reference"] for i in runtime_controller.images_missing(wanted, listed)] == [
        "edge-provision.local/busybox:1.35.0", "edge-provision.local/wasi-demo:0.1.0",
    ]
    assert len(runtime_controller.images_missing(wanted, "")) == 3


@pytest.mark.parametrize(("engine", "on_node", "message"), [
    ("wasmtime", True, "wasm_runtime_build_on_node is not implemented"),
    ("wamr", False, "unknown Wasm engine"),
])
def test_engines_that_cannot_be_installed_fail_clearly(engine: str, on_node: bool, message: str) -> None:
    with pytest.raises(runtime_controller.RuntimeStageError, match=message):
        runtime_controller.check_engine(engine, on_node)


def test_wasmtime_is_installable() -> None:
    runtime_controller.check_engine("wasmtime", False)


def test_filters_are_the_shared_functions() -> None:
    import importlib.util

    from edge_provision import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("runtime_filters", PROJECT_ROOT / "plugins" / "filter" / "runtime.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    filters = module.FilterModule().filters()
    assert filters["edge_provision_debs_missing"] is runtime_controller.debs_missing
    assert filters["edge_provision_debs_plan"] is runtime_controller.debs_plan
    assert filters["edge_provision_containerd_config"](DEBIAN_CONFIG, **SETTINGS) == runtime_controller.containerd_config(
        DEBIAN_CONFIG, **SETTINGS
    )
