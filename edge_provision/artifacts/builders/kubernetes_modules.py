"""Build Kubernetes (crictl, etcd, CoreDNS), flannel, containerd and runc from their Go modules,
through small wrapper modules.

Inputs, pinned in ``edge_provision/artifacts/versions.yml``: ``kubernetes:`` holds one entry per
Kubernetes minor (``"1.34":``; :data:`DEFAULT_MINOR` is the one built unless ``minor=`` says
otherwise, :func:`load_pins`), ``flannel:`` one entry (:func:`load_flannel_pins`),
``containerd_build:`` one (:func:`load_containerd_pins`).

* ``version`` (``1.34.12``): ``k8s.io/kubernetes`` v<version>. Its go.mod requires the staging
  modules (``k8s.io/api``, ``k8s.io/client-go``, ...) at ``v0.0.0`` and replaces them with
  ``./staging/src/...`` directories that its module zip leaves out; a ``replace`` in a dependency
  is ignored anyway. So the build writes a wrapper go.mod of its own that requires
  ``k8s.io/kubernetes`` and replaces each staging module the release requires by its published
  ``v0.<minor>.<patch>``. The list is read from the downloaded go.mod (``go mod edit -json``), not
  hard-coded. The wrapper copies its ``go`` and ``godebug`` lines, so the binaries get the
  GODEBUG defaults of upstream's build.
* ``git_commit``: stamped as gitCommit, and checked against the proxy's origin record when it has
  one. The build date is the version's time on the proxy (the tag's commit time), so two builds of
  one pin are the same bytes.
* ``crictl_version``: ``sigs.k8s.io/cri-tools`` (``cmd/crictl``), through a wrapper as well.
* ``etcd_version``: ``go.etcd.io/etcd/server/v3`` (package main at its root) and
  ``go.etcd.io/etcd/etcdctl/v3``; their go.mod files replace the sibling modules (api, client,
  pkg) with ``../`` paths, so the wrapper pins those at the versions the release requires.
* ``coredns_version``: ``github.com/coredns/coredns`` (package main at its root; its version is a
  constant, ``coredns -version`` prints ``CoreDNS-<version>``; nothing stamped).
* ``flannel.version``: ``github.com/flannel-io/flannel`` (package main at its root) as
  ``flanneld``, its ``pkg/version.Version`` stamped ``v<version>`` as upstream's Makefile does.
  On amd64 its UDP backend calls C (``runCProxy``), so, as upstream does, flanneld for amd64 is
  built with cgo and linked statically against the machine's glibc (gcc and libc6-dev needed;
  ``-tags netgo,osusergo`` keep NSS out; native builds only: :data:`CGO_TAGS`,
  :data:`CGO_LDFLAGS`, the compiler and libc in the cache key). arm64 is CGO_ENABLED=0 like
  upstream's arm64 build (``backend: udp`` says "not supported"; vxlan, host-gw, wireguard work).
* ``flannel.cni_plugin_version``: the ``flannel`` CNI meta plugin (reads
  ``/run/flannel/subnet.env``, delegates to ``bridge``) from
  ``github.com/containernetworking/plugins/plugins/meta/flannel``, its
  ``pkg/utils/buildversion.BuildVersion`` stamped ``v<version>`` as upstream's release.sh does. A
  wrapper of its own (component ``flannel-cni``): flannel requires containernetworking/plugins
  v1.10.0, and one module graph holds one version of a module.
* ``containerd_build.version``: ``github.com/containerd/containerd/v2`` as ``containerd``, ``ctr``
  and ``containerd-shim-runc-v2``, CGO_ENABLED=0 (the btrfs snapshotter needs cgo and drops out),
  its ``version.Version``, ``version.Package`` (and ``version.Revision`` when the proxy's origin
  record gives the commit) stamped as upstream's Makefile does.
* ``containerd_build.runc_version``: ``github.com/opencontainers/runc`` as ``runc``, with cgo on
  every arch (nsenter is C) and ``-tags seccomp,urfave_cli_no_docs`` as upstream's Makefile,
  linked statically like flanneld against the machine's libseccomp.a (libseccomp-dev, its
  version in the cache key: :attr:`Component.c_packages`); ``main.version`` stamped (and
  ``main.gitCommit`` when the proxy gives the commit). Native builds only, so amd64 here.
  :func:`containerd_release_files` lays both out as upstream's release files
  (``containerd-<version>-linux-<arch>.tar.gz``, ``runc.<arch>``), byte-reproducible.

The Go toolchain is the machine's ``go`` (``GOTOOLCHAIN=local``; etcd 3.6.17 needs Go >= 1.26.0),
modules come from ``GOPROXY`` as the environment sets it. ``GOMODCACHE`` and ``GOCACHE`` live
under ``<cache>/go/`` (:data:`GO_DIR`), shared by every build, version and architecture: a second
build recompiles only what changed. Every binary is static (``CGO_ENABLED=0``, but flanneld on
amd64 and runc), stripped (``-s -w``) and ``-trimpath``, so ``arch="arm64"`` cross-builds on amd64
with no C toolchain (but runc: refused there).

Output: one cache directory per component (``kubernetes-modules``, ``crictl``, ``etcd``,
``coredns``, ``flannel``, ``flannel-cni``, ``containerd``, ``runc``;
:func:`edge_provision.artifacts.build_dir`, keyed by everything that shapes the build) with the
binaries, ``manifest.json`` (sha256 and size of each, the versions they report) and the wrapper's
``go.mod``/``go.sum`` under ``wrapper/``. Built in a work directory beside the cache and renamed
into place (:func:`~edge_provision.artifacts.builders._common.staged_build`). The go commands run
at ``nice 19``. Measured on 2 shared cores (Go 1.26.8): amd64 from empty Go caches 15.5 min for the
first three (Kubernetes 12.7, crictl 1.8, etcd 1.1; downloads included, 1.2 GB of modules, 3.7 GB
of build cache), arm64 after it 12 min; peak RSS 1.9 GB (the linker); a cache hit 0.4 s, a
rebuild with a warm Go cache 23 s, byte-identical. Binaries: 57-102 MB each (kube-apiserver the
largest). CoreDNS, flanneld and the flannel CNI plugin, each from an empty
build cache (modules already downloaded; the machine busy with other work): amd64 4.8, 3.7 (cgo)
and 0.2 min, arm64 3.6, 2.9 and 0.4 min, byte-identical to builds on the shared warm cache; 0.9 GB
of build cache for CoreDNS, 0.7 GB for flanneld; peak RSS 1.2 GB. Binaries: coredns 72 MB
(arm64 67), flanneld 52 MB (48), flannel 2.7 MB. containerd and runc (the machine busy with a
lab): from empty Go caches (0.6 GB of modules, 0.7 GB of build cache) amd64 4.1 and 0.7 min, on the
shared cache 2.2 and 0.3 min, containerd for arm64 after it 2 min; byte-identical; peak RSS 0.7 GB.
Binaries: containerd 44 MB (arm64 41), ctr 23, containerd-shim-runc-v2 15, runc 10 MB; the
release tarball 29 MB.

``python -m edge_provision.artifacts.builders.kubernetes_modules [--minor 1.34] [amd64|arm64]
[component ...]`` builds into the cache and prints the directories.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edge_provision.artifacts import (
    CACHE_DIR,
    ArtifactBuildError,
    build_dir,
    input_key,
    run,
    sha256_file,
)
from edge_provision.artifacts.builders._common import (
    PINS_STEP,
    cached_manifest,
    load_versions,
    staged_build,
    static_elf_problem,
)
from edge_provision.artifacts.debian import host_arch, package_version
from edge_provision.artifacts.fetch import VERSIONS_FILE

log = logging.getLogger(__name__)

# Bump when the build steps change in a way that changes the output (the cache key includes it).
BUILDER_REVISION = "1"
PIN_KEY = "kubernetes"  # versions.yml: kubernetes: {"<minor>": {version: ..., ...}}
FLANNEL_PIN_KEY = "flannel"
CONTAINERD_PIN_KEY = "containerd_build"
# The Kubernetes minor built when no one asks for another (the fleet's edge_kubernetes_version).
DEFAULT_MINOR = "1.34"

KUBERNETES_MODULE = "k8s.io/kubernetes"
# Binary name -> main package. The server binaries of a kubeadm node and the client.
KUBERNETES_BINARIES: Mapping[str, str] = {
    "kubeadm": "k8s.io/kubernetes/cmd/kubeadm",
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
# The packages Kubernetes' hack/lib/version.sh stamps (both carry the same fields).
KUBERNETES_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
CRICTL_MODULE = "sigs.k8s.io/cri-tools"
CRICTL_BINARIES: Mapping[str, str] = {"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"}
CRICTL_VERSION_VAR = "sigs.k8s.io/cri-tools/pkg/version.Version"
ETCD_SERVER_MODULE = "go.etcd.io/etcd/server/v3"
ETCDCTL_MODULE = "go.etcd.io/etcd/etcdctl/v3"
ETCD_BINARIES: Mapping[str, str] = {"etcd": ETCD_SERVER_MODULE, "etcdctl": ETCDCTL_MODULE}
COREDNS_MODULE = "github.com/coredns/coredns"
COREDNS_BINARIES: Mapping[str, str] = {"coredns": COREDNS_MODULE}
FLANNEL_MODULE = "github.com/flannel-io/flannel"
FLANNEL_BINARIES: Mapping[str, str] = {"flanneld": FLANNEL_MODULE}
FLANNEL_VERSION_VAR = "github.com/flannel-io/flannel/pkg/version.Version"
CNI_PLUGINS_MODULE = "github.com/containernetworking/plugins"
FLANNEL_CNI_BINARIES: Mapping[str, str] = {"flannel": f"{CNI_PLUGINS_MODULE}/plugins/meta/flannel"}
CNI_PLUGINS_VERSION_VAR = f"{CNI_PLUGINS_MODULE}/pkg/utils/buildversion.BuildVersion"
CONTAINERD_MODULE = "github.com/containerd/containerd/v2"
CONTAINERD_BINARIES: Mapping[str, str] = {
    "containerd": f"{CONTAINERD_MODULE}/cmd/containerd",
    "ctr": f"{CONTAINERD_MODULE}/cmd/ctr",
    "containerd-shim-runc-v2": f"{CONTAINERD_MODULE}/cmd/containerd-shim-runc-v2",
}
CONTAINERD_VERSION_PACKAGE = f"{CONTAINERD_MODULE}/version"
RUNC_MODULE = "github.com/opencontainers/runc"
RUNC_BINARIES: Mapping[str, str] = {"runc": RUNC_MODULE}
# runc's Makefile: BUILDTAGS (urfave_cli_no_docs leaves out the man page generator).
RUNC_TAGS = ("seccomp", "urfave_cli_no_docs")
# Components by the pins they come from: a Kubernetes minor's entry, flannel's or containerd_build's.
KUBERNETES_COMPONENTS = ("kubernetes-modules", "crictl", "etcd", "coredns")
FLANNEL_COMPONENTS = ("flannel", "flannel-cni")
CONTAINERD_COMPONENTS = ("containerd", "runc")
# What a kubeadm cluster's nodes run (build_all, `edge-provision artifacts build`); containerd and
# runc are built on demand, for containerd_release_build.
CLUSTER_COMPONENTS = KUBERNETES_COMPONENTS + FLANNEL_COMPONENTS
# The entries of containerd_release_files(), named as versions.yml's release downloads.
CONTAINERD_RELEASE = "containerd_release"
RUNC_RELEASE = "runc_release"

# Debian architecture -> GOARCH, and the GOARCH's baseline level (an inherited GOAMD64=v3 would
# make binaries some edge CPUs cannot run, and change the bytes).
GOARCHES: Mapping[str, str] = {"amd64": "amd64", "arm64": "arm64"}
GO_LEVELS: Mapping[str, tuple[str, str]] = {"amd64": ("GOAMD64", "v1"), "arm64": ("GOARM64", "v8.0")}
# What shapes every build besides the pins and the toolchain (part of the cache key).
BUILD_ENV: Mapping[str, str] = {
    "CGO_ENABLED": "0",
    "GOOS": "linux",
    "GOFLAGS": "-mod=mod",
    "GOWORK": "off",
    "GOTOOLCHAIN": "local",
}
BUILD_FLAGS = ("-trimpath", "-buildvcs=false")
STRIP_LDFLAGS = ("-s", "-w")
# A component that needs cgo on an arch (Component.cgo_arches) is linked statically against the
# machine's libc as its upstream does (-extldflags -static), with Go's own DNS resolver and user
# lookup (netgo, osusergo: a static glibc binary must not load NSS modules). Native only.
CGO_TAGS = "netgo,osusergo"
CGO_LDFLAGS = ("-linkmode=external", "-extldflags=-static")
# Shared by every build: downloaded modules and Go's build cache.
GO_DIR = CACHE_DIR / "go"
WRAPPER_PREFIX = "edge-provision.invalid/build"
NICE = "19"  # the build shares its machine (lab tests, people): do not starve them
EPOCH_DATE = "1970-01-01T00:00:00Z"
_RELEASE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
_MINOR = re.compile(r"[0-9]+\.[0-9]+")
_LOCAL_PATH = re.compile(r"^\.\.?/")
_MAJOR_SUFFIX = re.compile(r"^v[0-9]+$")


class KubernetesModulesBuildError(ArtifactBuildError):
    """A step of the build of Kubernetes, crictl, etcd, CoreDNS, flannel, containerd or runc from Go
    modules failed."""

    build = "kubernetes modules build"


@dataclass(frozen=True)
class Pins:
    """One Kubernetes minor's entry of versions.yml (``kubernetes: "1.34": ...``)."""

    version: str  # Kubernetes, e.g. "1.34.12"
    git_commit: str  # its tag's commit ("" when unknown)
    crictl_version: str  # e.g. "1.34.0"
    etcd_version: str  # e.g. "3.6.17"
    coredns_version: str  # e.g. "1.12.1"

    @property
    def minor(self) -> str:
        """1.34.12 -> 1.34: the key of its entry."""
        return self.version.rsplit(".", 1)[0]

    @property
    def staging_version(self) -> str:
        """The staging modules' version of a Kubernetes release: 1.34.12 -> 0.34.12."""
        return "0." + self.version.split(".", 1)[1]


