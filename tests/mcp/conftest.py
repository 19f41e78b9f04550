"""Fixtures for the MCP server: a server over a mongomock-motor store, and a client to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import mongomock
import pytest
from mcp import Client
from mongomock_motor import AsyncMongoMockClient

from cosmos_mongo import AsyncCosmosStore
from cosmos_mongo.enhancers import TemplateEnhancer
from mcp_server import ServerSettings, build_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Harness:
    raw: Any  # a sync view of the same data
    store: AsyncCosmosStore
    connect: Callable[..., Any]

    def snapshot(self) -> dict[str, list[Any]]:
        return {
            name: sorted(self.raw[name].find({}), key=lambda d: str(d["_id"]))
            for name in ("prompts", "runs")
        }


@pytest.fixture
def harness() -> Harness:
    client = mongomock.MongoClient(tz_aware=True)
    store = AsyncCosmosStore(
        AsyncMongoMockClient(mock_mongo_client=client)["cosmos"], enhancer=TemplateEnhancer()
    )

    @asynccontextmanager
    async def connect(
        enhancer: Any = None, client_options: dict[str, Any] | None = None, **settings: Any
    ) -> AsyncIterator[Client]:
        served = store if enhancer is None else AsyncCosmosStore(store.db, enhancer=enhancer)
        server = build_server(ServerSettings(**settings), store=served)
        async with Client(server, **(client_options or {})) as session:
            yield session

    return Harness(client["cosmos"], store, connect)
