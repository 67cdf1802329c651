"""11. The journal: JSONL (``batchphone.files.journal``) against a sqlite3 prototype (issue 10).

Issue 10 asks whether stdlib sqlite3 (WAL, a commit per answered call) should replace the JSONL
journal, and says to decide by measurement: ``kill -9`` must still lose nothing and ``validate``
on 1M rows must not get slower. The prototype is ``bench.sqlite_journal``. Both journals are
fed the same realistic ``RowResult`` records (an ``updated`` row with the returned user as JSON
and the before-image columns, about 800 bytes) the way the runner feeds them:

1. *append*: per answered call, its call record and its row(s). Per-row mode (``run``): one
   row per call, ``Journal.append(urgent=True)`` / one sqlite commit per row. Batch mode
   (``run --api batch``): 100 rows per call, each row ``urgent`` / one sqlite commit per call.
   The JSONL side also runs the runner's fsync every second, in a thread, as
   ``modes.sending.sync_journal`` does. Figures are µs of the appending thread per row, set
   against a row's share of a budget of 500 calls per 60 s (120 ms per row; 1.2 ms per row in
   batch mode).
2. *kill -9*: a child appends rows in per-row mode and prints each row's number once its
   append returned; it is SIGKILLed at a random moment. Every acknowledged row must be found
   on reopening (the real ``Journal.open`` resume, which cuts a torn last line; sqlite's own
   WAL recovery). A control journal that leaves rows in its buffer (``urgent=False``) must
   lose some: it shows the test can see a loss.
3. *resume*: opening the 1M-row journal and building what a resumed run needs (the status of
   every row, the calls of the last hour), in a child: time and peak RSS.
4. *write*: the result CSV from the 1M-row journal: the real ``write_results`` (external merge
   sort) against ``write_rows`` over ``SELECT ... ORDER BY row``, in a child each: time, peak
   RSS, and whether the two files are byte for byte the same.
5. *validate*: journals nothing. Counted, not re-measured: an in-process ``batchphone.validate``
   with ``Journal``'s methods counted, and the fixed cost of its one open (header, then unlink).
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import random
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

# the kill -9 and reopen children import this module: only what they need is imported here
from batchphone.files.journal import Journal, RunIdentity, iter_records, journal_path
from batchphone.models import (
    LOOKUP_COLUMNS,
    RESULT_COLUMNS,
    Command,
    PhoneState,
    RowResult,
    Status,
    UpdateRequest,
)
from bench import data
from bench.sqlite_journal import SqliteJournal

if TYPE_CHECKING:
    from bench.context import Bench

__all__ = [
    "BATCH_ROWS",
    "BUDGET_CALLS",
    "BUDGET_WINDOW_S",
    "COLUMNS",
    "IDENTITY",
    "Kills",
    "append_rows",
    "journal_choice",
    "kill_test",
    "result",
    "validate_journal_use",
]

#: The result columns of a ``run`` that looked users up (the default).
COLUMNS = (*RESULT_COLUMNS, *LOOKUP_COLUMNS)
#: The run the bench's journals belong to (a run that changed users: resumed, never replaced).
IDENTITY = RunIdentity(
    command=Command.RUN,
    input_name="bench.csv",
    input_sha256="0" * 64,
    project_id="P2benchJournal",
    base_url="http://127.0.0.1",
    login_id_column="loginId",
    phone_column="phone",
    default_region=None,
    verified=None,
    allow_merge=False,
    allow_remove=False,
    dry_run=False,
    no_lookup=False,
    api="update",
    batch_size=None,
)
DRY_IDENTITY = dataclasses.replace(IDENTITY, dry_run=True)
BUDGET_CALLS, BUDGET_WINDOW_S = 500, 60.0
#: Rows per call in batch mode (``--batch-size`` default).
BATCH_ROWS = 100
_CHUNK = 10_000  # results built ahead of each timed stretch (never all 1M in memory)
_FSYNC_EVERY_S = 1.0  # as modes.sending.sync_journal
_SCENARIO = "11 journal"
_USER = (
    '{{"loginIds":["user{i}@example.com"],"userId":"U{i:027d}","name":"User {i}",'
    '"email":"user{i}@example.com","phone":"{phone}","verifiedEmail":true,'
    '"verifiedPhone":false,"roleNames":[],"userTenants":[],"status":"enabled",'
    '"externalIds":["user{i}@example.com"],"picture":"","test":false,"customAttributes":{{}},'
    '"createdTime":1700000000,"TOTP":false,"SAML":false,"OAuth":{{}},"webauthn":false,'
    '"password":false,"ssoAppIds":[],"givenName":"","middleName":"","familyName":"",'
    '"editable":true,"SCIM":false,"push":false,"permissions":[],"OIDC":false,'
    '"consentExpiration":0}}'
)


def result(row: int) -> RowResult:
    """Row ``row``'s result as a run writes it: ``updated``, with the user the API returned."""
    i = row - 1
    phone = data.update_phone(i)
    return RowResult(
        row=row,
        login_id=f"user{i}@example.com",
        phone_input=phone,
        phone=phone,
        status=Status.UPDATED,
        http_status=200,
        attempts=1,
        user_id=f"U{i:027d}",
        verified_phone=False,
        user_json=_USER.format(i=i, phone=phone),
        finished_at="2026-12-03T14:27:31.%03dZ" % (row % 1000),  # noqa: UP031
        extra={"phone_before": "+1415555" + f"{i % 10000:04d}", "verified_before": i % 3 == 0},
    )


