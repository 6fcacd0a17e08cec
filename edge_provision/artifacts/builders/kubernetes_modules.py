"""Build Kubernetes v1.34 (and crictl, etcd) from their Go modules, through small wrapper modules.

Inputs, pinned in ``edge_provision/artifacts/versions.yml`` (``kubernetes_modules:``):

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

The Go toolchain is the machine's ``go`` (``GOTOOLCHAIN=local``; etcd 3.6.17 needs Go >= 1.26.0),
modules come from ``GOPROXY`` as the environment sets it. ``GOMODCACHE`` and ``GOCACHE`` live under
``<cache>/go/`` (:data:`GO_DIR`), shared by every build, version and architecture: a second build
recompiles only what changed. Every binary is static (``CGO_ENABLED=0``), stripped (``-s -w``)
and ``-trimpath``, so ``arch="arm64"`` cross-builds on amd64 with no C toolchain.

Output: one cache directory per component (``kubernetes-modules``, ``crictl``, ``etcd``;
:func:`edge_provision.artifacts.build_dir`, keyed by everything that shapes the build) with the
binaries, ``manifest.json`` (sha256 and size of each, the versions they report) and the wrapper's
``go.mod``/``go.sum`` under ``wrapper/``. Built in a work directory beside the cache and renamed
into place (:func:`~edge_provision.artifacts.builders._common.staged_build`). The go commands run
at ``nice 19``. Measured on 2 shared cores (Go 1.26.8): amd64 from empty Go caches 15.5 min in
all (Kubernetes 12.7, crictl 1.8, etcd 1.1; downloads included, 1.2 GB of modules, 3.7 GB of build
cache), arm64 after it 12 min; peak RSS 1.9 GB (the linker); a cache hit 0.4 s, a rebuild with a
warm Go cache 23 s, byte-identical. Binaries: 57-102 MB each (kube-apiserver the largest).

``python -m edge_provision.artifacts.builders.kubernetes_modules [amd64|arm64] [component ...]``
builds into the cache and prints the directories.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from edge_provision.artifacts.debian import host_arch
from edge_provision.artifacts.fetch import VERSIONS_FILE

log = logging.getLogger(__name__)

# Bump when the build steps change in a way that changes the output (the cache key includes it).
BUILDER_REVISION = "1"
PIN_KEY = "kubernetes_modules"

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
# Shared by every build: downloaded modules and Go's build cache.
GO_DIR = CACHE_DIR / "go"
WRAPPER_PREFIX = "edge-provision.invalid/build"
NICE = "19"  # the build shares its machine (lab tests, people): do not starve them
EPOCH_DATE = "1970-01-01T00:00:00Z"
_LOCAL_PATH = re.compile(r"^\.\.?/")
_MAJOR_SUFFIX = re.compile(r"^v[0-9]+$")


class KubernetesModulesBuildError(ArtifactBuildError):
    """A step of the build of Kubernetes, crictl or etcd from Go modules failed."""

    build = "kubernetes modules build"


@dataclass(frozen=True)
class Pins:
    version: str  # Kubernetes, e.g. "1.34.12"
    git_commit: str  # its tag's commit ("" when unknown)
    crictl_version: str  # e.g. "1.34.0"
    etcd_version: str  # e.g. "3.6.17"

    @property
    def staging_version(self) -> str:
        """The staging modules' version of a Kubernetes release: 1.34.12 -> 0.34.12."""
        return "0." + self.version.split(".", 1)[1]


@dataclass(frozen=True)
class Component:
    """One wrapper module and the binaries built through it."""

    name: str  # cache name: kubernetes-modules, crictl, etcd
    version: str  # of the cache directory (no leading v)
    requires: tuple[tuple[str, str], ...]  # (module, version) the wrapper requires
    binaries: Mapping[str, str]  # binary name -> main package
    # Version of a staging module that the upstream go.mod requires at v0.0.0 (Kubernetes).
    local_fallback: str = ""

    @property
    def module(self) -> str:
        return f"{WRAPPER_PREFIX}/{self.name}"


