"""Real builds of the lab's images: the WASI demo module, the wasi-demo / busybox / pause tarballs
and the Kubernetes images (kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
kube-proxy, coredns, flannel). No lab host is started.

Needs Debian's clang, lld, wasi-libc, libclang-rt-14-dev-wasm32 and the builders' root (pause
is compiled there), ``go`` (pause.c comes from the k8s.io/kubernetes Go module the Kubernetes
build downloads) and a Debian mirror (busybox-static, iptables, conntrack and their closure are
downloaded). Each image goes into a temporary cache; the Go module builds of
:mod:`builders.kubernetes_modules` are the real cache's (linked in: built there when missing,
minutes each). The demo module is run if the Python ``wasmtime`` package is importable; the
Kubernetes images' binaries, iptables and conntrack are run in a chroot of each image's layers
(root); the tarballs are imported into a throwaway containerd if ``containerd`` and ``ctr`` are
installed and we are root.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_provision import artifacts
from edge_provision.artifacts import debian, oci
from edge_provision.artifacts.builders import images, kubernetes_modules
from edge_provision.artifacts.builders._common import elf_info

pytestmark = pytest.mark.lab

REAL_ARTIFACTS = artifacts.ARTIFACTS_DIR
MODULE_BUILDS = ("kubernetes-modules", "etcd", "coredns", "flannel", "flannel-cni")
HOST = debian.host_arch()
OTHER = {"amd64": "arm64", "arm64": "amd64"}[HOST]


def _use_cache(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Build into ``root``, the Go module builds (minutes each) taken from the real cache."""
    root.mkdir(parents=True, exist_ok=True)
    for name in MODULE_BUILDS:
        (REAL_ARTIFACTS / name).mkdir(parents=True, exist_ok=True)
        if not (root / name).exists():
            (root / name).symlink_to(REAL_ARTIFACTS / name)
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", root)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The three image tarballs (and the .wasm), built once into a temporary cache."""
    root = tmp_path_factory.mktemp("cache-a")
    with pytest.MonkeyPatch.context() as mp:
        _use_cache(mp, root)
        yield {
            "wasm": images.compile_wasi_demo(),
            "wasi-demo": images.build_wasi_demo_image(),
            "busybox": images.build_busybox_image(),
            "pause": images.build_pause_image(debian.host_arch()),
            "root": root,
        }


@pytest.fixture(scope="module")
def cluster(built: dict[str, Path]) -> dict[str, dict[str, Path]]:
    """The Kubernetes images for this machine's architecture, and kube-proxy's and flannel's for
    the other one, in the cache of ``built`` (still in use)."""
    return {
        HOST: {name: images.build_cluster_image(name, HOST) for name in images.CLUSTER_IMAGES},
        OTHER: {name: images.build_cluster_image(name, OTHER) for name in ("kube-proxy", "flannel")},
    }


def test_wasi_demo_compiles_to_a_small_module(built: dict[str, Path]) -> None:
    data = built["wasm"].read_bytes()
    assert data[:8] == b"\0asm\x01\0\0\0"
    assert len(data) < 100_000  # stripped: ~35 KB with Debian 12's clang 14 / wasi-libc
    # a WASI command: exports _start and memory, imports only wasi_snapshot_preview1
    assert b"_start" in data and b"wasi_snapshot_preview1" in data


def test_wasi_demo_output_has_every_expected_line(built: dict[str, Path], tmp_path: Path) -> None:
    import wasmtime
    root = tmp_path / "root"
    root.mkdir()
    args = ["/wasi_demo.wasm", "50000000", "two words"]
    env = {"GREETING": "hello edge", "EMPTY": ""}
    cfg = wasmtime.WasiConfig()
    cfg.argv = args
    cfg.env = list(env.items())
    cfg.preopen_dir(str(root), "/")
    cfg.stdout_file = str(tmp_path / "stdout")
    cfg.stderr_file = str(tmp_path / "stderr")
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    store.set_wasi(cfg)
    instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(built["wasm"])))
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exit_:
        assert exit_.code == 0, (tmp_path / "stderr").read_text()
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert images.demo_output_problems(stdout, args=args, env=env, stderr=stderr) == [], stdout + stderr
    assert list(root.iterdir()) == []  # the demo file was written, read back and removed


# The demo under wasmtime in a child process, so a module that never exits can be stopped.
_RUN_DEMO = """
import sys, wasmtime
cfg = wasmtime.WasiConfig()
cfg.argv = ["/wasi_demo.wasm"]
cfg.env = [("WASI_DEMO_HEARTBEAT_SECONDS", sys.argv[3])]
cfg.preopen_dir(sys.argv[2], "/")
cfg.inherit_stdout()
cfg.inherit_stderr()
engine = wasmtime.Engine()
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
store.set_wasi(cfg)
instance = linker.instantiate(store, wasmtime.Module.from_file(engine, sys.argv[1]))
try:
    instance.exports(store)["_start"](store)
except wasmtime.ExitTrap as exit_:
    sys.exit(exit_.code)
"""