def intent(one: RowResult) -> UpdateRequest:
    """The request a row's result answers: its write-ahead record is written from it."""
    return UpdateRequest(
        row=one.row,
        login_id=one.login_id or "",
        phone=one.phone or "",
        verified=one.verified_phone,
        phone_input=one.phone_input,
        before=PhoneState(one.extra["phone_before"], one.extra["verified_before"]),
    )


class _Jsonl:
    """The real journal, driven as ``modes.recorder.Recorder`` drives it."""

    def __init__(self, out: Path) -> None:
        self.journal = Journal.open(out, IDENTITY, restart=True)
        self.path = self.journal.path
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync, daemon=True)
        self._syncer.start()

    def _sync(self) -> None:
        # modes.sending.sync_journal: flush on the appending thread (here every append is
        # urgent, so the buffer is always empty), fsync in a worker thread every second
        while not self._stop.wait(_FSYNC_EVERY_S):
            self.journal.fsync()

    def call(self, results: list[RowResult], ts: float) -> None:
        # as a run now does: the rows' intents and the call's start before it leaves, then
        # the answer and the rows' results
        self.journal.append_intent([intent(one) for one in results], ts=ts)
        call_id = self.journal.append_start(ts, until=ts + 30.0)
        self.journal.append_call(ts, call_id)
        for one in results:
            self.journal.append(one, ts=ts, urgent=True)

    def close(self) -> None:
        self._stop.set()
        self._syncer.join()
        self.journal.close()


class _Buffered(_Jsonl):
    """The kill -9 test's control: the same journal with every row left in its buffer
    (``urgent=False``: written within 0.5 s or 64 KB). A kill must lose rows here, or the test
    could not see a loss."""

    def call(self, results: list[RowResult], ts: float) -> None:
        for one in results:
            self.journal.append(one, ts=ts, urgent=False)


class _Sqlite:
    """The prototype: the call and its rows in one transaction, committed when answered."""

    def __init__(self, out: Path) -> None:
        self.path = sqlite_path(out)
        for stale in _sqlite_files(self.path):
            stale.unlink(missing_ok=True)
        self.journal = SqliteJournal(self.path, COLUMNS, IDENTITY.header())

    def call(self, results: list[RowResult], ts: float) -> None:
        self.journal.append_call(ts)
        for one in results:
            self.journal.append(one, ts=ts, commit=False)
        self.journal.commit()

    def close(self) -> None:
        self.journal.close()


def sqlite_path(out: Path) -> Path:
    """Where the prototype's journal of result file ``out`` lives."""
    return out.with_name(out.name + ".journal.db")


def _sqlite_files(path: Path) -> tuple[Path, ...]:
    return (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))


def _open(fmt: str, out: Path) -> _Jsonl | _Sqlite:
    if fmt == "buffered":
        return _Buffered(out)
    return _Jsonl(out) if fmt == "jsonl" else _Sqlite(out)


