"""Kubernetes-from-Go-modules builder (Kubernetes, crictl, etcd, CoreDNS, flannel): pins by minor,
the components, the wrapper go.mod, ldflags, cache keys, cache hits (no go, no network, no build)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_provision.artifacts import ArtifactBuildError, sha256_file
from edge_provision.artifacts.builders import kubernetes_modules as builder

PINS = builder.Pins(
    version="1.34.12",
    git_commit="26c89157669bdc7e3657302bc1abde758507095b",
    crictl_version="1.34.0",
    etcd_version="3.6.17",
    coredns_version="1.12.1",
)
FLANNEL = builder.FlannelPins(version="0.28.7", cni_plugin_version="0.9.1")
CONTAINERD = builder.ContainerdPins(version="2.2.9", runc_version="1.4.4")
GO = "go1.26.8"
ENTRY = {"version": "1.34.12", "crictl_version": "1.34.0", "etcd_version": "3.6.17", "coredns_version": "1.12.1"}

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


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "versions.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _versions(tmp_path: Path, entry: object, minor: Any = "1.34") -> Path:
    """A versions.yml pinning ``entry`` as Kubernetes ``minor``, and flannel."""
    return _write(tmp_path, {builder.PIN_KEY: {minor: entry},
                             builder.FLANNEL_PIN_KEY: {"version": "0.28.7", "cni_plugin_version": "0.9.1"}})


# -- pins ---------------------------------------------------------------------------------------


def test_versions_yml_pins_a_1_34_release_with_matching_staging_version() -> None:
    pins = builder.load_pins()
    assert builder.DEFAULT_MINOR == "1.34"
    assert pins.minor == "1.34" and pins.version.startswith("1.34.")
    assert pins.staging_version == "0.34." + pins.version.split(".")[2]
    assert pins.etcd_version.startswith("3.6.")  # kubeadm 1.34: SupportedEtcdVersion[34] = 3.6.5-0
    assert pins.coredns_version == "1.12.1"  # kubeadm 1.34: CoreDNSVersion = v1.12.1
    assert pins.crictl_version.split(".")[:2] == pins.version.split(".")[:2]
    assert len(pins.git_commit) == 40
    assert builder.load_pins(minor="1.34") == builder.load_pins(builder.VERSIONS_FILE, "v1.34") == pins


def test_versions_yml_keys_kubernetes_by_minor_and_pins_flannel() -> None:
    data = yaml.safe_load(builder.VERSIONS_FILE.read_text())
    assert builder.PIN_KEY == "kubernetes"
    assert "kubernetes_modules" not in data and "etcd" not in data  # the Debian-era entries are gone
    assert set(data["kubernetes"]) == {builder.DEFAULT_MINOR}
    assert builder.pinned_minors() == [builder.DEFAULT_MINOR]
    flannel = builder.load_flannel_pins()
    assert flannel.version.startswith("0.2")
    assert flannel.cni_plugin_version == "0.9.1"  # the last containernetworking/plugins with meta/flannel


def test_load_pins_strips_a_leading_v(tmp_path: Path) -> None:
    path = _versions(tmp_path, {"version": "v1.34.12", "crictl_version": "v1.34.0", "etcd_version": "3.6.17",
                                "coredns_version": "v1.12.1"})
    assert builder.load_pins(path) == builder.Pins("1.34.12", "", "1.34.0", "3.6.17", "1.12.1")


def test_load_pins_picks_the_minor(tmp_path: Path) -> None:
    path = _write(tmp_path, {builder.PIN_KEY: {
        "1.34": ENTRY, "1.35": {**ENTRY, "version": "1.35.2", "crictl_version": "1.35.0"}}})
    assert builder.load_pins(path).version == "1.34.12"
    assert builder.load_pins(path, minor="1.35").version == "1.35.2"
    assert builder.pinned_minors(path) == ["1.34", "1.35"]


def test_a_missing_minor_names_the_pinned_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, {builder.PIN_KEY: {"1.34": ENTRY, "1.9": {**ENTRY, "version": "1.9.1"}}})
    with pytest.raises(builder.KubernetesModulesBuildError, match="read pins") as info:
        builder.load_pins(path, minor="1.35")
    assert "no Kubernetes 1.35 pinned" in str(info.value)
    assert "(pinned minors: 1.9, 1.34)" in str(info.value)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({k: v for k, v in ENTRY.items() if k != "version"}, "'version'"),
        ({k: v for k, v in ENTRY.items() if k != "coredns_version"}, "'coredns_version'"),
        ({**ENTRY, "version": "1.34"}, "want a release X.Y.Z"),
        ({**ENTRY, "coredns_version": "latest"}, 'kubernetes."1.34".coredns_version is \'latest\''),
        ({**ENTRY, "etcd_version": "3.6"}, "want a release X.Y.Z"),
        ({**ENTRY, "version": "1.35.0"}, "want a 1.34 release"),
        ({**ENTRY, "git_commit": "abc"}, "40 hex digits"),
        ("not a mapping", "want a mapping"),
    ],
)
def test_bad_pins_fail_naming_the_key(tmp_path: Path, entry: object, words: str) -> None:
    with pytest.raises(builder.KubernetesModulesBuildError, match="read pins") as info:
        builder.load_pins(_versions(tmp_path, entry))
    assert words in str(info.value)
    assert isinstance(info.value, ArtifactBuildError)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({}, "lacks kubernetes:"),
        ({"kubernetes": {"version": "1.34.12"}}, "has the key 'version'"),
        ({"kubernetes": {1.34: ENTRY}}, "want a quoted minor version"),  # YAML: kubernetes: {1.34: ...}
        ({"kubernetes": ENTRY | {"source": "debian-source"}}, "has the key"),  # the old flat entry
        ({"kubernetes_modules": ENTRY}, "lacks kubernetes:"),
    ],
)
def test_a_bad_kubernetes_mapping_fails(tmp_path: Path, data: object, words: str) -> None:
    with pytest.raises(builder.KubernetesModulesBuildError, match="read pins") as info:
        builder.load_pins(_write(tmp_path, data))
    assert words in str(info.value)


def test_a_bad_minor_argument_fails() -> None:
    with pytest.raises(builder.KubernetesModulesBuildError, match=r"want a minor version like 1\.34"):
        builder.load_pins(minor="1.34.12")


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (None, "'flannel'"),
        ({"version": "0.28.7"}, "'cni_plugin_version'"),
        ({"version": "0.28", "cni_plugin_version": "0.9.1"}, "flannel.version is '0.28'"),
        ({"version": "v0.28.7", "cni_plugin_version": "main"}, "flannel.cni_plugin_version is 'main'"),
    ],
)
def test_bad_flannel_pins_fail_naming_the_key(tmp_path: Path, entry: object, words: str) -> None:
    data = {builder.PIN_KEY: {"1.34": ENTRY}, **({builder.FLANNEL_PIN_KEY: entry} if entry else {})}
    with pytest.raises(builder.KubernetesModulesBuildError, match="read pins") as info:
        builder.load_flannel_pins(_write(tmp_path, data))
    assert words in str(info.value)


def test_load_flannel_pins_strips_a_leading_v(tmp_path: Path) -> None:
    path = _write(tmp_path, {builder.FLANNEL_PIN_KEY: {"version": "v0.28.7", "cni_plugin_version": "v0.9.1"}})
    assert builder.load_flannel_pins(path) == FLANNEL


def test_kubernetes_components_need_no_flannel_pins(tmp_path: Path) -> None:
    path = _write(tmp_path, {builder.PIN_KEY: {"1.34": ENTRY}})
    assert builder.pinned_component("coredns", versions_file=path).version == "1.12.1"
    with pytest.raises(builder.KubernetesModulesBuildError, match="'flannel'"):
        builder.pinned_component("flannel-cni", versions_file=path)


def test_flannel_components_ignore_the_minor(tmp_path: Path) -> None:
    path = _versions(tmp_path, ENTRY)
    assert builder.pinned_component("flannel", minor="1.99", versions_file=path).version == "0.28.7"


def test_an_unknown_component_names_the_known_ones() -> None:
    with pytest.raises(builder.KubernetesModulesBuildError, match="unknown component 'calico'") as info:
        builder.pinned_component("calico")
    assert "kubernetes-modules, crictl, etcd, coredns, flannel, flannel-cni" in str(info.value)


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
    comps = builder.components(PINS, FLANNEL, CONTAINERD)
    assert list(comps) == list(builder.all_components()) == [
        "kubernetes-modules", "crictl", "etcd", "coredns", "flannel", "flannel-cni", "containerd", "runc"]
    assert list(builder.components(PINS)) == list(builder.KUBERNETES_COMPONENTS)
    assert set(comps["kubernetes-modules"].binaries) == {
        "kubeadm", "kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy",
        "kubectl",
    }
    assert comps["kubernetes-modules"].local_fallback == "v0.34.12"
    assert set(comps["etcd"].binaries) == {"etcd", "etcdctl"}
    assert comps["crictl"].requires == (("sigs.k8s.io/cri-tools", "v1.34.0"),)
    assert comps["coredns"].requires == (("github.com/coredns/coredns", "v1.12.1"),)
    assert dict(comps["coredns"].binaries) == {"coredns": "github.com/coredns/coredns"}
    assert comps["flannel"].requires == (("github.com/flannel-io/flannel", "v0.28.7"),)
    assert dict(comps["flannel"].binaries) == {"flanneld": "github.com/flannel-io/flannel"}
    # The CNI plugin has a wrapper of its own: flannel requires a containernetworking/plugins
    # without plugins/meta/flannel.
    assert comps["flannel-cni"].requires == (("github.com/containernetworking/plugins", "v0.9.1"),)
    assert dict(comps["flannel-cni"].binaries) == {
        "flannel": "github.com/containernetworking/plugins/plugins/meta/flannel"}
    for component in comps.values():
        assert set(component.checks) == set(component.binaries), component.name
        assert component.module == f"edge-provision.invalid/build/{component.name}"
    assert [c.name for c in comps.values() if c.git_commit] == ["kubernetes-modules"]
    assert {name: c.version for name, c in comps.items()} == {
        "kubernetes-modules": "1.34.12", "crictl": "1.34.0", "etcd": "3.6.17", "coredns": "1.12.1",
        "flannel": "0.28.7", "flannel-cni": "0.9.1", "containerd": "2.2.9", "runc": "1.4.4",
    }


def test_flannel_wrappers_require_one_module_each() -> None:
    comps = builder.flannel_components(FLANNEL)
    text = builder.wrapper_go_mod(comps["flannel-cni"].module, comps["flannel-cni"].requires, {}, go="1.22.0")
    assert "\tgithub.com/containernetworking/plugins v0.9.1\n" in text
    assert "flannel-io" not in text


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        ("go.etcd.io/etcd/server/v3", "server"),
        ("go.etcd.io/etcd/etcdctl/v3", "etcdctl"),
        ("sigs.k8s.io/cri-tools/cmd/crictl", "crictl"),
        ("github.com/coredns/coredns", "coredns"),
        ("github.com/flannel-io/flannel", "flannel"),
        ("github.com/containernetworking/plugins/plugins/meta/flannel", "flannel"),
    ],
)
def test_exec_name_is_what_go_build_writes(package: str, name: str) -> None:
    assert builder.exec_name(package) == name


# -- ldflags --------------------------------------------------------------------------------------


def test_kubernetes_ldflags_stamp_both_version_packages() -> None:
    flags = builder.ldflags(builder.components(PINS)["kubernetes-modules"], "2026-09-23T17:08:30Z")
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


def test_kubernetes_ldflags_stamp_no_commit_when_none_is_pinned() -> None:
    pins = builder.Pins("1.34.12", "", "1.34.0", "3.6.17", "1.12.1")
    flags = builder.ldflags(builder.components(pins)["kubernetes-modules"], builder.EPOCH_DATE)
    assert "gitCommit" not in flags and "buildDate=1970-01-01T00:00:00Z" in flags


def test_ldflags_of_the_other_components() -> None:
    comps = builder.components(PINS, FLANNEL)
    assert builder.ldflags(comps["crictl"], "x") == (
        "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=1.34.0"  # cri-tools' Makefile: no v
    )
    assert builder.ldflags(comps["etcd"], "x") == "-s -w"
    assert builder.ldflags(comps["coredns"], "x") == "-s -w"  # its version is a constant
    assert builder.ldflags(comps["flannel"], "x") == (
        "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=v0.28.7"
    )
    assert builder.ldflags(comps["flannel-cni"], "x") == (
        "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=v0.9.1"
    )


def test_version_checks() -> None:
    comps = builder.components(PINS, FLANNEL)
    kubernetes = comps["kubernetes-modules"].checks
    assert kubernetes["kubeadm"] == (("version", "-o", "short"), "v1.34.12", "v1.34.12")
    assert kubernetes["kubelet"] == (("--version",), "Kubernetes v1.34.12", "v1.34.12")
    assert kubernetes["kube-apiserver"].want == "Kubernetes v1.34.12"
    assert kubernetes["kubectl"] == (("version", "--client"), "Client Version: v1.34.12", "v1.34.12")
    assert comps["crictl"].checks["crictl"] == (("--version",), "crictl version 1.34.0", "1.34.0")
    assert comps["etcd"].checks["etcd"] == (("--version",), "etcd Version: 3.6.17", "3.6.17")
    assert comps["etcd"].checks["etcdctl"] == (("version",), "etcdctl version: 3.6.17", "3.6.17")
    assert comps["coredns"].checks["coredns"] == (("-version",), "CoreDNS-1.12.1", "1.12.1")
    assert comps["flannel"].checks["flanneld"] == (("--version",), "v0.28.7", "v0.28.7")
    assert comps["flannel-cni"].checks["flannel"] == ((), "CNI flannel plugin v0.9.1", "v0.9.1")


def _elf(machine: int, payload: bytes = b"") -> bytes:
    """A 64-bit little-endian ELF header without program headers (static), then ``payload``."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<H", header, 18, machine)
    struct.pack_into("<Q", header, 32, 64)
    struct.pack_into("<HH", header, 54, 56, 0)
    return bytes(header) + payload


