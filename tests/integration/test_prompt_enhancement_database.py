"""What enhancement writes: the run holds every detail, the prompt only the flag."""

from __future__ import annotations

from typing import Any

import pytest

from cosmos_mongo.validation import LEGACY_ENHANCEMENT_KEYS
from tests.conftest import Backend

OUTPUT_KEYS = {
    "enhanced_text",
    "original_prompt_id",
    "enhanced_prompt_id",
    "enhancement_model",
    "enhanced_at",
    "duration_seconds",
}


def original(store: Any) -> Any:
    return store.create_prompt(
        "A robot arm stacks blocks",
        {"video": "in.mp4", "depth": "d.mp4"},
        {"name": "robot", "negative_prompt": "blurry", "guidance": 7},
    )


def test_create_new_preserves_original_prompt(backend: Backend) -> None:
    source = original(backend.store)
    result = backend.store.enhance_prompt(source.id)
    assert backend.store.get_prompt(source.id) == source  # untouched, not even the flag
    new = backend.store.get_prompt(result.enhanced_prompt_id)
    assert new.prompt_text == result.enhanced_text
    assert "A robot arm stacks blocks" in new.prompt_text  # the template keeps the words
    assert new.inputs == source.inputs
    assert new.parameters == {
        "name": "robot_enhanced",
        "negative_prompt": "blurry",
        "guidance": 7,
        "enhanced": True,
    }
    assert not set(new.parameters) & LEGACY_ENHANCEMENT_KEYS


def test_create_new_run_is_the_complete_record(backend: Backend) -> None:
    source = original(backend.store)
    result = backend.store.enhance_prompt(source.id)
    run = backend.raw["runs"].find_one({"_id": result.run_id})
    assert (run["model_type"], run["status"], run["prompt_id"]) == (
        "enhance",
        "completed",
        source.id,
    )
    assert set(run["outputs"]) == OUTPUT_KEYS
    assert run["outputs"]["original_prompt_id"] == source.id
    assert run["outputs"]["enhanced_prompt_id"] == result.enhanced_prompt_id != source.id
    assert run["outputs"]["enhancement_model"] == "template-v1"
    assert run["execution_config"]["model"] == "template-v1"
    assert run["execution_config"]["create_new"] is True
    assert run["execution_config"]["original_prompt_text"] == source.prompt_text
    assert result.status == "completed" and result.created_new


def test_overwrite_updates_enhancement_metadata(backend: Backend) -> None:
    source = original(backend.store)
    result = backend.store.enhance_prompt(
        source.id,
        create_new=False,
        enhancement_model="robot-writer",
        enhanced_text="Enhanced prompt: A robot arm stacks **three** blocks.",
    )
    assert result.enhanced_text == "A robot arm stacks three blocks."  # label and markdown cleaned
    stored = backend.raw["prompts"].find_one({"_id": source.id})
    assert stored["prompt_text"] == result.enhanced_text
    assert stored["parameters"] == {**source.parameters, "enhanced": True}  # only the flag
    run = backend.raw["runs"].find_one({"_id": result.run_id})
    assert run["outputs"]["original_prompt_id"] == run["outputs"]["enhanced_prompt_id"] == source.id
    assert run["outputs"]["enhancement_model"] == "robot-writer"
    assert run["execution_config"]["original_prompt_text"] == "A robot arm stacks blocks"
    assert run["execution_config"]["create_new"] is False


def test_no_legacy_key_appears_in_any_prompt_this_code_writes(backend: Backend) -> None:
    store = backend.store
    a = original(store)
    b = store.enhance_prompt(a.id).enhanced_prompt_id
    store.enhance_prompt(b, create_new=False, force_overwrite=True)
    c = store.enhance_prompt(
        b, enhanced_text="A robot arm stacks blocks at dusk."
    ).enhanced_prompt_id
    store.update_prompt(c, parameters={"seed": 3})
    store.revert_enhancement(store.get_enhancement_details(b).run_id)
    store.migrate(dry_run=False)
    store.repair()
    for prompt in backend.raw["prompts"].find({}):
        assert not set(prompt["parameters"]) & LEGACY_ENHANCEMENT_KEYS, prompt


