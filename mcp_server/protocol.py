"""The protocol-level behaviour cosmos-mongo adds to the SDK's ``MCPServer``.

- Tool arguments are checked before the SDK sees them: an unknown argument is refused (the
  schemas say ``additionalProperties: false``) and a bad one gets the same
  "Invalid argument `x`: ..." form as the library's own refusals.
- Every tool call is logged to the client (``notifications/message``) at the level it asked
  for: ``logging/setLevel`` on 2025-11-25 sessions, the per-request opt-in on 2026-07-28.
- Over stdio, a line the SDK cannot decode (invalid JSON, a lone surrogate, nesting deeper
  than its parser allows) gets a JSON-RPC error instead of silence.

The SDK offers no public hook for a method handler with request context or for the stdio
read loop, so this module, and only this one, reaches into ``MCPServer._lowlevel_server``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from io import TextIOWrapper
from typing import Any, Final, Generic, TypeVar, cast, get_args

import anyio
import mcp_types
from anyio.streams.memory import MemoryObjectSendStream
from mcp import MCPDeprecationWarning
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.types import (
    INVALID_PARAMS,
    CallToolResult,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    EmptyResult,
    GetPromptResult,
    InputRequiredResult,
    LoggingLevel,
    SetLevelRequestParams,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)
from mcp_types.version import is_version_at_least
from pydantic import ValidationError

from mcp_server.subscriptions import ResourceWatcher
from mcp_server.tasks import TASK_TOOLS, TaskService, TasksExtension

StateT = TypeVar("StateT")
LEVELS: Final[tuple[LoggingLevel, ...]] = get_args(LoggingLevel)
# Until a 2025-11-25 client sets a level, it hears only about failures.
DEFAULT_LEVEL: Final[LoggingLevel] = "warning"
LOGGER_NAME: Final = "cosmos-mongo"

Completer = Callable[[Any, Any, str], Awaitable[list[str]]]


class CosmosMCPServer(MCPServer[StateT], Generic[StateT]):
    """``MCPServer`` with strict arguments, client logging and a guarded stdio reader."""

    def __init__(self, *args: Any, tools: list[Tool], **kwargs: Any) -> None:
        for tool in tools:
            tool.parameters["additionalProperties"] = False
        bus = InMemorySubscriptionBus()
        # Enhancements become tasks for clients that ask (mcp_server.tasks); a server that
        # cannot enhance (read-only) offers none.
        self.tasks = (
            TaskService(lambda: self._lowlevel_server.server_info_stamp)
            if TASK_TOOLS & {tool.name for tool in tools}
            else None
        )
        if self.tasks is not None:
            kwargs["extensions"] = [*kwargs.get("extensions", ()), TasksExtension(self.tasks)]
            if kwargs.get("lifespan") is not None:
                kwargs["lifespan"] = self.tasks.settling(kwargs["lifespan"])
        # Follows the documents that subscriptions/listen streams (2026-07-28) and
        # resources/subscribe (2025-11-25) name, announcing their updates.
        watcher = ResourceWatcher(bus, _connection)
        if kwargs.get("lifespan") is not None:
            kwargs["lifespan"] = watcher.closing(kwargs["lifespan"])
        super().__init__(*args, tools=tools, subscriptions=bus, **kwargs)
        self.middleware.append(watcher)
        if self.tasks is not None:
            self.middleware.append(self.tasks)
        self.cosmos_tools = {tool.name: tool for tool in tools}
        # Per connection; weak, so a closed connection's level goes with it.
        self._levels: weakref.WeakKeyDictionary[object, LoggingLevel] = weakref.WeakKeyDictionary()
        lowlevel = self._lowlevel_server
        lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, self._set_level)
        lowlevel.add_request_handler(
            "resources/subscribe", SubscribeRequestParams, watcher.subscribe
        )
        lowlevel.add_request_handler(
            "resources/unsubscribe", UnsubscribeRequestParams, watcher.unsubscribe
        )

    # -- arguments -------------------------------------------------------------------------

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[StateT, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Check the arguments, run the tool, and log the outcome to the client."""
        started = time.perf_counter()
        await self._log(context, "debug", f"{name} called with {sorted(arguments) or 'nothing'}")
        try:
            tool = self.cosmos_tools.get(name)
            if tool is not None:
                check_arguments(tool, arguments)
            result = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            await self._log(context, "warning", str(exc))
            raise
        elapsed = (time.perf_counter() - started) * 1000
        if isinstance(result, InputRequiredResult):
            await self._log(context, "info", f"{name} asks the client for input")
        else:
            await self._log(context, "info", f"{name} answered in {elapsed:.0f} ms")
        return result

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[StateT, Any] | None = None,
    ) -> GetPromptResult | InputRequiredResult:
        """Refuse an unknown prompt or a missing argument with INVALID_PARAMS naming it (the
        SDK answers both with "Internal server error" and a logged traceback).

        Raises:
            MCPError: the prompt does not exist, or a required argument is missing.
        """
        declared = {prompt.name: prompt for prompt in await self.list_prompts()}
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise MCPError(code=INVALID_PARAMS, message=f"no prompt {name!r} (prompts: {known})")
        given = arguments or {}
        for argument in declared[name].arguments or []:
            if argument.required and not given.get(argument.name):
                raise MCPError(
                    code=INVALID_PARAMS,
                    message=f"{name} needs the argument {argument.name}: {argument.description}",
                )
        return await super().get_prompt(name, arguments, context)

    # -- logging to the client ----------------------------------------------------------------

    async def _set_level(
        self, ctx: ServerRequestContext[StateT], params: SetLevelRequestParams
    ) -> EmptyResult:
        self._levels[_connection(ctx.session)] = params.level
        return EmptyResult()

    async def _log(
        self, context: Context[StateT, Any] | None, level: LoggingLevel, text: str
    ) -> None:
        """Send ``text`` to the client if it listens at ``level``. Never raises: a log that
        cannot be delivered must not fail the call."""
        if context is None:
            return
        try:
            request = context.request_context
        except ValueError:  # called outside a request (tests calling call_tool directly)
            return
        wanted = self._levels.get(_connection(request.session), DEFAULT_LEVEL)
        # From 2026-07-28 the SDK applies each request's own opt-in; setLevel is gone.
        modern = is_version_at_least(request.protocol_version, "2026-07-28")
        if modern or LEVELS.index(level) >= LEVELS.index(wanted):
            # Deprecated from 2026-07-28 (SEP-2577), yet the only way to reach 2025-11-25 clients.
            with warnings.catch_warnings():  # no await inside: no other task sees the filter
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                sending = request.session.send_log_message(
                    level, text, logger=LOGGER_NAME, related_request_id=request.request_id
                )
            try:
                await sending
            except Exception:
                return

    # -- completions ----------------------------------------------------------------------------

    def complete_with(self, completer: Completer) -> None:
        """Answer ``completion/complete`` with ``completer(state, ref, value)``."""

        async def handle(
            ctx: ServerRequestContext[StateT], params: CompleteRequestParams
        ) -> CompleteResult:
            values = await completer(ctx.lifespan_context, params.ref, params.argument.value)
            values = values[:100]  # the protocol's most per answer
            return CompleteResult(
                completion=Completion(values=values, total=None, has_more=len(values) == 100)
            )

        self._lowlevel_server.add_request_handler(
            "completion/complete", CompleteRequestParams, handle
        )

    # -- stdio ------------------------------------------------------------------------------

    async def run_stdio_async(self) -> None:
        """Serve over stdio, answering undecodable lines with a JSON-RPC error."""
        lines = _CheckedLines()
        stdin = cast(Any, lines)  # stdio_server only iterates it
        async with stdio_server(stdin=stdin) as (read_stream, write_stream):
            lines.replies = write_stream
            lines.ready.set()
            lowlevel = self._lowlevel_server
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def _connection(session: Any) -> object:
    """The connection a request arrived on: a session object lives for one request only."""
    return cast(object, session._connection)


