"""Jinja filters of the runtime stage: the same Python the pyinfra deploy calls."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

from edge_provision.stages.runtime import controller as runtime_controller
from edge_provision.stages.runtime.containerd_config import ContainerdConfigError


def containerd_config(current: str, **settings: Any) -> str:
    """A node's new containerd config.toml (see runtime_controller.containerd_config)."""
    try:
        return runtime_controller.containerd_config(current, **settings)
    except ContainerdConfigError as exc:
        raise AnsibleFilterError(f"containerd config: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "edge_provision_containerd_config": containerd_config,
            "edge_provision_debs_missing": runtime_controller.debs_missing,
            "edge_provision_distro_crun_packages": runtime_controller.distro_crun_packages,
            "edge_provision_debs_plan": runtime_controller.debs_plan,
            "edge_provision_images_missing": runtime_controller.images_missing,
        }
