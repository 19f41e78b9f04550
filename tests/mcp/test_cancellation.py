"""An enhancement whose client cancels or times out leaves no run ``running``: with the
server's HTTP enhancer hanging, and with the client's sampling callback hanging. Waits are
bounded by events and timeouts, never sleeps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, MCPError, types
from mcp.client.context import ClientRequestContext

from cosmos_mongo.enhancers import OpenAICompatibleEnhancer
from tests.mcp.conftest import Harness

pytestmark = pytest.mark.anyio


async def cancel_once(asked: anyio.Event, call: Callable[[], Awaitable[Any]]) -> None:
    """Make ``call`` and cancel it (as a client that gives up does) once ``asked`` is set."""
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            scope = anyio.CancelScope()

            async def calling() -> None:
                with scope:
                    await call()
                    raise AssertionError("the call was expected to hang until cancelled")

            group.start_soon(calling)
            await asked.wait()
            scope.cancel()


async def assert_settled_and_deletable(session: Client, harness: Harness, prompt_id: str) -> None:
    runs = await harness.store.list_runs(prompt_id)
    assert all(run.status != "running" for run in runs), runs
    verified = await session.call_tool("verify_enhancements", {"quick": True})
    assert verified.structured_content is not None
    assert verified.structured_content["half_finished"] == []
    deleted = await session.call_tool("delete_prompt", {"prompt_id": prompt_id, "confirm": True})
    assert not deleted.is_error, deleted.content
    assert await harness.store.get_prompt(prompt_id) is None


async def test_a_cancelled_call_to_a_hanging_server_enhancer_marks_its_run_failed(
    harness: Harness,
) -> None:
    asked = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        asked.set()
        await anyio.Event().wait()
        raise AssertionError("unreachable")

    transport = httpx.MockTransport(hang)
    enhancer = OpenAICompatibleEnhancer(
        "http://chat.test/v1", "llama-3.1-8b", transport=transport, async_transport=transport
    )
    prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    async with harness.connect(enhancer=enhancer) as session:
        await cancel_once(
            asked, lambda: session.call_tool("enhance_prompt", {"prompt_id": prompt.id})
        )
        runs = await harness.store.list_runs(prompt.id)
        assert [run.status for run in runs] == ["failed"]
        assert "cancelled" in (runs[0].error_message or "")
        await assert_settled_and_deletable(session, harness, prompt.id)


async def test_a_client_timeout_on_a_hanging_server_enhancer_marks_its_run_failed(
    harness: Harness,
) -> None:
    asked = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        asked.set()
        await anyio.Event().wait()
        raise AssertionError("unreachable")

    transport = httpx.MockTransport(hang)
    enhancer = OpenAICompatibleEnhancer(
        "http://chat.test/v1", "llama-3.1-8b", transport=transport, async_transport=transport
    )
    prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    async with harness.connect(enhancer=enhancer) as session:
        with anyio.move_on_after(2):  # the client's own time limit
            await session.call_tool("enhance_prompt", {"prompt_id": prompt.id})
        assert asked.is_set()
        runs = await harness.store.list_runs(prompt.id)
        assert [run.status for run in runs] == ["failed"]
        await assert_settled_and_deletable(session, harness, prompt.id)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_cancelled_call_whose_sampling_hangs_leaves_no_run_running(
    harness: Harness, mode: str
) -> None:
    asked = anyio.Event()

    async def hanging_model(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked.set()
        await anyio.Event().wait()
        raise AssertionError("unreachable")

    prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    options = {"sampling_callback": hanging_model, "mode": mode}
    async with harness.connect(client_options=options) as session:
        await cancel_once(
            asked, lambda: session.call_tool("enhance_prompt", {"prompt_id": prompt.id})
        )
        await assert_settled_and_deletable(session, harness, prompt.id)


async def test_a_json_rpc_request_timeout_sends_cancelled_and_the_run_is_marked_failed(
    harness: Harness,
) -> None:
    """2025-11-25 over JSON-RPC: the client's read timeout sends notifications/cancelled."""
    asked = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        asked.set()
        await anyio.Event().wait()
        raise AssertionError("unreachable")

    transport = httpx.MockTransport(hang)
    enhancer = OpenAICompatibleEnhancer(
        "http://chat.test/v1", "llama-3.1-8b", transport=transport, async_transport=transport
    )
    prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    options = {"mode": "legacy", "read_timeout_seconds": 1}
    async with harness.connect(enhancer=enhancer, client_options=options) as session:
        with pytest.raises(MCPError, match="timed out"):
            await session.call_tool("enhance_prompt", {"prompt_id": prompt.id})
        assert asked.is_set()
        with anyio.fail_after(10):  # the server settles once the notification arrives
            await anyio.wait_all_tasks_blocked()
        runs = await harness.store.list_runs(prompt.id)
        assert [run.status for run in runs] == ["failed"]
        await assert_settled_and_deletable(session, harness, prompt.id)
