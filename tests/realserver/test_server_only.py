"""What only a real MongoDB server can show: query plans and command counts.

Run over the wire on every run: against ``mongodb_uri`` if set, else the session's SecantusDB
(tests/wire_server.py), e.g. ``python -m pytest tests/realserver``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cosmos_mongo import CosmosStore
from cosmos_mongo import queries as q
from tests.helpers.plans import plan_stages
from tests.wire_server import (
    MULTI_FIELD_GAP,
    ROOTED_OR_GAP,
    SERVE_ROOTED_OR_GAP,
    SERVE_TEXT_GAP,
    SORT_STAGE_GAP,
    TEXT_INDEX_GAP,
    WireServer,
    serve_gap,
    stand_in_gap,
)

pytestmark = pytest.mark.realserver


class CommandCounter:
    """A pymongo command listener that records the commands a client sends."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.sent: list[dict[str, Any]] = []  # the commands themselves, same order

    def started(self, event: Any) -> None:
        if event.command_name not in {"endSessions", "hello", "isMaster", "ping"}:
            self.commands.append(event.command_name)
            self.sent.append(dict(event.command))

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@pytest.fixture
def server(mongodb_uri: str) -> Iterator[tuple[CosmosStore, CommandCounter]]:
    from pymongo import MongoClient, monitoring

    counter = CommandCounter()

    class Listener(monitoring.CommandListener):
        def started(self, event: Any) -> None:
            counter.started(event)

        def succeeded(self, event: Any) -> None:
            counter.succeeded(event)

        def failed(self, event: Any) -> None:
            counter.failed(event)

    client: Any = MongoClient(mongodb_uri, tz_aware=True, event_listeners=[Listener()])
    name = f"cosmos_test_{uuid.uuid4().hex[:12]}"
    store = CosmosStore(client[name])
    store.ensure_indexes()
    try:
        yield store, counter
    finally:
        client.drop_database(name)
        client.close()


_stages = plan_stages


def _enhanced_listing_plan(store: CosmosStore) -> list[dict[str, Any]]:
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
    return _stages(cursor.explain()["queryPlanner"]["winningPlan"])


def test_the_enhanced_listing_scans_the_partial_index(server: Any) -> None:
    stages = _enhanced_listing_plan(server[0])
    scans = [stage for stage in stages if stage.get("stage") == "IXSCAN"]
    assert scans and scans[0]["indexName"] == "prompts_enhanced_created_at_id"
    assert scans[0]["isPartial"] is True


def test_the_enhanced_listing_needs_no_sort_stage(
    server: Any, wire_server: WireServer, request: pytest.FixtureRequest
) -> None:
    # db.c.createIndex({a: 1, b: -1})
    # db.c.insertMany([{a: 1, b: 1}, {a: 1, b: 2}])
    # db.c.find({a: 1}).sort({b: -1}).explain().queryPlanner.winningPlan  // SORT over IXSCAN
    stand_in_gap(request, wire_server, SORT_STAGE_GAP)
    assert "SORT" not in [stage.get("stage") for stage in _enhanced_listing_plan(server[0])]


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


def _runs_by_prompt_plan(store: CosmosStore) -> list[dict[str, Any]]:
    prompt = store.create_prompt("a robot arm", {}, {})
    store.create_run(prompt.id, {})
    explained = store.db["runs"].find(q.runs_filter(prompt.id)).sort(list(q.NEWEST_FIRST)).explain()
    return _stages(explained["queryPlanner"]["winningPlan"])


def test_runs_by_prompt_use_the_prompt_index(server: Any) -> None:
    stages = _runs_by_prompt_plan(server[0])
    assert any(s.get("indexName") == "runs_prompt_id_created_at_id" for s in stages)


def test_runs_by_prompt_need_no_sort_stage(
    server: Any, wire_server: WireServer, request: pytest.FixtureRequest
) -> None:
    # db.c.createIndex({a: 1, b: -1})
    # db.c.insertMany([{a: 1, b: 1}, {a: 1, b: 2}])
    # db.c.find({a: 1}).sort({b: -1}).explain().queryPlanner.winningPlan  // SORT over IXSCAN
    stand_in_gap(request, wire_server, SORT_STAGE_GAP)
    assert "SORT" not in [s.get("stage") for s in _runs_by_prompt_plan(server[0])]


