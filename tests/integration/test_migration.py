"""migrate(): tidy legacy data into runs, idempotently, with every helper answering the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cosmos_mongo.cli import cli
from cosmos_mongo.models import new_run_id
from cosmos_mongo.validation import LEGACY_ENHANCEMENT_KEYS
from tests.conftest import Backend
from tests.integration.legacy_data import (
    NAMED_RUN_VARIANTS,
    insert_legacy,
    insert_named_run_variants,
    named_run_variants,
    rid,
)
from tests.predecessor_db import from_documents


def answers(store: Any, ids: dict[str, str]) -> dict[str, Any]:
    """Every helper's answer for every legacy prompt, comparable across a migration."""
    result: dict[str, Any] = {}
    for name, prompt_id in ids.items():
        details = store.get_enhancement_details(prompt_id)
        original = store.get_original_prompt(prompt_id)
        lineage = store.get_lineage(prompt_id)
        result[name] = {
            "details": None if details is None else details.model_dump(exclude={"run_id"}),
            "details_run": None if details is None else details.run_id,
            "original": None if original is None else original.id,
            "history": [run.id for run in store.get_enhancement_history(prompt_id)],
            "ancestors": [(e.parent_id, e.child_id, e.depth) for e in lineage.ancestors],
            "descendants": [(e.parent_id, e.child_id, e.depth) for e in lineage.descendants],
            "root": lineage.root_id,
        }
    result["enhanced"] = [p.id for p in store.list_enhanced_prompts()]
    return result


def test_dry_run_reports_and_changes_nothing(backend: Backend) -> None:
    ids = insert_legacy(backend.raw)
    before = backend.snapshot()
    report = backend.store.migrate()
    assert report.dry_run and report.prompts_examined == 4
    assert sorted(report.prompts_stripped) == sorted([ids["B"], ids["C"], ids["D"], ids["F"]])
    assert len(report.runs_created) == 2  # D and F had no run
    assert len(report.runs_backfilled) == 2  # B's and C's runs lack enhancement_model/enhanced_at
    assert backend.snapshot() == before


def test_migrate_moves_legacy_keys_into_runs_and_loses_nothing(backend: Backend) -> None:
    ids = insert_legacy(backend.raw)
    store = backend.store
    before = answers(store, ids)
    verified = store.verify()
    assert not verified.ok
    assert (
        len(verified.prompts_with_legacy_keys) == 4 and len(verified.incomplete_enhance_runs) == 2
    )

    report = store.migrate(dry_run=False)
    assert report.changes == 8 and not report.dry_run
    after = answers(store, ids)

    for prompt in backend.raw["prompts"].find({}):
        assert not set(prompt["parameters"]) & LEGACY_ENHANCEMENT_KEYS
    for name in ids:
        old, new = before[name], after[name]
        assert new["details"] == old["details"], name  # text, model, time, original, result
        assert new["original"] == old["original"], name
        assert (new["ancestors"], new["descendants"], new["root"]) == (
            old["ancestors"],
            old["descendants"],
            old["root"],
        ), name
        if old["details_run"] is None and old["details"] is not None:
            # What only the keys knew now has a run of its own.
            assert new["details_run"] in report.runs_created
        else:
            assert new["details_run"] == old["details_run"], name
        # History keeps every run and gains only the runs made for this prompt's legacy edges.
        gained = [run_id for run_id in new["history"] if run_id not in old["history"]]
        assert [run_id for run_id in new["history"] if run_id in old["history"]] == old["history"]
        assert set(gained) <= set(report.runs_created), name
        for run_id in gained:
            outputs = store.get_run(run_id).outputs
            assert ids[name] in (outputs["original_prompt_id"], outputs["enhanced_prompt_id"])
    assert after["enhanced"] == before["enhanced"]
    assert store.verify().ok

    again = store.migrate(dry_run=False)
    assert again.changes == 0 and again.prompts_examined == 0
    assert answers(store, ids) == after


def test_repair_runs_the_migration_too(backend: Backend) -> None:
    insert_legacy(backend.raw)
    report = backend.store.repair()
    assert len(report.migration.prompts_stripped) == 4
    assert report.unrepairable == [] and backend.store.verify().ok


# -- a prompt whose last_enhancement_run_id names a run that does not record it -------------


def legacy_prompt_ids(backend: Backend) -> list[str]:
    return sorted(
        prompt["_id"]
        for prompt in backend.raw["prompts"].find({})
        if set(prompt.get("parameters") or {}) & LEGACY_ENHANCEMENT_KEYS
    )


