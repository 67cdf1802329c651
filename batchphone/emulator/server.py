"""Serving the emulator over loopback sockets with uvicorn: blocking, or in a background thread.

Only loopback hosts are accepted (127.0.0.0/8, ::1, localhost): the emulator accepts any client
that knows its fake key, and must never be reachable from another machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

import uvicorn

from batchphone.emulator.app import Emulator
from batchphone.errors import UsageError

__all__ = ["ServerThread", "base_url_for", "bind_loopback", "check_loopback", "serve"]

#: How long a stopping server waits for calls in flight (a held ``timeout`` answer, say).
_GRACE_S = 1


def check_loopback(host: str) -> None:
    """Raise ``UsageError`` unless ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"--host {host}: the emulator listens on loopback only (127.0.0.1, ::1, localhost)",
            setting="host",
        )


def bind_loopback(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); ``UsageError`` if taken."""
    check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every answer waits for a delayed ACK (40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1" if host == "localhost" else host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}", setting="port"
        ) from None
    sock.set_inheritable(True)
    return sock


def base_url_for(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """A uvicorn server that reports when it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self._on_started()


def _config(emulator: Emulator, log_level: str) -> uvicorn.Config:
    # no access log, no proxy headers, no lifespan: each costs time on every call
    return uvicorn.Config(
        emulator.app,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        lifespan="off",
        timeout_graceful_shutdown=_GRACE_S,
        backlog=2048,
    )


def serve(
    emulator: Emulator,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    on_started: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``emulator`` until Ctrl-C (or SIGTERM); ``on_started(base_url)`` once listening."""
    sock = bind_loopback(host, port)
    base_url = base_url_for(sock)

    def started() -> None:
        if on_started is not None:
            on_started(base_url)

    server = _Server(_config(emulator, log_level), started)
    # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again for the
    # previous handler; for SIGTERM that is the default one, which would kill the process
    # before its caller could report anything. Both are how this server is meant to end.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        sock.close()


class _Stopped(Exception):
    """SIGTERM arrived (after uvicorn's graceful shutdown)."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


class ServerThread:
    """The emulator served by uvicorn in a background thread on a loopback port.

    ``with ServerThread(emu, port=0) as base_url: ...`` starts it, waits until it accepts
    connections, and stops it (and joins the thread) on exit.
    """

    def __init__(
        self,
        emulator: Emulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        start_timeout: float = 10.0,
    ) -> None:
        check_loopback(host)
        self._emulator = emulator
        self._host = host
        self._port = port
        self._log_level = log_level
        self._start_timeout = start_timeout
        self._started = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.base_url = ""

    def __enter__(self) -> str:
        sock = bind_loopback(self._host, self._port)
        self.base_url = base_url_for(sock)
        self._server = _Server(_config(self._emulator, self._log_level), self._started.set)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="batchphone-emulator", daemon=True
        )
        self._thread.start()
        if not self._started.wait(self._start_timeout):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the emulator did not start: {self._error!r}")
        return self.base_url

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            self._server.run(sockets=[sock])
        except BaseException as exc:  # reported by __enter__; a thread has no one else to tell
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_GRACE_S + 10)
        self._thread = None

    def __repr__(self) -> str:
        return f"ServerThread(base_url={self.base_url!r})"
