"""One fleet inventory for both engines.

A fleet lives in ``inventories/<name>/hosts.yml`` (an Ansible YAML inventory) with its
``group_vars/`` and ``host_vars/``. Ansible reads it natively; pyinfra reads it through
:func:`pyinfra_groups`, which asks Ansible's own inventory library for the merged
variables of every host, so both engines see the same hosts with the same data and
the same precedence rules.

Every fleet is validated (:func:`validate`) before any host is touched: ``edge-provision
check``, the first play of ``playbooks/site.yml`` and the pyinfra inventory all call it.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
import json
import re
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_provision.artifacts.fetch import source_problem
from edge_provision.role_files import role_argument_spec, role_defaults, role_path

INVENTORY_FILE = "hosts.yml"
CONTROL_PLANE_GROUP = "control_plane"
EDGE_GROUP = "edge"
NODE_GROUPS = (CONTROL_PLANE_GROUP, EDGE_GROUP)

# Fleet variables' defaults and choices live in roles/edge (Ansible reads them there).
FLEET_ROLE = "edge"


def _choices(variable: str) -> tuple[str, ...]:
    spec = role_argument_spec(FLEET_ROLE)["options"][variable]
    return tuple(spec["choices"])


DISTRIBUTIONS = _choices("edge_cluster_distribution")
CONTROL_PLANES = _choices("edge_cluster_control_plane")
# Distributions whose edge nodes may join a control plane made elsewhere.
EXISTING_CONTROL_PLANE_OK = ("kubeedge", "openyurt")
WASM_ENGINES = _choices("edge_wasm_engine")
ARCHITECTURES = _choices("edge_arch")
KUBERNETES_VERSIONS = _choices("edge_kubernetes_version")
FLEET_DEFAULTS: dict[str, Any] = {"ansible_port": 22, **role_defaults(FLEET_ROLE)}
# Values every host of a fleet must share: one cluster, one way of running it.
FLEET_WIDE = ("edge_cluster_distribution", "edge_cluster_control_plane", "edge_kubernetes_version",
              "edge_wasm_handler")


def _roles() -> tuple[str, ...]:
    roles_dir = role_path(FLEET_ROLE).parent
    return tuple(sorted(p.name for p in roles_dir.iterdir() if (p / "meta" / "argument_specs.yml").is_file()))


def _known_variables(roles: Iterable[str]) -> frozenset[str]:
    """Every variable a fleet may set: each role's defaults and the options of each of its entry
    points (roles/<role>/meta/argument_specs.yml), and what deploy.py reads (edge_stages)."""
    names = {"edge_stages"}
    for role in roles:
        if role_path(role, "defaults", "main.yml").is_file():
            names |= set(role_defaults(role))
        specs = yaml.safe_load(role_path(role, "meta", "argument_specs.yml").read_text())["argument_specs"]
        for entry in specs.values():
            names |= set(entry.get("options") or {})
    return frozenset(names)


def _role_options(roles: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Variable -> its argument spec, for every role but the fleet's own (checked field by field
    below, with messages of their own)."""
    options: dict[str, dict[str, Any]] = {}
    for role in roles:
        if role == FLEET_ROLE:
            continue
        specs = yaml.safe_load(role_path(role, "meta", "argument_specs.yml").read_text())["argument_specs"]
        for entry in specs.values():
            options.update(entry.get("options") or {})
    return options


ROLES = _roles()
KNOWN_VARIABLES = _known_variables(ROLES)
ROLE_OPTIONS = _role_options(ROLES)
# Our namespaces: a variable named like these that is not one of ours is a typo (it would be
# silently ignored, the default used instead).
OWN_PREFIXES = ("edge_", *(f"{role}_" for role in ROLES))

# Kubernetes label syntax (k8s.io/apimachinery validation): an optional DNS-subdomain
# prefix and a name of at most 63 characters; values are empty or name-shaped.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_HOST_LABEL}(\.{_HOST_LABEL})*$")


