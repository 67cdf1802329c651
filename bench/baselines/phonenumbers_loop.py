"""Baseline for ``validate``: a bare ``phonenumbers`` parse / validate / format loop.

Reads ``loginId,phone,region`` with the csv module and, for every row, parses the phone (with
the row's region for national numbers), checks ``is_valid_number`` and formats E.164; nothing
else (no duplicate rules, no reasons, no report file). It prints the counts and the seconds of
the loop alone, so the bench can show both the process's rate and the loop's.

    python -m bench.baselines.phonenumbers_loop mixed.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time

import phonenumbers

__all__ = ["main", "validate_all"]


def validate_all(rows: list[tuple[str, str]]) -> tuple[int, int]:
    """(valid, invalid) over ``(phone, region)`` pairs."""
    valid = invalid = 0
    e164 = phonenumbers.PhoneNumberFormat.E164
    for phone, region in rows:
        try:
            number = phonenumbers.parse(phone, region or None)
        except phonenumbers.NumberParseException:
            invalid += 1
            continue
        if phonenumbers.is_valid_number(number):
            phonenumbers.format_number(number, e164)
            valid += 1
        else:
            invalid += 1
    return valid, invalid


def main(argv: list[str] | None = None) -> int:
    """Validate every row of INPUT; print the counts and the loop's seconds as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    args = parser.parse_args(argv)
    with open(args.input, newline="", encoding="utf-8") as source:
        rows = [(row["phone"], row["region"]) for row in csv.DictReader(source)]
    started = time.perf_counter()
    valid, invalid = validate_all(rows)
    loop_s = time.perf_counter() - started
    print(json.dumps({"rows": len(rows), "valid": valid, "invalid": invalid, "loop_s": loop_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