def load_pins(versions_file: Path = VERSIONS_FILE) -> Pins:
    """The ``kubernetes_modules:`` pins from versions.yml."""
    data = load_versions(versions_file, KubernetesModulesBuildError)
    try:
        entry = data[PIN_KEY]
        pins = Pins(
            version=str(entry["version"]).removeprefix("v"),
            git_commit=str(entry.get("git_commit") or ""),
            crictl_version=str(entry["crictl_version"]).removeprefix("v"),
            etcd_version=str(entry["etcd_version"]).removeprefix("v"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{versions_file} lacks {exc} (need {PIN_KEY}.version, {PIN_KEY}.crictl_version, "
            f"{PIN_KEY}.etcd_version)"
        ) from exc
    for field, value in (("version", pins.version), ("crictl_version", pins.crictl_version),
                         ("etcd_version", pins.etcd_version)):
        if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", value):
            raise KubernetesModulesBuildError(
                PINS_STEP, f"{PIN_KEY}.{field} is {value!r} in {versions_file}; want a release X.Y.Z"
            )
    if pins.git_commit and not re.fullmatch(r"[0-9a-f]{40}", pins.git_commit):
        raise KubernetesModulesBuildError(
            PINS_STEP, f"{PIN_KEY}.git_commit is {pins.git_commit!r} in {versions_file}; want 40 hex digits"
        )
    return pins


def components(pins: Pins) -> dict[str, Component]:
    """The three builds of the pins, by cache name."""
    return {
        "kubernetes-modules": Component(
            "kubernetes-modules", pins.version, ((KUBERNETES_MODULE, f"v{pins.version}"),),
            KUBERNETES_BINARIES, local_fallback=f"v{pins.staging_version}",
        ),
        "crictl": Component(
            "crictl", pins.crictl_version, ((CRICTL_MODULE, f"v{pins.crictl_version}"),), CRICTL_BINARIES
        ),
        "etcd": Component(
            "etcd", pins.etcd_version,
            ((ETCD_SERVER_MODULE, f"v{pins.etcd_version}"), (ETCDCTL_MODULE, f"v{pins.etcd_version}")),
            ETCD_BINARIES,
        ),
    }


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
    return [f"-X {package}.{field}={value}"
            for package in KUBERNETES_VERSION_PACKAGES for field, value in fields.items()]


def ldflags(component: Component, pins: Pins, build_date: str) -> str:
    """The whole ``-ldflags`` value of a component's ``go build``."""
    flags = list(STRIP_LDFLAGS)
    if component.name == "kubernetes-modules":
        flags += kubernetes_ldflags(pins.version, pins.git_commit, build_date)
    elif component.name == "crictl":
        flags.append(f"-X {CRICTL_VERSION_VAR}={pins.crictl_version}")  # cri-tools' Makefile: no "v"
    return " ".join(flags)


def exec_name(package: str) -> str:
    """The file name ``go build -o DIR/`` gives a main package (a ``/vN`` suffix is skipped)."""
    parts = package.split("/")
    return parts[-2] if len(parts) > 1 and _MAJOR_SUFFIX.match(parts[-1]) else parts[-1]


def build_env(arch: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The go commands' environment: ``base`` (default: this process's; GOPROXY and the like pass
    through) with GOARCH, :data:`BUILD_ENV` and the shared module and build caches."""
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


def cache_key(arch: str, component: Component, pins: Pins, toolchain: str) -> str:
    """Everything that shapes a component's binaries."""
    stamp = pins.git_commit if component.name == "kubernetes-modules" else ""
    return input_key(
        BUILDER_REVISION,
        arch,
        toolchain,
        component.name,
        *(f"{path}@{version}" for path, version in component.requires),
        component.local_fallback,
        stamp,
        *(f"{name}={package}" for name, package in sorted(component.binaries.items())),
        *(f"{k}={v}" for k, v in sorted(BUILD_ENV.items())),
        "=".join(GO_LEVELS[arch]),
        *BUILD_FLAGS,
        *STRIP_LDFLAGS,
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


def build_component(
    name: str, arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE
) -> Path:
    """Build (or reuse) one component (``kubernetes-modules``, ``crictl`` or ``etcd``) for ``arch``;
    return its cache directory."""
    if arch not in GOARCHES:
        raise KubernetesModulesBuildError(
            "check arguments", f"unknown arch {arch!r} (known: {', '.join(GOARCHES)})"
        )
    pins = load_pins(versions_file)
    comps = components(pins)
    if name not in comps:
        raise KubernetesModulesBuildError(
            "check arguments", f"unknown component {name!r} (known: {', '.join(comps)})"
        )
    component = comps[name]
    env = build_env(arch)
    toolchain = go_version(env)
    if toolchain is None:
        raise KubernetesModulesBuildError(
            "find go", "no usable `go` on PATH (need Go >= 1.26: etcd 3.6 says go 1.26.0, Kubernetes "
            "1.34 go 1.25.0); install it, e.g. from the Go distribution, and put it on PATH"
        )
    key = cache_key(arch, component, pins, toolchain)
    dest = build_dir(component.name, component.version, arch, key)
    return staged_build(
        dest, cached_component(component.binaries),
        lambda work, out: _build(work, out, arch, component, pins, toolchain, key, env),
        error=KubernetesModulesBuildError,
    )


def build_kubernetes_modules(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> Path:
    """kubeadm, kubelet, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
    kubectl of ``kubernetes_modules.version`` for ``arch``: the cache directory."""
    return build_component("kubernetes-modules", arch, versions_file=versions_file)


def build_crictl(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> Path:
    return build_component("crictl", arch, versions_file=versions_file)


def build_etcd(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> Path:
    return build_component("etcd", arch, versions_file=versions_file)


def build_all(arch: str = "amd64", *, versions_file: Path = VERSIONS_FILE) -> dict[str, Path]:
    """Every component for ``arch``, one after the other: cache directory by component."""
    return {name: build_component(name, arch, versions_file=versions_file)
            for name in components(load_pins(versions_file))}


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


def _build_date(info: Mapping[str, Any]) -> str:
    """The version's time on the proxy (its commit's), as Kubernetes stamps buildDate."""
    try:
        when = dt.datetime.fromisoformat(str(info["Time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return EPOCH_DATE
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _build(
    work: Path, out: Path, arch: str, component: Component, pins: Pins, toolchain: str, key: str,
    env: Mapping[str, str],
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

    first = infos[component.requires[0][0]]
    origin = str((first.get("Origin") or {}).get("Hash") or "")
    if component.name == "kubernetes-modules" and pins.git_commit and origin and origin != pins.git_commit:
        raise KubernetesModulesBuildError(
            "check git_commit", f"the module proxy says v{pins.version} is commit {origin}, versions.yml "
            f"{PIN_KEY}.git_commit says {pins.git_commit}"
        )
    build_date = _build_date(first)

    wrapper = work / "wrapper"
    wrapper.mkdir()
    (wrapper / "go.mod").write_text(
        wrapper_go_mod(component.module, component.requires, replaces, go=go_line, godebug=godebug)
    )
    flags = ldflags(component, pins, build_date)
    packages = list(component.binaries.values())
    bindir = work / "bin"
    bindir.mkdir()
    log.info("building %s %s for %s with %s (%d binaries, nice %s)", component.name, component.version,
             arch, toolchain, len(packages), NICE)
    _go(f"go build {component.name}",
        ["build", *BUILD_FLAGS, "-ldflags", flags, "-o", f"{bindir}/", *packages], cwd=wrapper, env=env)

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
        name: check_binary(out / name, name, arch, component.name, pins) for name in component.binaries
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
        "build_env": {**BUILD_ENV, "GOARCH": env["GOARCH"], GO_LEVELS[arch][0]: GO_LEVELS[arch][1],
                      "GOPROXY": env.get("GOPROXY") or "(unset: go's default)"},
        "go_build": ["go", "build", *BUILD_FLAGS, "-ldflags", flags, "-o", "DIR/", *packages],
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


# -- checking what was built ------------------------------------------------------------------


def version_check(name: str, component: str, pins: Pins) -> tuple[list[str], str]:
    """(the arguments that print a binary's version, the text that output must contain)."""
    if component == "crictl":
        return ["--version"], f"crictl version {pins.crictl_version}"
    if component == "etcd":
        if name == "etcdctl":
            return ["version"], f"etcdctl version: {pins.etcd_version}"
        return ["--version"], f"etcd Version: {pins.etcd_version}"
    if name == "kubeadm":
        return ["version", "-o", "short"], f"v{pins.version}"
    if name == "kubectl":
        return ["version", "--client"], f"Client Version: v{pins.version}"
    return ["--version"], f"Kubernetes v{pins.version}"


def check_binary(path: Path, name: str, arch: str, component: str, pins: Pins) -> str:
    """What the binary reports as its version: run when native, else its ELF header and the version
    string inside; a binary of another architecture, dynamic, or of another version fails."""
    step = f"check {name}"
    data = path.read_bytes()
    problem = static_elf_problem(data, name, arch)
    if problem:
        raise KubernetesModulesBuildError(step, problem)
    args, want = version_check(name, component, pins)
    if arch != host_arch():
        token = want.split()[-1]
        if token.encode() not in data:
            raise KubernetesModulesBuildError(step, f"{name} does not embed its version {token}")
        return f"(cross-built: contains {token})"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/nonexistent"}
    output = run(step, [str(path), *args], env=env, error=KubernetesModulesBuildError).strip()
    if want not in output:
        raise KubernetesModulesBuildError(step, f"{name} does not report {want!r}", output)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_provision.artifacts.builders.kubernetes_modules",
        description="Build Kubernetes (kubeadm, kubelet, control plane, kube-proxy, kubectl), crictl and "
        "etcd from their Go modules into the artifact cache; print each cache directory.",
    )
    parser.add_argument("arch", nargs="?", default="amd64", choices=sorted(GOARCHES))
    parser.add_argument("components", nargs="*", help="kubernetes-modules, crictl, etcd (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = args.components or list(components(load_pins()))
    try:
        for name in names:
            print(f"{name}: {build_component(name, args.arch)}", flush=True)
    except ArtifactBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
