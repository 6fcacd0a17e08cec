"""The layout's rules (issue 16), read from the code: every import statement of edge_provision,
plugins/, deploy.py and inventories/*/inventory.py, parsed with ast. Nothing under test is
imported. An import inside a function or an ``if TYPE_CHECKING:`` block counts like any other:
these rules are about which layer depends on which, not about when the import runs.

- no import cycle among edge_provision's modules;
- only edge_provision/lab, and the command line that offers `edge-provision lab ...`
  (edge_provision/cli.py, the top of the house), import edge_provision.lab: product code never does;
- no private name (a leading underscore, not a dunder) is imported from another module, nor
  reached as an attribute of an imported module; a private module (``_common.py``) is imported
  only from inside its own package;
- edge_provision/stages (logic both engines share) imports neither pyinfra nor Ansible;
- edge_provision/artifacts (the controller's cache) imports nothing of edge_provision above it:
  only edge_provision.artifacts, and PROJECT_ROOT from the package root;
- pyinfra is imported only by edge_provision/pyinfra_engine, deploy.py and the fleets'
  inventories/*/inventory.py.

Each failure names the file, the line and the import statement.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = "edge_provision"


@dataclass(frozen=True)
class Import:
    """One module an import statement reaches (``from x import a, b`` gives one per name)."""

    importer: str  # the importing module's dotted name
    file: Path  # relative to the repository
    line: int
    statement: str
    target: str  # the module imported: ``x`` for ``from x import name``, ``x.m`` for a submodule m
    name: str | None  # the name taken from ``target`` by ``from target import name`` (not a module)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.statement}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module the rules read, by dotted name."""
    files = [
        *sorted((ROOT / PACKAGE).rglob("*.py")),
        *sorted((ROOT / "plugins").rglob("*.py")),
        ROOT / "deploy.py",
        *sorted(ROOT.glob("inventories/*/inventory.py")),
    ]
    return {_module_name(f): f for f in files if "__pycache__" not in f.parts}