@dataclass(frozen=True)
class FlannelPins:
    """versions.yml ``flannel:``."""

    version: str  # flanneld, github.com/flannel-io/flannel, e.g. "0.28.7"
    cni_plugin_version: str  # the flannel CNI plugin, github.com/containernetworking/plugins, e.g. "0.9.1"


@dataclass(frozen=True)
class ContainerdPins:
    """versions.yml ``containerd_build:``."""

    version: str  # github.com/containerd/containerd/v2, e.g. "2.2.9"
    runc_version: str  # github.com/opencontainers/runc, e.g. "1.4.4"


class VersionCheck(NamedTuple):
    """How a built binary shows its version."""

    args: tuple[str, ...]  # run natively with these arguments ...
    want: str  # ... its output (stdout and stderr) contains this
    embedded: str  # a cross-built binary's bytes contain this


@dataclass(frozen=True)
class Component:
    """One wrapper module and the binaries built through it."""

    name: str  # cache name: kubernetes-modules, crictl, etcd, coredns, flannel, flannel-cni, ...
    version: str  # of the cache directory (no leading v)
    requires: tuple[tuple[str, str], ...]  # (module, version) the wrapper requires
    binaries: Mapping[str, str]  # binary name -> main package
    # Version of a staging module that the upstream go.mod requires at v0.0.0 (Kubernetes).
    local_fallback: str = ""
    # The first required module's commit: checked against the proxy's origin record, stamped and
    # part of the cache key (Kubernetes; "" for the others).
    git_commit: str = ""
    stamps: tuple[tuple[str, str], ...] = ()  # (-X variable, value) for go build -ldflags
    checks: Mapping[str, VersionCheck] = field(default_factory=dict)  # by binary name
    # Architectures whose build needs cgo (flanneld on amd64: its UDP backend's C proxy).
    cgo_arches: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # go build -tags (beside CGO_TAGS in a cgo build); in the cache key
    # -X variables given the first module's commit: git_commit, else the proxy's origin record
    # (unstamped when it has none).
    commit_stamps: tuple[str, ...] = ()
    # Debian packages whose static libraries a cgo build links (runc: libseccomp-dev); their
    # installed versions are part of the cache key.
    c_packages: tuple[str, ...] = ()
    # By binary name: what else its native version output must show (runc: its libseccomp).
    features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return f"{WRAPPER_PREFIX}/{self.name}"


