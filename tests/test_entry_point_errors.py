"""Public entry points that take a callable or a path answer a bad one with the tree's own
errors, never a raw ``TypeError`` or ``OSError`` (issue 22, item 6)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cosmos_mongo import CosmosStore, InvalidInputError
from cosmos_mongo.embedded import open_embedded
from tests.conftest import Backend
from tests.predecessor_db import sample

CALLS: dict[str, Callable[[Any, Any], Any]] = {
    "repair": lambda store, progress: store.repair(progress=progress),
    "repair quick": lambda store, progress: store.repair(progress=progress, quick=True),
    "migrate": lambda store, progress: store.migrate(dry_run=False, progress=progress),
    "import_sqlite": lambda store, progress: store.import_sqlite(
        "/nonexistent.db", progress=progress
    ),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("progress", [3, "bar", object()])
def test_a_progress_that_is_not_callable_is_an_invalid_input_before_any_work(
    backend: Backend, call: str, progress: object
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        CALLS[call](backend.store, progress)
    assert caught.value.field == "progress" and "function" in caught.value.rule


def test_import_sqlite_with_a_path_too_long_for_the_file_system_names_the_problem(
    mock_store: CosmosStore, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        mock_store.import_sqlite(tmp_path / ("x" * 5000))
    assert caught.value.field == "path" and "too long" in caught.value.rule


@pytest.mark.parametrize("name", ["legacy?mode=rw.db", "legacy#1.db", "legacy 100%.db"])
def test_import_sqlite_reads_a_file_whose_name_has_uri_characters(
    mock_store: CosmosStore, tmp_path: Path, name: str
) -> None:
    source = sample(tmp_path / name)
    report = mock_store.import_sqlite(source)
    assert report.prompts.imported > 0


def test_open_embedded_with_a_path_too_long_is_a_storage_error_naming_it(tmp_path: Path) -> None:
    from cosmos_mongo import StorageError

    with pytest.raises(StorageError, match="cannot open the embedded database"):
        open_embedded(tmp_path / ("x" * 5000))


@pytest.mark.parametrize(
    ("variable", "value"),
    [("COSMOS_MONGO_TIMEOUT_MS", "soon"), ("COSMOS_MONGO_READ_ONLY", "perhaps")],
)
def test_the_cli_names_a_bad_environment_variable_in_one_line_with_exit_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    from click.testing import CliRunner

    from cosmos_mongo.cli import cli

    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(cli, ["prompt", "list"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: bad setting {variable}: ")
    assert len(result.stderr.splitlines()) == 1 and value not in result.stderr


def test_export_to_a_path_too_long_for_the_file_system_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cosmos_mongo.cli import cli

    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["export", str(tmp_path / ("x" * 5000))])
    assert result.exit_code == 1
    assert "cannot write the export to " in result.stderr
    assert result.stderr.rstrip().endswith("File name too long")
    assert len(result.stderr.splitlines()) == 1 and len(result.stderr) < 300
