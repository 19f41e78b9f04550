"""The contract between the twins, and the round trips each read costs."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import mongomock
import pytest
from mongomock_motor import AsyncMongoMockClient

from cosmos_mongo import AsyncCosmosStore, CosmosStore
from cosmos_mongo.store import public_methods


class CountingDatabase:
    """Wraps a database and records every collection method call: one call, one round trip."""

    def __init__(self, database: Any) -> None:
        self._database = database
        self.calls: list[tuple[str, str]] = []

    def __getitem__(self, name: str) -> Any:
        return _CountingCollection(self, self._database[name], name)

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        """Every collection call passes here; subclasses inject faults around it."""
        self.calls.append((name, method))
        return target(*args, **kwargs)


class _CountingCollection:
    def __init__(self, owner: CountingDatabase, collection: Any, name: str) -> None:
        self._owner, self._collection, self._name = owner, collection, name

    def __getattr__(self, method: str) -> Any:
        target = getattr(self._collection, method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._owner.call(self._name, method, target, args, kwargs)

        return call


def test_twins_expose_the_same_public_methods_with_the_same_parameters() -> None:
    sync_methods = public_methods(CosmosStore) - {"close"}
    async_methods = public_methods(AsyncCosmosStore) - {"aclose"}
    assert sync_methods == async_methods
    for name in sync_methods:
        sync_sig = inspect.signature(getattr(CosmosStore, name))
        async_sig = inspect.signature(getattr(AsyncCosmosStore, name))
        assert list(sync_sig.parameters.values()) == list(async_sig.parameters.values()), name
        method = getattr(AsyncCosmosStore, name)
        if name.startswith("iter_"):
            assert inspect.isasyncgenfunction(method), name
        elif name != "connect":
            assert inspect.iscoroutinefunction(method), name
    assert inspect.iscoroutinefunction(AsyncCosmosStore.aclose)


def test_async_twin_documents_itself_with_the_sync_text_connect_included() -> None:
    for name in public_methods(CosmosStore) - {"close"}:
        assert getattr(AsyncCosmosStore, name).__doc__ == getattr(CosmosStore, name).__doc__


def test_public_methods_document_what_they_raise() -> None:
    for name in public_methods(CosmosStore) - {"close"}:
        doc = getattr(CosmosStore, name).__doc__ or ""
        returns_none_only = name in {"get_prompt", "get_run"}
        assert "Raises:" in doc or returns_none_only, name


def seeded(database: Any) -> tuple[str, str]:
    """A prompt enhanced twice (a new child, then in place), with a transfer run."""
    store = CosmosStore(database)
    prompt = store.create_prompt("a robot arm", {}, {"name": "robot"})
    child = store.enhance_prompt(prompt.id)
    store.enhance_prompt(child.enhanced_prompt_id, create_new=False)
    run = store.create_run(prompt.id, {})
    return child.enhanced_prompt_id, run.id


READS = {
    "get_prompt": lambda s, p, r: s.get_prompt(p),
    "list_prompts": lambda s, p, r: s.list_prompts(limit=10, offset=1),
    "search_prompts": lambda s, p, r: s.search_prompts("robot"),
    "preview_prompt_deletion": lambda s, p, r: s.preview_prompt_deletion(p),
    "get_run": lambda s, p, r: s.get_run(r),
    "list_runs": lambda s, p, r: s.list_runs(prompt_id=p, model_type="transfer", status="pending"),
    "get_enhancement_details": lambda s, p, r: s.get_enhancement_details(p),
    "get_original_prompt": lambda s, p, r: s.get_original_prompt(p),
    "list_enhanced_prompts": lambda s, p, r: s.list_enhanced_prompts(),
    "get_enhancement_history": lambda s, p, r: s.get_enhancement_history(p),
    "get_lineage": lambda s, p, r: s.get_lineage(p),
}


def _round_trips_paragraph() -> str:
    api = (Path(__file__).parent.parent / "docs" / "API.md").read_text()
    return " ".join(api.split("Each read helper is one database round trip", 1)[1].split())


def test_api_md_names_as_one_round_trip_exactly_the_reads_counted_here() -> None:
    paragraph = _round_trips_paragraph()
    named = set(re.findall(r"`(\w+)`", paragraph.split("The `iter_*` methods", 1)[0]))
    assert named == set(READS)


def test_verify_makes_the_round_trips_api_md_states() -> None:
    counts = {}
    for quick in (True, False):
        database = mongomock.MongoClient(tz_aware=True)["cosmos"]
        seeded(database)
        counting = CountingDatabase(database)
        CosmosStore(counting).verify(quick=quick)
        counts[quick] = len(counting.calls)
    stated = f"`verify(quick=True)` makes {counts[True]} round trips and the full `verify()` "
    assert stated + f"{counts[False]}," in _round_trips_paragraph(), counts


@pytest.mark.parametrize("read", sorted(READS))
def test_every_read_helper_is_one_round_trip_sync(read: str) -> None:
    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    prompt_id, run_id = seeded(database)
    counting = CountingDatabase(database)
    READS[read](CosmosStore(counting), prompt_id, run_id)
    assert len(counting.calls) == 1, counting.calls


@pytest.mark.parametrize("read", sorted(READS))
def test_every_read_helper_is_one_round_trip_async(read: str) -> None:
    client = mongomock.MongoClient(tz_aware=True)
    prompt_id, run_id = seeded(client["cosmos"])
    counting = CountingDatabase(AsyncMongoMockClient(mock_mongo_client=client)["cosmos"])
    asyncio.run(READS[read](AsyncCosmosStore(counting), prompt_id, run_id))
    assert len(counting.calls) == 1, counting.calls


def test_ensure_indexes_is_idempotent(mock_store: CosmosStore) -> None:
    first = mock_store.ensure_indexes()
    second = mock_store.ensure_indexes()
    assert first == second
    names = {index["name"] for index in mock_store.db["prompts"].list_indexes()}
    assert {"prompts_enhanced_created_at_id", "prompts_created_at_id"} <= names


def test_partial_index_on_the_enhanced_flag(mock_store: CosmosStore) -> None:
    mock_store.ensure_indexes()
    info = mock_store.db["prompts"].index_information()["prompts_enhanced_created_at_id"]
    assert info["key"] == [("parameters.enhanced", 1), ("created_at", -1), ("_id", -1)]
    assert info["partialFilterExpression"] == {"parameters.enhanced": True}