def test_a_cross_built_binary_must_embed_its_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "host_arch", lambda: "amd64")
    check = builder.flannel_components(FLANNEL)["flannel"].checks["flanneld"]
    binary = tmp_path / "flanneld"
    binary.write_bytes(_elf(183, b"...v0.28.7..."))
    assert builder.check_binary(binary, "flanneld", "arm64", check) == "(cross-built: contains v0.28.7)"
    binary.write_bytes(_elf(183, b"...v0.28.6..."))
    with pytest.raises(builder.KubernetesModulesBuildError, match=r"does not embed its version v0\.28\.7"):
        builder.check_binary(binary, "flanneld", "arm64", check)
    binary.write_bytes(_elf(62, b"...v0.28.7..."))
    with pytest.raises(builder.KubernetesModulesBuildError, match="came out amd64"):
        builder.check_binary(binary, "flanneld", "arm64", check)


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
    key = builder.cache_key("amd64", comps["kubernetes-modules"], GO)
    assert key == builder.cache_key("amd64", comps["kubernetes-modules"], GO)
    newer = builder.Pins("1.34.13", PINS.git_commit, PINS.crictl_version, PINS.etcd_version, "1.12.1")
    other_commit = builder.Pins("1.34.12", "0" * 40, "1.34.0", "3.6.17", "1.12.1")
    others = {
        builder.cache_key("amd64", builder.components(newer)["kubernetes-modules"], GO),
        builder.cache_key("arm64", comps["kubernetes-modules"], GO),
        builder.cache_key("amd64", comps["kubernetes-modules"], "go1.26.9"),
        builder.cache_key("amd64", builder.components(other_commit)["kubernetes-modules"], GO),
        builder.cache_key("amd64", comps["crictl"], GO),
    }
    assert key not in others and len(others) == 5


