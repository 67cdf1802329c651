"""``batchphone emulator``: serve a local Descope management API on loopback until Ctrl-C.

A thin shell: parse the flags, build the projects and faults, call ``server.serve``. Any bad
flag or seed file ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from batchphone.emulator.app import Emulator
from batchphone.emulator.faults import FaultKind, Faults
from batchphone.emulator.projects import (
    BudgetDefaults,
    load_projects_file,
    project_settings,
)
from batchphone.emulator.server import check_loopback, serve
from batchphone.errors import BatchphoneError

__all__ = ["emulator_command"]

_PREFIX = "batchphone emulator"
_RATE = click.FloatRange(0.0, 1.0)
_SECONDS = click.FloatRange(min=0.0)
_FAULT_RATES = [kind.value for kind in FaultKind]
_FAULT_HELP = {
    "error_500": "HTTP 500 answers (JSON body).",
    "error_503": "HTTP 503 answers (JSON body).",
    "error_520": "HTTP 520 answers (JSON body).",
    "error_524": "HTTP 524 answers (JSON body).",
    "html_502": "HTTP 502 answers with the CDN's HTML page.",
    "drop": "connections closed before the call is applied.",
    "timeout": "calls applied whose answer is held for --timeout-delay seconds.",
    "lost_answer": "calls applied whose connection then closes with no answer.",
    "ignore_update": "updates not applied, answered 200 with the user as if they were.",
    "applied_500": "calls applied, then answered HTTP 500 (JSON body).",
    "empty_200": "calls applied, then answered 200 with an empty body.",
    "empty_object_200": "calls applied, then answered 200 with the body {}.",
    "unapplied_200": "updates not applied, answered 200 with the user unchanged.",
}


def _fail(message: str) -> None:
    click.echo(f"{_PREFIX}: error: {message}", err=True)
    sys.exit(2)


class _OneLineErrors(click.Command):
    """A command whose flag errors are one line on stderr, not click's usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _fail(exc.format_message())
            raise  # unreachable: _fail exits


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several click options as one decorator, listed by ``--help`` in the order given."""

    def apply(function: Any) -> Any:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


#: One project from the command line: who it is, its users, its budget.
_PROJECT_OPTIONS = _options(
    click.option("--project-id", default="P2batchphoneemulator0000000000", show_default=True),
    click.option(
        "--management-key",
        envvar="BATCHPHONE_EMULATOR_KEY",
        help="[required unless --projects-file] The emulator's own fake key, not a Descope one "
        "(or BATCHPHONE_EMULATOR_KEY).",
    ),
    click.option("--users", type=click.Path(path_type=Path), help="Seed file: JSON list or CSV."),
    click.option("--generate", type=int, help="Generate N users user0@example.com..."),
    click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed of users and faults."
    ),
    click.option("--rate-limit", default="500/60", show_default=True, help="Budget as N/SECONDS."),
    click.option(
        "--penalty", type=_SECONDS, default=60.0, show_default=True, help="Block, seconds."
    ),
    click.option(
        "--rate-algorithm",
        type=click.Choice(["sliding", "fixed"]),
        default="sliding",
        show_default=True,
    ),
    click.option(
        "--license-tier",
        type=click.Choice(["tier1", "tier2", "tier3", "tier4"]),
        default="tier1",
        show_default=True,
    ),
)
#: The faults: latency, the rate of each fault kind, and how long the held answers wait.
_FAULT_OPTIONS = _options(
    click.option(
        "--latency", type=_SECONDS, default=0.0, show_default=True, help="Seconds per call."
    ),
    click.option("--jitter", type=_SECONDS, default=0.0, show_default=True, help="Up to +seconds."),
    click.option(
        "--arrival-jitter",
        type=_SECONDS,
        default=0.0,
        show_default=True,
        help="Delay each call by random 0..SECONDS before the budget counts it (a CDN in front).",
    ),
    *(
        click.option(
            "--" + name.replace("_", "-"),
            name,
            type=_RATE,
            default=0.0,
            help=f"Rate of {_FAULT_HELP[name]}",
        )
        for name in _FAULT_RATES
    ),
    click.option(
        "--timeout-delay",
        type=_SECONDS,
        default=65.0,
        show_default=True,
        help="Seconds a timeout answer is held.",
    ),
    click.option(
        "--write-latency",
        type=_SECONDS,
        default=0.0,
        show_default=True,
        help="Seconds added to each write's answer, after it is applied (a slow patch).",
    ),
    click.option(
        "--fault-writes-only",
        "writes_only",
        is_flag=True,
        help="Fault kinds hit only update/patch calls; loads and searches answer normally "
        "(--latency still applies).",
    ),
)


_EPILOG = """Required: --management-key (or BATCHPHONE_EMULATOR_KEY), unless --projects-file
names each project's key. Everything else has a default.

