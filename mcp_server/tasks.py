"""MCP tasks: an enhancement answered with a task handle, and the enhance run is the task.

A client that declares task support (2025-11-25: a ``task`` field on ``tools/call``;
2026-07-28: the ``io.modelcontextprotocol/tasks`` extension in the request's client
capabilities) gets a task handle for ``enhance_prompt`` as soon as its enhance run is durably
recorded. The enhancement goes on in the background; every answer about the task is read from
the run, so a task survives a restart, is seen by every server process sharing the store, and
cannot disagree with the database.

Task ids are ``<run id>.<path><mac>``: the MAC is an HMAC-SHA256 of the run id, the path
(who writes the text) and the caller (on HTTP, a hash of its bearer token), keyed by a
per-store secret (``AsyncCosmosStore.secret``). Without the key an id cannot be made; another
token's id does not verify, so it reads as "not found".

The installed SDK (2.3) has the task types but no task engine. This module serves the wire
shapes of both revisions: a middleware answers the task-augmented ``tools/call`` (and adds the
2025-11-25 ``tasks`` capability and the tool's ``execution.taskSupport``), and an extension
serves ``tasks/get``, ``tasks/cancel``, ``tasks/update`` and (2025-11-25) ``tasks/result``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CallToolResult,
    CancelTaskRequestParams,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    RequestParams,
    TextContent,
)
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    SERVER_INFO_META_KEY,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from cosmos_mongo import AsyncCosmosStore, Run
from cosmos_mongo.enhancement import was_cancelled
from cosmos_mongo.errors import CosmosMongoError
from cosmos_mongo.ops import SETTLE_SECONDS
from mcp_server.results import EnhanceAnswer, answer

EXTENSION_ID: Final = "io.modelcontextprotocol/tasks"
RELATED_TASK: Final = "io.modelcontextprotocol/related-task"
TASK_TOOLS: Final = frozenset({"enhance_prompt"})
POLL_INTERVAL_MS: Final = 1000
SECRET_NAME: Final = "mcp_task_ids"
_PATHS: Final = {"agent": "a", "client-sampling": "c", "server-enhancer": "s"}
_NAMES: Final = {code: path for path, code in _PATHS.items()}
_MAC_HEX: Final = 32
log = logging.getLogger("mcp_server")

Path = Literal["agent", "client-sampling", "server-enhancer"]
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]

# Set while a task-augmented call runs: the tool hands it to the store as ``on_run``.
_announce: contextvars.ContextVar[Callable[[str, Path], None] | None] = contextvars.ContextVar(
    "cosmos_mongo_task_announce", default=None
)


def run_announcer(path: Path) -> Callable[[str], None] | None:
    """The ``on_run`` callback for ``enhance_prompt`` when this call becomes a task, else
    None: it hands the recorded run (and who writes the text) to the waiting handler."""
    announce = _announce.get()
    if announce is None:
        return None
    return lambda run_id: announce(run_id, path)


class _Settings(Protocol):
    max_bytes: int


class _State(Protocol):
    """What the server's lifespan state offers."""

    settings: _Settings

    async def store(self) -> AsyncCosmosStore: ...