def _is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def _from_base(module: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` reads, relative imports resolved."""
    if not node.level:
        return str(node.module)
    package = module if _is_package(module) else module.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(modules()[module].read_text(), filename=str(modules()[module]))


def _alias(alias: ast.alias) -> str:
    return f"{alias.name} as {alias.asname}" if alias.asname else alias.name


@cache
def imports(module: str) -> tuple[Import, ...]:
    """Every import in ``module``, one per imported name; the statement shows that name alone."""
    tree = _tree(module)
    file = modules()[module].relative_to(ROOT)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, file, node.lineno, f"import {_alias(alias)}", alias.name, None)
                      for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            source = "." * node.level + (node.module or "")
            for alias in node.names:
                statement = f"from {source} import {_alias(alias)}"
                submodule = f"{base}.{alias.name}"
                if submodule in modules():
                    found.append(Import(module, file, node.lineno, statement, submodule, None))
                else:
                    found.append(Import(module, file, node.lineno, statement, base, alias.name))
    return tuple(sorted(found, key=lambda i: (i.line, i.target, i.name or "")))


def all_imports() -> Iterator[Import]:
    for module in modules():
        yield from imports(module)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(module: str) -> dict[str, str]:
    """Names bound to the project's modules in ``module`` (``import a.b as m``, ``from a import b``)."""
    aliases = {}
    tree = _tree(module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules():
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def _dotted(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else [*head, node.attr]
    return None


def _module_attributes(module: str) -> Iterator[tuple[int, str, str]]:
    """(line, module, attribute) for each ``m.attr`` whose ``m`` is one of the project's modules."""
    aliases = _module_aliases(module)
    tree = _tree(module)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _dotted(node.value)
        if not chain or chain[0] not in aliases:
            continue
        target = ".".join([aliases[chain[0]], *chain[1:]])
        if target in modules():
            yield node.lineno, target, node.attr


# --- the rules -------------------------------------------------------------------------------


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle_among_edge_provision_modules() -> None:
    package = [m for m in modules() if _within(m, PACKAGE)]
    edges = [i for m in package for i in imports(m) if i.target in modules() and i.target != m]
    graph: dict[str, set[str]] = {m: set() for m in package}
    for i in edges:
        graph[i.importer].add(i.target)
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) > 1:
            inside = [str(i) for i in edges if i.importer in component and i.target in component]
            cycles.append(f"cycle among {', '.join(component)}:\n    " + "\n    ".join(inside))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# The command line is above every layer: its `lab` subcommand starts and stops the test hosts.
LAB_COMMAND = f"{PACKAGE}.cli"


def test_only_the_lab_imports_the_lab() -> None:
    found = [str(i) for i in all_imports()
             if _within(i.target, f"{PACKAGE}.lab") and not _within(i.importer, f"{PACKAGE}.lab")
             and i.importer != LAB_COMMAND]
    assert not found, "product code imports edge_provision.lab:\n" + "\n".join(found)


def test_no_private_name_is_imported_from_another_module() -> None:
    found = []
    for i in all_imports():
        if i.target.split(".")[0] not in {m.split(".")[0] for m in modules()}:
            continue  # another project's module
        if i.name is not None and _private(i.name):
            found.append(f"{i}  ({i.name} is private to {i.target})")
        parts = i.target.split(".")
        for n, part in enumerate(parts):
            package = ".".join(parts[:n])
            if _private(part) and not _within(i.importer, package):
                found.append(f"{i}  ({'.'.join(parts[: n + 1])} is private to {package})")
    for module in modules():
        file = modules()[module].relative_to(ROOT)
        for line, target, attribute in _module_attributes(module):
            if not _private(attribute) or target == module:
                continue
            if f"{target}.{attribute}" in modules() and _within(module, target):
                continue  # a private module of the importer's own package
            found.append(f"{file}:{line}: uses {target}.{attribute}  ({attribute} is private to {target})")
    assert not found, "private names used across modules:\n" + "\n".join(sorted(set(found)))


def test_stages_import_neither_pyinfra_nor_ansible() -> None:
    found = [str(i) for i in all_imports()
             if _within(i.importer, f"{PACKAGE}.stages") and i.target.split(".")[0] in {"pyinfra", "ansible"}]
    assert not found, "edge_provision/stages imports an engine:\n" + "\n".join(found)


def test_artifacts_import_nothing_of_edge_provision_above_them() -> None:
    artifacts = f"{PACKAGE}.artifacts"
    found = []
    for module in (m for m in modules() if _within(m, artifacts)):
        for i in imports(module):
            if not _within(i.target, PACKAGE) or _within(i.target, artifacts):
                continue
            if i.target == PACKAGE and i.name == "PROJECT_ROOT":
                continue
            if i.target == PACKAGE and i.name is None:  # `import edge_provision`: what it then uses
                used = {a for _line, t, a in _module_attributes(module) if t == PACKAGE}
                if used <= {"PROJECT_ROOT"}:
                    continue
            found.append(str(i))
    assert not found, "edge_provision/artifacts imports from above it:\n" + "\n".join(found)


def _may_import_pyinfra(module: str) -> bool:
    return (_within(module, f"{PACKAGE}.pyinfra_engine") or module == "deploy"
            or (module.startswith("inventories.") and module.endswith(".inventory")))


def test_only_the_pyinfra_engine_imports_pyinfra() -> None:
    found = [str(i) for i in all_imports()
             if i.target.split(".")[0] == "pyinfra" and not _may_import_pyinfra(i.importer)]
    assert not found, "pyinfra imported outside edge_provision/pyinfra_engine and deploy.py:\n" + "\n".join(found)


def test_the_reader_sees_the_imports() -> None:
    """The rules above pass vacuously if nothing is read: the imports every layout has."""
    assert {"deploy", "edge_provision.cli", "edge_provision.pyinfra_engine", "plugins.filter.cluster"} <= set(modules())
    assert any(i.target.startswith("pyinfra") for i in imports("deploy"))
    assert any(i.target.startswith("pyinfra") for m in modules() if _within(m, f"{PACKAGE}.pyinfra_engine")
               for i in imports(m))
    assert any(_within(i.target, f"{PACKAGE}.stages") for i in imports("plugins.filter.cluster"))
    # A relative import is resolved against the importing module's package.
    probe = ast.parse("from .common import x\nfrom .. import role_files").body
    assert isinstance(probe[0], ast.ImportFrom) and isinstance(probe[1], ast.ImportFrom)
    assert _from_base("edge_provision.stages.cluster.k3s", probe[0]) == "edge_provision.stages.cluster.common"
    assert _from_base("edge_provision.stages.cluster", probe[0]) == "edge_provision.stages.cluster.common"
    assert _from_base("edge_provision.stages.cluster.k3s", probe[1]) == "edge_provision.stages"
