"""Registry-less OCI images: deterministic OCI image-layout tarballs for ``ctr images import``.

The lab has no container registry, so the sample workloads and the CRI's pause image are
built here, in pure Python, and side-loaded on each node with
``ctr -n k8s.io images import <tarball>``.

Tarball layout (the OCI image-layout spec, as ``ctr images export`` writes it)::

    oci-layout                  {"imageLayoutVersion": "1.0.0"}
    index.json                  one descriptor -> the image index below, annotated with the
                                image's name (see "Names" below)
    blobs/sha256/<hex>          image index (one manifest per platform), manifests,
                                configs, layers (gzip'd tar)

Names. containerd's importer names an image from the descriptor's
``io.containerd.image.name`` annotation (full reference, used as is), falling back to
``org.opencontainers.image.ref.name``; without ``--base-name``, ctr keeps a ref.name that
contains ``/``, ``:`` or ``@`` as is and prefixes a bare one (``import-<date>:<tag>``).
We write both, as ``ctr images export`` does: the full reference in
``io.containerd.image.name`` and the tag alone in ``org.opencontainers.image.ref.name``
(the OCI layout convention, also what skopeo/podman read).

Platforms. ``index.json`` always points at an *image index* whose manifest descriptors
carry their platform, even for one platform. containerd then picks the node's manifest
both on import (``ctr images import`` without ``--all-platforms`` walks only the default
platform's children, and its unpack step resolves the default platform) and in the CRI
plugin, which resolves images for the node's platform; an image for another
architecture fails loudly ("no match for platform in manifest") instead of being run.

Determinism. Every tar entry has mtime ``EPOCH``, uid/gid 0, empty user/group names,
entries are sorted and parent directories are written explicitly; JSON is serialised with
sorted keys and no whitespace; gzip headers carry mtime 0. Building the same inputs twice
gives byte-identical tarballs and digests (given the same zlib: gzip streams are only
guaranteed stable for one zlib version, which is why the cache key of a build includes
the Python/zlib version too).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"

EPOCH = 0  # mtime of every tar entry
CREATED = "1970-01-01T00:00:00Z"  # the image config's "created", fixed for reproducibility
OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}

# Debian/dpkg architecture names -> GOARCH (+ GOARM variant), as OCI platforms spell them.
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "amd64": ("amd64", None),
    "x86_64": ("amd64", None),
    "arm64": ("arm64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "arm": ("arm", "v7"),
    "armv7l": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "386": ("386", None),
    "ppc64el": ("ppc64le", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


class OCIError(ValueError):
    """Inputs that cannot make a valid image."""


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def linux(cls, arch: str) -> Platform:
        """The linux platform of a Debian (``armhf``), kernel (``aarch64``) or Go (``arm64``) arch name."""
        try:
            goarch, variant = _ARCH_ALIASES[arch]
        except KeyError:
            raise OCIError(f"unknown architecture {arch!r}") from None
        return cls("linux", goarch, variant)

    def as_dict(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class FileEntry:
    """One entry of a layer: a regular file (``data``), a directory or a symlink (``target``)."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    kind: Literal["file", "dir", "symlink"] = "file"
    target: str = ""

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644) -> FileEntry:
        return cls(path, data, mode, "file")

    @classmethod
    def executable(cls, path: str, data: bytes) -> FileEntry:
        return cls(path, data, 0o755, "file")

    @classmethod
    def dir(cls, path: str, mode: int = 0o755) -> FileEntry:
        return cls(path, b"", mode, "dir")

    @classmethod
    def symlink(cls, path: str, target: str) -> FileEntry:
        return cls(path, b"", 0o777, "symlink", target)


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (``config`` in the OCI image config JSON)."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ()
    workdir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.env:
            out["Env"] = list(self.env)
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.user:
            out["User"] = self.user
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        return out


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        desc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        desc.update({k: v for k, v in extra.items() if v})
        return desc


@dataclass(frozen=True)
class Layer:
    tar: bytes  # uncompressed: its digest is the config's diff_id
    blob: Blob  # as stored (gzip'd or not)

    @property
    def diff_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.tar).hexdigest()


