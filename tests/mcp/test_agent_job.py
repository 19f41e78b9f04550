"""The agent's whole job (issue 24, gaps): `confirm: true` never stands in for a user the
client can ask, runs are recorded and moved through their statuses, prompts are edited, stuck
work is repaired, lists page by an opaque cursor that inserts cannot shift, and completions
match names."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from mcp import types

from tests.mcp.conftest import Harness
from tests.mcp.test_agent_interface import answering, harmful_calls
from tests.mcp.test_tools import call, error

pytestmark = pytest.mark.anyio


# -- confirmation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_confirm_true_still_asks_a_user_the_client_can_ask(
    harness: Harness, mode: str
) -> None:
    calls = await harmful_calls(harness)
    prompt = await harness.store.create_prompt("Rain on a neon street", {}, {})
    await harness.store.create_run(prompt.id, {}, model_type="enhance", initial_status="running")
    calls += [
        ("update_prompt", {"prompt_id": prompt.id, "parameters": {"seed": 7}}, "Edit"),
        ("repair_store", {"stale_after_minutes": 0}, "Repair"),
    ]
    before = harness.snapshot()
    no = answering("decline")
    async with harness.connect(client_options={"elicitation_callback": no, "mode": mode}) as s:
        for tool, arguments, _ in calls:
            text = await error(s, tool, **arguments, confirm=True)
            assert "did not confirm" in text and "Nothing was changed" in text
    assert harness.snapshot() == before and len(no.asked) == len(calls)
    for (_, _, word), question in zip(calls, no.asked, strict=True):
        assert word in question


# -- runs of other models --------------------------------------------------------------------------


async def test_an_agent_records_an_upscale_run_moves_it_along_and_attaches_its_outputs(
    harness: Harness,
) -> None:
    prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    async with harness.connect() as session:
        run = await call(
            session,
            "create_run",
            prompt_id=prompt.id,
            model_type="upscale",
            execution_config={"num_gpus": 8},
        )
        assert run["status"] == "pending" and run["model_type"] == "upscale"
        running = await call(session, "update_run", run_id=run["id"], status="running")
        assert running["started_at"] is not None and running["completed_at"] is None
        done = await call(
            session,
            "update_run",
            run_id=run["id"],
            status="completed",
            outputs={"video": "outputs/robot_4k.mp4"},
            log_path="outputs/robot_4k.log",
        )
        listed = await call(session, "list_runs", prompt_id=prompt.id, model_type="upscale")
    assert done["completed_at"] is not None and done["execution_config"] == {"num_gpus": 8}
    stored = await harness.store.get_run(run["id"])
    assert stored is not None and stored.status == "completed"
    assert stored.outputs == {"video": "outputs/robot_4k.mp4"}
    assert stored.log_path == "outputs/robot_4k.log"
    assert [each["id"] for each in listed["runs"]] == [run["id"]]


async def test_update_run_leaves_enhance_runs_to_the_enhancement_tools(harness: Harness) -> None:
    prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    enhanced = await harness.store.enhance_prompt(prompt.id, enhanced_text="A robot, slowly.")
    before = harness.snapshot()
    async with harness.connect() as session:
        refused = await error(session, "update_run", run_id=enhanced.run_id, status="failed")
        nothing = await error(session, "update_run", run_id=enhanced.run_id)
        recorded = await error(session, "create_run", prompt_id=prompt.id, model_type="enhance")
    assert "enhance run" in refused and "Nothing was changed" in refused
    assert "give at least one of status" in nothing
    assert "Invalid argument `model_type`" in recorded
    assert harness.snapshot() == before


# -- editing a prompt ------------------------------------------------------------------------------


async def test_update_prompt_sets_parameters_and_inputs_key_by_key_once_the_user_agrees(
    harness: Harness,
) -> None:
    prompt = await harness.store.create_prompt(
        "A robot arm stacks blocks", {"video": "inputs/a.mp4"}, {"name": "robot", "seed": 1}
    )
    change = {"prompt_id": prompt.id, "parameters": {"seed": 7}, "inputs": {"depth": "d.mp4"}}
    no, yes = answering("decline"), answering("accept")
    before = harness.snapshot()
    async with harness.connect(client_options={"elicitation_callback": no}) as session:
        assert "did not confirm" in await error(session, "update_prompt", **change, confirm=True)
    assert harness.snapshot() == before
    async with harness.connect() as session:  # a client that cannot ask
        assert "cannot ask" in await error(session, "update_prompt", **change)
    assert harness.snapshot() == before
    async with harness.connect(client_options={"elicitation_callback": yes}) as session:
        edited = await call(session, "update_prompt", **change)
    assert edited["parameters"] == {"name": "robot", "seed": 7}
    assert edited["inputs"] == {"video": "inputs/a.mp4", "depth": "d.mp4"}
    assert edited["prompt_text"] == "A robot arm stacks blocks"
    (question,) = yes.asked
    assert prompt.id in question and "seed" in question and "depth" in question


# -- repairing stuck work --------------------------------------------------------------------------


async def test_repair_store_settles_a_stuck_enhancement_once_the_user_agrees(
    harness: Harness,
) -> None:
    prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    stuck = await harness.store.create_run(
        prompt.id, {}, model_type="enhance", initial_status="running"
    )
    no, yes = answering("decline"), answering("accept")
    async with harness.connect(client_options={"elicitation_callback": no}) as session:
        await error(session, "repair_store", stale_after_minutes=0, confirm=True)
        assert (await harness.store.get_run(stuck.id)).status == "running"  # type: ignore[union-attr]
    async with harness.connect(client_options={"elicitation_callback": yes}) as session:
        report = await call(session, "repair_store", stale_after_minutes=0)
        verified = await call(session, "verify_enhancements", quick=True)
    assert report["rolled_back"] == [stuck.id] and report["quick"] is True
    assert verified["ok"] and len(yes.asked) == 1 and "Repair" in yes.asked[0]
    assert (await harness.store.get_run(stuck.id)).status == "failed"  # type: ignore[union-attr]


# -- cursor paging ---------------------------------------------------------------------------------

CURSOR_TOOLS = [
    "list_prompts",
    "search_prompts",
    "list_enhanced_prompts",
    "get_enhancement_history",
    "list_runs",
]


async def _add(harness: Harness, tool: str, root: str, count: int) -> None:
    for i in range(count):
        if tool in ("list_prompts", "search_prompts"):
            await harness.store.create_prompt(f"Added robot prompt {i}", {}, {})
        elif tool in ("list_enhanced_prompts", "get_enhancement_history"):
            await harness.store.enhance_prompt(root, enhanced_text=f"Added rewrite {i}.")
        else:
            await harness.store.create_run(root, {"i": i})


@pytest.mark.parametrize("tool", CURSOR_TOOLS)
async def test_five_items_added_between_pages_shift_nothing_when_paging_by_cursor(
    harness: Harness, tool: str
) -> None:
    root = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    arguments: dict[str, Any] = {
        "list_runs": {"prompt_id": root.id},
        "get_enhancement_history": {"prompt_id": root.id},
        "search_prompts": {"query": "robot"},
    }.get(tool, {})
    await _add(harness, tool, root.id, 10)
    async with harness.connect() as session:
        expected = [item["id"] for item in _items(await call(session, tool, **arguments))]
        by_cursor = await call(session, tool, limit=4, **arguments)
        by_offset = await call(session, tool, limit=4, **arguments)
        await _add(harness, tool, root.id, 5)  # newer than every item listed so far
        seen = [item["id"] for item in _items(by_cursor)]
        cursor = by_cursor["next_cursor"]
        while cursor is not None:
            answer = await call(session, tool, limit=4, cursor=cursor, **arguments)
            assert answer["next_offset"] is None
            seen += [item["id"] for item in _items(answer)]
            cursor = answer["next_cursor"]
        shifted = await call(session, tool, limit=4, offset=4, **arguments)
    assert seen == expected  # each item once, in order, the new ones not slipped in
    offset_ids = [item["id"] for item in _items(by_offset) + _items(shifted)]
    assert len(set(offset_ids)) < len(offset_ids)  # what offsets did: items shown twice


def _items(answer: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = answer.get("prompts", answer.get("runs"))
    return items


async def test_a_cursor_resumes_after_a_page_the_byte_cap_cut(harness: Harness) -> None:
    for i in range(12):
        await harness.store.create_prompt(f"Prompt {i} " + "x" * 3_000, {}, {})
    expected = [p.id for p in await harness.store.list_prompts(limit=100)]
    seen: list[str] = []
    async with harness.connect(max_bytes=20_000) as session:
        answer = await call(session, "list_prompts", limit=12)
        assert answer["capped"] == "bytes" and answer["next_cursor"] is not None
        while True:
            seen += [item["id"] for item in answer["prompts"]]
            if answer["next_cursor"] is None:
                break
            answer = await call(session, "list_prompts", limit=12, cursor=answer["next_cursor"])
    assert seen == expected


async def test_a_cursor_is_refused_for_another_listing_with_an_offset_or_forged(
    harness: Harness,
) -> None:
    for i in range(3):
        await harness.store.create_prompt(f"Prompt {i}", {}, {})
    async with harness.connect() as session:
        cursor = (await call(session, "list_prompts", limit=1))["next_cursor"]
        other = await error(session, "list_prompts", enhanced=True, cursor=cursor)
        both = await error(session, "list_prompts", offset=1, cursor=cursor)
        forged = await error(session, "list_prompts", cursor="eyIkbmUiOiBudWxsfQ")
    assert "Invalid argument `cursor`: it continues another listing" in other
    assert "not both" in both
    assert "not a cursor this server gave" in forged


# -- completions -----------------------------------------------------------------------------------


async def test_completions_match_names_and_text_not_only_id_prefixes(harness: Harness) -> None:
    named = await harness.store.create_prompt("Arm stacks blocks", {}, {"name": "Robot-arm"})
    texted = await harness.store.create_prompt("A ROBOT walks a dog", {}, {})
    await harness.store.create_prompt("Waves roll onto a beach", {}, {"name": "waves"})
    template = types.PromptReference(name="enhance_cosmos_prompt")
    async with harness.connect() as session:
        robot = await session.complete(template, {"name": "prompt_id", "value": "robot"})
        resource = await session.complete(
            types.ResourceTemplateReference(uri="cosmos://prompts/{prompt_id}"),
            {"name": "prompt_id", "value": "robot"},
        )
        prefix = await session.complete(template, {"name": "prompt_id", "value": named.id[:-2]})
    assert robot.completion.values == [texted.id, named.id]  # newest first
    assert resource.completion.values == [texted.id, named.id]
    assert prefix.completion.values == [named.id]


async def test_a_cursor_walk_passes_a_hand_inserted_document_with_an_object_id(
    harness: Harness,
) -> None:
    older = [await harness.store.create_prompt(f"Older {i}", {}, {}) for i in range(2)]
    middle = older[-1].created_at + timedelta(seconds=1)
    # As mongosh inserts it: an ObjectId _id, and a field that breaks the model.
    harness.raw["prompts"].insert_one(
        {"_id": ObjectId(), "prompt_text": 5, "created_at": middle, "updated_at": middle}
    )
    newer = []
    for i in range(3):
        prompt = await harness.store.create_prompt(f"Newer {i}", {}, {})
        stamp = middle + timedelta(seconds=1 + i)
        harness.raw["prompts"].update_one(
            {"_id": prompt.id}, {"$set": {"created_at": stamp, "updated_at": stamp}}
        )
        newer.append(prompt.id)
    seen: list[str] = []
    async with harness.connect() as session:
        answer = await call(session, "list_prompts", limit=4)
        while True:
            seen += [item["id"] for item in answer["prompts"]]
            if answer["next_cursor"] is None:
                break
            answer = await call(session, "list_prompts", limit=4, cursor=answer["next_cursor"])
    assert seen == [*reversed(newer), *reversed([p.id for p in older])]