class TaskIds:
    """Makes and checks task ids with one store's secret."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, run_id: str, code: str, owner: str) -> str:
        message = f"{run_id}|{code}|{owner}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_MAC_HEX]

    def make(self, run_id: str, path: Path, owner: str) -> str:
        code = _PATHS[path]
        return f"{run_id}.{code}{self._mac(run_id, code, owner)}"

    def read(self, task_id: str, owner: str) -> tuple[str, Path] | None:
        """The run and path a task id names, or None if the id was not made for ``owner``."""
        run_id, _, tail = task_id.partition(".")
        code, mac = tail[:1], tail[1:]
        if code not in _NAMES or len(mac) != _MAC_HEX:
            return None
        if not hmac.compare_digest(mac, self._mac(run_id, code, owner)):
            return None
        return run_id, _NAMES[code]  # type: ignore[return-value]


def owner() -> str:
    """Who is calling: on HTTP with a token, a hash of the token; otherwise nobody in
    particular (stdio and in-process clients own the whole server)."""
    token = get_access_token()
    return "" if token is None else hashlib.sha256(token.token.encode()).hexdigest()


def _modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def _declares_extension(params: Mapping[str, Any] | None) -> bool:
    meta = (params or {}).get("_meta")
    capabilities = meta.get(CLIENT_CAPABILITIES_META_KEY) if isinstance(meta, dict) else None
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and EXTENSION_ID in extensions


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class TaskService:
    """The task engine: the middleware for ``tools/call``, the task methods, and the
    enhancements still working in this process."""

    def __init__(self, server_info: Callable[[], dict[str, Any]] | None = None) -> None:
        # The serverInfo stamp 2026-07-28 results carry; the runner adds it to every result
        # but one a middleware answers itself, as this one answers a task handle.
        self._server_info = server_info
        self._keys: dict[int, TaskIds] = {}
        self._working: dict[str, asyncio.Task[Any]] = {}

    # -- ids --------------------------------------------------------------------------------

    async def _ids(self, store: AsyncCosmosStore) -> TaskIds:
        ids = self._keys.get(id(store))
        if ids is None:
            ids = self._keys[id(store)] = TaskIds(await store.secret(SECRET_NAME))
        return ids

    async def _store(self, ctx: ServerRequestContext[Any, Any]) -> AsyncCosmosStore:
        state: _State = ctx.lifespan_context
        try:
            return await state.store()
        except ToolError as exc:
            raise MCPError(code=INTERNAL_ERROR, message=str(exc)) from exc

    async def _run_of(
        self, ctx: ServerRequestContext[Any, Any], task_id: str
    ) -> tuple[AsyncCosmosStore, Run, str, Path]:
        """The store, run and path a task id names.

        Raises:
            MCPError: INVALID_PARAMS for an id this caller does not own or whose run is gone.
        """
        store = await self._store(ctx)
        try:
            named = (await self._ids(store)).read(task_id, owner())
            run = None if named is None else await store.get_run(named[0])
        except CosmosMongoError as exc:
            raise MCPError(code=INTERNAL_ERROR, message=f"Failed to read the task: {exc}") from exc
        if named is None or run is None:
            raise MCPError(code=INVALID_PARAMS, message="Failed to retrieve task: Task not found")
        return store, run, named[0], named[1]

    # -- the task-augmented tools/call ------------------------------------------------------

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        params = ctx.params or {}
        if ctx.method == "tools/call" and params.get("name") in TASK_TOOLS:
            wanted = _declares_extension(params) if _modern(ctx) else "task" in params
            if wanted:
                return await self._start(ctx, call_next)
        result = await call_next(ctx)
        if not _modern(ctx) and isinstance(result, dict):
            _advertise_legacy(ctx.method, result)
        return result

    async def _start(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Run the call in the background; answer with its task once its run is recorded, or
        with its plain answer if it ends first (a refusal, an error, or a request for input:
        those come before any run exists)."""
        announced: asyncio.Future[tuple[str, Path]] = asyncio.get_running_loop().create_future()

        def announce(run_id: str, path: Path) -> None:
            if not announced.done():
                announced.set_result((run_id, path))

        token = _announce.set(announce)
        try:
            # A task of its own (the context, with the announcer, is copied into it): the
            # enhancement outlives this request.
            work = asyncio.create_task(_called(call_next, ctx))
        finally:
            _announce.reset(token)
        try:
            waited: set[asyncio.Future[Any]] = {announced, work}
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()  # the caller left before the handle: settle as a cancelled call does
            raise
        if not announced.done():
            return work.result()
        run_id, path = announced.result()
        self._working[run_id] = work
        work.add_done_callback(lambda done: self._finished(run_id, done))
        store = await self._store(ctx)
        try:
            task_id = (await self._ids(store)).make(run_id, path, owner())
            run = await store.get_run(run_id)
        except CosmosMongoError as exc:
            raise MCPError(
                code=INTERNAL_ERROR, message=f"Failed to create the task: {exc}"
            ) from exc
        if run is None:  # deleted with its prompt at once: nothing to follow
            return work.result() if work.done() else await work
        task = self._task(ctx, run, task_id)
        if _modern(ctx):
            meta = {} if self._server_info is None else {SERVER_INFO_META_KEY: self._server_info()}
            return {"resultType": "task", **task, "_meta": meta}
        return {"task": task}

    def _finished(self, run_id: str, work: asyncio.Task[Any]) -> None:
        if self._working.get(run_id) is work:
            del self._working[run_id]
        if not work.cancelled() and work.exception() is not None:
            # Its run holds the outcome (failed, with the reason); nobody waits for this.
            log.info("background enhancement %s ended: %s", run_id, work.exception())

    async def settle_all(self) -> None:
        """Cancel the enhancements still working in this process (the server is stopping):
        each settles its run as a cancelled call does, within ``SETTLE_SECONDS``."""
        working = list(self._working.values())
        for work in working:
            work.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        while working and any(not work.done() for work in working):
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("%d background enhancements did not settle", len(working))
                return
            # A stopping server's scope may cancel this wait again and again: wait on.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(working, timeout=remaining)

    def settling(self, lifespan: Lifespan) -> Lifespan:
        """``lifespan``, settling the background enhancements before the store closes."""

        @contextlib.asynccontextmanager
        async def settled(server: Any) -> AsyncIterator[Any]:
            async with lifespan(server) as state:
                try:
                    yield state
                finally:
                    await self.settle_all()

        return settled

    # -- what a task looks like -------------------------------------------------------------

    def _task(self, ctx: ServerRequestContext[Any, Any], run: Run, task_id: str) -> dict[str, Any]:
        status, message = _status(run)
        modern = _modern(ctx)
        task: dict[str, Any] = {
            "taskId": task_id,
            "status": status,
            "statusMessage": message,
            "createdAt": _iso(run.created_at),
            "lastUpdatedAt": _iso(run.updated_at or run.created_at),
            # The run is kept until its prompt is deleted: no expiry.
            "ttlMs" if modern else "ttl": None,
            "pollIntervalMs" if modern else "pollInterval": POLL_INTERVAL_MS,
        }
        return task

    def _result(self, ctx: ServerRequestContext[Any, Any], run: Run, path: Path) -> dict[str, Any]:
        """The tool result a finished enhancement gives, as the plain call would."""
        state: _State = ctx.lifespan_context
        done = run.enhancement
        if done is not None:
            result = answer(
                EnhanceAnswer(
                    run_id=run.id,
                    original_prompt_id=done.original_prompt_id,
                    enhanced_prompt_id=done.enhanced_prompt_id,
                    enhanced_text=done.enhanced_text,
                    enhancement_model=done.enhancement_model,
                    duration_seconds=round(done.duration_seconds or 0.0, 3),
                    status="completed",
                    path=path,
                ),
                state.settings.max_bytes,
            )
        else:
            why = run.error_message or "its outputs are incomplete (verify_enhancements)"
            text = f"Enhancement run {run.id} {run.status}: {why}"
            result = CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    # -- the task methods -------------------------------------------------------------------

    def _require_extension(self, ctx: ServerRequestContext[Any, Any]) -> None:
        if _modern(ctx) and not _declares_extension(ctx.params):
            raise MCPError(
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="Missing required client capability",
                data={"requiredCapabilities": {"extensions": {EXTENSION_ID: {}}}},
            )

    async def get(
        self, ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams
    ) -> dict[str, Any]:
        """``tasks/get``: the task as its run is now (with the result once it is done)."""
        self._require_extension(ctx)
        _, run, _, path = await self._run_of(ctx, params.task_id)
        task = self._task(ctx, run, params.task_id)
        if _modern(ctx) and task["status"] == "completed":
            task["result"] = self._result(ctx, run, path)
        return task

    async def result(
        self, ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams
    ) -> dict[str, Any]:
        """``tasks/result`` (2025-11-25): wait until the task ends, then its tool result."""
        _, run, run_id, path = await self._run_of(ctx, params.task_id)
        while _status(run)[0] == "working":
            work = self._working.get(run_id)
            if work is not None:  # ours: wake when it ends rather than at the next poll
                await asyncio.wait({work}, timeout=POLL_INTERVAL_MS / 1000)
            else:
                await asyncio.sleep(POLL_INTERVAL_MS / 1000)
            _, run, _, path = await self._run_of(ctx, params.task_id)
        status = _status(run)[0]
        if status == "cancelled":
            raise MCPError(
                code=INVALID_PARAMS, message=f"The task was cancelled: {run.error_message}"
            )
        result = self._result(ctx, run, path)
        result["_meta"] = {RELATED_TASK: {"taskId": params.task_id}}
        return result

    async def cancel(
        self, ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams
    ) -> dict[str, Any]:
        """``tasks/cancel``: settle the run as repair would (finished if its text was
        recorded, else failed as cancelled) and stop the enhancement if it works here."""
        self._require_extension(ctx)
        store, run, run_id, _ = await self._run_of(ctx, params.task_id)
        if not _modern(ctx) and _status(run)[0] != "working":
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"Cannot cancel task: it is already {_status(run)[0]}",
            )
        try:
            settled = await store.cancel_enhancement(run_id)
        except CosmosMongoError as exc:
            raise MCPError(
                code=INTERNAL_ERROR, message=f"Failed to cancel the task: {exc}"
            ) from exc
        work = self._working.get(run_id)
        if work is not None:
            work.cancel()  # finds its run settled: writes nothing more
        if _modern(ctx):
            return {}
        return self._task(ctx, settled or run, params.task_id)

    async def update(
        self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams
    ) -> dict[str, Any]:
        """``tasks/update``: an enhancement task never waits for input, so there is never an
        outstanding request to answer; the responses are ignored, as the extension says."""
        self._require_extension(ctx)
        await self._run_of(ctx, params.task_id)
        return {}


