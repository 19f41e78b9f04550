"""What only a real MongoDB server can show: query plans and command counts.

Skipped unless ``MONGODB_URI`` is set, e.g.
``MONGODB_URI=mongodb://localhost:27017 python -m pytest tests/realserver``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cosmos_mongo import CosmosStore
from cosmos_mongo import queries as q

MONGODB_URI = os.environ.get("MONGODB_URI")
pytestmark = [
    pytest.mark.realserver,
    pytest.mark.skipif(not MONGODB_URI, reason="set MONGODB_URI to run against a server"),
]


class CommandCounter:
    """A pymongo command listener that records the commands a client sends."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: Any) -> None:
        if event.command_name not in {"endSessions", "hello", "isMaster", "ping"}:
            self.commands.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[CosmosStore, CommandCounter]]:
    from pymongo import MongoClient, monitoring

    counter = CommandCounter()

    class Listener(monitoring.CommandListener):
        def started(self, event: Any) -> None:
            counter.started(event)

        def succeeded(self, event: Any) -> None:
            counter.succeeded(event)

        def failed(self, event: Any) -> None:
            counter.failed(event)

    client: Any = MongoClient(MONGODB_URI, tz_aware=True, event_listeners=[Listener()])
    name = f"cosmos_test_{uuid.uuid4().hex[:12]}"
    store = CosmosStore(client[name])
    store.ensure_indexes()
    try:
        yield store, counter
    finally:
        client.drop_database(name)
        client.close()


def _stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for key in ("inputStage", "queryPlan"):
        if key in plan:
            found += _stages(plan[key])
    for child in plan.get("inputStages", []):
        found += _stages(child)
    return found


def test_enhanced_listing_uses_the_partial_index_with_no_sort_stage(server: Any) -> None:
    store, _ = server
    start = datetime(2026, 1, 1, tzinfo=UTC)
    store.db["prompts"].insert_many(
        {
            "_id": f"ps_{i:032x}",
            "prompt_text": "p",
            "inputs": {},
            "created_at": start + timedelta(seconds=i),
            "parameters": {"enhanced": True} if i % 10 == 0 else {},
        }
        for i in range(500)
    )
    cursor = (
        store.db["prompts"].find(q.enhanced_prompts_filter()).sort(list(q.NEWEST_FIRST)).limit(20)
    )
    explained = cursor.explain()
    stages = _stages(explained["queryPlanner"]["winningPlan"])
    names = [stage.get("stage") for stage in stages]
    assert "SORT" not in names
    scans = [stage for stage in stages if stage.get("stage") == "IXSCAN"]
    assert scans and scans[0]["indexName"] == "prompts_enhanced_created_at"
    assert scans[0]["isPartial"] is True


@pytest.mark.parametrize(
    "read",
    [
        lambda s, p, r: s.get_prompt(p),
        lambda s, p, r: s.list_prompts(),
        lambda s, p, r: s.search_prompts("robot"),
        lambda s, p, r: s.preview_prompt_deletion(p),
        lambda s, p, r: s.get_run(r),
        lambda s, p, r: s.list_runs(prompt_id=p),
    ],
)
def test_each_read_sends_one_command(server: Any, read: Any) -> None:
    store, counter = server
    prompt = store.create_prompt("a robot arm", {}, {})
    run = store.create_run(prompt.id, {})
    counter.commands.clear()
    read(store, prompt.id, run.id)
    assert len(counter.commands) == 1, counter.commands


def test_runs_by_prompt_use_the_prompt_index(server: Any) -> None:
    store, _ = server
    prompt = store.create_prompt("a robot arm", {}, {})
    store.create_run(prompt.id, {})
    explained = store.db["runs"].find(q.runs_filter(prompt.id)).sort(list(q.NEWEST_FIRST)).explain()
    stages = _stages(explained["queryPlanner"]["winningPlan"])
    assert any(s.get("indexName") == "runs_prompt_id_created_at" for s in stages)
    assert "SORT" not in [s.get("stage") for s in stages]