def _plan_uses(explained: dict[str, Any], index: str) -> bool:
    return any(
        s.get("indexName") == index for s in _stages(explained["queryPlanner"]["winningPlan"])
    )


def _enhanced_twice(store: CosmosStore, others: int) -> tuple[str, str]:
    """``others`` unrelated enhancements (so scanning by model_type or created_at is plainly
    the worse plan), then one original and its child: their ids."""
    for i in range(others):
        other = store.create_prompt(f"Other prompt {i}", {}, {})
        store.enhance_prompt(other.id, enhanced_text=f"Other rewrite {i}.")
    original = store.create_prompt("A robot arm stacks blocks", {}, {})
    child = store.enhance_prompt(original.id, enhanced_text="A robot arm stacks three blocks.")
    assert child.enhanced_prompt_id is not None
    return original.id, child.enhanced_prompt_id


def test_the_details_and_children_lookups_use_their_indexes(server: Any) -> None:
    store, _ = server
    original_id, child_id = _enhanced_twice(store, 60)
    runs = store.db["runs"]
    details = runs.find({"outputs.enhanced_prompt_id": child_id}).explain()
    assert _plan_uses(details, "runs_enhanced_prompt_id_created_at_id")
    children = runs.find({"outputs.original_prompt_id": original_id}).explain()
    assert _plan_uses(children, "runs_original_prompt_id_created_at_id")


def test_the_history_merges_its_branches_indexes_with_no_sort_stage(
    server: Any, wire_server: WireServer, request: pytest.FixtureRequest
) -> None:
    # db.c.createIndex({a: 1, t: -1}); db.c.createIndex({b: 1, t: -1})
    # db.c.insertMany([{a: 1, t: 1}, {b: 1, t: 2}])
    # db.c.find({$or: [{a: 1}, {b: 1}]}).sort({t: -1}).explain()  // COLLSCAN, not SORT_MERGE
    stand_in_gap(request, wire_server, ROOTED_OR_GAP)
    serve_gap(request, wire_server, SERVE_ROOTED_OR_GAP)
    store, _ = server
    original_id, _child_id = _enhanced_twice(store, 60)
    history = store.db["runs"].find(q.history_filter(original_id)).sort(list(q.NEWEST_FIRST))
    explained = history.explain()
    history_stages = [st.get("stage") for st in _stages(explained["queryPlanner"]["winningPlan"])]
    assert "SORT" not in history_stages  # the branches arrive in order and are merged
    for index in (
        "runs_prompt_id_created_at_id",
        "runs_original_prompt_id_created_at_id",
        "runs_enhanced_prompt_id_created_at_id",
    ):
        assert _plan_uses(explained, index), index


def test_the_quick_checks_are_served_by_their_indexes(
    server: Any, wire_server: WireServer, request: pytest.FixtureRequest
) -> None:
    # db.c.createIndex({s: 1})
    # db.c.insertMany([{s: "a", m: 1}, {s: "b", m: 1}])
    # db.c.find({s: "a", m: 1}).explain().queryPlanner.winningPlan  // COLLSCAN, not IXSCAN s_1
    stand_in_gap(request, wire_server, MULTI_FIELD_GAP)
    store, _ = server
    _enhanced_twice(store, 30)
    before = datetime.now(UTC)
    runs = store.db["runs"]
    deletions = runs.find(q.interrupted_deletions_filter(before)).explain()
    assert _plan_uses(deletions, "runs_deletion_prompt_id")
    reverts = runs.find(q.pending_reverts_filter(before)).explain()
    assert _plan_uses(reverts, "runs_revert_pending")
    stale = runs.find(q.stale_enhancements_filter(before)).explain()
    assert _plan_uses(stale, "runs_status_created_at_id")


def test_graph_lookup_walks_lineage_on_a_server(server: Any) -> None:
    store, counter = server
    root = store.create_prompt("A robot arm stacks blocks", {}, {})
    g1 = store.enhance_prompt(root.id, enhanced_text="Generation one.")
    store.enhance_prompt(
        g1.enhanced_prompt_id, create_new=False, enhanced_text="Generation one, again."
    )
    g2 = store.enhance_prompt(g1.enhanced_prompt_id, enhanced_text="Generation two.")
    counter.commands.clear()
    lineage = store.get_lineage(g1.enhanced_prompt_id)
    assert counter.commands == ["aggregate"]
    assert [e.parent_id for e in lineage.ancestors] == [root.id]
    assert [e.child_id for e in lineage.descendants] == [g2.enhanced_prompt_id]
    assert len(lineage.in_place) == 1
    # depthField comes back as Int64 on a server: the raw stage works the same way
    raw = list(store.db["prompts"].aggregate(q.lineage_pipeline(g2.enhanced_prompt_id)))
    assert {run["_id"] for run in raw[0]["up_runs"]} >= {g1.run_id, g2.run_id}


