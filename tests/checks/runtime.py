"""Stage runtime on one host (a testinfra host), through `ctr`: containerd with its CRI plugin,
crun with the Wasm engine, the images imported, the Wasm image run by crun and refused by runc;
containerd 2 and runc from the release path with config schema v3."""

from __future__ import annotations

import shlex
import time

import testinfra
import tomlkit

from edge_provision.artifacts.builders.images import (
    demo_output_problems,
    pause_reference,
    wasi_demo_reference,
)
from edge_provision.artifacts.builders.kubernetes_modules import ContainerdPins
from edge_provision.role_files import role_defaults
from edge_provision.stages.runtime.containerd_config import runtime_handler, schema_for, subtable

CONTAINERD = role_defaults("containerd")
NAMESPACE = CONTAINERD["containerd_namespace"]
CRUN = role_defaults("edge")["edge_wasm_crun_path"]
DEMO_ARGS = ["/wasi_demo.wasm", "50000000"]
BUSYBOX = "edge-provision.local/busybox:"


def ctr_run(host: testinfra.host.Host, args: str, namespace: str = NAMESPACE) -> tuple[int, str, str]:
    """`ctr run --rm` with ``args`` in containerd's namespace: exit status, stdout, stderr."""
    result = host.run(f"ctr -n {namespace} run --rm {args}")
    return result.rc, result.stdout, result.stderr


def images(host: testinfra.host.Host, namespace: str = NAMESPACE) -> list[str]:
    return list(host.check_output(f"ctr -n {namespace} images ls -q").split())


def containerd_runs_with_the_cri_plugin(host: testinfra.host.Host) -> None:
    service = host.service("containerd")
    assert service.is_running and service.is_enabled
    assert host.package("containerd").is_installed
    cri = [line.split() for line in host.check_output("ctr plugins ls").splitlines() if " cri " in line]
    assert cri and cri[0][-1] == "ok", cri


def crun_has_the_wasm_engine(host: testinfra.host.Host, crun: str = CRUN, engine: str = "wasmtime") -> None:
    """crun (the handler's path: a file, or a link to the distribution's crun) is executable,
    lists exactly ``engine`` and finds every shared library."""
    assert host.check_output(f"stat -L -c %a {crun}") == "755"
    features = host.check_output(f"{crun} --version").split()
    assert [f for f in features if f.startswith("+WASM:")] == [f"+WASM:{engine}"], features
    assert "not found" not in host.check_output(f"ldd {crun}")


def images_imported(host: testinfra.host.Host, namespace: str = NAMESPACE) -> None:
    refs = images(host, namespace)
    assert {wasi_demo_reference(), pause_reference()} <= set(refs)
    assert any(r.startswith(BUSYBOX) for r in refs)


def wasm_image_runs_with_crun_wasm(host: testinfra.host.Host, crun: str = CRUN) -> None:
    started = time.monotonic()
    rc, stdout, stderr = ctr_run(
        host,
        f"--runc-binary {crun} --annotation module.wasm.image/variant=compat-smart --env GREETING=hello "
        f"{wasi_demo_reference()} wasm-{time.time_ns()} {shlex.join(DEMO_ARGS)}",
    )
    print(f"\nWasm container run: {time.monotonic() - started:.2f} s")
    assert rc == 0, stderr
    assert demo_output_problems(stdout, args=DEMO_ARGS, stderr=stderr) == [], stdout + stderr
    assert "GREETING: hello" in stdout.splitlines()


def wasm_image_fails_with_runc(host: testinfra.host.Host) -> None:
    rc, stdout, stderr = ctr_run(host, f"{wasi_demo_reference()} plain-{time.time_ns()} {shlex.join(DEMO_ARGS)}")
    assert rc != 0
    assert "exec format error" in stdout + stderr


def busybox_runs_with_runc(host: testinfra.host.Host) -> None:
    ref = next(r for r in images(host) if r.startswith(BUSYBOX))
    rc, stdout, stderr = ctr_run(host, f"{ref} busybox-{time.time_ns()} echo container works")
    assert (rc, stdout.strip()) == (0, "container works"), stderr


def containerd_2_and_runc_run_from_the_release_files(host: testinfra.host.Host, pins: ContainerdPins,
                                                    arch: str = "amd64") -> None:
    """containerd_install_from release: the pinned containerd 2 and runc under the release
    prefix, run by the release's unit, Debian's package absent, the stamp naming both files."""
    prefix = CONTAINERD["containerd_release_prefix"]
    version = host.check_output(f"{prefix}/bin/containerd --version").split()
    assert version[1:3] == ["github.com/containerd/containerd/v2", f"v{pins.version}"], version
    assert host.check_output("command -v containerd") == f"{prefix}/bin/containerd"
    assert f"runc version {pins.runc_version}" in host.check_output(f"{prefix}/sbin/runc --version")
    assert not host.package("containerd").is_installed
    assert f"ExecStart={prefix}/bin/containerd" in host.file(CONTAINERD["containerd_release_unit_file"]).content_string
    service = host.service("containerd")
    assert service.is_running and service.is_enabled
    stamp = host.file(CONTAINERD["containerd_release_stamp_file"]).content_string.split()
    assert stamp[1::2] == [f"containerd-{pins.version}-linux-{arch}.tar.gz", f"runc.{arch}"], stamp


def config_is_schema_3_with_the_wasm_handler(host: testinfra.host.Host, handler_name: str) -> None:
    """containerd 2's config: version 3, the Wasm handler, the sandbox image, the OOM setting and
    the CNI directory at v3's paths, and its CRI plugin loaded from it."""
    text = host.check_output(f"cat {CONTAINERD['containerd_config_file']}")
    schema = schema_for("2")
    config = tomlkit.parse(text)
    assert config.unwrap()["version"] == 3
    handler = runtime_handler(text, schema, handler_name)
    assert handler["options"] == {"BinaryName": CRUN, "SystemdCgroup": True}
    assert subtable(config, schema.sandbox_image[:-1])[schema.sandbox_image[-1]] == pause_reference()
    assert subtable(config, schema.cni_bin_dir[:-1])[schema.cni_bin_dir[-1]] == CONTAINERD["containerd_cni_bin_dir"]
    assert subtable(config, schema.restrict_oom_score_adj[:-1])[schema.restrict_oom_score_adj[-1]] is True
    plugins = [line.split() for line in host.check_output("ctr plugins ls").splitlines()]
    cri = [p for p in plugins if p[:2] == ["io.containerd.grpc.v1", "cri"]]
    assert cri and cri[0][-1] == "ok", plugins
