"""The lab VMs' base disks: Debian from Debian's apt only, one compressed qcow2 per release and architecture.

``ensure_base(arch, release)`` returns a :class:`BaseImage` (qcow2, kernel, initrd) from
``~/.cache/edge-provision/vm/``, building it when missing. The cache key hashes everything
that shapes the image: architecture, suite, package list, apt sources, the customization script
and :data:`BUILDER_VERSION`. A build is

1. ``mmdebstrap --variant=apt --mode=root`` into a directory, with the packages of the
   container hosts (:data:`edge_provision.lab.image.PACKAGES`, what the roles need) plus a
   kernel, udev and initramfs-tools;
2. ``mke2fs -d`` of that directory into a raw ext4 image (no loop mount), then
   ``qemu-img convert -c`` to a compressed qcow2; kernel and initrd are copied beside it
   (the VMs boot them directly, with the lab's settings on the kernel command line).

The build runs in a user namespace of its own with a private binfmt_misc instance
(Linux >= 6.7): arm64 maintainer scripts run through qemu-user-static registered there,
immune to privileged systemd containers that reset the machine's shared binfmt table.
``update-initramfs`` is diverted to a no-op while packages install (each kernel/udev/
systemd trigger would otherwise rebuild a full initramfs, emulated on arm64) and run once
at the end with ``MODULES=list``: only what mounts the root disk goes into the initrd.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import edge_provision.lab.image as image
from edge_provision.artifacts import debian
from edge_provision.lab.dockerd import LabError

BUILDER_VERSION = "1"
ROOT_FS_SIZE = "2G"
ARCHES = ("amd64", "arm64")
# Debian arch -> (qemu-user name, kernel flavour package)
_ARCH_INFO = {"amd64": ("x86_64", "linux-image-amd64"), "arm64": ("aarch64", "linux-image-arm64")}
# What mounts the root disk; everything else loads from /usr/lib/modules after pivot_root.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
DIVERTED = UPDATE_INITRAMFS + ".edge-lab"
# Kernel modules no lab VM loads (no such hardware): fewer files to unpack, emulated on arm64.
EXCLUDED_MODULE_DIRS = (
    "drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/infiniband", "drivers/staging",
    "drivers/bluetooth", "drivers/iio", "drivers/isdn", "drivers/net/ethernet", "sound",
)

# Units a lab VM has no use for: unattended apt runs racing the provisioning engines.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "systemd-firstboot.service")

HOST_UNIT = """\
[Unit]
Description=edge-provision lab VM: SSH host key, lab key and lab network from the kernel command line
DefaultDependencies=no
Before=ssh.service systemd-networkd.service
After=local-fs.target
Wants=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/edge-lab-vm-init
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

# Runs at every boot. The host key line on the console is how the lab learns the VM's real
# host key (out of band, over the serial log), so no first SSH connection is trusted blindly.
VM_INIT = """\
#!/bin/sh
set -eu
key=/etc/ssh/ssh_host_ed25519_key
[ -s "$key" ] || ssh-keygen -q -t ed25519 -N "" -C "" -f "$key"
lab_key="" lab_net=""
for word in $(cat /proc/cmdline); do
  case "$word" in
    edge_lab.key=*) lab_key=$(printf '%s' "${word#edge_lab.key=}" | base64 -d) ;;
    edge_lab.net=*) lab_net=${word#edge_lab.net=} ;;
  esac
done
if [ -n "$lab_key" ]; then
  install -d -m 700 /root/.ssh
  touch /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
  grep -qxF "$lab_key" /root/.ssh/authorized_keys || printf '%s\\n' "$lab_key" >> /root/.ssh/authorized_keys
fi
if [ -n "$lab_net" ]; then
  mkdir -p /run/systemd/network
  printf '[Match]\\nMACAddress=%s\\n\\n[Network]\\nAddress=%s\\nLinkLocalAddressing=no\\nIPv6AcceptRA=no\\n' \\
    "${lab_net%%,*}" "${lab_net#*,}" > /run/systemd/network/10-edge-lab.network
fi
echo "edge-lab-hostkey: $(cut -d' ' -f1,2 "$key.pub")"
"""  # noqa: E501

USER_NETWORK = """\
# The user-mode NIC (QEMU slirp, 10.0.2.0/24): DHCP. The lab NIC is matched first by
# /run/systemd/network/10-edge-lab.network (written at boot from the kernel command line).
[Match]
Type=ether

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""

ESSENTIAL_HOOK = f"""
set -eu
root="$1"
dpkg-divert --root "$root" --quiet --local --rename --divert {DIVERTED} --add {UPDATE_INITRAMFS}
mkdir -p "$root/usr/sbin"
printf '#!/bin/sh\\n# edge-provision: run once at the end of the image build\\nexit 0\\n' \\
  > "$root{UPDATE_INITRAMFS}"
