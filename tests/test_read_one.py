"""A read by ``_id`` carried out directly (``read_one_sync``) answers and fails exactly as its
workflow driven by ``run_sync`` does: the sync store's ``get_prompt`` and ``get_run`` take the
direct way, the async store the workflow."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mongomock
import pytest
from pymongo.errors import OperationFailure

from cosmos_mongo import CosmosStore
from cosmos_mongo import workflows as wf
from cosmos_mongo.embedded import open_embedded
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