Examples:

\b
  batchphone emulator --management-key K --users samples/users.csv
  batchphone emulator --management-key K --generate 1000 --rate-limit 50/1 --penalty 1
  batchphone emulator --projects-file projects.toml --error-503 0.05 --port 0

Exit codes:

\b
  0    stopped by Ctrl-C or SIGTERM
  2    a bad flag, seed file or projects file, or the port is in use

Environment:

\b
  BATCHPHONE_EMULATOR_KEY   the fake key (instead of --management-key)
"""


@click.command(
    cls=_OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_EPILOG,
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@_PROJECT_OPTIONS
@_FAULT_OPTIONS
@click.option(
    "--projects-file", type=click.Path(path_type=Path), help="TOML or JSON list of projects."
)
@click.option("--quiet", is_flag=True, help="Print only the listening line.")
def emulator_command(**options: Any) -> None:
    """Serve a local Descope management API emulator (loopback only) until Ctrl-C."""
    try:
        check_loopback(options["host"])
        emulator = Emulator(projects=_projects(options), faults=_faults(options))
    except BatchphoneError as exc:
        _fail(str(exc))
        return
    quiet = options["quiet"]

    def started(base_url: str) -> None:
        projects = ",".join(emulator.project_ids)
        label = "project" if len(emulator.project_ids) == 1 else "projects"
        click.echo(f"{_PREFIX} listening on {base_url} {label}={projects}")

    try:
        serve(
            emulator,
            options["host"],
            options["port"],
            on_started=started,
            log_level="error" if quiet else "warning",
        )
    except BatchphoneError as exc:
        _fail(str(exc))
    if not quiet:
        _report(emulator)


def _report(emulator: Emulator) -> None:
    """One line per project: what it received until the stop."""
    for project_id in emulator.project_ids:
        stats = emulator.stats(project_id)
        click.echo(
            f"{_PREFIX} stopped: project={project_id} calls={stats.total_requests} "
            f"429={stats.rate_limited} blocks={stats.blocks} "
            f"max_window_calls={stats.max_window_calls}"
        )


def _projects(options: dict[str, Any]) -> list[Any]:
    budget = BudgetDefaults(
        rate=options["rate_limit"],
        penalty=options["penalty"],
        algorithm=options["rate_algorithm"],
        license_tier=options["license_tier"],
    )
    if options["projects_file"] is not None:
        if options["users"] is not None or options["generate"] is not None:
            _fail("--projects-file lists each project's users: drop --users and --generate")
        return load_projects_file(options["projects_file"], budget)
    if not options["management_key"]:
        _fail("--management-key (or BATCHPHONE_EMULATOR_KEY) is required")
    return [
        project_settings(
            options["project_id"],
            options["management_key"],
            users=options["users"],
            generate=options["generate"],
            seed=options["seed"],
            budget=budget,
        )
    ]


def _faults(options: dict[str, Any]) -> Faults:
    rates = {name: options[name] for name in _FAULT_RATES}
    try:
        return Faults(
            seed=options["seed"],
            latency=options["latency"],
            jitter=options["jitter"],
            arrival_jitter=options["arrival_jitter"],
            timeout_delay=options["timeout_delay"],
            write_latency=options["write_latency"],
            writes_only=options["writes_only"],
            **rates,
        )
    except ValueError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
