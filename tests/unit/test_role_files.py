"""Every role's defaults (defaults/main.yml) and argument specs (meta/argument_specs.yml) agree.

Ansible validates a role's variables against its argument spec when the role (or one of its
entry points, a ``tasks_from`` file) starts, and takes their values from defaults/main.yml; pyinfra
and `edge-provision check` read both files too (edge_provision.role_files). So, for every role
under roles/:

- each default is an option of the main entry point, of the option's type (with its choices,
  list elements and suboptions), and where the spec also writes a ``default:`` it is the same
  value;
- each option of every entry point is either ``required: true`` (and then has no default: a
  default would make it never missing) or has a default, except the options listed in
  OPTIONAL_WITHOUT_DEFAULT, documented as such and never read by a role except through the
  fallback the documentation names;
- every caller of an entry point other than main (include_role ... tasks_from) passes its
  required options;
- variables are named after their role, and the token variables are exactly the no_log ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from edge_provision.role_files import ROLES_DIR, role_defaults

ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir())
# (role, option): what the option falls back to when the fleet leaves it unset.
OPTIONAL_WITHOUT_DEFAULT = {
    # The address cluster members use for a node when it is not the SSH address (the lab's VMs):
    # read only through edge_provision.inventory.node_address (filter edge_provision_node_address),
    # which falls back to ansible_host.
    ("edge", "edge_node_ip"): "ansible_host",
}
# Ansible's option types and the YAML values they take as they are (raw takes anything).
TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "path": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "list": (list,), "dict": (dict,),
}
INCLUDE_ROLE = {"include_role", "ansible.builtin.include_role", "import_role", "ansible.builtin.import_role"}


def argument_specs(role: str) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = yaml.safe_load(
        (ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    return specs


def options(role: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(entry point, option, its spec) for every option of every entry point of ``role``."""
    for entry_point, spec in argument_specs(role).items():
        for name, option in (spec.get("options") or {}).items():
            yield entry_point, name, option


def problems(value: Any, spec: Mapping[str, Any], where: str) -> list[str]:
    """How ``value`` fails the option ``spec``: its type, choices, list elements and suboptions."""
    kind = spec.get("type", "str")
    if kind == "raw":
        return []
    if kind not in TYPES:
        return [f"{where}: unknown type {kind!r}"]
    if not isinstance(value, TYPES[kind]) or (kind in {"int", "float"} and isinstance(value, bool)):
        return [f"{where}: {value!r} is not of type {kind}"]
    found: list[str] = []
    items = cast("list[Any]", value) if kind == "list" else [value]
    if "choices" in spec:
        found += [f"{where}: {item!r} is not one of {spec['choices']}" for item in items if item not in spec["choices"]]
    if kind == "list" and "elements" in spec:
        element = {"type": spec["elements"], **({"options": spec["options"]} if "options" in spec else {})}
        for n, item in enumerate(items):
            found += problems(item, element, f"{where}[{n}]")
    elif kind == "dict" and "options" in spec:
        suboptions, given = spec["options"], cast("dict[str, Any]", value)
        found += [f"{where}: {key!r} is no suboption" for key in given if key not in suboptions]
        for key, suboption in suboptions.items():
            if key in given:
                found += problems(given[key], suboption, f"{where}.{key}")
            elif suboption.get("required"):
                found.append(f"{where}: required suboption {key!r} missing")
    return found


def test_every_role_has_defaults_and_argument_specs() -> None:
    assert len(ROLES) >= 15, ROLES
    for role in ROLES:
        assert (ROLES_DIR / role / "defaults" / "main.yml").is_file(), role
        assert argument_specs(role).get("main", {}).get("options"), role


@pytest.mark.parametrize("role", ROLES)
def test_each_default_is_a_main_option_of_its_type_and_default(role: str) -> None:
    main = argument_specs(role)["main"]["options"]
    found = []
    for name, value in role_defaults(role).items():
        if name not in main:
            found.append(f"{name}: a default but no option of the main entry point")
            continue
        found += problems(value, main[name], name)
        if "default" in main[name] and main[name]["default"] != value:
            found.append(f"{name}: the spec's default {main[name]['default']!r} is not the role's {value!r}")
    assert not found, f"roles/{role}: defaults/main.yml against meta/argument_specs.yml:\n" + "\n".join(found)