def append_rows(fmt: str, out: Path, rows: int, per_call: int) -> tuple[float, Path]:
    """Append rows 1..``rows``, ``per_call`` rows per answered call; (seconds appending, path).

    Only the appends are timed: the results of each stretch of rows are built before it.
    """
    sink = _open(fmt, out)
    spent = 0.0
    try:
        for start in range(1, rows + 1, _CHUNK):
            built = [result(row) for row in range(start, min(start + _CHUNK, rows + 1))]
            calls = [built[i : i + per_call] for i in range(0, len(built), per_call)]
            began = time.perf_counter()
            for call in calls:
                sink.call(call, time.time())
            spent += time.perf_counter() - began
    finally:
        sink.close()
    return spent, sink.path


def wal_pages_per_commit(workdir: Path, per_call: int) -> float:
    """WAL pages (frames) one answered call's commit writes, from a fresh sqlite journal.

    With ``synchronous=NORMAL`` the WAL is synced only at a checkpoint, every 1,000 pages: this
    tells how many rows a power cut may roll back. Measured below the first checkpoint.
    """
    sink = _Sqlite(workdir / f"wal-{per_call}.csv")
    calls = 300 if per_call == 1 else 30
    try:
        for call in range(calls):
            first = call * per_call + 1
            sink.call([result(row) for row in range(first, first + per_call)], time.time())
        wal = sink.path.with_name(sink.path.name + "-wal")
        page = sink.journal.db.execute("PRAGMA page_size").fetchone()[0]
        frames = (wal.stat().st_size - 32) / (page + 24)  # WAL header, frame header + page
    finally:
        sink.close()
        for path in _sqlite_files(sink.path):
            path.unlink(missing_ok=True)
    return float(frames / calls)


# --- kill -9 -----------------------------------------------------------------------------------


def _child_append(fmt: str, out: Path) -> None:
    """The kill -9 child: append rows in per-row mode until killed; ack each on stdout."""
    sink = _open(fmt, out)
    ack = sys.stdout.buffer
    row = 0
    while True:
        row += 1
        sink.call([result(row)], time.time())
        ack.write(b"%d\n" % row)  # after the append returned: the row is acknowledged
        ack.flush()


@dataclass
class Kills:
    """What the kills of one format found."""

    kills: int = 0
    acknowledged: int = 0
    lost: int = 0
    #: rows written after the last acknowledgement (the append returned, the ack was not sent)
    unacknowledged: int = 0
    torn: int = 0
    delays: list[float] = field(default_factory=list)


def _present(fmt: str, out: Path) -> tuple[set[int], bool]:
    """Rows found on reopening after the kill, and whether a torn line had to be cut."""
    if fmt != "sqlite":
        path = journal_path(out)
        torn = not path.read_bytes().endswith(b"\n")
        journal = Journal.open(out, IDENTITY)  # the real resume: cuts a torn last line
        state = journal.state
        journal.close()
        found = {row for row in range(len(state.statuses)) if state.status(row) is Status.UPDATED}
        return found, torn
    journal = SqliteJournal(sqlite_path(out), COLUMNS, IDENTITY.header())
    try:
        found = {row for (row,) in journal.db.execute("SELECT row FROM results")}
    finally:
        journal.close()
    return found, False


def kill_test(
    bench_root: Path, workdir: Path, fmt: str, kills: int, rng: random.Random, within_s: float
) -> Kills:
    """SIGKILL ``kills`` appending children at random moments (up to ``within_s`` after their
    first acknowledgement); count the acknowledged rows missing on reopening."""
    found = Kills()
    out = workdir / f"kill-{fmt}.csv"
    for _ in range(kills):
        for stale in (journal_path(out), *_sqlite_files(sqlite_path(out))):
            stale.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.journal_choice", "child", fmt, str(out)],
            stdout=subprocess.PIPE,
            cwd=bench_root,
        )
        assert proc.stdout is not None
        acks: list[bytes] = []
        # drained all along: a full pipe would stop the child in its ack, not in an append
        reader = threading.Thread(target=acks.extend, args=(proc.stdout,), daemon=True)
        reader.start()
        while not acks and proc.poll() is None:
            time.sleep(0.005)
        delay = rng.uniform(0.0, within_s)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        acked = [int(line) for line in acks if line.endswith(b"\n")]
        top = acked[-1] if acked else 0
        present, torn = _present(fmt, out)
        found.kills += 1
        found.acknowledged += top
        found.lost += sum(1 for row in range(1, top + 1) if row not in present)
        found.unacknowledged += len([row for row in present if row > top])
        found.torn += torn
        found.delays.append(delay)
    return found


