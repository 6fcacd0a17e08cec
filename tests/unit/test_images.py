"""The Kubernetes images of builders/images.py without building anything real: references and tags
from the pins, pause's source from the Kubernetes module, the iptables/conntrack layer (Debian
files merged, iptables alternatives to the nft variant) and its sharing between kube-proxy's and
flannel's images, with fake .debs (dpkg-deb -b) and fake module builds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge_provision import artifacts
from edge_provision.artifacts import oci
from edge_provision.artifacts.builders import images, kubernetes_modules

PINS = kubernetes_modules.Pins(version="1.99.3", git_commit="", crictl_version="1.99.0",
                               etcd_version="3.9.2", coredns_version="1.20.4")
FLANNEL = kubernetes_modules.FlannelPins(version="0.40.1", cni_plugin_version="0.9.1")


@pytest.fixture
def pins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Pins of a made-up minor 1.99 and a cache whose pause source is there already (no go run);
    the list collects the minors asked for."""
    asked: list[str] = []

    def load_pins(versions_file: Path = Path("unused"), minor: str = "1.34") -> kubernetes_modules.Pins:
        asked.append(minor)
        return PINS

    monkeypatch.setattr(kubernetes_modules, "load_pins", load_pins)
    monkeypatch.setattr(kubernetes_modules, "load_flannel_pins", lambda *a, **k: FLANNEL)
    monkeypatch.setattr(kubernetes_modules, "DEFAULT_MINOR", "1.99")
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path / "artifacts")
    source = tmp_path / "artifacts" / "sources" / "kubernetes-module-v1.99.3"
    source.mkdir(parents=True)
    (source / "pause.c").write_text("int main(void) { return 0; }\n")
    (source / "Makefile").write_text("REGISTRY ?= staging-k8s.gcr.io\nTAG ?= 3.77.1\nREV = x\n")
    (source / "module.json").write_text(json.dumps({"path": "k8s.io/kubernetes", "version": "v1.99.3",
                                                    "sum": "h1:abc="}))
    return asked


def test_references_come_from_the_pins(pins: list[str]) -> None:
    assert images.references() == {
        "kube-apiserver": "edge-provision.local/kube-apiserver:v1.99.3",
        "kube-controller-manager": "edge-provision.local/kube-controller-manager:v1.99.3",
        "kube-scheduler": "edge-provision.local/kube-scheduler:v1.99.3",
        "etcd": "edge-provision.local/etcd:3.9.2-0",
        "kube-proxy": "edge-provision.local/kube-proxy:v1.99.3",
        "coredns": "edge-provision.local/coredns:v1.20.4",
        "flannel": "edge-provision.local/flannel:v0.40.1",
        "pause": "edge-provision.local/pause:3.77.1",
    }
    assert set(pins) == {"1.99"}  # DEFAULT_MINOR when not given
    images.references("1.98")
    assert pins[-1] == "1.98"
    assert images.image_reference("etcd", "1.98") == "edge-provision.local/etcd:3.9.2-0"
    with pytest.raises(images.ImageBuildError, match="unknown Kubernetes image 'kubelet'"):
        images.image_reference("kubelet")


def test_the_cluster_roles_import_every_cluster_image_and_nothing_unknown() -> None:
    from edge_provision.role_files import role_defaults

    wanted = (role_defaults("control_plane_kubeadm")["control_plane_kubeadm_images"]
              + role_defaults("kubernetes_node")["kubernetes_node_images"])
    assert sorted(wanted) == sorted(images.CLUSTER_IMAGES)
    assert "pause" not in images.CLUSTER_IMAGES and "pause" in images.KNOWN_IMAGES
    with pytest.raises(images.ImageBuildError, match="unknown Kubernetes image"):
        images.build_cluster_image("kubectl", "amd64")