def test_cache_keys_of_the_existing_builds_stay_put() -> None:
    """The keys of the builds in people's caches (1.34.12, crictl 1.34.0, etcd 3.6.17 with go1.26.8):
    a change here rebuilds 30 minutes of binaries, so make it on purpose (BUILDER_REVISION)."""
    comps = builder.components(PINS)
    assert {(name, arch): builder.cache_key(arch, comps[name], GO)
            for name in ("kubernetes-modules", "crictl", "etcd") for arch in ("amd64", "arm64")} == {
        ("kubernetes-modules", "amd64"): "b0964af70e94", ("kubernetes-modules", "arm64"): "4379d42f3d67",
        ("crictl", "amd64"): "40d066eb953b", ("crictl", "arm64"): "3248967c0745",
        ("etcd", "amd64"): "aa5c34dc1f05", ("etcd", "arm64"): "3af001c57cbf",
    }


def test_cache_keys_of_the_other_components_ignore_the_kubernetes_pin() -> None:
    newer = builder.Pins("1.34.13", "", PINS.crictl_version, PINS.etcd_version, PINS.coredns_version)
    for name in ("etcd", "coredns"):
        assert builder.cache_key("amd64", builder.components(newer)[name], GO) == builder.cache_key(
            "amd64", builder.components(PINS)[name], GO
        )
    keys = {builder.cache_key(arch, c, GO)
            for c in builder.components(PINS, FLANNEL).values() for arch in ("amd64", "arm64")}
    assert len(keys) == 12
    newer_cni = builder.FlannelPins("0.28.7", "0.9.0")
    assert builder.cache_key("amd64", builder.flannel_components(newer_cni)["flannel"], GO) == builder.cache_key(
        "amd64", builder.flannel_components(FLANNEL)["flannel"], GO
    )
    assert builder.cache_key("amd64", builder.flannel_components(newer_cni)["flannel-cni"], GO) != (
        builder.cache_key("amd64", builder.flannel_components(FLANNEL)["flannel-cni"], GO)
    )


