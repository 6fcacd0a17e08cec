"""Kubernetes builder: pins, cache key, cache hits, error messages (no build, no apt, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import edge_provision.artifacts as artifacts
from edge_provision.artifacts import ArtifactBuildError, run, sha256_file
from edge_provision.artifacts.builders import kubernetes as builder
from edge_provision.artifacts.debian import host_arch, upstream_version

TOOLS = builder.Toolchain(go_version="go1.19.8", golang_go="2:1.19~1", reflect2="1.0.2-2")
PINS = builder.Pins(version="1.20.2", debian_version="1.20.5+really1.20.2-1.1+deb12u1")


def _versions(tmp_path: Path, entry: object) -> Path:
    path = tmp_path / "versions.yml"
    path.write_text(yaml.safe_dump({"kubernetes": entry}))
    return path


# -- versions.yml -------------------------------------------------------------------------------


def test_versions_yml_pins_kubernetes_from_the_debian_source() -> None:
    data = yaml.safe_load(builder.VERSIONS_FILE.read_text())
    entry = data["kubernetes"]
    assert entry["source"] == "debian-source"
    assert entry["version"] == "1.20.2"
    assert upstream_version(entry["debian_version"]) == entry["version"]
    assert builder.load_pins() == builder.Pins(entry["version"], entry["debian_version"])


def test_versions_yml_pins_etcd_from_debian() -> None:
    etcd = yaml.safe_load(builder.VERSIONS_FILE.read_text())["etcd"]
    assert etcd["source"] == "debian"
    assert etcd["debian_version"].startswith(f"{etcd['version']}-")
    assert etcd["version"].startswith("3.4.")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"version": "1.20.2", "source": "debian-source"}, "kubernetes.debian_version"),
        ({"version": "1.20.2", "debian_version": "1.20.5+really1.20.2-1.1"}, "kubernetes.source"),
        ("1.20.2", "need kubernetes.version"),
        (
            {"version": "1.20.2", "source": "github", "debian_version": "1.20.5+really1.20.2-1.1"},
            "only builds from the Debian source package",
        ),
        (
            {"version": "1.20.5", "source": "debian-source", "debian_version": "1.20.5+really1.20.2-1.1"},
            "upstream version is '1.20.2'",
        ),
    ],
)
def test_bad_pins_are_clear_errors(tmp_path: Path, entry: object, expected: str) -> None:
    with pytest.raises(ArtifactBuildError) as info:
        builder.load_pins(_versions(tmp_path, entry))
    assert info.value.step == "read pins"
    assert str(info.value).startswith("kubernetes build, step 'read pins': ")
    assert expected in str(info.value)


def test_unreadable_versions_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactBuildError, match="cannot read"):
        builder.load_pins(tmp_path / "absent.yml")


# -- cache key ----------------------------------------------------------------------------------


def test_cache_key_is_stable_and_changes_with_every_input() -> None:
    key = builder.cache_key("amd64", PINS, TOOLS)
    assert key == builder.cache_key("amd64", builder.Pins(PINS.version, PINS.debian_version), TOOLS)
    assert len(key) == 12
    others = {
        builder.cache_key("arm64", PINS, TOOLS),
        builder.cache_key("amd64", builder.Pins("1.20.2", "1.20.5+really1.20.2-1.1+deb12u2"), TOOLS),
        builder.cache_key("amd64", PINS, builder.Toolchain("go1.19.9", TOOLS.golang_go, TOOLS.reflect2)),
        builder.cache_key("amd64", PINS, builder.Toolchain(TOOLS.go_version, "2:1.19~2", TOOLS.reflect2)),
        builder.cache_key("amd64", PINS, builder.Toolchain(TOOLS.go_version, TOOLS.golang_go, "1.0.2-3")),
    }
    assert key not in others
    assert len(others) == 5


def test_cache_key_changes_with_builder_revision_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    key = builder.cache_key("amd64", PINS, TOOLS)
    monkeypatch.setattr(builder, "BUILDER_REVISION", "999")
    assert builder.cache_key("amd64", PINS, TOOLS) != key
    monkeypatch.undo()
    monkeypatch.setattr(builder, "BUILD_FLAGS", {**builder.BUILD_FLAGS, "CGO_ENABLED": "1"})
    assert builder.cache_key("amd64", PINS, TOOLS) != key
    monkeypatch.undo()
    monkeypatch.setattr(builder, "BINARIES", (*builder.BINARIES, "kube-proxy"))
    assert builder.cache_key("amd64", PINS, TOOLS) != key


# -- cache hits and failures --------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cache, a fixed toolchain, and a build step that must not run."""
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path / "artifacts")
    monkeypatch.setattr(builder, "toolchain", lambda: TOOLS)

    def no_build(*args: object) -> None:
        raise AssertionError("the build ran")

    monkeypatch.setattr(builder, "_build", no_build)
    return tmp_path


def _fake_build(directory: Path) -> None:
    directory.mkdir(parents=True)
    files = {}
    for name in builder.BINARIES:
        (directory / name).write_bytes(name.encode() * 100)
        files[name] = {"sha256": sha256_file(directory / name), "size": (directory / name).stat().st_size}
    (directory / "manifest.json").write_text(json.dumps({"files": files}))


def _expected_dir(arch: str = "amd64") -> Path:
    pins = builder.load_pins()
    return artifacts.build_dir("kubernetes", pins.version, arch, builder.cache_key(arch, pins, TOOLS))


