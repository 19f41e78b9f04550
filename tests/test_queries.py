"""The pure builders, tested as data."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from cosmos_mongo import queries as q
from tests.helpers.plans import plan_stages

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_indexes_match_the_data_contract() -> None:
    by_name = {spec.name: spec for spec in q.INDEXES}
    enhanced = by_name["prompts_enhanced_created_at_id"]
    assert enhanced.collection == q.PROMPTS
    assert list(enhanced.keys) == [("parameters.enhanced", 1), ("created_at", -1), ("_id", -1)]
    assert enhanced.options == {"partialFilterExpression": {"parameters.enhanced": True}}
    assert list(by_name["prompts_created_at_id"].keys) == [("created_at", -1), ("_id", -1)]
    assert list(by_name["runs_prompt_id_created_at_id"].keys) == [
        ("prompt_id", 1),
        ("created_at", -1),
        ("_id", -1),
    ]
    assert list(by_name["runs_model_type_created_at_id"].keys) == [
        ("model_type", 1),
        ("created_at", -1),
        ("_id", -1),
    ]
    # Every index that serves a listing ends in the listing's sort, so no in-memory sort.
    for spec in q.INDEXES:
        if ("created_at", -1) in spec.keys:
            assert list(spec.keys)[-2:] == list(q.NEWEST_FIRST), spec.name
    for name, field in [
        ("runs_original_prompt_id_created_at_id", "outputs.original_prompt_id"),
        ("runs_enhanced_prompt_id_created_at_id", "outputs.enhanced_prompt_id"),
        ("runs_status_created_at_id", "status"),
    ]:
        # Not partial: the $lookup joins on these fields cannot repeat a model_type predicate.
        assert list(by_name[name].keys) == [(field, 1), *q.NEWEST_FIRST]
        assert by_name[name].options == {}
    legacy = by_name["prompts_legacy_parent_prompt_id"]
    assert list(legacy.keys) == [("parameters.parent_prompt_id", 1)]
    assert legacy.options == {"sparse": True}
    assert len(by_name) == len(q.INDEXES)


def test_enhanced_filter_repeats_the_partial_index_predicate_at_top_level() -> None:
    assert q.enhanced_prompts_filter() == {"parameters.enhanced": True}


def test_search_filter_escapes_the_query() -> None:
    built = q.search_filter("a.b (c)*")
    pattern = {"$regex": re.escape("a.b (c)*"), "$options": "i"}
    assert built == {"$or": [{"prompt_text": pattern}, {"parameters.name": pattern}]}


def test_runs_filter_keeps_only_given_terms() -> None:
    assert q.runs_filter() == {}
    assert q.runs_filter("ps_1", None, "failed") == {"prompt_id": "ps_1", "status": "failed"}


def test_prompt_update_merges_parameters_key_by_key() -> None:
    assert q.prompt_update(NOW, "text", {"seed": 2, "name": "n"}) == {
        "$set": {
            "updated_at": NOW,
            "prompt_text": "text",
            "parameters.seed": 2,
            "parameters.name": "n",
        }
    }
    assert q.prompt_update(NOW) == {"$set": {"updated_at": NOW}}


def test_run_update_stamps_status_times() -> None:
    assert q.run_update(NOW, {"status": "running"}) == {
        "$set": {"updated_at": NOW, "status": "running", "started_at": NOW}
    }
    assert q.run_update(NOW, {"status": "failed"})["$set"]["completed_at"] == NOW
    assert q.run_update(NOW, {"rating": 3}) == {"$set": {"updated_at": NOW, "rating": 3}}


def test_run_document_for_a_running_run_has_started_at() -> None:
    document = q.run_document("rs_1", "ps_1", "enhance", "running", {"m": 1}, {}, NOW)
    assert document["started_at"] == NOW and "completed_at" not in document
    assert document["outputs"] == {} and document["created_at"] == document["updated_at"] == NOW


def test_deletion_preview_is_one_pipeline_over_prompts_with_a_runs_lookup() -> None:
    pipeline = q.deletion_preview_pipeline("ps_1")
    assert pipeline[0] == {"$match": {"_id": "ps_1"}}
    lookup = pipeline[1]["$lookup"]
    assert (lookup["from"], lookup["localField"], lookup["foreignField"]) == (
        "runs",
        "_id",
        "prompt_id",
    )


def test_the_plan_walker_reads_classic_sbe_and_sharded_shapes() -> None:
    scan = {"stage": "IXSCAN", "indexName": "runs_status_created_at_id"}
    classic = {"stage": "FETCH", "inputStage": scan}
    sbe = {"queryPlan": {"stage": "FETCH", "inputStage": scan}, "slotBasedPlan": {}}
    sharded = {"stage": "SHARD_MERGE", "shards": [{"shardName": "s0", "winningPlan": sbe}]}
    union = {"stage": "SORT_MERGE", "inputStages": [classic, scan]}
    for plan in (classic, sbe, sharded, union):
        assert "runs_status_created_at_id" in [s.get("indexName") for s in plan_stages(plan)]


def test_every_index_the_query_shape_table_names_exists() -> None:
    from benchmarks.run_all import QUERY_SHAPES

    ours = {spec.name for spec in q.INDEXES} | {"_id_", q.TEXT_INDEX_NAME}
    named = {
        word.strip("`,")
        for *_, index in QUERY_SHAPES
        for word in index.split()
        if word.strip("`,").startswith(("prompts_", "runs_", "_id_"))
    }
    assert named and named <= ours, named - ours
    assert ours - {"_id_"} <= named  # and every index serves some shape
