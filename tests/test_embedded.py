"""The embedded engine in one process: persistence, catch-up, rollback, and its indexes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import DuplicateKeyError

from cosmos_mongo import AsyncCosmosStore, CosmosStore, InvalidInputError, StorageError
from cosmos_mongo.config import Settings, default_data_dir
from cosmos_mongo.embedded import (
    AsyncEmbeddedDatabase,
    EmbeddedDatabase,
    keys,
    open_embedded,
    pipeline,
    reading,
    surface,
    writing,
)
from cosmos_mongo.ops import Flow, InsertOne, run_async, run_sync
from tests.predecessor_db import add_prompt, create, pid


def test_data_survives_closing_and_reopening(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        prompt = store.create_prompt(
            "rain on a street", {"video": "a.mp4"}, {"nested": {"k": [1, 2.5]}}
        )
        run = store.update_run_status(store.create_run(prompt.id, {}).id, "running")
    with open_embedded(tmp_path) as database:
        reopened = CosmosStore(database)
        assert reopened.get_prompt(prompt.id) == prompt
        assert reopened.get_run(run.id) == run
        assert reopened.get_run(run.id).started_at.tzinfo is not None  # type: ignore[union-attr]


def test_a_second_handle_sees_writes_at_once_and_decodes_only_what_it_reads(
    tmp_path: Path,
) -> None:
    first, second = open_embedded(tmp_path), open_embedded(tmp_path)
    writer, reader = CosmosStore(first), CosmosStore(second)
    writer.ensure_indexes()
    for i in range(20):
        writer.create_prompt(f"prompt {i}", {}, {})
    assert second.engine.stats.documents_decoded == 0  # opening reads no document
    assert len(reader.list_prompts(limit=5)) == 5
    assert second.engine.stats.documents_decoded == 5  # the page, walked off the index
    prompt = writer.create_prompt("one more", {}, {})
    writer.update_prompt(prompt.id, parameters={"seed": 7})
    assert reader.get_prompt(prompt.id).parameters == {"seed": 7}  # type: ignore[union-attr]
    assert second.engine.stats.documents_decoded == 6
    names = {index["name"] for index in second["prompts"].list_indexes()}
    assert "prompts_enhanced_created_at_id" in names  # indexes travel through the file too
    first.close()
    second.close()


def test_deletes_reach_the_other_handle(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as first, open_embedded(tmp_path) as second:
        prompt = CosmosStore(first).create_prompt("doomed", {}, {})
        assert CosmosStore(second).get_prompt(prompt.id) is not None
        CosmosStore(first).delete_prompt(prompt.id)
        assert CosmosStore(second).get_prompt(prompt.id) is None


def test_a_write_that_fails_midway_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = open_embedded(tmp_path)
    store = CosmosStore(database)
    prompt = store.create_prompt("original", {}, {})

    def fail(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(writing._Writer, "put", fail)
    with pytest.raises(StorageError, match="disk is full"):
        store.update_prompt(prompt.id, prompt_text="changed")
    with pytest.raises(StorageError):
        store.create_prompt("never stored", {}, {})
    monkeypatch.undo()
    assert store.get_prompt(prompt.id) == prompt
    assert [p.id for p in store.list_prompts()] == [prompt.id]
    database.close()


def test_duplicate_key_is_rejected_and_changes_nothing(tmp_path: Path) -> None:
    database = open_embedded(tmp_path)
    database["prompts"].insert_one({"_id": "x", "v": 1})
    with pytest.raises(Exception, match=r"(?i)duplicate"):
        database["prompts"].insert_one({"_id": "x", "v": 2})
    assert database["prompts"].find_one({"_id": "x"})["v"] == 1
    database.close()
    with open_embedded(tmp_path) as reopened:
        assert reopened["prompts"].find_one({"_id": "x"})["v"] == 1


# -- One workflow, one transaction: the drivers group a workflow's writes on the embedded default


def test_an_enhancements_writes_commit_once_and_another_handle_sees_them_whole(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path) as first, open_embedded(tmp_path) as second:
        store = CosmosStore(first)
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        commits = first.engine.stats.write_transactions
        result = store.enhance_prompt(prompt.id, enhanced_text="A detailed rewrite of it.")
        assert first.engine.stats.write_transactions == commits + 1  # three writes, one commit
        details = CosmosStore(second).get_enhancement_details(result.enhanced_prompt_id)
        assert details is not None and details.run_id == result.run_id


def test_other_handles_see_a_units_writes_only_once_it_ends(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as first, open_embedded(tmp_path) as second:
        with first.unit_of_work():
            first["prompts"].insert_one({"_id": "a"})
            assert first["prompts"].find_one({"_id": "a"}) == {"_id": "a"}  # its own writes
            assert second["prompts"].find({}) == []
        assert second["prompts"].find({}) == [{"_id": "a"}]


def test_another_thread_waits_for_a_unit_to_end(tmp_path: Path) -> None:
    seen: list[Any] = []
    with open_embedded(tmp_path) as database:
        reader = threading.Thread(target=lambda: seen.append(database["prompts"].find({})))
        with database.unit_of_work():
            database["prompts"].insert_one({"_id": "a"})
            reader.start()
            reader.join(timeout=0.2)
            assert reader.is_alive() and seen == []  # it cannot read into the open transaction
        reader.join(timeout=30)
        assert seen == [[{"_id": "a"}]]


def test_a_write_failing_inside_a_unit_is_undone_alone(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database, database.unit_of_work():
        database["prompts"].insert_one({"_id": "a", "v": 1})
        with pytest.raises(DuplicateKeyError):
            database["prompts"].insert_one({"_id": "a", "v": 2})
        database["prompts"].insert_one({"_id": "b"})
    with open_embedded(tmp_path) as reopened:
        assert reopened["prompts"].find({}) == [{"_id": "a", "v": 1}, {"_id": "b"}]


def test_an_exception_leaving_a_unit_keeps_the_writes_before_it(tmp_path: Path) -> None:
    database = open_embedded(tmp_path)
    with pytest.raises(RuntimeError), database.unit_of_work():
        database["prompts"].insert_one({"_id": "a"})
        raise RuntimeError("the workflow failed after its first write")
    database.close()
    with open_embedded(tmp_path) as reopened:
        assert reopened["prompts"].find({}) == [{"_id": "a"}]


class _FailingCommits:
    """A connection whose COMMIT fails as on a full disk."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._connection.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def test_a_unit_whose_commit_fails_raises_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        monkeypatch.setattr(database.engine, "_conn", _FailingCommits(database.engine._conn))
        with pytest.raises(StorageError, match="disk is full"):
            store.enhance_prompt(prompt.id, enhanced_text="A detailed rewrite of it.")
        monkeypatch.undo()
        assert store.list_prompts() == [prompt] and store.list_runs() == []


