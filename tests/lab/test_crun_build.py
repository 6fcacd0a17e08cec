"""A real crun + wasmtime build on this machine (Debian bookworm, root, apt + PyPI reachable).

Builds into a fresh cache (about a minute on 2 cores), checks the binary, that the loader finds
libwasmtime from a temp directory through LD_LIBRARY_PATH (nodes use /usr/local/lib + ldconfig),
that a second call is a cache hit, and runs a WASI module through crun when it can.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import edge_provision.artifacts as artifacts
from edge_provision.artifacts import sha256_file
from edge_provision.artifacts.builders.crun import build_crun

pytestmark = pytest.mark.lab

# hello.wasm, assembled from:
# (module
#   (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
#   (memory (export "memory") 1)
#   (data (i32.const 16) "hello from wasm via crun+wasmtime\n")
#   (func (export "_start")
#     (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 34))
#     (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
HELLO_WASM = bytes.fromhex(
    "0061736d01000000010c0260047f7f7f7f017f60000002230116776173695f736e617073686f745f7072657669"
    "6577310866645f77726974650000030201010503010001071302066d656d6f72790200065f7374617274000"
    "10a1d011b004100411036020041044122360200410141004101410810001a0b0b28010041100b2268656c6c"
    "6f2066726f6d207761736d20766961206372756e2b7761736d74696d650a0012046e616d65010b01000866"
    "645f7772697465"
)
HELLO_OUTPUT = "hello from wasm via crun+wasmtime"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def built(cache: Path) -> tuple[Path, float]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(artifacts, "ARTIFACTS_DIR", cache)
        started = time.monotonic()
        out = build_crun()
        return out, time.monotonic() - started


@pytest.fixture(scope="module")
def lib_dir(built: tuple[Path, float], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libwasmtime.so alone in a temp directory, as LD_LIBRARY_PATH sees it."""
    directory = tmp_path_factory.mktemp("lib")
    shutil.copy(built[0] / "libwasmtime.so", directory / "libwasmtime.so")
    return directory


def test_build_produces_crun_libwasmtime_and_manifest(built: tuple[Path, float]) -> None:
    out, _ = built
    assert sorted(p.name for p in out.iterdir()) == ["crun", "libwasmtime.so", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["crun"]["version"] == "1.8.1"
    assert manifest["wasmtime"]["version"] == "20.0.0"
    for name in ("crun", "libwasmtime.so"):
        assert manifest["files"][name]["sha256"] == sha256_file(out / name)
    assert "--with-wasmtime" in manifest["configure_flags"]
    assert manifest["build_seconds"] > 0


def test_crun_version_lists_exactly_the_wasmtime_engine(built: tuple[Path, float]) -> None:
    out = subprocess.run([built[0] / "crun", "--version"], capture_output=True, text=True, check=True).stdout
    assert "crun version 1.8.1" in out
    features = next(line for line in out.splitlines() if line.startswith("+"))
    assert [f for f in features.split() if f.startswith("+WASM:")] == ["+WASM:wasmtime"]


def test_loader_finds_libwasmtime_with_ld_library_path(built: tuple[Path, float], lib_dir: Path) -> None:
    # crun dlopen()s "libwasmtime.so" (no DT_NEEDED): ask the loader the same way crun does.
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}
    probe = (
        "import ctypes; lib = ctypes.CDLL('libwasmtime.so');"
        "assert lib.wasi_config_preopen_dir and lib.wasmtime_linker_define_wasi"
    )
    subprocess.run(["python3", "-c", probe], env=env, check=True)
    ldd = subprocess.run(["ldd", str(lib_dir / "libwasmtime.so")], capture_output=True, text=True, env=env)
    assert ldd.returncode == 0 and "not found" not in ldd.stdout, ldd.stdout
    without = subprocess.run(
        ["python3", "-c", "import ctypes; ctypes.CDLL('libwasmtime.so')"], capture_output=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert without.returncode != 0, "libwasmtime.so is installed system-wide: LD_LIBRARY_PATH not demonstrated"


def test_second_call_is_a_cache_hit(built: tuple[Path, float], cache: Path) -> None:
    out, cold = built
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(artifacts, "ARTIFACTS_DIR", cache)
        started = time.monotonic()
        again = build_crun()
        warm = time.monotonic() - started
    assert again == out
    assert warm < 1.0, f"cache hit took {warm:.2f}s (cold build {cold:.0f}s)"


def test_crun_runs_a_wasi_module(built: tuple[Path, float], lib_dir: Path, tmp_path: Path) -> None:
    """`crun run` of a .wasm. crun 1.8 refuses hybrid cgroups whose cgroup2 has controllers: in a
    private mount namespace an empty file is bind-mounted over unified/cgroup.controllers."""
    crun = str(built[0] / "crun")
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "rootfs" / "hello.wasm").write_bytes(HELLO_WASM)
    subprocess.run([crun, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["/hello.wasm"]
    config["process"]["terminal"] = False
    config.setdefault("annotations", {})["run.oci.handler"] = "wasm"
    (bundle / "config.json").write_text(json.dumps(config))

    controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    hide = f"mount --bind /dev/null {controllers} && " if controllers.is_file() and controllers.read_text().strip() else ""
    script = f'{hide}exec "$0" --root "$1" run --bundle "$2" hello-wasm'
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, crun, str(tmp_path / "state"), str(bundle)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "LD_LIBRARY_PATH": str(lib_dir)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == HELLO_OUTPUT
