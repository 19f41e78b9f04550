"""Faults: dropped connections, a full disk, an unwritable directory, a killed import."""

from __future__ import annotations

import os
import signal
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from cosmos_mongo import CosmosStore, StorageError
from cosmos_mongo.embedded import open_embedded
from tests.predecessor_db import add_prompt, add_run, create, pid, rid
from tests.test_contract import CountingDatabase
from tests.test_embedded_processes import Worker


class DroppingDatabase(CountingDatabase):
    """Drops the connection on chosen calls (1-based), as a failing network would."""

    def __init__(
        self, database: Any, drop_on: set[int], error: type[Exception] = AutoReconnect
    ) -> None:
        super().__init__(database)
        self.drop_on, self.error = drop_on, error

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        result = super().call(name, method, target, args, kwargs)  # counts the call
        if len(self.calls) in self.drop_on:
            raise self.error("connection closed by peer")  # it landed; the answer is lost
        return result


def test_a_read_whose_connection_drops_is_retried_once() -> None:
    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    prompt = CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
    flaky = DroppingDatabase(database, drop_on={1})
    assert CosmosStore(flaky).get_prompt(prompt.id) == prompt
    assert len(flaky.calls) == 2


def test_a_read_that_keeps_failing_is_a_clear_storage_error() -> None:
    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    prompt = CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
    with pytest.raises(StorageError, match="AutoReconnect"):
        CosmosStore(DroppingDatabase(database, drop_on={1, 2})).get_prompt(prompt.id)
    unreachable = DroppingDatabase(database, drop_on={1}, error=ServerSelectionTimeoutError)
    with pytest.raises(StorageError, match="ServerSelectionTimeoutError"):
        CosmosStore(unreachable).get_prompt(prompt.id)
    assert len(unreachable.calls) == 1  # no server: asking again would only double the wait


@pytest.mark.parametrize("drop_at", [2, 3, 4, 5])
def test_a_connection_dropped_during_an_enhancement_is_reported_and_repairable(
    drop_at: int,
) -> None:
    """Calls: 1 read prompt, 2 insert run, 3 record text, 4 insert prompt, 5 complete run."""
    database = mongomock.MongoClient(tz_aware=True)["cosmos"]
    store = CosmosStore(database)
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    with pytest.raises(StorageError, match=r"AutoReconnect.*during enhancement run rs_"):
        CosmosStore(DroppingDatabase(database, drop_on={drop_at})).enhance_prompt(prompt.id)
    # The write landed but its answer was lost: nothing half-written goes unreported.
    report = store.verify(stale_after=timedelta(0))
    assert bool(report.half_finished) == (drop_at < 5), report  # at 5 the run was finished
    store.repair(stale_after=timedelta(0))
    assert store.verify(stale_after=timedelta(0)).ok
    (run,) = store.get_enhancement_history(prompt.id)
    assert run.status == ("completed" if drop_at >= 3 else "failed")


def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        kept = store.create_prompt("Written before the disk filled", {}, {})
        engine = database.engine
        (pages,) = engine._conn.execute("PRAGMA page_count").fetchone()
        engine._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's real SQLITE_FULL
        with pytest.raises(StorageError, match="full"):
            for i in range(200):
                store.create_prompt(f"filler {i} " + "x" * 3000, {}, {})
        written = store.list_prompts(limit=1000)
        assert kept in written
    with open_embedded(tmp_path) as reopened:  # what memory holds is what the file holds
        assert sorted(p.id for p in CosmosStore(reopened).list_prompts(limit=1000)) == sorted(
            p.id for p in written
        )


def test_an_unwritable_data_directory_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="cannot open the embedded database at /proc"):
        open_embedded(Path("/proc/cosmos-mongo-test"))


def test_an_import_killed_midway_completes_on_rerun_without_duplicates(tmp_path: Path) -> None:
    source = tmp_path / "cosmos.db"
    db = create(source)
    for n in range(1, 601):
        add_prompt(db, pid(n), f"prompt {n}", "2024-01-01 00:00:00", {}, {})
        add_run(db, rid(n), pid(n))
    db.commit()
    db.close()
    worker = Worker("import-slowly", str(tmp_path / "data"), str(source))
    try:
        while not worker.next_line().startswith("prompts 300"):
            pass
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(60)
    finally:
        worker.finish()
    with open_embedded(tmp_path / "data") as database:
        store = CosmosStore(database)
        report = store.import_sqlite(source)
        assert report.prompts.imported + report.prompts.skipped == 600
        assert report.prompts.skipped >= 300 and report.runs.imported == 600
        assert report.problems == []
        assert len(store.list_prompts(limit=1000)) == 600
        assert len(store.list_runs(limit=1000)) == 600
        assert store.import_sqlite(source).prompts.imported == 0


def test_sqlite_errors_in_the_source_stay_in_the_report(tmp_path: Path, mock_store: Any) -> None:
    source = tmp_path / "cosmos.db"
    with sqlite3.connect(source) as db:
        db.executescript("CREATE TABLE prompts (id TEXT); CREATE TABLE runs (id TEXT);")
    with pytest.raises(Exception, match="no such column"):
        mock_store.import_sqlite(source)
