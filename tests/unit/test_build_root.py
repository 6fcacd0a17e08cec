"""The builders' root and the per-architecture apt view: the commands and cache keys, pinned (no build)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from edge_provision.artifacts import debian
from edge_provision.artifacts.builders import build_root, images
from edge_provision.artifacts.builders import crun as crun_builder
from edge_provision.stages.runtime import controller as runtime_controller

SOURCES = ["deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main"]


# -- the root ----------------------------------------------------------------------------------


def test_root_packages_hold_every_architecture_build_dependencies() -> None:
    wanted = build_root.packages("amd64", ("amd64", "arm64"))
    for lib in build_root.ARCH_LIBRARIES:
        assert lib in wanted and f"{lib}:arm64" in wanted
    assert "crossbuild-essential-arm64" in wanted and "build-essential" in wanted
    assert not [p for p in wanted if p.endswith(":amd64") or p == "crossbuild-essential-amd64"]
    assert "qemu-user-static" in wanted  # runs the arm64 build's own checks


def test_mmdebstrap_command_makes_a_multiarch_root_native_first(tmp_path: Path) -> None:
    cmd = build_root.mmdebstrap_command(tmp_path / "root", "amd64", SOURCES, ("arm64", "amd64"))
    assert cmd[:4] == ["mmdebstrap", "--variant=apt", "--mode=root", "--format=directory"]
    assert "--architectures=amd64,arm64" in cmd
    include = next(a for a in cmd if a.startswith("--include="))
    assert "libseccomp-dev:arm64" in include.split("=", 1)[1].split(",")
    assert cmd[-3:] == ["bookworm", str(tmp_path / "root"), SOURCES[0]]


def test_root_key_follows_its_inputs() -> None:
    key = build_root.root_key("amd64", SOURCES)
    assert key == build_root.root_key("amd64", list(SOURCES))
    assert key != build_root.root_key("amd64", [SOURCES[0].replace("deb.debian.org", "mirror.example")])
    assert key != build_root.root_key("amd64", SOURCES, ("amd64",))
    assert key != build_root.root_key("arm64", SOURCES)


def test_root_command_chroots_in_a_private_mount_namespace(tmp_path: Path) -> None:
    root = build_root.BuildRoot(tmp_path / "root", "amd64", "k")
    cmd = root.command(["make", "-j2"], work=tmp_path / "w", cwd="/build/src", env={"A": "1"})
    assert cmd[:6] == ["unshare", "--mount", "--fork", "--propagation", "private", "--"]
    script = cmd[cmd.index("-c") + 1]
    assert 'exec chroot "$root"' in script and 'mount --bind "$work" "$root/build"' in script
    assert cmd[cmd.index("edge-build-root") + 1:][:3] == [str(tmp_path / "root"), str(tmp_path / "w"), "rw"]
    assert cmd[cmd.index("/usr/bin/env"):][:2] == ["/usr/bin/env", "-i"] and "A=1" in cmd
    assert cmd[-4:] == ["sh", "/build/src", "make", "-j2"]
    read_only = root.command(["crun", "--version"], work=tmp_path / "w", read_only=True)
    assert read_only[read_only.index("edge-build-root") + 3] == "ro"


def test_root_script_mounts_and_runs(tmp_path: Path) -> None:
    """The shell part, with mount/chroot replaced by echo: argument order and the read-only remount."""
    script = build_root.ROOT_SCRIPT.replace("mount ", "echo mount ").replace("exec chroot", "echo chroot")
    out = subprocess.run(["sh", "-c", script, "x", "/r", "/w", "ro", "env", "-i", "true"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[:3] == ["mount --rbind /dev /r/dev", "mount -t proc proc /r/proc", "mount --bind /w /r/build"]
    assert out[3:] == ["mount -o remount,bind,ro /r/build", "chroot /r env -i true"]
    out = subprocess.run(["sh", "-c", script, "x", "/r", "/w", "rw", "true"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[-1] == "chroot /r true" and not [line for line in out if "remount" in line]


def test_tools_and_emulator_differ_by_architecture_only(tmp_path: Path) -> None:
    root = build_root.BuildRoot(tmp_path, "amd64", "k")
    assert [root.tool(a, "gcc") for a in ("amd64", "arm64")] == ["x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc"]
    assert root.emulator("amd64") == [] and root.emulator("arm64") == ["qemu-aarch64-static"]
    assert root.pkg_config_libdir("arm64") == "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig"
    with pytest.raises(build_root.BuildRootError, match="riscv64"):
        root.tool("riscv64", "gcc")
    assert build_root.inside(tmp_path / "a" / "b", tmp_path) == "/build/a/b"
    assert build_root.inside(tmp_path, tmp_path) == "/build"


# -- crun in the root ------------------------------------------------------------------------


def test_crun_configure_is_the_same_for_native_and_cross() -> None:
    assert crun_builder.cross_args("x86_64-linux-gnu", "aarch64-linux-gnu") == [
        "--build=x86_64-linux-gnu", "--host=aarch64-linux-gnu", "CC=aarch64-linux-gnu-gcc", "PKG_CONFIG=pkg-config"]
    assert crun_builder.cross_args("x86_64-linux-gnu", "x86_64-linux-gnu")[:3] == [
        "--build=x86_64-linux-gnu", "--host=x86_64-linux-gnu", "CC=x86_64-linux-gnu-gcc"]
    env = crun_builder.build_env("arm64", "/usr/lib/aarch64-linux-gnu/pkgconfig")
    assert env["DEB_HOST_ARCH"] == "arm64" and env["PKG_CONFIG_LIBDIR"] == "/usr/lib/aarch64-linux-gnu/pkgconfig"
    assert env["DEB_BUILD_MAINT_OPTIONS"] == "hardening=+all"


def test_crun_cache_key_names_the_build_root_and_the_arch() -> None:
    pins = crun_builder.load_pins("arm64")
    key = crun_builder.cache_key("arm64", "wasmtime", pins, "root1")
    assert key == crun_builder.cache_key("arm64", "wasmtime", pins, "root1")
    assert key != crun_builder.cache_key("arm64", "wasmtime", pins, "root2")
    assert key != crun_builder.cache_key("amd64", "wasmtime", crun_builder.load_pins("amd64"), "root1")


def test_crun_version_check_wants_the_one_engine() -> None:
    pins = crun_builder.load_pins("arm64")
    good = "crun version 1.8.1\ncommit: f8a0\n+SYSTEMD +CAP +SECCOMP +WASM:wasmtime +YAJL\n"
    assert crun_builder._step_check_version(good, pins, "wasmtime").startswith("crun version 1.8.1")
    with pytest.raises(crun_builder.CrunBuildError, match=r"crun version 1\.8\.1"):
        crun_builder._step_check_version("qemu-aarch64 version 7.2.22\n", pins, "wasmtime")
    with pytest.raises(crun_builder.CrunBuildError, match="exactly one engine"):
        crun_builder._step_check_version(good.replace("+WASM:wasmtime", "+WASM:wasmedge"), pins, "wasmtime")
    readelf = " 0x1 (NEEDED)  Shared library: [libyajl.so.2]\n 0x1 (NEEDED)  Shared library: [libc.so.6]\n"
    assert crun_builder.needed_from_readelf(readelf) == ["libyajl.so.2", "libc.so.6"]


# -- apt's per-architecture view -------------------------------------------------------------


def _option(options: list[str], name: str) -> str:
    values = [options[i + 1].split("=", 1)[1] for i, o in enumerate(options)
              if o == "-o" and options[i + 1].split("=", 1)[0] == name]
    assert len(values) == 1, (name, options)
    return values[0]


def test_apt_options_are_private_per_release_and_architecture(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_provision.artifacts.CACHE_DIR", tmp_path)
    options = debian.apt_options("arm64")
    assert _option(options, "APT::Architecture") == _option(options, "APT::Architectures") == "arm64"
    for name in ("Dir::State", "Dir::State::status", "Dir::Cache", "Dir::Etc::SourceList", "Dir::Etc::SourceParts"):
        assert _option(options, name).startswith(f"{tmp_path}/apt/bookworm/arm64/"), name
    assert debian.apt_options("amd64") == [o.replace("arm64", "amd64") for o in options]
    assert debian.apt_options("arm64", "debian-13") == [o.replace("/bookworm/", "/trixie/") for o in options]
    assert not [o for o in options if "/var/lib" in o or "/etc/apt" in o]


def test_release_sources_move_the_distribution_entries_only(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    (tmp_path / "sources.list.d" / "vendor.list").write_text("deb https://vendor.example/apt stable main\n")
    key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
    assert debian.release_sources("debian-13", tmp_path) == [
        f"deb {key} http://deb.debian.org/debian trixie main",
        f"deb {key} http://deb.debian.org/debian trixie-updates main",
        f"deb {key} http://deb.debian.org/debian-security trixie-security main",
    ]
    assert debian.release_sources("debian-12", tmp_path) == debian.apt_sources(tmp_path)
    with pytest.raises(debian.DebianError, match="unsupported OS release 'debian-11'; supported: debian-12, debian-13"):
        debian.release_sources("debian-11", tmp_path)
    assert debian.release_error("debian-13") == ""


def test_apt_update_runs_when_new_or_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_provision.artifacts.CACHE_DIR", tmp_path)
    monkeypatch.setattr(debian, "release_sources", lambda release: SOURCES)
    calls: list[list[str]] = []
    monkeypatch.setattr(debian, "run", lambda what, cmd, **_: calls.append(list(cmd)) or "")
    debian._apt_update("arm64", "debian-12")
    assert [c[:3] for c in calls] == [["apt-get", "update", "-q"]] and "APT::Architecture=arm64" in calls[0]
    assert (tmp_path / "apt/bookworm/arm64/sources.list").read_text().splitlines()[1:] == SOURCES
    assert (tmp_path / "apt/bookworm/arm64/state/status").read_text() == ""
    debian._apt_update("arm64", "debian-12")
    assert len(calls) == 1, "fresh lists are reused"
    debian._apt_update("arm64", "debian-12", force=True)
    assert len(calls) == 2
    monkeypatch.setattr(debian, "release_sources", lambda release: [*SOURCES, SOURCES[0] + " contrib"])
    debian._apt_update("arm64", "debian-12")
    assert len(calls) == 3, "changed sources refresh the lists"
    debian._apt_update("arm64", "debian-13")
    assert len(calls) == 4 and (tmp_path / "apt/trixie/arm64/sources.list").is_file(), "one view per release"


@pytest.fixture
def cache_without_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache in ``tmp_path``, the private apt lists taken as fresh (no apt-get update)."""
    monkeypatch.setattr("edge_provision.artifacts.CACHE_DIR", tmp_path)
    monkeypatch.setattr("edge_provision.artifacts.ARTIFACTS_DIR", tmp_path / "artifacts")
    monkeypatch.setattr(debian, "_apt_update", lambda arch, release, force=False: None)