@pytest.mark.parametrize("role", ROLES)
def test_each_option_is_required_or_has_a_default(role: str) -> None:
    defaults = role_defaults(role)
    found = []
    for entry_point, name, option in options(role):
        where = f"{entry_point}: {name}"
        if option.get("required"):
            if name in defaults:
                found.append(f"{where}: required, yet it has a default (so it is never missing)")
            if "default" in option:
                found.append(f"{where}: required, yet its spec has a default")
        elif name not in defaults and (role, name) not in OPTIONAL_WITHOUT_DEFAULT:
            found.append(f"{where}: neither required nor given a default")
        elif name in defaults and entry_point != "main":
            found += problems(defaults[name], option, where)
            if "default" in option and option["default"] != defaults[name]:
                found.append(f"{where}: the spec's default {option['default']!r} is not the role's {defaults[name]!r}")
    assert not found, f"roles/{role}: meta/argument_specs.yml against defaults/main.yml:\n" + "\n".join(found)


def _role_and_playbook_files() -> Iterator[Path]:
    yield from sorted(ROLES_DIR.glob("*/tasks/*.yml"))
    yield from sorted(ROLES_DIR.glob("*/handlers/*.yml"))
    yield from sorted((ROLES_DIR.parent / "playbooks").glob("*.yml"))


@pytest.mark.parametrize(("role", "option"), sorted(OPTIONAL_WITHOUT_DEFAULT))
def test_an_option_without_default_is_documented_and_read_only_through_its_fallback(role: str, option: str) -> None:
    from edge_provision.inventory import node_address

    fallback = OPTIONAL_WITHOUT_DEFAULT[(role, option)]
    specs = {name: o for _e, name, o in options(role)}
    assert option in specs, f"roles/{role}: no option {option}"
    spec = specs[option]
    assert "required" not in spec and "default" not in spec, spec
    assert f"defaults to {fallback}" in spec["description"], spec["description"]
    # No task, handler, template or playbook reads it as a variable (it would be undefined).
    readers = [str(p.relative_to(ROLES_DIR.parent)) for p in [*_role_and_playbook_files(), *ROLES_DIR.glob("*/templates/*")]
               if option in p.read_text()]
    assert readers == [], readers
    assert node_address({"ansible_host": "192.0.2.10"}) == "192.0.2.10"
    assert node_address({"ansible_host": "192.0.2.10", option: "10.20.0.22"}) == "10.20.0.22"


def _include_roles(node: Any) -> Iterator[dict[str, Any]]:
    """Every include_role/import_role task in a parsed task or playbook file, with its vars."""
    if isinstance(node, list):
        for item in node:
            yield from _include_roles(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in INCLUDE_ROLE and isinstance(value, dict):
                yield {**value, "vars": node.get("vars") or {}}
            else:
                yield from _include_roles(value)


def test_callers_of_an_entry_point_pass_its_required_options() -> None:
    calls: dict[tuple[str, str], list[str]] = {}
    found = []
    for path in _role_and_playbook_files():
        for call in _include_roles(yaml.safe_load(path.read_text())):
            role, tasks_from = call["name"], Path(str(call.get("tasks_from", "main"))).stem
            calls.setdefault((role, tasks_from), []).append(str(path))
            spec = argument_specs(role).get(tasks_from) if role in ROLES else None
            for _entry, name, option in options(role) if spec else ():
                if _entry == tasks_from and option.get("required") and name not in call["vars"]:
                    found.append(f"{path.relative_to(ROLES_DIR.parent)}: includes {role} {tasks_from} "
                                 f"without its required {name}")
    assert not found, "\n".join(found)
    for role in ROLES:
        for entry_point in argument_specs(role):
            assert (ROLES_DIR / role / "tasks" / f"{entry_point}.yml").is_file(), (role, entry_point)
            if entry_point != "main":
                assert calls.get((role, entry_point)), f"no caller of {role}'s entry point {entry_point}"


@pytest.mark.parametrize("role", ROLES)
def test_variables_are_named_after_their_role_and_tokens_are_no_log(role: str) -> None:
    defaults = role_defaults(role)
    names = [*defaults, *(name for _e, name, _o in options(role))]
    assert [n for n in names if not n.startswith(f"{role}_")] == [], role
    no_log = {name for _e, name, option in options(role) if option.get("no_log")}
    assert {n for n in names if n.endswith("_token")} == no_log, role