def _release(value: object) -> str:
    return str(value).removeprefix("v")


def _check_releases(fields: Iterable[tuple[str, str]], versions_file: Path) -> None:
    for name, value in fields:
        if not _RELEASE.fullmatch(value):
            raise KubernetesModulesBuildError(
                PINS_STEP, f"{name} is {value!r} in {versions_file}; want a release X.Y.Z"
            )


def pinned_minors(versions_file: Path = VERSIONS_FILE) -> list[str]:
    """The Kubernetes minors versions.yml pins (the keys of ``kubernetes:``), sorted."""
    entries = _minor_entries(load_versions(versions_file, KubernetesModulesBuildError), versions_file)
    return sorted(entries, key=lambda m: tuple(int(p) for p in m.split(".")))


def _minor_entries(data: Any, versions_file: Path) -> dict[str, Any]:
    entries = data.get(PIN_KEY) if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{versions_file} lacks {PIN_KEY}: (a mapping of minor versions, e.g. "
            f'{PIN_KEY}: {{"{DEFAULT_MINOR}": {{version: ...}}}})'
        )
    for key in entries:
        if not isinstance(key, str) or not _MINOR.fullmatch(key):
            raise KubernetesModulesBuildError(
                PINS_STEP, f"{PIN_KEY}: has the key {key!r} in {versions_file}; want a quoted minor "
                f'version like "{DEFAULT_MINOR}" (unquoted, YAML reads 1.30 as the number 1.3)'
            )
    return entries


def load_pins(versions_file: Path = VERSIONS_FILE, minor: str = DEFAULT_MINOR) -> Pins:
    """The pins of Kubernetes ``minor`` (``kubernetes: "<minor>":`` of versions.yml)."""
    minor = str(minor).removeprefix("v")
    if not _MINOR.fullmatch(minor):
        raise KubernetesModulesBuildError(PINS_STEP, f"minor is {minor!r}; want a minor version like 1.34")
    entries = _minor_entries(load_versions(versions_file, KubernetesModulesBuildError), versions_file)
    where = f'{PIN_KEY}."{minor}"'
    if minor not in entries:
        raise KubernetesModulesBuildError(
            PINS_STEP, f"no Kubernetes {minor} pinned in {versions_file} (pinned minors: "
            f"{', '.join(pinned_minors(versions_file))}); add a {where} entry"
        )
    entry = entries[minor]
    if not isinstance(entry, dict):
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{where} is {entry!r} in {versions_file}; want a mapping (version, git_commit, "
            "crictl_version, etcd_version, coredns_version)"
        )
    try:
        pins = Pins(
            version=_release(entry["version"]),
            git_commit=str(entry.get("git_commit") or ""),
            crictl_version=_release(entry["crictl_version"]),
            etcd_version=_release(entry["etcd_version"]),
            coredns_version=_release(entry["coredns_version"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{versions_file}: {where} lacks {exc} (need version, crictl_version, etcd_version, "
            "coredns_version)"
        ) from exc
    _check_releases(((f"{where}.version", pins.version), (f"{where}.crictl_version", pins.crictl_version),
                     (f"{where}.etcd_version", pins.etcd_version),
                     (f"{where}.coredns_version", pins.coredns_version)), versions_file)
    if pins.minor != minor:
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{where}.version is {pins.version!r} in {versions_file}; want a {minor} release"
        )
    if pins.git_commit and not re.fullmatch(r"[0-9a-f]{40}", pins.git_commit):
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{where}.git_commit is {pins.git_commit!r} in {versions_file}; want 40 hex digits"
        )
    return pins


def _release_entry(key: str, fields: Sequence[str], versions_file: Path) -> dict[str, str]:
    """versions.yml's ``key:`` entry: each of ``fields`` as a release (no leading v), checked."""
    data = load_versions(versions_file, KubernetesModulesBuildError)
    try:
        values = {name: _release(data[key][name]) for name in fields}
    except (KeyError, TypeError, AttributeError) as exc:
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{versions_file} lacks {exc} (need {', '.join(f'{key}.{name}' for name in fields)})"
        ) from exc
    _check_releases(((f"{key}.{name}", value) for name, value in values.items()), versions_file)
    return values