def _demo_process(wasm: Path, root: Path, heartbeat: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_DEMO, str(wasm), str(root), heartbeat],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_wasi_demo_heartbeat_mode_prints_the_demo_then_beats_until_stopped(
    built: dict[str, Path], tmp_path: Path
) -> None:
    """The long-running sample (the Wasm Deployment): after the demo's lines, one heartbeat per
    interval, and no exit."""
    demo = _demo_process(built["wasm"], tmp_path, "1")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            demo.wait(timeout=3.5)
    finally:
        demo.kill()
    stdout, stderr = demo.communicate()
    assert images.demo_output_problems(stdout, args=["/wasi_demo.wasm"], stderr=stderr, heartbeat=True) == []
    beats = [line for line in stdout.splitlines() if line.startswith("Heartbeat ")]
    assert 3 <= len(beats) <= 5, stdout  # the first at once, then one a second
    assert images.demo_output_problems(stdout, args=["/wasi_demo.wasm"], stderr=stderr) != []


@pytest.mark.parametrize("heartbeat", ["0", "90000", "5s"])
def test_wasi_demo_rejects_a_bad_heartbeat_interval(built: dict[str, Path], tmp_path: Path, heartbeat: str) -> None:
    demo = _demo_process(built["wasm"], tmp_path, heartbeat)
    stdout, stderr = demo.communicate(timeout=30)
    assert demo.returncode == 2, (stdout, stderr)
    assert stderr == f"wasi_demo: WASI_DEMO_HEARTBEAT_SECONDS must be 1..86400, not {heartbeat}\n"
    assert stdout == ""


def _index_and_manifests(
    tarball: Path,
) -> tuple[dict[str, bytes], dict[str, object], list[dict[str, object]]]:
    files = oci.read_archive(tarball)
    assert oci.verify_archive(files) == []
    (top,) = json.loads(files["index.json"])["manifests"]
    index = json.loads(files["blobs/sha256/" + top["digest"].split(":")[1]])
    manifests = [json.loads(files["blobs/sha256/" + m["digest"].split(":")[1]]) for m in index["manifests"]]
    return files, {**top, "index": index}, manifests


def test_wasi_demo_image(built: dict[str, Path]) -> None:
    files, top, manifests = _index_and_manifests(built["wasi-demo"])
    info = images.image_info(built["wasi-demo"])
    assert info.reference == images.wasi_demo_reference() == top["annotations"]["io.containerd.image.name"]  # type: ignore[index]
    assert info.platforms == ("linux/amd64", "linux/arm/v7", "linux/arm64")
    assert all(m["annotations"]["module.wasm.image/variant"] == "compat-smart" for m in manifests)  # type: ignore[index]
    layers = {m["layers"][0]["digest"] for m in manifests}  # type: ignore[index]
    assert len(layers) == 1
    layer = files["blobs/sha256/" + layers.pop().split(":")[1]]
    assert oci.list_layer(layer) == [("wasi_demo.wasm", "file", 0o755, "")]
    config = json.loads(files["blobs/sha256/" + manifests[0]["config"]["digest"].split(":")[1]])  # type: ignore[index]
    assert config["config"] == {"Entrypoint": ["/wasi_demo.wasm"]}


def test_busybox_image(built: dict[str, Path]) -> None:
    files, _, (manifest,) = _index_and_manifests(built["busybox"])
    info = images.image_info(built["busybox"])
    assert info.reference.startswith("edge-provision.local/busybox:1.")
    assert info.platforms == (str(oci.Platform.linux(debian.host_arch())),)
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]]  # type: ignore[index]
    assert oci.list_layer(layer) == [
        ("bin", "dir", 0o755, ""),
        ("bin/busybox", "file", 0o755, ""),
        ("bin/cat", "symlink", 0o777, "busybox"),
        ("bin/echo", "symlink", 0o777, "busybox"),
        ("bin/sh", "symlink", 0o777, "busybox"),
        ("bin/sleep", "symlink", 0o777, "busybox"),
        ("tmp", "dir", 0o1777, ""),
    ]


def _kubeadm_constant(name: str) -> str:
    """A string constant of kubeadm's constants.go in the pinned k8s.io/kubernetes module."""
    version = f"v{kubernetes_modules.load_pins().version}"
    module = Path(kubernetes_modules.download_module(kubernetes_modules.KUBERNETES_MODULE, version)["Dir"])
    text = (module / "cmd/kubeadm/app/constants/constants.go").read_text()
    match = re.search(rf'^\s*{name}\s*=\s*"([^"]+)"', text, re.MULTILINE)
    assert match, name
    return match.group(1)


