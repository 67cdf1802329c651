"""A local emulator of Descope's management API, for tests, demos, benchmarks and rehearsals.

``Emulator`` holds one or more projects (users, key, rate budget) in memory and serves the user
endpoints batchphone needs through a Starlette app: in-process through ``emu.transport()``, or
on a loopback socket through ``server.serve`` / ``server.ServerThread`` and the
``batchphone emulator`` command. It follows ``descope-api.md``; each behaviour that file leaves
open is one entry of ``contract.ASSUMED``, listed in docs/emulator.md.
"""

from batchphone.emulator.app import ConnectionDropped, Emulator
from batchphone.emulator.contract import ASSUMED
from batchphone.emulator.faults import FaultKind, Faults
from batchphone.emulator.state import EmulatorStats, LogEntry, ProjectSettings
from batchphone.emulator.store import Merge
from batchphone.emulator.users import SeedFileError, complete_user, generate_users, load_users

__all__ = [
    "ASSUMED",
    "ConnectionDropped",
    "Emulator",
    "EmulatorStats",
    "FaultKind",
    "Faults",
    "LogEntry",
    "Merge",
    "ProjectSettings",
    "SeedFileError",
    "complete_user",
    "generate_users",
    "load_users",
]