def test_complete_build_is_reused_without_building(cache: Path) -> None:
    _fake_build(_expected_dir())
    assert builder.build_kubernetes("amd64") == _expected_dir()
    assert builder.verify_build(_expected_dir()) == []


def test_truncated_binary_is_not_a_cache_hit(cache: Path) -> None:
    _fake_build(_expected_dir())
    (_expected_dir() / "kubelet").write_bytes(b"x")
    assert builder.cached_build(_expected_dir()) is None
    with pytest.raises(AssertionError, match="the build ran"):
        builder.build_kubernetes("amd64")


def test_verify_build_names_a_corrupted_binary(cache: Path) -> None:
    _fake_build(_expected_dir())
    size = (_expected_dir() / "kubeadm").stat().st_size
    (_expected_dir() / "kubeadm").write_bytes(b"z" * size)
    problems = builder.verify_build(_expected_dir())
    assert len(problems) == 1
    assert problems[0].startswith("kubeadm: sha256")


def test_unknown_arch(cache: Path) -> None:
    with pytest.raises(ArtifactBuildError, match=r"unknown arch 'riscv64' \(known: amd64, arm64\)"):
        builder.build_kubernetes("riscv64")


def test_failed_step_is_named_with_its_tail_and_full_log(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = "\n".join(f"line {i}" for i in range(200)) + "\nvendor/x/y.go:3:1: undefined: Foo"

    def failing(work: Path, out: Path, *args: object) -> None:
        (out / "kubelet").write_bytes(b"partial")
        raise builder.KubernetesBuildError("make", "`make WHAT=...` exited with 2", output)

    monkeypatch.setattr(builder, "_build", failing)
    with pytest.raises(ArtifactBuildError) as info:
        builder.build_kubernetes("amd64")
    text = str(info.value)
    assert info.value.step == "make"
    assert text.startswith("kubernetes build, step 'make': `make WHAT=...` exited with 2 (full output: ")
    assert text.endswith("vendor/x/y.go:3:1: undefined: Foo")
    assert "line 0\n" not in text  # only the tail
    failed_log = _expected_dir().parent / f"{_expected_dir().name}.failed.log"
    assert failed_log.read_text() == output
    # nothing half-built is left where the cache would look, nor staging/work directories
    assert not _expected_dir().exists()
    assert [p.name for p in _expected_dir().parent.iterdir() if not p.name.endswith((".lock", ".log"))] == []


def test_a_failed_step_names_the_kubernetes_build() -> None:
    with pytest.raises(builder.KubernetesBuildError) as info:
        run("probe", ["sh", "-c", "echo first; echo boom >&2; exit 3"], error=builder.KubernetesBuildError)
    text = str(info.value)
    assert text.startswith("kubernetes build, step 'probe': `sh -c")
    assert "exited with 3" in text
    assert text.endswith("first\nboom")


def test_missing_tool_is_named() -> None:
    with pytest.raises(ArtifactBuildError, match="step 'probe': cannot run /nonexistent/go"):
        run("probe", ["/nonexistent/go", "version"], error=builder.KubernetesBuildError)


# -- reflect2 and binary checks -----------------------------------------------------------------


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "kubernetes-1.20.5+really1.20.2"
    vendored = src / "vendor" / "github.com" / "modern-go" / "reflect2"
    vendored.mkdir(parents=True)
    (vendored / "go_above_17.go").write_text("package reflect2\n")
    (src / "vendor" / "modules.txt").write_text(
        "# github.com/modern-go/reflect2 v1.0.1 => github.com/modern-go/reflect2 v1.0.1\n"
        "github.com/modern-go/reflect2\n"
    )
    return src


def test_reflect2_is_replaced_by_debians(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = tmp_path / "gocode" / "reflect2"
    debian.mkdir(parents=True)
    (debian / builder.REFLECT2_FIX_FILE).write_text("package reflect2 // 1.18+\n")
    monkeypatch.setattr(builder, "REFLECT2_DEBIAN_DIR", debian)
    src = _tree(tmp_path)
    assert builder._replace_reflect2(src) == "v1.0.1"
    vendored = src / "vendor" / "github.com" / "modern-go" / "reflect2"
    assert sorted(p.name for p in vendored.iterdir()) == [builder.REFLECT2_FIX_FILE]


def test_old_debian_reflect2_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = tmp_path / "gocode" / "reflect2"
    debian.mkdir(parents=True)
    monkeypatch.setattr(builder, "REFLECT2_DEBIAN_DIR", debian)
    with pytest.raises(ArtifactBuildError, match=r"step 'replace vendored reflect2'.*>= 1\.0\.2"):
        builder._replace_reflect2(_tree(tmp_path))


def test_a_non_elf_or_foreign_binary_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "kubelet"
    script.write_text("#!/bin/sh\necho Kubernetes v1.20.2\n")
    with pytest.raises(ArtifactBuildError, match="step 'check kubelet': kubelet: not an ELF file"):
        builder._check_binary(script, "kubelet", "amd64", PINS)
    sh = Path("/bin/sh")  # dynamically linked: refused like a wrong-architecture binary
    with pytest.raises(ArtifactBuildError, match="static=False; wanted static"):
        builder._check_binary(sh, "kubelet", host_arch(), PINS)
