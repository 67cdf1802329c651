"""``batchphone ui``: a local page for support staff (drop a sheet, check, approve, watch,
download, undo), one more user of the public API.

The server binds 127.0.0.1 only and talks to the project the settings name, exactly as the CLI
would, or to an emulated project kept in a state file. It never holds the management key in a
page: the tasks it starts read it from the environment or the key file, as the CLI does.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchphone.errors import UsageError

__all__ = ["DEFAULT_UPLOAD_LIMIT", "UiOptions", "serve"]

DEFAULT_UPLOAD_LIMIT = 200_000_000
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class UiOptions:
    """What ``batchphone ui`` was given."""

    work_dir: Path
    port: int = 0
    flags: dict[str, Any] | None = None  # the CLI flags that name the target (as the CLI's)
    config_path: Path | None = None
    upload_limit: int = DEFAULT_UPLOAD_LIMIT


def _banner(options: UiOptions) -> tuple[str, bool, Path | None, Path | None]:
    """(the target in words, live?, the emulator's state file, its users file); raises
    ``UsageError`` as the CLI would when no project is named."""
    from batchphone.api import Target
    from batchphone.config import load_settings

    flags = dict(options.flags or {})
    state = flags.get("emulator_state")
    users = flags.get("emulator_users")
    if (users is not None or flags.get("emulator")) and state is None:
        state = options.work_dir / "rehearsal.json"  # plan, run and undo share one project
    if state is not None:
        state = Path(state).resolve()
        return f"Rehearsal: emulated project ({state.name})", False, state, users
    settings = load_settings(flags, config_path=options.config_path)
    target = Target.from_settings(settings)
    if target is None:
        raise UsageError(
            "no project id: set DESCOPE_PROJECT_ID, project_id in config.toml, or --project-id "
            "(or rehearse with --emulator-state FILE)",
            setting="project_id",
        )
    return f"LIVE project {target.project_id[:4]}…", True, None, None


def serve(
    options: UiOptions,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the page until interrupted; ``ready(url)`` gets the URL with its one-time token."""
    import uvicorn

    from batchphone.ui.app import Page, build_app
    from batchphone.ui.security import Keys

    banner, live, state, users = _banner(options)  # no project: nothing created
    work = options.work_dir.resolve()
    try:
        work.mkdir(mode=0o700, parents=True, exist_ok=True)  # it will hold personal data
    except OSError as exc:
        raise UsageError(f"--work-dir {work}: {exc.strerror}", setting="work_dir") from None
    if not work.is_dir():
        raise UsageError(f"--work-dir {work}: not a folder", setting="work_dir")
    flags = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in (options.flags or {}).items()
        if v is not None and k not in ("emulator", "emulator_state", "emulator_users")
    }
    config = options.config_path
    if config is None and Path("config.toml").is_file():
        config = Path("config.toml").resolve()  # the tasks read the same file as this process
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, options.port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--port {options.port}: {exc.strerror}", setting="port") from None
    port = sock.getsockname()[1]
    page = Page(
        work=work,
        port=port,
        banner=banner,
        live=live,
        upload_limit=options.upload_limit,
        flags=flags,
        config_path=config,
        emulator_state=state,
        emulator_users=Path(users).resolve() if users is not None else None,
    )
    keys = Keys()
    app, tasks = build_app(page, keys)
    url = f"http://{HOST}:{port}/?token={keys.url_token}"
    config_ = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", server_header=False
    )
    server = uvicorn.Server(config_)
    if ready is not None:
        ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        tasks.stop_all()
        with contextlib.suppress(OSError):
            sock.close()
