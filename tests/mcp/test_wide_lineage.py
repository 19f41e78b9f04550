"""A wide lineage (issue 24, defect 3): 600 children page through get_lineage, the lineage
resource answers a first page instead of logging a traceback, and the Mermaid diagram stays
far below Mermaid's 50,000-character default."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from cosmos_mongo import AsyncCosmosStore, CosmosStore
from cosmos_mongo.config import Settings
from cosmos_mongo.models import Lineage
from mcp_server import ServerSettings, build_server
from tests.mcp.test_tools import call

pytestmark = pytest.mark.anyio
CHILDREN = 600


def wide_tree(data_dir: Path, text: str) -> str:
    """A root prompt with 600 children in an embedded store (its lineage reads in a fraction of
    a second there); returns the root's id."""
    with CosmosStore.connect(settings=Settings(data_dir=data_dir)) as store:
        root = store.create_prompt("A robot arm stacks blocks", {}, {})
        for i in range(CHILDREN):
            store.enhance_prompt(root.id, enhanced_text=text.format(i=i))
    return root.id


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data_dir = tmp_path_factory.mktemp("wide")
    return data_dir, wide_tree(data_dir, "Robot rewrite number {i}.")


@asynccontextmanager
async def serving(data_dir: Path, **settings: Any) -> AsyncIterator[tuple[Client, Lineage]]:
    async with AsyncCosmosStore.connect(settings=Settings(data_dir=data_dir)) as store:
        root = (await store.list_prompts(limit=CHILDREN + 1))[-1]
        lineage = await store.get_lineage(root.id)
        async with Client(build_server(ServerSettings(**settings), store=store)) as session:
            yield session, lineage


@pytest.mark.parametrize("max_bytes", [1_000_000, 150_000])
async def test_get_lineage_pages_through_600_children_each_once_in_order(
    wide: tuple[Path, str], max_bytes: int
) -> None:
    async with serving(wide[0], max_bytes=max_bytes) as (session, lineage):
        await walk(session, lineage, max_bytes)


async def walk(session: Client, lineage: Lineage, max_bytes: int) -> None:
    expected = [edge.child_id for edge in lineage.descendants]
    seen: list[str] = []
    offset: int | None = 0
    capped: set[str | None] = set()
    while offset is not None:
        page = await call(
            session, "get_lineage", prompt_id=lineage.prompt_id, limit=250, offset=offset
        )
        assert page["offset"] == offset and page["descendants_total"] == CHILDREN
        named = {edge["child_id"] for edge in page["descendants"]}
        assert named <= set(page["prompts"])  # each child shown comes with its prompt
        assert len(page["prompts"]) == len(named) + 1  # and no prompt beyond them
        seen += [edge["child_id"] for edge in page["descendants"]]
        capped.add(page["capped"])
        offset = page["next_offset"]
    assert seen == expected
    # 250 asked, 100 allowed: capped by count at the default cap, by bytes under a small one.
    assert capped == ({"count", None} if max_bytes == 1_000_000 else {"bytes", None})


async def test_the_lineage_resource_answers_a_first_page_without_logging_an_error(
    wide: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        async with serving(wide[0]) as (session, lineage):
            resource = await session.read_resource(f"cosmos://prompts/{lineage.prompt_id}/lineage")
    text = resource.contents[0].text
    data = json.loads(text[text.index("\n<untrusted") :].split("\n", 2)[2].rsplit("\n", 1)[0])
    assert data["descendants_total"] == CHILDREN and len(data["descendants"]) == 100
    assert data["next_offset"] == 100 and "get_lineage with offset=100" in data["note"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_the_mermaid_diagram_of_600_children_draws_20_and_counts_the_rest(
    wide: tuple[Path, str],
) -> None:
    async with serving(wide[0]) as (session, lineage):
        tool = (await call(session, "get_lineage", prompt_id=lineage.prompt_id))["mermaid"]
        resource = await session.read_resource(f"cosmos://lineage/{lineage.prompt_id}")
    diagram = resource.contents[0].text
    for drawn in (tool, diagram):
        assert len(drawn) < 10_000
        assert len(re.findall(r"^    n0 -->", drawn, re.MULTILINE)) == 20
        assert '["+580 more"]' in drawn and re.search(r"^    n0 -.-> m0$", drawn, re.MULTILINE)


def test_the_mermaid_diagram_keeps_within_its_character_bound(tmp_path: Path) -> None:
    # Entity-coded text takes ten characters a character: the bound holds all the same.
    root_id = wide_tree(tmp_path, "\U0001f916 {i} " + "\U0001f916" * 60)
    with CosmosStore.connect(settings=Settings(data_dir=tmp_path)) as store:
        lineage = store.get_lineage(root_id)
    for max_chars in (3_000, 12_000):
        drawn = lineage.to_mermaid(max_children=1000, max_chars=max_chars)
        assert len(drawn) <= max_chars
        shown = len(re.findall(r"^    n0 -->", drawn, re.MULTILINE))
        assert 0 < shown < CHILDREN
        assert f'["+{CHILDREN - shown} more"]' in drawn


async def test_the_lineage_resource_under_a_tiny_cap_answers_within_it_without_a_traceback(
    wide: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        async with serving(wide[0], max_bytes=10_000) as (session, lineage):
            resource = await session.read_resource(f"cosmos://prompts/{lineage.prompt_id}/lineage")
    text = resource.contents[0].text  # type: ignore[union-attr]
    assert len(text.encode()) <= 10_000 and '"descendants_total": 600' in text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
