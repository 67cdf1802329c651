"""One budget for every run on a project: a shared sliding log in a file or in Redis.

``--rate`` is the project's total. Each run's limiter takes every slot from the shared log as
well as from its own, under the same rule (``remote.ratelimit``): a slot is held from before
the call until its answer, and frees one window after that. The log holds, per slot, the run
that took it and the time it was given back (empty while held); per run, its last heartbeat and
the last time it asked for a slot.

Fairness: a run may hold at most ``ceil(calls / active runs)`` slots of the window, where a run
is active while it asked for a slot within the last window. A run that dies stops beating: its
held slots count as given back at its last heartbeat plus ``stale`` (it cannot have sent later),
so they free within one window and three heartbeats, and it stops counting as active within one
window. A run that ends normally leaves at once (``close``).

Stores:

* ``file`` (default): ``<state dir>/budget/<project id>.json`` under a ``filelock`` lock, on
  the wall clock that every process of the machine shares. The state dir is the one the caller
  passes (``Settings.state_dir``: the CLI reads ``BATCHPHONE_STATE_DIR`` into it), else the
  user's state folder (``platformdirs.user_state_path("batchphone")``,
  ``~/.local/state/batchphone`` on Linux). Nothing here reads the environment.
* ``redis://host:port/db`` (``pip install batchphone[redis]``): one Lua script does each
  check-and-take atomically on the server, on the server's clock (``TIME``), so machines whose
  clocks differ still share one log.
* ``none``: the run's own limiter only (today's per-process behaviour).

The stores are written by hand because no library keeps a shared sliding log with
give-back-after-answer slots, per-run shares and heartbeats; the file lock (filelock) and the
Redis client are libraries. A Redis URL may carry a password: it is never put into a message.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from filelock import FileLock

from batchphone.errors import BatchphoneError, UsageError
from batchphone.logs import get_logger
from batchphone.options import BudgetStore
from batchphone.remote.ratelimit import SharedBudget

__all__ = [
    "BudgetStoreError",
    "FileBudget",
    "RedisBudget",
    "default_state_dir",
    "open_budget",
]

log = get_logger()

T = TypeVar("T")
_State = dict[str, Any]


class BudgetStoreError(BatchphoneError):
    """The shared budget store failed during a run (the journal keeps what was done)."""

    exit_code = 2  # before the first update; after it the run ends with LocalFaultError (4)


def default_state_dir() -> Path:
    """The user's state folder (``platformdirs``): where the file store lives unless the caller
    names another folder."""
    import platformdirs

    return platformdirs.user_state_path("batchphone", appauthor=False)


def redact(url: str) -> str:
    """A store URL without its user and password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def open_budget(
    spec: str, project_id: str, *, period: float, state_dir: Path | None = None
) -> SharedBudget | None:
    """The shared budget named by ``--budget-store`` (``file``, ``none``, ``redis://...``).

    The file store lives in ``<state_dir>/budget`` (``None``: ``default_state_dir()``). A store
    opened starts a heartbeat thread: ``close`` it, and the thread is joined.
    """
    if spec == BudgetStore.NONE:
        return None
    if spec == BudgetStore.FILE:
        folder = state_dir.expanduser() if state_dir is not None else default_state_dir()
        return FileBudget(folder / "budget", project_id, period=period)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisBudget(spec, project_id, period=period)
    raise UsageError(
        f"budget_store: unknown store {redact(spec)!r} (file, none or redis://host:port/db)",
        setting="budget_store",
    )


def _heartbeat_interval(period: float) -> float:
    """Beats per window: often enough that a dead run's slots free about one window on."""
    return min(max(period / 10, 0.05), 1.0)


# -- the log's rules, on a plain dict (the file store; the Lua script mirrors them) -----------