def load_flannel_pins(versions_file: Path = VERSIONS_FILE) -> FlannelPins:
    """The ``flannel:`` pins of versions.yml."""
    return FlannelPins(**_release_entry(FLANNEL_PIN_KEY, ("version", "cni_plugin_version"), versions_file))


def load_containerd_pins(versions_file: Path = VERSIONS_FILE) -> ContainerdPins:
    """The ``containerd_build:`` pins of versions.yml."""
    pins = ContainerdPins(**_release_entry(CONTAINERD_PIN_KEY, ("version", "runc_version"), versions_file))
    if not pins.version.startswith("2."):
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{CONTAINERD_PIN_KEY}.version is {pins.version!r} in {versions_file}; want a 2.x "
            f"release (the build is of {CONTAINERD_MODULE})"
        )
    return pins


def kubernetes_components(pins: Pins) -> dict[str, Component]:
    """The builds of a Kubernetes minor's pins, by cache name."""
    v = f"v{pins.version}"
    return {
        "kubernetes-modules": Component(
            "kubernetes-modules", pins.version, ((KUBERNETES_MODULE, v),),
            KUBERNETES_BINARIES, local_fallback=f"v{pins.staging_version}", git_commit=pins.git_commit,
            checks={
                **{name: VersionCheck(("--version",), f"Kubernetes {v}", v) for name in KUBERNETES_BINARIES},
                "kubeadm": VersionCheck(("version", "-o", "short"), v, v),
                "kubectl": VersionCheck(("version", "--client"), f"Client Version: {v}", v),
            },
        ),
        "crictl": Component(
            "crictl", pins.crictl_version, ((CRICTL_MODULE, f"v{pins.crictl_version}"),), CRICTL_BINARIES,
            stamps=((CRICTL_VERSION_VAR, pins.crictl_version),),  # cri-tools' Makefile: no "v"
            checks={"crictl": VersionCheck(("--version",), f"crictl version {pins.crictl_version}",
                                           pins.crictl_version)},
        ),
        "etcd": Component(
            "etcd", pins.etcd_version,
            ((ETCD_SERVER_MODULE, f"v{pins.etcd_version}"), (ETCDCTL_MODULE, f"v{pins.etcd_version}")),
            ETCD_BINARIES,
            checks={
                "etcd": VersionCheck(("--version",), f"etcd Version: {pins.etcd_version}", pins.etcd_version),
                "etcdctl": VersionCheck(("version",), f"etcdctl version: {pins.etcd_version}",
                                        pins.etcd_version),
            },
        ),
        "coredns": Component(
            "coredns", pins.coredns_version, ((COREDNS_MODULE, f"v{pins.coredns_version}"),),
            COREDNS_BINARIES,
            checks={"coredns": VersionCheck(("-version",), f"CoreDNS-{pins.coredns_version}",
                                            pins.coredns_version)},
        ),
    }


def flannel_components(pins: FlannelPins) -> dict[str, Component]:
    """flanneld and the flannel CNI plugin, by cache name: two wrappers (flannel requires a
    containernetworking/plugins without plugins/meta/flannel)."""
    flannel, plugin = f"v{pins.version}", f"v{pins.cni_plugin_version}"
    return {
        "flannel": Component(
            "flannel", pins.version, ((FLANNEL_MODULE, flannel),), FLANNEL_BINARIES,
            stamps=((FLANNEL_VERSION_VAR, flannel),),  # flannel's Makefile: TAG, git describe
            checks={"flanneld": VersionCheck(("--version",), flannel, flannel)},
            # pkg/backend/udp on amd64 calls C (cproxy_amd64.go) and main imports it: without cgo
            # "undefined: runCProxy". Upstream's Makefile builds amd64 with CGO_ENABLED=1 too.
            cgo_arches=("amd64",),
        ),
        "flannel-cni": Component(
            "flannel-cni", pins.cni_plugin_version, ((CNI_PLUGINS_MODULE, plugin),), FLANNEL_CNI_BINARIES,
            stamps=((CNI_PLUGINS_VERSION_VAR, plugin),),  # plugins' scripts/release.sh: TAG
            # No CNI_COMMAND: the plugin prints its about string (to stderr) and exits 0.
            checks={"flannel": VersionCheck((), f"CNI flannel plugin {plugin}", plugin)},
        ),
    }


def containerd_components(pins: ContainerdPins) -> dict[str, Component]:
    """containerd (with ctr and the runc shim) and runc, by cache name: a wrapper each, as they are
    released apart."""
    containerd = f"v{pins.version}"
    return {
        "containerd": Component(
            "containerd", pins.version, ((CONTAINERD_MODULE, containerd),), CONTAINERD_BINARIES,
            # containerd's Makefile: VERSION (git describe), PACKAGE, REVISION.
            stamps=((f"{CONTAINERD_VERSION_PACKAGE}.Version", containerd),
                    (f"{CONTAINERD_VERSION_PACKAGE}.Package", CONTAINERD_MODULE)),
            commit_stamps=(f"{CONTAINERD_VERSION_PACKAGE}.Revision",),
            checks={
                "containerd": VersionCheck(("--version",), f"containerd {CONTAINERD_MODULE} {containerd}",
                                           containerd),
                "ctr": VersionCheck(("--version",), f"ctr {CONTAINERD_MODULE} {containerd}", containerd),
                "containerd-shim-runc-v2": VersionCheck(("-v",), f"Version:  {containerd}", containerd),
            },
        ),
        "runc": Component(
            "runc", pins.runc_version, ((RUNC_MODULE, f"v{pins.runc_version}"),), RUNC_BINARIES,
            # main.version is also embedded from its VERSION file; the stamp says the same.
            stamps=(("main.version", pins.runc_version),),
            commit_stamps=("main.gitCommit",),
            checks={"runc": VersionCheck(("--version",), f"runc version {pins.runc_version}",
                                         pins.runc_version)},
            cgo_arches=tuple(GOARCHES),  # libcontainer/nsenter is C
            tags=RUNC_TAGS,
            c_packages=("libseccomp-dev",),
            features={"runc": ("libseccomp: ",)},  # printed only when built with seccomp
        ),
    }


def components(
    pins: Pins, flannel: FlannelPins | None = None, containerd: ContainerdPins | None = None
) -> dict[str, Component]:
    """The builds of a Kubernetes minor's pins, and flannel's and containerd's when given, by cache
    name."""
    return {**kubernetes_components(pins), **(flannel_components(flannel) if flannel is not None else {}),
            **(containerd_components(containerd) if containerd is not None else {})}


# -- the wrapper module ------------------------------------------------------------------------