def test_pause_source_comes_from_the_kubernetes_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "mod" / "k8s.io" / "kubernetes@v1.99.3"
    (module / "build/pause/linux").mkdir(parents=True)
    (module / "build/pause/linux/pause.c").write_text("/* pause */\n")
    (module / "build/pause/Makefile").write_text("TAG ?= 3.10.1\nREV = $(shell git describe)\n")
    calls: list[tuple[str, str]] = []

    def download(path: str, version: str) -> dict[str, Any]:
        calls.append((path, version))
        return {"Path": path, "Version": version, "Dir": str(module), "Sum": "h1:xyz="}

    monkeypatch.setattr(kubernetes_modules, "load_pins", lambda *a, **k: PINS)
    monkeypatch.setattr(images.kubernetes_modules, "download_module", download)
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path / "artifacts")
    source = images.fetch_pause_source("1.99")
    assert calls == [("k8s.io/kubernetes", "v1.99.3")]
    assert (source.version, source.kubernetes_version, source.module, source.module_sum) == (
        "3.10.1", "1.99.3", "k8s.io/kubernetes@v1.99.3", "h1:xyz=")
    assert source.pause_c.read_text() == "/* pause */\n"
    assert source.pause_c.parent == tmp_path / "artifacts" / "sources" / "kubernetes-module-v1.99.3"
    # Kept: the reference is read without the module (or go) from then on.
    assert images.pause_reference("1.99") == "edge-provision.local/pause:3.10.1"
    assert len(calls) == 1


def test_pause_source_missing_in_the_module_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes_modules, "load_pins", lambda *a, **k: PINS)
    monkeypatch.setattr(images.kubernetes_modules, "download_module", lambda path, version: {
        "Path": path, "Version": version, "Dir": str(tmp_path), "Sum": ""})
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path / "artifacts")
    with pytest.raises(images.ImageBuildError, match=re.escape("has no build/pause/linux/pause.c")):
        images.fetch_pause_source()


# --- the iptables/conntrack layer ---------------------------------------------------------------


def _deb(tmp_path: Path, package: str, files: dict[str, bytes], links: dict[str, str] | None = None,
         hardlinks: dict[str, str] | None = None) -> Path:
    root = tmp_path / f"pkg-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: x <x@x>\nDescription: x\n")
    for member, data in files.items():
        path = root / member.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if "/sbin/" in member else 0o644)
    for member, target in (links or {}).items():
        path = root / member.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    for member, target in (hardlinks or {}).items():
        os.link(root / target.lstrip("/"), root / member.lstrip("/"))
    out = tmp_path / f"{package}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True, capture_output=True)
    return out


