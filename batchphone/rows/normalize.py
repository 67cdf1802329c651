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
* Two fast paths skip libphonenumber's parser (never its validation) for the plain shapes most
  files hold: ``+<digits>`` (``_valid_e164``) and a national number in its region's main
  metadata (``_national``). Each returns only a valid number, built as the parser builds it,
  and leaves every other case (and every failure, with its reason) to the full parse.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, ValidationResult

from batchphone.cells import check_region
from batchphone.models import Normalized, Reason

__all__ = ["E164_PATTERN", "check_region", "is_valid", "normalize"]

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
# Digits and the punctuation libphonenumber reads as such (plain spaces only): the shape the
# national fast path takes; anything else goes to the parser.
_PLAIN_NATIONAL = re.compile(r"^[\d ().\-/\[\]]+$", re.ASCII)

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
    return _national(text, digits, region) or _parse(text, region)


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
    if possible == ValidationResult.IS_POSSIBLE and is_valid(number):
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


def _national(text: str, digits: str, region: str) -> Normalized | None:
    """The valid national number ``text`` read in ``region``, or ``None`` to take the full parse.

    What ``phonenumbers.parse(text, region)`` does to such a text, step by step, taking every
    branch that is not plain to the parser: the digits are the number (the text is only digits
    and the punctuation libphonenumber skips); a leading international prefix (``011`` in US)
    or the region's own calling code would be read as a country code; then the trunk prefix
    (``0`` in GB) is stripped when the rest still fits the region's number pattern and has a
    possible length (else the parser keeps it). The parser costs as much as the validation,
    which is never skipped. A test holds this to the full parse on every region.
    """
    if len(digits) < 3 or not _PLAIN_NATIONAL.match(text):
        return None
    rules = _national_rules(region)
    if rules is None:
        return None
    code, idd, prefix, general = rules
    if idd.match(digits) or digits.startswith(str(code)):
        return None
    nsn = digits
    stripped = prefix.match(digits) if prefix is not None else None
    if stripped is not None:
        nsn = digits[stripped.end() :]
        if not general.fullmatch(nsn):
            return None  # the parser may keep the prefix here: let it decide
    if not 2 <= len(nsn) <= 17 or nsn[0] == "0":
        return None  # leading zeros: the parser's Italian rule decides
    number = PhoneNumber(country_code=code, national_number=int(nsn))
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != ValidationResult.IS_POSSIBLE or not is_valid(number):
        return None  # the full parse gives the reason (or keeps a prefix stripped too eagerly)
    e164 = f"+{code}{nsn}"
    return Normalized(e164) if E164_PATTERN.match(e164) else None


_Rules = tuple[int, re.Pattern[str], re.Pattern[str] | None, re.Pattern[str]]


@cache
def _national_rules(region: str) -> _Rules | None:
    """(calling code, international prefix, trunk prefix, number pattern) of ``region``.

    ``None`` (always the full parse) for a region that is not its calling code's main region
    (its possible lengths may differ from the ones validation uses), has no international
    prefix, or rewrites its trunk prefix (AR, BR, ...).
    """
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
    code = metadata.country_code if metadata is not None else None
    if (
        metadata is None
        or code is None
        or phonenumbers.region_code_for_country_code(code) != region
    ):
        return None
    general = metadata.general_desc.national_number_pattern if metadata.general_desc else None
    if not metadata.international_prefix or not general or metadata.national_prefix_transform_rule:
        return None
    prefix = metadata.national_prefix_for_parsing
    return (
        code,
        re.compile(metadata.international_prefix),
        re.compile(prefix) if prefix else None,
        re.compile(general),
    )


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
    if not is_valid(number):
        return _FAIL[Reason.INVALID_NUMBER]
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not E164_PATTERN.match(e164):
        return _FAIL[Reason.INVALID_NUMBER]
    return Normalized(e164)


# -- validity ------------------------------------------------------------------------------------
# ``phonenumbers.is_valid_number``, with the metadata's patterns compiled once. The library looks
# every pattern up again on each call (up to eleven per number, and twice over for a +1 number,
# whose region is found by validating it too): most of the time of validate went there, against
# a target of at least a bare loop of that same library. Same steps, same order, same metadata;
# a test holds it to ``phonenumbers.is_valid_number`` on every region's numbers.

