"""The cosmos-mongo command, through click's CliRunner on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cosmos_mongo.cli import cli
from cosmos_mongo.models import new_prompt_id
from cosmos_mongo.queries import INDEXES


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return run


def created_id(invoke: Any, *args: str) -> str:
    result = invoke("prompt", "create", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["id"]  # type: ignore[no-any-return]


def test_init_reports_where_the_data_lives(invoke: Any, tmp_path: Path) -> None:
    result = invoke("init")
    assert result.exit_code == 0
    assert str(tmp_path / "data") in result.output
    assert f"{len(INDEXES)} indexes" in result.output


def test_create_then_list_and_show(invoke: Any) -> None:
    prompt_id = created_id(
        invoke,
        "A robot arm stacks blocks",
        "--name",
        "robot",
        "--video",
        "in.mp4",
        "--param",
        "guidance=7",
        "--param",
        'tags=["a"]',
        "--input",
        "depth=d.mp4",
    )
    shown = json.loads(invoke("prompt", "show", prompt_id, "--json").output)
    assert shown["parameters"] == {"guidance": 7, "tags": ["a"], "name": "robot"}
    assert shown["inputs"] == {"depth": "d.mp4", "video": "in.mp4"}
    table = invoke("prompt", "list").output
    assert prompt_id in table and "A robot arm stacks blocks" in table
    listed = json.loads(invoke("prompt", "list", "--json").output)
    assert [p["id"] for p in listed] == [prompt_id]
    assert "robot" in invoke("prompt", "show", prompt_id).output


def test_search_finds_by_text(invoke: Any) -> None:
    wanted = created_id(invoke, "Rain on a neon street")
    created_id(invoke, "A quiet beach")
    found = json.loads(invoke("prompt", "search", "NEON", "--json").output)
    assert [p["id"] for p in found] == [wanted]


def test_delete_asks_first_and_removes_runs(invoke: Any, tmp_path: Path) -> None:
    from cosmos_mongo import CosmosStore
    from cosmos_mongo.embedded import open_embedded

    prompt_id = created_id(invoke, "doomed prompt")
    with open_embedded(tmp_path / "data") as database:
        CosmosStore(database).create_run(prompt_id, {})
    declined = invoke("prompt", "delete", prompt_id, input="n\n")
    assert declined.exit_code == 1
    assert "1 run(s)" in declined.output
    assert invoke("prompt", "show", prompt_id).exit_code == 0
    deleted = invoke("prompt", "delete", prompt_id, "--yes")
    assert deleted.exit_code == 0
    assert "Deleted" in deleted.output and "1 run(s)" in deleted.output
    assert invoke("prompt", "show", prompt_id).exit_code == 1


def test_run_list_and_show(invoke: Any, tmp_path: Path) -> None:
    from cosmos_mongo import CosmosStore
    from cosmos_mongo.embedded import open_embedded

    prompt_id = created_id(invoke, "a prompt with runs")
    with open_embedded(tmp_path / "data") as database:
        run = CosmosStore(database).create_run(prompt_id, {"steps": 3}, model_type="upscale")
    listed = json.loads(invoke("run", "list", "--prompt-id", prompt_id, "--json").output)
    assert [r["id"] for r in listed] == [run.id]
    assert run.id in invoke("run", "list", "--model-type", "upscale").output
    assert json.loads(invoke("run", "list", "--status", "failed", "--json").output) == []
    shown = json.loads(invoke("run", "show", run.id, "--json").output)
    assert shown["execution_config"] == {"steps": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prompt", "show", '{"$ne": null}'), "prompt_id: must be 'ps_'"),
        (("prompt", "show", new_prompt_id()), "not found"),
        (("prompt", "create", "   "), "prompt_text: must not be empty"),
        (("prompt", "create", "ok", "--param", "parent_prompt_id=x"), "enhancement details"),
        (("prompt", "delete", new_prompt_id(), "--yes"), "not found"),
        (("run", "show", "rs_nope"), "run_id: must be 'rs_'"),
        (("--uri", "http://example.com", "prompt", "list"), "uri: must start with mongodb://"),
        (("prompt", "create", "ok", "--param", "novalue"), "expected KEY=VALUE"),
    ],
)
def test_errors_are_one_line_with_a_non_zero_exit(
    invoke: Any, args: tuple[str, ...], message: str
) -> None:
    result = invoke(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def test_a_bad_uri_is_never_echoed(invoke: Any) -> None:
    result = invoke("--uri", "postgres://user:secret@host/db", "prompt", "list")
    assert result.exit_code == 1
    assert "secret" not in result.output


# -- enhancement commands -------------------------------------------------------------------


def test_enhance_then_inspect_with_every_helper_command(invoke: Any) -> None:
    prompt_id = created_id(invoke, "A robot arm stacks blocks", "--name", "robot")
    result = json.loads(invoke("enhance", prompt_id, "--json").output)
    child = result["enhanced_prompt_id"]
    assert result["enhancement_model"] == "template-v1" and child != prompt_id
    details = json.loads(invoke("details", child, "--json").output)
    assert details["run_id"] == result["run_id"]
    assert json.loads(invoke("original", child, "--json").output)["id"] == prompt_id
    assert [p["id"] for p in json.loads(invoke("enhanced", "--json").output)] == [child]
    history = json.loads(invoke("history", prompt_id, "--json").output)
    assert [r["id"] for r in history] == [result["run_id"]]
    assert result["run_id"] in invoke("history", prompt_id).output
    lineage = json.loads(invoke("lineage", prompt_id, "--json").output)
    assert [e["child_id"] for e in lineage["descendants"]] == [child]
    tree = invoke("lineage", child).output
    assert prompt_id in tree and child in tree and "this prompt" in tree
    assert invoke("details", prompt_id).exit_code == 1  # the original is not enhanced


def test_enhance_in_place_with_agent_text_then_revert(invoke: Any) -> None:
    prompt_id = created_id(invoke, "A robot arm stacks blocks")
    done = invoke(
        "enhance",
        prompt_id,
        "--overwrite",
        "--text",
        "A robot arm stacks three blocks.",
        "--model",
        "claude",
    )
    assert done.exit_code == 0 and "in place" in done.output
    run_id = json.loads(invoke("history", prompt_id, "--json").output)[0]["id"]
    assert "rewritten in place by claude" in invoke("lineage", prompt_id).output
    assert "Restored" in invoke("revert", run_id).output
    assert json.loads(invoke("prompt", "show", prompt_id, "--json").output)["prompt_text"] == (
        "A robot arm stacks blocks"
    )
    failed = invoke("revert", run_id)
    assert failed.exit_code == 1 and "only a completed enhancement" in failed.output


def test_verify_repair_and_migrate(invoke: Any, tmp_path: Path) -> None:
    from cosmos_mongo.embedded import open_embedded
    from tests.integration.legacy_data import insert_legacy

    with open_embedded(tmp_path / "data") as database:
        insert_legacy(database)
    verify = invoke("verify")
    assert verify.exit_code == 1 and "FAIL" in verify.output and "migrate --apply" in verify.output
    dry = invoke("migrate")
    assert "Would" in dry.output and "--apply" in dry.output
    assert invoke("verify").exit_code == 1
    quick = invoke("verify", "--quick")  # legacy keys are for the full checks
    assert quick.exit_code == 0 and "only interrupted work was checked" in quick.output
    assert "prompts carry only" not in quick.output
    applied = json.loads(invoke("migrate", "--apply", "--json").stdout)
    assert len(applied["prompts_stripped"]) == 4
    ok = invoke("verify", "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    assert "completed 0, rolled back 0" in invoke("repair").output
    quick_repair = invoke("repair", "--quick")
    assert (
        "deletions finished 0" in quick_repair.output and "without --quick" in quick_repair.output
    )


def test_demo_seeds_enhances_and_reports(invoke: Any, tmp_path: Path) -> None:
    result = invoke("demo")
    assert result.exit_code == 0, result.output
    assert "cosmos_demo" in result.output and "template-v1" in result.output
    assert "robot-blocks_enhanced" in result.output and "rewritten in place" in result.output
    assert "FAIL" not in result.output and result.output.count("ok ") >= 4
    assert (tmp_path / "data" / "cosmos_demo.sqlite3").exists()


def test_enhance_errors_are_one_line(invoke: Any) -> None:
    prompt_id = created_id(invoke, "A robot arm stacks blocks")
    result = invoke("enhance", prompt_id, "--model", "gpt-9")
    assert result.exit_code == 1 and "only runs 'template-v1'" in result.output
    assert "Traceback" not in result.output


# -- what a new user trips over ---------------------------------------------------------------


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    import click

    found: list[tuple[tuple[str, ...], Any]] = [(path, group)]
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            found += _commands(command, (*path, name))
    return found


def test_every_command_takes_h_and_documents_every_option(invoke: Any) -> None:
    import click

    for path, command in _commands(cli):
        shown = invoke(*path, "-h")
        assert shown.exit_code == 0 and "Usage:" in shown.output, path
        assert "``" not in shown.output, f"reST markup in {path} help"
        for parameter in command.params:
            if isinstance(parameter, click.Option) and "--help" not in parameter.opts:
                assert parameter.help, f"{' '.join(path)} {parameter.opts[0]} has no help"


def test_every_leaf_command_offers_json(invoke: Any) -> None:
    import click

    for path, command in _commands(cli):
        if isinstance(command, click.Group):
            continue
        names = {opt for parameter in command.params for opt in getattr(parameter, "opts", [])}
        assert "--json" in names, path


def test_init_and_demo_print_json(invoke: Any) -> None:
    ready = json.loads(invoke("init", "--json").output)
    assert len(ready["indexes"]) == len(INDEXES) and "embedded" in ready["where"]
    shown = json.loads(invoke("demo", "--json").output)
    assert shown["verification"]["ok"] is True and shown["enhanced_prompts"]


def test_prompt_list_filters_on_the_enhanced_flag(invoke: Any) -> None:
    plain = created_id(invoke, "A robot arm stacks blocks")
    child = json.loads(invoke("enhance", plain, "--json").output)["enhanced_prompt_id"]
    enhanced = json.loads(invoke("prompt", "list", "--enhanced", "--json").output)
    others = json.loads(invoke("prompt", "list", "--not-enhanced", "--json").output)
    assert [p["id"] for p in enhanced] == [child] and [p["id"] for p in others] == [plain]


def test_force_without_overwrite_is_a_usage_error(invoke: Any) -> None:
    prompt_id = created_id(invoke, "A robot arm stacks blocks")
    refused = invoke("enhance", prompt_id, "--force")
    assert refused.exit_code == 2 and "--force goes with --overwrite" in refused.output


def test_piped_tables_do_not_cut_cells(invoke: Any) -> None:
    prompt_id = created_id(invoke, "A robot arm stacks blocks")
    invoke("enhance", prompt_id)
    listed = invoke("run", "list")
    assert "completed" in listed.output and "…" not in listed.output


def test_import_sqlite_shows_progress_lines_when_piped(invoke: Any, tmp_path: Path) -> None:
    import re

    from tests.predecessor_db import sample

    source = sample(tmp_path / "cosmos.db", prompts=6)
    result = invoke("import-sqlite", str(source), "--batch-size", "2")
    assert result.exit_code == 0
    progress = [line for line in result.stderr.splitlines() if line.startswith("import-sqlite:")]
    assert progress and all(
        re.fullmatch(r"import-sqlite: (prompts|runs) [\d,]+/[\d,]+", line) for line in progress
    )
    last = {line.split()[1]: line.split()[2] for line in progress}  # the final count per table
    assert set(last) == {"prompts", "runs"}
    assert all(done == total for done, total in (count.split("/") for count in last.values()))
    assert not result.output.startswith("\n")


# -- moving data -----------------------------------------------------------------------------


def seeded(invoke: Any) -> str:
    prompt_id = created_id(invoke, "A robot arm stacks blocks", "--name", "robot")
    invoke("enhance", prompt_id)
    invoke("enhance", prompt_id, "--overwrite", "--text", "A robot arm stacks three blocks.")
    return prompt_id


def test_export_writes_extended_json_that_reads_back_exactly(invoke: Any, tmp_path: Path) -> None:
    from bson import json_util

    from cosmos_mongo import CosmosStore
    from cosmos_mongo.cli import _EXTENDED_JSON
    from cosmos_mongo.config import Settings

    seeded(invoke)
    result = invoke("export", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "directory": str(tmp_path / "out"),
        "prompts": 2,
        "runs": 2,
    }
    with CosmosStore.connect(settings=Settings(data_dir=tmp_path / "data")) as store:
        for name in ("prompts", "runs"):
            lines = (tmp_path / "out" / f"{name}.json").read_text().splitlines()
            read = [json_util.loads(line, json_options=_EXTENDED_JSON) for line in lines]
            assert read == list(store.iter_documents(name))
            assert all('"$date"' in line for line in lines)  # mongoimport's date form
    again = invoke("export", str(tmp_path / "out"))
    assert again.exit_code == 1 and "already holds" in again.output


def test_copy_moves_everything_to_another_store_idempotently_and_verifies(
    invoke: Any, tmp_path: Path
) -> None:
    from cosmos_mongo import CosmosStore
    from cosmos_mongo.config import Settings

    prompt_id = seeded(invoke)
    target = tmp_path / "target"
    first = invoke("copy", "--to-data-dir", str(target), "--json")
    assert first.exit_code == 0, first.output
    counts = json.loads(first.stdout)
    assert counts["prompts"]["inserted"] == 2 and counts["runs"]["inserted"] == 2
    assert counts["verify_ok"] is True
    again = json.loads(invoke("copy", "--to-data-dir", str(target), "--json").stdout)
    assert again["prompts"] == {"inserted": 0, "identical": 2, "differing": 0}
    with (
        CosmosStore.connect(settings=Settings(data_dir=tmp_path / "data")) as source,
        CosmosStore.connect(settings=Settings(data_dir=target)) as copied,
    ):
        for name in ("prompts", "runs"):
            assert list(copied.iter_documents(name)) == list(source.iter_documents(name))
        assert copied.get_lineage(prompt_id) == source.get_lineage(prompt_id)
    assert invoke("copy").exit_code == 2
    assert invoke("copy", "--to-data-dir", str(tmp_path / "data")).exit_code == 2  # itself


def test_every_long_command_shows_progress_when_piped(invoke: Any, tmp_path: Path) -> None:
    seeded(invoke)
    for command, args in [
        ("repair", ["repair"]),
        ("migrate", ["migrate", "--apply"]),
        ("export", ["export", str(tmp_path / "out")]),
        ("copy", ["copy", "--to-data-dir", str(tmp_path / "copy")]),
    ]:
        result = invoke(*args)
        assert result.exit_code == 0, (command, result.output)
        lines = [line for line in result.stderr.splitlines() if line.startswith(f"{command}: ")]
        assert lines, (command, result.stderr)
