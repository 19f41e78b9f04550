"""The byte cap measures what the client receives, the same way when a page is cut and when
the answer is checked: a page near the cap gets shorter instead of failing."""

from __future__ import annotations

import pytest
from mcp.types import CallToolResult

from mcp_server.results import answer_size, compact_json
from tests.mcp.conftest import Harness

pytestmark = pytest.mark.anyio


def wire_size(result: CallToolResult) -> int:
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode())


async def test_a_page_of_prompts_with_many_short_parameters_gets_shorter_at_the_default_cap(
    harness: Harness,
) -> None:
    # Cut to half the 1 MB cap by their compact JSON, then measured with json.dumps' spaces,
    # these failed with "Ask for less".
    parameters = {f"param_{n:03d}": n % 10 for n in range(480)}
    for number in range(100):
        await harness.store.create_prompt(f"A robot arm stacks block {number}", {}, parameters)
    async with harness.connect() as session:
        first = await session.call_tool("list_prompts", {"limit": 100})
        assert not first.is_error, first.content
        page = first.structured_content
        assert page is not None
        assert page["capped"] == "bytes" and 1 <= page["returned"] < 100
        assert page["next_offset"] == page["returned"] and "byte cap" in page["note"]
        assert wire_size(first) <= 1_000_000
        rest = await session.call_tool("list_prompts", {"limit": 100, "offset": page["returned"]})
        assert not rest.is_error and rest.structured_content is not None
        assert page["returned"] + rest.structured_content["returned"] == 100


async def test_the_text_copy_is_the_compact_json_that_the_size_counts(harness: Harness) -> None:
    prompt = await harness.store.create_prompt("A robot arm", {}, {"a": 1})
    async with harness.connect() as session:
        result = await session.call_tool("get_prompt", {"prompt_id": prompt.id})
    assert result.structured_content is not None
    assert compact_json(result.structured_content) in result.content[0].text
    assert wire_size(result) <= answer_size(result.structured_content)


async def test_the_note_of_a_page_of_one_says_prompt_in_the_singular(harness: Harness) -> None:
    for number in range(3):
        await harness.store.create_prompt(f"A robot arm {number} " + "slowly " * 400, {}, {})
    async with harness.connect(max_bytes=10_000) as session:
        result = await session.call_tool("list_prompts", {"limit": 3})
    page = result.structured_content
    assert page is not None and page["returned"] == 1 and page["capped"] == "bytes"
    assert page["note"].startswith("Returned 1 prompt: the answer reached")


async def test_the_note_of_a_page_cut_by_bytes_names_the_cap_the_server_was_given(
    harness: Harness,
) -> None:
    # The page keeps room for its cursor; the note named that smaller budget (9,600 bytes).
    for number in range(3):
        await harness.store.create_prompt(f"A robot arm {number} " + "slowly " * 400, {}, {})
    async with harness.connect(max_bytes=10_000) as session:
        first = await session.call_tool("list_prompts", {"limit": 3})
        page = first.structured_content
        assert page is not None and page["capped"] == "bytes"
        following = await session.call_tool("list_prompts", {"cursor": page["next_cursor"]})
    assert "its 10,000-byte cap. Call again with offset=1 " in page["note"]
    resumed = following.structured_content
    assert resumed is not None and resumed["capped"] == "bytes"
    assert "its 10,000-byte cap. Call again with cursor=" in resumed["note"]


def nested(value: object, depth: int) -> object:
    return value if depth == 0 else {"k": nested(value, depth - 1)}


async def test_the_prompt_resource_stays_under_the_cap_with_deeply_indented_values(
    harness: Harness,
) -> None:
    # 1 KB of compact JSON, over 10 KB as the indented JSON string the resource sends.
    deep = nested([1] * 240, 6)
    prompt = await harness.store.create_prompt("A robot arm", {"deep": deep}, {"deep": deep})
    cap = 10_000
    async with harness.connect(max_bytes=cap) as session:
        resource = await session.read_resource(f"cosmos://prompts/{prompt.id}")
    assert len(resource.model_dump_json(by_alias=True).encode()) <= cap
    text = resource.contents[0].text
    assert "[cut by cosmos-mongo" in text