def _entry(path: Path, package: str) -> dict[str, str]:
    return {"package": package, "version": "1.0-1", "path": str(path), "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture
def fake_debs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """debian.debs of iptables and conntrack, answered with small fake packages."""
    iptables = _deb(tmp_path, "iptables", {
        "/usr/sbin/xtables-nft-multi": b"\x7fELF nft",
        "/usr/sbin/xtables-legacy-multi": b"\x7fELF legacy",
        "/usr/lib/x86_64-linux-gnu/xtables/libxt_NAT.so": b"nat",
        "/usr/share/doc/iptables/copyright": b"GPL",
        "/usr/share/man/man8/iptables.8.gz": b"man",
    }, links={"/usr/sbin/iptables-nft": "xtables-nft-multi",
              "/usr/lib/x86_64-linux-gnu/xtables/libxt_SNAT.so": "libxt_NAT.so"})
    conntrack = _deb(tmp_path, "conntrack", {"/usr/sbin/conntrack": b"\x7fELF conntrack",
                                             "/usr/share/doc/conntrack/copyright": b"GPL"})
    libc = _deb(tmp_path, "libc6", {
        "/lib/x86_64-linux-gnu/libc.so.6": b"libc",
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": b"ld.so",
        "/usr/lib/x86_64-linux-gnu/gconv/UTF-16.so": b"iconv",
        "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules": b"modules",
    }, links={"/lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"})
    entries = [_entry(iptables, "iptables"), _entry(conntrack, "conntrack"), _entry(libc, "libc6")]
    asked: list[tuple[list[str], str]] = []

    def debs(packages: list[str], arch: str, release: str = "debian-12") -> list[dict[str, str]]:
        asked.append((list(packages), release))
        return entries

    monkeypatch.setattr(images.debian, "debs", debs)
    return entries


def test_netfilter_layer_merges_the_packages_and_links_iptables_to_nft(fake_debs: list[dict[str, str]]) -> None:
    layer = images.netfilter_layer("amd64")
    files = {entry.path.lstrip("/"): entry for entry in layer.files}
    assert files["usr/sbin/xtables-nft-multi"].data == b"\x7fELF nft"
    assert files["usr/sbin/xtables-nft-multi"].mode == 0o755
    assert files["usr/sbin/conntrack"].kind == "file"
    assert files["lib/x86_64-linux-gnu/libc.so.6"].data == b"libc"
    assert files["lib64/ld-linux-x86-64.so.2"].target == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert files["usr/lib/x86_64-linux-gnu/xtables/libxt_SNAT.so"].target == "libxt_NAT.so"
    # What Debian's postinst does with update-alternatives, to the nft variant.
    links = {path: entry.target for path, entry in files.items()
             if path.startswith("usr/sbin/") and entry.kind == "symlink"}
    assert links == {
        "usr/sbin/iptables": "xtables-nft-multi",
        "usr/sbin/iptables-save": "xtables-nft-multi",
        "usr/sbin/iptables-restore": "xtables-nft-multi",
        "usr/sbin/ip6tables": "xtables-nft-multi",
        "usr/sbin/ip6tables-save": "xtables-nft-multi",
        "usr/sbin/ip6tables-restore": "xtables-nft-multi",
        "usr/sbin/iptables-nft": "xtables-nft-multi",  # the package's own
    }
    # Documentation and glibc's iconv modules are left out.
    assert not [path for path in files if path.startswith(("usr/share/doc", "usr/share/man"))]
    assert not [path for path in files if "gconv" in path]
    assert list(files) == sorted(files)
    inputs = layer.inputs
    assert inputs["netfilter-debs"] == "conntrack=1.0-1 iptables=1.0-1 libc6=1.0-1"


def test_iptables_links_need_the_nft_binary_and_no_alternative_of_the_package() -> None:
    multi = oci.FileEntry.executable("/usr/sbin/xtables-nft-multi", b"x")
    links = images.iptables_nft_links([multi])
    assert [(link.path, link.kind, link.target) for link in links] == [
        (f"/usr/sbin/{command}", "symlink", "xtables-nft-multi") for command in images.IPTABLES_COMMANDS
    ]
    with pytest.raises(images.ImageBuildError, match="no /usr/sbin/xtables-nft-multi"):
        images.iptables_nft_links([oci.FileEntry.executable("/usr/sbin/xtables-legacy-multi", b"x")])
    with pytest.raises(images.ImageBuildError, match="/usr/sbin/iptables is in the packages already"):
        images.iptables_nft_links([multi, oci.FileEntry.symlink("/usr/sbin/iptables", "/etc/alternatives/x")])


def test_merging_packages_keeps_shared_directories_once_and_refuses_clashing_files() -> None:
    a = [oci.FileEntry.dir("/usr"), oci.FileEntry.dir("/usr/lib"), oci.FileEntry.file("/usr/lib/x", b"1")]
    b = [oci.FileEntry.dir("/usr", 0o775), oci.FileEntry.file("/usr/lib/x", b"1"),
         oci.FileEntry.file("/usr/share/locale/de/y.mo", b"")]
    merged = images.merge_package_files({"a": a, "b": b})
    assert [(e.path, e.mode) for e in merged] == [("/usr", 0o755), ("/usr/lib", 0o755), ("/usr/lib/x", 0o644)]
    with pytest.raises(images.ImageBuildError, match="/usr/lib/x is in a and in c, not the same"):
        images.merge_package_files({"a": a, "c": [oci.FileEntry.file("/usr/lib/x", b"2")]})


def test_deb_files_copy_hard_links(tmp_path: Path) -> None:
    deb = _deb(tmp_path, "hl", {"/usr/bin/a": b"same"}, hardlinks={"/usr/bin/b": "/usr/bin/a"})
    files = {entry.path: entry for entry in images.deb_files(deb)}
    assert files["/usr/bin/a"].data == files["/usr/bin/b"].data == b"same"
    assert files["/usr/bin/b"].kind == "file"


def test_materialise_writes_a_tree_to_chroot_into(tmp_path: Path) -> None:
    images.materialise([oci.FileEntry.executable("/usr/sbin/x", b"bin"), oci.FileEntry.symlink("/usr/sbin/y", "x"),
                        oci.FileEntry.dir("/tmp", 0o1777)], tmp_path)
    assert (tmp_path / "usr/sbin/y").read_bytes() == b"bin"
    assert os.readlink(tmp_path / "usr/sbin/y") == "x"
    assert (tmp_path / "usr/sbin/x").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "tmp").stat().st_mode & 0o7777 == 0o1777


