"""What a real MongoDB at a user's site needs: explicit concerns, fast and clear failure,
every driver error translated. (Index reconciliation: tests/test_indexes.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mongomock
import pytest
from pymongo import ReadPreference
from pymongo.errors import OperationFailure

from cosmos_mongo import CosmosStore, InvalidInputError, StorageError
from cosmos_mongo.config import Settings
from cosmos_mongo.store import explicit_concerns
from tests.test_contract import CountingDatabase

REPO = Path(__file__).parent.parent


@pytest.mark.realserver
def test_clients_read_from_the_primary_and_write_majority_journaled(mongodb_uri: str) -> None:
    with CosmosStore.connect(mongodb_uri, ensure_indexes=False) as store:
        assert store.db.write_concern.document == {"w": "majority", "j": True}
        assert store.db.read_preference == ReadPreference.PRIMARY
    chosen = with_options(mongodb_uri, "w=1&readPreference=secondaryPreferred")
    with CosmosStore.connect(chosen, ensure_indexes=False) as store:
        assert store.db.write_concern.document == {"w": 1, "j": True}
        assert store.db.read_preference == ReadPreference.SECONDARY_PREFERRED


def test_the_uri_may_override_each_concern_by_name() -> None:
    assert explicit_concerns("mongodb://h/?W=2&JOURNAL=false") == {"readPreference": "primary"}
    assert explicit_concerns("mongodb+srv://u:p@c/db") == {
        "w": "majority",
        "journal": True,
        "readPreference": "primary",
    }


class Refusing(CountingDatabase):
    """Raises ``error`` from every call of ``method``."""

    def __init__(self, database: Any, method: str, error: BaseException) -> None:
        super().__init__(database)
        self.method, self.error = method, error

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if method == self.method:
            raise self.error
        return super().call(name, method, target, args, kwargs)


def test_an_unauthorized_user_gets_one_line_that_says_what_to_do() -> None:
    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    denied = OperationFailure(
        "not authorized", code=13, details={"errmsg": "not authorized on cosmos to execute"}
    )
    store = CosmosStore(Refusing(database, "create_index", denied))
    with pytest.raises(StorageError) as caught:
        store.ensure_indexes()
    message = str(caught.value)
    assert message.startswith("not authorized") and "--no-ensure-indexes" in message
    assert "\n" not in message


def test_a_bson_overflow_is_an_input_error_not_an_escape() -> None:
    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    store = CosmosStore(
        Refusing(database, "find", OverflowError("MongoDB can only handle 8-byte ints"))
    )
    with pytest.raises(InvalidInputError):
        store.list_prompts()


def test_the_cli_fails_fast_with_one_line_naming_the_host_not_the_password(
    tmp_path: Path,
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COSMOS_MONGO_")},
        "COSMOS_MONGO_URI": "mongodb://admin:hunter2@127.0.0.1:1/?appname=x",
        "COSMOS_MONGO_TIMEOUT_MS": "300",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-m", "cosmos_mongo.cli", "prompt", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "MongoDB unreachable (ServerSelectionTimeoutError): 127.0.0.1:1" in lines[0]
    ), result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.realserver
def test_the_timeout_settings_reach_the_client(mongodb_uri: str) -> None:
    settings = Settings(timeout_ms=1234, operation_timeout_ms=45_000)
    with CosmosStore.connect(mongodb_uri, settings=settings, ensure_indexes=False) as s:
        options = s.db.client.options
        assert options.pool_options.connect_timeout == pytest.approx(1.234)
        assert options.timeout == pytest.approx(45)  # every operation, its wait for a primary too
        assert options.server_selection_timeout == pytest.approx(30)  # pymongo's own default
    unlimited = Settings(operation_timeout_ms=0)
    with CosmosStore.connect(mongodb_uri, settings=unlimited, ensure_indexes=False) as s:
        assert s.db.client.options.timeout is None
    chosen = with_options(mongodb_uri, "timeoutMS=7000")  # the URI's own wins, as with concerns
    with CosmosStore.connect(chosen, settings=settings, ensure_indexes=False) as s:
        assert s.db.client.options.timeout == pytest.approx(7)


def with_options(uri: str, options: str) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}{options}"


class Recording(CountingDatabase):
    """Records the filter of every single-document write."""

    SINGLE = {"update_one", "delete_one", "find_one_and_update"}

    def __init__(self, database: Any) -> None:
        super().__init__(database)
        self.filters: list[tuple[str, Any]] = []

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if method in self.SINGLE:
            self.filters.append((method, args[0]))
        return super().call(name, method, target, args, kwargs)


def test_every_single_document_write_targets_one_id() -> None:
    """So that with the recommended shard key (hashed _id) every such write goes to one shard
    and carries the shard key, as MongoDB 6.0 requires of updateOne/findAndModify."""
    from datetime import timedelta

    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    recording = Recording(database)
    store = CosmosStore(recording)
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {"name": "r"})
    child = store.enhance_prompt(prompt.id)
    done = store.enhance_prompt(prompt.id, create_new=False, enhanced_text="Rewritten.")
    store.revert_enhancement(done.run_id)
    run = store.create_run(prompt.id, {})
    store.update_run_status(run.id, "running")
    store.set_run_rating(run.id, 3)
    store.update_prompt(prompt.id, prompt_text="Another text.")
    stuck = store.create_run(prompt.id, {}, model_type="enhance", initial_status="running")
    store.repair(stale_after=timedelta(0))
    store.migrate(dry_run=False)
    store.delete_run(stuck.id)
    store.delete_prompt(child.enhanced_prompt_id)
    store.delete_prompt(prompt.id, force=True)
    assert len(recording.filters) > 10
    for method, filter_ in recording.filters:
        assert isinstance(filter_.get("_id"), str), (method, filter_)


class FindRecording(CountingDatabase):
    def __init__(self, database: Any) -> None:
        super().__init__(database)
        self.in_sizes: list[int] = []

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if method in ("find", "delete_many") and args:
            for condition in args[0].values():
                if isinstance(condition, dict) and "$in" in condition:
                    self.in_sizes.append(len(condition["$in"]))
        return super().call(name, method, target, args, kwargs)


def test_migrate_works_in_batches_so_no_in_list_grows_with_the_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime

    from cosmos_mongo import legacy

    monkeypatch.setattr(legacy, "MIGRATE_BATCH", 3)
    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    parent = CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
    for i in range(8):
        database["prompts"].insert_one(
            {
                "_id": f"ps_{i:032x}",
                "prompt_text": f"Legacy rewrite {i}.",
                "inputs": {},
                "parameters": {
                    "enhanced": True,
                    "enhancement_model": "old-llm",
                    "parent_prompt_id": parent.id,
                },
                "created_at": datetime(2025, 1, 1, tzinfo=UTC),
            }
        )
    recording = FindRecording(database)
    report = CosmosStore(recording).migrate(dry_run=False)
    assert report.prompts_examined == 8 and len(report.runs_created) == 8
    assert recording.in_sizes and max(recording.in_sizes) <= 3
    assert CosmosStore(database).verify().ok


def test_a_lineage_larger_than_one_answer_is_cut_and_says_so(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cosmos_mongo import queries as q

    store = backend.store
    root = store.create_prompt("A robot arm stacks blocks", {}, {})
    chain = [root.id]
    for generation in range(5):
        chain.append(
            store.enhance_prompt(chain[-1], enhanced_text=f"Gen {generation}.").enhanced_prompt_id
        )
    for sibling in range(4):
        store.enhance_prompt(root.id, enhanced_text=f"Sibling {sibling}.")
    whole = store.get_lineage(root.id)
    assert not whole.truncated and len(whole.descendants) == 9
    monkeypatch.setattr(q, "LINEAGE_MAX_DEPTH", 3)
    deep = store.get_lineage(root.id)
    assert deep.truncated and max(edge.depth for edge in deep.descendants) == 3
    assert store.get_lineage(chain[3]).descendants  # the rest, from a prompt at the edge
    monkeypatch.setattr(q, "LINEAGE_MAX_DEPTH", 100)
    monkeypatch.setattr(q, "LINEAGE_MAX_NODES", 4)
    wide = store.get_lineage(root.id)
    assert wide.truncated and len(wide.descendants) <= 4


def test_word_search_is_an_option_that_says_where_it_works(backend: Any) -> None:
    store = backend.store
    robot = store.create_prompt("A robot arm stacks blocks", {}, {})
    assert [p.id for p in store.search_prompts("ROBOT ARM")] == [robot.id]  # the default
    with pytest.raises(InvalidInputError, match="must be 'substring' or 'words'"):
        store.search_prompts("robot", match="regex")
    if not backend.name.startswith("server"):  # servers: tests/realserver (text index)
        with pytest.raises(InvalidInputError, match="needs a MongoDB server with the text index"):
            store.search_prompts("robot", match="words")


class RecordingSession:
    """Stands in for a driver's ClientSession: counts how often it is ended."""

    def __init__(self) -> None:
        self.ended = 0

    def end_session(self) -> None:
        self.ended += 1

    def __enter__(self) -> RecordingSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end_session()