def local_replaces(modfile: Mapping[str, Any], fallback: str = "") -> dict[str, str]:
    """The modules an upstream go.mod (``go mod edit -json``) requires and replaces by a directory
    of its own tree (``./staging/...``, ``../api``), with the published version to use instead:
    the one it requires, or ``fallback`` where it requires the placeholder ``v0.0.0``.

    A local replace of a module it does not require (Kubernetes' sample-controller) is left out.
    """
    required = {r["Path"]: r["Version"] for r in modfile.get("Require") or []}
    replaces: dict[str, str] = {}
    for rep in modfile.get("Replace") or []:
        old, new = rep["Old"]["Path"], rep["New"]["Path"]
        if not _LOCAL_PATH.match(new) or rep["New"].get("Version") or old not in required:
            continue
        version = required[old]
        if version == "v0.0.0":
            if not fallback:
                raise ValueError(f"{old} is required at v0.0.0 and replaced by {new}: no version to use")
            version = fallback
        replaces[old] = version
    return dict(sorted(replaces.items()))


def _go_version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"[0-9]+", version)[:3])


def wrapper_go_mod(
    module: str,
    requires: Sequence[tuple[str, str]],
    replaces: Mapping[str, str],
    *,
    go: str,
    godebug: Sequence[tuple[str, str]] = (),
) -> str:
    """The text of the wrapper's go.mod: ``require`` the upstream modules, ``replace`` each
    local-replaced module by itself at a published version (``X => X vY``), the upstream ``go``
    and ``godebug`` lines. ``go build -mod=mod`` adds the rest of the requirements."""
    lines = [f"module {module}", "", f"go {go}", ""]
    if godebug:
        lines += ["godebug (", *(f"\t{key}={value}" for key, value in godebug), ")", ""]
    lines += ["require (", *(f"\t{path} {version}" for path, version in requires), ")", ""]
    if replaces:
        lines += ["replace (", *(f"\t{path} => {path} {version}" for path, version in replaces.items()),
                  ")", ""]
    return "\n".join(lines)