# --- resume and write: in a child per format (time inside, peak RSS from getrusage) -----------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_reopen(fmt: str, out: Path, result_path: Path, total: int) -> dict[str, Any]:
    """Resume the journal of ``out``, then write its result file: times and peak RSS of each.

    Everything is imported first, so the peak RSS after the resume is the resume's (plus the
    imports, reported apart); the peak at the end is the write's when it is the higher.
    """
    from batchphone.files.results import result_rows
    from batchphone.files.writer import write_results, write_rows

    doc: dict[str, Any] = {"rss_imports_mb": _rss_mb()}
    began, cpu = time.perf_counter(), _cpu_s()
    if fmt == "jsonl":
        journal = Journal.open(out, IDENTITY)
        state = journal.state
        doc["resume_s"] = time.perf_counter() - began
        journal.close()
    else:
        sqlite = SqliteJournal(sqlite_path(out), COLUMNS, IDENTITY.header())
        state = sqlite.state()
        doc["resume_s"] = time.perf_counter() - began
    doc["resume_cpu_s"] = _cpu_s() - cpu
    doc["rss_resume_mb"] = _rss_mb()
    doc["final"] = state.statuses.count(state.code(Status.UPDATED))
    doc["calls"] = len(state.call_times)
    del state
    began, cpu = time.perf_counter(), _cpu_s()
    if fmt == "jsonl":  # as modes.outfile._write does it
        journaled = result_rows(iter_records(journal_path(out)))
        rows = (cells for cells in journaled if cells.row <= total)
        doc["rows"] = write_results(rows, result_path, columns=COLUMNS)
    else:
        doc["rows"] = write_rows(sqlite.rows(), result_path, columns=COLUMNS)
        sqlite.close()
    doc["write_s"] = time.perf_counter() - began
    doc["write_cpu_s"] = _cpu_s() - cpu
    doc["rss_write_mb"] = _rss_mb()
    return doc


