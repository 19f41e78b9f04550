"""Shared fixtures: one behavioural suite, run on every backend.

``backend`` yields a :class:`Backend` whose ``store`` has the sync call shape for every
flavour (an ``AsyncCosmosStore`` is driven through :class:`AwaitingStore`), and whose ``raw``
is a synchronous view of the same data for assertions. The real-server flavours run over the
wire on every run: against ``MONGODB_URI`` when it is set, else against a SecantusDB server the
session starts itself (:mod:`tests.wire_server`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mongomock
import pytest
from hypothesis import settings as hypothesis_settings
from mongomock_motor import AsyncMongoMockClient

from cosmos_mongo import AsyncCosmosStore, CosmosStore
from cosmos_mongo.config import Settings
from cosmos_mongo.embedded import AsyncEmbeddedDatabase, open_embedded
from tests.wire_server import WireServer, open_wire_server

# Hypothesis' own "ci" profile (derandomized, no example database, no deadline), with 40
# examples a test where CI is set (GitHub Actions, .ci/run): the randomized parity tests run a
# share of that (tests/helpers/budget.py), so CI keeps to its time. 100 by default.
hypothesis_settings.register_profile("ci", hypothesis_settings.get_profile("ci"), max_examples=40)
if "CI" in os.environ:
    hypothesis_settings.load_profile("ci")


class AwaitingStore:
    """Calls an ``AsyncCosmosStore`` with the sync call shape, on one event loop."""

    def __init__(self, store: AsyncCosmosStore, runner: asyncio.Runner) -> None:
        self.async_store = store
        self.runner = runner

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.async_store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.runner.run(attribute(*args, **kwargs))

        return call


@dataclass
class Backend:
    name: str
    store: Any
    raw: Any  # a synchronous database holding the same data

    def over(
        self,
        wrap: Callable[[Any], Any] = lambda database: database,
        *,
        enhancer: Any = None,
        settings: Settings | None = None,
    ) -> Any:
        """A store of the same flavour over ``wrap(database)``, with another enhancer or
        settings if given: fault injection and racing enhancers on every backend."""
        if isinstance(self.store, AwaitingStore):
            inner = self.store.async_store
            twin = AsyncCosmosStore(
                wrap(inner.db), enhancer=enhancer or inner.enhancer, settings=settings
            )
            return AwaitingStore(twin, self.store.runner)
        return CosmosStore(
            wrap(self.store.db), enhancer=enhancer or self.store.enhancer, settings=settings
        )

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every document of both collections, for "nothing changed" assertions."""
        return {
            name: sorted(self.raw[name].find({}), key=lambda doc: str(doc["_id"]))
            for name in ("prompts", "runs")
        }


Opener = Callable[[Path, asyncio.Runner, str], tuple[Any, Any, Callable[[], None]]]


def _mongomock_sync(
    tmp_path: Path, runner: asyncio.Runner, uri: str
) -> tuple[Any, Any, Callable[[], None]]:
    db = mongomock.MongoClient(tz_aware=True)["cosmos"]
    return CosmosStore(db), db, lambda: None


def _mongomock_async(
    tmp_path: Path, runner: asyncio.Runner, uri: str
) -> tuple[Any, Any, Callable[[], None]]:
    client = mongomock.MongoClient(tz_aware=True)
    async_db = AsyncMongoMockClient(mock_mongo_client=client)["cosmos"]
    return AwaitingStore(AsyncCosmosStore(async_db), runner), client["cosmos"], lambda: None


def _embedded_sync(
    tmp_path: Path, runner: asyncio.Runner, uri: str
) -> tuple[Any, Any, Callable[[], None]]:
    db = open_embedded(tmp_path / "data")
    store = CosmosStore(db)
    store.ensure_indexes()
    return store, db, db.close


def _embedded_async(
    tmp_path: Path, runner: asyncio.Runner, uri: str
) -> tuple[Any, Any, Callable[[], None]]:
    db = open_embedded(tmp_path / "data")
    store = AwaitingStore(AsyncCosmosStore(AsyncEmbeddedDatabase(db)), runner)
    store.ensure_indexes()
    return store, db, db.close