@dataclass(frozen=True)
class Image:
    """A built image: every blob, and the descriptor ``index.json`` points at."""

    reference: str
    index: Blob
    manifests: Mapping[str, Blob]  # platform string -> manifest blob
    configs: Mapping[str, Blob]  # platform string -> config blob
    layers: Sequence[Layer]
    annotations: Mapping[str, str]

    @property
    def digest(self) -> str:
        """The image's digest (its image index), as ``ctr images ls`` shows it."""
        return self.index.digest

    def blobs(self) -> list[Blob]:
        """Every blob once, in a stable order."""
        seen: dict[str, Blob] = {}
        for blob in [
            self.index,
            *self.manifests.values(),
            *self.configs.values(),
            *(layer.blob for layer in self.layers),
        ]:
            seen.setdefault(blob.digest, blob)
        return [seen[d] for d in sorted(seen)]

    def index_json(self) -> bytes:
        return canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_INDEX,
                "manifests": [self.index.descriptor(annotations=dict(self.annotations))],
            }
        )


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def split_reference(reference: str) -> tuple[str, str]:
    """``host/repo:tag`` -> (``host/repo``, ``tag``); the tag is required (no digests)."""
    if "@" in reference:
        raise OCIError(f"{reference!r}: give a tag, not a digest")
    name, sep, tag = reference.rpartition(":")
    if not sep or not name or not tag or "/" in tag:
        raise OCIError(f"{reference!r} has no tag (want name:tag)")
    if name != name.lower():
        raise OCIError(f"{reference!r}: repository names are lower case")
    return name, tag


def _normalise(path: str) -> str:
    norm = posixpath.normpath("/" + path).lstrip("/")
    if norm in ("", ".") or ".." in path.split("/") or path != path.strip():
        raise OCIError(f"bad path in image: {path!r}")
    return norm


def layer_tar(files: Iterable[FileEntry]) -> bytes:
    """An uncompressed, deterministic layer tar of ``files`` (parent directories added)."""
    entries: dict[str, FileEntry] = {}
    for entry in files:
        path = _normalise(entry.path)
        if path in entries:
            raise OCIError(f"{path!r} is given twice")
        if entry.kind == "symlink" and not entry.target:
            raise OCIError(f"symlink {path!r} has no target")
        entries[path] = entry
    for path in list(entries):
        parent = posixpath.dirname(path)
        while parent:
            existing = entries.get(parent)
            if existing is None:
                entries[parent] = FileEntry.dir(parent)
            elif existing.kind != "dir":
                raise OCIError(f"{parent!r} is a {existing.kind} but {path!r} is inside it")
            parent = posixpath.dirname(parent)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            entry = entries[path]
            info = tarfile.TarInfo(path + "/" if entry.kind == "dir" else path)
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = entry.mode & 0o7777
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


def make_layer(files: Iterable[FileEntry], *, compress: bool = True) -> Layer:
    tar = layer_tar(files)
    if compress:
        return Layer(tar, Blob(MEDIA_TYPE_LAYER_GZIP, gzip.compress(tar, compresslevel=9, mtime=0)))
    return Layer(tar, Blob(MEDIA_TYPE_LAYER, tar))


