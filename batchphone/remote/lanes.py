"""The client's HTTP: one keep-alive connection per call in flight, and what a failed send means.

One single-connection ``httpx.AsyncClient`` per call in flight ("lanes"), reused from a free
list, instead of one pool of N connections: httpcore's pool scans every connection for every
request, which at 16-64 calls in flight costs more CPU than the calls themselves (see
bench/results.md). There are as many lanes as calls were ever in flight at once: the pool's
workers bound that.

A send that cannot connect before any send of these lanes has (a refused connection, a name
that does not resolve) raises ``UnreachableError``: nothing listens at the base URL, so
retrying each row is pointless; once a send has connected, the same error is transient (the
server may be restarting). The management key lives only in the ``Authorization`` header
inside httpx, which masks it in every repr.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable, Iterator
from functools import cache

import httpx

from batchphone.config import Secret
from batchphone.errors import FatalRemoteError, TransientError, UnreachableError

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps_std(body: object) -> bytes:
    return _encoder.encode(body).encode()


_dumps: Callable[[object], bytes] = _dumps_std
try:  # orjson is optional: a faster encoder when it is installed
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:
    _dumps = orjson.dumps

__all__ = ["Lanes"]


@cache
def _tls_context() -> ssl.SSLContext:
    """The process's one TLS context (certifi's roots): ~25 ms of CPU to build, so once.

    An ``SSLContext`` is safe to share between clients and threads; a process that runs
    many jobs (a scheduler, the test suite) no longer builds one per run.
    """
    return httpx.create_ssl_context()


class Lanes:
    """Connections to one base URL: ``send`` a request, get its response or a domain error."""

    def __init__(
        self,
        base_url: str,
        *,
        project_id: str,
        management_key: Secret,
        headers: dict[str, str],
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
        scrub: Callable[[str], str],
    ) -> None:
        self.base_url = base_url
        #: a send has connected to the server: from then on a refused connection is transient
        #: (the server may be restarting); before, it means nothing listens at ``base_url``
        self.reached = False
        self._project_id = project_id
        self._key = management_key
        self._headers = headers
        self._timeout = httpx.Timeout(timeout)
        self._transport = transport
        self._scrub = scrub
        self._lanes: list[httpx.AsyncClient] = []
        self._idle: list[httpx.AsyncClient] = []
        # one TLS context for every lane: building one costs ~20 ms, and a lane built late
        # delays its first call, which the server then counts closer to the next window's calls
        self._tls = _tls_context()

    def __repr__(self) -> str:
        return f"Lanes({self.base_url!r}, open={len(self._lanes)})"

    def set_header(self, name: str, value: str) -> None:
        """Send ``name: value`` with every request from now on (open lanes included)."""
        self._headers[name] = value
        for lane in self._lanes:
            lane.headers[name] = value

    async def aclose(self) -> None:
        """Close every connection (idempotent)."""
        lanes, self._lanes, self._idle = self._lanes, [], []
        for lane in lanes:
            await lane.aclose()

    def _take(self) -> httpx.AsyncClient:
        if self._idle:
            return self._idle.pop()  # the most recently used: its connection is warm
        # the Authorization header lives only inside httpx, which masks it in every repr
        secret = {"Authorization": f"Bearer {self._project_id}:{self._key.reveal()}"}
        lane = httpx.AsyncClient(
            base_url=self.base_url,
            headers={**secret, **self._headers},
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            transport=self._transport,
            follow_redirects=False,
            verify=self._tls,
        )
        self._lanes.append(lane)
        return lane

    def _give_back(self, lane: httpx.AsyncClient) -> None:
        if not lane.is_closed:  # closed: aclose() ran meanwhile
            self._idle.append(lane)

    async def send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: object = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request (``body`` as JSON); a failure to get an answer raises
        ``UnreachableError``, ``TransientError`` or (not an http(s) URL) ``FatalRemoteError``."""
        content = None if body is None else _dumps(body)
        lane = self._take()
        try:
            response = await lane.request(method, path, content=content, params=params)
        except httpx.UnsupportedProtocol:
            raise FatalRemoteError(
                f"{what}: the base URL {self.base_url!r} is not an http(s) URL"
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # no connection, so the request never left: nothing can have been applied
            if not self.reached:
                raise self._unreachable(exc) from None
            raise self._transient(what, exc) from None
        except httpx.TimeoutException as exc:
            self.reached = True  # connected: the request may have reached the server
            raise TransientError(f"{what}: no answer in time ({type(exc).__name__})") from None
        except httpx.RequestError as exc:
            self.reached = True
            raise self._transient(what, exc) from None
        finally:
            # after an error too: httpx drops a broken connection and the lane opens a new one
            self._give_back(lane)
        self.reached = True
        return response

    def _transient(self, what: str, exc: httpx.RequestError) -> TransientError:
        detail = self._scrub(str(exc)) or "no detail"
        return TransientError(f"{what}: {type(exc).__name__}: {detail}")

    def _unreachable(self, exc: httpx.TransportError) -> UnreachableError:
        """The error of a first send that could not connect: the base URL and why, one line."""
        url = httpx.URL(self.base_url)
        if url.userinfo:  # never print credentials a URL may carry
            url = url.copy_with(username=None, password=None)
        shown = self._scrub(str(url))
        return UnreachableError(
            # what to do is the summary's next step (models.next_step), said once
            f"cannot reach {shown}: {self._why_unreachable(exc)}; no row was sent",
            base_url=shown,
        )

    def _why_unreachable(self, exc: httpx.TransportError) -> str:
        if isinstance(exc, httpx.ConnectTimeout):
            return f"no connection within {self._timeout.connect or 0:g}s"
        causes = list(_causes(exc))  # httpx -> httpcore -> OSError -> the socket's errors
        if any(isinstance(cause, socket.gaierror) for cause in causes):
            return "the host name does not resolve"
        if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
            return "connection refused (nothing is listening there)"
        return self._scrub(f"{type(exc).__name__}: {exc}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the errors it was raised from, and the members of exception groups among them
    (anyio and trio gather one error per address tried)."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < 64:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        if isinstance(error, BaseExceptionGroup):
            stack.extend(error.exceptions)
        cause = error.__cause__ or error.__context__
        if cause is not None:
            stack.append(cause)