class UpdateTaskParams(RequestParams):
    task_id: str = Field(alias="taskId")
    input_responses: dict[str, Any] | None = Field(default=None, alias="inputResponses")


async def _called(call_next: CallNext, ctx: ServerRequestContext[Any, Any]) -> HandlerResult:
    return await call_next(ctx)


def _status(run: Run) -> tuple[str, str]:
    """The task status a run is in, and why."""
    if run.status == "completed":
        return "completed", f"enhancement run {run.id} completed"
    if run.status == "failed":
        if was_cancelled(run):
            return "cancelled", run.error_message or "cancelled"
        # A tool error, not a protocol one: the task completed with an isError result.
        return "completed", f"enhancement run {run.id} failed: {run.error_message or ''}"
    if run.status == "cancelled":
        return "cancelled", f"enhancement run {run.id} was reverted (revert_enhancement)"
    return "working", f"enhancement run {run.id} is {run.status}"


def _advertise_legacy(method: str, result: dict[str, Any]) -> None:
    """2025-11-25: the ``tasks`` capability, and ``execution.taskSupport`` on the tools that
    can become tasks (the SDK's models for that revision drop both)."""
    if method == "initialize":
        capabilities = result.get("capabilities")
        if isinstance(capabilities, dict):
            capabilities["tasks"] = {"cancel": {}, "requests": {"tools": {"call": {}}}}
    elif method == "tools/list":
        for tool in result.get("tools") or []:
            if isinstance(tool, dict) and tool.get("name") in TASK_TOOLS:
                tool["execution"] = {"taskSupport": "optional"}


class TasksExtension(Extension):
    """The ``io.modelcontextprotocol/tasks`` methods, served at every protocol revision."""

    identifier = EXTENSION_ID

    def __init__(self, service: TaskService) -> None:
        self._service = service

    def methods(self) -> Sequence[MethodBinding]:
        service = self._service
        return (
            MethodBinding("tasks/get", GetTaskRequestParams, service.get),
            MethodBinding("tasks/cancel", CancelTaskRequestParams, service.cancel),
            MethodBinding("tasks/update", UpdateTaskParams, service.update),
            MethodBinding(
                "tasks/result",
                GetTaskPayloadRequestParams,
                service.result,
                protocol_versions=frozenset({"2025-11-25"}),
            ),
        )


__all__ = [
    "EXTENSION_ID",
    "TaskIds",
    "TaskService",
    "TasksExtension",
    "run_announcer",
]
