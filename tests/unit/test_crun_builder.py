"""crun + wasmtime builder: pins, the hand-written C header, checksums, cache and deb-src handling (no build)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

import edge_provision.artifacts as artifacts
from edge_provision.artifacts import ArtifactBuildError, debian, run, sha256_file
from edge_provision.artifacts.builders import crun as builder
from edge_provision.artifacts.debian import host_arch

# Every name crun 1.8.1's src/libcrun/handlers/wasmtime.c (Debian 1.8.1-1+deb12u1) looks up
# with dlsym() in libwasmtime.so; a missing one makes crun refuse to run any Wasm container.
CRUN_1_8_1_DLSYM = {
    "wasmtime_wat2wasm",
    "wasm_engine_new",
    "wasm_engine_delete",
    "wasm_byte_vec_delete",
    "wasm_byte_vec_new_uninitialized",
    "wasi_config_new",
    "wasi_config_set_argv",
    "wasmtime_store_new",
    "wasmtime_store_context",
    "wasmtime_linker_new",
    "wasmtime_linker_define_wasi",
    "wasmtime_module_new",
    "wasi_config_inherit_argv",
    "wasi_config_inherit_stdout",
    "wasi_config_inherit_stdin",
    "wasi_config_inherit_stderr",
    "wasi_config_inherit_env",
    "wasmtime_context_set_wasi",
    "wasmtime_linker_module",
    "wasmtime_linker_get_default",
    "wasmtime_func_call",
    "wasmtime_module_delete",
    "wasmtime_store_delete",
    "wasmtime_error_delete",
    "wasmtime_error_message",
    "wasi_config_preopen_dir",
}
# Types crun's own declarations in that file name (two of them it allocates itself).
CRUN_1_8_1_TYPES = {
    "wasm_byte_vec_t",
    "wasm_name_t",
    "wasm_engine_t",
    "wasm_trap_t",
    "wasi_config_t",
    "wasmtime_error_t",
    "wasmtime_store_t",
    "wasmtime_context_t",
    "wasmtime_linker_t",
    "wasmtime_module_t",
    "wasmtime_func_t",
    "wasmtime_val_t",
}

HEADER = builder.HEADER_FILE.read_text()
SHA = re.compile(r"^[0-9a-f]{64}$")


# -- versions.yml -------------------------------------------------------------------------------


def test_versions_yml_pins_wasmtime_and_crun() -> None:
    data = yaml.safe_load(builder.VERSIONS_FILE.read_text())
    assert isinstance(data, dict)
    wasmtime = data["wasmtime"]
    assert wasmtime["version"] == "20.0.0"
    assert wasmtime["source"] == "pypi"
    for arch, machine in (("amd64", "x86_64"), ("arm64", "aarch64")):
        wheel = wasmtime["wheels"][arch]
        assert wheel["file"].startswith(f"wasmtime-{wasmtime['version']}-py3-none-manylinux")
        assert wheel["file"].endswith(f"_{machine}.whl")
        assert SHA.match(wheel["sha256"]), wheel
    assert data["crun"]["version"] == "1.8.1"
    assert data["crun"]["source"] == "debian-source"
    assert data["crun"]["debian_version"].startswith("1.8.1-")


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_builder_reads_its_pins_from_versions_yml(arch: str) -> None:
    pins = builder.load_pins(arch)
    wheel = yaml.safe_load(builder.VERSIONS_FILE.read_text())["wasmtime"]["wheels"][arch]
    assert (pins.wheel_file, pins.wheel_sha256) == (wheel["file"], wheel["sha256"])
    assert (pins.crun_version, pins.wasmtime_version) == ("1.8.1", "20.0.0")


def test_missing_pin_is_a_clear_error(tmp_path: Path) -> None:
    versions = tmp_path / "versions.yml"
    versions.write_text("crun: {version: '1.8.1', debian_version: '1.8.1-1'}\nwasmtime: {version: '20.0.0'}\n")
    with pytest.raises(ArtifactBuildError, match=r"read pins.*wheels"):
        builder.load_pins("amd64", versions)


# -- the C header --------------------------------------------------------------------------------


def _declared_functions(header: str) -> set[str]:
    return set(re.findall(r"\b(wasm\w+|wasi\w+)\s*\(", header))


def test_header_declares_every_function_crun_looks_up() -> None:
    missing = CRUN_1_8_1_DLSYM - _declared_functions(HEADER)
    assert not missing, f"wasmtime_c_api.h lacks {sorted(missing)}"


def test_builder_checks_the_same_functions_in_libwasmtime() -> None:
    assert set(builder.CRUN_WASMTIME_FUNCTIONS) == CRUN_1_8_1_DLSYM


def test_header_defines_every_type_crun_uses() -> None:
    defined = set(re.findall(r"\}\s*(\w+)\s*;", HEADER)) | set(re.findall(r"typedef [^;]*?\b(\w+)\s*;", HEADER))
    assert not CRUN_1_8_1_TYPES - defined, sorted(CRUN_1_8_1_TYPES - defined)


def test_header_matches_the_abi_crun_1_8_1_calls() -> None:
    # crun calls wasi_config_preopen_dir with 3 arguments and set_argv with an int argc.
    preopen = re.search(r"wasi_config_preopen_dir\s*\(([^)]*)\)", HEADER)
    assert preopen and preopen.group(1).count(",") == 2
    assert re.search(r"void wasi_config_set_argv\s*\(wasi_config_t \*config, int argc", HEADER)
    # libwasmtime writes a wasmtime_func_t crun allocates: the 20.x layout.
    assert re.search(r"struct wasmtime_func \{\s*uint64_t store_id;\s*size_t index;\s*\}", HEADER)


def test_header_compiles_as_crun_includes_it(tmp_path: Path) -> None:
    shutil.copy(builder.HEADER_FILE, tmp_path / builder.HEADER_FILE.name)
    for shim in builder.HEADER_SHIMS:
        (tmp_path / shim).write_text(f'#include "{builder.HEADER_FILE.name}"\n')
    src = tmp_path / "t.c"
    src.write_text(
        "#include <wasm.h>\n#include <wasi.h>\n#include <wasmtime.h>\n"
        "_Static_assert(sizeof(wasmtime_func_t) == 16, \"layout\");\n"
        "int main(void) { wasm_byte_vec_t v; wasmtime_func_t f; (void) v; (void) f; return 0; }\n"
    )
    proc = subprocess.run(
        ["gcc", "-fsyntax-only", "-Wall", "-Werror", "-I", str(tmp_path), str(src)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr


# -- checksums and errors ----------------------------------------------------------------------


def test_checksum_mismatch_names_expected_and_actual(tmp_path: Path) -> None:
    fake = tmp_path / "wasmtime-20.0.0-py3-none-manylinux1_x86_64.whl"
    fake.write_bytes(b"not a wheel")
    expected = "0" * 64
    with pytest.raises(ArtifactBuildError) as info:
        builder.verify_sha256(fake, expected)
    message = str(info.value)
    assert "verify wheel checksum" in message
    assert expected in message and sha256_file(fake) in message
    assert builder.verify_sha256(fake, sha256_file(fake).upper()) == sha256_file(fake)


def test_downloaded_wheel_is_checked_against_the_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pins = builder.load_pins("amd64")

    def fake_pip(step: str, cmd: list[str], **_: object) -> str:
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True)
        (dest / pins.wheel_file).write_bytes(b"tampered")
        return ""

    monkeypatch.setattr(builder, "run", fake_pip)
    with pytest.raises(ArtifactBuildError, match=rf"expected {pins.wheel_sha256}, actual [0-9a-f]{{64}}"):
        builder._step_download_wheel(tmp_path, pins, builder.ARCHES["amd64"])


def test_failing_step_is_named_with_the_tail_of_its_output() -> None:
    script = "for i in $(seq 1 100); do echo line$i; done; echo 'fatal: boom' >&2; exit 3"
    with pytest.raises(ArtifactBuildError) as info:
        run("configure", ["sh", "-c", script], error=builder.CrunBuildError)
    message = str(info.value)
    assert "step 'configure'" in message and "exited with 3" in message
    assert message.rstrip().endswith("fatal: boom")
    assert "line100" in message and "line1\n" not in message
    assert info.value.step == "configure"


def test_unsupported_engine_and_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path)
    with pytest.raises(ArtifactBuildError, match="wasmedge"):
        builder.build_crun(engine="wasmedge")
    with pytest.raises(ArtifactBuildError, match="riscv64"):
        builder.build_crun(arch="riscv64")


# -- cache ---------------------------------------------------------------------------------------


def _fake_build(work: Path, out: Path, arch: str, engine: str, pins: builder.Pins, key: str) -> None:
    files = {}
    for name in builder.OUTPUT_FILES:
        (out / name).write_bytes(f"fake {name}".encode())
        files[name] = {"sha256": sha256_file(out / name), "size": 0}
    (out / "manifest.json").write_text(json.dumps({"key": key, "files": files}))


def test_unchanged_inputs_reuse_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path)
    calls: list[str] = []

    def build(*args: object) -> None:
        calls.append("build")
        _fake_build(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(builder, "_build", build)
    first = builder.build_crun(host_arch())
    assert builder.build_crun(host_arch()) == first
    assert calls == ["build"]
    assert sorted(p.name for p in first.iterdir()) == ["crun", "libwasmtime.so", "manifest.json"]
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(f".{first.name}.")] == [
        f".{first.name}.lock"
    ], "no staging directory left behind"

    (first / "crun").write_bytes(b"corrupted")  # a damaged cache entry is rebuilt
    assert builder.build_crun(host_arch()) == first
    assert calls == ["build", "build"]


def test_changed_pin_changes_the_cache_key(tmp_path: Path) -> None:
    text = builder.VERSIONS_FILE.read_text()
    changed = tmp_path / "versions.yml"
    changed.write_text(text.replace("1.8.1-1+deb12u1", "1.8.1-1+deb12u2"))
    assert builder.cache_key("amd64", "wasmtime", builder.load_pins("amd64")) != builder.cache_key(
        "amd64", "wasmtime", builder.load_pins("amd64", changed)
    )


def test_failed_build_leaves_no_cache_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path)

    def broken(*args: object) -> None:
        raise ArtifactBuildError("make", "exited with 2", "src/crun.c: error")

    monkeypatch.setattr(builder, "_build", broken)
    with pytest.raises(ArtifactBuildError, match="step 'make'") as info:
        builder.build_crun(host_arch())
    logs = list((tmp_path / "crun-wasmtime").glob("*.failed.log"))
    assert len(logs) == 1 and str(logs[0]) in str(info.value)
    assert logs[0].read_text() == "src/crun.c: error"
    leftovers = [p.name for p in (tmp_path / "crun-wasmtime").iterdir() if not p.name.endswith((".lock", ".log"))]
    assert leftovers == []


def test_error_lines_hidden_above_the_tail_are_quoted() -> None:
    output = "\n".join(["src/crun.c:20:10: fatal error: git-version.h: No such file or directory"] + ["CC x.lo"] * 40)
    message = str(ArtifactBuildError("make", "exited with 2", output))
    assert "git-version.h: No such file" in message


# -- deb-src -------------------------------------------------------------------------------------

DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    (tmp_path / "sources.list.d" / "nodesource.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n"
    )
    (tmp_path / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n')
    return tmp_path


def test_ensure_deb_src_adds_twins_once(apt_dir: Path) -> None:
    kwargs = {"os_release": apt_dir / "os-release", "update": False}
    assert debian.ensure_deb_src(apt_dir, **kwargs) is True  # type: ignore[arg-type]
    own = apt_dir / "sources.list.d" / debian.OWN_FILE
    entries = debian.parse_deb822(own.read_text())
    assert [(e.types, e.uris, e.suites, e.components) for e in entries] == [
        (["deb-src"], ["http://deb.debian.org/debian"], ["bookworm", "bookworm-updates"], ["main"]),
        (["deb-src"], ["http://deb.debian.org/debian-security"], ["bookworm-security"], ["main"]),
    ]
    assert all(e.options["Signed-By"].endswith("debian-archive-keyring.gpg") for e in entries)
    assert (apt_dir / "sources.list.d" / "debian.sources").read_text() == DEBIAN_SOURCES  # untouched
    assert debian.ensure_deb_src(apt_dir, **kwargs) is False  # type: ignore[arg-type]


def test_ensure_deb_src_returns_only_once_the_lists_are_updated(
    apt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builders at once (amd64 and arm64 of one run, on a fresh machine): the one that finds the
    file already written waits for the other's apt-get update instead of returning at once."""
    monkeypatch.setattr(artifacts, "CACHE_DIR", apt_dir)
    updated = threading.Event()
    monkeypatch.setattr(debian, "apt_get_update", lambda: time.sleep(0.5) or updated.set())
    own = apt_dir / "sources.list.d" / debian.OWN_FILE
    first = threading.Thread(target=debian.ensure_deb_src, args=(apt_dir,),
                             kwargs={"os_release": apt_dir / "os-release"})
    first.start()
    while not own.exists():
        time.sleep(0.01)
    assert debian.ensure_deb_src(apt_dir, os_release=apt_dir / "os-release") is False
    assert updated.is_set(), "returned before the lists had the sources"
    first.join()


