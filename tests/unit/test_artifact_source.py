"""Artifact sources and `edge-provision artifacts fetch|list`: one download+verify path
(edge_provision.artifacts.fetch), exercised against a real loopback HTTP mirror."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edge_provision import cli, inventory
from edge_provision.artifacts import fetch

VERSIONS = yaml.safe_load(fetch.VERSIONS_FILE.read_text())
SAMPLE = b"edge-provision sample artifact\n" * 100
SAMPLE_SHA256 = hashlib.sha256(SAMPLE).hexdigest()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A directory served over HTTP on 127.0.0.1 (an ephemeral port): (base URL, directory)."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()


def pins_file(tmp_path: Path, sha256: str = SAMPLE_SHA256) -> Path:
    """A pins file with one download, `sample`, whose upstream URL is never contacted."""
    path = tmp_path / "versions.yml"
    path.write_text(yaml.safe_dump({"sample": {"version": "1.0", "downloads": {"any": {
        "url": "https://releases.invalid/sample/1.0/sample-1.0.bin", "sha256": sha256}}}}))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the pins ------------------------------------------------------------------------------------


def test_every_pinned_download_has_a_url_and_a_real_sha256_for_both_architectures() -> None:
    downloads = fetch.load_downloads()
    by_name: dict[str, set[str]] = {}
    for d in downloads:
        assert d.url.startswith("https://") and d.file, d
        assert len(d.sha256) == 64 and int(d.sha256, 16) >= 0, d
        by_name.setdefault(d.name, set()).add(d.arch)
    assert by_name == {"containerd_release": {"amd64", "arm64"}, "runc_release": {"amd64", "arm64"},
                       "wasmedge": {"amd64", "arm64"}, "crun_release": {"any"}, "k3s": {"amd64", "arm64"}}
    files = [d.file for d in downloads]
    assert len(files) == len(set(files)), "a bundle holds files by name: names must be unique"
    assert {d.sha256 for d in downloads} == {
        pin["sha256"] for entry in VERSIONS.values() if "downloads" in entry for pin in entry["downloads"].values()
    }


def test_arch_filter_keeps_that_arch_and_source_archives() -> None:
    arm = fetch.load_downloads(arch="arm64")
    assert {d.arch for d in arm} == {"arm64", "any"}
    assert "crun-1.8.1.tar.xz" in [d.file for d in arm]


def test_unknown_entry_is_an_error_not_nothing() -> None:
    with pytest.raises(fetch.ArtifactFetchError, match="no downloads pinned for containerdd"):
        fetch.load_downloads(names=["containerdd"])


# -- sources -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "ok"), [
    ("upstream", True), ("/srv/edge-artifacts", True), ("file:///srv/edge-artifacts", True),
    ("http://127.0.0.1:8080/mirror/", True), ("https://mirror.example.org/edge", True),
    ("bundle", False), ("ftp://mirror.example.org/", False), ("http://", False), ("", False), (5, False),
])
def test_source_forms(source: object, ok: bool) -> None:
    assert (fetch.source_problem(source) is None) is ok


def test_location_per_source() -> None:
    d = fetch.pinned("wasmedge", "arm64")
    assert fetch.location(d, "upstream") == VERSIONS["wasmedge"]["downloads"]["arm64"]["url"]
    assert fetch.location(d, "/srv/a") == "/srv/a/WasmEdge-0.13.5-manylinux2014_aarch64.tar.gz"
    assert fetch.location(d, "file:///srv/a") == "/srv/a/WasmEdge-0.13.5-manylinux2014_aarch64.tar.gz"
    for base in ("http://127.0.0.1:9/m", "http://127.0.0.1:9/m/"):
        assert fetch.location(d, base) == "http://127.0.0.1:9/m/WasmEdge-0.13.5-manylinux2014_aarch64.tar.gz"


def test_fleet_check_rejects_a_relative_artifact_source(write_fleet) -> None:  # type: ignore[no-untyped-def]
    hosts = "all:\n  children:\n    control_plane:\n      hosts:\n        cp: {ansible_host: 192.0.2.1}\n"
    with pytest.raises(inventory.InventoryError) as failed:
        inventory.load(write_fleet(hosts, "edge_artifact_source: bundle\n"))
    assert failed.value.problems == [
        "host 'cp': field 'edge_artifact_source': 'bundle' is neither 'upstream', an absolute directory "
        "nor an http(s) URL"
    ]
    fleet = inventory.load(write_fleet(hosts, "edge_artifact_source: http://127.0.0.1:8080/\n"))
    assert inventory.validate(fleet) == []
    defaulted = inventory.load(write_fleet(hosts, "edge_wasm_engine: wasmtime\n"))
    assert defaulted.hosts[0].vars["edge_artifact_source"] == "upstream"


# -- fetch through the CLI, from a loopback mirror --------------------------------------------------


def test_fetch_from_a_loopback_mirror_verifies_and_writes_a_manifest(
    tmp_path: Path, mirror: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, root = mirror
    (root / "sample-1.0.bin").write_bytes(SAMPLE)
    bundle = tmp_path / "bundle"
    versions = pins_file(tmp_path)
    assert cli.main(["artifacts", "fetch", "--versions", str(versions), "--source", base,
                     "--dest", str(bundle)]) == 0
    assert (bundle / "sample-1.0.bin").read_bytes() == SAMPLE
    manifest = yaml.safe_load((bundle / "manifest.json").read_text())
    assert manifest["artifacts"] == [{"name": "sample", "version": "1.0", "arch": "any", "file": "sample-1.0.bin",
                                      "url": "https://releases.invalid/sample/1.0/sample-1.0.bin",
                                      "sha256": SAMPLE_SHA256}]
    assert "1 of 1 artifacts fetched and verified" in capsys.readouterr().out

    # A verified file is kept: no traffic (the mirror is emptied), same result.
    (root / "sample-1.0.bin").unlink()
    assert cli.main(["artifacts", "fetch", "--versions", str(versions), "--source", base,
                     "--dest", str(bundle)]) == 0
    capsys.readouterr()
    assert cli.main(["artifacts", "list", "--versions", str(versions), "--dest", str(bundle)]) == 0
    assert "sample-1.0.bin" in (out := capsys.readouterr().out) and "verified" in out

    # The bundle is itself an artifact source (a directory).
    copy = tmp_path / "copy"
    assert fetch.fetch(fetch.pinned("sample", "amd64", versions), str(bundle), copy).read_bytes() == SAMPLE


def test_a_corrupted_file_is_rejected_naming_file_expected_and_actual(
    tmp_path: Path, mirror: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, root = mirror
    corrupted = SAMPLE[:-1] + b"X"
    (root / "sample-1.0.bin").write_bytes(corrupted)
    bundle = tmp_path / "bundle"
    assert cli.main(["artifacts", "fetch", "--versions", str(pins_file(tmp_path)), "--source", base,
                     "--dest", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch for sample-1.0.bin" in err
    assert f"expected {SAMPLE_SHA256}" in err
    assert f"actual {hashlib.sha256(corrupted).hexdigest()}" in err
    assert f"{base}sample-1.0.bin" in err
    assert list(bundle.iterdir()) == [], "nothing of the rejected file is left"


def test_a_corrupted_bundle_file_is_listed_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "sample-1.0.bin").write_bytes(b"tampered")
    assert cli.main(["artifacts", "list", "--versions", str(pins_file(tmp_path)), "--dest", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert f"sha256 mismatch: expected {SAMPLE_SHA256}, actual {hashlib.sha256(b'tampered').hexdigest()}" in out


def test_upstream_unreachable_fails_per_artifact_with_name_url_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real pins, source upstream. The upstream hosts are unreachable here; the HTTPS proxy
    is pointed at a closed loopback port so no packet leaves the machine."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    bundle = tmp_path / "bundle"
    assert cli.main(["artifacts", "fetch", "--arch", "amd64", "--dest", str(bundle)]) == 1
    captured = capsys.readouterr()
    failures = [line for line in captured.err.splitlines() if line.startswith("FAILED")]
    expected = fetch.load_downloads(arch="amd64")
    assert len(failures) == len(expected) == 5
    for d, line in zip(expected, failures, strict=True):
        assert f"{d.name} {d.version} ({d.arch}): cannot fetch {d.file} from {d.url}: " in line
        assert "refused" in line.lower()
    assert "0 of 5 artifacts fetched" in captured.out
    assert not bundle.exists() or not [p for p in bundle.iterdir() if p.name != "manifest.json"]


def test_missing_file_in_a_directory_source(tmp_path: Path) -> None:
    versions = pins_file(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(fetch.ArtifactFetchError, match=r"cannot fetch sample-1.0.bin from .*/empty/sample-1.0.bin: "
                                                        r"no such file"):
        fetch.fetch(fetch.pinned("sample", "amd64", versions), str(tmp_path / "empty"), tmp_path / "dest")


@pytest.mark.parametrize("sha256", ["", "0", "not-a-checksum"])
def test_a_download_without_a_valid_sha256_is_refused(tmp_path: Path, mirror: tuple[str, Path], sha256: str) -> None:
    base, root = mirror
    (root / "sample-1.0.bin").write_bytes(SAMPLE)
    download = fetch.pinned("sample", "amd64", pins_file(tmp_path, sha256))
    with pytest.raises(fetch.ArtifactFetchError, match="refusing to use an unchecked download"):
        fetch.fetch(download, base, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_http_error_is_named(tmp_path: Path, mirror: tuple[str, Path]) -> None:
    base, _ = mirror
    with pytest.raises(fetch.ArtifactFetchError, match="HTTP 404"):
        fetch.fetch(fetch.pinned("sample", "amd64", pins_file(tmp_path)), base, tmp_path / "dest")