@pytest.mark.usefixtures("cache_without_update")
def test_debs_resolves_and_downloads_through_the_private_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def run(what: str, cmd: list[str], cwd: Path | None = None, **_: Any) -> str:
        calls.append(list(cmd))
        if cmd[0] == "apt-cache" and "depends" in cmd:
            return "busybox-static\n  Depends: <nothing>\n"
        if cmd[0] == "apt-cache":
            return "Package: busybox-static\nVersion: 1:1.35.0-4\n"
        if cmd[:2] == ["apt-get", "download"]:
            assert cwd is not None
            (cwd / "busybox-static_1.35.0-4_arm64.deb").write_bytes(b"deb")
            return ""
        return "busybox-static\t1:1.35.0-4"

    monkeypatch.setattr(debian, "run", run)
    [deb] = debian.debs(["busybox-static"], "arm64")
    assert deb["package"] == "busybox-static" and deb["version"] == "1:1.35.0-4"
    assert Path(deb["path"]).parent == tmp_path / "artifacts/debs/bookworm/arm64"
    apt_calls = [c for c in calls if c[0].startswith("apt")]
    assert all("APT::Architecture=arm64" in c for c in apt_calls)
    assert not [c for c in calls for a in c if a.endswith(":arm64")], "no foreign-architecture qualifier"
    assert calls[2][:3] == ["apt-get", "download", "-q"] and calls[2][-1] == "busybox-static=1:1.35.0-4"
    calls.clear()
    debian.debs(["busybox-static"], "arm64")
    assert not [c for c in calls if c[:2] == ["apt-get", "download"]], "a cached .deb is reused"