def test_every_named_run_shape_migrates_and_every_helper_answers_the_same(
    backend: Backend,
) -> None:
    ids = {**insert_legacy(backend.raw), **insert_named_run_variants(backend.raw)}
    store = backend.store
    before, raw_before = answers(store, ids), backend.snapshot()
    legacy_ids = legacy_prompt_ids(backend)
    assert len(legacy_ids) == 4 + len(NAMED_RUN_VARIANTS)

    report = store.migrate(dry_run=False)
    assert report.prompts_left == []
    assert sorted(report.prompts_stripped) == legacy_ids and legacy_prompt_ids(backend) == []
    after = answers(store, ids)
    runs_before = {run["_id"]: run for run in raw_before["runs"]}
    named_by = {
        prompt["_id"]: prompt["parameters"].get("last_enhancement_run_id")
        for prompt in raw_before["prompts"]
    }
    for name, (n, outcome) in NAMED_RUN_VARIANTS.items():
        old, new = before[name], after[name]
        assert old["details_run"] is None and old["details"] is not None, name
        assert new["details"] == old["details"], name  # text, model, time, original, result
        assert new["original"] == old["original"], name
        assert (new["ancestors"], new["descendants"], new["root"]) == (
            old["ancestors"],
            old["descendants"],
            old["root"],
        ), name
        recorded = store.get_run(new["details_run"])
        assert recorded.outputs["enhanced_prompt_id"] == ids[name], name
        if outcome == "adopted":  # the older run that made it now says so
            assert recorded.id == rid(n) and recorded.id in report.runs_backfilled, name
        elif outcome == "named":  # the id the keys gave was free
            assert recorded.id == rid(n) and recorded.id in report.runs_created, name
        else:  # a new id; the one the keys gave is kept beside it
            assert recorded.id != rid(n) and recorded.id in report.runs_created, name
            assert recorded.metadata["legacy_run_id"] == named_by[ids[name]], name
        gained = [run_id for run_id in new["history"] if run_id not in old["history"]]
        assert [run_id for run_id in new["history"] if run_id in old["history"]] == old["history"]
        assert set(gained) <= {recorded.id}, name
    # The runs the keys named and that did not make the prompt keep their status and result.
    for run_id in (rid(24), rid(25), rid(26), rid(29)):
        run = backend.raw["runs"].find_one({"_id": run_id})
        old_run = runs_before[run_id]
        assert (run["model_type"], run["status"]) == (old_run["model_type"], old_run["status"])
        assert run["outputs"].get("enhanced_prompt_id") == old_run["outputs"].get(
            "enhanced_prompt_id"
        )
    assert after["enhanced"] == before["enhanced"]
    assert store.verify().ok

    again = store.migrate(dry_run=False)
    assert again.changes == 0 and again.prompts_examined == 0
    assert answers(store, ids) == after


def test_a_second_prompt_naming_the_same_free_id_gets_a_new_run_that_keeps_the_name(
    backend: Backend,
) -> None:
    ids = insert_named_run_variants(backend.raw)
    backend.store.migrate(dry_run=False)
    first = backend.store.get_enhancement_details(ids["first of two naming one free id"])
    second = backend.store.get_enhancement_details(ids["second of two naming one free id"])
    assert first is not None and second is not None
    assert first.run_id == rid(30) and second.run_id not in (None, rid(30))
    assert backend.store.get_run(second.run_id).metadata == {
        "migrated_from": "legacy prompt parameters",
        "legacy_run_id": rid(30),
    }
    malformed = backend.store.get_enhancement_details(ids["malformed id"])
    assert malformed is not None and malformed.run_id is not None
    assert backend.store.get_run(malformed.run_id).metadata["legacy_run_id"] == "rs_not-a-run-id"


def test_a_dry_run_predicts_each_named_run_shape_and_changes_nothing(backend: Backend) -> None:
    insert_named_run_variants(backend.raw)
    before = backend.snapshot()
    dry = backend.store.migrate()
    assert backend.snapshot() == before
    applied = backend.store.migrate(dry_run=False)
    assert dry.prompts_stripped == applied.prompts_stripped and dry.prompts_left == []
    assert sorted(dry.runs_backfilled) == sorted(applied.runs_backfilled)
    # Created runs under a new id differ between the two; those under the named id do not.
    assert len(dry.runs_created) == len(applied.runs_created)
    named = {rid(20), rid(30)}
    assert named & set(dry.runs_created) == named & set(applied.runs_created) == named


def test_repair_migrates_prompts_whose_named_run_id_is_taken(backend: Backend) -> None:
    insert_legacy(backend.raw)
    insert_named_run_variants(backend.raw)
    legacy_ids = legacy_prompt_ids(backend)
    report = backend.store.repair()
    assert sorted(report.migration.prompts_stripped) == legacy_ids
    assert report.migration.prompts_left == [] and report.unrepairable == []
    assert backend.store.verify().ok


