"""docs/options.md is generated from the one option declaration (options.OPTIONS), and kept so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from batchphone import docs

ROOT = Path(__file__).resolve().parent.parent


def test_the_options_page_is_what_the_commands_declare() -> None:
    page = ROOT / docs.OPTIONS_PAGE
    written = page.read_text(encoding="utf-8") if page.exists() else ""
    assert written == docs.render(), (
        f"{docs.OPTIONS_PAGE} is stale: regenerate it with `{docs.REGENERATE}` "
        "from the repository's folder, and commit it"
    )


def test_the_page_names_every_option_with_its_setting() -> None:
    text = docs.render()
    row = next(line for line in text.splitlines() if line.startswith("| `--rate` "))
    assert "`500/60`" in row and "`rate`" in row and "`BATCHPHONE_RATE`" in row
    assert "| `rate_margin` | `BATCHPHONE_RATE_MARGIN` |" in text  # a setting with no flag
    assert "--skip-unchanged" not in text  # a removed (hidden) flag is not offered


def test_the_cli_does_not_import_the_docs_writer() -> None:
    code = "import sys, batchphone.cli; sys.exit('batchphone.docs' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
