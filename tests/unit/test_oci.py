"""Registry-less OCI image tarballs: structure, names, platforms, digests, determinism (no tools needed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path

import pytest

from edge_provision.artifacts import oci
from edge_provision.artifacts.builders import images
from edge_provision.artifacts.builders._common import elf_info
from edge_provision.artifacts.debian import upstream_version

REF = "edge-provision.local/sample:1.2.3"
FILES = [
    oci.FileEntry.executable("/bin/tool", b"\x7fELF fake tool"),
    oci.FileEntry.symlink("/bin/alias", "tool"),
    oci.FileEntry.file("etc/motd", b"hello\n"),
    oci.FileEntry.dir("/tmp", 0o1777),
]
CONFIG = oci.ImageConfig(
    entrypoint=["/bin/tool"],
    cmd=["--serve"],
    env=["PATH=/bin", "MODE=demo"],
    workdir="/tmp",
    labels={"org.example.role": "sample"},
)


def build(**overrides: object) -> oci.Image:
    kwargs: dict[str, object] = {
        "config": CONFIG,
        "platforms": [oci.Platform.linux("amd64"), oci.Platform.linux("armhf")],
        "annotations": {"org.opencontainers.image.version": "1.2.3"},
        "manifest_annotations": {"module.wasm.image/variant": "compat-smart"},
    }
    kwargs.update(overrides)
    return oci.build_image(REF, [FILES], **kwargs)  # type: ignore[arg-type]


def members(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


def blob(files: dict[str, bytes], digest: str) -> bytes:
    return files["blobs/sha256/" + digest.split(":", 1)[1]]


def test_building_twice_gives_identical_bytes_and_digests() -> None:
    one, two = build(), build()
    assert oci.archive_bytes(one) == oci.archive_bytes(two)
    assert one.digest == two.digest
    assert [b.digest for b in one.blobs()] == [b.digest for b in two.blobs()]


def test_file_order_does_not_matter_but_content_does() -> None:
    shuffled = oci.build_image(
        REF, [list(reversed(FILES))], config=CONFIG, platforms=[oci.Platform.linux("amd64")]
    )
    plain = oci.build_image(REF, [FILES], config=CONFIG, platforms=[oci.Platform.linux("amd64")])
    assert shuffled.digest == plain.digest
    changed = oci.build_image(
        REF,
        [[*FILES[:2], oci.FileEntry.file("etc/motd", b"bye\n"), FILES[3]]],
        config=CONFIG,
        platforms=[oci.Platform.linux("amd64")],
    )
    assert changed.digest != plain.digest


def test_archive_layout_and_tar_metadata() -> None:
    image = build()
    data = oci.archive_bytes(image)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        infos = tar.getmembers()
    names = [m.name for m in infos]
    blob_names = [n for n in names if n.startswith("blobs/sha256/") and n != "blobs/sha256"]
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert blob_names == sorted(blob_names)
    assert names[-2:] == ["index.json", "oci-layout"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in infos)
    files = members(data)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    # one layer, two platforms: index + 2 manifests + 2 configs + 1 layer
    assert len(blob_names) == 6
    for name in blob_names:
        assert hashlib.sha256(files[name]).hexdigest() == name.rsplit("/", 1)[1]
    assert oci.verify_archive(files) == []


def test_index_json_names_the_image_for_containerd_and_oci_tools() -> None:
    image = build()
    index = json.loads(image.index_json())
    assert index["schemaVersion"] == 2
    (desc,) = index["manifests"]
    assert desc["mediaType"] == oci.MEDIA_TYPE_INDEX
    assert desc["digest"] == image.digest
    assert desc["size"] == image.index.size
    assert desc["annotations"] == {
        "io.containerd.image.name": REF,
        "org.opencontainers.image.ref.name": "1.2.3",
    }


def test_image_index_has_one_manifest_per_platform() -> None:
    image = build()
    files = members(oci.archive_bytes(image))
    index = json.loads(blob(files, image.digest))
    assert index["mediaType"] == oci.MEDIA_TYPE_INDEX
    platforms = [m["platform"] for m in index["manifests"]]
    assert platforms == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
    ]
    assert index["annotations"]["org.opencontainers.image.version"] == "1.2.3"
    assert all(m["mediaType"] == oci.MEDIA_TYPE_MANIFEST for m in index["manifests"])


def test_manifests_share_the_layer_and_carry_annotations() -> None:
    image = build()
    files = members(oci.archive_bytes(image))
    index = json.loads(blob(files, image.digest))
    layer_digests = set()
    for entry in index["manifests"]:
        manifest = json.loads(blob(files, entry["digest"]))
        assert len(blob(files, entry["digest"])) == entry["size"]
        assert manifest["schemaVersion"] == 2
        assert manifest["config"]["mediaType"] == oci.MEDIA_TYPE_CONFIG
        assert [layer["mediaType"] for layer in manifest["layers"]] == [oci.MEDIA_TYPE_LAYER_GZIP]
        layer_digests.add(manifest["layers"][0]["digest"])
        assert manifest["annotations"]["module.wasm.image/variant"] == "compat-smart"
        assert manifest["annotations"]["org.opencontainers.image.version"] == "1.2.3"
        assert manifest["annotations"]["org.opencontainers.image.created"] == oci.CREATED
    assert len(layer_digests) == 1


def test_config_carries_platform_runtime_settings_and_diff_ids() -> None:
    image = build()
    files = members(oci.archive_bytes(image))
    index = json.loads(blob(files, image.digest))
    arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm")
    manifest = json.loads(blob(files, arm["digest"]))
    config = json.loads(blob(files, manifest["config"]["digest"]))
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm", "v7")
    assert config["config"] == {
        "Entrypoint": ["/bin/tool"],
        "Cmd": ["--serve"],
        "Env": ["PATH=/bin", "MODE=demo"],
        "WorkingDir": "/tmp",
        "Labels": {"org.example.role": "sample"},
    }
    layer = blob(files, manifest["layers"][0]["digest"])
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()],
    }
    assert config["created"] == oci.CREATED


def test_layer_lists_sorted_entries_with_parents_modes_and_links() -> None:
    image = build()
    assert oci.list_layer(image.layers[0].blob.data) == [
        ("bin", "dir", 0o755, ""),
        ("bin/alias", "symlink", 0o777, "tool"),
        ("bin/tool", "file", 0o755, ""),
        ("etc", "dir", 0o755, ""),
        ("etc/motd", "file", 0o644, ""),
        ("tmp", "dir", 0o1777, ""),
    ]
    with tarfile.open(fileobj=io.BytesIO(image.layers[0].tar), mode="r:") as tar:
        infos = tar.getmembers()
        motd = tar.extractfile("etc/motd")
        assert motd is not None and motd.read() == b"hello\n"
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == m.gname == "" for m in infos)


def test_gzip_layer_is_reproducible_and_uncompressed_is_an_option() -> None:
    gz = oci.make_layer(FILES)
    assert gz.blob.data[:2] == b"\x1f\x8b"
    assert gz.blob.data[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert gzip.decompress(gz.blob.data) == gz.tar
    plain = oci.make_layer(FILES, compress=False)
    assert plain.blob.media_type == oci.MEDIA_TYPE_LAYER
    assert plain.blob.data == plain.tar == gz.tar
    assert plain.diff_id == gz.diff_id


def test_single_platform_image_and_write_read(tmp_path: Path) -> None:
    image = oci.build_image(REF, [FILES], config=CONFIG, platforms=[oci.Platform.linux("arm64")])
    path = oci.write_archive(image, tmp_path / "out" / "image.tar")
    assert path.read_bytes() == oci.archive_bytes(image)
    assert not list(path.parent.glob(".*"))  # no temporary left behind
    files = oci.read_archive(path)
    assert oci.verify_archive(files) == []
    index = json.loads(blob(files, image.digest))
    assert [m["platform"] for m in index["manifests"]] == [{"os": "linux", "architecture": "arm64"}]


def test_verify_archive_finds_tampering() -> None:
    files = members(oci.archive_bytes(build()))
    layer_name = next(n for n, d in files.items() if d[:2] == b"\x1f\x8b")
    files[layer_name] = b"tampered"
    problems = oci.verify_archive(files)
    assert any("does not match its name" in p for p in problems)
    assert any("size" in p for p in problems)
    del files["oci-layout"]
    assert "oci-layout missing or not 1.0.0" in oci.verify_archive(files)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("edge-provision.local/x", "no tag"),
        ("edge-provision.local/x@sha256:00", "not a digest"),
        ("Edge/X:1", "lower case"),
        ("localhost:5000/x", "no tag"),
    ],
)
def test_references_need_a_tag(reference: str, message: str) -> None:
    with pytest.raises(oci.OCIError, match=message):
        oci.build_image(reference, [FILES], config=CONFIG, platforms=[oci.Platform.linux("amd64")])


def test_reference_with_registry_port_keeps_the_tag() -> None:
    assert oci.split_reference("localhost:5000/x:1.0") == ("localhost:5000/x", "1.0")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([oci.FileEntry.file("a", b"1"), oci.FileEntry.file("/a", b"2")], "given twice"),
        ([oci.FileEntry.file("a", b"1"), oci.FileEntry.file("a/b", b"2")], "is a file"),
        ([oci.FileEntry.file("../etc/passwd", b"x")], "bad path"),
        ([oci.FileEntry.file("/", b"x")], "bad path"),
        ([oci.FileEntry("a", kind="symlink")], "no target"),
    ],
)
def test_bad_layers_are_refused(files: list[oci.FileEntry], message: str) -> None:
    with pytest.raises(oci.OCIError, match=message):
        oci.layer_tar(files)


def test_bad_platform_lists_are_refused() -> None:
    with pytest.raises(oci.OCIError, match="at least one platform"):
        build(platforms=[])
    with pytest.raises(oci.OCIError, match="twice"):
        build(platforms=[oci.Platform.linux("amd64"), oci.Platform.linux("x86_64")])
    with pytest.raises(oci.OCIError, match="unknown architecture"):
        oci.Platform.linux("vax")


def test_platform_names() -> None:
    assert str(oci.Platform.linux("armhf")) == "linux/arm/v7"
    assert str(oci.Platform.linux("aarch64")) == "linux/arm64"
    assert oci.Platform.linux("ppc64el").as_dict() == {"os": "linux", "architecture": "ppc64le"}


# --- the pure helpers of the image builders -------------------------------------------------


def test_upstream_versions_of_debian_packages() -> None:
    assert upstream_version("1:1.35.0-4+deb12u1+b1") == "1.35.0"
    assert upstream_version("1.20.5+really1.20.2-1.1+deb12u1") == "1.20.2"
    assert upstream_version("3.4") == "3.4"


def test_pause_tag_from_the_makefile() -> None:
    assert images.pause_tag("REGISTRY ?= x\nTAG = 3.4\nREV = 1\n") == "3.4"
    assert images.pause_tag("TAG ?= 3.10\n") == "3.10"
    with pytest.raises(images.ImageBuildError):
        images.pause_tag("VERSION = 1\n")


def _elf(machine: int, *, interp: bool) -> bytes:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<H", header, 18, machine)
    struct.pack_into("<Q", header, 32, 64)  # e_phoff
    struct.pack_into("<HH", header, 54, 56, 2)  # e_phentsize, e_phnum
    phdrs = struct.pack("<I52x", 1) + struct.pack("<I52x", 3 if interp else 1)
    return bytes(header) + phdrs


def test_elf_info_reads_arch_and_static_linking() -> None:
    assert elf_info(_elf(183, interp=False)) == ("arm64", True)
    assert elf_info(_elf(62, interp=True)) == ("amd64", False)
    with pytest.raises(ValueError, match="not an ELF file"):
        elf_info(b"\0asm\1\0\0\0")


DEMO_ARGS = ["/wasi_demo.wasm", "50000000"]
DEMO_STDOUT = (
    "Random number: 1123434661\n"
    "Random bytes: [25, 169, 202, 211, 22, 29, 128, 133, 168, 185, 114, 161, 48, 154, 56, 54]\n"
    "Printed from wasi: This is from a main function\n"
    "The env vars are as follows.\n"
    "GREETING: hello\n"
    "The args are as follows.\n"
    "/wasi_demo.wasm\n"
    "50000000\n"
    "File content is This is in a file\n"
)


def test_demo_output_check_accepts_a_good_run() -> None:
    stderr = "This is from a main function\n"
    assert (
        images.demo_output_problems(DEMO_STDOUT, args=DEMO_ARGS, env={"GREETING": "hello"}, stderr=stderr)
        == []
    )
    # kubectl logs: both streams in one, the env section unchecked
    combined = DEMO_STDOUT.replace("The env vars", "This is from a main function\nThe env vars")
    assert images.demo_output_problems(combined, args=DEMO_ARGS) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("Random number: 1123434661", "Random number: x", "random number"),
        ("54]", "54, 1]", "random bytes"),
        ("Random number: 1123434661", "Random number: 4294967296", "out of range"),
        ("GREETING: hello", "GREETING: bye", "env lines"),
        ("50000000\n", "5\n", "args lines"),
        ("File content is This is in a file\n", "", "after the args"),
    ],
)
def test_demo_output_check_finds_each_bad_line(old: str, new: str, problem: str) -> None:
    stdout = DEMO_STDOUT.replace(old, new)
    problems = images.demo_output_problems(
        stdout, args=DEMO_ARGS, env={"GREETING": "hello"}, stderr="This is from a main function\n"
    )
    assert any(problem in p for p in problems), problems


def test_demo_output_check_wants_the_stderr_line() -> None:
    assert images.demo_output_problems(DEMO_STDOUT, args=DEMO_ARGS, stderr="") == [
        "stderr lacks 'This is from a main function'"
    ]
    assert "stderr line" in images.demo_output_problems(DEMO_STDOUT, args=DEMO_ARGS)[0]
