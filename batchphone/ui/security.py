"""Who may use the page: the loopback Host, the session cookie, and a CSRF token.

- The Host header must be ``127.0.0.1:<port>`` or ``localhost:<port>``: a page on another
  name that resolves to 127.0.0.1 (DNS rebinding) is refused.
- The URL printed at start carries a one-time token; the first visit with it gets a session
  cookie (HttpOnly, SameSite=Strict) and is sent on without the token in the address. Any
  request without that cookie gets 403: another local user without the token has nothing.
- A request that changes something (any method but GET/HEAD) also needs the ``X-CSRF-Token``
  header, an HMAC of the session that only the server's own pages carry, and, when the browser
  sends an ``Origin``, the server's own origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

__all__ = ["Guard", "Keys", "cookie_name"]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Every answer: no framing, no sniffing, nothing from anywhere but the page itself, no
#: referrer (the first URL carries the token), nothing cached.
_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; "
     b"base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]  # fmt: skip


def cookie_name(port: int) -> str:
    """The session cookie of the server on ``port``: browsers keep cookies per host, not per
    port, so two servers on 127.0.0.1 would otherwise sign each other's tabs out."""
    return f"batchphone_ui_{port}"


class Keys:
    """The one-time URL token, the session cookie it buys, and the CSRF token of the session."""

    def __init__(self) -> None:
        self.url_token = secrets.token_urlsafe(24)
        self.session = secrets.token_urlsafe(32)
        self._secret = secrets.token_bytes(32)
        self.url_token_used = False

    @property
    def csrf(self) -> str:
        """The CSRF token the pages carry (an HMAC of the session)."""
        return hmac.new(self._secret, self.session.encode(), hashlib.sha256).hexdigest()

    def redeem(self, token: str) -> bool:
        """Whether ``token`` is the URL token not used before (it is used up now)."""
        if self.url_token_used or not hmac.compare_digest(token, self.url_token):
            return False
        self.url_token_used = True
        return True


class Guard:
    """ASGI middleware: refuses every request that fails the checks above."""

    def __init__(self, app: App, keys: Keys, port: int) -> None:
        self.app = app
        self.keys = keys
        self.port = port

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset({f"127.0.0.1:{self.port}", f"localhost:{self.port}"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if headers.get("host") not in self.hosts:
            await _refuse(send, 421, "Wrong Host header: open the page at 127.0.0.1.")
            return
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:
            cookie = SimpleCookie()
        name = cookie_name(self.port)
        session = cookie[name].value if name in cookie else ""
        signed_in = bool(session) and hmac.compare_digest(session, self.keys.session)
        token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        if scope["method"] == "GET" and token and (signed_in or self.keys.redeem(token)):
            await _enter(send, scope["path"], name, self.keys.session)
            return
        if not signed_in:
            await _refuse(
                send, 403, "Forbidden: open the URL that 'batchphone ui' printed (it is one-time)."
            )
            return
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            allowed = {f"http://{host}" for host in self.hosts}
            given = headers.get("x-csrf-token", "")
            if (origin is not None and origin not in allowed) or not hmac.compare_digest(
                given, self.keys.csrf
            ):
                await _refuse(send, 403, "Forbidden: missing or wrong CSRF token.")
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _enter(send: Send, path: str, name: str, session: str) -> None:
    cookie = f"{name}={session}; HttpOnly; SameSite=Strict; Path=/"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", (path or "/").encode()), (b"set-cookie", cookie.encode()),
                        *_HEADERS],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()), *_HEADERS],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": body})
