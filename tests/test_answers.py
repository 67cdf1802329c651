"""What an answer says (``remote.answers``), through the client: how update answers map to
outcomes and errors, a CDN's HTML page, an unusable 200, a 429's ``Retry-After``."""

from __future__ import annotations

import email.utils
import time

import pytest

from batchphone.errors import FatalRemoteError, RateLimitedError, TransientError
from batchphone.models import ApiOutcome, Reason, Status, User
from tests.test_client import REQUEST, USER, Handler, answer, client_for, error_body

pytestmark = pytest.mark.anyio


async def test_200_with_a_user_is_updated() -> None:
    async with client_for(answer(200, {"user": USER})) as client:
        outcome = await client.update_phone(REQUEST)
    assert outcome == ApiOutcome(Status.UPDATED, http_status=200, user=User.from_api(USER))
    assert outcome.user is not None and outcome.user.raw == USER  # the whole of it, for results
    assert (outcome.user.user_id, outcome.user.login_ids) == ("U2ada", ("ada@example.com",))


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            404,
            error_body("E112102", "User not found", "Cannot find user"),
            ApiOutcome(Status.NOT_FOUND, Reason.USER_NOT_FOUND, 404, "E112102", "Cannot find user"),
        ),
        (
            400,
            error_body("E112102", "User not found"),
            ApiOutcome(Status.NOT_FOUND, Reason.USER_NOT_FOUND, 400, "E112102", "User not found"),
        ),
        (
            409,
            error_body("E062107", "Conflict", "Phone already used as a login id"),
            ApiOutcome(
                Status.CONFLICT,
                Reason.PHONE_CONFLICT,
                409,
                "E062107",
                "Phone already used as a login id",
            ),
        ),
        (
            400,
            error_body("E062107", "Conflict"),
            ApiOutcome(Status.CONFLICT, Reason.PHONE_CONFLICT, 400, "E062107", "Conflict"),
        ),
        (
            400,
            error_body("E011003", "Request is invalid", "The phone field is invalid"),
            ApiOutcome(
                Status.FAILED, Reason.REJECTED, 400, "E011003", "The phone field is invalid"
            ),
        ),
        (
            422,
            {"unexpected": True},
            ApiOutcome(Status.FAILED, Reason.REJECTED, 422, None, None),
        ),
        (
            400,
            "<html><head><style>body{color:red}</style></head><body><h1>400 Bad Request</h1>"
            "<p>Your request   was\n rejected &amp; logged.</p></body></html>",
            ApiOutcome(
                Status.FAILED,
                Reason.REJECTED,
                400,
                None,
                "400 Bad Request Your request was rejected & logged.",
            ),
        ),
    ],
)
async def test_final_answers_map_to_outcomes(
    status: int, body: object, expected: ApiOutcome
) -> None:
    async with client_for(answer(status, body)) as client:
        assert await client.update_phone(REQUEST) == expected


@pytest.mark.parametrize(
    ("status", "cause"),
    [(401, "wrong management key or project id"), (403, "lacks permission for user management")],
)
async def test_401_and_403_are_fatal_and_name_the_cause(status: int, cause: str) -> None:
    async with client_for(answer(status, error_body("E011005", "Unauthorized"))) as client:
        with pytest.raises(FatalRemoteError, match=cause) as caught:
            await client.update_phone(REQUEST)
    assert caught.value.http_status == status
    assert caught.value.exit_code == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 520, 521, 522, 524, 530])
async def test_server_errors_are_transient(status: int) -> None:
    async with client_for(answer(status, error_body("E000001", "Server error"))) as client:
        with pytest.raises(TransientError) as caught:
            await client.update_phone(REQUEST)
    assert caught.value.http_status == status
    assert caught.value.error_code == "E000001"


async def test_a_cdn_html_page_is_read_as_text() -> None:
    page = (
        "<!DOCTYPE html><html><head><title>502 Bad Gateway</title>"
        "<script>var x = '<b>';</script></head>"
        "<body><center><h1>502 Bad Gateway</h1></center><hr>" + "x " * 300 + "</body></html>"
    )
    async with client_for(answer(502, page)) as client:
        with pytest.raises(TransientError) as caught:
            await client.update_phone(REQUEST)
    message = caught.value.error_message
    assert message is not None
    assert message.startswith("502 Bad Gateway 502 Bad Gateway x x")
    assert len(message) <= 200
    assert "<" not in message
    assert "var x" not in message


@pytest.mark.parametrize(
    "handler",
    [
        answer(200, "<html>maintenance</html>"),
        answer(200, {"ok": True}),
        answer(200, {"user": None}),
        answer(200, ["not", "an", "object"]),
        answer(200, ""),
    ],
)
async def test_an_unusable_200_is_transient(handler: Handler) -> None:
    async with client_for(handler) as client:
        with pytest.raises(TransientError) as caught:
            await client.update_phone(REQUEST)
    assert caught.value.http_status == 200


# -- 429 -----------------------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "17"}, error_body("E130429", "Rate limit exceeded"), 17.0),
        ({"Retry-After": " 2.5 "}, error_body("E130429", "Rate limit exceeded"), 2.5),
        ({}, {**error_body("E130429", "Rate limit"), "retryAfter": 42}, 42.0),
        ({"Retry-After": "soon"}, {**error_body("E130429", "Rate limit"), "retryAfter": 9}, 9.0),
        ({}, error_body("E130429", "Rate limit exceeded"), 60.0),
        ({}, "<html>Too Many Requests</html>", 60.0),
        ({"Retry-After": "0"}, error_body("E130429", "Rate limit"), 1.0),
        ({"Retry-After": "99999999"}, error_body("E130429", "Rate limit"), 60.0),
    ],
)
async def test_429_raises_with_retry_after(
    headers: dict[str, str], body: object, expected: float
) -> None:
    async with client_for(answer(429, body, headers=headers)) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.update_phone(REQUEST)
    assert caught.value.retry_after == expected
    assert caught.value.http_status == 429


async def test_429_with_an_http_date() -> None:
    headers = {"Retry-After": http_date(30)}
    async with client_for(answer(429, error_body("E130429", "x"), headers=headers)) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.update_phone(REQUEST)
    assert 25.0 <= caught.value.retry_after <= 31.0
