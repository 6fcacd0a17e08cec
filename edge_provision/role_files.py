"""Read an Ansible role's defaults and templates, so pyinfra deploys use the very same ones."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from edge_provision import PROJECT_ROOT

ROLES_DIR = PROJECT_ROOT / "roles"


def role_path(role: str, *parts: str) -> Path:
    return ROLES_DIR.joinpath(role, *parts)


@cache
def role_defaults(role: str) -> dict[str, Any]:
    data = yaml.safe_load(role_path(role, "defaults", "main.yml").read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{role_path(role, 'defaults', 'main.yml')}: expected a mapping")
    return data


@cache
def role_dependencies(role: str) -> tuple[str, ...]:
    """The roles ``role`` depends on (its meta/main.yml), which Ansible runs before it."""
    meta = yaml.safe_load(role_path(role, "meta", "main.yml").read_text()) or {}
    return tuple(d["role"] if isinstance(d, dict) else str(d) for d in meta.get("dependencies") or [])


@cache
def role_argument_spec(role: str, entry_point: str = "main") -> dict[str, Any]:
    data = yaml.safe_load(role_path(role, "meta", "argument_specs.yml").read_text())
    spec: dict[str, Any] = data["argument_specs"][entry_point]
    return spec


def fleet_value(name: str, host_data: Mapping[str, Any]) -> Any:
    """A fleet-wide variable (the edge role's, e.g. edge_arch, edge_wasm_handler): the fleet's
    value, else the edge role's default."""
    return host_data[name] if name in host_data else role_defaults("edge")[name]


def role_vars(role: str, host_data: Mapping[str, Any]) -> dict[str, Any]:
    """The role's defaults, overridden by fleet data, as Ansible's precedence does."""
    values = dict(role_defaults(role))
    for key in values:
        if key in host_data:
            values[key] = host_data[key]
    return values


# Ansible's template module settings (trim_blocks on, trailing newline kept), so a
# template renders to the same bytes in both engines.
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(ROLES_DIR)),
    trim_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
    autoescape=False,
)


def render_template(role: str, name: str, variables: Mapping[str, Any]) -> str:
    return _ENV.get_template(f"{role}/templates/{name}").render(**variables)