def _purge(state: _State, now: float, window: float, stale: float) -> None:
    slots: dict[str, list[Any]] = state.setdefault("slots", {})
    alive: dict[str, float] = state.setdefault("alive", {})
    wants: dict[str, float] = state.setdefault("wants", {})
    for slot_id, (run, given_back) in list(slots.items()):
        if given_back is None:
            beat = alive.get(run)
            if beat is None or now - beat > stale:
                # the holder died: its call went out before then, at the latest
                given_back = now if beat is None else beat + stale
                slots[slot_id][1] = given_back
            else:
                continue
        # a time in the future means the wall clock stepped back: count it as now
        if min(given_back, now) + window <= now:
            del slots[slot_id]
    for run, beat in list(alive.items()):
        if now - beat > stale:
            del alive[run]
    for run, asked in list(wants.items()):
        if now - asked > window:
            del wants[run]


def _take(
    state: _State, now: float, run: str, slot_id: str, calls: int, window: float, stale: float
) -> float | None:
    """Take a slot for ``run`` (``None``), or the seconds to wait (``-1``: unknown, poll)."""
    _purge(state, now, window, stale)
    state["alive"][run] = now
    state["wants"][run] = now
    paused = float(state.get("paused_until", 0.0))
    if paused > now:
        return paused - now
    slots: dict[str, list[Any]] = state["slots"]
    mine = sum(1 for owner, _ in slots.values() if owner == run)
    share = math.ceil(calls / len(state["wants"]))
    if len(slots) < calls and mine < share:
        slots[slot_id] = [run, None]
        return None
    frees = [min(back, now) + window for _, back in slots.values() if back is not None]
    return min(frees) - now if frees else -1.0


def _release(state: _State, now: float, slot_id: str) -> None:
    slot = state.setdefault("slots", {}).get(slot_id)
    if slot is not None:
        # a slot counted as given back when its run looked dead: the later time wins
        slot[1] = now if slot[1] is None else max(slot[1], now)


def _beat(state: _State, now: float, run: str) -> None:
    state.setdefault("alive", {})[run] = now


def _pause(state: _State, now: float, seconds: float) -> None:
    state["paused_until"] = max(float(state.get("paused_until", 0.0)), now + seconds)


def _leave(state: _State, run: str) -> None:
    state.setdefault("alive", {}).pop(run, None)
    state.setdefault("wants", {}).pop(run, None)


