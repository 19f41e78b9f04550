"""An enhancement as an MCP task, and its run is the task: on 2026-07-28 (the
``io.modelcontextprotocol/tasks`` extension) and on 2025-11-25 (task-augmented requests).
Real server processes share one embedded store: a second process reads the same task, a
restarted one still knows it, and ``tasks/cancel`` settles the run wherever it is sent. Every
wait is bounded; polling loops stop at a deadline."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import mcp_types
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from pydantic import ConfigDict

from cosmos_mongo import CosmosStore
from cosmos_mongo.embedded import open_embedded
from mcp_server.tasks import EXTENSION_ID, TaskIds
from tests.mcp import test_transports
from tests.mcp.conftest import Harness
from tests.mcp.test_transports import RawStdio, environment

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
DEADLINE = 60.0
http_server = test_transports.http_server  # the server over HTTP, with the token s3cret-token


class CreatedTask(mcp_types.Result):
    """The 2026-07-28 task handle (``resultType: "task"``)."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = "task"
    task_id: str
    status: str


class Answer(mcp_types.Result):
    model_config = ConfigDict(extra="allow")


async def never_resolved(result: CreatedTask, ctx: ClaimContext) -> mcp_types.CallToolResult:
    raise AssertionError("the tests take the handle with allow_claimed=True")


class TasksClient(ClientExtension):
    """Declares the tasks extension, so the server may answer with a task."""

    identifier = EXTENSION_ID

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=never_resolved)]


class HangingEndpoint:
    """An OpenAI-compatible endpoint that accepts connections and never answers: the
    enhancement stays running until it is cancelled."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        self.asked = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(connection)
            self.asked.set()

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def hanging() -> Iterator[HangingEndpoint]:
    endpoint = HangingEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


def template_env(data_dir: Path) -> dict[str, str]:
    return environment(data_dir, COSMOS_MONGO_ENHANCER="template")


def hanging_env(data_dir: Path, endpoint: HangingEndpoint) -> dict[str, str]:
    return environment(
        data_dir,
        COSMOS_MONGO_ENHANCER="openai",
        COSMOS_MONGO_ENHANCER_BASE_URL=endpoint.url,
        COSMOS_MONGO_ENHANCER_MODEL="slow-llm",
        COSMOS_MONGO_ENHANCER_MAX_RETRIES="0",
    )


def stored_prompt(data_dir: Path) -> str:
    with open_embedded(data_dir) as db:
        return CosmosStore(db).create_prompt("A robot arm stacks blocks", {}, {}).id


def stored_runs(data_dir: Path, prompt_id: str) -> list[Any]:
    with open_embedded(data_dir) as db:
        return list(CosmosStore(db).list_runs(prompt_id))


@asynccontextmanager
async def modern_server(env: dict[str, str]) -> AsyncIterator[Client]:
    """A server process on 2026-07-28, its client declaring the tasks extension."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server"], env=env)
    with anyio.fail_after(DEADLINE):
        async with Client(params, extensions=[TasksClient()]) as session:
            yield session


async def create(session: Client, prompt_id: str) -> CreatedTask:
    with anyio.fail_after(DEADLINE):
        handle = await session.session.call_tool(
            "enhance_prompt", {"prompt_id": prompt_id}, allow_claimed=True
        )
    assert isinstance(handle, CreatedTask), handle
    return handle


async def get(session: Client, task_id: str) -> dict[str, Any]:
    request = mcp_types.GetTaskRequest(params=mcp_types.GetTaskRequestParams(task_id=task_id))
    with anyio.fail_after(DEADLINE):
        answer = await session.session.send_request(request, Answer)
    return answer.model_dump(by_alias=True, exclude_none=True)


async def cancel(session: Client, task_id: str) -> dict[str, Any]:
    params = mcp_types.CancelTaskRequestParams(task_id=task_id)
    request = mcp_types.CancelTaskRequest(params=params)
    with anyio.fail_after(DEADLINE):
        answer = await session.session.send_request(request, Answer)
    return answer.model_dump(by_alias=True, exclude_none=True)


def without_text(task: dict[str, Any]) -> dict[str, Any]:
    result = {k: v for k, v in task["result"].items() if k != "content"}
    return {**task, "result": result}


async def until_not_working(session: Client, task_id: str) -> dict[str, Any]:
    with anyio.fail_after(DEADLINE):
        while (task := await get(session, task_id))["status"] == "working":
            await anyio.sleep(0.05)
    return task


# -- 2026-07-28: the io.modelcontextprotocol/tasks extension -----------------------------------