class SessionRecordingDatabase:
    """A mongomock database behind a client that hands out sessions, recording the session
    each collection call was given (mongomock itself refuses the keyword)."""

    def __init__(self, database: Any) -> None:
        self.database = database
        self.started: list[dict[str, Any]] = []
        self.sessions: list[RecordingSession] = []
        self.calls: list[tuple[str, Any]] = []
        self.client = self

    def start_session(self, **options: Any) -> RecordingSession:
        self.started.append(options)
        self.sessions.append(RecordingSession())
        return self.sessions[-1]

    def __getitem__(self, name: str) -> Any:
        collection, calls = self.database[name], self.calls

        class Collection:
            def __getattr__(self, method: str) -> Any:
                def call(*args: Any, session: Any = None, **kwargs: Any) -> Any:
                    calls.append((method, session))
                    return getattr(collection, method)(*args, **kwargs)

                return call

        return Collection()


def test_only_real_drivers_get_sessions(tmp_path: Path) -> None:
    from mongomock_motor import AsyncMongoMockClient
    from motor.motor_asyncio import AsyncIOMotorClient
    from pymongo import AsyncMongoClient, MongoClient

    from cosmos_mongo.embedded import open_embedded
    from cosmos_mongo.ops import sessions_supported

    unreachable = "mongodb://127.0.0.1:1/"
    assert sessions_supported(MongoClient(unreachable, connect=False)["x"])
    assert sessions_supported(AsyncMongoClient(unreachable, connect=False)["x"])
    assert sessions_supported(AsyncIOMotorClient(unreachable, connect=False)["x"])
    assert not sessions_supported(mongomock.MongoClient()["x"])
    assert not sessions_supported(AsyncMongoMockClient()["x"])  # a Motor class over mongomock
    with open_embedded(tmp_path) as embedded:
        assert not sessions_supported(embedded)


