"""Role templates render to the same bytes for both engines."""

from __future__ import annotations

import jinja2
import pytest

from edge_provision.role_files import ROLES_DIR, render_template, role_defaults

HOST_PREP = role_defaults("host_prep")
MEMBERS = [{"name": "cp-1", "address": "192.0.2.10"}, {"name": "cam-1", "address": "192.0.2.21"}]


@pytest.mark.parametrize("name", ["modules-load.conf.j2", "sysctl.conf.j2", "hosts_block.j2"])
def test_output_does_not_depend_on_trim_blocks(name: str) -> None:
    """Ansible renders with trim_blocks on; a plain Jinja environment has it off."""
    variables = {**HOST_PREP, "host_prep_cluster_members": MEMBERS}
    plain = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROLES_DIR)), keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    assert plain.get_template(f"host_prep/templates/{name}").render(**variables) == render_template(
        "host_prep", name, variables
    )


def test_sysctl_file_lists_every_parameter_once() -> None:
    text = render_template("host_prep", "sysctl.conf.j2", HOST_PREP)
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == [f"{k} = {v}" for k, v in sorted(HOST_PREP["host_prep_sysctl"].items())]
    assert text.endswith("\n")
    assert "net.ipv4.conf.all.rp_filter = 1" in body and "net.ipv4.conf.default.rp_filter = 1" in body


def test_modules_load_file() -> None:
    text = render_template("host_prep", "modules-load.conf.j2", HOST_PREP)
    assert text.splitlines()[1:] == ["br_netfilter", "overlay"]


def test_hosts_block() -> None:
    text = render_template("host_prep", "hosts_block.j2", {"host_prep_cluster_members": MEMBERS})
    assert text == "192.0.2.10 cp-1\n192.0.2.21 cam-1\n"


def _registered(role_dir: object) -> set[str]:
    import yaml

    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("register"), str):
                names.add(node["register"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for tasks in sorted((ROLES_DIR / str(role_dir) / "tasks").glob("*.yml")):
        walk(yaml.safe_load(tasks.read_text()))
    return names


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES_DIR.iterdir() if (p / "templates").is_dir()))
def test_no_template_reads_a_name_a_task_registers(role: str) -> None:
    """A registered result outranks a task's vars in Ansible: a template variable of that name
    would render the result's dict (the k3s unit once named its EnvironmentFile so)."""
    from jinja2 import meta

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLES_DIR)))
    registered = _registered(role)
    for template in sorted((ROLES_DIR / role / "templates").glob("*.j2")):
        source = template.read_text()
        used = meta.find_undeclared_variables(env.parse(source))
        assert not used & registered, f"{template}: {sorted(used & registered)}"