class InventoryError(Exception):
    """A fleet inventory that must not be used; ``problems`` holds one line per finding."""

    def __init__(self, source: Path, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s) found, no host was touched:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class FleetHost:
    name: str
    groups: tuple[str, ...]
    vars: dict[str, Any] = field(repr=False)

    @property
    def address(self) -> str:
        """Address the controller connects to."""
        return str(self.vars["ansible_host"])

    @property
    def node_ip(self) -> str:
        """Address cluster members use for this node (defaults to the SSH address)."""
        return str(self.vars.get("edge_node_ip") or self.vars["ansible_host"])


@dataclass(frozen=True)
class Fleet:
    source: Path
    hosts: tuple[FleetHost, ...]

    def group(self, name: str) -> list[FleetHost]:
        return [h for h in self.hosts if name in h.groups]


def inventory_file(path: str | Path) -> Path:
    """Accept a fleet directory or its hosts.yml."""
    p = Path(path)
    return p / INVENTORY_FILE if p.is_dir() else p


def load(path: str | Path, *, decrypt: bool = False) -> Fleet:
    """Load and validate a fleet; raise :class:`InventoryError` listing every problem.

    Values encrypted with Ansible Vault stay :data:`VAULTED` unless ``decrypt`` (what an engine
    needs, not a check): then the usual Ansible settings give the password
    (``ANSIBLE_VAULT_PASSWORD_FILE``, ``ANSIBLE_VAULT_IDENTITY_LIST``, ansible.cfg), and a vaulted
    value without one is a problem naming the host and the field."""
    source = inventory_file(path)
    if not source.is_file():
        raise InventoryError(source, [f"no inventory file ({INVENTORY_FILE} in the fleet directory)"])
    problems = _check_structure(source)
    if problems:
        raise InventoryError(source, problems)
    fleet = Fleet(source=source, hosts=tuple(_ansible_hosts(source, decrypt)))
    if decrypt:
        locked = [f"host '{h.name}': field '{k}': vaulted, and no vault password was given (set "
                  "ANSIBLE_VAULT_PASSWORD_FILE or vault_password_file in ansible.cfg)"
                  for h in fleet.hosts for k, value in sorted(h.vars.items()) if value == VAULTED]
        if locked:
            raise InventoryError(source, locked)
    problems = validate(fleet)
    if problems:
        raise InventoryError(source, problems)
    return fleet


