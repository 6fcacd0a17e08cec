"""Stage runtime on one host (a testinfra host), through `ctr`: containerd with its CRI plugin,
crun with the Wasm engine, the images imported, the Wasm image run by crun and refused by runc."""

from __future__ import annotations

import shlex
import time

import testinfra

from edge_provision.artifacts.builders.images import (
    demo_output_problems,
    pause_reference,
    wasi_demo_reference,
)
from edge_provision.role_files import role_defaults

NAMESPACE = role_defaults("containerd")["containerd_namespace"]
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
