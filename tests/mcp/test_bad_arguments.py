"""Random wrong or malicious arguments to every tool: an error result, no crash, no change."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_server import TOOLS
from tests.mcp.conftest import Harness

operators = st.sampled_from([{"$ne": None}, {"$gt": ""}, {"$regex": ".*"}, {"$where": "1"}])
not_a_string = st.one_of(
    operators, st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2)
)
huge = st.just("x" * 20_000)


def _not_json_null(text: str) -> bool:
    try:
        return json.loads(text) is not None
    except ValueError:
        return True


# The SDK reads a string holding a JSON array, object or null as that JSON (clients send JSON
# inside strings), so "null" is a valid null for an optional flag; any other string is not.
flag_text = st.text(max_size=5).filter(_not_json_null)
BAD: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(
        not_a_string,
        huge,
        st.sampled_from(
            [
                "",
                "ps_$where",
                "ps_" + "0" * 7,
                "ps_" + "0" * 65,
                "ps_" + "G" * 32,
                "rs_'; drop",
                "ps_" + "0" * 32 + "\x00",
            ]
        ),
    ),
    "text": st.one_of(not_a_string, huge, st.sampled_from(["", "   ", "a\x00b"])),
    "mapping": st.one_of(
        st.text(max_size=5),
        st.integers(),
        st.lists(st.integers(), max_size=2),
        st.sampled_from([{"$set": 1}, {"a.b": 1}, {"": 1}, {"k": "a\x00"}]),
    ),
    "parameters": st.one_of(
        st.text(max_size=5),
        st.sampled_from(
            [
                {"$set": 1},
                {"a.b": 1},
                {"parent_prompt_id": "ps_1"},
                {"enhancement_model": "x"},
                {"enhanced": "yes"},
            ]
        ),
    ),
    **{
        kind: st.one_of(
            st.sampled_from(out_of_range),
            st.text(max_size=3),
            st.booleans(),
            operators,
            st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9).filter(
                lambda f: f != int(f)
            ),
        )
        for kind, out_of_range in {
            "limit": [0, -1, 10**7],
            "offset": [-1, -(10**9)],
            "rating": [0, 6, -1, 10**9],
            "minutes": [-1, 10**7],
        }.items()
    },
    "bool": st.one_of(flag_text, st.integers(), operators, st.lists(st.booleans(), max_size=1)),
    "model": st.one_of(not_a_string, st.just(""), st.just("m" * 300)),
    "choice": st.one_of(not_a_string, st.sampled_from(["", "dream", "ENHANCE", "done"])),
    "long": st.one_of(not_a_string, st.just("x" * 20_000)),
}
KIND = {
    "prompt_id": "id",
    "run_id": "id",
    "enhanced_prompt_id": "id",
    "prompt_text": "text",
    "query": "text",
    "enhanced_text": "text",
    "inputs": "mapping",
    "parameters": "parameters",
    "limit": "limit",
    "offset": "offset",
    "max_chars": "limit",
    "document_id": "id",
    "force": "bool",
    "match": "choice",
    "confirm": "bool",
    "rating": "rating",
    "create_new": "bool",
    "force_overwrite": "bool",
    "enhanced": "bool",
    "enhancement_model": "model",
    "model_type": "choice",
    "status": "choice",
    "execution_config": "mapping",
    "metadata": "mapping",
    "outputs": "mapping",
    "log_path": "long",
    "error_message": "long",
    "quick": "bool",
    "stale_after_minutes": "minutes",
}


def valid_arguments(tool: str, prompt_id: str, run_id: str) -> dict[str, Any]:
    base: dict[str, dict[str, Any]] = {
        "get_prompt": {"prompt_id": prompt_id},
        "list_prompts": {"limit": 5, "offset": 0, "enhanced": True},
        "search_prompts": {"query": "robot", "limit": 5, "offset": 0, "match": "substring"},
        "list_enhanced_prompts": {"limit": 5, "offset": 0},
        "get_enhancement_details": {"prompt_id": prompt_id},
        "get_original_prompt": {"enhanced_prompt_id": prompt_id},
        "get_enhancement_history": {"prompt_id": prompt_id, "limit": 5, "offset": 0},
        "get_lineage": {"prompt_id": prompt_id, "limit": 5, "offset": 0},
        "get_run": {"run_id": run_id},
        "list_runs": {
            "prompt_id": prompt_id,
            "model_type": "transfer",
            "status": "pending",
            "limit": 5,
            "offset": 0,
        },
        "read_document": {"document_id": prompt_id, "offset": 0, "max_chars": 1000},
        "verify_enhancements": {},
        "create_prompt": {
            "prompt_text": "A new prompt",
            "inputs": {"video": "v.mp4"},
            "parameters": {"name": "n"},
        },
        "enhance_prompt": {
            "prompt_id": prompt_id,
            "create_new": True,
            "enhanced_text": "Rewritten.",
            "enhancement_model": "agent",
            "force_overwrite": False,
            "confirm": True,
        },
        "revert_enhancement": {"run_id": run_id, "confirm": True},
        "delete_prompt": {"prompt_id": prompt_id, "force": False, "confirm": True},
        "rate_run": {"run_id": run_id, "rating": 3},
        "create_run": {
            "prompt_id": prompt_id,
            "model_type": "upscale",
            "execution_config": {"gpus": 8},
            "metadata": {"job": "j1"},
            "status": "pending",
        },
        "update_run": {
            "run_id": run_id,
            "status": "running",
            "outputs": {"video": "v.mp4"},
            "log_path": "run.log",
            "error_message": "none yet",
            "metadata": {"job": "j1"},
        },
        "update_prompt": {
            "prompt_id": prompt_id,
            "prompt_text": "Edited",
            "parameters": {"guidance": 8},
            "inputs": {"depth": "d.mp4"},
            "confirm": True,
        },
        "repair_store": {"quick": True, "stale_after_minutes": 10, "confirm": True},
    }
    return base[tool]


MUTABLE = sorted((tool, name) for tool in TOOLS for name in valid_arguments(tool, "p", "r"))


@pytest.mark.parametrize(("tool", "argument"), MUTABLE, ids=[f"{t}.{a}" for t, a in MUTABLE])
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_bad_argument_gives_an_error_result_and_changes_nothing(
    harness: Harness, tool: str, argument: str, data: Any
) -> None:
    bad = data.draw(BAD[KIND[argument]], label=argument)

    async def attempt() -> None:
        prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
        run = await harness.store.create_run(prompt.id, {})
        arguments = {**valid_arguments(tool, prompt.id, run.id), argument: bad}
        before = harness.snapshot()
        async with harness.connect() as session:
            result = await session.call_tool(tool, arguments)
        assert result.is_error, (tool, arguments, result.structured_content)
        assert "Traceback" not in result.content[0].text
        assert harness.snapshot() == before

    anyio.run(attempt)
