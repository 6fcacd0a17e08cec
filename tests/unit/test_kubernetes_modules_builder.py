"""Kubernetes-from-Go-modules builder: pins, the wrapper go.mod, ldflags, cache keys, cache hits
(no go, no network, no build)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edge_provision.artifacts import ArtifactBuildError, sha256_file
from edge_provision.artifacts.builders import kubernetes_modules as builder

PINS = builder.Pins(
    version="1.34.12",
    git_commit="26c89157669bdc7e3657302bc1abde758507095b",
    crictl_version="1.34.0",
    etcd_version="3.6.17",
)
GO = "go1.26.8"

# `go mod edit -json` of k8s.io/kubernetes' go.mod, cut down: a staging module required at the
# placeholder v0.0.0, one not required at all, an ordinary dependency.
KUBERNETES_MODFILE = {
    "Module": {"Path": "k8s.io/kubernetes"},
    "Go": "1.25.0",
    "GoDebug": [{"Key": "default", "Value": "go1.24"}],
    "Require": [
        {"Path": "github.com/spf13/cobra", "Version": "v1.9.1"},
        {"Path": "k8s.io/api", "Version": "v0.0.0"},
        {"Path": "k8s.io/client-go", "Version": "v0.0.0"},
        {"Path": "k8s.io/component-base", "Version": "v0.0.0"},
    ],
    "Replace": [
        {"Old": {"Path": "k8s.io/client-go"}, "New": {"Path": "./staging/src/k8s.io/client-go"}},
        {"Old": {"Path": "k8s.io/api"}, "New": {"Path": "./staging/src/k8s.io/api"}},
        {"Old": {"Path": "k8s.io/component-base"}, "New": {"Path": "./staging/src/k8s.io/component-base"}},
        {"Old": {"Path": "k8s.io/sample-controller"}, "New": {"Path": "./staging/src/k8s.io/sample-controller"}},
        {"Old": {"Path": "github.com/spf13/cobra"}, "New": {"Path": "github.com/spf13/cobra", "Version": "v1.9.0"}},
    ],
}
ETCD_MODFILE = {
    "Go": "1.26.0",
    "Require": [
        {"Path": "go.etcd.io/etcd/api/v3", "Version": "v3.6.17"},
        {"Path": "go.etcd.io/etcd/client/v3", "Version": "v3.6.17"},
        {"Path": "go.etcd.io/raft/v3", "Version": "v3.6.0"},
    ],
    "Replace": [
        {"Old": {"Path": "go.etcd.io/etcd/api/v3"}, "New": {"Path": "../api"}},
        {"Old": {"Path": "go.etcd.io/etcd/client/v3"}, "New": {"Path": "../client/v3"}},
        {"Old": {"Path": "go.etcd.io/etcd"}, "New": {"Path": "./FORBIDDEN_DEPENDENCY"}},
    ],
}


def _versions(tmp_path: Path, entry: object) -> Path:
    path = tmp_path / "versions.yml"
    path.write_text(yaml.safe_dump({builder.PIN_KEY: entry}))
    return path


# -- pins ---------------------------------------------------------------------------------------


def test_versions_yml_pins_a_1_34_release_with_matching_staging_version() -> None:
    pins = builder.load_pins()
    assert pins.version.startswith("1.34.")
    assert pins.staging_version == "0.34." + pins.version.split(".")[2]
    assert pins.etcd_version.startswith("3.6.")
    assert pins.crictl_version.split(".")[:2] == pins.version.split(".")[:2]
    assert len(pins.git_commit) == 40


def test_versions_yml_keeps_the_debian_source_kubernetes_entry() -> None:
    data = yaml.safe_load(builder.VERSIONS_FILE.read_text())
    assert data["kubernetes"]["source"] == "debian-source"
    assert builder.PIN_KEY in data


def test_load_pins_strips_a_leading_v(tmp_path: Path) -> None:
    path = _versions(tmp_path, {"version": "v1.34.12", "crictl_version": "v1.34.0", "etcd_version": "3.6.17"})
    assert builder.load_pins(path) == builder.Pins("1.34.12", "", "1.34.0", "3.6.17")


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"crictl_version": "1.34.0", "etcd_version": "3.6.17"}, "'version'"),
        ({"version": "1.34", "crictl_version": "1.34.0", "etcd_version": "3.6.17"}, "want a release X.Y.Z"),
        ({"version": "1.34.1", "crictl_version": "1.34.0", "etcd_version": "3.6.17", "git_commit": "abc"},
         "40 hex digits"),
        ("not a mapping", "kubernetes_modules"),
    ],
)
def test_bad_pins_fail_naming_the_key(tmp_path: Path, entry: object, words: str) -> None:
    with pytest.raises(builder.KubernetesModulesBuildError, match="read pins") as info:
        builder.load_pins(_versions(tmp_path, entry))
    assert words in str(info.value)
    assert isinstance(info.value, ArtifactBuildError)


# -- the wrapper go.mod --------------------------------------------------------------------------


def test_local_replaces_pin_required_staging_modules_at_the_staging_version() -> None:
    assert builder.local_replaces(KUBERNETES_MODFILE, "v0.34.12") == {
        "k8s.io/api": "v0.34.12",
        "k8s.io/client-go": "v0.34.12",
        "k8s.io/component-base": "v0.34.12",
    }


def test_local_replaces_of_placeholders_need_a_version() -> None:
    with pytest.raises(ValueError, match=r"v0\.0\.0"):
        builder.local_replaces(KUBERNETES_MODFILE)


def test_local_replaces_keep_the_required_version_when_it_is_real() -> None:
    assert builder.local_replaces(ETCD_MODFILE) == {
        "go.etcd.io/etcd/api/v3": "v3.6.17",
        "go.etcd.io/etcd/client/v3": "v3.6.17",
    }


def test_wrapper_go_mod_text() -> None:
    component = builder.components(PINS)["kubernetes-modules"]
    text = builder.wrapper_go_mod(
        component.module,
        component.requires,
        builder.local_replaces(KUBERNETES_MODFILE, component.local_fallback),
        go="1.25.0",
        godebug=[("default", "go1.24")],
    )
    assert text == (
        "module edge-provision.invalid/build/kubernetes-modules\n"
        "\n"
        "go 1.25.0\n"
        "\n"
        "godebug (\n"
        "\tdefault=go1.24\n"
        ")\n"
        "\n"
        "require (\n"
        "\tk8s.io/kubernetes v1.34.12\n"
        ")\n"
        "\n"
        "replace (\n"
        "\tk8s.io/api => k8s.io/api v0.34.12\n"
        "\tk8s.io/client-go => k8s.io/client-go v0.34.12\n"
        "\tk8s.io/component-base => k8s.io/component-base v0.34.12\n"
        ")\n"
    )


def test_etcd_wrapper_requires_server_and_etcdctl_at_the_pin() -> None:
    component = builder.components(PINS)["etcd"]
    text = builder.wrapper_go_mod(component.module, component.requires, {}, go="1.26.0")
    assert "\tgo.etcd.io/etcd/server/v3 v3.6.17\n" in text
    assert "\tgo.etcd.io/etcd/etcdctl/v3 v3.6.17\n" in text
    assert "replace" not in text and "godebug" not in text


def test_components_name_every_binary() -> None:
    comps = builder.components(PINS)
    assert set(comps) == {"kubernetes-modules", "crictl", "etcd"}
    assert set(comps["kubernetes-modules"].binaries) == {
        "kubeadm", "kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy",
        "kubectl",
    }
    assert comps["kubernetes-modules"].local_fallback == "v0.34.12"
    assert set(comps["etcd"].binaries) == {"etcd", "etcdctl"}
    assert comps["crictl"].requires == (("sigs.k8s.io/cri-tools", "v1.34.0"),)


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        ("go.etcd.io/etcd/server/v3", "server"),
        ("go.etcd.io/etcd/etcdctl/v3", "etcdctl"),
        ("sigs.k8s.io/cri-tools/cmd/crictl", "crictl"),
    ],
)
def test_exec_name_is_what_go_build_writes(package: str, name: str) -> None:
    assert builder.exec_name(package) == name


# -- ldflags --------------------------------------------------------------------------------------


def test_kubernetes_ldflags_stamp_both_version_packages() -> None:
    flags = builder.ldflags(builder.components(PINS)["kubernetes-modules"], PINS, "2026-09-23T17:08:30Z")
    assert flags.startswith("-s -w ")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.34.12" in flags
        assert f"-X {package}.gitMajor=1 " in flags
        assert f"-X {package}.gitMinor=34 " in flags
        assert f"-X {package}.gitTreeState=clean" in flags
        assert f"-X {package}.buildDate=2026-09-23T17:08:30Z" in flags
        assert f"-X {package}.gitCommit={PINS.git_commit}" in flags


def test_kubernetes_ldflags_leave_out_an_unknown_commit() -> None:
    flags = builder.kubernetes_ldflags("1.34.12", "", builder.EPOCH_DATE)
    assert not any("gitCommit" in f for f in flags)
    assert len(flags) == 10


def test_crictl_and_etcd_ldflags() -> None:
    comps = builder.components(PINS)
    assert builder.ldflags(comps["crictl"], PINS, "x") == (
        "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=1.34.0"
    )
    assert builder.ldflags(comps["etcd"], PINS, "x") == "-s -w"


def test_version_checks() -> None:
    assert builder.version_check("kubeadm", "kubernetes-modules", PINS) == (
        ["version", "-o", "short"], "v1.34.12"
    )
    assert builder.version_check("kubelet", "kubernetes-modules", PINS) == (["--version"], "Kubernetes v1.34.12")
    assert builder.version_check("kubectl", "kubernetes-modules", PINS)[1] == "Client Version: v1.34.12"
    assert builder.version_check("crictl", "crictl", PINS)[1] == "crictl version 1.34.0"
    assert builder.version_check("etcd", "etcd", PINS)[1] == "etcd Version: 3.6.17"


# -- environment and cache key ----------------------------------------------------------------------


def test_build_env_keeps_goproxy_and_sets_the_build_flags() -> None:
    base = {"PATH": "/usr/bin", "GOPROXY": "https://mirror.invalid", "GOAMD64": "v3", "GOARCH": "386",
            "GOFLAGS": "-tags=foo"}
    env = builder.build_env("arm64", base)
    assert env["GOPROXY"] == "https://mirror.invalid"
    assert env["GOARCH"] == "arm64" and env["GOARM64"] == "v8.0" and "GOAMD64" not in env
    assert env["CGO_ENABLED"] == "0" and env["GOFLAGS"] == "-mod=mod"
    assert env["GOWORK"] == "off" and env["GOTOOLCHAIN"] == "local"
    assert env["GOMODCACHE"] == str(builder.GO_DIR / "mod")
    assert env["GOCACHE"] == str(builder.GO_DIR / "build")
    assert "GOMAXPROCS" not in env
    assert builder.build_env("amd64", base)["GOAMD64"] == "v1"


def test_cache_key_changes_with_what_shapes_the_build() -> None:
    comps = builder.components(PINS)
    key = builder.cache_key("amd64", comps["kubernetes-modules"], PINS, GO)
    assert key == builder.cache_key("amd64", comps["kubernetes-modules"], PINS, GO)
    newer = builder.Pins("1.34.13", PINS.git_commit, PINS.crictl_version, PINS.etcd_version)
    others = {
        builder.cache_key("amd64", builder.components(newer)["kubernetes-modules"], newer, GO),
        builder.cache_key("arm64", comps["kubernetes-modules"], PINS, GO),
        builder.cache_key("amd64", comps["kubernetes-modules"], PINS, "go1.26.9"),
        builder.cache_key("amd64", comps["kubernetes-modules"],
                          builder.Pins("1.34.12", "0" * 40, "1.34.0", "3.6.17"), GO),
        builder.cache_key("amd64", comps["crictl"], PINS, GO),
    }
    assert key not in others and len(others) == 5


def test_cache_key_of_etcd_ignores_the_kubernetes_pin() -> None:
    newer = builder.Pins("1.34.13", "", PINS.crictl_version, PINS.etcd_version)
    assert builder.cache_key("amd64", builder.components(newer)["etcd"], newer, GO) == builder.cache_key(
        "amd64", builder.components(PINS)["etcd"], PINS, GO
    )


def test_a_complete_cached_build_is_reused_without_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "go_version", lambda env=None: GO)
    monkeypatch.setattr(builder, "build_dir", lambda name, version, arch, key: tmp_path / name / key)
    versions = _versions(tmp_path, {"version": "1.34.12", "crictl_version": "1.34.0", "etcd_version": "3.6.17"})
    pins = builder.load_pins(versions)
    component = builder.components(pins)["crictl"]
    dest = tmp_path / "crictl" / builder.cache_key("amd64", component, pins, GO)
    dest.mkdir(parents=True)
    (dest / "crictl").write_bytes(b"\x7fELF binary")
    (dest / "manifest.json").write_text(json.dumps({"files": {"crictl": {
        "sha256": sha256_file(dest / "crictl"), "size": (dest / "crictl").stat().st_size}}}))
    assert builder.build_crictl("amd64", versions_file=versions) == dest
    assert builder.verify_build(dest) == []
    (dest / "crictl").write_bytes(b"\x7fELF binarY")
    assert builder.verify_build(dest) != []


def test_unknown_arch_fails_before_anything_runs() -> None:
    with pytest.raises(builder.KubernetesModulesBuildError, match="unknown arch 'riscv64'"):
        builder.build_kubernetes_modules("riscv64")


def test_missing_go_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "go_version", lambda env=None: None)
    with pytest.raises(builder.KubernetesModulesBuildError, match="no usable `go`"):
        builder.build_etcd("amd64")