def test_a_long_workflow_commits_every_few_steps(tmp_path: Path) -> None:
    seen_midway: list[int] = []

    def forty_inserts(other: EmbeddedDatabase) -> Flow[None]:
        for i in range(40):
            yield from InsertOne("prompts", {"_id": f"p{i}"})
            if i == 19:
                seen_midway.append(len(other["prompts"].find({})))

    with open_embedded(tmp_path) as database, open_embedded(tmp_path) as other:
        run_sync(database, forty_inserts(other))
        assert 0 < seen_midway[0] < 20  # some were committed, the open unit's were not
        assert len(other["prompts"].find({})) == 40


def _predecessor_file(path: Path, prompts: int) -> Path:
    """A predecessor SQLite file holding ``prompts`` prompts and no runs."""
    db = create(path)
    for n in range(1, prompts + 1):
        add_prompt(db, pid(n), f"prompt {n}", "2024-01-01 00:00:00", {}, {})
    db.commit()
    db.close()
    return path


def test_import_progress_is_reported_once_its_batch_is_durable(tmp_path: Path) -> None:
    source = _predecessor_file(tmp_path / "cosmos.db", 30)
    reported: list[tuple[int, int]] = []
    with open_embedded(tmp_path / "data") as database, open_embedded(tmp_path / "data") as other:

        def progress(table: str, done: int, total: int | None) -> None:
            if table == "prompts":
                reported.append((done, len(other["prompts"].find({}))))

        CosmosStore(database).import_sqlite(source, batch_size=10, progress=progress)
    assert reported == [(10, 10), (20, 20), (30, 30)]


def test_the_async_store_groups_an_enhancements_writes_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        with open_embedded(tmp_path) as database:
            store = AsyncCosmosStore(AsyncEmbeddedDatabase(database))
            prompt = await store.create_prompt("A robot arm stacks blocks", {}, {})
            commits = database.engine.stats.write_transactions
            result = await store.enhance_prompt(prompt.id, enhanced_text="A detailed rewrite.")
            assert database.engine.stats.write_transactions == commits + 1
            assert (await store.get_run(result.run_id)).status == "completed"  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_cancelled_async_caller_lets_its_unit_finish_whole(tmp_path: Path) -> None:
    first_written, go_on = threading.Event(), threading.Event()

    def two_inserts() -> Flow[None]:
        yield from InsertOne("notes", {"_id": "a"})
        first_written.set()  # the workflow runs on the unit's worker thread
        assert go_on.wait(30)
        yield from InsertOne("notes", {"_id": "b"})

    async def scenario(database: EmbeddedDatabase) -> None:
        task = asyncio.create_task(run_async(AsyncEmbeddedDatabase(database), two_inserts()))
        assert await asyncio.to_thread(first_written.wait, 30)
        task.cancel()
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    with open_embedded(tmp_path) as database:
        asyncio.run(scenario(database))  # waits for the worker thread on the way out
        assert database["notes"].find({}) == [{"_id": "a"}, {"_id": "b"}]