chmod 755 "$root{UPDATE_INITRAMFS}"
"""

CUSTOMIZE = r"""
set -eu
root="$1"
rm -f "$root{update_initramfs}"
dpkg-divert --root "$root" --quiet --local --rename --divert {diverted} --remove {update_initramfs}
sed -i -e 's/^MODULES=.*/MODULES=list/' -e 's/^COMPRESS=.*/COMPRESS=gzip/' \
  "$root/etc/initramfs-tools/initramfs.conf"
printf '%s\n' {modules} >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -c -k all
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
for unit in {masked}; do ln -sfn /dev/null "$root/etc/systemd/system/$unit"; done
cat > "$root/usr/local/sbin/edge-lab-vm-init" <<'EOF'
{vm_init}EOF
chmod 755 "$root/usr/local/sbin/edge-lab-vm-init"
cat > "$root/etc/systemd/system/edge-lab-vm.service" <<'EOF'
{host_unit}EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/systemd/system/ssh.service.wants"
ln -sfn ../edge-lab-vm.service "$root/etc/systemd/system/multi-user.target.wants/edge-lab-vm.service"
ln -sfn ../edge-lab-vm.service "$root/etc/systemd/system/ssh.service.wants/edge-lab-vm.service"
ln -sfn /lib/systemd/system/systemd-networkd.service \
  "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
cat > "$root/etc/systemd/network/20-edge-lab-user.network" <<'EOF'
{user_network}EOF
mkdir -p "$root/etc/ssh/sshd_config.d"
cat > "$root/etc/ssh/sshd_config.d/10-edge-lab.conf" <<'EOF'
{sshd_config}EOF
printf '/dev/vda / ext4 rw,errors=remount-ro,x-systemd.growfs 0 1\n' > "$root/etc/fstab"
# slirp's resolver; the NIC is restricted (restrict=on), so only for local names.
printf 'nameserver 10.0.2.3\n' > "$root/etc/resolv.conf"
echo "edge-lab-vm" > "$root/etc/hostname"
install -d -m 700 "$root/root/.ssh"
echo "LANG=C.UTF-8" > "$root/etc/default/locale"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
"""

# Runs inside the build's user namespace: its own /proc and binfmt_misc, qemu-user registered
# there for foreign architectures, then the build script.
USERNS_PRELUDE = r"""
set -eu
read -r _ready
mount -t proc proc /proc
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
if [ -n "$EDGE_LAB_BINFMT" ]; then cat "$EDGE_LAB_BINFMT" > /proc/sys/fs/binfmt_misc/register; fi
exec sh "$@"
"""

BUILD_SCRIPT = r"""
set -eu
work="$1" rootfs="$1/rootfs" arch="$2" size="$3"; shift 3
mmdebstrap --variant=apt --mode=root --format=directory --architectures="$arch" \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
  {module_excludes} \
  --include="$EDGE_LAB_PACKAGES" \
  --essential-hook="sh $work/essential.sh \"\$1\"" \
  --customize-hook="sh $work/customize.sh \"\$1\"" \
  {suite} "$rootfs" "$@"
cp "$rootfs"/boot/vmlinuz-* "$work/vmlinuz"
cp "$rootfs"/boot/initrd.img-* "$work/initrd.img"
mke2fs -q -t ext4 -L edge-lab-root -d "$rootfs" "$work/root.raw" "$size"
qemu-img convert -c -f raw -O qcow2 "$work/root.raw" "$work/root.qcow2"
rm -f "$work/root.raw"
"""


@dataclass(frozen=True)
class BaseImage:
    arch: str
    disk: Path  # compressed qcow2, read-only base of every VM overlay
    kernel: Path
    initrd: Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-provision" / "vm"


def packages(arch: str) -> tuple[str, ...]:
    return (*image.PACKAGES, _ARCH_INFO[arch][1], "udev", "initramfs-tools")


def customize_script() -> str:
    return CUSTOMIZE.format(
        update_initramfs=UPDATE_INITRAMFS, diverted=DIVERTED, modules=" ".join(INITRAMFS_MODULES),
        masked=" ".join(MASKED_UNITS), vm_init=VM_INIT, host_unit=HOST_UNIT, user_network=USER_NETWORK,
        sshd_config=image.SSHD_CONFIG,
    )


def build_script(suite: str) -> str:
    excludes = " ".join(f"--dpkgopt='path-exclude=/lib/modules/*/kernel/{d}/*'" for d in EXCLUDED_MODULE_DIRS)
    return BUILD_SCRIPT.format(module_excludes=excludes, suite=suite)


def image_key(arch: str, suite: str, sources: list[str]) -> str:
    digest = hashlib.sha256()
    for part in (BUILDER_VERSION, arch, suite, ROOT_FS_SIZE, " ".join(sorted(packages(arch))),
                 ESSENTIAL_HOOK, customize_script(), build_script(suite), USERNS_PRELUDE, *sources):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def binfmt_rule(arch: str) -> Path | None:
    """Debian's binfmt_misc rule for running ``arch`` binaries here (None: native)."""
    if arch == _native_arch():
        return None
    rule = Path(f"/usr/lib/binfmt.d/qemu-{_ARCH_INFO[arch][0]}.conf")
    if not rule.exists():
        raise LabError(f"building an {arch} VM image needs qemu-user-static ({rule} is missing); "
                       "install it with: apt-get install qemu-user-static")
    return rule


