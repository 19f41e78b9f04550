"""Index reconciliation: existing indexes are read first, reused when identical, reported when
they conflict, and only the library's own are ever dropped.

mongomock creates a duplicate index where a server refuses, so :class:`ServerIndexRules`
raises what a server raises (codes 85 and 86) and the tests see what users would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pymongo.errors import OperationFailure

from cosmos_mongo import CosmosStore, StorageError
from cosmos_mongo import queries as q
from cosmos_mongo.cli import cli
from cosmos_mongo.config import Settings
from tests.conftest import Backend
from tests.test_contract import CountingDatabase


def definition(entry: dict[str, Any]) -> tuple[Any, ...]:
    return q.index_definition(entry["key"], entry)


class ServerIndexRules(CountingDatabase):
    """``create_index`` refuses as MongoDB does: another name for the same index is
    IndexOptionsConflict (85), the same name for another index IndexKeySpecsConflict (86)."""

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if method == "create_index":
            keys = dict(args[0])
            wanted = q.index_definition(keys, kwargs)
            for found in self._database[name].list_indexes():
                entry = dict(found)
                if entry["name"] == kwargs["name"] and definition(entry) != wanted:
                    raise OperationFailure("An existing index has the same name", code=86)
                if entry["name"] != kwargs["name"] and definition(entry)[0] == wanted[0]:
                    raise OperationFailure("Index already exists with a different name", code=85)
        return super().call(name, method, target, args, kwargs)


def names(database: Any, collection: str) -> list[str]:
    return sorted(entry["name"] for entry in database[collection].list_indexes())


@pytest.fixture
def bare(sync_backend: Backend) -> Backend:
    """The backend with no index but ``_id_`` (some fixtures make the indexes up front)."""
    for collection in (q.PROMPTS, q.RUNS):
        for name in names(sync_backend.raw, collection):
            if name != "_id_":
                sync_backend.raw[collection].drop_index(name)
    return sync_backend


def test_an_identical_index_under_another_name_is_reused(bare: Backend) -> None:
    raw = bare.raw
    raw["prompts"].create_index([("created_at", -1), ("_id", -1)], name="dba_newest")
    store = bare.over(ServerIndexRules)
    used = store.ensure_indexes()
    assert "dba_newest" in used and "prompts_created_at_id" not in used
    assert "prompts_created_at_id" not in names(raw, "prompts")
    assert store.ensure_indexes() == used  # again: nothing to do
    report = store.reconcile_indexes()
    assert report.reused == ["prompts_created_at_id as dba_newest"] and report.in_order


def test_our_index_defined_otherwise_is_reported_then_recreated_by_reconcile(
    bare: Backend,
) -> None:
    raw = bare.raw
    raw["prompts"].create_index([("created_at", -1)], name="prompts_created_at_id")
    raw["runs"].create_index([("status", 1)], name="dba_status")  # not ours
    store = bare.over(ServerIndexRules)
    with pytest.raises(StorageError) as refused:
        store.ensure_indexes()
    assert "prompts.prompts_created_at_id exists as {created_at: -1}" in str(refused.value)
    assert "init --reconcile --apply" in str(refused.value)
    dry = store.reconcile_indexes()
    assert dry.recreated == ["prompts_created_at_id"] and not dry.applied
    assert "dba_status" in names(raw, "runs")
    before = [dict(e) for e in raw["prompts"].list_indexes()]
    assert [dict(e) for e in raw["prompts"].list_indexes()] == before  # a dry run changes nothing
    applied = store.reconcile_indexes(apply=True)
    assert applied.applied and applied.recreated == ["prompts_created_at_id"]
    fixed = {e["name"]: dict(e) for e in raw["prompts"].list_indexes()}
    assert definition(fixed["prompts_created_at_id"])[0] == (("created_at", -1), ("_id", -1))
    assert "dba_status" in names(raw, "runs")  # never touched
    assert store.reconcile_indexes().in_order and store.ensure_indexes()


def test_another_index_with_our_keys_and_other_options_is_a_named_conflict(
    bare: Backend,
) -> None:
    raw = bare.raw
    raw["runs"].create_index(
        [("status", 1), ("created_at", -1), ("_id", -1)], name="dba_status", sparse=True
    )
    store = bare.over(ServerIndexRules)
    with pytest.raises(StorageError) as refused:
        store.ensure_indexes()
    message = str(refused.value)
    assert "runs.dba_status" in message and "runs_status_created_at_id" in message
    assert "drop or rename that index" in message
    report = store.reconcile_indexes(apply=True)
    assert report.conflicts and "dba_status" in names(raw, "runs")  # left alone


def test_reconcile_drops_the_retired_indexes_of_earlier_versions(bare: Backend) -> None:
    raw = bare.raw
    store = bare.over(ServerIndexRules)
    store.ensure_indexes()
    raw["runs"].create_index([("status", 1), ("created_at", -1)], name="runs_created_at")
    report = store.reconcile_indexes(apply=True)
    assert report.dropped == ["runs.runs_created_at"]
    assert "runs_created_at" not in names(raw, "runs")


def test_cli_init_reconcile_is_a_dry_run_until_apply(tmp_path: Path) -> None:
    with CosmosStore.connect(settings=Settings(data_dir=tmp_path, ensure_indexes=False)) as store:
        store.db["prompts"].create_index([("created_at", -1)], name="prompts_created_at_id")
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path)]
    refused = runner.invoke(cli, [*base, "prompt", "list"])
    assert refused.exit_code == 1 and "init --reconcile --apply" in refused.output
    dry = runner.invoke(cli, [*base, "init", "--reconcile"])
    assert dry.exit_code == 0, dry.output
    assert "would be dropped and recreated: prompts_created_at_id" in dry.output
    assert "Dry run: nothing changed" in dry.output
    applied = runner.invoke(cli, [*base, "init", "--reconcile", "--apply"])
    assert (
        applied.exit_code == 0 and "dropped and recreated: prompts_created_at_id" in applied.output
    )
    assert runner.invoke(cli, [*base, "prompt", "list"]).exit_code == 0
    assert "Indexes are in order." in runner.invoke(cli, [*base, "init", "--reconcile"]).output
    assert runner.invoke(cli, [*base, "init", "--apply"]).exit_code == 2


def test_no_ensure_indexes_opens_without_creating_any(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path), "--no-ensure-indexes", "prompt", "list"]
    )
    assert result.exit_code == 0, result.output
    with CosmosStore.connect(settings=Settings(data_dir=tmp_path, ensure_indexes=False)) as store:
        assert set(names(store.db, "prompts")) <= {"_id_"}


def _as_a_server_lists(spec: q.IndexSpec, name: str) -> dict[str, Any]:
    """``spec`` as pymongo decodes a server's listIndexes: SON throughout, ``v: 2``."""
    from bson.son import SON

    def son(value: Any) -> Any:
        if isinstance(value, dict):
            return SON((key, son(item)) for key, item in value.items())
        return value

    return {"v": 2, "key": SON(spec.keys), "name": name, **son(spec.options)}