def test_overwriting_a_prompt_whose_named_run_id_is_taken_records_its_keys_first(
    backend: Backend,
) -> None:
    ids = insert_named_run_variants(backend.raw)
    store = backend.store
    for name, (n, outcome) in NAMED_RUN_VARIANTS.items():
        prompt_id = ids[name]
        old_text = store.get_prompt(prompt_id).prompt_text
        result = store.enhance_prompt(prompt_id, create_new=False, force_overwrite=True)
        assert result.enhanced_prompt_id == prompt_id, name
        parameters = store.get_prompt(prompt_id).parameters
        assert not set(parameters) & LEGACY_ENHANCEMENT_KEYS, name
        # What the keys knew is on a run: the enhancement they recorded, with its model.
        earlier = [
            run
            for run in store.get_enhancement_history(prompt_id)
            if run.id != result.run_id
            and run.status == "completed"
            and run.outputs.get("enhanced_prompt_id") == prompt_id
        ]
        assert [run.outputs["enhanced_text"] for run in earlier] == [old_text], name
        assert earlier[0].outputs["enhancement_model"] == "pixtral", name
        if outcome == "adopted":
            assert earlier[0].id == rid(n), name
    verified = store.verify()
    # Only the run of the made-another-prompt shape still lacks outputs: migrate fills those.
    assert verified.prompts_with_legacy_keys == [] and verified.incomplete_enhance_runs == [rid(26)]


def test_a_prompt_the_database_refuses_keeps_its_keys_is_named_and_the_others_migrate(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = insert_named_run_variants(backend.raw)
    refused = ids["failed enhance run"]  # the first prompt, by id, to need a new run id
    # A new id that a run already has, as a racing writer could cause: the insert is refused.
    colliding = iter([rid(25)])
    monkeypatch.setattr(
        "cosmos_mongo.legacy.new_run_id", lambda: next(colliding, None) or new_run_id()
    )
    report = backend.store.migrate(dry_run=False)

    assert len(report.prompts_left) == 1
    left = report.prompts_left[0]
    assert left.startswith(f"{refused}: left with its legacy keys")
    assert f"creating run {rid(25)}" in left and rid(24) in left
    others = sorted(prompt_id for prompt_id in ids.values() if prompt_id != refused)
    assert sorted(report.prompts_stripped) == others
    assert legacy_prompt_ids(backend) == [refused]
    assert backend.raw["runs"].find_one({"_id": rid(25)})["model_type"] == "transfer"
    assert backend.store.verify().prompts_with_legacy_keys == [refused]

    retried = backend.store.migrate(dry_run=False)
    assert retried.prompts_stripped == [refused] and retried.prompts_left == []
    assert backend.store.verify().ok


def test_the_cli_migrates_a_predecessor_file_holding_every_named_run_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    source = from_documents(tmp_path / "cosmos.db", *named_run_variants())
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli, list(args), catch_exceptions=False)

    assert invoke("import-sqlite", str(source)).exit_code == 0
    verify = invoke("verify")
    assert verify.exit_code == 1 and "migrate --apply" in verify.output
    applied = invoke("migrate", "--apply", "--json")
    assert applied.exit_code == 0, applied.output
    report = json.loads(applied.stdout)
    assert len(report["prompts_stripped"]) == len(NAMED_RUN_VARIANTS)
    assert report["prompts_left"] == []
    assert invoke("verify").exit_code == 0
    repaired = invoke("repair")
    assert repaired.exit_code == 0 and "cannot" not in repaired.output


def test_migrate_and_repair_print_each_prompt_they_could_not_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cosmos_mongo.embedded import open_embedded

    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "data"))
    with open_embedded(tmp_path / "data") as database:
        ids = insert_named_run_variants(database)
    runner = CliRunner()
    wanted = f"cannot migrate: {ids['failed enhance run']}: left with its legacy keys"
    for command in (["migrate", "--apply"], ["repair"]):
        colliding = iter([rid(25)])  # the command's first new run id is taken
        monkeypatch.setattr(
            "cosmos_mongo.legacy.new_run_id",
            lambda colliding=colliding: next(colliding, None) or new_run_id(),
        )
        result = runner.invoke(cli, command, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert [line for line in result.output.splitlines() if "cannot migrate" in line] == [
            line for line in result.output.splitlines() if line.startswith(wanted)
        ], result.output
        assert wanted in result.output and rid(25) in result.output
