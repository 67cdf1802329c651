"""What a cell or a setting may say: the true/false words and the region codes.

One vocabulary for the verified column of an input file, the ``verified_before`` column undo
reads back, the boolean settings (``config.toml``, ``BATCHPHONE_*``), the result writer and
the emulator's seed files. It is the union of what each of them accepted on its own before:
every word in it means one thing only, so accepting one more spelling changes no answer.
A leaf: it imports nothing of batchphone but ``errors``.
"""

from __future__ import annotations

from batchphone.errors import UsageError

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "check_region", "parse_flag"]

#: Cell and setting values read as true / as false (compared stripped and lower-cased).
TRUE_WORDS = frozenset({"true", "yes", "1", "y", "t", "on"})
FALSE_WORDS = frozenset({"false", "no", "0", "n", "f", "off"})

# Codes people type for their own country that ISO 3166 spells otherwise.
_COMMON_REGION_TYPOS = {"UK": "GB", "EL": "GR"}


def parse_flag(text: str) -> bool | None:
    """``"Yes"`` -> True, ``" 0 "`` -> False; an empty or unknown word -> None.

    Callers tell an empty cell (no value) from a word outside the vocabulary (a mistake) by
    checking ``text.strip()`` themselves: both come back None here.
    """
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def check_region(code: str) -> str:
    """Return ``code`` as an upper-case ISO 3166 alpha-2 region libphonenumber knows.

    Raises ``UsageError`` for anything else (``UK`` gets a hint: the code is ``GB``).
    """
    import phonenumbers  # 25 ms to import: only when a region is given

    region = code.strip().upper()
    if region in phonenumbers.SUPPORTED_REGIONS:
        return region
    hint = _COMMON_REGION_TYPOS.get(region)
    suffix = f' (did you mean "{hint}"?)' if hint else " such as US, GB or DE"
    raise UsageError(f'unknown region "{code}": expected an ISO 3166 alpha-2 code{suffix}')