def test_a_complete_cached_build_is_reused_without_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "go_version", lambda env=None: GO)
    monkeypatch.setattr(builder, "build_dir", lambda name, version, arch, key: tmp_path / name / key)
    versions = _versions(tmp_path, ENTRY)
    pins = builder.load_pins(versions)
    component = builder.components(pins)["crictl"]
    dest = tmp_path / "crictl" / builder.cache_key("amd64", component, GO)
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


def _cached(dest: Path, names: tuple[str, ...]) -> None:
    """A complete build of ``names`` in ``dest``, as the cache check sees one."""
    dest.mkdir(parents=True)
    for name in names:
        (dest / name).write_bytes(b"\x7fELF " + name.encode())
    (dest / "manifest.json").write_text(json.dumps({"files": {name: {
        "sha256": sha256_file(dest / name), "size": (dest / name).stat().st_size} for name in names}}))


def test_cached_coredns_and_flannel_builds_are_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "go_version", lambda env=None: GO)
    monkeypatch.setattr(builder, "build_dir", lambda name, version, arch, key: tmp_path / name / version / key)
    versions = _write(tmp_path, {
        builder.PIN_KEY: {"1.34": ENTRY, "1.35": {**ENTRY, "version": "1.35.1", "coredns_version": "1.12.4"}},
        builder.FLANNEL_PIN_KEY: {"version": "0.28.7", "cni_plugin_version": "0.9.1"},
    })
    comps = builder.components(builder.load_pins(versions, "1.35"), builder.load_flannel_pins(versions))
    expected = {}
    for name, component in comps.items():
        if name in ("coredns", "flannel", "flannel-cni"):
            expected[name] = tmp_path / name / component.version / builder.cache_key("arm64", component, GO)
            _cached(expected[name], tuple(component.binaries))
    assert builder.build_coredns("arm64", minor="1.35", versions_file=versions) == expected["coredns"]
    assert expected["coredns"].parent.name == "1.12.4"
    assert builder.build_flannel("arm64", versions_file=versions) == expected["flannel"]
    assert builder.build_flannel_cni("arm64", versions_file=versions) == expected["flannel-cni"]
    assert (expected["flannel"] / "flanneld").is_file() and (expected["flannel-cni"] / "flannel").is_file()


