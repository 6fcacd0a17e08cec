"""Stage runtime on fresh lab hosts (host_prep first), once per engine, each on its own hosts.

A mixed fleet: lab-1 runs Debian 12, lab-2 Debian 13. containerd from each release's packages
shipped from the controller, its config with the Wasm handler; crun built with wasmtime on the
controller for Debian 12, Debian 13's own crun built with WasmEdge (with libwasmedge0) for
Debian 13, the lab's engine per release. The Wasm sample runs through containerd with each crun
and fails with plain runc. Tested through `ctr` (no kubelet, and Debian 12 has no crictl):
`ctr run` takes the runtime binary and annotations on its command line, so the CRI handler's
table in config.toml is checked as parsed back, and the CRI plugin as loaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edge_provision.artifacts import debian, fetch
from edge_provision.artifacts.builders import crun as crun_builder
from edge_provision.artifacts.builders.images import pause_reference
from edge_provision.lab import Lab
from edge_provision.lab.inventory_writer import LAB_WASM_ENGINES
from edge_provision.role_files import role_defaults
from edge_provision.stages.runtime.containerd_config import WASM_ANNOTATIONS, runtime_handler, schema_for
from tests.checks import runtime
from tests.conftest import ROOT, run, tool
from tests.lab.conftest import EngineRun, LabFleet, ansible_changed, flat, pyinfra_changed

RELEASES = {"lab-1": "debian-12", "lab-2": "debian-13"}
WASM_ENGINE = {name: LAB_WASM_ENGINES[release] for name, release in RELEASES.items()}
C = role_defaults("containerd")
CONFIG = C["containerd_config_file"]
CRUN = role_defaults("edge")["edge_wasm_crun_path"]
VERSIONS = yaml.safe_load(fetch.VERSIONS_FILE.read_text())
@pytest.fixture(scope="module", params=["ansible", "pyinfra"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def fleet(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFleet]:
    """A fresh lab per engine (the shared lab_fleet would hand the second engine hosts the
    first one converged)."""
    inventory = tmp_path_factory.mktemp(f"runtime-{engine}") / "fleet"
    lab = Lab(inventory)
    try:
        yield LabFleet(lab=lab, inventory=inventory, hosts=lab.up(len(RELEASES), releases=list(RELEASES.values())))
    finally:
        lab.down()


def converge(fleet: LabFleet, engine: str, *extra: str, stages: str = "runtime") -> EngineRun:
    """One stage through the real entry points: site.yml --tags, deploy.py edge_stages."""
    if engine == "ansible":
        result = run([tool("ansible-playbook"), "-i", str(fleet.inventory), "playbooks/site.yml",
                      "--tags", stages, *extra])
        return EngineRun(result, changed=ansible_changed(result.stdout) if "PLAY RECAP" in result.stdout else -1)
    result = run([tool("pyinfra"), "-y", str(fleet.inventory / "inventory.py"), "deploy.py",
                  "--data", f"edge_stages={stages}", *extra])
    output = result.stdout + result.stderr
    return EngineRun(result, changed=pyinfra_changed(output) if "Grand total" in output else -1)


@pytest.fixture(scope="module")
def cold_run(fleet: LabFleet, engine: str) -> EngineRun:
    converge(fleet, engine, stages="host_prep").ok()
    started = time.monotonic()
    result = converge(fleet, engine).ok()
    print(f"\nruntime cold converge ({engine}): {time.monotonic() - started:.1f} s")
    return result


def test_cold_run_changes_the_hosts(cold_run: EngineRun) -> None:
    assert cold_run.changed > 0


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_containerd_runs_with_the_cri_plugin(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    runtime.containerd_runs_with_the_cri_plugin(fleet.testinfra(name))


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_config_has_the_wasm_handler(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    import tomlkit

    text = fleet.sh(name, f"cat {CONFIG}")
    schema = schema_for(fleet.sh(name, "containerd --version").split()[2])
    handler = runtime_handler(text, schema, role_defaults("edge")["edge_wasm_handler"])
    assert handler["runtime_type"] == "io.containerd.runc.v2"
    assert handler["options"] == {"BinaryName": CRUN, "SystemdCgroup": True}  # systemd is PID 1 in the lab
    for key in ("pod_annotations", "container_annotations"):
        assert set(WASM_ANNOTATIONS) <= set(handler[key])
    cri = tomlkit.parse(text).unwrap()["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == pause_reference()
    assert cri["restrict_oom_score_adj"] is True  # lab hosts lack CAP_SYS_RESOURCE
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_crun_has_the_wasm_engine(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    runtime.crun_has_the_wasm_engine(fleet.testinfra(name), CRUN, WASM_ENGINE[name])


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_each_host_runs_its_release(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    suite = debian.RELEASES[RELEASES[name]]
    assert fleet.sh(name, ". /etc/os-release && echo $VERSION_CODENAME").strip() == suite
    # that release's package: Debian N's stable updates carry +debNuM (1.6.20~ds1-1+deb12u3)
    version = fleet.sh(name, "dpkg-query -W -f '${Version}' containerd")
    assert f"+deb{RELEASES[name].split('-')[1]}u" in version, version


def test_debian_13_runs_its_own_crun_with_wasmedge(fleet: LabFleet, cold_run: EngineRun) -> None:
    """No crun from the controller on Debian 13: the handler's path links to the distribution's
    crun, which loads libwasmedge0's library (both Debian packages, shipped from the controller)."""
    host = fleet.testinfra("lab-2")
    assert host.file(CRUN).is_symlink and host.file(CRUN).linked_to == role_defaults("edge")["edge_wasm_distro_crun"]
    assert host.package("crun").is_installed and host.package("libwasmedge0").is_installed
    # crun dlopen()s WasmEdge (no NEEDED entry): the loader finds libwasmedge0's library
    assert [line for line in host.check_output("ldconfig -p").splitlines()
            if line.strip().startswith("libwasmedge.so.0 ")]
    assert [f for f in host.check_output("dpkg-query -L libwasmedge0").split() if f.endswith("/libwasmedge.so.0")]
    assert not host.file("/usr/local/lib/libwasmtime.so").exists


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_images_imported(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    runtime.images_imported(fleet.testinfra(name), C["containerd_namespace"])


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_wasm_image_runs_with_crun_wasm(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    print(f"\n{name} ({RELEASES[name]}, {WASM_ENGINE[name]}):", end="")
    runtime.wasm_image_runs_with_crun_wasm(fleet.testinfra(name), CRUN)


@pytest.mark.parametrize("name", ["lab-1", "lab-2"])
def test_wasm_image_fails_with_runc(fleet: LabFleet, cold_run: EngineRun, name: str) -> None:
    runtime.wasm_image_fails_with_runc(fleet.testinfra(name))


def test_busybox_runs_with_runc(fleet: LabFleet, cold_run: EngineRun) -> None:
    runtime.busybox_runs_with_runc(fleet.testinfra("lab-2"))


def test_second_run_changes_nothing(fleet: LabFleet, engine: str, cold_run: EngineRun) -> None:
    started = time.monotonic()
    again = converge(fleet, engine).ok()
    print(f"\nruntime no-op converge ({engine}): {time.monotonic() - started:.1f} s")
    assert again.changed == 0, again.output[-6000:]


def test_the_other_engine_finds_nothing_to_change(fleet: LabFleet, engine: str, cold_run: EngineRun) -> None:
    other = "pyinfra" if engine == "ansible" else "ansible"
    extra = ("--check", "--diff") if other == "ansible" else ()
    result = converge(fleet, other, *extra).ok()
    assert result.changed == 0, result.output[-6000:]


def test_rejected_config_keeps_containerd_running_on_the_old_one(
    fleet: LabFleet, engine: str, cold_run: EngineRun
) -> None:
    """A sandbox image of the wrong type (an int, as an extra-vars override can inject)
    makes a config containerd rejects: the run fails with containerd's error before any
    restart, the old file stays, and containerd keeps running."""
    before = {n: fleet.sh(n, f"sha256sum {CONFIG}; systemctl show -p MainPID --value containerd")
              for n in ("lab-1", "lab-2")}
    if engine == "ansible":
        result = converge(fleet, engine, "-e", '{"containerd_sandbox_image": 5}')
    else:
        result = converge(fleet, engine, "--data", "containerd_sandbox_image=5")
    assert result.result.returncode != 0
    assert "sandbox_image" in result.output or "int64" in result.output, result.output[-4000:]
    for name, state in before.items():
        assert fleet.sh(name, f"sha256sum {CONFIG}; systemctl show -p MainPID --value containerd") == state
        assert fleet.testinfra(name).service("containerd").is_running
    assert converge(fleet, engine).ok().changed == 0


def test_an_unsupported_release_fails_naming_host_and_release(
    fleet: LabFleet, engine: str, cold_run: EngineRun
) -> None:
    """lab-2's /etc/os-release says Ubuntu: the runtime stage refuses it in its preflight, naming
    the host and the release, and changes nothing on any host."""
    keep = "/root/os-release.edge-test"
    fake = 'ID=ubuntu\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n'
    fleet.sh("lab-2", f"cp -P /etc/os-release {keep} && rm /etc/os-release && printf '{fake}' > /etc/os-release")
    try:
        result = failed_converge(fleet, engine, {})
    finally:
        fleet.sh("lab-2", f"rm -f /etc/os-release && mv {keep} /etc/os-release")
    assert ("host lab-2 runs Ubuntu 24.04.1 LTS: unsupported OS release 'ubuntu-24'; supported: "
            "debian-12, debian-13") in flat(result.output), result.output[-3000:]


def test_root_is_the_repository() -> None:
    assert (ROOT / "playbooks" / "runtime.yml").is_file()


# -- the artifact source: a missing or mismatching file stops the run before any host changes ----

HOST_STATE = (f"sha256sum {CONFIG} {CRUN}; systemctl show -p MainPID --value containerd; "
              "dpkg-query -W containerd runc; ls -l /usr/local/bin /usr/local/sbin; "
              "ls -lR /var/cache/edge-provision /var/lib/edge-provision 2>/dev/null || true")


def failed_converge(fleet: LabFleet, engine: str, overrides: dict[str, str]) -> EngineRun:
    """A runtime converge with fleet overrides that must fail and leave every host as it was."""
    before = {h.name: fleet.sh(h.name, HOST_STATE) for h in fleet.hosts}
    if engine == "ansible":
        result = converge(fleet, engine, "-e", json.dumps(overrides))
    else:
        result = converge(fleet, engine, *[a for k, v in overrides.items() for a in ("--data", f"{k}={v}")])
    assert result.result.returncode != 0, result.output[-4000:]
    for name, state in before.items():
        assert fleet.sh(name, HOST_STATE) == state, name
        assert fleet.testinfra(name).service("containerd").is_running
    return result


@pytest.fixture(scope="module")
def crun_source_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact source holding crun's release source and nothing else: Debian's
    crun_<version>.orig.tar.xz, the very bytes of upstream's crun-<version>.tar.xz (both have the
    sha256 pinned as crun_release), under the release's file name."""
    crun = fetch.pinned("crun_release", "amd64")
    work = tmp_path_factory.mktemp("crun-debian-source")
    debian.ensure_deb_src()
    crun_builder.apt_source(work, "crun", VERSIONS["crun"]["debian_version"], "crun.debian_version")
    source = tmp_path_factory.mktemp("artifacts")
    shutil.copyfile(work / f"crun_{crun.version}.orig.tar.xz", source / crun.file)
    return source


def test_wasmedge_fleet_without_the_wasmedge_tarball_fails_before_changing_the_hosts(
    fleet: LabFleet, engine: str, cold_run: EngineRun, crun_source_only: Path
) -> None:
    arch = fleet.hosts[0].arch
    wasmedge, crun = fetch.pinned("wasmedge", arch), fetch.pinned("crun_release", arch)
    (fetch.DOWNLOADS_DIR / crun.file).unlink(missing_ok=True)  # so it must come from the source
    result = failed_converge(fleet, engine, {"edge_wasm_engine": "wasmedge",
                                             "edge_artifact_source": str(crun_source_only)})
    output = flat(result.output)
    assert f"cannot fetch {wasmedge.file} from {crun_source_only / wasmedge.file}: no such file" in output, output[-3000:]
    assert "not available" not in output
    # crun's release source was in the source and verified: only the WasmEdge tarball is named.
    assert f"cannot fetch {crun.file}" not in output and "sha256 mismatch" not in output
    assert fetch.sha256_file(fetch.DOWNLOADS_DIR / crun.file) == crun.sha256


def test_release_archive_with_another_checksum_fails_and_leaves_the_hosts_unchanged(
    fleet: LabFleet, engine: str, cold_run: EngineRun, tmp_path: Path
) -> None:
    arch = fleet.hosts[0].arch
    archive, runc = fetch.pinned("containerd_release", arch), fetch.pinned("runc_release", arch)
    source = tmp_path / "artifacts"
    source.mkdir()
    (source / archive.file).write_bytes(b"not containerd's release archive\n")
    (source / runc.file).write_bytes(b"not runc\n")
    result = failed_converge(fleet, engine, {"containerd_install_from": "release",
                                             "edge_artifact_source": str(source)})
    actual = hashlib.sha256(b"not containerd's release archive\n").hexdigest()
    output = flat(result.output)
    assert (f"sha256 mismatch for {archive.file} from {source / archive.file}: expected {archive.sha256}, "
            f"actual {actual}") in output, output[-3000:]
    for host in fleet.hosts:
        assert not fleet.testinfra(host.name).file("/usr/local/bin/containerd").exists