# --- images from fake module builds --------------------------------------------------------------


def _elf(tag: bytes) -> bytes:
    """A static amd64 ELF header (no program headers), made distinct by ``tag``."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[18:20] = (62).to_bytes(2, "little")
    return bytes(header) + tag


def _module_build(root: Path, name: str, version: str, binaries: list[str]) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for binary in binaries:
        data = _elf(f"{name}/{binary}".encode())
        (directory / binary).write_bytes(data)
        files[binary] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {"name": name, "key": f"key-{name}", "version": version, "files": files,
                "modules": {f"example.com/{name}": {"version": f"v{version}"}}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture
def module_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pins: list[str]) -> dict[str, Path]:
    """kubernetes_modules' builds answered by fake ones (of the pins' versions) and the chroot
    check by a stub (the fake binaries do not run)."""
    root = tmp_path / "builds"
    builds = {
        "kubernetes-modules": _module_build(root, "kubernetes-modules", "1.99.3", [
            "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"]),
        "etcd": _module_build(root, "etcd", "3.9.2", ["etcd", "etcdctl"]),
        "coredns": _module_build(root, "coredns", "1.20.4", ["coredns"]),
        "flannel": _module_build(root, "flannel", "0.40.1", ["flanneld"]),
        "flannel-cni": _module_build(root, "flannel-cni", "0.9.1", ["flannel"]),
    }
    km = kubernetes_modules
    monkeypatch.setattr(km, "build_kubernetes_modules", lambda arch, minor="": builds["kubernetes-modules"])
    monkeypatch.setattr(km, "build_etcd", lambda arch, minor="": builds["etcd"])
    monkeypatch.setattr(km, "build_coredns", lambda arch, minor="": builds["coredns"])
    monkeypatch.setattr(km, "build_flannel", lambda arch: builds["flannel"])
    monkeypatch.setattr(km, "build_flannel_cni", lambda arch: builds["flannel-cni"])
    monkeypatch.setattr(images, "netfilter_check", lambda files, arch: {"iptables --version": "(nf_tables)"})
    return builds


def _image(tarball: Path) -> tuple[dict[str, bytes], dict[str, Any], dict[str, Any]]:
    """(blobs by digest, manifest, config) of a one-platform image tarball."""
    files = oci.read_archive(tarball)
    assert oci.verify_archive(files) == []
    blobs = {"sha256:" + name.rsplit("/", 1)[1]: data for name, data in files.items() if name.startswith("blobs/")}
    (top,) = json.loads(files["index.json"])["manifests"]
    (entry,) = json.loads(blobs[top["digest"]])["manifests"]
    manifest = json.loads(blobs[entry["digest"]])
    return blobs, manifest, json.loads(blobs[manifest["config"]["digest"]])


def _paths(blobs: dict[str, bytes], digest: str) -> dict[str, tuple[str, str]]:
    return {path: (kind, target) for path, kind, _, target in oci.list_layer(blobs[digest])}


def test_kube_proxy_and_flannel_share_the_netfilter_layer(
    module_builds: dict[str, Path], fake_debs: list[dict[str, str]]
) -> None:
    proxy = images.build_cluster_image("kube-proxy", "amd64")
    flannel = images.build_cluster_image("flannel", "amd64")
    proxy_blobs, proxy_manifest, proxy_config = _image(proxy)
    flannel_blobs, flannel_manifest, flannel_config = _image(flannel)
    shared = proxy_manifest["layers"][0]
    assert shared == flannel_manifest["layers"][0]  # same digest, size, media type: one blob
    assert proxy_manifest["layers"][1] != flannel_manifest["layers"][1]
    assert images.image_info(proxy).reference == "edge-provision.local/kube-proxy:v1.99.3"
    assert images.image_info(flannel).reference == "edge-provision.local/flannel:v0.40.1"
    base = _paths(proxy_blobs, shared["digest"])
    assert base["usr/sbin/iptables"] == ("symlink", "xtables-nft-multi")
    assert base["usr/sbin/ip6tables-restore"] == ("symlink", "xtables-nft-multi")
    assert base["usr/sbin/conntrack"][0] == "file"
    assert set(_paths(proxy_blobs, proxy_manifest["layers"][1]["digest"])) == {
        "usr", "usr/local", "usr/local/bin", "usr/local/bin/kube-proxy"}
    assert set(_paths(flannel_blobs, flannel_manifest["layers"][1]["digest"])) == {
        "opt", "opt/bin", "opt/bin/flanneld", "opt/cni", "opt/cni/bin", "opt/cni/bin/flannel"}
    assert proxy_config["config"]["Entrypoint"] == ["/usr/local/bin/kube-proxy"]
    assert "/usr/sbin" in proxy_config["config"]["Env"][0]
    assert flannel_config["config"]["Entrypoint"] == ["/opt/bin/flanneld"]
    info = json.loads((proxy.parent / "image.json").read_text())
    assert info["layers"][0] == shared["digest"]
    assert info["checks"] == {"iptables --version": "(nf_tables)"}
    assert info["inputs"]["kubernetes-modules-build"] == "key-kubernetes-modules"


def test_every_image_of_a_role(module_builds: dict[str, Path], fake_debs: list[dict[str, str]]) -> None:
    tarballs = {name: images.build_cluster_image(name, "amd64") for name in images.CLUSTER_IMAGES}
    assert set(tarballs) == set(images.CLUSTER_IMAGES)
    refs = images.references()
    for name, tarball in tarballs.items():
        assert images.image_info(tarball).reference == refs[name], name
    blobs, manifest, config = _image(tarballs["etcd"])
    (layer,) = manifest["layers"]
    assert {p for p, (kind, _) in _paths(blobs, layer["digest"]).items() if kind == "file"} == {
        "usr/local/bin/etcd", "usr/local/bin/etcdctl"}
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/etcd"]
    assert config["config"]["Env"][0].startswith("PATH=/usr/local/sbin:/usr/local/bin:")
    blobs, manifest, config = _image(tarballs["coredns"])
    assert set(_paths(blobs, manifest["layers"][0]["digest"])) == {"coredns"}
    assert config["config"] == {"Entrypoint": ["/coredns"]}
    blobs, manifest, config = _image(tarballs["kube-scheduler"])
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/kube-scheduler"]
    assert config["architecture"] == "amd64"
    # Cached: the same tarball back.
    assert images.build_cluster_image("kube-scheduler", "amd64") == tarballs["kube-scheduler"]


def test_a_build_of_another_version_than_the_pins_is_refused(
    module_builds: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubernetes_modules, "load_pins", lambda *a, **k: kubernetes_modules.Pins(
        version="1.99.4", git_commit="", crictl_version="1.99.0", etcd_version="3.9.2", coredns_version="1.20.4"))
    with pytest.raises(images.ImageBuildError, match=re.escape(
            "is of version '1.99.3', the pins make edge-provision.local/kube-apiserver:v1.99.4")):
        images.build_cluster_image("kube-apiserver", "amd64")


def test_a_binary_changed_since_its_build_is_refused(module_builds: dict[str, Path]) -> None:
    (module_builds["coredns"] / "coredns").write_bytes(_elf(b"changed"))
    with pytest.raises(images.ImageBuildError, match=re.escape("does not match its manifest.json's sha256")):
        images.build_cluster_image("coredns", "amd64")


def test_a_dynamic_or_foreign_binary_is_refused(module_builds: dict[str, Path]) -> None:
    with pytest.raises(images.ImageBuildError, match="wanted static arm64"):
        images.build_cluster_image("etcd", "arm64")
