"""The four query helpers (the seed's test plan), on every backend, new data and old."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cosmos_mongo.errors import PromptNotFoundError
from cosmos_mongo.models import new_prompt_id
from tests.conftest import Backend
from tests.integration.legacy_data import T0, insert_legacy, rid


def seeded(store: Any) -> dict[str, Any]:
    original = store.create_prompt(
        "A robot arm stacks blocks", {"video": "in.mp4"}, {"name": "robot"}
    )
    created = store.enhance_prompt(
        original.id, enhanced_text="A robot arm stacks three blocks slowly."
    )
    plain = store.create_prompt("Waves roll onto a beach", {}, {})
    overwritten = store.enhance_prompt(plain.id, create_new=False, enhancement_model="template-v1")
    return {"original": original, "created": created, "plain": plain, "overwritten": overwritten}


def test_get_enhancement_details(store: Any) -> None:
    data = seeded(store)
    created = store.get_enhancement_details(data["created"].enhanced_prompt_id)
    assert created.run_id == data["created"].run_id
    assert created.enhanced_text == "A robot arm stacks three blocks slowly."
    assert created.enhancement_model == "agent"
    assert (created.original_prompt_id, created.enhanced_prompt_id) == (
        data["original"].id,
        data["created"].enhanced_prompt_id,
    )
    assert created.enhanced_at.tzinfo is not None and created.duration_seconds == 0.0
    in_place = store.get_enhancement_details(data["plain"].id)
    assert in_place.run_id == data["overwritten"].run_id
    assert in_place.original_prompt_id == in_place.enhanced_prompt_id == data["plain"].id
    assert in_place.enhancement_model == "template-v1"
    # The original of a create_new enhancement is not itself enhanced.
    assert store.get_enhancement_details(data["original"].id) is None
    assert store.get_enhancement_details(new_prompt_id()) is None


def test_get_enhancement_details_ignores_failed_runs_and_picks_the_latest(store: Any) -> None:
    prompt = store.create_prompt("A cat sits on a mat", {}, {})
    first = store.enhance_prompt(
        prompt.id, create_new=False, enhanced_text="A cat sits on a red mat."
    )
    second = store.enhance_prompt(
        prompt.id, create_new=False, enhanced_text="A grey cat sits on a red mat."
    )
    assert store.get_enhancement_details(prompt.id).run_id == second.run_id
    store.revert_enhancement(second.run_id)
    assert store.get_enhancement_details(prompt.id).run_id == first.run_id


def test_get_original_prompt(store: Any) -> None:
    data = seeded(store)
    assert store.get_original_prompt(data["created"].enhanced_prompt_id) == data["original"]
    assert store.get_original_prompt(data["plain"].id) is None  # an overwrite has no original
    assert store.get_original_prompt(data["original"].id) is None
    assert store.get_original_prompt(new_prompt_id()) is None


def test_list_enhanced_prompts(backend: Backend) -> None:
    store = backend.store
    data = seeded(store)
    listed = store.list_enhanced_prompts()
    assert {p.id for p in listed} == {data["plain"].id, data["created"].enhanced_prompt_id}
    assert [p.created_at for p in listed] == sorted((p.created_at for p in listed), reverse=True)
    assert all(p.enhanced for p in listed)
    assert [p.id for p in store.list_enhanced_prompts(limit=1)] == [listed[0].id]
    assert data["original"].id not in {p.id for p in listed}


def test_list_enhanced_prompts_filter_is_the_partial_index_predicate() -> None:
    from cosmos_mongo import enhancement

    flow = enhancement.list_enhanced_prompts(10)
    step = next(flow)
    assert step.filter == {"parameters.enhanced": True}
    assert list(step.sort) == [("created_at", -1), ("_id", -1)]


def test_get_enhancement_history(store: Any) -> None:
    data = seeded(store)
    again = store.enhance_prompt(
        data["created"].enhanced_prompt_id,
        create_new=False,
        enhanced_text="A robot arm stacks three blocks very slowly.",
    )
    history = store.get_enhancement_history(data["created"].enhanced_prompt_id)
    assert [run.id for run in history] == [again.run_id, data["created"].run_id]
    assert [run.id for run in store.get_enhancement_history(data["original"].id)] == [
        data["created"].run_id
    ]
    assert all(run.model_type == "enhance" for run in history)
    with pytest.raises(PromptNotFoundError):  # no prompt has it and no run names it
        store.get_enhancement_history(new_prompt_id())


def test_queries_work_with_old_structure(backend: Backend) -> None:
    ids = insert_legacy(backend.raw)
    store = backend.store
    # create_new with a run lacking enhancement_model and enhanced_at
    b = store.get_enhancement_details(ids["B"])
    assert b.run_id == rid(1)
    assert b.enhancement_model == "pixtral"  # from execution_config.model
    assert b.enhanced_at == datetime(2024, 1, 1, 12, 30, tzinfo=UTC)  # from outputs.timestamp
    assert (b.original_prompt_id, b.duration_seconds) == (ids["A"], 45.2)
    # overwrite with a run
    c = store.get_enhancement_details(ids["C"])
    assert (c.run_id, c.original_prompt_id, c.enhanced_prompt_id) == (rid(2), ids["C"], ids["C"])
    # enhanced prompts with no run at all: the legacy keys answer
    d = store.get_enhancement_details(ids["D"])
    assert (d.run_id, d.enhancement_model, d.original_prompt_id) == (None, "llava", ids["E"])
    assert d.enhanced_at == datetime(2024, 1, 1, 12, 56, tzinfo=UTC)
    f = store.get_enhancement_details(ids["F"])
    assert (f.run_id, f.original_prompt_id, f.enhanced_prompt_id) == (None, ids["F"], ids["F"])
    assert store.get_enhancement_details(ids["A"]) is None

    assert store.get_original_prompt(ids["B"]).id == ids["A"]
    assert store.get_original_prompt(ids["D"]).id == ids["E"]  # from parent_prompt_id
    assert store.get_original_prompt(ids["C"]) is None
    assert store.get_original_prompt(ids["F"]) is None

    assert [p.id for p in store.list_enhanced_prompts()] == [ids["F"], ids["D"], ids["C"], ids["B"]]
    assert [r.id for r in store.get_enhancement_history(ids["A"])] == [rid(1)]
    assert store.get_enhancement_history(ids["D"]) == []

    lineage = store.get_lineage(ids["D"])
    assert lineage.root_id == ids["E"]
    assert [(e.parent_id, e.child_id, e.run) for e in lineage.ancestors] == [
        (ids["E"], ids["D"], None)
    ]
    assert [e.child_id for e in store.get_lineage(ids["A"]).descendants] == [ids["B"]]
    assert [r.id for r in store.get_lineage(ids["C"]).in_place] == [rid(2)]
    assert store.get_prompt(ids["A"]).updated_at is None  # readers accept the older shape
    assert store.get_prompt(ids["B"]).created_at > T0


def test_new_enhancements_on_legacy_prompts_join_the_old_lineage(backend: Backend) -> None:
    ids = insert_legacy(backend.raw)
    grandchild = backend.store.enhance_prompt(
        ids["D"], enhanced_text="A drone glides low over green farmland."
    )
    lineage = backend.store.get_lineage(grandchild.enhanced_prompt_id)
    assert [e.parent_id for e in lineage.ancestors] == [ids["D"], ids["E"]]
    assert lineage.ancestors[0].run.id == grandchild.run_id and lineage.ancestors[1].run is None
    assert lineage.root_id == ids["E"]
    assert [e.child_id for e in backend.store.get_lineage(ids["E"]).descendants] == [
        ids["D"],
        grandchild.enhanced_prompt_id,
    ]
