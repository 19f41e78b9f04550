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


# User code with one mistake a line (marked), and correct calls around them. Strict mypy must
# report each marked line and no other.
_PLANTED = """\
import asyncio

from cosmos_mongo import AsyncCosmosStore, CosmosStore, ModelType, RunStatus


def use(store: CosmosStore) -> None:
    prompt = store.create_prompt("a robot arm", {"video": "in.mp4"})
    run = store.create_run(prompt.id, {}, model_type="predict", initial_status="running")
    store.update_run(run.id, status="completed", outputs={"video": "out.mp4"}, rating=5)
    store.update_run(run.id, error_message=None, log_path=None, metadata=None)
    store.list_runs(prompt.id, "transfer", "failed", limit=5)
    wanted: RunStatus = "cancelled"
    kind: ModelType = "enhance"
    store.list_runs(model_type=kind, status=wanted)
    store.update_run(run.id, colour="red")  # MISTAKE
    store.list_runs(status="finished")  # MISTAKE
    store.list_runs(model_type="transfr")  # MISTAKE
    store.create_run(prompt.id, {}, model_type="generate")  # MISTAKE
    store.create_run(prompt.id, {}, initial_status="queued")  # MISTAKE
    store.update_run_status(run.id, "done")  # MISTAKE
    store.update_run(run.id, status="finished")  # MISTAKE
    store.update_run(run.id, rating="5")  # MISTAKE
    list(store.iter_runs(status="complete"))  # MISTAKE
    store.get_prompt(prompt.id).prompt_text  # MISTAKE
    store.create_prompt(42)  # MISTAKE


async def use_async(store: AsyncCosmosStore, run_id: str) -> None:
    await store.update_run(run_id, status="running")
    await store.update_run(run_id, colour="red")  # MISTAKE
    await store.list_runs(status="finished")  # MISTAKE


asyncio.run(use_async(AsyncCosmosStore.__new__(AsyncCosmosStore), "rs_0"))
"""


def test_strict_mypy_reports_every_planted_mistake_in_user_code(tmp_path: Path) -> None:
    """Run statuses and model types are Literals and ``update_run`` takes typed keywords, so
    a misspelt field or status is a type error, not a surprise at run time."""
    snippet = tmp_path / "user_code.py"
    snippet.write_text(_PLANTED)
    planted = {
        number for number, line in enumerate(_PLANTED.splitlines(), 1) if "# MISTAKE" in line
    }
    result = _run("mypy", "--strict", "--no-incremental", str(snippet))
    reported = {
        int(line.split(":")[1]) for line in result.stdout.splitlines() if ": error:" in line
    }
    assert reported == planted, result.stdout
