"""Resource subscriptions (2026-07-28 ``subscriptions/listen``): a followed run or prompt
announces its change, also when another process writes it, on the embedded default."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client, types
from mcp.client.session import IncomingMessage
from mcp.client.subscriptions import ResourceUpdated, Subscription

from cosmos_mongo import AsyncCosmosStore
from cosmos_mongo.embedded import AsyncEmbeddedDatabase, open_embedded
from cosmos_mongo.enhancers import TemplateEnhancer
from mcp_server import ServerSettings, build_server

pytestmark = pytest.mark.anyio
REPO = Path(__file__).parent.parent.parent


@asynccontextmanager
async def embedded_store(data_dir: Path) -> AsyncIterator[AsyncCosmosStore]:
    store = AsyncCosmosStore(
        AsyncEmbeddedDatabase(open_embedded(data_dir)), enhancer=TemplateEnhancer()
    )
    try:
        yield store
    finally:
        await store.aclose()


async def in_another_process(data_dir: Path, code: str) -> None:
    """Run ``code`` with ``store``, a CosmosStore on the same embedded database, in a new
    Python process."""
    script = (
        "import sys\n"
        "from cosmos_mongo import CosmosStore\n"
        "from cosmos_mongo.embedded import open_embedded\n"
        "with open_embedded(sys.argv[1]) as db:\n"
        "    store = CosmosStore(db)\n"
        f"    {code}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with anyio.fail_after(60):
        await anyio.run_process([sys.executable, "-c", script, str(data_dir)], env=env)


async def next_update(subscription: Subscription) -> str:
    with anyio.fail_after(20):
        event = await subscription.__anext__()
    assert isinstance(event, ResourceUpdated), event
    return event.uri


async def test_a_subscribed_run_announces_its_completion_by_another_process(
    tmp_path: Path,
) -> None:
    async with embedded_store(tmp_path) as store:
        prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
        run = await store.create_run(prompt.id, {}, initial_status="running")
        other = await store.create_run(prompt.id, {}, initial_status="running")
        server = build_server(ServerSettings(), store=store)
        async with Client(server) as session:
            uri = f"cosmos://runs/{run.id}"
            async with session.listen(resource_subscriptions=[uri]) as subscription:
                assert subscription.honored.resource_subscriptions == [uri]
                await in_another_process(
                    tmp_path, f"store.update_run_status({other.id!r}, 'completed')"
                )
                await in_another_process(
                    tmp_path, f"store.update_run_status({run.id!r}, 'completed')"
                )
                assert await next_update(subscription) == uri  # the other run is not followed
                read = await session.read_resource(uri)
                assert '"status": "completed"' in read.contents[0].text  # type: ignore[union-attr]


async def test_a_subscribed_prompt_announces_each_rewrite_made_through_the_server(
    tmp_path: Path,
) -> None:
    async with embedded_store(tmp_path) as store:
        prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
        server = build_server(ServerSettings(), store=store)
        async with Client(server) as session:
            uri = f"cosmos://prompts/{prompt.id}"
            async with session.listen(resource_subscriptions=[uri]) as subscription:
                for text in ("A robot arm stacks red blocks", "A robot arm stacks blue blocks"):
                    await store.update_prompt(prompt.id, prompt_text=text)
                    assert await next_update(subscription) == uri


async def test_a_malformed_id_in_a_subscription_does_not_stop_the_others(
    tmp_path: Path,
) -> None:
    async with embedded_store(tmp_path) as store:
        prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
        server = build_server(ServerSettings(), store=store)
        async with Client(server) as session:
            bad, good = "cosmos://runs/not-an-id", f"cosmos://prompts/{prompt.id}"
            async with session.listen(resource_subscriptions=[bad, good]) as subscription:
                await store.update_prompt(prompt.id, prompt_text="A robot arm stacks cubes")
                assert await next_update(subscription) == good


# resources/subscribe is how 2025-11-25 clients follow a resource; the SDK marks it deprecated.
@pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")
async def test_a_legacy_subscription_announces_another_processs_change_until_unsubscribed(
    tmp_path: Path,
) -> None:
    updates: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(message.params.uri)
            arrived.set()

    async with embedded_store(tmp_path) as store:
        prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
        run = await store.create_run(prompt.id, {}, initial_status="running")
        server = build_server(ServerSettings(), store=store)
        async with Client(server, mode="legacy", message_handler=on_message) as session:
            uri = f"cosmos://runs/{run.id}"
            assert session.server_capabilities is not None
            resources = session.server_capabilities.resources
            assert resources is not None and resources.subscribe
            await session.session.subscribe_resource(uri)
            await session.session.subscribe_resource(uri)  # twice is once
            await in_another_process(tmp_path, f"store.update_run_status({run.id!r}, 'completed')")
            with anyio.fail_after(20):
                await arrived.wait()
            assert updates == [uri]
            await session.session.unsubscribe_resource(uri)
            arrived = anyio.Event()
            await in_another_process(tmp_path, f"store.set_run_rating({run.id!r}, 5)")
            followed = await session.session.subscribe_resource(f"cosmos://prompts/{prompt.id}")
            assert followed is not None
            await store.update_prompt(prompt.id, prompt_text="A robot arm stacks cubes")
            with anyio.fail_after(20):
                await arrived.wait()
            assert updates == [uri, f"cosmos://prompts/{prompt.id}"]  # not the unfollowed run
