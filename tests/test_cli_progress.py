"""Progress of long commands: real totals, and only a few lines when stderr is piped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cosmos_mongo.cli import _progress, cli
from tests.conftest import Backend
from tests.integration.legacy_data import insert_legacy
from tests.predecessor_db import sample


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_DATABASE", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return run


def progress_lines(result: Result, command: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(f"{command}: ")]


def test_piped_progress_prints_three_lines_a_stage_however_many_batches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _progress("import-sqlite") as say:
        for done in range(500, 50_001, 500):
            say("prompts", done, 50_000)
        for done in range(500, 50_001, 500):
            say("runs", done, 50_000)
    assert capsys.readouterr().err.splitlines() == [
        "import-sqlite: prompts 500/50,000",
        "import-sqlite: prompts 25,000/50,000",
        "import-sqlite: prompts 50,000/50,000",
        "import-sqlite: runs 500/50,000",
        "import-sqlite: runs 25,000/50,000",
        "import-sqlite: runs 50,000/50,000",
    ]


def test_piped_progress_without_a_total_prints_the_first_and_the_final_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _progress("repair") as say:
        for done in range(1000, 20_001, 1000):
            say("runs", done, None)
    assert capsys.readouterr().err.splitlines() == ["repair: runs 1,000", "repair: runs 20,000"]


def test_a_piped_import_of_many_batches_prints_a_few_lines_with_real_totals(
    invoke: Any, tmp_path: Path
) -> None:
    source = sample(tmp_path / "cosmos.db", prompts=60)
    result = invoke("import-sqlite", str(source), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    lines = progress_lines(result, "import-sqlite")
    assert 2 <= len(lines) <= 6, lines
    last = {line.split()[1]: line.split()[2] for line in lines}
    assert set(last) == {"prompts", "runs"}
    assert all(done == total for done, total in (count.split("/") for count in last.values()))


def test_export_copy_and_migrate_report_a_real_total(invoke: Any, tmp_path: Path) -> None:
    created = [
        invoke("prompt", "create", f"A robot arm stacks {n} blocks", "--json") for n in range(3)
    ]
    assert all(result.exit_code == 0 for result in created)
    for command, args, stages in [
        ("export", ["export", str(tmp_path / "out")], {"prompts": "3/3"}),
        ("copy", ["copy", "--to-data-dir", str(tmp_path / "copy")], {"prompts": "3/3"}),
        ("migrate", ["migrate", "--apply"], {"legacy": "prompts 0/0"}),
    ]:
        result = invoke(*args)
        assert result.exit_code == 0, (command, result.output)
        lines = progress_lines(result, command)
        assert lines and all(re.search(r" [\d,]+/[\d,]+$", line) for line in lines), lines
        for stage, count in stages.items():
            assert f"{command}: {stage} {count}" in lines, lines


def test_migrate_reports_the_count_of_legacy_prompts_as_its_total(backend: Backend) -> None:
    insert_legacy(backend.raw)
    reports: list[tuple[str, int, int | None]] = []
    backend.store.migrate(
        dry_run=False, progress=lambda stage, done, total: reports.append((stage, done, total))
    )
    assert reports and {total for _, _, total in reports} == {4}
    assert reports[-1] == ("legacy prompts", 4, 4)


def test_a_piped_verbose_import_adds_no_line_a_batch(invoke: Any, tmp_path: Path) -> None:
    source = sample(tmp_path / "cosmos.db", prompts=60)
    result = invoke("-v", "import-sqlite", str(source), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert len(result.stderr.splitlines()) <= 8, result.stderr
