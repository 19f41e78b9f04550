"""Lint, format and strict typing are part of the test suite, so one command checks all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_what_a_workflow_reads_is_typed(tmp_path: Path) -> None:
    """An operation's result has its type (``FindOne`` gives ``Document | None``), so strict
    mypy catches a workflow that forgets a document may be missing."""
    snippet = tmp_path / "careless_flow.py"
    snippet.write_text(
        "from cosmos_mongo.ops import Find, FindOne, Flow\n\n\n"
        "def careless() -> Flow[object]:\n"
        '    found = yield from FindOne("prompts", {"_id": "ps_1"})\n'
        '    return found["prompt_text"]\n\n\n'
        "def careful() -> Flow[int]:\n"
        '    found = yield from Find("prompts", {})\n'
        "    return len(found)\n"
    )
    result = _run("mypy", "--strict", "--no-incremental", str(snippet))
    assert result.returncode == 1, result.stdout
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "careless_flow.py:6" in errors[0], result.stdout
    assert "None" in errors[0] and "not indexable" in errors[0]