async def test_a_modern_enhancement_task_is_created_polled_read_by_another_process_and_restarted(
    tmp_path: Path,
) -> None:
    prompt_id = stored_prompt(tmp_path)
    env = template_env(tmp_path)
    async with modern_server(env) as first:
        handle = await create(first, prompt_id)
        assert handle.status in ("working", "completed")
        assert handle.meta is not None and "io.modelcontextprotocol/serverInfo" in handle.meta
        [run] = stored_runs(tmp_path, prompt_id)
        assert handle.task_id.startswith(run.id + ".")  # the task is the run
        done = await until_not_working(first, handle.task_id)
        assert done["status"] == "completed" and done["resultType"] == "complete"
        answer = done["result"]["structuredContent"]
        assert answer["run_id"] == run.id and answer["path"] == "server-enhancer"
        async with modern_server(env) as second:  # another process sharing the store
            seen = await get(second, handle.task_id)
            # The same task; the text copy's untrusted-data tag is fresh in every answer.
            assert without_text(seen) == without_text(done)
    async with modern_server(env) as restarted:
        again = await get(restarted, handle.task_id)
        assert again["status"] == "completed"
        assert again["result"]["structuredContent"] == answer


async def test_a_modern_task_cancelled_from_another_process_settles_its_run(
    tmp_path: Path, hanging: HangingEndpoint
) -> None:
    prompt_id = stored_prompt(tmp_path)
    env = hanging_env(tmp_path, hanging)
    async with modern_server(env) as first:
        handle = await create(first, prompt_id)
        assert handle.status == "working"
        async with modern_server(env) as second:
            assert (await get(second, handle.task_id))["status"] == "working"
            acknowledged = await cancel(second, handle.task_id)
            assert acknowledged["resultType"] == "complete"
            assert set(acknowledged) <= {"resultType", "_meta"}  # an empty acknowledgement
        cancelled = await get(first, handle.task_id)
        assert cancelled["status"] == "cancelled"
        assert "cancelled" in cancelled["statusMessage"]
    [run] = stored_runs(tmp_path, prompt_id)
    assert run.status == "failed" and "task was cancelled" in (run.error_message or "")
    with open_embedded(tmp_path) as db:
        prompt = CosmosStore(db).get_prompt(prompt_id)
    assert prompt is not None and prompt.prompt_text == "A robot arm stacks blocks"


async def test_a_task_id_that_was_not_issued_is_not_found(tmp_path: Path) -> None:
    prompt_id = stored_prompt(tmp_path)
    async with modern_server(template_env(tmp_path)) as session:
        handle = await create(session, prompt_id)
        run_id, _, mac = handle.task_id.partition(".")
        forged = f"{run_id}.{mac[0]}{'0' * (len(mac) - 1)}"
        for task_id in (forged, run_id, "rs_0000000000000000"):
            with pytest.raises(MCPError) as refused:
                await get(session, task_id)
            assert refused.value.error.code == mcp_types.INVALID_PARAMS