# --- structure of the YAML file itself -------------------------------------------------


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(f"key '{key}' appears twice in one mapping (lines {first.line + 1} and "
                         f"{again.line + 1}): YAML keeps only the last, the first would be silently lost")


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (a duplicated host)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _check_structure(source: Path) -> list[str]:
    try:
        data = yaml.load(source.read_text(), Loader=_StrictLoader)  # a SafeLoader
    except _DuplicateKey as exc:
        return [str(exc)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return [f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]
    if not isinstance(data, dict) or "all" not in data or not isinstance(data["all"], dict):
        return ["the file must be a mapping with a top-level 'all' group"]
    problems: list[str] = []
    _check_group("all", data["all"], problems, seen_hosts=set())
    return problems


def _check_group(name: str, group: Any, problems: list[str], seen_hosts: set[str]) -> None:
    if group is None:
        return
    if not isinstance(group, dict):
        problems.append(f"group '{name}': must be a mapping, found {_type(group)}")
        return
    for key in group:
        if key not in ("hosts", "vars", "children"):
            problems.append(f"group '{name}': unknown key '{key}' (expected hosts, vars or children)")
    for key in ("hosts", "vars", "children"):
        value = group.get(key)
        if value is not None and not isinstance(value, dict):
            problems.append(f"group '{name}': field '{key}' must be a mapping, found {_type(value)}")
    for host, host_vars in (group.get("hosts") or {}).items() if isinstance(group.get("hosts"), dict) else ():
        if host_vars is not None and not isinstance(host_vars, dict):
            problems.append(f"host '{host}': its variables must be a mapping, found {_type(host_vars)}")
    children = group.get("children")
    if isinstance(children, dict):
        for child, body in children.items():
            _check_group(str(child), body, problems, seen_hosts)


# --- merged variables, as Ansible computes them ---------------------------------------


@contextmanager
def _quiet_gevent_hub() -> Iterator[None]:
    """Silence gevent's report of an error Ansible expects and handles.

    Inside pyinfra (which runs on gevent) Ansible's import-time probe of getaddrinfo fails
    in gevent's resolver thread; Ansible copes, but gevent prints a traceback for it.
    """
    gevent = sys.modules.get("gevent")
    if gevent is None:
        yield
        return
    hub = gevent.get_hub()
    saved, hub.exception_stream = hub.exception_stream, None
    try:
        yield
    finally:
        hub.exception_stream = saved


# What a vaulted value is, where it is not (or cannot be) decrypted.
VAULTED = "<vaulted>"


def _vault_secrets(loader: Any) -> bool:
    """Vault secrets from the usual Ansible settings in this process (once); whether there are any."""
    from ansible import constants as ansible_settings
    from ansible.cli import CLI
    from ansible.parsing.vault import VaultSecretsContext

    context = VaultSecretsContext.current(optional=True)
    if context is None:
        password_file = ansible_settings.DEFAULT_VAULT_PASSWORD_FILE
        CLI.setup_vault_secrets(
            loader, ansible_settings.DEFAULT_VAULT_IDENTITY_LIST,
            vault_password_files=[password_file] if password_file else [],
            ask_vault_pass=False, auto_prompt=False, initialize_context=True,
        )
        context = VaultSecretsContext.current(optional=True)
    return bool(context is not None and context.secrets)


def _ansible_hosts(source: Path, decrypt: bool = False) -> Iterable[FleetHost]:
    with _quiet_gevent_hub():
        import ansible.module_utils._internal._datatag  # noqa: F401  (runs the probe)
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    try:
        secrets = _vault_secrets(loader) if decrypt else False
    except AnsibleError as exc:  # e.g. a password file that is not there
        raise InventoryError(source, [f"vault password: {str(exc).splitlines()[0]}"]) from None
    try:
        manager = InventoryManager(loader=loader, sources=[str(source)], parse=False)
        manager.parse_sources(cache=False)
    except AnsibleError as exc:  # pragma: no cover - structure checks catch what we know
        raise InventoryError(source, [str(exc).splitlines()[0]]) from None
    variables = VariableManager(loader=loader, inventory=manager)
    for host in sorted(manager.get_hosts(), key=lambda h: h.name):
        merged = _plain(variables.get_vars(host=host, include_hostvars=False), decrypt=secrets)
        host_vars = {k: v for k, v in merged.items() if not _is_magic(k)}
        values = {**FLEET_DEFAULTS, **host_vars}
        groups = tuple(sorted(g.name for g in host.get_groups() if g.name != "all"))
        yield FleetHost(name=host.name, groups=groups, vars=values)


_MAGIC = {
    "ansible_config_file",
    "ansible_facts",
    "ansible_playbook_python",
    "ansible_version",
    "group_names",
    "groups",
    "inventory_dir",
    "inventory_file",
    "inventory_hostname",
    "inventory_hostname_short",
    "playbook_dir",
    "omit",
}


def _is_magic(key: str) -> bool:
    return key in _MAGIC


def _plain(value: Any, *, decrypt: bool = False) -> Any:
    """Ansible's tagged containers and strings as plain Python values; a vaulted value decrypted
    when ``decrypt``, else :data:`VAULTED`."""
    from ansible.parsing.vault import EncryptedString

    def plain(item: Any) -> Any:
        if isinstance(item, EncryptedString):
            return str(item) if decrypt else VAULTED
        return str(item)

    return json.loads(json.dumps(value, default=plain))


# --- validation ------------------------------------------------------------------------


def validate(fleet: Fleet) -> list[str]:
    """Every problem in a loaded fleet, one human-readable line each."""
    problems: list[str] = []
    # One line per problem, naming every host that has it (a typo under all: vars is one line).
    hosts_with: dict[str, list[str]] = {}
    for host in fleet.hosts:
        for problem in _host_problems(host):
            hosts_with.setdefault(problem, []).append(host.name)
    for problem, names in hosts_with.items():
        who = f"host '{names[0]}'" if len(names) == 1 else "hosts " + ", ".join(f"'{n}'" for n in names)
        problems.append(f"{who}: {problem}")

    # The same SSH endpoint (or node address) twice is always a copy-paste error.
    for label, key in (
        ("address", _endpoint),
        ("edge_node_ip", lambda h: h.vars.get("edge_node_ip")),
    ):
        owners: dict[Any, list[str]] = {}
        for host in fleet.hosts:
            value = key(host)
            if value:
                owners.setdefault(value, []).append(host.name)
        for value, names in owners.items():
            if len(names) > 1:
                shown = value if label != "address" else f"{value[0]}:{value[1]}"
                field_name = "ansible_host" if label == "address" else label
                problems.append(
                    f"hosts {', '.join(repr(n) for n in names)}: field '{field_name}': "
                    f"duplicate address {shown}"
                )

    for name in FLEET_WIDE:
        by_value: dict[str, list[str]] = {}
        for host in fleet.hosts:
            by_value.setdefault(repr(host.vars.get(name)), []).append(host.name)
        if len(by_value) > 1:
            shown = "; ".join(f"{value}: {', '.join(names)}" for value, names in sorted(by_value.items()))
            problems.append(f"field '{name}': differs between hosts ({shown}); it is fleet-wide: "
                            "set it once, under all: vars (or group_vars/all.yml)")

    for host in fleet.hosts:
        if not set(host.groups) & set(NODE_GROUPS):
            problems.append(
                f"host '{host.name}': in none of the groups {', '.join(NODE_GROUPS)}, so no stage would "
                "provision it: list it under one of them"
            )

    control, edge = fleet.group(CONTROL_PLANE_GROUP), fleet.group(EDGE_GROUP)
    if edge and not control:
        problems.append(
            f"group '{EDGE_GROUP}' has hosts ({', '.join(h.name for h in edge)}) but group "
            f"'{CONTROL_PLANE_GROUP}' has none: add the host that runs the control plane"
        )
    for host in control:
        if EDGE_GROUP in host.groups:
            problems.append(
                f"host '{host.name}': is in both '{CONTROL_PLANE_GROUP}' and '{EDGE_GROUP}'; "
                "list it in one group"
            )
    if not fleet.hosts:
        problems.append("the inventory has no hosts")
    return problems


def _role_variable_problems(variables: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, what is wrong) for each role variable the fleet sets that its role's argument spec
    refuses (type, element type, choices), as Ansible's own validator says it: the same check
    the role runs once a host is contacted, here before any is."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    found = []
    for name in sorted(set(variables) & set(ROLE_OPTIONS)):
        if variables[name] is None:
            continue
        result = ArgumentSpecValidator({name: ROLE_OPTIONS[name]}).validate({name: variables[name]})
        found += [(name, str(error)) for error in result.errors]
    return found


def _endpoint(host: FleetHost) -> tuple[str, int] | None:
    address = host.vars.get("ansible_host")
    port = host.vars.get("ansible_port")
    if isinstance(address, str) and isinstance(port, int):
        return (address, port)
    return None


def _host_problems(host: FleetHost) -> list[str]:
    v = host.vars
    problems: list[str] = []

    def field_problem(name: str, message: str) -> None:
        problems.append(f"field '{name}': {message}")

    address = v.get("ansible_host")
    if address is None or address == "":
        field_problem("ansible_host", "missing address (set the IP or DNS name to reach the host)")
    elif not isinstance(address, str):
        field_problem("ansible_host", f"must be a string, found {_type(address)}")
    elif not (_is_ip(address) or _HOSTNAME.match(address)):
        field_problem("ansible_host", f"'{address}' is neither an IP address nor a host name")

    port = v.get("ansible_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        field_problem("ansible_port", f"must be an integer from 1 to 65535, found {port!r}")

    user = v.get("ansible_user")
    if user is not None and (not isinstance(user, str) or not user):
        field_problem("ansible_user", f"must be a user name, found {user!r}")

    for name in sorted(v):
        if name.startswith(OWN_PREFIXES) and name not in KNOWN_VARIABLES:
            near = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1, cutoff=0.75)
            hint = f"did you mean '{near[0]}'?" if near else "see the roles' meta/argument_specs.yml"
            field_problem(name, f"unknown variable in edge-provision's namespace ({hint})")

    problems += [f"field '{name}': {message}" for name, message in _role_variable_problems(v)]

    for name, choices in (
        ("edge_arch", ARCHITECTURES),
        ("edge_cluster_distribution", DISTRIBUTIONS),
        ("edge_wasm_engine", WASM_ENGINES),
        ("edge_cluster_control_plane", CONTROL_PLANES),
        ("edge_kubernetes_version", KUBERNETES_VERSIONS),
    ):
        value = v.get(name)
        if value not in choices:
            quote = " — quote it: YAML reads 1.34 as a number" if isinstance(value, float) else ""
            field_problem(name, f"unknown value {value!r} (choose one of: {', '.join(choices)}){quote}")
    if v.get("edge_cluster_control_plane") == "existing" and (
        v.get("edge_cluster_distribution") not in EXISTING_CONTROL_PLANE_OK
    ):
        field_problem(
            "edge_cluster_control_plane",
            f"'existing' works with {' and '.join(EXISTING_CONTROL_PLANE_OK)} only; "
            f"{v.get('edge_cluster_distribution')} provisions its control plane (use 'provision')",
        )

    artifact_source = source_problem(v.get("edge_artifact_source"))
    if artifact_source:
        field_problem("edge_artifact_source", artifact_source)

    node_ip = v.get("edge_node_ip")
    if node_ip is not None and not (isinstance(node_ip, str) and _is_ip(node_ip)):
        field_problem("edge_node_ip", f"must be an IP address, found {node_ip!r}")

    labels = v.get("edge_node_labels")
    if not isinstance(labels, dict):
        field_problem("edge_node_labels", f"must be a mapping of label key to value, found {_type(labels)}")
    else:
        for key, value in labels.items():
            problem = label_problem(key, value)
            if problem:
                field_problem("edge_node_labels", problem)

    taints = v.get("edge_node_taints", [])
    if not isinstance(taints, list):
        field_problem("edge_node_taints", f"must be a list of {{key, value, effect}}, found {_type(taints)}")
    else:
        for taint in taints:
            problem = taint_problem(taint)
            if problem:
                field_problem("edge_node_taints", problem)
    return problems


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def taint_problem(taint: Any) -> str | None:
    """Why ``taint`` is not a valid Kubernetes node taint, or None."""
    if not isinstance(taint, dict) or set(taint) - {"key", "value", "effect"}:
        return f"a taint is a mapping with key, value (optional) and effect, found {taint!r}"
    if taint.get("effect") not in TAINT_EFFECTS:
        return f"taint effect {taint.get('effect')!r} must be one of {', '.join(TAINT_EFFECTS)}"
    return label_problem(taint.get("key"), str(taint.get("value", "")))


def label_problem(key: Any, value: Any) -> str | None:
    """Why ``key: value`` is not a valid Kubernetes label, or None."""
    if not isinstance(key, str):
        return f"label key {key!r} must be a string"
    prefix, _, name = key.rpartition("/")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"label key '{key}': the name part must be 1-63 characters of [A-Za-z0-9-_.], "
            "starting and ending alphanumeric"
        )
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key '{key}': the prefix must be a lowercase DNS subdomain (e.g. example.com)"
    if not isinstance(value, str):
        return (
            f"label '{key}': value {value!r} is {_type(value)}; label values are strings "
            "(quote it in YAML)"
        )
    if len(value) > 63 or not _LABEL_NAME.match(value):
        return (
            f"label '{key}': value '{value}' must be at most 63 characters of [A-Za-z0-9-_.], "
            "starting and ending alphanumeric"
        )
    return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


