"""The agent's whole job (issue 24, gaps): `confirm: true` never stands in for a user the
client can ask, runs are recorded and moved through their statuses, prompts are edited, stuck
work is repaired, lists page by an opaque cursor that inserts cannot shift, and completions
match names."""

from __future__ import annotations

import pytest

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
    before = harness.snapshot()
    no = answering("decline")
    async with harness.connect(client_options={"elicitation_callback": no, "mode": mode}) as s:
        for tool, arguments, _ in calls:
            text = await error(s, tool, **arguments, confirm=True)
            assert "did not confirm" in text and "Nothing was changed" in text
    assert harness.snapshot() == before and len(no.asked) == len(calls)


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