def test_an_agent_enhancement_is_one_read_and_three_writes_on_a_server(server: Any) -> None:
    store, counter = server
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    counter.commands.clear()
    store.enhance_prompt(prompt.id, enhanced_text="A robot arm stacks three blocks.")
    assert counter.commands == ["find", "insert", "insert", "update"]


def test_a_read_after_a_write_in_one_call_waits_for_that_write(server: Any) -> None:
    """create_run reads, inserts, reads again in one causally consistent session: every
    command carries the session, and on a replica set the second read names the insert's
    time (afterClusterTime), so no secondary or lagging node can answer it from before."""
    store, counter = server
    prompt = store.create_prompt("a robot arm", {}, {})
    counter.commands.clear()
    counter.sent.clear()
    store.create_run(prompt.id, {})
    assert counter.commands == ["find", "insert", "find"]
    assert len({str(command["lsid"]) for command in counter.sent}) == 1
    if store.db.client.admin.command("hello").get("setName"):
        assert "afterClusterTime" in counter.sent[2].get("readConcern", {})


def test_a_read_only_store_sends_no_write_command_and_creates_no_database(
    mongodb_uri: str,
) -> None:
    from pymongo import MongoClient

    from cosmos_mongo.config import Settings
    from cosmos_mongo.errors import ReadOnlyError

    name = f"cosmos_test_{uuid.uuid4().hex[:12]}"
    settings = Settings(uri=mongodb_uri, database=name, read_only=True)
    with CosmosStore.connect(settings=settings) as store:  # no ensure_indexes when read-only
        assert store.list_prompts() == [] and store.verify().ok
        with pytest.raises(ReadOnlyError):
            store.create_prompt("A robot arm stacks blocks", {}, {})
    client: Any = MongoClient(mongodb_uri)
    try:
        assert name not in client.list_database_names()
    finally:
        client.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_mcp_server_reads_the_named_database_read_only(mongodb_uri: str) -> None:
    from mcp import Client

    from cosmos_mongo.config import Settings
    from mcp_server import ServerSettings, build_server

    name = f"cosmos_test_{uuid.uuid4().hex[:12]}"
    server = build_server(
        ServerSettings(read_only=True), library_settings=Settings(uri=mongodb_uri, database=name)
    )
    async with Client(server) as session:
        listed = await session.call_tool("list_prompts", {})
        assert not listed.is_error and listed.structured_content["prompts"] == []
    from pymongo import MongoClient

    client: Any = MongoClient(mongodb_uri)
    try:
        assert name not in client.list_database_names()
    finally:
        client.close()


def test_word_search_is_served_by_the_text_index(
    server: Any, wire_server: WireServer, request: pytest.FixtureRequest
) -> None:
    # db.c.insertOne({t: "a robot arm"})
    # db.c.createIndex({t: "text"})  // code 67 CannotCreateIndex on the stand-in
    # db.c.find({$text: {$search: "robot"}})  // mongod: the document; the stand-in: an error
    stand_in_gap(request, wire_server, TEXT_INDEX_GAP)
    serve_gap(request, wire_server, SERVE_TEXT_GAP)
    store, _ = server
    store.create_text_index()
    robot = store.create_prompt("A robot arm stacks blocks", {}, {})
    for i in range(50):
        store.create_prompt(f"Waves roll onto a beach {i}", {}, {})
    assert [p.id for p in store.search_prompts("robot", match="words")] == [robot.id]
    assert [p.id for p in store.search_prompts("robot blocks", match="words")] == [robot.id]
    assert store.search_prompts("rob", match="words") == []  # whole words only
    explained = store.db["prompts"].find(q.words_filter("robot")).explain()
    assert "TEXT" in str(explained["queryPlanner"]["winningPlan"]) or "TEXT_MATCH" in str(
        explained["queryPlanner"]["winningPlan"]
    )
