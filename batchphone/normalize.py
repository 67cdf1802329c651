"""Raw phone cell -> E.164, or the reason it cannot be sent. Pure: no I/O, never raises.

Liberal about formatting (spaces, dots, dashes, parentheses, ``tel:``, a leading ``00`` or the
region's international prefix, non-breaking and zero-width spaces, full-width digits), strict
about the number itself: it must be valid for its country per libphonenumber, and a national
number is only read with a region (the row's ``region`` cell or ``--default-region``), never
with a guessed one.

Decisions the callers can rely on:

* Order of checks: empty cell, numeric cell, region cell, then the text itself. A row whose
  region cell is not a known region is ``INVALID_REGION`` even when its phone is already
  international: a bad region cell usually means shifted columns, so the row is not trusted.
* An already-E.164 cell that is valid comes back unchanged (so normalizing an output again, under
  any region, gives itself).
* Cells longer than 256 characters are ``INVALID_NUMBER`` without parsing, and are not cached,
  so a 10 MB cell costs one scan and pins no memory.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, ValidationResult

from batchphone.cells import check_region
from batchphone.models import Normalized, Reason

__all__ = ["E164_PATTERN", "check_region", "normalize"]

#: What every E.164 output satisfies: ``+``, no leading zero, at most 15 digits.
E164_PATTERN = re.compile(r"^\+[1-9]\d{1,14}$", re.ASCII)

# libphonenumber itself refuses input over 250 characters; no phone needs more than this.
_MAX_RAW = 256
# Hot numbers (a switchboard, a test number) repeat across a file; a bounded cache keeps them
# without letting a file of a million distinct numbers grow memory without limit.
_CACHE_SIZE = 1 << 16

_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)
_COUNTRY_CODES = frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)

# One shared instance per outcome that carries no number: saves memory in the cache.
_FAIL = {reason: Normalized(None, reason) for reason in Reason}
_REMOVE = Normalized("", None)

# Spreadsheets write large numbers as 4.4790E+11 (and 4,479E+11 in comma-decimal locales):
# the digits after the fourth are gone for good.
_SCIENTIFIC = re.compile(r"^[+-]?\d+(?:[.,]\d*)?e[+-]?\d+$", re.IGNORECASE)
# `ext. 12`, `extension 12`, `x12`, `;ext=12` (RFC 3966), `#12`, at the end of the cell.
_EXTENSION = re.compile(
    r"\d[\s().\-/]*(?:;\s*ext\s*=|(?:ext(?:ension|n)?\.?|x|#))\s*\d{1,10}\s*#?$",
    re.IGNORECASE,
)
# After the extension check, anything but digits and phone punctuation (letters, `*`, `,`)
# makes the cell not a number: libphonenumber would map letters to digits (1-800-FLOWERS),
# which is a guess we refuse to make.
_PHONE_TEXT = re.compile(r"^[\d\s().\-/+\[\]]+$")
_NOT_DIGIT = re.compile(r"\D", re.ASCII)
# Punctuation people put between digits; removed, `+1 (415) 555-0123` is plain E.164.
_FORMATTING = re.compile(r"[\s().\-/\[\]]")
_TEL_PREFIX = re.compile(r"^tel:\s*", re.IGNORECASE)

# Invisible characters pasted from web pages and right-to-left text; NFKC keeps them.
_INVISIBLE = dict.fromkeys(
    map(ord, "\u200b\u200c\u200d\u2060\ufeff\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u00ad")
)
# Dashes NFKC does not fold to `-`.
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc", "-"))

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: Reason.INVALID_COUNTRY_CODE,
    NumberParseException.NOT_A_NUMBER: Reason.INVALID_NUMBER,
    NumberParseException.TOO_SHORT_AFTER_IDD: Reason.TOO_SHORT,
    NumberParseException.TOO_SHORT_NSN: Reason.TOO_SHORT,
    NumberParseException.TOO_LONG: Reason.TOO_LONG,
}
_POSSIBLE_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: Reason.INVALID_COUNTRY_CODE,
    ValidationResult.TOO_SHORT: Reason.TOO_SHORT,
    ValidationResult.TOO_LONG: Reason.TOO_LONG,
    ValidationResult.INVALID_LENGTH: Reason.INVALID_NUMBER,
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: Reason.INVALID_NUMBER,
}


def normalize(
    raw: str | None,
    region: str | None,
    *,
    allow_remove: bool = False,
    was_number: bool = False,
) -> Normalized:
    """Turn one raw phone cell into E.164, or say why not.

    ``region`` is the region national numbers are read in (``None``: only international
    numbers are accepted). An empty cell is ``EMPTY_PHONE``, or ``Normalized(e164="")`` (remove
    the user's phone) when ``allow_remove``. ``was_number`` marks a numeric spreadsheet or
    Parquet cell, which lost its ``+`` or leading zero: always ``NUMERIC_CELL``.
    Never raises; exactly one of ``e164`` and ``reason`` is set (but for the removal).
    """
    if raw is not None and len(raw) > _MAX_RAW:
        if not raw.strip():
            return _REMOVE if allow_remove else _FAIL[Reason.EMPTY_PHONE]
        return _FAIL[Reason.NUMERIC_CELL if was_number else Reason.INVALID_NUMBER]
    return _cached(raw, region, allow_remove, was_number)


@lru_cache(maxsize=_CACHE_SIZE)
def _cached(
    raw: str | None, region: str | None, allow_remove: bool, was_number: bool
) -> Normalized:
    try:
        return _normalize(raw, region, allow_remove, was_number)
    except Exception:  # libphonenumber on input nobody foresaw: a bad cell, not a crash
        return _FAIL[Reason.INVALID_NUMBER]


def _normalize(
    raw: str | None, region: str | None, allow_remove: bool, was_number: bool
) -> Normalized:
    text = _clean(raw) if raw is not None else ""
    if not text:
        return _REMOVE if allow_remove else _FAIL[Reason.EMPTY_PHONE]
    if was_number:
        return _FAIL[Reason.NUMERIC_CELL]
    if region is not None:
        region = region.strip().upper() or None
        if region is not None and region not in _REGIONS:
            return _FAIL[Reason.INVALID_REGION]
    compact = _FORMATTING.sub("", text)
    if E164_PATTERN.match(compact):
        # International, only punctuation around the digits: most cells of most files.
        return _valid_e164(compact) or _parse(text, region)
    if _SCIENTIFIC.match(text.replace(" ", "")):
        return _FAIL[Reason.SCIENTIFIC_NOTATION]
    if _EXTENSION.search(text):
        return _FAIL[Reason.EXTENSION_PRESENT]
    if not _PHONE_TEXT.match(text):
        return _FAIL[Reason.INVALID_NUMBER]
    digits = _NOT_DIGIT.sub("", text)
    if not digits:
        return _FAIL[Reason.INVALID_NUMBER]
    if text.lstrip(" ([").startswith("+"):
        return _parse(text, region)
    if digits.startswith("00"):
        # Read nationally first (the region's own prefix, e.g. DE 00, is handled there), then
        # as the international prefix most of the world dials.
        if region is not None:
            national = _parse(text, region)
            if national.e164:
                return national
        international = "+" + digits[2:]
        if E164_PATTERN.match(international):
            return _valid_e164(international) or _parse(international, None)
        return _parse(international, None)
    if region is None:
        return _FAIL[Reason.MISSING_REGION]
    return _parse(text, region)


def _clean(raw: str) -> str:
    """Fold the formatting people paste in: full-width forms, odd spaces and dashes, ``tel:``."""
    text = raw
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE).translate(_DASHES)
        # Other scripts' decimal digits (Arabic-Indic, Devanagari, ...) are still digits.
        text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)
    text = text.strip()
    if text[:4].lower() == "tel:":
        text = _TEL_PREFIX.sub("", text)
    return text


def _valid_e164(text: str) -> Normalized | None:
    """The valid E.164 input itself, or ``None`` to take the full parse.

    Builds the number the way libphonenumber's parser would (E.164 country codes are
    prefix-free; leading zeros of the national number kept as it keeps them) but skips the
    parser, which costs as much as the validation. Validation is never skipped.
    """
    for size in (1, 2, 3):
        code = int(text[1 : 1 + size])
        if code in _COUNTRY_CODES:
            break
    else:
        return None
    national = text[1 + size :]
    if len(national) < 2:
        return None
    prefix = _national_prefix(code)
    if prefix is not None and prefix.match(national):
        # The parser would try to strip a trunk prefix here (+44 07911...): let it decide.
        return None
    number = PhoneNumber(country_code=code, national_number=int(national))
    if national[0] == "0":
        number.italian_leading_zero = True
        zeros = len(national) - len(national.lstrip("0"))
        zeros = min(zeros, len(national) - 1)
        if zeros != 1:
            number.number_of_leading_zeros = zeros
    # Same two checks as the full path: some numbers are "valid" yet only dialable locally.
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible == ValidationResult.IS_POSSIBLE and phonenumbers.is_valid_number(number):
        return Normalized(text)
    return None


@cache
def _national_prefix(code: int) -> re.Pattern[str] | None:
    """The trunk prefix the parser strips after country code ``code`` (``None``: none)."""
    region = phonenumbers.region_code_for_country_code(code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    pattern = getattr(metadata, "national_prefix_for_parsing", None) if metadata else None
    if not pattern:
        return None
    compiled = re.compile(pattern)
    # A pattern that can match nothing (`0?`) strips only when something is there to strip.
    return re.compile(f"(?:{pattern})(?<=.)") if compiled.match("") else compiled


def _parse(text: str, region: str | None) -> Normalized:
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        return _FAIL[_PARSE_REASONS.get(exc.error_type, Reason.INVALID_NUMBER)]
    if number.extension:
        return _FAIL[Reason.EXTENSION_PRESENT]
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != ValidationResult.IS_POSSIBLE:
        return _FAIL[_POSSIBLE_REASONS.get(possible, Reason.INVALID_NUMBER)]
    if not phonenumbers.is_valid_number(number):
        return _FAIL[Reason.INVALID_NUMBER]
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not E164_PATTERN.match(e164):
        return _FAIL[Reason.INVALID_NUMBER]
    return Normalized(e164)