class _Heartbeat:
    """A daemon thread that calls ``beat`` every ``interval`` s until stopped.

    A thread, not a task: it beats while the event loop is busy, needs no task group, and dies
    with the process (a killed run must stop beating).
    """

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="budget-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception as exc:  # a missed beat is retried on the next one
                log.warning("budget_heartbeat_failed", error=type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        # longer than a beat can take (Redis: a 10 s socket timeout): the thread ends with the run
        self._thread.join(timeout=15)


def _store_name(project_id: str) -> str:
    """A file name for a project id: the id itself when it is plain, else a hash of it."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", project_id):
        return project_id
    import hashlib

    return hashlib.sha256(project_id.encode()).hexdigest()[:32]


class FileBudget:
    """The shared log of one project in a small JSON file, for every run on this machine."""

    def __init__(
        self,
        directory: Path,
        project_id: str,
        *,
        period: float,
        clock: Callable[[], float] | None = None,
        heartbeat: bool = True,
    ) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UsageError(
                f"budget_store: cannot create {directory}: {exc.strerror}", setting="budget_store"
            ) from None
        name = _store_name(project_id)
        self.path = directory / f"{name}.json"
        self._lock = FileLock(str(directory / f"{name}.lock"), mode=0o600)
        # ``time.time`` looked up now, not when this module was imported (tests move it)
        self._clock = clock if clock is not None else time.time
        self.run = uuid.uuid4().hex
        interval = _heartbeat_interval(period)
        self.stale = 3 * interval
        self._beating = _Heartbeat(self.beat, interval) if heartbeat else None

    def __repr__(self) -> str:
        return f"FileBudget({str(self.path)!r})"

    def _update(self, change: Callable[[_State, float], T]) -> T:
        try:
            # filelock polls a held lock every 50 ms by default: a slot would wait that long
            with self._lock.acquire(poll_interval=0.001):
                try:
                    state: _State = orjson.loads(self.path.read_bytes())
                except FileNotFoundError:
                    state = {}
                except ValueError:  # not ours, or damaged: start again (logged, no data in it)
                    log.warning("budget_file_unreadable", path=str(self.path))
                    state = {}
                result = change(state, self._clock())
                temporary = self.path.with_name(f"{self.path.name}.{self.run}.tmp")
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(orjson.dumps(state))
                # a killed writer leaves the old file whole, never half of the new one
                os.replace(temporary, self.path)
                return result
        except OSError as exc:
            raise BudgetStoreError(f"budget file {self.path}: {exc.strerror}") from None

    def take(self, calls: int, window: float) -> tuple[str | None, float]:
        """Take a slot from the shared log, or say how long to wait."""
        slot_id = uuid.uuid4().hex[:16]
        wait = self._update(
            lambda state, now: _take(state, now, self.run, slot_id, calls, window, self.stale)
        )
        if wait is None:
            return slot_id, 0.0
        return None, wait if wait >= 0 else self.stale / 3

    def release(self, slot_id: str) -> None:
        """The call on ``slot_id`` was answered or given up now."""
        self._update(lambda state, now: _release(state, now, slot_id))

    def beat(self) -> None:
        """This run is alive (its held slots still count as held)."""
        self._update(lambda state, now: _beat(state, now, self.run))

    def pause(self, seconds: float) -> None:
        """No run on the project takes a slot for ``seconds``."""
        self._update(lambda state, now: _pause(state, now, seconds))

    def close(self) -> None:
        """Stop beating and leave: the other runs get this run's share."""
        if self._beating is not None:
            self._beating.stop()
            self._beating = None
        self._update(lambda state, now: _leave(state, self.run))


# The same rules as _purge/_take above, atomic on the server and on its clock.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op, run, sid = ARGV[1], ARGV[2], ARGV[3]
local calls, window, stale = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local seconds = tonumber(ARGV[7])
local slots, alive, wants, paused = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function fmt(x) return string.format('%.6f', x) end
local function keep()
  local ttl = math.ceil((window + stale) * 2000) + 60000
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ttl) end
end
if op == 'beat' then
  redis.call('HSET', alive, run, fmt(now)); keep(); return {1, '0'}
elseif op == 'pause' then
  local current = tonumber(redis.call('GET', paused) or '0')
  if now + seconds > current then redis.call('SET', paused, fmt(now + seconds)) end
  keep(); return {1, '0'}
elseif op == 'release' then
  local value = redis.call('HGET', slots, sid)
  if value then
    local owner, back = string.match(value, '^([^|]*)|(.*)$')
    local at = now
    if back ~= '' and tonumber(back) > now then at = tonumber(back) end
    redis.call('HSET', slots, sid, owner .. '|' .. fmt(at))
  end
  keep(); return {1, '0'}
elseif op == 'leave' then
  redis.call('HDEL', alive, run); redis.call('HDEL', wants, run); return {1, '0'}
end
local beats = {}
local listed = redis.call('HGETALL', alive)
for i = 1, #listed, 2 do beats[listed[i]] = tonumber(listed[i + 1]) end
local all = redis.call('HGETALL', slots)
local live, mine, soonest = 0, 0, nil
for i = 1, #all, 2 do
  local id = all[i]
  local owner, back = string.match(all[i + 1], '^([^|]*)|(.*)$')
  local at = nil
  if back == '' then
    local beat = beats[owner]
    if beat == nil then at = now elseif now - beat > stale then at = beat + stale end
    if at ~= nil then redis.call('HSET', slots, id, owner .. '|' .. fmt(at)) end
  else
    at = tonumber(back)
  end
  if at ~= nil and at + window <= now then
    redis.call('HDEL', slots, id)
  else
    live = live + 1
    if owner == run then mine = mine + 1 end
    if at ~= nil and (soonest == nil or at + window < soonest) then soonest = at + window end
  end