# --- what the engines consume ---------------------------------------------------------


def node_address(host_vars: Mapping[str, Any]) -> str:
    """The address other nodes reach a host at: edge_node_ip, else ansible_host."""
    return str(host_vars.get("edge_node_ip") or host_vars["ansible_host"])


def cluster_members(hosts: Iterable[Mapping[str, Any]], exclude: Iterable[str] = ()) -> list[dict[str, str]]:
    """/etc/hosts entries for the whole fleet but the hosts named in ``exclude`` (nodes being
    removed): ``{"name", "address"}`` per host.

    Takes each host's variables (Ansible ``hostvars`` values or fleet host vars) so the
    Ansible filter and the pyinfra deploy share this one definition.
    """
    left_out = set(exclude)
    members = [
        {"name": str(v["inventory_hostname"]), "address": node_address(v)}
        for v in hosts
        if str(v["inventory_hostname"]) not in left_out
    ]
    return sorted(members, key=lambda m: m["name"])


def pyinfra_data(host: FleetHost) -> dict[str, Any]:
    """pyinfra host data: every fleet variable plus pyinfra's SSH connection keys."""
    v = host.vars
    data: dict[str, Any] = dict(v)
    data.update(
        inventory_hostname=host.name,
        edge_groups=list(host.groups),
        ssh_hostname=v["ansible_host"],
        ssh_port=v["ansible_port"],
    )
    if v.get("ansible_user"):
        data["ssh_user"] = v["ansible_user"]
    if v.get("ansible_ssh_private_key_file"):
        data["ssh_key"] = v["ansible_ssh_private_key_file"]
    # Honour the SSH options Ansible would use, so both engines trust the same host keys.
    options = _ssh_options(str(v.get("ansible_ssh_common_args", "")))
    if "userknownhostsfile" in options:
        data["ssh_known_hosts_file"] = options["userknownhostsfile"]
    if "stricthostkeychecking" in options:
        data["ssh_strict_host_key_checking"] = options["stricthostkeychecking"]
    return data


def _ssh_options(args: str) -> dict[str, str]:
    words = shlex.split(args)
    options: dict[str, str] = {}
    for flag, value in itertools.pairwise(words):
        if flag == "-o" and "=" in value:
            key, _, val = value.partition("=")
            options[key.strip().lower()] = val.strip()
    return options


def pyinfra_groups(inventory_py: str | Path) -> tuple[list[tuple[str, dict[str, Any]]], ...]:
    """(control_plane, edge) host lists for a pyinfra ``inventory.py`` beside hosts.yml.

    On an invalid fleet, print every problem and exit non-zero before pyinfra connects.
    """
    try:
        fleet = load(Path(inventory_py).parent, decrypt=True)
    except InventoryError as exc:
        print(exc.render(), file=sys.stderr)
        raise SystemExit(2) from None
    fleet_dir = str(Path(inventory_py).parent.absolute())  # Ansible's inventory_dir
    return tuple(
        [(h.name, {**pyinfra_data(h), "inventory_dir": fleet_dir}) for h in fleet.group(group)]
        for group in NODE_GROUPS
    )