def test_a_server_listing_in_son_matches_our_definitions_and_changes_nothing() -> None:
    listed = {
        collection: [
            _as_a_server_lists(spec, spec.name)
            for spec in q.INDEXES
            if spec.collection == collection
        ]
        for collection in (q.PROMPTS, q.RUNS)
    }
    plan = q.plan_indexes(listed)
    assert sorted(plan.present) == sorted(spec.name for spec in q.INDEXES)
    assert not (plan.create or plan.changed or plan.conflicts or plan.reused)


def test_a_text_index_as_mongod_lists_it_is_left_alone() -> None:
    from bson.son import SON

    text_entry = {
        "v": 2,
        "key": SON([("_fts", "text"), ("_ftsx", 1)]),
        "name": q.TEXT_INDEX_NAME,
        "weights": SON([("parameters.name", 1), ("prompt_text", 1)]),
        "default_language": "none",
        "language_override": "language",
        "textIndexVersion": 3,
    }
    listed = {
        q.PROMPTS: [text_entry]
        + [_as_a_server_lists(s, s.name) for s in q.INDEXES if s.collection == q.PROMPTS],
        q.RUNS: [_as_a_server_lists(s, s.name) for s in q.INDEXES if s.collection == q.RUNS],
    }
    plan = q.plan_indexes(listed)
    assert not (plan.create or plan.changed or plan.conflicts or plan.retired)
    assert q.index_definition(text_entry["key"], text_entry)[0] == (("_fts", "text"), ("_ftsx", 1))


def test_a_dba_partial_index_listed_in_son_is_reused_not_duplicated() -> None:
    spec = q.INDEXES[0]
    listed = {q.PROMPTS: [_as_a_server_lists(spec, "parameters.enhanced_1_created_at_-1__id_-1")]}
    plan = q.plan_indexes(listed)
    assert (spec.name, "parameters.enhanced_1_created_at_-1__id_-1") in plan.reused
    assert spec not in plan.create


def test_a_partial_filter_of_another_value_type_is_another_index() -> None:
    spec = q.INDEXES[0]
    other = {
        **_as_a_server_lists(spec, spec.name),
        "partialFilterExpression": {"parameters.enhanced": 1},
    }
    plan = q.plan_indexes({q.PROMPTS: [other]})
    assert [changed.name for changed, _ in plan.changed] == [spec.name]
    assert "partialFilterExpression={parameters.enhanced: 1}" in plan.changed[0][1]


def test_the_text_index_made_on_mongomock_does_not_break_the_index_checks(
    mock_store: CosmosStore,
) -> None:
    mock_store.ensure_indexes()
    mock_store.db[q.PROMPTS].create_index(
        list(q.TEXT_INDEX_KEYS), name=q.TEXT_INDEX_NAME, **q.TEXT_INDEX_OPTIONS
    )
    mock_store.ensure_indexes()
    assert mock_store.reconcile_indexes().in_order