def test_the_cli_names_the_pinned_minors(capsys: pytest.CaptureFixture[str]) -> None:
    assert builder.main(["--minor", "1.99", "amd64", "coredns"]) == 1
    assert "no Kubernetes 1.99 pinned" in capsys.readouterr().err
    assert builder.main(["arm64", "calico"]) == 1
    assert "unknown component 'calico'" in capsys.readouterr().err


# -- cgo (flanneld on amd64) ------------------------------------------------------------------------


def test_only_flanneld_on_amd64_needs_cgo() -> None:
    comps = builder.components(PINS, FLANNEL)
    assert {name: c.cgo_arches for name, c in comps.items() if c.cgo_arches} == {"flannel": ("amd64",)}


def test_a_cgo_build_links_statically_with_go_resolvers() -> None:
    flannel = builder.flannel_components(FLANNEL)["flannel"]
    assert builder.ldflags(flannel, "x", cgo=True) == (
        "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=v0.28.7 -linkmode=external -extldflags=-static"
    )
    assert builder.go_build_args(flannel, "x", "OUT", cgo=True) == [
        "build", "-trimpath", "-buildvcs=false", "-tags=netgo,osusergo", "-ldflags",
        builder.ldflags(flannel, "x", cgo=True), "-o", "OUT/", "github.com/flannel-io/flannel",
    ]
    assert "-tags" not in " ".join(builder.go_build_args(flannel, "x", "OUT"))
    env = builder.build_env("amd64", {"PATH": "/usr/bin"}, cgo=True)
    assert env["CGO_ENABLED"] == "1" and builder.build_env("amd64", {"PATH": "/usr/bin"})["CGO_ENABLED"] == "0"


def test_the_c_toolchain_is_part_of_a_cgo_builds_key() -> None:
    flannel = builder.flannel_components(FLANNEL)["flannel"]
    plain = builder.cache_key("amd64", flannel, GO)
    assert builder.cache_key("amd64", flannel, GO, "") == plain
    gcc12 = builder.cache_key("amd64", flannel, GO, "gcc (Debian 12.2.0-14) 12.2.0; ldd (Debian GLIBC 2.36-9) 2.36")
    gcc13 = builder.cache_key("amd64", flannel, GO, "gcc (Debian 13.1.0-1) 13.1.0; ldd (Debian GLIBC 2.36-9) 2.36")
    assert len({plain, gcc12, gcc13}) == 3


def test_a_cgo_build_is_native_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "host_arch", lambda: "arm64")
    monkeypatch.setattr(builder, "go_version", lambda env=None: GO)
    with pytest.raises(builder.KubernetesModulesBuildError, match="needs cgo: build it on an amd64 machine"):
        builder.build_flannel("amd64")


def test_a_cgo_build_without_a_c_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "host_arch", lambda: "amd64")
    monkeypatch.setattr(builder, "go_version", lambda env=None: GO)
    monkeypatch.setattr(builder, "c_toolchain", lambda env: None)
    with pytest.raises(builder.KubernetesModulesBuildError, match="no C compiler") as info:
        builder.build_flannel("amd64")
    assert info.value.step == "find cc"


# -- containerd and runc ----------------------------------------------------------------------------

CONTAINERD_ENTRY = {"version": "2.2.9", "runc_version": "1.4.4"}


def test_versions_yml_pins_containerd_2_and_runc_1_4() -> None:
    pins = builder.load_containerd_pins()
    assert pins.version.startswith("2.") and pins.runc_version.startswith("1.4.")
    data = yaml.safe_load(builder.VERSIONS_FILE.read_text())
    assert "downloads" not in data[builder.CONTAINERD_PIN_KEY]  # built, never fetched


