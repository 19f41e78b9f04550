"""Print docs/MCP.md's "Tool reference": every tool called for real, in-process, in order.

    python scripts/mcp_reference.py > /tmp/reference.md

tests/test_docs.py runs :func:`examples` and checks that the documented calls are these calls
and the documented answers have these answers' fields, so the reference cannot drift.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import mongomock
from mcp import Client
from mongomock_motor import AsyncMongoMockClient

from cosmos_mongo import AsyncCosmosStore
from cosmos_mongo.enhancers import TemplateEnhancer
from mcp_server import build_server

SHORTEN_AT = 90


def fresh_server() -> Any:
    """The server the reference is made on: an empty in-memory store, the offline enhancer."""
    client: Any = mongomock.MongoClient(tz_aware=True)
    store = AsyncCosmosStore(
        AsyncMongoMockClient(mock_mongo_client=client)["cosmos"], enhancer=TemplateEnhancer()
    )
    return build_server(store=store)


async def examples() -> list[tuple[str, dict[str, Any], Any]]:
    """(tool, arguments, structuredContent) for one call of every tool, on a fresh store.

    Only tools are called, and every id an argument names comes from an earlier answer, so
    a client can replay the reference as it stands (tests/test_docs.py does)."""
    done: list[tuple[str, dict[str, Any], Any]] = []
    async with Client(fresh_server()) as session:

        async def call(tool: str, **arguments: Any) -> Any:
            result = await session.call_tool(tool, arguments)
            assert not result.is_error, result.content
            done.append((tool, arguments, result.structured_content))
            return result.structured_content

        prompt = await call(
            "create_prompt",
            prompt_text="A robot arm picks up three wooden blocks and stacks them",
            inputs={"video": "inputs/robot.mp4"},
            parameters={"name": "robot-blocks"},
        )
        pid = prompt["id"]
        await call("get_prompt", prompt_id=pid)
        enhanced = await call("enhance_prompt", prompt_id=pid)
        child = enhanced["enhanced_prompt_id"]
        await call("list_prompts", limit=1)
        await call("search_prompts", query="robot", limit=1, offset=1)
        await call("list_enhanced_prompts", limit=5)
        await call("get_enhancement_details", prompt_id=child)
        await call("get_original_prompt", enhanced_prompt_id=child)
        await call("get_enhancement_history", prompt_id=pid, limit=5)
        await call("get_lineage", prompt_id=child)
        await call("list_runs", prompt_id=pid, model_type="enhance")
        await call("get_run", run_id=enhanced["run_id"])
        await call("rate_run", run_id=enhanced["run_id"], rating=4)
        job = await call(
            "create_run", prompt_id=pid, model_type="upscale", execution_config={"num_gpus": 8}
        )
        await call(
            "update_run",
            run_id=job["id"],
            status="completed",
            outputs={"video": "outputs/robot_4k.mp4"},
            log_path="outputs/robot_4k.log",
        )
        await call(
            "update_prompt",
            prompt_id=pid,
            parameters={"guidance": 8},
            inputs={"depth": "inputs/robot_depth.mp4"},
            confirm=True,
        )
        in_place = await call(
            "enhance_prompt",
            prompt_id=child,
            create_new=False,
            enhanced_text="A robot arm slowly stacks three wooden blocks on a workbench.",
            enhancement_model="claude",
            confirm=True,
        )
        await call("revert_enhancement", run_id=in_place["run_id"], confirm=True)
        await call("read_document", document_id=pid, max_chars=120)
        await call("verify_enhancements")
        await call("repair_store", confirm=True)
        scratch = await call("create_prompt", prompt_text="A scratch prompt to delete")
        await call("delete_prompt", prompt_id=scratch["id"], confirm=True)
    return done


def _shortened(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SHORTEN_AT:
        return value[: SHORTEN_AT - 3] + "..."
    if isinstance(value, list):
        return [_shortened(item) for item in value]
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    return value


def markdown(calls: list[tuple[str, dict[str, Any], Any]]) -> str:
    parts = [
        "## Tool reference\n\n"
        "Every example below is a real call and answer, made in this order on a fresh database "
        "by `python scripts/mcp_reference.py` (ids and times will differ).\n"
    ]
    for tool, arguments, answer in calls:
        request = json.dumps({"name": tool, "arguments": arguments}, indent=2)
        result = json.dumps(_shortened(answer), indent=2, ensure_ascii=False)
        parts.append(
            f"### `{tool}`\n\n```json\n{request}\n```\n\n"
            f"Result (`structuredContent`, long strings shortened here):\n\n"
            f"```json\n{result}\n```\n"
        )
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(asyncio.run(examples())), end="")