def list_layer(data: bytes) -> list[tuple[str, str, int, str]]:
    """(path, kind, mode, symlink target) of each entry of a (gzip'd or plain) layer, in order."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    kinds = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.REGTYPE: "file"}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [
            (m.name.rstrip("/"), kinds.get(m.type, m.type.decode()), m.mode, m.linkname)
            for m in tar.getmembers()
        ]


def build_image(
    reference: str,
    layers: Sequence[Sequence[FileEntry]],
    *,
    config: ImageConfig,
    platforms: Sequence[Platform],
    annotations: Mapping[str, str] | None = None,
    manifest_annotations: Mapping[str, str] | None = None,
    compress: bool = True,
) -> Image:
    """Build the blobs of one image: ``layers`` (each a list of files) shared by every platform.

    ``annotations`` go on the image index and each manifest; ``manifest_annotations``
    only on the manifests (e.g. ``module.wasm.image/variant``, which CRI-O and crun read
    from the manifest). ``index.json`` gets the image's names only.
    """
    _, tag = split_reference(reference)
    if not platforms:
        raise OCIError("an image needs at least one platform")
    if len({str(p) for p in platforms}) != len(platforms):
        raise OCIError("a platform is given twice")
    if not layers:
        raise OCIError("an image needs at least one layer")
    built = [make_layer(files, compress=compress) for files in layers]
    common = {ANNOTATION_CREATED: CREATED, **(annotations or {})}

    manifests: dict[str, Blob] = {}
    configs: dict[str, Blob] = {}
    index_entries: list[dict[str, Any]] = []
    for platform in platforms:
        config_doc: dict[str, Any] = {
            **platform.as_dict(),
            "created": CREATED,
            "config": config.as_dict(),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
            "history": [{"created": CREATED, "created_by": "edge-provision oci.build_image"} for _ in built],
        }
        config_blob = Blob(MEDIA_TYPE_CONFIG, canonical_json(config_doc))
        manifest_doc = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config_blob.descriptor(),
            "layers": [layer.blob.descriptor() for layer in built],
            "annotations": {**common, **(manifest_annotations or {})},
        }
        manifest_blob = Blob(MEDIA_TYPE_MANIFEST, canonical_json(manifest_doc))
        configs[str(platform)] = config_blob
        manifests[str(platform)] = manifest_blob
        index_entries.append(manifest_blob.descriptor(platform=platform.as_dict()))

    index_blob = Blob(
        MEDIA_TYPE_INDEX,
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_INDEX,
                "manifests": index_entries,
                "annotations": common,
            }
        ),
    )
    names = {ANNOTATION_CONTAINERD_NAME: reference, ANNOTATION_REF_NAME: tag}
    return Image(reference, index_blob, manifests, configs, built, names)


def archive_bytes(image: Image) -> bytes:
    """The OCI image-layout tarball of ``image`` (uncompressed tar; layers inside stay gzip'd)."""
    members: list[tuple[str, bytes | None]] = [
        ("blobs/", None),
        ("blobs/sha256/", None),
        *((f"blobs/sha256/{blob.digest.split(':', 1)[1]}", blob.data) for blob in image.blobs()),
        ("index.json", image.index_json()),
        ("oci-layout", canonical_json(OCI_LAYOUT)),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(image: Image, path: Path) -> Path:
    """Write the tarball atomically (``path`` never holds a partial archive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(archive_bytes(image))
    tmp.replace(path)
    return path


def read_archive(path: Path) -> dict[str, bytes]:
    """Member name -> bytes of every file in an image-layout tarball (for checks and tests)."""
    out: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:") as tar:
        for member in tar.getmembers():
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                out[member.name] = f.read()
    return out


def verify_archive(files: Mapping[str, bytes]) -> list[str]:
    """Problems of an image-layout tarball's members ([] when sound): layout, digests, references."""
    problems: list[str] = []
    if json.loads(files.get("oci-layout", b"{}")).get("imageLayoutVersion") != "1.0.0":
        problems.append("oci-layout missing or not 1.0.0")
    blobs = {
        "sha256:" + name.rsplit("/", 1)[1]: data for name, data in files.items() if name.startswith("blobs/")
    }
    for digest, data in blobs.items():
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{digest}: content does not match its name")

    def walk(desc: Mapping[str, Any], where: str) -> None:
        data = blobs.get(desc["digest"])
        if data is None:
            problems.append(f"{where}: blob {desc['digest']} missing")
            return
        if len(data) != desc["size"]:
            problems.append(f"{where}: size {desc['size']} but blob has {len(data)}")
        media = desc["mediaType"]
        if media in (MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST):
            doc = json.loads(data)
            if doc.get("mediaType") != media:
                problems.append(f"{where}: mediaType {doc.get('mediaType')!r}, descriptor says {media!r}")
            children = (
                doc.get("manifests", [])
                if media == MEDIA_TYPE_INDEX
                else [doc["config"], *doc.get("layers", [])]
            )
            for i, child in enumerate(children):
                walk(child, f"{where} > {child['mediaType']}[{i}]")

    if "index.json" not in files:
        problems.append("index.json missing")
    else:
        for i, desc in enumerate(json.loads(files["index.json"]).get("manifests", [])):
            walk(desc, f"index.json[{i}]")
    return problems


def zlib_version() -> str:
    """Part of a build's cache key: gzip output is stable for one zlib version only."""
    return zlib.ZLIB_RUNTIME_VERSION