def test_load_containerd_pins_strips_a_leading_v(tmp_path: Path) -> None:
    path = _write(tmp_path, {builder.CONTAINERD_PIN_KEY: {"version": "v2.2.9", "runc_version": "v1.4.4"}})
    assert builder.load_containerd_pins(path) == CONTAINERD


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (None, "'containerd_build'"),
        ({"version": "2.2.9"}, "'runc_version'"),
        ("2.2.9", "containerd_build.version"),
        ({"version": "2.2", "runc_version": "1.4.4"}, "containerd_build.version is '2.2'"),
        ({"version": "2.2.9", "runc_version": "latest"}, "containerd_build.runc_version is 'latest'"),
        ({"version": "1.7.22", "runc_version": "1.4.4"}, "want a 2.x release"),
    ],
)
def test_bad_containerd_pins_fail_naming_the_key(tmp_path: Path, entry: object, words: str) -> None:
    data = {builder.PIN_KEY: {"1.34": ENTRY}, **({builder.CONTAINERD_PIN_KEY: entry} if entry else {})}
    with pytest.raises(builder.KubernetesModulesBuildError, match="read pins") as info:
        builder.load_containerd_pins(_write(tmp_path, data))
    assert words in str(info.value)


def test_containerd_components_come_from_containerd_build(tmp_path: Path) -> None:
    path = _write(tmp_path, {builder.CONTAINERD_PIN_KEY: CONTAINERD_ENTRY})
    assert builder.pinned_component("containerd", minor="1.99", versions_file=path).version == "2.2.9"
    assert builder.pinned_component("runc", versions_file=path) == builder.containerd_components(CONTAINERD)["runc"]
    with pytest.raises(builder.KubernetesModulesBuildError, match="'containerd_build'"):
        builder.pinned_component("runc", versions_file=_write(tmp_path, {builder.PIN_KEY: {"1.34": ENTRY}}))


def test_containerd_is_built_without_cgo_through_its_own_wrapper() -> None:
    containerd = builder.containerd_components(CONTAINERD)["containerd"]
    assert containerd.module == "edge-provision.invalid/build/containerd"
    assert containerd.requires == (("github.com/containerd/containerd/v2", "v2.2.9"),)
    assert dict(containerd.binaries) == {
        "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
        "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
        "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
    }
    assert [builder.exec_name(p) for p in containerd.binaries.values()] == list(containerd.binaries)
    assert containerd.cgo_arches == () and containerd.tags == () and containerd.c_packages == ()
    version = "github.com/containerd/containerd/v2/version"
    assert builder.ldflags(containerd, "x") == (
        f"-s -w -X {version}.Version=v2.2.9 -X {version}.Package=github.com/containerd/containerd/v2"
    )
    assert builder.ldflags(containerd, "x", commit="c0ffee") == (
        builder.ldflags(containerd, "x") + f" -X {version}.Revision=c0ffee"
    )
    assert "-tags" not in " ".join(builder.go_build_args(containerd, "x", "OUT"))
    assert containerd.checks == {
        "containerd": (("--version",), "containerd github.com/containerd/containerd/v2 v2.2.9", "v2.2.9"),
        "ctr": (("--version",), "ctr github.com/containerd/containerd/v2 v2.2.9", "v2.2.9"),
        "containerd-shim-runc-v2": (("-v",), "Version:  v2.2.9", "v2.2.9"),
    }


def test_runc_is_a_static_cgo_build_with_seccomp() -> None:
    runc = builder.containerd_components(CONTAINERD)["runc"]
    assert runc.requires == (("github.com/opencontainers/runc", "v1.4.4"),)
    assert dict(runc.binaries) == {"runc": "github.com/opencontainers/runc"}
    assert runc.cgo_arches == ("amd64", "arm64")  # nsenter is C on every arch
    assert runc.tags == ("seccomp", "urfave_cli_no_docs")  # runc's Makefile: BUILDTAGS
    assert runc.c_packages == ("libseccomp-dev",)
    assert builder.go_build_args(runc, "x", "OUT", cgo=True, commit="c0ffee") == [
        "build", "-trimpath", "-buildvcs=false", "-tags=netgo,osusergo,seccomp,urfave_cli_no_docs", "-ldflags",
        "-s -w -X main.version=1.4.4 -X main.gitCommit=c0ffee -linkmode=external -extldflags=-static",
        "-o", "OUT/", "github.com/opencontainers/runc",
    ]
    assert "gitCommit" not in builder.ldflags(runc, "x", cgo=True)
    assert runc.checks["runc"] == (("--version",), "runc version 1.4.4", "1.4.4")
    assert "libseccomp: " in runc.features["runc"]


