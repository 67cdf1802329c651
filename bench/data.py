"""Input files of the benchmarks: deterministic, generated once per work directory, reused.

Two shapes. ``update_csv``: ``loginId,phone`` with one distinct valid E.164 number per user
``user<i>@example.com`` (the users the emulator's ``--generate`` creates), for the scenarios
that call the API. ``mixed_csv``: ``loginId,phone,region`` as a real export looks (valid
international, national with a region, damaged, garbage, and 30% of the rows repeating an
earlier row's phone), for ``validate`` and the memory scenario. ``national_csv``: the same
shape where national numbers with a region dominate (``(415) 555-0134`` US, ``0 20 7946 0000``
GB, ...), the costly case for a normalizer: each needs its region's rules.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "MIX",
    "NATIONAL_MIX",
    "REPEATED_SHARE",
    "mixed_csv",
    "mixed_rows",
    "national_csv",
    "update_csv",
    "update_phone",
]

#: Share of the rows of ``mixed_csv`` whose phone string repeats an earlier row's.
REPEATED_SHARE = 0.30
#: How the fresh (not repeated) phones of ``mixed_csv`` are drawn.
MIX = {"international": 0.45, "national": 0.25, "damaged": 0.20, "garbage": 0.10}
#: The same for ``national_csv``: national numbers written as people write them dominate.
NATIONAL_MIX = {"written": 0.70, "international": 0.10, "damaged": 0.12, "garbage": 0.08}

# real area codes, so that the numbers are valid for phonenumbers and not merely well formed
_AREAS = (212, 213, 305, 312, 415, 503, 617, 646, 713, 206)
_GARBAGE = (
    "",
    "n/a",
    "N/A",
    "TBD",
    "-",
    "none",
    "call me",
    "#######",
    "1.41555501E+10",
    "0",
    "+",
    "phone",
)
_WRITE_CHUNK = 50_000
#: In the cached files' names: bump it when a generator changes, so stale inputs are not reused.
_GENERATION = 2
_REPEAT_POOL = 250_000


def update_phone(i: int) -> str:
    """The distinct, valid US number of user ``i`` (up to 8M users)."""
    area = _AREAS[i % len(_AREAS)]
    rest = i // len(_AREAS)
    exchange = 200 + rest // 10_000
    return f"+1{area}{exchange:03d}{rest % 10_000:04d}"


def _write_lines(path: Path, header: str, lines: Iterator[str]) -> Path:
    # write to a side file and rename, so an interrupted generation is never mistaken for a
    # complete cached input by the next run
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8", newline="") as f:
        f.write(header + "\n")
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= _WRITE_CHUNK:
                f.write("\n".join(chunk) + "\n")
                chunk.clear()
        if chunk:
            f.write("\n".join(chunk) + "\n")
    partial.replace(path)
    return path


def update_csv(workdir: Path, rows: int) -> Path:
    """``loginId,phone`` for users 0..rows-1, each with a new valid E.164 number."""
    path = workdir / f"update-g{_GENERATION}-{rows}.csv"
    if path.exists():
        return path
    lines = (f"user{i}@example.com,{update_phone(i)}" for i in range(rows))
    return _write_lines(path, "loginId,phone", lines)


def _four_pairs(rng: random.Random) -> str:
    return " ".join(f"{rng.randrange(100):02d}" for _ in range(4))


# Ranges wide enough (millions of numbers each) that fresh numbers rarely collide, so the
# repeated share of the file is the one drawn on purpose.
def _international(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(6)
    area, exchange, line = rng.choice(_AREAS), rng.randrange(200, 1000), rng.randrange(10_000)
    if kind == 0:
        return f"+1{area}{exchange}{line:04d}", ""
    if kind == 1:
        return f"+1 {area}-{exchange}-{line:04d}", ""
    if kind == 2:
        return f"+44 20 7{rng.randrange(100, 1000)} {line:04d}", ""
    if kind == 3:
        return f"+33 1 {_four_pairs(rng)}", ""
    if kind == 4:
        return f"+49 30 {rng.randrange(1_000_000, 100_000_000)}", ""
    return f"+61 2 9{rng.randrange(100, 1000)} {line:04d}", ""


def _national(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        area, exchange = rng.choice(_AREAS), rng.randrange(200, 1000)
        return f"({area}) {exchange}-{rng.randrange(10_000):04d}", "US"
    if kind == 1:
        return f"020 7{rng.randrange(100, 1000)} {rng.randrange(10_000):04d}", "GB"
    if kind == 2:
        return f"01 {_four_pairs(rng)}", "FR"
    return f"030 {rng.randrange(1_000_000, 100_000_000)}", "DE"


def _written(rng: random.Random) -> tuple[str, str]:
    """A national number as typed in a form: the shapes of ``_national`` and a few more."""
    kind = rng.randrange(6)
    if kind == 0:
        return f"0 20 7{rng.randrange(100, 1000)} {rng.randrange(10_000):04d}", "GB"
    if kind == 1:
        area, exchange = rng.choice(_AREAS), rng.randrange(200, 1000)
        return f"{area}.{exchange}.{rng.randrange(10_000):04d}", "US"
    return _national(rng)


def _damaged(rng: random.Random) -> tuple[str, str]:
    phone, region = (_international if rng.random() < 0.6 else _national)(rng)
    kind = rng.randrange(5)
    if kind == 0:  # a digit lost
        cut = rng.randrange(3, len(phone))
        return phone[:cut] + phone[cut + 1 :], region
    if kind == 1:  # digits doubled by a paste
        return phone + phone[-3:], region
    if kind == 2:  # the letter O for a zero
        return phone.replace("0", "O", 1) if "0" in phone else phone + "O", region
    if kind == 3:  # an extension, which E.164 cannot carry
        return f"{phone} ext. {rng.randrange(10, 1000)}", region
    return phone, ""  # a national number whose region cell was lost


def mixed_rows(
    rows: int, seed: int = 5, mix: dict[str, float] = MIX
) -> Iterator[tuple[str, str, str]]:
    """``(loginId, phone, region)`` rows of the mixed export (deterministic under ``seed``)."""
    rng = random.Random(seed)
    kinds = list(mix)
    weights = list(mix.values())
    makers = {
        "international": _international,
        "national": _national,
        "written": _written,
        "damaged": _damaged,
    }
    seen: list[tuple[str, str]] = []
    for i in range(rows):
        if seen and rng.random() < REPEATED_SHARE:
            phone, region = seen[rng.randrange(len(seen))]
        else:
            kind = rng.choices(kinds, weights)[0]
            if kind == "garbage":
                phone, region = rng.choice(_GARBAGE), ""
            else:
                phone, region = makers[kind](rng)
            # a bounded pool keeps the generator small at 5M rows; repeats still span far
            if len(seen) < _REPEAT_POOL:
                seen.append((phone, region))
            else:
                seen[rng.randrange(_REPEAT_POOL)] = (phone, region)
        yield f"user{i}@example.com", phone, region


def _csv_cell(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ',"\n') else text


def mixed_csv(workdir: Path, rows: int) -> Path:
    """``loginId,phone,region``: ``rows`` rows of :func:`mixed_rows`."""
    path = workdir / f"mixed-g{_GENERATION}-{rows}.csv"
    if path.exists():
        return path
    lines = (
        f"{login_id},{_csv_cell(phone)},{region}" for login_id, phone, region in mixed_rows(rows)
    )
    return _write_lines(path, "loginId,phone,region", lines)


def national_csv(workdir: Path, rows: int) -> Path:
    """``loginId,phone,region``: ``rows`` rows of :func:`mixed_rows` under ``NATIONAL_MIX``."""
    path = workdir / f"national-g{_GENERATION}-{rows}.csv"
    if path.exists():
        return path
    lines = (
        f"{login_id},{_csv_cell(phone)},{region}"
        for login_id, phone, region in mixed_rows(rows, seed=6, mix=NATIONAL_MIX)
    )
    return _write_lines(path, "loginId,phone,region", lines)