def _in_child(bench: Bench, *args: str) -> dict[str, Any]:
    from bench.harness import measure

    measured = measure(bench.python("-m", "bench.journal_choice", *args), cwd=bench.root)
    if measured.returncode != 0:
        raise RuntimeError(f"{measured.command} failed: {measured.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(measured.stdout.strip().splitlines()[-1])
    return doc


# --- validate ----------------------------------------------------------------------------------


def validate_journal_use(workdir: Path, rows: int) -> dict[str, int]:
    """Run ``batchphone.validate`` in-process on ``rows`` mixed rows, counting ``Journal`` use."""
    import batchphone

    input_path = data.mixed_csv(workdir, rows)
    counts: dict[str, int] = {}

    def counted(name: str) -> Any:
        real = getattr(Journal, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] = counts.get(name, 0) + 1
            return real(*args, **kwargs)

        if name == "open":  # a classmethod: ``real`` is bound to Journal already
            return classmethod(lambda cls, *a, **k: wrapper(*a, **k))
        return wrapper  # a plain function: bound to the journal it is called on

    names = ("open", "append", "append_call", "flush", "fsync")
    patches = [mock.patch.object(Journal, name, counted(name)) for name in names]
    for patch in patches:
        patch.start()
    try:
        summary = batchphone.validate(str(input_path), out=str(workdir / "journal-validate.csv"))
    finally:
        for patch in patches:
            patch.stop()
    counts["rows"] = summary.input_rows
    counts["journal_left"] = int(journal_path(workdir / "journal-validate.csv").exists())
    return {name: counts.get(name, 0) for name in (*names, "rows", "journal_left")}


def _open_cost(workdir: Path, repeats: int = 15) -> tuple[float, float]:
    """Median seconds of validate's one journal open (create, header, close, unlink) per format."""
    out = workdir / "journal-open.csv"
    jsonl, sqlite = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        journal = Journal.open(out, DRY_IDENTITY, replaceable=True, resume=False)
        journal.close()
        journal.path.unlink()
        jsonl.append(time.perf_counter() - began)
        began = time.perf_counter()
        db = SqliteJournal(sqlite_path(out), COLUMNS, DRY_IDENTITY.header())
        db.close()
        for path in _sqlite_files(db.path):
            path.unlink(missing_ok=True)
        sqlite.append(time.perf_counter() - began)
    return statistics.median(jsonl), statistics.median(sqlite)


# --- the scenario ------------------------------------------------------------------------------


def _budget_us(per_call: int) -> float:
    """µs of budget one row gets at 500 calls per 60 s with ``per_call`` rows per call."""
    return BUDGET_WINDOW_S / BUDGET_CALLS / per_call * 1e6


_NAMES = {
    ("jsonl", 1): "JSONL Journal, per-row",
    ("sqlite", 1): "sqlite WAL, commit per row",
    ("jsonl", BATCH_ROWS): f"JSONL Journal, batch {BATCH_ROWS}/call",
    ("sqlite", BATCH_ROWS): f"sqlite WAL, commit per call ({BATCH_ROWS} rows)",
}


def journal_choice(bench: Bench) -> None:
    """11. JSONL against sqlite3: append, kill -9, resume, write; and validate's journal use."""
    from bench.report import Row

    small, large = bench.plan.journal_rows
    work = bench.workdir / "journal"
    work.mkdir(exist_ok=True)
    # 1. append: per-row mode at the smaller size (1M rows at 500/60 s would take 33 h one by
    # one), batch mode at both; the larger batch journals feed 3 and 4. At the smaller size
    # the formats run in turn ``journal_repeats`` times, the fastest kept (a busy machine slows
    # one measurement, rarely the same format every time)
    for rows, per_call in ((small, 1), (small, BATCH_ROWS), (large, BATCH_ROWS)):
        out = work / f"append-{rows}-{per_call}.csv"
        repeats = bench.plan.journal_repeats if rows == small else 1
        spent: dict[str, list[float]] = {"jsonl": [], "sqlite": []}
        sizes: dict[str, float] = {}
        for _ in range(repeats):
            for fmt in spent:
                seconds, path = append_rows(fmt, out, rows, per_call)
                spent[fmt].append(seconds)
                sizes[fmt] = _size_mb(path)
        budget = _budget_us(per_call)
        scenario = f"{_SCENARIO} append {rows:,} rows"
        fastest = {fmt: min(times) / rows * 1e6 for fmt, times in spent.items()}
        for fmt, times in spent.items():
            runs = ", ".join(f"{t:.1f}" for t in times)
            bench.add(
                Row(
                    scenario,
                    _NAMES[fmt, per_call],
                    "µs / answered row",
                    fastest[fmt],
                    unit="µs",
                    bound=fastest["jsonl"] if fmt == "sqlite" else None,
                    bound_label="JSONL",
                    note=f"fastest of {runs} s appending; journal {sizes[fmt]:,.0f} MB",
                )
            )
            if fmt == "sqlite" and rows == small:
                pages = wal_pages_per_commit(work, per_call)
                bench.add(
                    Row(
                        scenario,
                        _NAMES[fmt, per_call],
                        "WAL pages per commit",
                        pages,
                        unit="pages",
                        note=f"synced at a checkpoint, every 1,000 pages: about every "
                        f"{1000 / pages * per_call:,.0f} rows (what a power cut may roll back)",
                    )
                )
            bench.add(
                Row(
                    scenario,
                    _NAMES[fmt, per_call],
                    "share of a row's budget",
                    fastest[fmt] / budget * 100,
                    unit="%",
                    note=f"a row's budget at {BUDGET_CALLS}/{BUDGET_WINDOW_S:g} s, "
                    f"{per_call} row(s) per call: {budget:,.0f} µs",
                )
            )
    # 2. kill -9, and the control that shows the test can see a loss
    rng = random.Random(bench.plan.journal_seed)
    for fmt, name in (
        ("jsonl", "JSONL Journal"),
        ("sqlite", "sqlite WAL, commit per row"),
        ("buffered", "control: JSONL, urgent=False"),
    ):
        control = fmt == "buffered"
        # a kill just after the control flushed its buffer finds nothing lost (about 1 in 60):
        # three kills at least, so that it always shows a loss
        kills = max(bench.plan.journal_kills, 3) if control else bench.plan.journal_kills
        found = kill_test(bench.root, work, fmt, kills, rng, bench.plan.journal_kill_s)
        bench.add(
            Row(
                f"{_SCENARIO} kill -9",
                name,
                "acknowledged rows lost",
                found.lost,
                unit="rows",
                target="> 0 (a loss is seen)" if control else "0",
                met=(found.lost > 0 if control else found.lost == 0) and found.acknowledged > 0,
                note=f"{found.kills} kills after {min(found.delays):.2f}-{max(found.delays):.2f} "
                f"s; {found.acknowledged:,} rows acknowledged, all checked; "
                f"{found.unacknowledged} more written but not yet acknowledged"
                + (f"; {found.torn} torn last line(s) cut on reopening" if fmt != "sqlite" else ""),
            )
        )
    # 3. resume, 4. write: the larger batch-mode journals, in a child per format
    out = work / f"append-{large}-{BATCH_ROWS}.csv"
    written = {fmt: work / f"result-{fmt}.csv" for fmt in ("jsonl", "sqlite")}
    docs = {
        fmt: _in_child(bench, "reopen", fmt, str(out), str(written[fmt]), str(large))
        for fmt in ("jsonl", "sqlite")
    }
    for fmt, name in (("jsonl", "JSONL Journal.open"), ("sqlite", "sqlite SELECT row, status")):
        doc = docs[fmt]
        bench.add(
            Row(
                f"{_SCENARIO} resume {large:,} records",
                name,
                "open + resume state",
                doc["resume_s"],
                unit="s",
                note=f"CPU {doc['resume_cpu_s']:.2f} s; peak RSS {doc['rss_resume_mb']:.0f} MB "
                f"({doc['rss_imports_mb']:.0f} MB after imports); {doc['final']:,} final rows, "
                f"{doc['calls']:,} call times",
            )
        )
    for fmt, name in (
        ("jsonl", "write_results (merge sort)"),
        ("sqlite", "write_rows(ORDER BY row)"),
    ):
        doc = docs[fmt]
        bench.add(
            Row(
                f"{_SCENARIO} write CSV {large:,} rows",
                name,
                "wall",
                doc["write_s"],
                unit="s",
                note=f"CPU {doc['write_cpu_s']:.1f} s; {doc['rows']:,} rows, "
                f"{_size_mb(written[fmt]):,.0f} MB of CSV",
            )
        )
        bench.add(
            Row(
                f"{_SCENARIO} write CSV {large:,} rows",
                name,
                "peak RSS",
                doc["rss_write_mb"],
                unit="MB",
                note=f"{doc['rss_imports_mb']:.0f} MB after imports (polars included)",
            )
        )
    same = filecmp.cmp(written["jsonl"], written["sqlite"], shallow=False)
    bench.add(
        Row(
            f"{_SCENARIO} write CSV {large:,} rows",
            "both",
            "byte-identical result files",
            1.0 if same else 0.0,
            target="1 (yes)",
            met=same,
        )
    )
    for path in written.values():
        path.unlink(missing_ok=True)
    # 5. validate
    used = validate_journal_use(work, bench.plan.journal_validate_rows)
    jsonl_s, sqlite_s = _open_cost(work)
    records = used["append"] + used["append_call"]
    bench.add(
        Row(
            f"{_SCENARIO} validate",
            "batchphone validate",
            "journal records written",
            records,
            unit="records",
            target="0",
            met=records == 0 and used["open"] == 1 and not used["journal_left"],
            note=f"{used['rows']:,} rows validated in-process: Journal.open ×{used['open']} "
            f"(header only, then removed), append ×{used['append']}, "
            f"append_call ×{used['append_call']}, fsync ×{used['fsync']}; that one open "
            f"costs {jsonl_s * 1e3:.2f} ms (JSONL) or {sqlite_s * 1e3:.2f} ms (sqlite), "
            "per run, not per row",
        )
    )
    for size, per_call in ((small, 1), (small, BATCH_ROWS), (large, BATCH_ROWS)):
        stem = work / f"append-{size}-{per_call}.csv"
        for path in (journal_path(stem), *_sqlite_files(sqlite_path(stem))):
            path.unlink(missing_ok=True)


def _size_mb(path: Path) -> float:
    extra = path.with_name(path.name + "-wal")
    wal = extra.stat().st_size if extra.exists() else 0
    return (path.stat().st_size + wal) / 1e6


def _main(argv: list[str]) -> int:
    """The children: ``child FMT OUT`` (kill -9), ``reopen FMT OUT RESULT TOTAL`` (3 and 4)."""
    what, fmt, out = argv[0], argv[1], Path(argv[2])
    if what == "child":
        _child_append(fmt, out)
        return 0
    doc = _child_reopen(fmt, out, Path(argv[3]), int(argv[4]))
    print(json.dumps(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
