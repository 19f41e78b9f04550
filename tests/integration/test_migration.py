"""migrate(): tidy legacy data into runs, idempotently, with every helper answering the same."""

from __future__ import annotations

from typing import Any

from cosmos_mongo.validation import LEGACY_ENHANCEMENT_KEYS
from tests.conftest import Backend
from tests.integration.legacy_data import insert_legacy


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