@pytest.mark.usefixtures("cache_without_update")
def test_a_superseded_package_leaves_the_cache_with_the_archives_that_packed_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offered = {"runc": "1.1.5-1", "libc6": "2.36-9"}

    def run(what: str, cmd: list[str], cwd: Path | None = None, **_: Any) -> str:
        if cmd[0] == "apt-cache" and "depends" in cmd:
            return "runc\n  Depends: libc6\nlibc6\n"
        if cmd[0] == "apt-cache":
            return "".join(f"Package: {n}\nVersion: {v}\n\n" for n, v in offered.items())
        if cmd[:2] == ["apt-get", "download"]:
            assert cwd is not None
            for wanted in [a for i, a in enumerate(cmd) if "=" in a and cmd[i - 1] != "-o"]:
                name, version = wanted.split("=")
                (cwd / f"{name}_{version}_arm64.deb").write_text(wanted)
            return ""
        name, version = Path(cmd[-1]).name.split("_")[:2]
        return f"{name}\t{version}"

    monkeypatch.setattr(debian, "run", run)
    cache = tmp_path / "artifacts/debs/bookworm/arm64"
    old = debian.debs(["runc"], "arm64")
    with_runc = Path(runtime_controller.debs_plan(old, staging_dir="/s")["archive"])
    libc_only = Path(runtime_controller.debs_plan(old[1:], staging_dir="/s")["archive"])
    assert with_runc.parent == libc_only.parent == cache / "archives"
    offered["runc"] = "1.1.5-1+deb12u1"  # a point release
    new = debian.debs(["runc"], "arm64")
    assert [d["version"] for d in new] == ["1.1.5-1+deb12u1", "2.36-9"]
    assert sorted(p.name for p in cache.glob("*.deb")) == ["libc6_2.36-9_arm64.deb", "runc_1.1.5-1+deb12u1_arm64.deb"]
    assert sorted(json.loads((cache / "index.json").read_text())) == ["libc6=2.36-9", "runc=1.1.5-1+deb12u1"]
    assert not with_runc.exists() and libc_only.exists(), "only archives of the superseded package go"