def kubernetes_ldflags(version: str, git_commit: str, build_date: str) -> list[str]:
    """The ``-X`` flags of Kubernetes' hack/lib/version.sh for a release ``version`` (``1.34.12``),
    for both version packages: what ``kubeadm version`` and ``--version`` print."""
    major, minor = version.split(".")[:2]
    fields = {
        "gitVersion": f"v{version}",
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    if git_commit:
        fields["gitCommit"] = git_commit
    return [f"-X {package}.{name}={value}"
            for package in KUBERNETES_VERSION_PACKAGES for name, value in fields.items()]


def ldflags(component: Component, build_date: str, *, cgo: bool = False, commit: str = "") -> str:
    """The whole ``-ldflags`` value of a component's ``go build`` (``cgo``: linked statically;
    ``commit``: the first module's, for its :attr:`Component.commit_stamps`)."""
    flags = list(STRIP_LDFLAGS)
    if component.name == "kubernetes-modules":
        flags += kubernetes_ldflags(component.version, component.git_commit, build_date)
    flags += [f"-X {variable}={value}" for variable, value in component.stamps]
    if commit:
        flags += [f"-X {variable}={commit}" for variable in component.commit_stamps]
    if cgo:
        flags += CGO_LDFLAGS
    return " ".join(flags)


def build_tags(component: Component, *, cgo: bool = False) -> str:
    """The ``-tags`` value of a component's ``go build`` ('' for none)."""
    return ",".join([*([CGO_TAGS] if cgo else []), *component.tags])


def go_build_args(
    component: Component, build_date: str, outdir: str, *, cgo: bool = False, commit: str = ""
) -> list[str]:
    """The arguments of a component's ``go build``."""
    tags = build_tags(component, cgo=cgo)
    return ["build", *BUILD_FLAGS, *([f"-tags={tags}"] if tags else []), "-ldflags",
            ldflags(component, build_date, cgo=cgo, commit=commit), "-o", f"{outdir}/",
            *component.binaries.values()]


def exec_name(package: str) -> str:
    """The file name ``go build -o DIR/`` gives a main package (a ``/vN`` suffix is skipped)."""
    parts = package.split("/")
    return parts[-2] if len(parts) > 1 and _MAJOR_SUFFIX.match(parts[-1]) else parts[-1]


def build_env(arch: str, base: Mapping[str, str] | None = None, *, cgo: bool = False) -> dict[str, str]:
    """The go commands' environment: ``base`` (default: this process's; GOPROXY and the like pass
    through) with GOARCH, :data:`BUILD_ENV` (``cgo``: but CGO_ENABLED=1) and the shared module and
    build caches."""
    env = dict(os.environ if base is None else base)
    for name in ("GOARCH", "GOAMD64", "GOARM64", "GOPATH", "GOEXPERIMENT"):
        env.pop(name, None)
    level, value = GO_LEVELS[arch]
    env.update(BUILD_ENV)
    env.update({
        "GOARCH": GOARCHES[arch],
        level: value,
        "GOMODCACHE": str(GO_DIR / "mod"),
        "GOCACHE": str(GO_DIR / "build"),
        "GOPATH": str(GO_DIR / "path"),
        "LC_ALL": "C",
        "TZ": "UTC",
    })
    if cgo:
        env["CGO_ENABLED"] = "1"
    return env


def go_version(env: Mapping[str, str] | None = None) -> str | None:
    """``go env GOVERSION`` of the machine's go (None when there is none)."""
    env = build_env(host_arch() if host_arch() in GOARCHES else "amd64") if env is None else env
    go = shutil.which("go", path=env.get("PATH"))
    if go is None:
        return None
    try:
        return run("go version", [go, "env", "GOVERSION"], env=env, error=KubernetesModulesBuildError,
                   stdout_only=True).strip() or None
    except KubernetesModulesBuildError:
        return None


def c_toolchain(env: Mapping[str, str]) -> str | None:
    """The C compiler and libc a cgo build links with (``cc --version``, ``ldd --version``, first
    lines), None when there is no compiler."""
    cc = shutil.which(env.get("CC") or "gcc", path=env.get("PATH"))
    if cc is None:
        return None
    try:
        compiler = run("cc --version", [cc, "--version"], env=env, error=KubernetesModulesBuildError,
                       stdout_only=True)
    except KubernetesModulesBuildError:
        return None
    ldd = shutil.which("ldd", path=env.get("PATH"))
    libc = ""
    if ldd is not None:
        try:
            libc = run("ldd --version", [ldd, "--version"], env=env, error=KubernetesModulesBuildError)
        except KubernetesModulesBuildError:
            libc = ""
    return "; ".join(text.strip().splitlines()[0] for text in (compiler, libc) if text.strip())


def cache_key(arch: str, component: Component, toolchain: str, c_compiler: str = "") -> str:
    """Everything that shapes a component's binaries; ``c_compiler`` (:func:`c_toolchain`, and the
    versions of its :attr:`~Component.c_packages`) for a cgo build. (The ``-X`` stamps, the commit
    included, follow from the required versions; a change of what is stamped bumps
    :data:`BUILDER_REVISION`.)"""
    return input_key(
        BUILDER_REVISION,
        arch,
        toolchain,
        component.name,
        *(f"{path}@{version}" for path, version in component.requires),
        component.local_fallback,
        component.git_commit,
        *(f"{name}={package}" for name, package in sorted(component.binaries.items())),
        *(f"{k}={v}" for k, v in sorted(BUILD_ENV.items())),
        "=".join(GO_LEVELS[arch]),
        *BUILD_FLAGS,
        *STRIP_LDFLAGS,
        *((f"cgo={c_compiler}", CGO_TAGS, *CGO_LDFLAGS) if c_compiler else ()),
        *((f"tags={','.join(component.tags)}",) if component.tags else ()),
    )


# -- building ----------------------------------------------------------------------------------


def cached_component(names: Iterable[str]) -> Callable[[Path], dict[str, Any] | None]:
    """The cache check of a build of ``names``: every binary there, of its recorded size."""
    wanted = tuple(names)
    return lambda directory: cached_manifest(directory, wanted, check="size")


def verify_build(directory: Path) -> list[str]:
    """What is wrong with a cached build (``[]`` when every file matches its recorded sha256)."""
    manifest = cached_manifest(directory)
    if manifest is None:
        return [f"{directory}: no complete build (manifest.json or a file missing or changed)"]
    return []


def all_components() -> tuple[str, ...]:
    """Every component's name, in build order."""
    return KUBERNETES_COMPONENTS + FLANNEL_COMPONENTS + CONTAINERD_COMPONENTS


def pinned_component(
    name: str, *, minor: str = DEFAULT_MINOR, versions_file: Path = VERSIONS_FILE
) -> Component:
    """Component ``name`` as versions.yml pins it: from Kubernetes ``minor``'s entry, or from
    ``flannel:`` or ``containerd_build:`` (whatever ``minor``)."""
    if name in KUBERNETES_COMPONENTS:
        return kubernetes_components(load_pins(versions_file, minor))[name]
    if name in FLANNEL_COMPONENTS:
        return flannel_components(load_flannel_pins(versions_file))[name]
    if name in CONTAINERD_COMPONENTS:
        return containerd_components(load_containerd_pins(versions_file))[name]
    raise KubernetesModulesBuildError(
        "check arguments", f"unknown component {name!r} (known: {', '.join(all_components())})"
    )


def build_component(
    name: str, arch: str = "amd64", *, minor: str = DEFAULT_MINOR, versions_file: Path = VERSIONS_FILE
) -> Path:
    """Build (or reuse) one component (see :func:`all_components`) for ``arch``; return its cache
    directory. ``minor`` picks the Kubernetes entry (not used by flannel's or containerd's)."""
    if arch not in GOARCHES:
        raise KubernetesModulesBuildError(
            "check arguments", f"unknown arch {arch!r} (known: {', '.join(GOARCHES)})"
        )
    component = pinned_component(name, minor=minor, versions_file=versions_file)
    cgo = arch in component.cgo_arches
    if cgo and arch != host_arch():
        raise KubernetesModulesBuildError(
            "check arguments", f"{name} for {arch} needs cgo: build it on an {arch} machine"
        )
    env = build_env(arch, cgo=cgo)
    toolchain = go_version(env)
    if toolchain is None:
        raise KubernetesModulesBuildError(
            "find go", "no usable `go` on PATH (need Go >= 1.26: etcd 3.6 says go 1.26.0, Kubernetes 1.34 "
            "and flannel 0.28.7 go 1.25.0); install it, e.g. from the Go distribution, and put it on PATH"
        )
    c_compiler = ""
    if cgo:
        install = " ".join(("apt-get install gcc libc6-dev", *component.c_packages))
        c_compiler = c_toolchain(env) or ""
        if not c_compiler:
            raise KubernetesModulesBuildError(
                "find cc", f"{name} for {arch} is built with cgo, linked statically, and there is no C "
                f"compiler (gcc) on PATH: {install}"
            )
        libraries = {package: package_version(package) for package in component.c_packages}
        missing = [package for package, version in libraries.items() if not version]
        if missing:
            raise KubernetesModulesBuildError(
                "find cc", f"{name} for {arch} is linked statically against {', '.join(missing)}, which is "
                f"not installed: {install}"
            )
        c_compiler = "; ".join([c_compiler, *(f"{p} {v}" for p, v in libraries.items())])
    key = cache_key(arch, component, toolchain, c_compiler)
    dest = build_dir(component.name, component.version, arch, key)
    return staged_build(
        dest, cached_component(component.binaries),
        lambda work, out: _build(work, out, arch, component, toolchain, key, env, c_compiler),
        error=KubernetesModulesBuildError,
    )


def build_kubernetes_modules(
    arch: str = "amd64", *, minor: str = DEFAULT_MINOR, versions_file: Path = VERSIONS_FILE
) -> Path:
    """kubeadm, kubelet, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
    kubectl of Kubernetes ``minor``'s pinned release for ``arch``: the cache directory."""
    return build_component("kubernetes-modules", arch, minor=minor, versions_file=versions_file)


def build_crictl(
    arch: str = "amd64", *, minor: str = DEFAULT_MINOR, versions_file: Path = VERSIONS_FILE
) -> Path:
    """``crictl`` of Kubernetes ``minor``'s ``crictl_version``: the cache directory."""
    return build_component("crictl", arch, minor=minor, versions_file=versions_file)


def build_etcd(
    arch: str = "amd64", *, minor: str = DEFAULT_MINOR, versions_file: Path = VERSIONS_FILE
) -> Path:
    """``etcd`` and ``etcdctl`` of Kubernetes ``minor``'s ``etcd_version``: the cache directory."""
    return build_component("etcd", arch, minor=minor, versions_file=versions_file)


def build_coredns(
    arch: str = "amd64", *, minor: str = DEFAULT_MINOR, versions_file: Path = VERSIONS_FILE
) -> Path:
    """``coredns`` of Kubernetes ``minor``'s ``coredns_version``: the cache directory."""
    return build_component("coredns", arch, minor=minor, versions_file=versions_file)


def build_flannel(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> Path:
    """``flanneld`` of ``flannel.version``: the cache directory (the CNI plugin:
    :func:`build_flannel_cni`)."""
    return build_component("flannel", arch, versions_file=versions_file)


def build_flannel_cni(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> Path:
    """The ``flannel`` CNI plugin of ``flannel.cni_plugin_version``: the cache directory."""
    return build_component("flannel-cni", arch, versions_file=versions_file)


def build_containerd(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> Path:
    """``containerd``, ``ctr`` and ``containerd-shim-runc-v2`` of ``containerd_build.version``: the
    cache directory."""
    return build_component("containerd", arch, versions_file=versions_file)


def build_runc(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> Path:
    """``runc`` of ``containerd_build.runc_version`` (cgo: on an ``arch`` machine): the cache directory."""
    return build_component("runc", arch, versions_file=versions_file)


def build_all(
    arch: str = "amd64", *, minor: str = DEFAULT_MINOR, versions_file: Path = VERSIONS_FILE
) -> dict[str, Path]:
    """Every component of :data:`CLUSTER_COMPONENTS` for ``arch``, one after the other: cache
    directory by component."""
    return {name: build_component(name, arch, minor=minor, versions_file=versions_file)
            for name in CLUSTER_COMPONENTS}




def _go(step: str, args: Sequence[str], *, cwd: Path, env: Mapping[str, str], parsed: bool = False) -> str:
    go = shutil.which("go", path=env.get("PATH")) or "go"
    return run(step, ["nice", "-n", NICE, go, *args], cwd=cwd, env=env,
               error=KubernetesModulesBuildError, stdout_only=parsed)


def _module_info(work: Path, env: Mapping[str, str], path: str, version: str) -> tuple[dict[str, Any],
                                                                                         dict[str, Any]]:
    """(the proxy's info with its GoMod path, the go.mod as ``go mod edit -json``) of path@version."""
    step = f"resolve {path}@{version}"
    try:
        info: dict[str, Any] = json.loads(_go(step, ["list", "-m", "-json", f"{path}@{version}"],
                                              cwd=work, env=env, parsed=True))
    except ValueError as exc:
        raise KubernetesModulesBuildError(step, f"`go list -m -json` gave no JSON: {exc}") from exc
    if info.get("Error"):
        error = info["Error"]
        raise KubernetesModulesBuildError(step, f"{path}@{version}: {error.get('Err', error)}")
    if info.get("Version") != version or not info.get("GoMod"):
        raise KubernetesModulesBuildError(
            step, f"the module proxy gave {info.get('Version')!r} for {path}@{version}, without a go.mod"
        )
    modfile: dict[str, Any] = json.loads(_go(f"read {path}@{version} go.mod",
                                             ["mod", "edit", "-json", str(info["GoMod"])],
                                             cwd=work, env=env, parsed=True))
    return info, modfile


def download_module(path: str, version: str) -> dict[str, Any]:
    """``go mod download -json path@version`` in the module build's environment
    (:func:`build_env`: its ``GOMODCACHE``, ``GOPROXY`` and ``GOTOOLCHAIN``): the
    module's ``Dir`` (the extracted zip), ``Zip``, ``Sum``, ... A module the build downloaded is in
    the cache already: nothing is fetched then."""
    arch = host_arch() if host_arch() in GOARCHES else "amd64"
    env = build_env(arch)
    go = shutil.which("go", path=env.get("PATH"))
    if go is None:
        raise KubernetesModulesBuildError(f"download {path}@{version}", "no `go` on PATH")
    GO_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="go-mod-download-") as outside:  # no go.mod around
        out = run(f"go mod download {path}@{version}", [go, "mod", "download", "-json", f"{path}@{version}"],
                  cwd=Path(outside), env=env, error=KubernetesModulesBuildError, stdout_only=True)
    try:
        info: dict[str, Any] = json.loads(out)
    except ValueError as exc:
        raise KubernetesModulesBuildError(
            f"download {path}@{version}", f"`go mod download -json` gave no JSON: {exc}"
        ) from exc
    if info.get("Error") or not info.get("Dir"):
        raise KubernetesModulesBuildError(f"download {path}@{version}", str(info.get("Error") or "no Dir"))
    return info


def _build_date(info: Mapping[str, Any]) -> str:
    """The version's time on the proxy (its commit's), as Kubernetes stamps buildDate."""
    try:
        when = dt.datetime.fromisoformat(str(info["Time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return EPOCH_DATE
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _build(
    work: Path, out: Path, arch: str, component: Component, toolchain: str, key: str, env: Mapping[str, str],
    c_compiler: str = "",
) -> None:
    started = time.monotonic()
    GO_DIR.mkdir(parents=True, exist_ok=True)
    resolve = work / "resolve"  # outside any module: `go list -m path@version`
    resolve.mkdir()
    replaces: dict[str, str] = {}
    go_line = "1.22.0"
    godebug: list[tuple[str, str]] = []
    infos: dict[str, dict[str, Any]] = {}
    for index, (path, version) in enumerate(component.requires):
        info, modfile = _module_info(resolve, env, path, version)
        infos[path] = info
        try:
            replaces.update(local_replaces(modfile, component.local_fallback))
        except ValueError as exc:
            raise KubernetesModulesBuildError(f"read {path}@{version} go.mod", str(exc)) from exc
        upstream_go = str(modfile.get("Go") or "") or go_line
        if _go_version_tuple(upstream_go) > _go_version_tuple(go_line):
            go_line = upstream_go
        if index == 0:
            godebug = [(str(d["Key"]), str(d["Value"])) for d in modfile.get("GoDebug") or []]
    for path, _version in component.requires:  # required by the wrapper itself: no replace
        replaces.pop(path, None)

    first_path, first_version = component.requires[0]
    first = infos[first_path]
    origin = str((first.get("Origin") or {}).get("Hash") or "")
    if component.git_commit and origin and origin != component.git_commit:
        raise KubernetesModulesBuildError(
            "check git_commit", f"the module proxy says {first_path}@{first_version} is commit {origin}, "
            f"versions.yml git_commit says {component.git_commit}"
        )
    build_date = _build_date(first)
    commit = component.git_commit or origin

    wrapper = work / "wrapper"
    wrapper.mkdir()
    (wrapper / "go.mod").write_text(
        wrapper_go_mod(component.module, component.requires, replaces, go=go_line, godebug=godebug)
    )
    cgo = bool(c_compiler)
    packages = list(component.binaries.values())
    bindir = work / "bin"
    bindir.mkdir()
    log.info("building %s %s for %s with %s%s (%d binaries, nice %s)", component.name, component.version,
             arch, toolchain, f" and cgo ({c_compiler})" if cgo else "", len(packages), NICE)
    _go(f"go build {component.name}",
        go_build_args(component, build_date, str(bindir), cgo=cgo, commit=commit), cwd=wrapper, env=env)

    for name, package in component.binaries.items():
        built = bindir / exec_name(package)
        if not built.is_file():
            raise KubernetesModulesBuildError(f"go build {component.name}", f"go build left no {built.name}")
        shutil.copy2(built, out / name)
        (out / name).chmod(0o755)
    (out / "wrapper").mkdir()
    for file in ("go.mod", "go.sum"):
        if (wrapper / file).is_file():
            shutil.copy2(wrapper / file, out / "wrapper" / file)

    reports = {
        name: check_binary(out / name, name, arch, component.checks[name], component.features.get(name, ()))
        for name in component.binaries
    }
    recorded = (f"wrapper/{f}" for f in ("go.mod", "go.sum") if (out / "wrapper" / f).is_file())
    files = [*component.binaries, *recorded]
    manifest = {
        "name": component.name,
        "arch": arch,
        "key": key,
        "builder_revision": BUILDER_REVISION,
        "version": component.version,
        "modules": {path: {"version": version, "time": infos[path].get("Time", ""),
                           "origin": (infos[path].get("Origin") or {}).get("Hash", "")}
                    for path, version in component.requires},
        "replaces": replaces,
        "go": {"version": toolchain, "go_line": go_line, "godebug": dict(godebug)},
        "build_env": {**BUILD_ENV, "CGO_ENABLED": env["CGO_ENABLED"], "GOARCH": env["GOARCH"],
                      GO_LEVELS[arch][0]: GO_LEVELS[arch][1],
                      "GOPROXY": env.get("GOPROXY") or "(unset: go's default)"},
        "go_build": ["go", *go_build_args(component, build_date, "DIR", cgo=cgo, commit=commit)],
        **({"c_toolchain": c_compiler} if cgo else {}),
        "files": {
            name: {
                "sha256": sha256_file(out / name),
                "size": (out / name).stat().st_size,
                **({"version_output": reports[name]} if name in reports else {}),
            }
            for name in files
        },
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    out.chmod(0o755)
    log.info("built %s %s (%s) in %.0fs", component.name, component.version, arch, manifest["build_seconds"])


# -- containerd's and runc's release files ------------------------------------------------------


def containerd_tarball_name(version: str, arch: str) -> str:
    """The name upstream gives containerd's release archive: containerd-2.2.9-linux-amd64.tar.gz."""
    return f"containerd-{version}-linux-{arch}.tar.gz"


def write_containerd_tarball(bindir: Path, dest: Path, *, mtime: int = 0) -> None:
    """``dest``: upstream's release archive of the containerd binaries in ``bindir`` (``bin/<name>``,
    mode 0755, owner 0/0). The same binaries always give the same bytes: members dated ``mtime``,
    a gzip header without a time or file name, a fixed member order."""
    with dest.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as compressed, \
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in CONTAINERD_BINARIES:
            binary = bindir / name
            member = tarfile.TarInfo(f"bin/{name}")
            member.size = binary.stat().st_size
            member.mode = 0o755
            member.uid = member.gid = 0
            member.uname = member.gname = "root"
            member.mtime = mtime
            with binary.open("rb") as data:
                tar.addfile(member, data)


def _module_epoch(manifest: Mapping[str, Any], module: str) -> int:
    """The module version's time on the proxy (from a build's manifest) in seconds, 0 when unknown."""
    try:
        when = dt.datetime.fromisoformat(str(manifest["modules"][module]["time"]).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return 0
    return int(when.timestamp())


def containerd_release_files(
    arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE
) -> list[dict[str, Any]]:
    """containerd and runc for ``arch`` built from ``containerd_build:`` (:func:`build_component`) and
    laid out as upstream releases them: ``containerd-<version>-linux-<arch>.tar.gz`` (bin/ only) and
    ``runc.<arch>``, kept in ``release/`` of the containerd build's cache directory. Entries shaped
    as :func:`edge_provision.stages.runtime.controller.release_files`' (name, version, file, path,
    sha256, url: ``build:<module>@<version>``), containerd's first. runc is a cgo build: ``arch``
    must be this machine's."""
    pins = load_containerd_pins(versions_file)
    containerd = build_component("containerd", arch, versions_file=versions_file)
    runc = build_component("runc", arch, versions_file=versions_file)
    containerd_manifest = json.loads((containerd / "manifest.json").read_text())
    runc_sha256 = json.loads((runc / "manifest.json").read_text())["files"]["runc"]["sha256"]
    tarball, runc_file = containerd_tarball_name(pins.version, arch), f"runc.{arch}"

    def is_cached(directory: Path) -> dict[str, Any] | None:
        manifest = cached_manifest(directory, (tarball, runc_file))
        return manifest if manifest is not None and manifest.get("runc_sha256") == runc_sha256 else None

    def lay_out(work: Path, out: Path) -> None:
        write_containerd_tarball(containerd, out / tarball,
                                 mtime=_module_epoch(containerd_manifest, CONTAINERD_MODULE))
        shutil.copyfile(runc / "runc", out / runc_file)
        (out / runc_file).chmod(0o755)
        if sha256_file(out / runc_file) != runc_sha256:
            raise KubernetesModulesBuildError("copy runc", f"{runc / 'runc'} changed while it was copied")
        files = {name: {"sha256": sha256_file(out / name), "size": (out / name).stat().st_size}
                 for name in (tarball, runc_file)}
        (out / "manifest.json").write_text(json.dumps(
            {"files": files, "containerd_build": str(containerd), "runc_build": str(runc),
             "runc_sha256": runc_sha256}, indent=2) + "\n")
        out.chmod(0o755)

    release = staged_build(containerd / "release", is_cached, lay_out, error=KubernetesModulesBuildError)
    files = json.loads((release / "manifest.json").read_text())["files"]
    return [
        {"name": name, "version": version, "file": file, "path": str(release / file),
         "sha256": files[file]["sha256"], "url": f"build:{module}@v{version}"}
        for name, version, file, module in (
            (CONTAINERD_RELEASE, pins.version, tarball, CONTAINERD_MODULE),
            (RUNC_RELEASE, pins.runc_version, runc_file, RUNC_MODULE),
        )
    ]


# -- checking what was built ------------------------------------------------------------------


def check_binary(path: Path, name: str, arch: str, check: VersionCheck, features: Sequence[str] = ()) -> str:
    """What the binary reports as its version: run when native, else its ELF header and the version
    string inside; a binary of another architecture, dynamic, or of another version fails, and so
    does a native one whose output lacks one of ``features``."""
    step = f"check {name}"
    data = path.read_bytes()
    problem = static_elf_problem(data, name, arch)
    if problem:
        raise KubernetesModulesBuildError(step, problem)
    if arch != host_arch():
        if check.embedded.encode() not in data:
            raise KubernetesModulesBuildError(step, f"{name} does not embed its version {check.embedded}")
        return f"(cross-built: contains {check.embedded})"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/nonexistent"}
    output = run(step, [str(path), *check.args], env=env, error=KubernetesModulesBuildError).strip()
    if check.want not in output:
        raise KubernetesModulesBuildError(step, f"{name} does not report {check.want!r}", output)
    lacking = [feature for feature in features if feature not in output]
    if lacking:
        raise KubernetesModulesBuildError(
            step, f"{name} was built without what makes it report {', '.join(map(repr, lacking))}", output
        )
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_provision.artifacts.builders.kubernetes_modules",
        description="Build Kubernetes (kubeadm, kubelet, control plane, kube-proxy, kubectl), crictl, etcd, "
        "CoreDNS, flanneld, the flannel CNI plugin, containerd and runc from their Go modules into the "
        "artifact cache; print each cache directory.",
    )
    parser.add_argument("--minor", default=DEFAULT_MINOR,
                        help=f"the Kubernetes minor whose pins to build (default: {DEFAULT_MINOR})")
    parser.add_argument("arch", nargs="?", default="amd64", choices=sorted(GOARCHES))
    parser.add_argument("components", nargs="*", help=f"{', '.join(all_components())} (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        for name in args.components or all_components():
            print(f"{name}: {build_component(name, args.arch, minor=args.minor)}", flush=True)
    except ArtifactBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