def test_each_call_runs_in_one_causally_consistent_session_that_is_ended() -> None:
    from cosmos_mongo.ops import Services, run_sync
    from cosmos_mongo.workflows import create_prompt, create_run

    database = SessionRecordingDatabase(mongomock.MongoClient(tz_aware=True)["cosmos"])
    with_sessions = Services(causal_sessions=True)
    prompt = run_sync(database, create_prompt("A robot arm", {}, {}), with_sessions)
    run_sync(database, create_run(prompt.id, {}), with_sessions)
    assert database.started == [{"causal_consistency": True}] * 2
    first, second = database.sessions
    assert [session for _, session in database.calls] == [first, second, second, second]
    assert [method for method, _ in database.calls[1:]] == ["find_one", "insert_one", "find_one"]
    assert first.ended == second.ended == 1
    with pytest.raises(InvalidInputError):  # a workflow that fails still ends its session
        run_sync(database, create_run({"$ne": 1}, {}), with_sessions)
    assert database.sessions[-1].ended == 1


@pytest.mark.parametrize("motor_style", [True, False])
def test_async_calls_start_and_end_sessions_of_either_async_driver(motor_style: bool) -> None:
    """Motor's start_session is a coroutine; pymongo async's is not, but its end_session is."""
    import asyncio

    from cosmos_mongo.ops import Services, run_async
    from cosmos_mongo.workflows import get_prompt

    class AsyncSession(RecordingSession):
        async def end_session(self) -> None:  # type: ignore[override]
            self.ended += 1

    database = SessionRecordingDatabase(mongomock.MongoClient(tz_aware=True)["cosmos"])
    session = AsyncSession()

    async def motor_start(**options: Any) -> AsyncSession:
        database.started.append(options)
        return session

    def pymongo_start(**options: Any) -> AsyncSession:
        database.started.append(options)
        return session

    database.start_session = motor_start if motor_style else pymongo_start  # type: ignore[method-assign,assignment]
    found = asyncio.run(
        run_async(database, get_prompt("ps_" + "0" * 16), Services(causal_sessions=True))
    )
    assert found is None
    assert database.started == [{"causal_consistency": True}]
    assert database.calls == [("find_one", session)] and session.ended == 1


@pytest.mark.realserver
def test_a_store_on_a_real_driver_opens_sessions_and_one_on_mongomock_does_not(
    mongodb_uri: str,
) -> None:
    with CosmosStore.connect(mongodb_uri, ensure_indexes=False) as store:
        assert store._services().causal_sessions
    assert not CosmosStore(mongomock.MongoClient(tz_aware=True)["x"])._services().causal_sessions