# -- images for any architecture -------------------------------------------------------------


def _deb(tmp_path: Path, member: str, data: bytes) -> Path:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: busybox-static\nVersion: 1:1.35.0-4\nArchitecture: arm64\nMaintainer: x <x@x>\nDescription: x\n")
    path = root / member.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(tmp_path / "b.deb")],
                   check=True, capture_output=True)
    return tmp_path / "b.deb"


def _elf(machine: int) -> bytes:
    """A minimal static 64-bit little-endian ELF header (no program headers)."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[18:20] = machine.to_bytes(2, "little")
    return bytes(header)


def test_busybox_image_takes_the_binary_of_the_nodes_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deb = _deb(tmp_path, "/bin/busybox", _elf(183))  # EM_AARCH64
    assert images.deb_member(deb, "/bin/busybox") == _elf(183)
    monkeypatch.setattr(images, "busybox_deb", lambda arch: (deb, "1:1.35.0-4"))
    monkeypatch.setattr("edge_provision.artifacts.ARTIFACTS_DIR", tmp_path / "artifacts")
    tarball = images.build_busybox_image("arm64")
    info: dict[str, Any] = json.loads((tarball.parent / "image.json").read_text())
    assert info["platforms"] == ["linux/arm64"] and info["reference"] == "edge-provision.local/busybox:1.35.0"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "index.json" in names
    with pytest.raises(images.ImageBuildError, match="wanted static amd64"):
        images.build_busybox_image("amd64")
    with pytest.raises(images.ImageBuildError, match="has no /bin/sh"):
        images.deb_member(deb, "/bin/sh")


def test_ensure_root_runs_mmdebstrap_in_its_own_mount_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge_provision.artifacts.CACHE_DIR", tmp_path)
    monkeypatch.setattr(debian, "apt_sources", lambda: SOURCES)
    monkeypatch.setattr(build_root, "native_arch", lambda: "amd64")
    seen: list[list[str]] = []

    def fail(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 2)

    monkeypatch.setattr(build_root.subprocess, "run", fail)
    with pytest.raises(build_root.BuildRootError, match="mmdebstrap exited with 2"):
        build_root.ensure_root()
    assert seen[0][:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert seen[0][5] == "mmdebstrap"
    assert [p.name for p in (tmp_path / "build-root").iterdir() if p.is_dir()] == [], "no partial root kept"


def test_lock_waits_without_blocking_a_gevent_process(tmp_path: Path) -> None:
    """pyinfra runs hosts as greenlets: a second holder of the lock must poll with a (patched) sleep,
    never sit in a blocking flock() that stops the first holder too."""
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import gevent, subprocess, sys\n"
        "from pathlib import Path\n"
        "from edge_provision.artifacts import locked\n"
        "lock = Path(sys.argv[1])\n"
        "def work(n):\n"
        "    with locked(lock):\n"
        "        subprocess.run(['sleep', '0.3'], check=True)\n"
        "    return n\n"
        "jobs = [gevent.spawn(work, n) for n in range(3)]\n"
        "gevent.joinall(jobs, timeout=20)\n"
        "print(sorted(j.value for j in jobs if j.successful()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.lock")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.stdout.strip() == "[0, 1, 2]", out.stdout + out.stderr
