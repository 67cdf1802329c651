"""A CSV run never imports polars, fastexcel or xlsxwriter, nor the emulator unless asked.

Their import costs every ``python -m batchphone`` more CPU (~0.2 s) than a short CSV run
takes; the web page starts one per step. One subprocess (a fresh interpreter: this test's own
has them imported) runs the commands through the CLI in turn and says what each left loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_HEAVY = ("polars", "fastexcel", "xlsxwriter", "pyarrow", "pandas")

_SCRIPT = """
import json, sys
from batchphone.cli import main

heavy = set(json.loads(sys.argv[1]))
loaded = []
for argv in json.loads(sys.argv[2]):
    try:
        main(argv, prog_name="batchphone")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    tops = {name.partition(".")[0] for name in sys.modules}
    loaded.append({
        "command": " ".join([argv[0], *argv[2:]]),
        "exit": code,
        "heavy": sorted(tops & heavy),
        "emulator": "batchphone.emulator" in sys.modules or "starlette" in tops,
    })
print(json.dumps(loaded))
"""


def test_csv_commands_never_import_polars_nor_the_emulator_unasked(tmp_path: Path) -> None:
    users = tmp_path / "users.csv"
    rows = "".join(f"user{i}@example.com,+1415555{i:04d}\n" for i in range(20))
    users.write_text("loginId,phone\n" + rows + "user3@example.com,+14155550003\n")
    out = tmp_path / "out.csv"
    commands = [
        ["validate", str(users)],
        ["validate", str(users), "--out", str(tmp_path / "report.csv")],
        ["run", str(users), "--out", str(tmp_path / "dry.csv"), "--dry-run"],
        # the embedded emulator loads starlette, never polars: a run, its resume, its status
        ["run", str(users), "--out", str(out), "--emulator"],
        ["run", str(users), "--out", str(out), "--emulator"],
        ["status", str(out)],
        ["plan", str(users), "--out", str(tmp_path / "plan.csv"), "--emulator"],
    ]
    argv = [sys.executable, "-c", _SCRIPT, json.dumps(_HEAVY), json.dumps(commands)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert [step["exit"] for step in loaded] == [0] * len(commands), done.stderr[-2000:]
    assert [(step["command"], step["heavy"]) for step in loaded if step["heavy"]] == []
    assert [step["emulator"] for step in loaded] == [False] * 3 + [True] * 4
    assert out.read_text().count(",updated,") == 20
    for name in ("report.csv", "dry.csv", "plan.csv"):
        assert (tmp_path / name).read_text().startswith("row,line,loginId,")