def test_pause_image(built: dict[str, Path]) -> None:
    files, _, (manifest,) = _index_and_manifests(built["pause"])
    info = images.image_info(built["pause"])
    source = images.fetch_pause_source()
    assert info.reference == f"edge-provision.local/pause:{source.version}" == images.references()["pause"]
    assert source.module == f"k8s.io/kubernetes@v{kubernetes_modules.load_pins().version}"
    assert source.version == _kubeadm_constant("PauseVersion")  # what kubeadm pulls and checks
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]]  # type: ignore[index]
    assert oci.list_layer(layer) == [("pause", "file", 0o755, "")]
    binary = images.compile_pause(debian.host_arch(), source)
    assert elf_info(binary.read_bytes()) == (debian.host_arch(), True)
    version = subprocess.run([str(binary), "-v"], capture_output=True, text=True, check=True).stdout
    assert version == f"pause.c v{source.version}-kubernetes-{source.kubernetes_version}\n"


def test_cluster_images_carry_the_references_kubeadm_asks_for(cluster: dict[str, dict[str, Path]]) -> None:
    refs = images.references()
    pins = kubernetes_modules.load_pins()
    assert set(cluster[HOST]) == set(images.CLUSTER_IMAGES)
    for arch, tarballs in cluster.items():
        for name, tarball in tarballs.items():
            info = images.image_info(tarball)
            assert info.reference == refs[name], (arch, name)
            assert info.platforms == (str(oci.Platform.linux(arch)),)
    assert refs["kube-apiserver"] == f"edge-provision.local/kube-apiserver:v{pins.version}"
    assert refs["etcd"] == f"edge-provision.local/etcd:{pins.etcd_version}-0"
    assert refs["coredns"] == f"edge-provision.local/coredns:v{pins.coredns_version}"
    assert refs["coredns"].endswith(":" + _kubeadm_constant("CoreDNSVersion"))  # what kubeadm deploys
    assert refs["flannel"] == f"edge-provision.local/flannel:v{kubernetes_modules.load_flannel_pins().version}"


def _layers(tarball: Path) -> list[str]:
    _, _, (manifest,) = _index_and_manifests(tarball)
    return [layer["digest"] for layer in manifest["layers"]]  # type: ignore[index]


def test_kube_proxy_and_flannel_share_the_iptables_layer(cluster: dict[str, dict[str, Path]]) -> None:
    for arch in (HOST, OTHER):
        proxy, flannel = _layers(cluster[arch]["kube-proxy"]), _layers(cluster[arch]["flannel"])
        assert len(proxy) == len(flannel) == 2
        assert proxy[0] == flannel[0], arch
        assert proxy[1] != flannel[1]
    assert _layers(cluster[HOST]["kube-proxy"])[0] != _layers(cluster[OTHER]["kube-proxy"])[0]
    # The build ran the other architecture's iptables under qemu-user: "(nf_tables)", or the nft
    # variant failing to open its netlink socket there.
    checks = json.loads((cluster[OTHER]["kube-proxy"].parent / "image.json").read_text())["checks"]
    assert "nf" in checks["/usr/sbin/iptables --version"]


def _rootfs(tarball: Path, dest: Path) -> list[str]:
    """Unpack the image's layers in order into ``dest``; its config's Env."""
    files = oci.read_archive(tarball)
    _, _, (manifest,) = _index_and_manifests(tarball)
    for layer in manifest["layers"]:  # type: ignore[index]
        blob = files["blobs/sha256/" + layer["digest"].split(":")[1]]
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            tar.extractall(dest, filter="fully_trusted")  # our own image
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])  # type: ignore[index]
    return list(config["config"].get("Env", []))