def _native_arch() -> str:
    return debian.debian_arch()


def _check_tools() -> None:
    needed = {"mmdebstrap": "mmdebstrap", "mke2fs": "e2fsprogs", "qemu-img": "qemu-utils",
              "unshare": "util-linux", "arch-test": "arch-test", "dpkg-divert": "dpkg"}
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(f"building lab VM images needs {', '.join(missing)}; install with: "
                       f"apt-get install {' '.join(missing)}")


def _write_id_map(pid: int) -> None:
    """Map every id of this (initial) user namespace 1:1 into the build's namespace.

    Written from outside (root here may map any range), so the build is root over the ids
    apt and dpkg need (_apt, ...) and the files it writes keep their real owners.
    """
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write("0 0 4294967295\n")


def run_in_build_namespace(script: Path, args: list[str], env: dict[str, str], log_file: Path,
                           timeout: float) -> int:
    """Run ``sh script args`` in a new user+mount+pid namespace with its own binfmt_misc."""
    own_ns = os.readlink("/proc/self/ns/user")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            ["unshare", "--user", "--mount", "--pid", "--fork", "--propagation", "private", "--",
             "sh", "-c", USERNS_PRELUDE, "edge-lab-build", str(script), *args],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        assert proc.stdin is not None
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if os.readlink(f"/proc/{proc.pid}/ns/user") != own_ns:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise LabError(f"cannot create the image build's user namespace; see {log_file}")
                time.sleep(0.01)
            try:
                _write_id_map(proc.pid)
            except OSError as exc:
                raise LabError(f"cannot map ids into the image build's user namespace ({exc}); building "
                               "lab VM images needs root (run as root or with sudo)") from exc
            proc.stdin.write(b"ready\n")
            proc.stdin.close()
            return proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise


def _build(arch: str, suite: str, key: str, dest: Path, sources: list[str],
           log: Callable[[str], None]) -> None:
    _check_tools()
    rule = binfmt_rule(arch)
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "essential.sh").write_text(ESSENTIAL_HOOK)
    (work / "customize.sh").write_text(customize_script())
    (work / "build.sh").write_text(build_script(suite))
    log_file = dest.parent / f"build-{suite}-{arch}-{key}.log"
    log_file.unlink(missing_ok=True)
    env = {**os.environ, "EDGE_LAB_PACKAGES": ",".join(packages(arch)),
           "EDGE_LAB_BINFMT": str(rule) if rule else "", "LC_ALL": "C.UTF-8"}
    log(f"building the {arch} VM image (Debian {suite}) with mmdebstrap; log: {log_file}")
    started = time.monotonic()
    try:
        code = run_in_build_namespace(work / "build.sh", [str(work), arch, ROOT_FS_SIZE, *sources],
                                      env, log_file, timeout=3600)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"the {arch} VM image build did not finish within an hour; see {log_file}") from exc
    if code != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-15:]
        shutil.rmtree(work, ignore_errors=True)
        raise LabError(f"the {arch} VM image build failed (exit {code}); full log: {log_file}; it ends:\n"
                       + "\n".join(tail))
    seconds = time.monotonic() - started
    shutil.rmtree(work / "rootfs")
    for name in ("essential.sh", "customize.sh", "build.sh"):
        (work / name).unlink()
    (work / "manifest.json").write_text(json.dumps(
        {"arch": arch, "key": key, "suite": suite, "packages": list(packages(arch)),
         "builder_version": BUILDER_VERSION, "build_seconds": round(seconds, 1)}, indent=2) + "\n")
    work.rename(dest)
    log_file.rename(dest / "build.log")
    log(f"{arch} VM image built in {seconds:.0f} s: {dest}")


def ensure_base(arch: str, log: Callable[[str], None] = lambda _m: None,
                release: str = debian.CONTROLLER_RELEASE) -> BaseImage:
    """The cached base image of ``release`` for ``arch``, built when missing (one build per key at a time)."""
    if arch not in ARCHES:
        raise LabError(f"unknown VM architecture {arch!r}; choose from: {', '.join(ARCHES)}")
    suite = debian.suite(release)
    sources = debian.release_sources(release)
    if not sources:
        raise LabError("no apt sources found in /etc/apt/sources.list*; the VM image needs a Debian mirror")
    key = image_key(arch, suite, sources)
    directory = cache_dir()
    dest = directory / f"debian-{suite}-{arch}-{key}"
    result = BaseImage(arch, dest / "root.qcow2", dest / "vmlinuz", dest / "initrd.img")
    if dest.is_dir():
        return result
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".{arch}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.is_dir():
            _build(arch, suite, key, dest, sources, log)
            for old in directory.glob(f"debian-{suite}-{arch}-*"):
                if old != dest and old.is_dir() and not old.name.endswith(".partial"):
                    shutil.rmtree(old, ignore_errors=True)  # superseded by this build
    return result
