"""A read by ``_id`` carried out directly (``read_one_sync``) answers and fails exactly as its
workflow driven by ``run_sync`` does: the sync store's ``get_prompt`` and ``get_run`` take the
direct way (on the embedded default, its own look-up by ``_id``), the async store the
workflow."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import mongomock
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymongo.errors import OperationFailure

from cosmos_mongo import CosmosStore
from cosmos_mongo import workflows as wf
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.embedded.storage import _encode_key
from cosmos_mongo.errors import (
    CosmosMongoError,
    InvalidDocumentError,
    InvalidInputError,
    StorageError,
)
from cosmos_mongo.ops import ReadOne, Services, read_one_sync, run_sync


def _both(database: Any, read: ReadOne[Any], document_id: object) -> list[Any]:
    """The answer, or the error's type and text, of each way."""
    outcomes: list[Any] = []
    ways: list[Callable[[], Any]] = [
        lambda: read_one_sync(database, read, document_id, Services()),
        lambda: run_sync(database, read.flow(document_id), Services()),
    ]
    for way in ways:
        try:
            outcomes.append(way())
        except CosmosMongoError as exc:
            outcomes.append((type(exc), str(exc), type(exc.__cause__)))
    return outcomes


@pytest.fixture
def database() -> Any:
    return mongomock.MongoClient(tz_aware=True)["cosmos"]


def test_a_read_by_id_answers_the_same_both_ways_found_or_missing(database: Any) -> None:
    store = CosmosStore(database)
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    run = store.create_run(prompt.id, {})
    found, again = _both(database, wf.PROMPT_BY_ID, prompt.id)
    assert found == again == prompt == store.get_prompt(prompt.id)
    assert _both(database, wf.RUN_BY_ID, run.id) == [run, run]
    assert _both(database, wf.PROMPT_BY_ID, "ps_" + "0" * 32) == [None, None]
    assert store.get_run("rs_" + "0" * 32) is None


@pytest.mark.parametrize("bad", [{"$ne": None}, "rs_" + "0" * 32, "ps_XYZ", 7])
def test_a_bad_id_is_refused_the_same_both_ways_before_any_read(database: Any, bad: Any) -> None:
    first, second = _both(database, wf.PROMPT_BY_ID, bad)
    assert first == second and first[0] is InvalidInputError


def test_a_stored_document_that_breaks_the_model_fails_the_same_both_ways(database: Any) -> None:
    database["prompts"].insert_one({"_id": "ps_" + "1" * 32, "prompt_text": 5})
    first, second = _both(database, wf.PROMPT_BY_ID, "ps_" + "1" * 32)
    assert first == second and first[0] is InvalidDocumentError