def test_only_the_commit_stamps_take_a_commit() -> None:
    comps = builder.components(PINS, FLANNEL, CONTAINERD)
    assert {name: c.commit_stamps for name, c in comps.items() if c.commit_stamps} == {
        "containerd": ("github.com/containerd/containerd/v2/version.Revision",),
        "runc": ("main.gitCommit",),
    }
    for name in ("crictl", "flannel", "kubernetes-modules"):
        assert builder.ldflags(comps[name], "x", commit="c0ffee") == builder.ldflags(comps[name], "x"), name


def test_build_tags_are_part_of_the_cache_key() -> None:
    runc = builder.containerd_components(CONTAINERD)["runc"]
    untagged = builder.Component(runc.name, runc.version, runc.requires, runc.binaries, cgo_arches=runc.cgo_arches)
    assert builder.cache_key("amd64", runc, GO, "gcc") != builder.cache_key("amd64", untagged, GO, "gcc")
    keys = {builder.cache_key(arch, c, GO) for c in builder.containerd_components(CONTAINERD).values()
            for arch in ("amd64", "arm64")}
    assert len(keys) == 4


def test_runc_for_arm64_is_refused_on_an_amd64_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "host_arch", lambda: "amd64")
    monkeypatch.setattr(builder, "go_version", lambda env=None: GO)
    with pytest.raises(builder.KubernetesModulesBuildError, match="runc for arm64 needs cgo: build it on an arm64"):
        builder.build_runc("arm64")


@pytest.mark.parametrize(("compiler", "libseccomp"), [(None, "2.5.4-1+deb12u1"), ("gcc 12", ""), (None, "")])
def test_runc_without_its_c_toolchain_names_the_packages(
    monkeypatch: pytest.MonkeyPatch, compiler: str | None, libseccomp: str
) -> None:
    monkeypatch.setattr(builder, "host_arch", lambda: "amd64")
    monkeypatch.setattr(builder, "go_version", lambda env=None: GO)
    monkeypatch.setattr(builder, "c_toolchain", lambda env: compiler)
    monkeypatch.setattr(builder, "package_version", lambda package: libseccomp)
    with pytest.raises(builder.KubernetesModulesBuildError) as info:
        builder.build_runc("amd64")
    assert info.value.step == "find cc"
    assert "apt-get install gcc libc6-dev libseccomp-dev" in str(info.value)
    assert ("no C compiler" if compiler is None else "libseccomp-dev, which is not installed") in str(info.value)


def test_libseccomps_version_is_part_of_runcs_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "host_arch", lambda: "amd64")
    monkeypatch.setattr(builder, "go_version", lambda env=None: GO)
    monkeypatch.setattr(builder, "c_toolchain", lambda env: "gcc 12; ldd 2.36")
    monkeypatch.setattr(builder, "package_version", lambda package: "2.5.4-1+deb12u1")
    monkeypatch.setattr(builder, "build_dir", lambda name, version, arch, key: tmp_path / name / key)
    versions = _write(tmp_path, {builder.CONTAINERD_PIN_KEY: CONTAINERD_ENTRY})
    runc = builder.containerd_components(CONTAINERD)["runc"]
    dest = tmp_path / "runc" / builder.cache_key("amd64", runc, GO, "gcc 12; ldd 2.36; libseccomp-dev 2.5.4-1+deb12u1")
    _cached(dest, ("runc",))
    assert builder.build_runc("amd64", versions_file=versions) == dest
    assert dest.name != builder.cache_key("amd64", runc, GO, "gcc 12; ldd 2.36; libseccomp-dev 2.6.0-2")


def test_a_native_binary_must_show_its_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "host_arch", lambda: "amd64")
    runc = builder.containerd_components(CONTAINERD)["runc"]
    binary = tmp_path / "runc"
    binary.write_bytes(_elf(62))
    with_seccomp = "runc version 1.4.4\nspec: 1.3.0\ngo: go1.26.8\nlibseccomp: 2.5.4\n"
    monkeypatch.setattr(builder, "run", lambda *args, **kwargs: with_seccomp)
    assert builder.check_binary(binary, "runc", "amd64", runc.checks["runc"], runc.features["runc"]) == (
        with_seccomp.strip())
    monkeypatch.setattr(builder, "run", lambda *args, **kwargs: "runc version 1.4.4\nspec: 1.3.0\ngo: go1.26.8")
    with pytest.raises(builder.KubernetesModulesBuildError, match="'libseccomp: '"):
        builder.check_binary(binary, "runc", "amd64", runc.checks["runc"], runc.features["runc"])


# -- containerd's release files ---------------------------------------------------------------------


def _binaries(directory: Path, names: tuple[str, ...], tag: bytes = b"") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"\x7fELF " + name.encode() + tag)
    return directory