end
for other, beat in pairs(beats) do
  if now - beat > stale then redis.call('HDEL', alive, other) end
end
redis.call('HSET', alive, run, fmt(now))
redis.call('HSET', wants, run, fmt(now))
local asked = redis.call('HGETALL', wants)
local active = 0
for i = 1, #asked, 2 do
  if now - tonumber(asked[i + 1]) > window then redis.call('HDEL', wants, asked[i])
  else active = active + 1 end
end
keep()
local until_ = tonumber(redis.call('GET', paused) or '0')
if until_ > now then return {0, fmt(until_ - now)} end
if live < calls and mine < math.ceil(calls / active) then
  redis.call('HSET', slots, sid, run .. '|')
  return {1, '0'}
end
if soonest == nil then return {0, '-1'} end
return {0, fmt(soonest - now)}
"""


class RedisBudget:
    """The shared log of one project in Redis, for runs on any number of machines."""

    def __init__(self, url: str, project_id: str, *, period: float, heartbeat: bool = True) -> None:
        try:
            import redis
        except ImportError:
            raise UsageError(
                "budget_store: a redis:// store needs the redis package: "
                "pip install 'batchphone[redis]'",
                setting="budget_store",
            ) from None
        self.url = redact(url)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
            self._client.ping()
        except (*self._errors, ValueError) as exc:
            raise UsageError(
                f"budget_store: cannot reach {self.url}: {type(exc).__name__}",
                setting="budget_store",
            ) from None
        self._script = self._client.register_script(_LUA)
        tag = "{" + project_id + "}"  # one hash slot: the script may touch all four keys
        self._keys = [
            f"batchphone:budget:{tag}:{name}" for name in ("slots", "alive", "wants", "paused")
        ]
        self.run = uuid.uuid4().hex
        interval = _heartbeat_interval(period)
        self.stale = 3 * interval
        self._window = period
        self._beating = _Heartbeat(self.beat, interval) if heartbeat else None

    def __repr__(self) -> str:
        return f"RedisBudget({self.url!r})"

    def _call(
        self, op: str, slot_id: str = "", calls: int = 0, window: float = 0.0, seconds: float = 0.0
    ) -> tuple[bool, float]:
        window = window or self._window
        args: list[str | int] = [op, self.run, slot_id, calls, repr(window), repr(self.stale)]
        args.append(repr(seconds))
        try:
            done, value = self._script(keys=self._keys, args=args)
        except self._errors as exc:
            raise BudgetStoreError(f"budget store {self.url}: {type(exc).__name__}") from None
        return bool(done), float(value)

    def take(self, calls: int, window: float) -> tuple[str | None, float]:
        """Take a slot from the shared log, or say how long to wait."""
        slot_id = uuid.uuid4().hex[:16]
        taken, wait = self._call("take", slot_id, calls, window)
        if taken:
            return slot_id, 0.0
        return None, wait if wait >= 0 else self.stale / 3

    def release(self, slot_id: str) -> None:
        """The call on ``slot_id`` was answered or given up now (on the server's clock)."""
        self._call("release", slot_id)

    def beat(self) -> None:
        """This run is alive (its held slots still count as held)."""
        self._call("beat")

    def pause(self, seconds: float) -> None:
        """No run on the project takes a slot for ``seconds``."""
        self._call("pause", seconds=seconds)

    def close(self) -> None:
        """Stop beating and leave: the other runs get this run's share."""
        if self._beating is not None:
            self._beating.stop()
            self._beating = None
        try:
            self._call("leave")
        finally:
            self._client.close()