async def test_a_task_made_over_http_is_bound_to_the_callers_token(
    http_server: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"  # the HTTP server's store
    data_dir.mkdir(exist_ok=True)
    prompt_id = stored_prompt(data_dir)
    authorized = httpx2.AsyncClient(
        headers={"Authorization": "Bearer s3cret-token"}, timeout=DEADLINE
    )
    transport = streamable_http_client(f"{http_server}/mcp", http_client=authorized)
    async with authorized, Client(transport, extensions=[TasksClient()]) as session:
        handle = await create(session, prompt_id)
        assert (await until_not_working(session, handle.task_id))["status"] == "completed"
    # Over stdio there is no token: the same id, on the same store, is not this caller's.
    async with modern_server(environment(data_dir)) as stdio:
        with pytest.raises(MCPError) as refused:
            await get(stdio, handle.task_id)
        assert refused.value.error.code == mcp_types.INVALID_PARAMS


# -- 2025-11-25: task-augmented requests ----------------------------------------------------------


def rpc(server: RawStdio, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    return server.request(json.dumps(message))


def legacy_create(server: RawStdio, prompt_id: str) -> dict[str, Any]:
    params = {
        "name": "enhance_prompt",
        "arguments": {"prompt_id": prompt_id},
        "task": {"ttl": 60000},
    }
    answer = rpc(server, 10, "tools/call", params)
    task: dict[str, Any] = answer["result"]["task"]
    return task


def legacy_until_not_working(server: RawStdio, task_id: str) -> dict[str, Any]:
    for attempt in range(1200):
        task: dict[str, Any] = rpc(server, 100 + attempt, "tasks/get", {"taskId": task_id})[
            "result"
        ]
        if task["status"] != "working":
            return task
        threading.Event().wait(0.05)
    raise AssertionError("the task kept working")


def test_a_legacy_enhancement_task_is_created_polled_fetched_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    prompt_id = stored_prompt(tmp_path)
    first = RawStdio(env=template_env(tmp_path))
    try:
        initialized: dict[str, Any] = first.initialize()["result"]  # type: ignore[assignment]
        assert initialized["capabilities"]["tasks"]["requests"] == {"tools": {"call": {}}}
        tools = rpc(first, 1, "tools/list", {})["result"]["tools"]
        [enhance] = [tool for tool in tools if tool["name"] == "enhance_prompt"]
        assert enhance["execution"] == {"taskSupport": "optional"}
        task = legacy_create(first, prompt_id)
        assert task["ttl"] is None and task["pollInterval"] == 1000
        done = legacy_until_not_working(first, task["taskId"])
        assert done["status"] == "completed"
        fetched = rpc(first, 2, "tasks/result", {"taskId": task["taskId"]})["result"]
        assert fetched["_meta"]["io.modelcontextprotocol/related-task"] == {
            "taskId": task["taskId"]
        }
        structured = fetched["structuredContent"]
        assert structured["path"] == "server-enhancer"
    finally:
        first.stop()
    restarted = RawStdio(env=template_env(tmp_path))
    try:
        restarted.initialize()
        assert rpc(restarted, 3, "tasks/get", {"taskId": task["taskId"]})["result"] == done
        again = rpc(restarted, 4, "tasks/result", {"taskId": task["taskId"]})["result"]
        assert again["structuredContent"] == structured
        refused = rpc(restarted, 5, "tasks/cancel", {"taskId": task["taskId"]})
        assert refused["error"]["code"] == mcp_types.INVALID_PARAMS
    finally:
        restarted.stop()


def test_a_legacy_task_left_running_by_a_killed_server_is_cancelled_by_the_next_one(
    tmp_path: Path, hanging: HangingEndpoint
) -> None:
    prompt_id = stored_prompt(tmp_path)
    env = hanging_env(tmp_path, hanging)
    first = RawStdio(env=env)
    try:
        first.initialize()
        task = legacy_create(first, prompt_id)
        assert task["status"] == "working"
        assert hanging.asked.wait(DEADLINE)  # the enhancer was asked
        first.process.kill()  # no chance to settle anything
        first.process.wait(DEADLINE)
    finally:
        first.stop()
    [run] = stored_runs(tmp_path, prompt_id)
    assert run.status == "running"
    second = RawStdio(env=env)
    try:
        second.initialize()
        assert rpc(second, 1, "tasks/get", {"taskId": task["taskId"]})["result"]["status"] == (
            "working"
        )
        cancelled = rpc(second, 2, "tasks/cancel", {"taskId": task["taskId"]})["result"]
        assert cancelled["status"] == "cancelled"
    finally:
        second.stop()
    [run] = stored_runs(tmp_path, prompt_id)
    assert run.status == "failed" and "task was cancelled" in (run.error_message or "")


# -- in-process: what the wire promises --------------------------------------------------------


async def test_a_client_without_the_extension_gets_the_plain_answer_and_progress_with_a_total(
    harness: Harness,
) -> None:
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    prompt = await harness.store.create_prompt("A robot arm stacks blocks", {}, {})
    async with harness.connect(progress_interval=0.01) as session:
        result = await session.call_tool(
            "enhance_prompt", {"prompt_id": prompt.id}, progress_callback=on_progress
        )
    assert not result.is_error and result.structured_content is not None
    assert reports and all(total is not None and total > 0 for _, total, _ in reports)
    assert reports[-1][0] == reports[-1][1] and reports[-1][2] == "enhancement stored"


async def test_task_methods_need_the_extension_on_2026(harness: Harness) -> None:
    async with harness.connect() as session:
        request = mcp_types.GetTaskRequest(params=mcp_types.GetTaskRequestParams(task_id="x"))
        with pytest.raises(MCPError) as refused:
            await session.session.send_request(request, Answer)
    assert refused.value.error.code == mcp_types.MISSING_REQUIRED_CLIENT_CAPABILITY


async def test_a_refused_call_is_answered_at_once_without_a_task(harness: Harness) -> None:
    async with harness.connect(client_options={"extensions": [TasksClient()]}) as session:
        answer = await session.session.call_tool(
            "enhance_prompt", {"prompt_id": "ps_0123456789abcdef"}, allow_claimed=True
        )
    assert isinstance(answer, mcp_types.CallToolResult) and answer.is_error


def test_task_ids_verify_only_for_the_owner_and_key_they_were_made_with() -> None:
    ids = TaskIds(b"k" * 32)
    task_id = ids.make("rs_0123456789abcdef", "server-enhancer", "owner-a")
    assert ids.read(task_id, "owner-a") == ("rs_0123456789abcdef", "server-enhancer")
    assert ids.read(task_id, "owner-b") is None  # another token
    assert TaskIds(b"j" * 32).read(task_id, "owner-a") is None  # another store