def _server_sync(
    tmp_path: Path, runner: asyncio.Runner, uri: str
) -> tuple[Any, Any, Callable[[], None]]:
    from pymongo import MongoClient

    client: Any = MongoClient(uri, tz_aware=True)
    name = f"cosmos_test_{uuid.uuid4().hex[:12]}"
    store = CosmosStore(client[name])
    store.ensure_indexes()

    def close() -> None:
        client.drop_database(name)
        client.close()

    return store, client[name], close


def _server_async(
    tmp_path: Path, runner: asyncio.Runner, uri: str
) -> tuple[Any, Any, Callable[[], None]]:
    from pymongo import MongoClient

    sync_client: Any = MongoClient(uri, tz_aware=True)
    name = f"cosmos_test_{uuid.uuid4().hex[:12]}"
    client: Any = runner.run(make_async_client(uri))
    store = AwaitingStore(AsyncCosmosStore(client[name]), runner)
    store.ensure_indexes()

    def close() -> None:
        sync_client.drop_database(name)
        sync_client.close()
        runner.run(_close_async_client(client))

    return store, sync_client[name], close


async def make_async_client(uri: str) -> Any:
    """pymongo's AsyncMongoClient, or Motor with MONGODB_ASYNC_DRIVER=motor (the server CI)."""
    if os.environ.get("MONGODB_ASYNC_DRIVER") == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(uri, tz_aware=True)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(uri, tz_aware=True)


async def _close_async_client(client: Any) -> None:
    closed = client.close()  # a coroutine for pymongo's client, None for Motor's
    if inspect.isawaitable(closed):
        await closed


BACKENDS: dict[str, Opener] = {
    "mongomock": _mongomock_sync,
    "mongomock-motor": _mongomock_async,
    "embedded": _embedded_sync,
    "embedded-async": _embedded_async,
    "server": _server_sync,
    "server-async": _server_async,
}
SERVER_BACKENDS: dict[str, Opener] = {"server", "server-async"}


@pytest.fixture(scope="session")
def wire_server() -> Iterator[WireServer]:
    """The server of the real-server tests: ``MONGODB_URI``, else a SecantusDB started for
    this session on a free loopback port and stopped at its end."""
    server = open_wire_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongodb_uri(wire_server: WireServer) -> str:
    return wire_server.uri


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as event_loop_runner:
        yield event_loop_runner


def _params(names: list[str]) -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.realserver) if name in SERVER_BACKENDS else name
        for name in names
    ]


def _open_backend(
    name: str, tmp_path: Path, runner: asyncio.Runner, request: pytest.FixtureRequest
) -> Iterator[Backend]:
    # The server starts only when a test needs it.
    uri = request.getfixturevalue("mongodb_uri") if name in SERVER_BACKENDS else ""
    store, raw, close = BACKENDS[name](tmp_path, runner, uri)
    try:
        yield Backend(name, store, raw)
    finally:
        close()


@pytest.fixture(params=_params(list(BACKENDS)))
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, runner: asyncio.Runner
) -> Iterator[Backend]:
    yield from _open_backend(request.param, tmp_path, runner, request)


@pytest.fixture(params=_params(["mongomock", "embedded", "server"]))
def sync_backend(
    request: pytest.FixtureRequest, tmp_path: Path, runner: asyncio.Runner
) -> Iterator[Backend]:
    """Only the sync flavours: for tests that run several threads at once."""
    yield from _open_backend(request.param, tmp_path, runner, request)


@pytest.fixture(params=_params(["mongomock-motor", "embedded-async", "server-async"]))
def async_backend(
    request: pytest.FixtureRequest, tmp_path: Path, runner: asyncio.Runner
) -> Iterator[Backend]:
    """Only the async flavours: for tests that run several tasks at once."""
    yield from _open_backend(request.param, tmp_path, runner, request)


@pytest.fixture
def store(backend: Backend) -> Any:
    return backend.store


@pytest.fixture
def mock_store() -> CosmosStore:
    """A sync store on a fresh mongomock database: for tests that need no backend matrix."""
    return CosmosStore(mongomock.MongoClient(tz_aware=True)["cosmos"])