def test_the_containerd_tarball_is_upstreams_layout(tmp_path: Path) -> None:
    bindir = _binaries(tmp_path / "bin", tuple(builder.CONTAINERD_BINARIES))
    tarball = tmp_path / builder.containerd_tarball_name("2.2.9", "amd64")
    assert tarball.name == "containerd-2.2.9-linux-amd64.tar.gz"
    builder.write_containerd_tarball(bindir, tarball, mtime=1_790_000_000)
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["bin/containerd", "bin/ctr", "bin/containerd-shim-runc-v2"]
        for member in members:
            assert member.isfile() and member.mode == 0o755 and (member.uid, member.gid) == (0, 0)
            assert member.mtime == 1_790_000_000
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read() == (bindir / member.name.removeprefix("bin/")).read_bytes()
    header = tarball.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08" and header[4:8] == b"\0\0\0\0"  # gzip, no time
    assert header[3] & 0x08 == 0  # no file name


def test_the_containerd_tarball_is_reproducible(tmp_path: Path) -> None:
    bindir = _binaries(tmp_path / "bin", tuple(builder.CONTAINERD_BINARIES))
    first, second = tmp_path / "first.tar.gz", tmp_path / "second.tar.gz"
    builder.write_containerd_tarball(bindir, first)
    for binary in bindir.iterdir():  # the files' own times and modes do not matter
        binary.chmod(0o600)
        os.utime(binary, (1, 1))
    builder.write_containerd_tarball(bindir, second)
    assert sha256_file(first) == sha256_file(second)
    (bindir / "ctr").write_bytes(b"\x7fELF another ctr")
    builder.write_containerd_tarball(bindir, second)
    assert sha256_file(first) != sha256_file(second)


def _fake_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runc_tag: bytes = b"") -> dict[str, Path]:
    """containerd and runc builds as build_component leaves them, without go."""
    containerd = _binaries(tmp_path / "containerd", tuple(builder.CONTAINERD_BINARIES))
    (containerd / "manifest.json").write_text(json.dumps({"modules": {
        "github.com/containerd/containerd/v2": {"version": "v2.2.9", "time": "2026-09-24T23:07:01Z"}}}))
    runc = _binaries(tmp_path / "runc", ("runc",), runc_tag)
    (runc / "manifest.json").write_text(json.dumps({"files": {"runc": {
        "sha256": sha256_file(runc / "runc"), "size": (runc / "runc").stat().st_size}}}))
    built = {"containerd": containerd, "runc": runc}
    monkeypatch.setattr(builder, "build_component", lambda name, arch, **kwargs: built[name])
    return built


def test_containerd_release_files_look_like_fetched_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = _fake_builds(tmp_path, monkeypatch)
    versions = _write(tmp_path, {builder.CONTAINERD_PIN_KEY: CONTAINERD_ENTRY})
    files = builder.containerd_release_files("amd64", versions_file=versions)
    release = built["containerd"] / "release"
    assert files == [
        {"name": "containerd_release", "version": "2.2.9", "file": "containerd-2.2.9-linux-amd64.tar.gz",
         "path": str(release / "containerd-2.2.9-linux-amd64.tar.gz"),
         "sha256": sha256_file(release / "containerd-2.2.9-linux-amd64.tar.gz"),
         "url": "build:github.com/containerd/containerd/v2@v2.2.9"},
        {"name": "runc_release", "version": "1.4.4", "file": "runc.amd64", "path": str(release / "runc.amd64"),
         "sha256": sha256_file(built["runc"] / "runc"), "url": "build:github.com/opencontainers/runc@v1.4.4"},
    ]
    with tarfile.open(release / "containerd-2.2.9-linux-amd64.tar.gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1_790_291_221}  # the tag's time on the proxy
    assert (release / "runc.amd64").stat().st_mode & 0o777 == 0o755


def test_containerd_release_files_are_kept_until_runc_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_builds(tmp_path, monkeypatch)
    versions = _write(tmp_path, {builder.CONTAINERD_PIN_KEY: CONTAINERD_ENTRY})
    first = builder.containerd_release_files("amd64", versions_file=versions)
    tarball = Path(first[0]["path"])
    made = tarball.stat().st_ino
    assert builder.containerd_release_files("amd64", versions_file=versions) == first
    assert tarball.stat().st_ino == made
    shutil.rmtree(tmp_path / "runc")
    _fake_builds(tmp_path, monkeypatch, runc_tag=b" rebuilt")
    again = builder.containerd_release_files("amd64", versions_file=versions)
    assert again[0]["sha256"] == first[0]["sha256"]  # the same containerd binaries: the same bytes
    assert again[1]["sha256"] != first[1]["sha256"]
    assert Path(again[1]["path"]).read_bytes() == b"\x7fELF runc rebuilt"