def test_lineage_over_three_generations_mixing_create_new_and_overwrite(backend: Backend) -> None:
    store = backend.store
    root = original(store)
    g1 = store.enhance_prompt(root.id)
    g1_in_place = store.enhance_prompt(
        g1.enhanced_prompt_id,
        create_new=False,
        enhanced_text="A robot arm stacks blocks, rewritten.",
    )
    g2 = store.enhance_prompt(g1.enhanced_prompt_id, enhanced_text="Generation two text.")
    g2b = store.enhance_prompt(g1.enhanced_prompt_id, enhanced_text="A sibling of generation two.")
    g3 = store.enhance_prompt(g2.enhanced_prompt_id, enhanced_text="Generation three text.")
    root_overwrite = store.enhance_prompt(
        root.id,
        create_new=False,
        force_overwrite=True,
        enhanced_text="The root, rewritten in place.",
    )

    from_leaf = store.get_lineage(g3.enhanced_prompt_id)
    assert from_leaf.root_id == root.id
    assert [(e.parent_id, e.child_id, e.depth) for e in from_leaf.ancestors] == [
        (g2.enhanced_prompt_id, g3.enhanced_prompt_id, 1),
        (g1.enhanced_prompt_id, g2.enhanced_prompt_id, 2),
        (root.id, g1.enhanced_prompt_id, 3),
    ]
    assert [e.run.id for e in from_leaf.ancestors] == [g3.run_id, g2.run_id, g1.run_id]
    assert from_leaf.descendants == []

    from_root = store.get_lineage(root.id)
    assert from_root.ancestors == [] and from_root.root_id == root.id
    assert [(e.child_id, e.depth) for e in from_root.descendants] == [
        (g1.enhanced_prompt_id, 1),
        (g2.enhanced_prompt_id, 2),
        (g2b.enhanced_prompt_id, 2),
        (g3.enhanced_prompt_id, 3),
    ]
    # Overwrites are in-place enhancements, never parents.
    assert {run.id for run in from_root.in_place} == {g1_in_place.run_id, root_overwrite.run_id}
    assert all(e.parent_id != e.child_id for e in from_root.descendants + from_leaf.ancestors)
    assert set(from_root.prompts) == {
        root.id,
        g1.enhanced_prompt_id,
        g2.enhanced_prompt_id,
        g2b.enhanced_prompt_id,
        g3.enhanced_prompt_id,
    }
    assert from_root.missing_prompt_ids == []


def test_lineage_survives_cycles_and_missing_prompts(backend: Backend) -> None:
    store = backend.store
    a = original(store)
    b = store.enhance_prompt(a.id, enhanced_text="Child text.")
    # A corrupt edge back from the child to the root makes a cycle.
    backend.raw["runs"].insert_one(
        {
            "_id": "rs_" + "c" * 32,
            "prompt_id": b.enhanced_prompt_id,
            "model_type": "enhance",
            "status": "completed",
            "execution_config": {},
            "created_at": a.created_at,
            "outputs": {"original_prompt_id": b.enhanced_prompt_id, "enhanced_prompt_id": a.id},
        }
    )
    lineage = store.get_lineage(a.id)
    assert [e.child_id for e in lineage.descendants] == [b.enhanced_prompt_id]
    assert [e.parent_id for e in lineage.ancestors] == [b.enhanced_prompt_id]
    # A deleted middle prompt is reported, not fatal.
    c = store.enhance_prompt(b.enhanced_prompt_id, enhanced_text="Grandchild text.")
    backend.raw["prompts"].delete_one({"_id": b.enhanced_prompt_id})
    from_leaf = store.get_lineage(c.enhanced_prompt_id)
    assert b.enhanced_prompt_id in from_leaf.missing_prompt_ids
    assert [e.parent_id for e in from_leaf.ancestors][:1] == [b.enhanced_prompt_id]


def test_lineage_of_unknown_prompt_raises_not_found(store: Any) -> None:
    from cosmos_mongo import PromptNotFoundError
    from cosmos_mongo.models import new_prompt_id

    with pytest.raises(PromptNotFoundError):
        store.get_lineage(new_prompt_id())