def test_async_progress_is_reported_on_the_callers_thread_once_durable(tmp_path: Path) -> None:
    source = _predecessor_file(tmp_path / "cosmos.db", 20)
    reported: list[tuple[int, int, bool]] = []

    async def scenario() -> None:
        with (
            open_embedded(tmp_path / "data") as database,
            open_embedded(tmp_path / "data") as other,
        ):

            def progress(table: str, done: int, total: int | None) -> None:
                if table == "prompts":
                    on_caller = threading.current_thread() is threading.main_thread()
                    reported.append((done, len(other["prompts"].find({})), on_caller))

            store = AsyncCosmosStore(AsyncEmbeddedDatabase(database))
            await store.import_sqlite(source, batch_size=10, progress=progress)

    asyncio.run(scenario())
    assert reported == [(10, 10, True), (20, 20, True)]


def test_a_tombstone_an_older_version_left_is_taken_over_by_an_insert(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database:
        database["prompts"].insert_one({"_id": "a", "v": 1})
        database["prompts"].insert_one({"_id": "b", "v": 1})
    with sqlite3.connect(tmp_path / "cosmos.sqlite3") as older:  # how 0.3 deleted a document
        older.execute(
            "UPDATE documents SET body = NULL, body_crc = NULL WHERE collection = 'prompts'"
        )
    with open_embedded(tmp_path) as database:
        assert database["prompts"].find({}) == []
        database["prompts"].insert_one({"_id": "a", "v": 2})
        database["prompts"].update_one({"_id": "b"}, {"$set": {"v": 3}}, upsert=True)
        assert database["prompts"].find({}) == [{"_id": "a", "v": 2}, {"_id": "b", "v": 3}]
        with pytest.raises(DuplicateKeyError):
            database["prompts"].insert_one({"_id": "a", "v": 4})


def test_unopenable_data_directory_is_a_clear_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open the embedded database"):
        open_embedded(blocker / "data")


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "x" * 64, "a b"])
def test_database_names_that_are_not_safe_file_names_are_rejected(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(InvalidInputError, match="database"):
        open_embedded(tmp_path, name)


def test_data_dir_defaults_to_the_user_data_dir_and_env_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COSMOS_MONGO_DATA_DIR", raising=False)
    assert Settings().data_dir == default_data_dir()
    assert "cosmos-mongo" in str(default_data_dir())
    monkeypatch.setenv("COSMOS_MONGO_DATA_DIR", str(tmp_path / "here"))
    monkeypatch.delenv("COSMOS_MONGO_URI", raising=False)
    with CosmosStore.connect() as store:
        store.create_prompt("stored here", {}, {})
    assert (tmp_path / "here" / "cosmos.sqlite3").exists()


# -- The engine's indexes change how many documents mongomock scans, never the answer.
# -- Compare the embedded database with plain mongomock on random data and queries.

PROMPT_IDS = [f"p{i}" for i in range(6)]
documents = st.lists(
    st.fixed_dictionaries(
        {
            "prompt_id": st.one_of(st.sampled_from(PROMPT_IDS), st.none(), st.integers(0, 2)),
            "model_type": st.sampled_from(["enhance", "transfer", 1, True]),
            "created_at": st.one_of(
                st.integers(0, 5).map(
                    lambda s: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s)
                ),
            ),
            "outputs": st.one_of(
                st.fixed_dictionaries({"original_prompt_id": st.sampled_from(PROMPT_IDS)}),
                st.just({}),
                st.just([]),
            ),
        }
    ),
    max_size=25,
)
filters = st.one_of(
    st.just({}),
    st.builds(lambda v: {"prompt_id": v}, st.sampled_from([*PROMPT_IDS, 0, 1])),
    st.builds(
        lambda v: {"prompt_id": {"$in": v}}, st.lists(st.sampled_from(PROMPT_IDS), max_size=3)
    ),
    st.builds(lambda v: {"model_type": v}, st.sampled_from(["enhance", 1, True, None])),
    st.builds(
        lambda a, b: {"$and": [{"outputs.original_prompt_id": a}, {"model_type": b}]},
        st.sampled_from(PROMPT_IDS),
        st.sampled_from(["enhance", "transfer"]),
    ),
    st.builds(lambda v: {"_id": {"$in": v}}, st.lists(st.integers(0, 30), max_size=4)),
    st.builds(
        lambda v: {"prompt_id": {"$eq": v}, "model_type": {"$ne": "x"}}, st.sampled_from(PROMPT_IDS)
    ),
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    docs=documents,
    query=filters,
    direction=st.sampled_from([1, -1]),
    ties_by_id=st.booleans(),
    skip=st.integers(0, 3),
    limit=st.integers(0, 4),
    updates=st.lists(st.integers(0, 30), max_size=3),
)
def test_indexed_engine_answers_exactly_like_plain_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[dict[str, Any]],
    query: dict[str, Any],
    direction: int,
    ties_by_id: bool,
    skip: int,
    limit: int,
    updates: list[int],
) -> None:
    plain = mongomock.MongoClient(tz_aware=True)["cosmos"]["runs"]
    database: EmbeddedDatabase = open_embedded(tmp_path_factory.mktemp("engine"))
    embedded = database["runs"]
    for collection in (plain, embedded):
        collection.create_index([("prompt_id", 1), ("created_at", -1)], name="a")
        collection.create_index([("outputs.original_prompt_id", 1)], name="b")
        collection.create_index([("model_type", 1), ("created_at", -1)], name="c")
        for i, doc in enumerate(docs):
            collection.insert_one({"_id": i, **doc})
        for i in updates:  # changes to indexed fields must move documents between buckets
            collection.update_one(
                {"_id": i}, {"$set": {"prompt_id": "p0", "model_type": "enhance"}}
            )
    sort = [("created_at", direction)] + ([("_id", direction)] if ties_by_id else [])
    expected = list(plain.find(query, sort=sort, skip=skip, limit=limit))
    assert embedded.find(query, sort=sort, skip=skip, limit=limit) == expected
    unsorted = sorted(plain.find(query), key=lambda doc: doc["_id"])
    assert sorted(embedded.find(query), key=lambda doc: doc["_id"]) == unsorted
    assert embedded.count_documents(query) == plain.count_documents(query)
    database.close()


