"""Importing the predecessor's SQLite database: conversion, bad rows, idempotence, dry run."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cosmos_mongo import InvalidInputError
from cosmos_mongo.cli import cli
from tests import predecessor_db
from tests.conftest import Backend
from tests.predecessor_db import add_prompt, pid, rid, sample


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return sample(tmp_path / "cosmos.db")


def reasons(report: Any, outcome: str = "invalid") -> dict[str, str]:
    return {p.row_id: p.reason for p in report.problems if p.outcome == outcome}


def test_import_converts_keeps_ids_and_reports_bad_rows(backend: Backend, source: Path) -> None:
    store = backend.store
    report = store.import_sqlite(source, batch_size=3)
    assert (report.prompts.imported, report.prompts.invalid, report.prompts.skipped) == (8, 5, 0)
    assert (report.runs.imported, report.runs.invalid) == (3, 4)
    assert report.job_queue_skipped == 1
    invalid = reasons(report)
    assert "not valid JSON" in invalid[pid(200)] and "not an object" in invalid[pid(201)]
    assert "'ps_' followed by" in invalid["prompt-7"] and "empty" in invalid[pid(202)]
    assert "not a date" in invalid[pid(203)]
    assert f"prompt {pid(999)} does not exist" in invalid[rid(2)]
    assert "outputs is not valid JSON" in invalid[rid(3)] and "1 to 5" in invalid[rid(4)]
    assert f"prompt {pid(200)} does not exist" in invalid[rid(5)]
    assert "import time" in reasons(report, "adjusted")[pid(204)]

    prompt = store.get_prompt(pid(1))  # ids kept, the predecessor's 12-hex form
    assert prompt.inputs == {"video": "inputs/1.mp4"} and prompt.parameters == {"name": "p1"}
    assert prompt.created_at.tzinfo is not None
    # naive with microseconds (cut to BSON's milliseconds), ISO with Z, with an offset, naive
    assert prompt.created_at == datetime(2024, 1, 2, 12, 0, 0, 123000, tzinfo=UTC)
    assert store.get_prompt(pid(2)).created_at == datetime(2024, 1, 3, 12, 0, tzinfo=UTC)
    assert store.get_prompt(pid(3)).created_at == datetime(2024, 1, 4, 12, 0, tzinfo=UTC)
    assert store.get_prompt(pid(4)).created_at == datetime(2024, 1, 5, 12, 0, tzinfo=UTC)
    run = store.get_run(rid(1))
    assert (run.rating, run.log_path, run.execution_config) == (4, "logs/1.log", {"num_steps": 35})
    assert run.metadata == {} and run.completed_at == datetime(2024, 2, 1, 10, 5, tzinfo=UTC)
    assert store.get_run(rid(6)).error_message == "CUDA out of memory"
    # Legacy enhancement data stays as it was, and the helpers read it.
    details = store.get_enhancement_details(pid(100))
    assert (details.run_id, details.enhancement_model, details.original_prompt_id) == (
        rid(100),
        "pixtral",
        pid(1),
    )
    assert store.get_original_prompt(pid(100)).id == pid(1)
    assert not store.verify().ok  # legacy keys, until migrate
    store.migrate(dry_run=False)
    assert store.verify().ok


def test_reimport_imports_nothing_twice_and_overwrites_nothing(
    backend: Backend, source: Path
) -> None:
    store = backend.store
    first = store.import_sqlite(source)
    store.update_prompt(pid(3), prompt_text="Edited after the import")
    before = backend.snapshot()
    again = store.import_sqlite(source)
    assert (again.prompts.imported, again.runs.imported) == (0, 0)
    assert (
        again.prompts.skipped == first.prompts.imported
        and again.runs.skipped == first.runs.imported
    )
    assert reasons(again, "skipped") == {
        pid(3): "a different document with this id is stored; it was left unchanged"
    }
    assert backend.snapshot() == before


def test_new_rows_in_the_source_are_picked_up_by_a_rerun(backend: Backend, source: Path) -> None:
    backend.store.import_sqlite(source)
    with sqlite3.connect(source) as db:
        add_prompt(db, pid(50), "Added later", "2024-03-01 00:00:00", {}, {})
    report = backend.store.import_sqlite(source)
    assert report.prompts.imported == 1 and backend.store.get_prompt(pid(50)) is not None


def test_dry_run_writes_nothing(backend: Backend, source: Path) -> None:
    report = backend.store.import_sqlite(source, dry_run=True)
    assert report.dry_run and report.prompts.imported == 8 and report.runs.imported == 3
    assert backend.snapshot() == {"prompts": [], "runs": []}


def test_progress_is_reported_per_batch(mock_store: Any, source: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    mock_store.import_sqlite(source, batch_size=4, progress=lambda *args: seen.append(args))
    assert seen[0] == ("prompts", 4, 13) and seen[3] == ("prompts", 13, 13)
    assert seen[-1] == ("runs", 7, 7)


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100])
def test_a_file_that_is_not_a_predecessor_database_is_rejected(
    mock_store: Any, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "other.db"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match="path"):
        mock_store.import_sqlite(path)
    with pytest.raises(InvalidInputError, match="no such file"):
        mock_store.import_sqlite(tmp_path / "missing.db")


def test_cli_import_with_dry_run_and_json(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    dry = runner.invoke(cli, ["import-sqlite", str(source), "--dry-run"])
    assert dry.exit_code == 0 and "Dry run" in dry.output and "invalid" in dry.output
    done = json.loads(runner.invoke(cli, ["import-sqlite", str(source), "--json"]).stdout)
    assert done["prompts"]["imported"] == 8
    again = json.loads(runner.invoke(cli, ["import-sqlite", str(source), "--json"]).stdout)
    assert again["prompts"]["imported"] == 0 and again["prompts"]["skipped"] == 8
    missing = runner.invoke(cli, ["import-sqlite", str(tmp_path / "nope.db")])
    assert missing.exit_code != 0 and "Traceback" not in missing.output


def test_the_enhanced_flag_is_imported_as_a_real_boolean(mock_store: Any, tmp_path: Path) -> None:
    db = predecessor_db.create(tmp_path / "flags.db")
    flags = {1: 1, 2: "true", 3: 0, 4: "false", 5: True, 6: "maybe"}
    for n, flag in flags.items():
        predecessor_db.add_prompt(
            db, predecessor_db.pid(n), f"Prompt {n}", "2024-01-01 00:00:00", {}, {"enhanced": flag}
        )
    db.commit()
    db.close()
    report = mock_store.import_sqlite(tmp_path / "flags.db")
    stored = {
        doc["_id"]: doc["parameters"]
        for doc in mock_store.db["prompts"].find({}, {"parameters": 1})
    }
    assert stored[pid(1)] == stored[pid(2)] == stored[pid(5)] == {"enhanced": True}
    assert stored[pid(3)] == stored[pid(4)] == {}
    assert pid(6) not in stored  # neither true nor false: reported, not guessed
    assert any(p.row_id == pid(6) and "boolean" in p.reason for p in report.problems)
    assert {p.id for p in mock_store.list_enhanced_prompts()} == {pid(1), pid(2), pid(5)}
