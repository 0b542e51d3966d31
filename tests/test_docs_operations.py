"""The demo/operations docs: every python block runs as written; the demo's
methods, credentials and flags are all documented; ``demo --help`` points there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from aduib_asgi.demo.security import DEMO_API_KEYS, DEMO_TOKENS

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ("demo.md", "configuration.md", "deployment.md", "migration.md")


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


@pytest.mark.parametrize("page, index", [
    (page, i) for page in PAGES for i in range(len(_blocks(page)))])
def test_python_blocks_run_as_written(page: str, index: int, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(_blocks(page)[index])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=90, cwd=tmp_path)
    assert done.returncode == 0, f"{page} block {index}:\n{done.stdout}\n{done.stderr}"


def test_the_pages_have_runnable_examples() -> None:
    assert _blocks("demo.md") and _blocks("configuration.md") and _blocks("migration.md")


def test_demo_md_names_every_method_and_credential() -> None:
    from aduib_asgi.demo.services import register_demo_services
    from aduib_asgi.dispatcher import MethodRegistry

    text = (DOCS / "demo.md").read_text()
    registry = MethodRegistry()
    register_demo_services(registry)
    for spec in registry:
        assert f"`{spec.method}`" in text, spec.method
    for secret in (*DEMO_TOKENS, *DEMO_API_KEYS):
        assert secret in text


def test_every_demo_flag_is_documented_and_help_points_to_the_docs() -> None:
    from aduib_asgi import cli

    text = (DOCS / "demo.md").read_text()
    help_text = subprocess.run([sys.executable, "-m", "aduib_asgi.cli", "demo", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "docs/demo.md" in help_text and "DEMO.md" not in help_text
    top = subprocess.run([sys.executable, "-m", "aduib_asgi.cli", "--help"],
                         capture_output=True, text=True, timeout=60).stdout
    assert "docs/demo.md" in top
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", help_text)) - {"--help"}
    assert "--config" in flags and "--drain-delay" in flags
    for flag in flags:
        assert f"`{flag}" in text, f"{flag} is not in docs/demo.md"
    assert cli.main is not None