def check_arguments(tool: Tool, arguments: dict[str, Any]) -> None:
    """Refuse unknown or invalid arguments with an "Invalid argument" message.

    Raises:
        ToolError: an argument the tool does not take, or one its schema refuses.
    """
    known = set(tool.parameters.get("properties", {}))
    unknown = sorted(set(arguments) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "no arguments"
        raise ToolError(
            f"Error executing tool {tool.name}: Invalid argument `{unknown[0]}`: "
            f"{tool.name} takes no such argument (it takes {takes})."
        )
    try:
        tool.fn_metadata.validate_arguments(arguments)
    except ValidationError as exc:
        raise ToolError(f"Error executing tool {tool.name}: {invalid_argument(exc)}") from exc


# The id patterns of the tool schemas, in the library's words.
_ID_RULES = {
    r"^ps_[0-9a-f]{8,64}$": "'ps_' followed by 8 to 64 lowercase hex characters",
    r"^rs_[0-9a-f]{8,64}$": "'rs_' followed by 8 to 64 lowercase hex characters",
    r"^(ps|rs)_[0-9a-f]{8,64}$": "'ps_' or 'rs_' followed by 8 to 64 lowercase hex characters",
}


def invalid_argument(exc: ValidationError) -> str:
    """The first schema error as "Invalid argument `field`: rule (got value)."."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "arguments"
    if error["type"] == "missing":
        return f"Invalid argument `{field}`: it is required."
    rule = error["msg"][:1].lower() + error["msg"][1:]
    pattern = (error.get("ctx") or {}).get("pattern")
    if error["type"] == "string_pattern_mismatch" and pattern in _ID_RULES:
        rule = f"it must be {_ID_RULES[pattern]}"
    shown = json.dumps(error.get("input"), ensure_ascii=True, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"Invalid argument `{field}`: {rule} (got {shown})."


class _CheckedLines:
    """stdin's lines; a line that is not a JSON-RPC message is answered here, not passed on
    (the SDK drops it without a reply, leaving the client waiting)."""

    def __init__(self) -> None:
        wrapper = TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        self._lines = anyio.wrap_file(wrapper)
        self.replies: MemoryObjectSendStream[SessionMessage] | None = None
        self.ready = anyio.Event()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._checked()

    async def _checked(self) -> AsyncIterator[str]:
        async for line in self._lines:
            if not line.strip():
                continue
            error = undecodable(line)
            if error is None:
                yield line
                continue
            await self.ready.wait()
            assert self.replies is not None
            await self.replies.send(SessionMessage(error))


def undecodable(line: str) -> mcp_types.JSONRPCError | None:
    """The JSON-RPC error answering ``line``, or None if it is a message the SDK can read.

    A request whose id is neither a string nor an integer (an object, a boolean, a fraction,
    null) reads to the SDK as a notification, which nobody answers: it is an invalid request,
    answered with id null as JSON-RPC 2.0 says when the id cannot be used."""
    try:
        message = mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        parse_error = first["type"] == "json_invalid"
        reason = first["msg"]
        if "hex escape" in reason or "surrogate" in reason:
            reason += " (a lone surrogate, \\ud800-\\udfff, is not valid Unicode)"
        given = _top_level_id(line)
        return mcp_types.JSONRPCError(
            jsonrpc="2.0",
            id=given if _usable_id(given) else None,  # type: ignore[arg-type]
            error=mcp_types.ErrorData(
                code=mcp_types.PARSE_ERROR if parse_error else mcp_types.INVALID_REQUEST,
                message=f"{'Parse error' if parse_error else 'Invalid request'}: {reason}",
            ),
        )
    if isinstance(message, mcp_types.JSONRPCNotification):
        given = _top_level_id(line)
        if given is not _ABSENT:
            shown = json.dumps(given)[:40] if not isinstance(given, _Unreadable) else "(unread)"
            return mcp_types.JSONRPCError(
                jsonrpc="2.0",
                id=None,
                error=mcp_types.ErrorData(
                    code=mcp_types.INVALID_REQUEST,
                    message=f"Invalid request: id must be a string or an integer (got {shown})",
                ),
            )
    return None


class _Unreadable:
    """An id member whose value could not be read (nested too deep, say)."""


_ABSENT: Final = object()
_SPACE: Final = " \t\r\n"
_DECODER: Final = json.JSONDecoder()


def _usable_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _top_level_id(line: str) -> object:
    """The value of the ``"id"`` member of the JSON object ``line``, ``_ABSENT`` if it has
    none (or is not an object). Found by scanning the top level only: other members are
    skipped by counting brackets, so nesting at any depth (which Python's parser and the SDK's
    refuse) does not hide an id before or after it."""
    text = line.strip()
    if not text.startswith("{"):
        return _ABSENT
    position = 1
    try:
        while True:
            position = _skip_space(text, position)
            if text[position] != '"':
                return _ABSENT
            key, position = _DECODER.raw_decode(text, position)
            position = _skip_space(text, position)
            if text[position] != ":":
                return _ABSENT
            position = _skip_space(text, position + 1)
            if key == "id":
                try:
                    return _DECODER.raw_decode(text, position)[0]
                except (ValueError, RecursionError):
                    return _Unreadable()
            position = _skip_space(text, _skip_value(text, position))
            if text[position] != ",":
                return _ABSENT
            position += 1
    except (IndexError, ValueError):
        return _ABSENT


def _skip_space(text: str, position: int) -> int:
    while text[position] in _SPACE:
        position += 1
    return position


def _skip_value(text: str, position: int) -> int:
    """The position just after the JSON value starting at ``position``, without recursion.

    Raises:
        ValueError: an unterminated string.
        IndexError: the text ends inside the value.
    """
    depth = 0
    while True:
        char = text[position]
        if char == '"':
            position = _DECODER.raw_decode(text, position)[1]
        elif char in "[{":
            depth += 1
            position += 1
        elif char in "]}":
            depth -= 1
            position += 1
        elif depth == 0 and char in ",":
            return position
        else:
            position += 1
        if depth == 0 and char in '"]}':
            return position
        if depth < 0:
            raise ValueError("unbalanced")