class _CountingFilter:
    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def filter_applies(self, *args: Any) -> Any:
        self.calls += 1
        return self.real.filter_applies(*args)


def _count_filters(monkeypatch: pytest.MonkeyPatch) -> _CountingFilter:
    """Count mongomock's filter_applies in every module of the engine that calls it."""
    counter = _CountingFilter(reading.filtering)
    for module in (keys, reading, pipeline, surface):
        monkeypatch.setattr(module, "filtering", counter)
    return counter


def test_lookups_by_id_and_indexed_fields_scan_only_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = open_embedded(tmp_path)
    store = CosmosStore(database)
    store.ensure_indexes()
    prompts = [store.create_prompt(f"prompt {i}", {}, {}) for i in range(300)]
    for prompt in prompts[::10]:  # flagged by hand: only the engine's narrowing is under test
        database["prompts"].update_one({"_id": prompt.id}, {"$set": {"parameters.enhanced": True}})
    prompts = [store.get_prompt(prompt.id) for prompt in prompts]
    store.create_run(prompts[5].id, {})
    counter = _count_filters(monkeypatch)

    assert store.get_prompt(prompts[7].id) == prompts[7]
    assert counter.calls <= 2
    counter.calls = 0
    assert len(store.list_runs(prompt_id=prompts[5].id)) == 1
    assert counter.calls <= 2
    counter.calls = 0
    newest = store.list_prompts(limit=10)
    assert counter.calls <= 11 and len(newest) == 10
    counter.calls = 0
    flagged = database["prompts"].find({"parameters.enhanced": True}, sort=[("created_at", -1)])
    assert len(flagged) == 30 and counter.calls <= 31
    database.close()


def test_or_and_null_id_terms_narrow_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = open_embedded(tmp_path)
    store = CosmosStore(database)
    store.ensure_indexes()
    prompts = [store.create_prompt(f"prompt {i}", {}, {}) for i in range(200)]
    enhanced = store.enhance_prompt(prompts[3].id, enhanced_text="Child.")
    counter = _count_filters(monkeypatch)
    assert [r.id for r in store.get_enhancement_history(prompts[3].id)] == [enhanced.run_id]
    assert counter.calls <= 4  # the $or branches' candidates, not 200 runs
    counter.calls = 0
    assert database["prompts"].find({"_id": None}) == []
    assert counter.calls <= 1
    database.close()


def test_counting_every_document_reads_none_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_embedded(tmp_path) as database:
        things = database["things"]
        things.insert_many([{"_id": n, "k": n % 2} for n in range(7)])

        def no_reading(*args: object, **kwargs: object) -> None:
            raise AssertionError("a count of every document read documents")

        with monkeypatch.context() as patched:
            patched.setattr(reading._Reader, "find", no_reading)
            assert things.count_documents({}) == 7
            assert things.count_documents({}, skip=2, limit=3) == 3
            assert things.count_documents({}, skip=5, limit=3) == 2
            assert things.count_documents({}, skip=9) == 0
        assert things.count_documents({"k": 1}) == 3  # a filter still reads
