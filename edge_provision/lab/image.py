"""The lab hosts' base images: a Debian rootfs per release built with mmdebstrap, imported into docker.

One image per release of :data:`edge_provision.artifacts.debian.RELEASES` (``debian-12``,
``debian-13``). The rootfs tarball is cached under ``~/.cache/edge-provision/images/`` keyed by
a hash of everything that shapes it (suite, packages, apt sources, the customization script
and its version); the docker image is tagged ``<suite>-<key>`` and reused while the tag exists.

On this machine's cgroup v1, Debian 13's systemd (257, which refuses a pure cgroup v1 boot unless
told) boots in a container as Debian 12's does: in the hybrid layout (the v1 controllers, plus
its own unified hierarchy), with nothing to pass (measured).

The customization makes a systemd host that is safe to boot in a *privileged* container,
which shares the machine's kernel: nothing it starts may change machine-wide state (the
binfmt_misc table, kernel./vm./fs. sysctls, swap, the clock, udev, the console, pstore,
the machine's file systems). Each host generates its own SSH host key at first boot.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from edge_provision.artifacts import debian
from edge_provision.lab.dockerd import LabError

IMAGE_REPO = "edge-provision/lab-debian"
CUSTOMIZATION_VERSION = "6"

PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "openssh-server", "openssh-sftp-server",
    "python3", "python3-apt", "iproute2", "iputils-ping", "procps", "kmod", "ca-certificates",
    "sudo", "less", "curl", "gnupg", "apt-transport-https", "netbase", "lsb-release",
)

# Units that would reach outside the container in a privileged one (machine-wide kernel
# state, the machine's devices or file systems), or that only add noise to a lab host.
MASKED_UNITS = (
    # binfmt_misc is machine-wide: systemd-binfmt would reset the machine's table (qemu-user).
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.mount", "proc-sys-fs-binfmt_misc.automount",
    # /sys is writable in a privileged container: udev would replay the machine's devices.
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service", "systemd-hwdb-update.service",
    # The clock, pstore, swap and file-system maintenance belong to the machine.
    "systemd-timesyncd.service", "systemd-pstore.service", "swap.target",
    "fstrim.timer", "fstrim.service", "e2scrub_all.timer", "e2scrub_reap.service",
    # The machine's consoles are visible to a privileged container.
    "getty.target", "getty@.service", "serial-getty@.service", "console-getty.service",
    # No unattended apt runs racing the provisioning engines.
    "apt-daily.timer", "apt-daily-upgrade.timer",
    # Module loading always fails here (no loadable modules); firstboot would ask questions.
    "systemd-firstboot.service",
)

HOSTKEY_UNIT = """\
[Unit]
Description=Generate this lab host's own SSH host key
DefaultDependencies=no
Before=ssh.service
After=local-fs.target
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -C "" -f /etc/ssh/ssh_host_ed25519_key
RemainAfterExit=yes

[Install]
WantedBy=ssh.service
"""

# The container's entrypoint: prepares the host, then becomes systemd (exec keeps PID 1).
INIT_SCRIPT = """\
#!/bin/sh
# edge-provision lab host: runs as PID 1 before systemd, then execs it.
set -u
# systemd (PID 1) raises fs.file-max (and fs.nr_open) at boot; in a container those are the
# machine's. Read-only binds of exactly these files make its writes fail harmlessly.
for f in /proc/sys/fs/file-max /proc/sys/fs/nr_open; do
  { mount --bind "$f" "$f" && mount -o remount,bind,ro "$f"; } || echo "edge-lab-init: cannot protect $f" >&2
done
# The kubelet sets kernel tunables at start (kernel.panic=10, kernel.panic_on_oops=1,
# vm.overcommit_memory=1, ...) when they differ from what it wants; here they are the
# machine's. Files already holding those values, bound over them, leave it nothing to write.
mkdir -p /run/edge-lab/sysctl
for kv in kernel.panic=10 kernel.panic_on_oops=1 vm.overcommit_memory=1 vm.panic_on_oom=0 \\
          kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000; do
  key=${kv%%=*}; f="/run/edge-lab/sysctl/$key"
  printf '%s\\n' "${kv#*=}" > "$f"
  mount --bind "$f" "/proc/sys/$(echo "$key" | tr . /)" || echo "edge-lab-init: cannot protect $key" >&2
done
# docker bind-mounts these: ordinary files instead, so tools may replace them (rename).
for f in /etc/hosts /etc/hostname /etc/resolv.conf; do
  if awk -v f="$f" '$5 == f {m = 1} END {exit !m}' /proc/self/mountinfo; then
    content=$(cat "$f")
    umount "$f" && printf '%s\\n' "$content" > "$f" && chmod 644 "$f"
  fi
done
if [ -n "${EDGE_LAB_AUTHORIZED_KEY:-}" ]; then
  mkdir -p /root/.ssh && chmod 700 /root/.ssh
  grep -qxF "$EDGE_LAB_AUTHORIZED_KEY" /root/.ssh/authorized_keys 2>/dev/null \\
    || printf '%s\\n' "$EDGE_LAB_AUTHORIZED_KEY" >> /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
fi
unset EDGE_LAB_AUTHORIZED_KEY
exec /sbin/init "$@"
"""

SSHD_CONFIG = """\
# edge-provision lab host: root with the lab's key only.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

