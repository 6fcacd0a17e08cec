"""What every stage's pyinfra operations share: where the run is (prepare or execute), steps
that run Python on the controller or a tool on the host at execution time, quietly (their
output may hold a token), reporting failures without a traceback."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Generator, Sequence
from typing import Any

from pyinfra import logger
from pyinfra.api.command import FunctionCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.api.state import StateStage
from pyinfra.context import host

from edge_provision.stages.cluster import common

Commands = Generator[Any, None, None]


def executing() -> bool:
    """Whether pyinfra is executing (not preparing): facts then show earlier operations' work."""
    return bool(host.state.current_stage == StateStage.Execute)


def pending(what: str) -> Commands:
    """At prepare time, on a host where an earlier operation has not run yet: report a change;
    the operation is computed again, from live facts, when it executes."""
    if executing():
        raise OperationError(what)
    yield f"echo {shlex.quote('pending: ' + what)}"


def failed(target: Any, message: str) -> bool:
    """Report a failed step of a Python callback: pyinfra then fails the operation, no traceback."""
    target.log_styled(message, fg="red", log_func=logger.error)
    return False


def python_step(what: str, step: Callable[[], object]) -> FunctionCommand:
    """The command that calls ``step`` on the controller when the operation executes; an
    exception fails the operation with "host <name>: <what>: <error>" and no traceback."""

    def call(state: Any, host: Any) -> bool:
        try:
            step()
        except Exception as exc:
            return failed(host, f"host {host.name}: {what}: {exc}")
        return True

    return FunctionCommand(call, (), {})


def run_quietly(
    target: Any, command: str, what: str, reset: str | None = None, secrets: Sequence[str] = ()
) -> bool:
    """Run ``command`` on ``target`` without echoing it or its output; on failure undo the
    tool's work with ``reset`` (None: nothing to undo) and report the output's tail, tokens
    (and ``secrets``) redacted."""
    ok, output = target.run_shell_command(command, print_output=False, print_input=False)
    if ok:
        return True
    text = "\n".join(line.line for line in output.combined_lines)
    if reset:
        target.run_shell_command(reset, print_output=False, print_input=False)
    undone = "the node was reset; " if reset else ""
    return failed(
        target,
        f"host {target.name}: {what} failed ({undone}fix and re-run):\n"
        f"{common.failure_report(text, secrets=secrets)}",
    )


def tool_step(command: str, what: str, reset: str | None = None) -> FunctionCommand:
    """The command that runs ``command`` on the host via :func:`run_quietly` when the operation executes."""

    def call(state: Any, host: Any) -> bool:
        return run_quietly(host, command, what, reset=reset)

    return FunctionCommand(call, (), {})
