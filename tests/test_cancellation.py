"""A cancelled async enhancement settles its run: the caller (an MCP client that cancels or
times out) is gone, so the run is marked failed at once instead of staying ``running``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mongomock
import pytest
from mongomock_motor import AsyncMongoMockClient

from cosmos_mongo import AsyncCosmosStore
from cosmos_mongo.embedded import AsyncEmbeddedDatabase, open_embedded


class HangingEnhancer:
    """Answers never; says when it was asked."""

    model = "hanging-llm"

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    def enhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        raise AssertionError("the async driver is under test")

    async def aenhance(self, prompt_text: str, inputs: Mapping[str, Any]) -> str:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@asynccontextmanager
async def async_store(kind: str, tmp_path: Path, enhancer: Any) -> AsyncIterator[AsyncCosmosStore]:
    if kind == "mongomock-motor":
        client: Any = mongomock.MongoClient(tz_aware=True)
        yield AsyncCosmosStore(
            AsyncMongoMockClient(mock_mongo_client=client)["c"], enhancer=enhancer
        )
        return
    database = open_embedded(tmp_path / "data")
    try:
        store = AsyncCosmosStore(AsyncEmbeddedDatabase(database), enhancer=enhancer)
        await store.ensure_indexes()
        yield store
    finally:
        database.close()


@pytest.mark.parametrize("kind", ["mongomock-motor", "embedded-async"])
@pytest.mark.parametrize("create_new", [True, False])
def test_a_cancelled_enhancement_marks_its_run_failed_and_the_prompt_can_be_deleted(
    kind: str, create_new: bool, tmp_path: Path
) -> None:
    async def scenario() -> None:
        enhancer = HangingEnhancer()
        async with async_store(kind, tmp_path, enhancer) as store:
            prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
            call = asyncio.create_task(store.enhance_prompt(prompt.id, create_new=create_new))
            await asyncio.wait_for(enhancer.asked.wait(), 10)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            runs = await store.list_runs(prompt.id)
            assert [(run.status, run.model_type) for run in runs] == [("failed", "enhance")]
            assert "cancelled" in (runs[0].error_message or "")
            assert runs[0].completed_at is not None
            assert await store.get_prompt(prompt.id) == prompt  # nothing half-written
            assert len(await store.list_prompts()) == 1
            assert (await store.verify()).half_finished == []
            deleted = await store.delete_prompt(prompt.id)  # no force needed
            assert deleted.prompt_id == prompt.id

    asyncio.run(scenario())