# (possible lengths, empty: any; the national number pattern, None: matches nothing)
_Desc = tuple[frozenset[int], re.Pattern[str] | None]
# the number type descriptions ``_number_type_helper`` tries, in its order, before mobile
_TYPE_DESCS = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
)


class _Checks:
    """Whether a national number is of some type of one region's metadata.

    The library tries the general description, then each type's (its possible lengths, then its
    pattern) until one matches. Per number length this is one pattern: the general one as a
    look-ahead, then the types of that length as alternatives; built on first use.
    """

    __slots__ = ("_by_length", "_general", "_types")

    def __init__(self, general: _Desc, types: tuple[_Desc, ...]) -> None:
        self._general = general
        self._types = types
        self._by_length: dict[int, re.Pattern[str] | None] = {}

    def match(self, nsn: str) -> bool:
        size = len(nsn)
        try:
            pattern = self._by_length[size]
        except KeyError:
            pattern = self._by_length[size] = self._combined(size)
        return pattern is not None and pattern.fullmatch(nsn) is not None

    def _combined(self, size: int) -> re.Pattern[str] | None:
        lengths, general = self._general
        if general is None or (lengths and size not in lengths):
            return None
        types = [
            f"(?:{pattern.pattern})"
            for lengths, pattern in self._types
            if pattern is not None and (not lengths or size in lengths)
        ]
        if not types:
            return None
        return re.compile(f"(?=(?:{general.pattern})\\Z)(?:{'|'.join(types)})")


def is_valid(number: PhoneNumber) -> bool:
    """``phonenumbers.is_valid_number(number)``, faster (the patterns are compiled once)."""
    code = number.country_code
    rules = _validity(code) if code is not None else None
    if rules is None:
        return False
    nsn = phonenumbers.national_significant_number(number)
    single, choices = rules
    if not choices:
        return _matches_a_type(nsn, single)
    for leading, choose, final in choices:  # its region: the first whose numbers it looks like
        if leading is not None:
            if leading.match(nsn):
                return _matches_a_type(nsn, final)
        elif _matches_a_type(nsn, choose):
            return _matches_a_type(nsn, final)
    return False


def _matches_a_type(nsn: str, checks: _Checks | None) -> bool:
    return checks is not None and checks.match(nsn)


_Choice = tuple[re.Pattern[str] | None, _Checks, _Checks | None]


@cache
def _validity(code: int) -> tuple[_Checks | None, tuple[_Choice, ...]] | None:
    """How the numbers of calling code ``code`` are validated (``None``: no such code).

    One region: its checks. Several (+1, +7, +44, ...): for each region with metadata, in the
    library's order, its leading digits pattern, the checks that pick it when it has none, and
    the checks its numbers are then validated with (``None``: the library refuses that region).
    """
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code)
    if regions is None:
        return None
    if len(regions) == 1:
        return _final_checks(code, regions[0]), ()
    choices = []
    for region in regions:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is None:
            continue
        leading = metadata.leading_digits
        pattern = re.compile(leading) if leading is not None else None
        choices.append((pattern, _checks(metadata), _final_checks(code, region)))
    return None, tuple(choices)


def _final_checks(code: int, region: str) -> _Checks | None:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region.upper())
    non_geo = region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY
    if metadata is None or (
        not non_geo and code != phonenumbers.country_code_for_valid_region(region)
    ):
        return None
    return _checks(metadata)


def _checks(metadata: phonenumbers.PhoneMetadata) -> _Checks:
    types = [getattr(metadata, name) for name in _TYPE_DESCS]
    if not metadata.same_mobile_and_fixed_line_pattern:
        types.append(metadata.mobile)
    general = _desc(metadata.general_desc) or (frozenset(), None)  # None: matches nothing
    return _Checks(general, tuple(d for d in map(_desc, types) if d is not None))


def _desc(desc: phonenumbers.PhoneNumberDesc | None) -> _Desc | None:
    if desc is None:
        return None
    pattern = desc.national_number_pattern
    return frozenset(desc.possible_length or ()), re.compile(pattern) if pattern else None
