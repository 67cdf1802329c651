"""The normalizer: raw cell -> E.164 or a reason; examples, properties, and the fast path."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from batchphone.errors import UsageError
from batchphone.models import Normalized, Reason
from batchphone.rows.normalize import (
    _NOT_DIGIT,
    E164_PATTERN,
    _cached,
    _national,
    _parse,
    check_region,
    is_valid,
    normalize,
)

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
FORMATS = [
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.RFC3966,
]


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        # formatting is accepted liberally
        ("+14155550123", None, "+14155550123"),
        ("+1 (415) 555-0123", None, "+14155550123"),
        ("+1.415.555.0123", "GB", "+14155550123"),
        ("(415) 555-0123", "US", "+14155550123"),
        ("(415) 555-0123", "us", "+14155550123"),
        ("tel:+1-415-555-0123", None, "+14155550123"),
        ("  +44 20 7946 0958  ", None, "+442079460958"),
        ("+44 (0) 20 7946 0958", None, "+442079460958"),
        ("(+44) 20 7946 0958", None, "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("0044 20 7946 0958", None, "+442079460958"),
        ("0044 20 7946 0958", "US", "+442079460958"),
        ("011 44 20 7946 0958", "US", "+442079460958"),
        ("0049 30 123456", "DE", "+4930123456"),
        ("+1\u00a0415\u200b555\u20110123", None, "+14155550123"),
        (
            "\uff0b\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff12\uff13",
            None,
            "+14155550123",
        ),
        ("٠٢٠٧٩٤٦٠٩٥٨", "GB", "+442079460958"),
        ("+390612345678", None, "+390612345678"),
        ("06 1234 5678", "IT", "+390612345678"),
        ("+4407911123456", None, "+447911123456"),
        ("+800 1234 5678", None, "+80012345678"),
        # strict about the number
        ("(415) 555-0123", None, Reason.MISSING_REGION),
        ("4155550123", None, Reason.MISSING_REGION),
        ("4.4790E+11", "GB", Reason.SCIENTIFIC_NOTATION),
        ("4,479E+11", "GB", Reason.SCIENTIFIC_NOTATION),
        ("4.479e11", None, Reason.SCIENTIFIC_NOTATION),
        ("+1 415 555 0123 ext. 12", None, Reason.EXTENSION_PRESENT),
        ("+1 415 555 0123 x12", None, Reason.EXTENSION_PRESENT),
        ("+14155550123;ext=12", None, Reason.EXTENSION_PRESENT),
        ("+1 415 555 0123 #12", None, Reason.EXTENSION_PRESENT),
        ("(415) 555-0123 extension 7", "US", Reason.EXTENSION_PRESENT),
        ("+999 123456", None, Reason.INVALID_COUNTRY_CODE),
        ("+14155550123", "XX", Reason.INVALID_REGION),
        ("+14155550123", "UK", Reason.INVALID_REGION),
        ("+4420", None, Reason.TOO_SHORT),
        ("12345", "US", Reason.TOO_SHORT),
        ("+44207946095812345678", None, Reason.TOO_LONG),
        ("+1415555012345", None, Reason.TOO_LONG),
        ("1-800-FLOWERS", "US", Reason.INVALID_NUMBER),
        ("call me", "US", Reason.INVALID_NUMBER),
        ("+1 415 555 0123, +1 415 555 0124", None, Reason.INVALID_NUMBER),
        ("+", None, Reason.INVALID_NUMBER),
        ("---", "US", Reason.INVALID_NUMBER),
        ("+1 555 555 5555", None, Reason.INVALID_NUMBER),
        ("+13101234", None, Reason.INVALID_NUMBER),  # "valid" but only dialable locally
        ("", None, Reason.EMPTY_PHONE),
        ("   ", "US", Reason.EMPTY_PHONE),
        ("\u200b", "US", Reason.EMPTY_PHONE),
        (None, None, Reason.EMPTY_PHONE),
    ],
)
def test_examples(raw: str | None, region: str | None, expected: str | Reason) -> None:
    result = normalize(raw, region)
    if isinstance(expected, Reason):
        assert result == Normalized(None, expected)
    else:
        assert result == Normalized(expected)


@pytest.mark.parametrize("raw", [None, "", "  \t"])
def test_empty_is_a_removal_only_when_allowed(raw: str | None) -> None:
    assert normalize(raw, "US", allow_remove=True) == Normalized("", None)
    assert normalize(raw, "US").reason is Reason.EMPTY_PHONE


@pytest.mark.parametrize("raw", ["447911123456", "4155550123", "+14155550123"])
def test_numeric_cell_is_never_guessed(raw: str) -> None:
    assert normalize(raw, "US", was_number=True).reason is Reason.NUMERIC_CELL
    assert normalize(raw, "US").reason is not Reason.NUMERIC_CELL


def test_a_huge_cell_is_rejected_without_parsing_or_caching() -> None:
    before = _cached.cache_info().currsize
    assert normalize("9" * 10_000_000, "US").reason is Reason.INVALID_NUMBER
    assert normalize(" " * 1000, "US", allow_remove=True) == Normalized("", None)
    assert _cached.cache_info().currsize == before


def test_repeated_numbers_come_from_the_cache() -> None:
    raw = "+1 415 555 0199"
    first = normalize(raw, "US")
    hits = _cached.cache_info().hits
    assert normalize(raw, "US") is first
    assert _cached.cache_info().hits == hits + 1


@pytest.mark.parametrize(("code", "expected"), [("us", "US"), (" gb ", "GB"), ("DE", "DE")])
def test_check_region_accepts_known_codes(code: str, expected: str) -> None:
    assert check_region(code) == expected


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("UK", 'unknown region "UK": expected an ISO 3166 alpha-2 code (did you mean "GB"?)'),
        ("XX", 'unknown region "XX": expected an ISO 3166 alpha-2 code such as US, GB or DE'),
        ("001", 'unknown region "001"'),
        ("", 'unknown region ""'),
    ],
)
def test_check_region_rejects_unknown_codes(code: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        check_region(code)
    assert str(info.value).startswith(message)


regions = st.one_of(st.none(), st.sampled_from([*REGIONS, "xx", "uk", "", " us "]))


@settings(max_examples=400, deadline=None)
@given(raw=st.one_of(st.none(), st.text(max_size=40)), region=regions, flags=st.booleans())
@example(raw="+1 415 555 0123\x00", region=None, flags=False)
@example(raw="tel:", region="US", flags=True)
@example(raw="0" * 300, region="US", flags=False)
def test_never_raises_and_sets_exactly_one_field(
    raw: str | None, region: str | None, flags: bool
) -> None:
    result = normalize(raw, region, allow_remove=flags)
    if result.e164 == "":
        assert flags and result.reason is None
    else:
        assert (result.e164 is None) != (result.reason is None)
    if result.e164:
        assert E164_PATTERN.match(result.e164)


@st.composite
def phone_texts(draw: st.DrawFn) -> tuple[str, str]:
    """A plausible number of some region, in some format people write, and that region."""
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from(list(range(11))))
    example_number = phonenumbers.example_number_for_type(region, kind)
    if example_number is None:
        example_number = phonenumbers.example_number(region)
    if example_number is None:
        return "+14155550123", "US"
    national = str(example_number.national_number)
    tail = draw(st.text("0123456789", min_size=0, max_size=min(4, len(national) - 1)))
    example_number.national_number = int(national[: len(national) - len(tail)] + tail)
    style = draw(st.sampled_from(FORMATS))
    return phonenumbers.format_number(example_number, style), region


@settings(max_examples=300, deadline=None)
@given(case=phone_texts(), again=st.one_of(st.none(), st.sampled_from(REGIONS)))
def test_an_output_normalizes_to_itself_under_any_region(
    case: tuple[str, str], again: str | None
) -> None:
    text, region = case
    first = normalize(text, region)
    if first.e164:
        assert E164_PATTERN.match(first.e164)
        assert normalize(first.e164, again) == first


def _libphonenumber(text: str) -> str | None:
    """What plain libphonenumber says of an international string: the reference."""
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


country_codes = st.sampled_from(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE))


@settings(max_examples=600, deadline=None)
@given(code=country_codes, digits=st.text("0123456789", min_size=2, max_size=13))
@example(code=375, digits="8106314539")  # the parser strips a trunk prefix here
@example(code=7, digits="8001234567")
@example(code=39, digits="0612345678")
@example(code=44, digits="07911123456")
def test_fast_path_agrees_with_libphonenumber(code: int, digits: str) -> None:
    text = f"+{code}{digits}"
    if not E164_PATTERN.match(text):
        return
    assert normalize(text, None).e164 == _libphonenumber(text)


@st.composite
def national_texts(draw: st.DrawFn) -> tuple[str, str]:
    """A number of some region written nationally (often damaged), with that region."""
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from(list(range(11))))
    number = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(
        region
    )
    if number is None:
        return "(415) 555-0123", "US"
    text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    digits = [c for c in text if c.isdigit()]
    # damage some digits: a wrong digit, one lost, one doubled, a trunk or IDD prefix put in front
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(digits) - 1))
        edit = draw(st.sampled_from(["swap", "drop", "double", "prefix"]))
        if edit == "swap":
            digits[where] = draw(st.sampled_from("0123456789"))
        elif edit == "drop" and len(digits) > 1:
            del digits[where]
        elif edit == "double":
            digits.insert(where, digits[where])
        else:
            digits[:0] = list(draw(st.sampled_from(["0", "1", "00", "011", "8", "9", "01"])))
    punctuation = draw(st.sampled_from([" ", "-", ".", "", "/"]))
    cut = draw(st.integers(0, len(digits)))
    body = "".join(digits[:cut]) + punctuation + "".join(digits[cut:])
    if draw(st.booleans()) and cut >= 3:
        body = f"({body[:3]}) {body[3:]}"
    return body, region


@settings(max_examples=1000, deadline=None)
@given(case=national_texts())
@example(case=("(415) 555-0134", "US"))
@example(case=("0 20 7946 0000", "GB"))
@example(case=("1 415 555 0134", "US"))  # the calling code in front: the parser's call
@example(case=("011 44 20 7946 0958", "US"))  # an international prefix: the parser's call
def test_national_fast_path_agrees_with_the_full_parse(case: tuple[str, str]) -> None:
    text, region = case
    fast = _national(text, _NOT_DIGIT.sub("", text), region)
    if fast is not None:
        assert fast == _parse(text, region)


@pytest.mark.parametrize(
    ("text", "region", "e164"),
    [
        ("(415) 555-0134", "US", "+14155550134"),
        ("0 20 7946 0000", "GB", "+442079460000"),
        ("01 23 45 67 89", "FR", "+33123456789"),
        ("030 12345678", "DE", "+493012345678"),
    ],
)
def test_national_fast_path_takes_the_common_shapes(text: str, region: str, e164: str) -> None:
    assert _national(text, _NOT_DIGIT.sub("", text), region) == Normalized(e164)


def _examples() -> list[phonenumbers.PhoneNumber]:
    found = []
    for region in REGIONS:
        for kind in range(11):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                found.append(number)
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        number = phonenumbers.example_number_for_non_geo_entity(code)
        if number is not None:
            found.append(number)
    return found


EXAMPLES = _examples()


def test_is_valid_agrees_with_libphonenumber_on_every_example_number() -> None:
    assert len(EXAMPLES) > 1000
    for number in EXAMPLES:
        assert is_valid(number) == phonenumbers.is_valid_number(number), number


@settings(max_examples=1000, deadline=None)
@given(
    base=st.sampled_from(EXAMPLES),
    code=st.one_of(st.none(), country_codes, st.integers(0, 999)),
    tail=st.text("0123456789", max_size=4),
    cut=st.integers(0, 4),
    zeros=st.integers(0, 2),
)
def test_is_valid_agrees_with_libphonenumber(
    base: phonenumbers.PhoneNumber, code: int | None, tail: str, cut: int, zeros: int
) -> None:
    """Example numbers under other calling codes, with digits changed, cut, added, zero-led."""
    national = str(base.national_number)
    national = national[: max(1, len(national) - cut)] + tail
    number = phonenumbers.PhoneNumber(
        country_code=base.country_code if code is None else code,
        national_number=int(national),
    )
    if zeros:
        number.italian_leading_zero = True
        number.number_of_leading_zeros = zeros
    assert is_valid(number) == phonenumbers.is_valid_number(number)