def test_a_failed_update_leaves_no_deb_src_file_behind(apt_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "CACHE_DIR", apt_dir)

    def fail() -> None:
        raise debian.AptSourcesError("apt-get update failed (exit 100)")

    monkeypatch.setattr(debian, "apt_get_update", fail)
    with pytest.raises(debian.AptSourcesError):
        debian.ensure_deb_src(apt_dir, os_release=apt_dir / "os-release")
    assert not (apt_dir / "sources.list.d" / debian.OWN_FILE).exists()
    calls: list[int] = []
    monkeypatch.setattr(debian, "apt_get_update", lambda: calls.append(1))
    assert debian.ensure_deb_src(apt_dir, os_release=apt_dir / "os-release") is True
    assert calls == [1], "the next call writes and updates again"


def test_ensure_deb_src_respects_existing_deb_src_lines(apt_dir: Path) -> None:
    (apt_dir / "sources.list.d" / "debian.sources").unlink()
    (apt_dir / "sources.list").write_text(
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb-src http://deb.debian.org/debian/ bookworm main\n"
        "deb [signed-by=/k.gpg] https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    )
    assert debian.ensure_deb_src(apt_dir, os_release=apt_dir / "os-release", update=False) is False
    assert not (apt_dir / "sources.list.d" / debian.OWN_FILE).exists()