def _version_commands() -> dict[str, list[tuple[list[str], str]]]:
    """Image -> (command, text its output must contain), run in a chroot of the image."""
    pins = kubernetes_modules.load_pins()
    kubernetes = f"Kubernetes v{pins.version}"
    iptables = [([command, "--version"], "(nf_tables)") for command in images.IPTABLES_COMMANDS]
    flannel = kubernetes_modules.load_flannel_pins()
    return {
        **{name: [([name, "--version"], kubernetes)] for name in images.CONTROL_PLANE_COMPONENTS},
        "etcd": [(["etcd", "--version"], f"etcd Version: {pins.etcd_version}"),
                 (["etcdctl", "version"], f"etcdctl version: {pins.etcd_version}")],
        "kube-proxy": [(["kube-proxy", "--version"], kubernetes), *iptables,
                       (["conntrack", "--version"], "conntrack v")],
        "coredns": [(["/coredns", "-version"], f"CoreDNS-{pins.coredns_version}")],
        "flannel": [(["/opt/bin/flanneld", "--version"], f"v{flannel.version}"),
                    (["/opt/cni/bin/flannel"], f"CNI flannel plugin v{flannel.cni_plugin_version}"), *iptables,
                    (["conntrack", "--version"], "conntrack v")],
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
@pytest.mark.parametrize("name", images.CLUSTER_IMAGES)
def test_each_cluster_image_runs_its_commands_in_a_chroot(
    cluster: dict[str, dict[str, Path]], tmp_path: Path, name: str
) -> None:
    env = _rootfs(cluster[HOST][name], tmp_path)
    path = next((e for e in env if e.startswith("PATH=")), "PATH=/")  # the image's own
    chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert chroot
    for argv, want in _version_commands()[name]:
        proc = subprocess.run([chroot, str(tmp_path), *argv], capture_output=True, text=True,
                              env={"PATH": path.split("=", 1)[1], "LC_ALL": "C"}, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and want in output, (argv, proc.returncode, output)


def test_builds_are_cached_and_deterministic(
    built: dict[str, Path], cluster: dict[str, dict[str, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same cache: the very same files come back, untouched.
    with monkeypatch.context() as mp:
        _use_cache(mp, built["root"])
        mtime = built["busybox"].stat().st_mtime_ns
        assert images.build_busybox_image() == built["busybox"]
        assert built["busybox"].stat().st_mtime_ns == mtime
        assert images.build_wasi_demo_image() == built["wasi-demo"]
        assert images.build_cluster_image("kube-proxy", HOST) == cluster[HOST]["kube-proxy"]
    # A fresh cache (the downloaded pause.c source reused): byte-identical results.
    other = tmp_path / "cache-b"
    shutil.copytree(built["root"] / "sources", other / "sources")
    _use_cache(monkeypatch, other)
    again = {
        "wasm": images.compile_wasi_demo(),
        "wasi-demo": images.build_wasi_demo_image(),
        "busybox": images.build_busybox_image(),
        "pause": images.build_pause_image(debian.host_arch()),
    }
    for name, path in again.items():
        assert path != built[name]
        assert path.read_bytes() == built[name].read_bytes(), name
    for name in ("kube-proxy", "etcd"):
        path = images.build_cluster_image(name, HOST)
        assert path != cluster[HOST][name]
        assert path.read_bytes() == cluster[HOST][name].read_bytes(), name


# --- import into a throwaway containerd --------------------------------------------------


@pytest.fixture
def containerd() -> Iterator[list[str]]:
    """``ctr`` argv prefix for a containerd with its own root/state/socket under /tmp."""
    base = Path(tempfile.mkdtemp(prefix="ep-ctrd-", dir="/tmp"))  # short: unix socket paths
    sock = base / "c.sock"
    (base / "config.toml").write_text(
        "version = 2\n"
        f'root = "{base}/root"\nstate = "{base}/state"\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[debug]\n  address = ""\n  level = "info"\n'
        '[metrics]\n  address = ""\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n  stream_server_port = "0"\n'
        f'  [plugins."io.containerd.grpc.v1.cri".cni]\n    bin_dir = "{base}/cni"\n    conf_dir = "{base}/cni"\n'
    )
    log = (base / "log").open("w")
    proc = subprocess.Popen(
        ["containerd", "--config", str(base / "config.toml")], stdout=log, stderr=log, start_new_session=True
    )
    ctr = ["ctr", "--address", str(sock), "-n", "k8s.io"]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"throwaway containerd did not start:\n{(base / 'log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield ctr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["umount", "-R", str(base / "root")], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_ctr_imports_every_image_and_the_cri_knows_them(
    built: dict[str, Path], cluster: dict[str, dict[str, Path]], containerd: list[str]
) -> None:
    tarballs = [built["wasi-demo"], built["busybox"], built["pause"], *cluster[HOST].values()]
    for tarball in tarballs:
        result = subprocess.run(
            [*containerd, "images", "import", str(tarball)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        info = images.image_info(tarball)
        assert f"unpacking {info.reference} ({info.digest})...done" in result.stdout
    listed = subprocess.run([*containerd, "images", "ls"], capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split()[2] for line in listed.splitlines()[1:]}
    for tarball in tarballs:
        info = images.image_info(tarball)
        assert rows.get(info.reference) == info.digest, listed
    # The CRI plugin resolves each image for this node's platform and adds its image id
    # (the config's digest) as a ref of its own: proof kubelet will find the image.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listed = subprocess.run([*containerd, "images", "ls", "-q"], capture_output=True, text=True).stdout
        if sum(line.startswith("sha256:") for line in listed.splitlines()) >= len(tarballs):
            break
        time.sleep(0.3)
    assert sum(line.startswith("sha256:") for line in listed.splitlines()) == len(tarballs), listed
