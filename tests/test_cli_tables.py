"""Tables fit the terminal: every id whole on one line, no column squeezed to nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from cosmos_mongo import cli as cli_module
from cosmos_mongo.cli import cli

_ID = re.compile(r"\b(?:ps|rs)_[0-9a-f]{32}\b")
_BORDERS = "│┃┏┓┗┛┡┩└┘┳┻╇┴━─"


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_DATABASE", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))

    def run(width: int, *args: str) -> str:
        monkeypatch.setattr(cli_module, "console", Console(width=width, color_system=None))
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    return run


@pytest.fixture
def ids(invoke: Any) -> dict[str, list[str]]:
    """A prompt with a long name enhanced twice and its runs rated; the ids, per kind."""
    created = json.loads(
        invoke(
            200,
            "prompt",
            "create",
            "A robot arm picks up three wooden blocks and stacks them on a workbench",
            "--name",
            "robot-blocks-with-a-rather-long-name",
            "--json",
        )
    )
    first = json.loads(invoke(200, "enhance", created["id"], "--json"))
    invoke(200, "enhance", created["id"], "--overwrite", "--text", "A robot arm stacks blocks.")
    runs = json.loads(invoke(200, "run", "list", "--json"))
    prompts = json.loads(invoke(200, "prompt", "list", "--json"))
    return {
        "prompt": created["id"],
        "prompts": [p["id"] for p in prompts],
        "runs": [r["id"] for r in runs],
        "run_prompts": [r["prompt_id"] for r in runs],
        "enhanced": [first["enhanced_prompt_id"]],
    }


def whole_ids(output: str) -> list[str]:
    return _ID.findall(output)


def fits(output: str, width: int) -> None:
    for line in output.splitlines():
        assert len(line) <= width, line
        # A table's last border is on every row: the table was not cropped at the edge.
        if line.startswith(("│", "┃")):
            assert line.rstrip().endswith(("│", "┃")), line


def cells(output: str) -> list[list[str]]:
    """The cells of each table row (rows of the first line of an entry)."""
    return [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


@pytest.mark.parametrize("width", [80, 120])
def test_run_list_keeps_every_id_whole_and_every_column_visible(
    invoke: Any, ids: dict[str, list[str]], width: int
) -> None:
    shown = invoke(width, "run", "list")
    fits(shown, width)
    assert set(ids["runs"] + ids["run_prompts"]) <= set(whole_ids(shown))
    header = shown.split("┡")[0]
    for column in ("type", "status", "rating"):
        assert column in header
    assert shown.count("enhance ") == len(ids["runs"])
    assert shown.count("completed") == len(ids["runs"])


@pytest.mark.parametrize("width", [80, 120])
def test_history_keeps_every_id_whole_and_shows_status_and_model(
    invoke: Any, ids: dict[str, list[str]], width: int
) -> None:
    shown = invoke(width, "history", ids["prompt"])
    fits(shown, width)
    assert set(ids["runs"]) <= set(whole_ids(shown))
    assert ids["enhanced"][0] in whole_ids(shown)
    assert "template-v1" in shown and shown.count("completed") == len(ids["runs"])


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize(
    "command", [["prompt", "list"], ["enhanced"], ["prompt", "search", "robot"]]
)
def test_prompt_tables_fit_the_terminal_with_ids_whole(
    invoke: Any, ids: dict[str, list[str]], width: int, command: list[str]
) -> None:
    shown = invoke(width, *command)
    fits(shown, width)
    listed = json.loads(invoke(200, *command, "--json"))
    assert {p["id"] for p in listed} <= set(whole_ids(shown))
    assert "text" in shown.split("┡")[0]
    assert all(row[-1] for row in cells(shown) if _ID.search(row[0]))  # text is not empty


def test_a_terminal_narrower_than_the_table_loses_columns_not_id_characters(
    invoke: Any, ids: dict[str, list[str]]
) -> None:
    shown = invoke(50, "run", "list")
    fits(shown, 50)
    assert set(ids["runs"]) <= set(whole_ids(shown))


def test_piped_tables_keep_whole_columns_and_texts(invoke: Any, ids: dict[str, list[str]]) -> None:
    shown = invoke(4096, "prompt", "list")  # what cli.py uses when stdout is no terminal
    assert "A robot arm stacks blocks." in shown
    assert "robot-blocks-with-a-rather-long-name" in shown and "created (UTC)" in shown