def test_a_driver_error_is_translated_the_same_both_ways(
    database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise OperationFailure("not master", 10107)

    monkeypatch.setattr(mongomock.collection.Collection, "find_one", refuse)
    first, second = _both(database, wf.PROMPT_BY_ID, "ps_" + "2" * 32)
    assert first == second and first[2] is OperationFailure
    assert "OperationFailure: not master" in first[1]


def test_inside_a_causal_session_the_workflow_is_driven_instead(
    database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    driven: list[Any] = []

    def recording_run_sync(db: Any, flow: Any, services: Services) -> Any:
        driven.append(services)
        return run_sync(db, flow, Services())

    monkeypatch.setattr("cosmos_mongo.ops.run_sync", recording_run_sync)
    sessions = Services(causal_sessions=True)
    assert read_one_sync(database, wf.PROMPT_BY_ID, "ps_" + "3" * 32, sessions) is None
    assert driven == [sessions]


def test_an_sqlite_error_on_the_embedded_read_by_id_is_a_storage_error_naming_the_file(
    tmp_path: Path,
) -> None:
    database = open_embedded(tmp_path)
    store = CosmosStore(database)
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    assert store.get_prompt(prompt.id) == prompt  # the kept reader works across calls
    assert store.get_prompt(prompt.id) == prompt
    database.close()
    with pytest.raises(StorageError, match=r"embedded database .*closed") as raised:
        store.get_prompt(prompt.id)
    assert str(tmp_path) in str(raised.value)
    assert isinstance(raised.value.__cause__, sqlite3.Error)


def test_the_embedded_read_by_id_answers_and_fails_the_same_both_ways(tmp_path: Path) -> None:
    # read_one_sync takes the embedded default's own look-up (document_by_id); run_sync its
    # find_one: the same answers, the same errors.
    database = open_embedded(tmp_path)
    try:
        store = CosmosStore(database)
        prompt = store.create_prompt("A robot arm stacks blocks", {"video": "in.mp4"}, {})
        run = store.create_run(prompt.id, {})
        assert _both(database, wf.PROMPT_BY_ID, prompt.id) == [prompt, prompt]
        assert _both(database, wf.RUN_BY_ID, run.id) == [run, run]
        assert _both(database, wf.PROMPT_BY_ID, "ps_" + "0" * 32) == [None, None]
        for bad in ({"$ne": None}, run.id, 7):
            first, second = _both(database, wf.PROMPT_BY_ID, bad)
            assert first == second and first[0] is InvalidInputError
        database["prompts"].insert_one({"_id": "ps_" + "1" * 32, "prompt_text": 5})
        first, second = _both(database, wf.PROMPT_BY_ID, "ps_" + "1" * 32)
        assert first == second and first[0] is InvalidDocumentError
    finally:
        database.close()


def test_a_damaged_row_is_refused_the_same_both_ways_on_the_embedded_read_by_id(
    tmp_path: Path,
) -> None:
    database = open_embedded(tmp_path)
    try:
        prompt = CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
        file = sqlite3.connect(tmp_path / "cosmos.sqlite3")
        with file:  # one byte of the text changed, the checksums left as they were
            ((body,),) = file.execute("SELECT body FROM documents WHERE collection = 'prompts'")
            file.execute(
                "UPDATE documents SET body = ? WHERE collection = 'prompts'",
                (body.replace(b"robot", b"rebot"),),
            )
        file.close()
        first, second = _both(database, wf.PROMPT_BY_ID, prompt.id)
        assert first == second and first[0] is StorageError
        assert "checksum mismatch" in first[1]
    finally:
        database.close()


def test_with_debug_logging_on_the_embedded_read_by_id_still_logs_its_find_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = open_embedded(tmp_path)
    try:
        store = CosmosStore(database)
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        # Another test on this worker may have left the logger at DEBUG: only the read counts.
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="cosmos_mongo"):
            assert store.get_prompt(prompt.id) == prompt
        assert [record.getMessage().rsplit(" ", 2)[0] for record in caplog.records] == [
            "prompts.find_one"
        ]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cosmos_mongo"):
            assert store.get_prompt(prompt.id) == prompt
        assert caplog.records == []
    finally:
        database.close()


def test_a_read_by_id_holds_no_snapshot_between_calls_so_other_writers_are_seen_at_once(
    tmp_path: Path,
) -> None:
    database = open_embedded(tmp_path)
    other = open_embedded(tmp_path)  # another connection to the file, as another process has
    try:
        store = CosmosStore(database)
        prompt = store.create_prompt("old text", {}, {})
        assert store.get_prompt(prompt.id) == prompt
        assert store.get_prompt("ps_" + "0" * 32) is None
        other["prompts"].update_one({"_id": prompt.id}, {"$set": {"prompt_text": "new text"}})
        found = store.get_prompt(prompt.id)
        assert found is not None and found.prompt_text == "new text"
        # A reader left inside a read transaction would keep the log from being emptied.
        file = sqlite3.connect(tmp_path / "cosmos.sqlite3")
        try:
            (busy, _, _) = file.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            file.close()
        assert busy == 0
    finally:
        other.close()
        database.close()


@given(st.text(max_size=80))
def test_the_key_of_a_string_id_is_the_bson_of_the_id_document(document_id: str) -> None:
    assert _encode_key(document_id) == bson.encode({"_id": document_id})


def test_a_key_that_cannot_be_encoded_fails_as_bson_encode_fails() -> None:
    for document_id in ("\ud800", "a\udfffb"):
        with pytest.raises(UnicodeEncodeError):
            bson.encode({"_id": document_id})
        with pytest.raises(UnicodeEncodeError):
            _encode_key(document_id)
    assert _encode_key("a\x00b") == bson.encode({"_id": "a\x00b"})  # a zero byte is data
    assert _encode_key(7) == bson.encode({"_id": 7})


def test_compact_and_backup_run_after_reads_by_id_and_the_reads_go_on(tmp_path: Path) -> None:
    database = open_embedded(tmp_path)
    try:
        store = CosmosStore(database)
        prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
        assert store.get_prompt(prompt.id) == prompt
        assert store.get_prompt("ps_" + "0" * 32) is None
        database.compact()  # SQLite's VACUUM refuses while a statement is still running
        assert database.backup(tmp_path / "copy").exists()
        assert store.get_prompt(prompt.id) == prompt
    finally:
        database.close()
