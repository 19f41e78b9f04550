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
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated

from cosmos_mongo import AsyncCosmosStore
from cosmos_mongo.errors import CosmosMongoError, InvalidInputError
from cosmos_mongo.watching import ChangeWatch, Kind, Watched

POLL_SECONDS: Final = 0.5
"""How often a store with followed documents is looked at (a look after no commit on the
embedded default costs one SQLite pragma)."""

_URI: Final = re.compile(r"^cosmos://(prompts|runs)/([^/?#]+)$")
_KINDS: Final[dict[str, Kind]] = {"prompts": "prompt", "runs": "run"}
log = logging.getLogger("mcp_server")


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
    """The followed documents of one store, and the task that looks at them."""

    holder: StoreHolder
    watch: ChangeWatch = field(default_factory=ChangeWatch)
    followers: Counter[Watched] = field(default_factory=Counter)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None


class ResourceWatcher:
    """The ``subscriptions/listen`` middleware and the per-store watcher tasks behind it."""

    def __init__(self, bus: SubscriptionBus, interval: float = POLL_SECONDS) -> None:
        self._bus = bus
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
        watching = self._stores.setdefault(id(holder), _Watching(holder))
        for key in keys:
            watching.followers[key] += 1
            watching.watch.add(*key)
        try:
            # The first look records the documents as they are now, before the stream is
            # acknowledged: a change after the acknowledgement is announced.
            await self._look(watching)
            if watching.task is None:
                watching.task = asyncio.create_task(self._keep_looking(watching))
            return await call_next(ctx)
        finally:
            self._unfollow(holder, watching, keys)

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
        while True:
            await asyncio.sleep(self._interval)
            await self._look(watching)

    async def _look(self, watching: _Watching) -> None:
        """One look at the store; publish an update for each changed document."""
        async with watching.lock:
            try:
                changed = await (await watching.holder.store()).poll_changes(watching.watch)
            except (CosmosMongoError, ToolError) as exc:
                # The database is away: the next look tries again; nothing is announced.
                log.warning("cannot look for changes to subscribed documents: %s", exc)
                return
        for key in changed:
            await self._bus.publish(ResourceUpdated(uri=uri_of(key)))


def _requested(params: Mapping[str, Any] | None) -> list[Watched]:
    """The followed documents a listen request names (malformed ids are not followed: the
    resource cannot exist, so it never changes)."""
    notifications = (params or {}).get("notifications")
    uris = notifications.get("resourceSubscriptions") if isinstance(notifications, dict) else None
    keys: list[Watched] = []
    for uri in uris if isinstance(uris, list) else []:
        key = watched(uri) if isinstance(uri, str) else None
        if key is None:
            continue
        try:
            ChangeWatch().add(*key)
        except InvalidInputError:
            continue
        keys.append(key)
    return sorted(set(keys))
