"""How every command ends: one signal watcher, one ``Stop``, the same log events, exit code and
``Summary``, whichever path judged the rows (the worker pool, or the local report of a
``validate`` or a dry run).

A path is a body that returns its ``Tally`` (what it counted and wrote); ``run_to_end`` runs it
with SIGINT/SIGTERM watched from its start to its end, the final write of the result file
included, and turns the tally and the stop into the summary (``finish``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from batchphone.logs import get_logger
from batchphone.models import SUCCESS_STATUSES, NotValidRow, Reason, Status, Summary, next_step
from batchphone.modes.command import CommandPlan
from batchphone.remote.stop import STOP_SIGNALS, Stop

__all__ = ["EXIT_INTERRUPTED", "Tally", "log_started", "run_to_end", "watch_signals"]

EXIT_INTERRUPTED = 130

log = get_logger()


@dataclass(frozen=True, slots=True)
class Tally:
    """What a command's path hands to its end: the rows by status and what it wrote."""

    total: int
    counts: dict[Status, int]
    result_path: str | None
    requests: int = 0
    rate_limited: int = 0
    resumed_rows: int = 0
    moved_aside: tuple[str, ...] = ()
    sent_now: int = 0
    short_path: str | None = None
    planned_calls: int | None = None
    planned_s: float | None = None
    not_valid: tuple[NotValidRow, ...] | None = None
    #: where the result file is, when it is not at ``--out`` (said with the stop reason)
    where: str | None = None


def log_started(
    plan: CommandPlan, *, rows: int, resumed: bool = False, already_final: int = 0
) -> None:
    """The ``run_started`` event, the same for every command."""
    log.info(
        "run_started",
        command=plan.command.value,
        input=str(plan.input_path),
        rows=rows,
        resumed=resumed,
        already_final=already_final,
        dry_run=plan.dry_run,
        plan=plan.is_plan,
        lookup=plan.screen.compare,
        api=plan.api,
    )


async def run_to_end(
    plan: CommandPlan,
    stop: Stop,
    body: Callable[[], Awaitable[Tally]],
    *,
    handle_signals: bool,
    started: float,
) -> Summary:
    """Run ``body`` with the signals watched (``handle_signals``), then end the command."""
    tally = await _watching_signals(stop, handle_signals, body)
    return finish(plan, stop, tally, started=started)


def finish(plan: CommandPlan, stop: Stop, tally: Tally, *, started: float) -> Summary:
    """The command's ``Summary`` (logged as ``run_finished``): exit code, reason, next step."""
    counts = tally.counts
    code = exit_code(counts, stop)
    summary = Summary(
        input_rows=tally.total,
        counts=counts,
        requests=tally.requests,
        rate_limited=tally.rate_limited,
        elapsed_s=time.monotonic() - started,
        exit_code=code,
        result_path=tally.result_path,
        resumed_rows=tally.resumed_rows,
        stopped_reason=_with_where(_stop_reason(stop), tally.where),
        planned_calls=tally.planned_calls,
        planned_s=tally.planned_s,
        moved_aside=tally.moved_aside,
        sent_now=tally.sent_now,
        short_path=tally.short_path,
        next_step=next_step(
            code,
            resumable=plan.resumable,
            http_status=getattr(stop.fatal, "http_status", None),
            stopped=stop.reason,
            unsettled=counts.get(Status.UNSETTLED, 0),
            # only a run or an undo takes --retry-failed (a plan is simply made again)
            failed=counts.get(Status.FAILED, 0) if plan.sends else 0,
            undo=plan.is_undo,
        ),
        not_valid=tally.not_valid,
    )
    log.info("run_finished", **summary.to_json())
    return summary


def exit_code(counts: dict[Status, int], stop: Stop) -> int:
    """130 after a signal, the fatal error's code after one, else 0 when every row succeeded."""
    if stop.interrupted:
        return EXIT_INTERRUPTED
    if stop.fatal is not None:
        return stop.fatal.exit_code
    return 0 if all(status in SUCCESS_STATUSES for status, n in counts.items() if n) else 1


def _stop_reason(stop: Stop) -> str | None:
    if stop.fatal is not None:
        return stop.fatal.message
    return "interrupted" if stop.interrupted else None


def _with_where(reason: str | None, where: str | None) -> str | None:
    """The stop reason, with where the result file went when it is not at ``--out``."""
    if where is None or (reason is not None and where in reason):
        return reason
    return f"{reason}; {where}" if reason else where


async def _watching_signals(
    stop: Stop, handle_signals: bool, body: Callable[[], Awaitable[Tally]]
) -> Tally:
    """``body`` with SIGINT/SIGTERM stopping it (``watch_signals``) from its start to its end;
    its exception is raised as itself."""
    if not (handle_signals and threading.current_thread() is threading.main_thread()):
        return await body()
    failure: BaseException | None = None
    tally: Tally | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(watch_signals, stop)
        try:
            tally = await body()
        except BaseException as exc:  # raised below, outside the group: not in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    assert tally is not None
    return tally


async def watch_signals(stop: Stop) -> None:
    """SIGINT/SIGTERM: the first stops the run gracefully, the second cancels calls in flight."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            hard = stop.interrupted
            in_flight = stop.in_flight
            stop.interrupted = True
            stop.request(Reason.INTERRUPTED, hard=hard)
            if hard:
                log.warning(
                    "interrupted",
                    signal=name,
                    action="cancelling calls in flight",
                    calls_in_flight=in_flight,
                )
            else:
                # the second Ctrl-C is advice only when there is something for it to cancel
                log.warning(
                    f"stopping: {in_flight} calls in flight; Ctrl-C again to cancel them"
                    if in_flight
                    else "stopping: no call in flight",
                    signal=name,
                    calls_in_flight=in_flight,
                )