# Runs on the machine with the rootfs as $1 (mmdebstrap --customize-hook).
CUSTOMIZE = r"""
set -eu
root="$1"
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
for unit in {masked}; do ln -sfn /dev/null "$root/etc/systemd/system/$unit"; done
cat > "$root/etc/systemd/system/lab-ssh-hostkey.service" <<'EOF'
{hostkey_unit}EOF
mkdir -p "$root/etc/systemd/system/ssh.service.wants"
ln -sfn ../lab-ssh-hostkey.service "$root/etc/systemd/system/ssh.service.wants/lab-ssh-hostkey.service"
cat > "$root/usr/local/sbin/edge-lab-init" <<'EOF'
{init_script}EOF
chmod 755 "$root/usr/local/sbin/edge-lab-init"
mkdir -p "$root/etc/ssh/sshd_config.d"
cat > "$root/etc/ssh/sshd_config.d/10-edge-lab.conf" <<'EOF'
{sshd_config}EOF
# kernel.*, vm.* and fs.* sysctls are the machine's in a container: neutralize every vendor
# sysctl.d file (same name in /etc wins) keeping only its per-network-namespace net.* lines.
for f in "$root"/usr/lib/sysctl.d/*.conf; do
  [ -e "$f" ] || continue
  {{ echo "# edge-provision lab: net.* lines of /usr/lib/sysctl.d/${{f##*/}} only (container host)"
     grep -E '^[[:space:]]*-?net\.' "$f" || true; }} > "$root/etc/sysctl.d/${{f##*/}}"
done
mkdir -p "$root/root/.ssh"
chmod 700 "$root/root/.ssh"
echo "edge-provision lab host" > "$root/etc/motd"
echo "LANG=C.UTF-8" > "$root/etc/default/locale"
# The kernel log is the machine's: keep it out of every lab host's journal.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nReadKMsg=no\n' > "$root/etc/systemd/journald.conf.d/10-edge-lab.conf"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
"""


def customize_script() -> str:
    return CUSTOMIZE.format(
        masked=" ".join(MASKED_UNITS), hostkey_unit=HOSTKEY_UNIT, init_script=INIT_SCRIPT,
        sshd_config=SSHD_CONFIG,
    )


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-provision" / "images"


def image_key(suite: str, sources: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{suite}\n{CUSTOMIZATION_VERSION}\n{' '.join(sorted(PACKAGES))}\n".encode())
    digest.update(customize_script().encode())
    digest.update("\n".join(sources).encode())
    return digest.hexdigest()[:16]


def _build_rootfs(tarball: Path, suite: str, sources: list[str], log: Callable[[str], None]) -> None:
    if shutil.which("mmdebstrap") is None:
        raise LabError("mmdebstrap is not installed; install it with: apt-get install mmdebstrap")
    if not sources:
        raise LabError("no apt sources found in /etc/apt/sources.list*; the lab image needs a Debian mirror")
    tmp = tarball.with_suffix(".partial.tar")
    hook = tarball.with_suffix(".customize.sh")
    hook.write_text(customize_script())
    cmd = [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", "--quiet",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--include=" + ",".join(PACKAGES),
        f"--customize-hook=sh {hook} \"$1\"",
        suite, str(tmp), *sources,
    ]
    log(f"building the lab rootfs ({suite}) with mmdebstrap; this takes about a minute")
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    hook.unlink(missing_ok=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise LabError(f"mmdebstrap failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    tmp.rename(tarball)
    log(f"rootfs built in {time.monotonic() - started:.0f} s: {tarball}")


def ensure_image(docker: Callable[..., subprocess.CompletedProcess[str]],
                 log: Callable[[str], None] = lambda _m: None,
                 release: str = debian.CONTROLLER_RELEASE) -> str:
    """Return the tag of the lab base image of ``release``, building/importing it when missing."""
    suite = debian.suite(release)
    sources = debian.release_sources(release)
    key = image_key(suite, sources)
    tag = f"{IMAGE_REPO}:{suite}-{key}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if docker("image", "inspect", tag, check=False).returncode == 0:
            return tag
        tarball = directory / f"lab-debian-{suite}-{key}.tar"
        if not tarball.exists():
            _build_rootfs(tarball, suite, sources, log)
            for old in directory.glob(f"lab-debian-{suite}-*.tar"):
                if old != tarball:
                    old.unlink(missing_ok=True)  # superseded by this build
        log(f"importing {tarball.name} into docker as {tag}")
        started = time.monotonic()
        docker(
            "import",
            "--change", "ENV container=docker",
            "--change", 'CMD []',
            "--change", 'ENTRYPOINT ["/usr/local/sbin/edge-lab-init"]',
            "--change", f"LABEL io.edge-provision.lab.image={key}",
            "--change", f"LABEL io.edge-provision.lab.release={release}",
            str(tarball), tag,
        )
        log(f"imported in {time.monotonic() - started:.0f} s")
        # Earlier lab images of this release (and untagged-by-release ones of older versions of
        # this module) are superseded; docker keeps one while a container still uses it.
        tags = docker("images", IMAGE_REPO, "--format", "{{.Tag}}", check=False).stdout.split()
        others = {f"{s}-" for s in debian.RELEASES.values() if s != suite}
        for other in tags:
            if other != f"{suite}-{key}" and not other.startswith(tuple(others)):
                docker("rmi", f"{IMAGE_REPO}:{other}", check=False)
    return tag
