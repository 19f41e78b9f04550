"""Resource subscriptions: ``cosmos://prompts/{id}`` and ``cosmos://runs/{id}`` announce
their changes.

A 2026-07-28 client opens ``subscriptions/listen`` naming the URIs it follows; the SDK keeps
the stream and delivers what is published on the server's subscription bus. This module
decides what to publish. A middleware sees each listen request, follows its documents for
as long as the stream stays open, and a watcher task per store looks for changes every
``POLL_SECONDS`` through the library (``AsyncCosmosStore.poll_changes``), publishing
``notifications/resources/updated`` for each changed document. The library knows how to
look cheaply (SQLite's data version on the embedded default, so another process's write is
seen too); this module only translates documents to URIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from cosmos_mongo import AsyncCosmosStore
from cosmos_mongo.errors import CosmosMongoError, InvalidInputError
from cosmos_mongo.watching import ChangeWatch, Kind, Watched

POLL_SECONDS: Final = 0.5
"""How often a store with followed documents is looked at (a look after no commit on the
embedded default costs one SQLite pragma)."""

_URI: Final = re.compile(r"^cosmos://(prompts|runs)/([^/?#]+)$")
_KINDS: Final[dict[str, Kind]] = {"prompts": "prompt", "runs": "run"}
log = logging.getLogger("mcp_server")
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


class StoreHolder(Protocol):
    """What the lifespan state offers: the store, opened on first use."""

    async def store(self) -> AsyncCosmosStore: ...


def watched(uri: str) -> Watched | None:
    """The document a resource URI names, or None for URIs that are not followed."""
    match = _URI.match(uri)
    return None if match is None else (_KINDS[match[1]], match[2])


def uri_of(key: Watched) -> str:
    kind, document_id = key
    return f"cosmos://{kind}s/{document_id}"


@dataclass
class _Watching:
    """The followed documents of one store, who follows them, and the task that looks."""

    holder: StoreHolder
    watch: ChangeWatch = field(default_factory=ChangeWatch)
    followers: Counter[Watched] = field(default_factory=Counter)
    # 2025-11-25 resources/subscribe: per connection, its session and its documents.
    subscribers: dict[object, tuple[Any, set[Watched]]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None


class ResourceWatcher:
    """The ``subscriptions/listen`` middleware (2026-07-28), the ``resources/subscribe`` and
    ``resources/unsubscribe`` handlers (2025-11-25), and the per-store watcher tasks behind
    them. ``connection_of(session)`` names the connection a request came on."""

    def __init__(
        self,
        bus: SubscriptionBus,
        connection_of: Callable[[Any], object],
        interval: float = POLL_SECONDS,
    ) -> None:
        self._bus = bus
        self._connection_of = connection_of
        self._interval = interval
        self._stores: dict[int, _Watching] = {}

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Follow a listen request's documents while its stream is open."""
        holder = ctx.lifespan_context
        if ctx.method != "subscriptions/listen" or not hasattr(holder, "store"):
            return await call_next(ctx)
        keys = _requested(ctx.params)
        if not keys:
            return await call_next(ctx)
        # The first look records the documents as they are now, before the stream is
        # acknowledged: a change after the acknowledgement is announced.
        watching = await self._follow(holder, keys)
        try:
            return await call_next(ctx)
        finally:
            self._unfollow(holder, watching, keys)

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        """``resources/subscribe``: updates of that document reach this connection until it
        unsubscribes (or an update can no longer be delivered). Other URIs are accepted and
        never fire."""
        key = _followable(params.uri)
        holder = ctx.lifespan_context
        if key is None or not hasattr(holder, "store"):
            return EmptyResult()
        watching = await self._follow(holder, [key])
        connection = self._connection_of(ctx.session)
        _, keys = watching.subscribers.setdefault(connection, (ctx.session, set()))
        if key in keys:
            self._unfollow(holder, watching, [key])  # subscribed already: counted once
        keys.add(key)
        return EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        """``resources/unsubscribe``: no more updates of that document on this connection."""
        key = _followable(params.uri)
        holder = ctx.lifespan_context
        watching = self._stores.get(id(holder))
        if key is None or watching is None:
            return EmptyResult()
        connection = self._connection_of(ctx.session)
        _, keys = watching.subscribers.get(connection, (None, set()))
        if key in keys:
            keys.discard(key)
            if not keys:
                del watching.subscribers[connection]
            self._unfollow(holder, watching, [key])
        return EmptyResult()

    def closing(self, lifespan: Lifespan) -> Lifespan:
        """``lifespan``, forgetting its store's followers when it ends (the connections that
        followed through it are gone)."""

        @contextlib.asynccontextmanager
        async def closed(server: Any) -> AsyncIterator[Any]:
            async with lifespan(server) as state:
                try:
                    yield state
                finally:
                    watching = self._stores.pop(id(state), None)
                    if watching is not None and watching.task is not None:
                        watching.task.cancel()

        return closed

    async def _follow(self, holder: StoreHolder, keys: list[Watched]) -> _Watching:
        watching = self._stores.setdefault(id(holder), _Watching(holder))
        for key in keys:
            watching.followers[key] += 1
            watching.watch.add(*key)
        await self._look(watching)
        if watching.task is None:
            watching.task = asyncio.create_task(self._keep_looking(watching))
        return watching

    def _unfollow(self, holder: object, watching: _Watching, keys: list[Watched]) -> None:
        for key in keys:
            watching.followers[key] -= 1
            if watching.followers[key] <= 0:
                del watching.followers[key]
                watching.watch.discard(*key)
        if not watching.followers and self._stores.get(id(holder)) is watching:
            del self._stores[id(holder)]
            if watching.task is not None:
                # Not awaited: this may run in a cancelled stream's scope, which would cancel
                # the wait again; the task ends at its next await.
                watching.task.cancel()

    async def _keep_looking(self, watching: _Watching) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self._look(watching)
        finally:
            # Nobody follows any more: close a server's change stream (best effort; the
            # store may be closing too).
            with contextlib.suppress(Exception):
                await (await watching.holder.store()).stop_watching(watching.watch)

    async def _look(self, watching: _Watching) -> None:
        """One look at the store; announce each changed document to its followers."""
        async with watching.lock:
            try:
                changed = await (await watching.holder.store()).poll_changes(watching.watch)
            except (CosmosMongoError, ToolError) as exc:
                # The database is away: the next look tries again; nothing is announced.
                log.warning("cannot look for changes to subscribed documents: %s", exc)
                return
        for key in changed:
            await self._bus.publish(ResourceUpdated(uri=uri_of(key)))
            for connection, (session, keys) in list(watching.subscribers.items()):
                if key not in keys:
                    continue
                try:
                    await session.send_resource_updated(uri_of(key))
                except Exception as exc:  # the connection is gone: so is its subscription
                    log.info("dropping the subscriptions of a closed connection: %s", exc)
                    del watching.subscribers[connection]
                    self._unfollow(watching.holder, watching, sorted(keys))


def _followable(uri: str) -> Watched | None:
    """The document a URI names, if it can be followed (a well-formed prompt or run id)."""
    key = watched(uri)
    if key is None:
        return None
    try:
        ChangeWatch().add(*key)
    except InvalidInputError:
        return None
    return key


def _requested(params: Mapping[str, Any] | None) -> list[Watched]:
    """The followed documents a listen request names (malformed ids are not followed: the
    resource cannot exist, so it never changes)."""
    notifications = (params or {}).get("notifications")
    uris = notifications.get("resourceSubscriptions") if isinstance(notifications, dict) else None
    keys = (
        {_followable(uri) for uri in uris if isinstance(uri, str)}
        if isinstance(uris, list)
        else set()
    )
    return sorted(key for key in keys if key is not None)
