"""VM backend (placeholder): full virtual machines for what containers cannot show.

Container hosts share the machine's kernel: no own kernel modules, machine-wide swap and
kernel./vm./fs. sysctls, amd64 only. A VM backend (QEMU/KVM, cloud images, cloud-init
seeding the lab's SSH key, arm64 through emulation) would lift those limits behind the
same ``Lab`` API (``LabHost.backend == "vm"``). It is not implemented yet.
"""

from __future__ import annotations

from edge_provision.lab.dockerd import LabError


def not_available() -> LabError:
    return LabError(
        "the vm lab backend is not implemented yet; use the container backend (--backend container)"
    )
