"""CLI rough edges: strict KEY=VALUE JSON, no empty names, clashing options refused, paging
on every listing, a demo that can run again, and commands to create and update runs and
update prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cosmos_mongo.cli import cli


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_DATABASE", raising=False)
    monkeypatch.delenv("COSMOS_MONGO_ENHANCER_BASE_URL", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return run


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def prompt_count(invoke: Any) -> int:
    return len(as_json(invoke("prompt", "list", "--json")))


# -- --param and --name ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["[1, 2", '{"a": 1', '"unclosed'])
def test_a_param_that_starts_as_json_but_does_not_parse_is_a_usage_error(
    invoke: Any, value: str
) -> None:
    refused = invoke("prompt", "create", "A robot", "--param", f"tags={value}")
    assert refused.exit_code == 2
    assert "--param" in refused.output and "not valid JSON" in refused.output
    assert prompt_count(invoke) == 0  # nothing stored


def test_a_param_is_json_when_it_parses_and_a_string_otherwise(invoke: Any) -> None:
    created = as_json(
        invoke(
            "prompt",
            "create",
            "A robot",
            "--param",
            "steps=35",
            "--param",
            "sampler=euler a",
            "--param",
            'title="[draft]"',
            "--param",
            "version=1.2.3",
            "--json",
        )
    )
    assert created["parameters"]["steps"] == 35
    assert created["parameters"]["sampler"] == "euler a"
    assert created["parameters"]["title"] == "[draft]"  # a JSON string: the explicit form
    assert created["parameters"]["version"] == "1.2.3"


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_name_is_refused(invoke: Any, name: str) -> None:
    refused = invoke("prompt", "create", "A robot", "--name", name)
    assert refused.exit_code == 2 and "--name" in refused.output
    assert "must not be empty" in refused.output
    assert prompt_count(invoke) == 0


# -- lineage and paging ----------------------------------------------------------------------


def test_lineage_refuses_json_with_another_format(invoke: Any) -> None:
    prompt_id = as_json(invoke("prompt", "create", "A robot", "--json"))["id"]
    refused = invoke("lineage", prompt_id, "--format", "mermaid", "--json")
    assert refused.exit_code == 2 and "--format mermaid" in refused.output
    assert refused.stdout == ""
    assert invoke("lineage", prompt_id, "--format", "tree", "--json").exit_code == 2
    assert as_json(invoke("lineage", prompt_id, "--format", "json", "--json"))["prompt_id"] == (
        prompt_id
    )
    assert as_json(invoke("lineage", prompt_id, "--json"))["prompt_id"] == prompt_id


def test_enhanced_and_history_page_with_offset(invoke: Any) -> None:
    prompt_id = as_json(invoke("prompt", "create", "A robot arm stacks blocks", "--json"))["id"]
    for _ in range(3):
        invoke("enhance", prompt_id)
    enhanced = [p["id"] for p in as_json(invoke("enhanced", "--json"))]
    assert len(enhanced) == 3
    paged = as_json(invoke("enhanced", "--limit", "2", "--offset", "1", "--json"))
    assert [p["id"] for p in paged] == enhanced[1:3]
    history = [r["id"] for r in as_json(invoke("history", prompt_id, "--json"))]
    assert len(history) == 3
    paged = as_json(invoke("history", prompt_id, "--limit", "1", "--offset", "2", "--json"))
    assert [r["id"] for r in paged] == history[2:]
    assert invoke("enhanced", "--offset", "-1").exit_code == 2


# -- the demo, again ---------------------------------------------------------------------------


def test_running_the_demo_again_replaces_its_data_and_keeps_the_users(invoke: Any) -> None:
    first = invoke("demo")
    assert first.exit_code == 0, first.output
    prompts = as_json(invoke("--db", "cosmos_demo", "prompt", "list", "--json"))
    runs = as_json(invoke("--db", "cosmos_demo", "run", "list", "--json"))
    mine = as_json(invoke("--db", "cosmos_demo", "prompt", "create", "Mine", "--json"))["id"]
    again = invoke("demo")
    assert again.exit_code == 0, again.output
    assert f"replaced the {len(prompts)} prompt(s) an earlier demo seeded" in again.output
    after = as_json(invoke("--db", "cosmos_demo", "prompt", "list", "--json"))
    assert len(after) == len(prompts) + 1 and mine in {p["id"] for p in after}
    assert len(as_json(invoke("--db", "cosmos_demo", "run", "list", "--json"))) == len(runs)
    assert invoke("--db", "cosmos_demo", "verify").exit_code == 0


# -- run create, run update, prompt update -----------------------------------------------------


def test_run_create_records_a_run_with_its_settings(invoke: Any) -> None:
    prompt_id = as_json(invoke("prompt", "create", "A robot", "--json"))["id"]
    created = as_json(
        invoke(
            "run",
            "create",
            prompt_id,
            "--model-type",
            "predict",
            "--status",
            "running",
            "--config",
            "seed=7",
            "--metadata",
            "host=gpu-3",
            "--json",
        )
    )
    assert created["prompt_id"] == prompt_id and created["model_type"] == "predict"
    assert created["status"] == "running" and created["execution_config"] == {"seed": 7}
    assert created["metadata"] == {"host": "gpu-3"}
    shown = as_json(invoke("run", "show", created["id"], "--json"))
    assert shown == created
    plain = invoke("run", "create", prompt_id)
    assert plain.exit_code == 0 and plain.stdout.startswith("Created rs_")


def test_run_create_errors_are_one_line(invoke: Any) -> None:
    missing = invoke("run", "create", "ps_" + "0" * 32)
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    bad_type = invoke("run", "create", "ps_" + "0" * 32, "--model-type", "paint")
    assert bad_type.exit_code == 2


def test_run_update_sets_status_and_rating_and_merges_outputs(invoke: Any) -> None:
    prompt_id = as_json(invoke("prompt", "create", "A robot", "--json"))["id"]
    run_id = as_json(invoke("run", "create", prompt_id, "--json"))["id"]
    invoke("run", "update", run_id, "--output", "video=out.mp4")
    updated = as_json(
        invoke(
            "run",
            "update",
            run_id,
            "--status",
            "completed",
            "--rating",
            "4",
            "--output",
            "frames=121",
            "--log-path",
            "logs/r.log",
            "--json",
        )
    )
    assert updated["status"] == "completed" and updated["rating"] == 4
    assert updated["outputs"] == {"video": "out.mp4", "frames": 121}  # merged, not replaced
    assert updated["log_path"] == "logs/r.log" and updated["completed_at"] is not None
    plain = invoke("run", "update", run_id, "--status", "failed", "--error-message", "OOM")
    assert plain.exit_code == 0 and plain.stdout == f"Updated {run_id}: failed, rating 4\n"


def test_run_update_refuses_nothing_to_change_a_bad_rating_and_a_missing_run(
    invoke: Any,
) -> None:
    prompt_id = as_json(invoke("prompt", "create", "A robot", "--json"))["id"]
    run_id = as_json(invoke("run", "create", prompt_id, "--json"))["id"]
    nothing = invoke("run", "update", run_id)
    assert nothing.exit_code == 2 and "give what to change" in nothing.output
    assert invoke("run", "update", run_id, "--rating", "6").exit_code == 2
    missing = invoke("run", "update", "rs_" + "0" * 32, "--status", "running")
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    missing = invoke("run", "update", "rs_" + "0" * 32, "--output", "a=1")
    assert missing.exit_code == 1 and "not found" in missing.output


def test_prompt_update_replaces_text_and_sets_parameters(invoke: Any) -> None:
    prompt_id = as_json(
        invoke("prompt", "create", "A robot", "--name", "r", "--param", "steps=30", "--json")
    )["id"]
    updated = as_json(
        invoke(
            "prompt",
            "update",
            prompt_id,
            "--text",
            "A robot arm",
            "--name",
            "arm",
            "--param",
            "seed=1",
            "--json",
        )
    )
    assert updated["prompt_text"] == "A robot arm"
    assert updated["parameters"] == {"name": "arm", "steps": 30, "seed": 1}
    plain = invoke("prompt", "update", prompt_id, "--negative-prompt", "blur")
    assert plain.exit_code == 0 and plain.stdout == f"Updated {prompt_id}\n"


def test_prompt_update_refuses_nothing_empty_names_broken_json_and_missing_prompts(
    invoke: Any,
) -> None:
    prompt_id = as_json(invoke("prompt", "create", "A robot", "--json"))["id"]
    assert invoke("prompt", "update", prompt_id).exit_code == 2
    assert invoke("prompt", "update", prompt_id, "--name", "").exit_code == 2
    assert invoke("prompt", "update", prompt_id, "--text", " ").exit_code == 2
    assert invoke("prompt", "update", prompt_id, "--param", "a=[1").exit_code == 2
    missing = invoke("prompt", "update", "ps_" + "0" * 32, "--text", "x")
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    assert as_json(invoke("prompt", "show", prompt_id, "--json"))["prompt_text"] == "A robot"
