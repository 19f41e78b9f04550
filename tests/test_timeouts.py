"""Time limits and honest errors: a start with nothing listening fails fast, naming the host;
an operation that passes its time limit, or a write the server did not confirm, says what it
means; an answer over 16 MB says to ask for less. The same over the wire, with the server's
fail points: tests/realserver/test_failovers.py."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bson
import mongomock
import pytest
from bson.errors import InvalidDocument
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DocumentTooLarge,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    WriteConcernError,
)

from cosmos_mongo import AsyncCosmosStore, CosmosStore, InvalidInputError, StorageError
from cosmos_mongo import queries as q
from cosmos_mongo.config import Settings
from cosmos_mongo.models import utc_now
from mcp_server.results import storage_message
from tests.mcp.test_transports import RawStdio, environment
from tests.test_contract import CountingDatabase

REPO = Path(__file__).parent.parent
START_LIMIT = 8.0  # seconds a start with nothing listening may take, end to end


class Failing(CountingDatabase):
    """Raises ``error`` from every call of ``method`` (after recording the call)."""

    def __init__(self, database: Any, method: str, error: BaseException) -> None:
        super().__init__(database)
        self.method, self.error = method, error

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if method == self.method:
            self.calls.append((name, method))
            raise self.error
        return super().call(name, method, target, args, kwargs)


@pytest.fixture
def database() -> Any:
    return mongomock.MongoClient(tz_aware=True)["cosmos"]


def failing(database: Any, method: str, error: BaseException) -> tuple[CosmosStore, Failing]:
    wrapped = Failing(database, method, error)
    return CosmosStore(wrapped), wrapped


def nothing_listening() -> str:
    """A loopback address with no server: a port just freed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


# -- a start with nothing listening ---------------------------------------------------------


def test_the_library_fails_a_start_with_nothing_listening_fast_naming_the_host() -> None:
    address = nothing_listening()
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        CosmosStore.connect(f"mongodb://admin:hunter2@{address}/?replicaSet=rs0")
    assert time.monotonic() - started < START_LIMIT
    message = str(caught.value)
    assert caught.value.reason == "unreachable" and "MongoDB unreachable" in message
    assert address in message and "COSMOS_MONGO_TIMEOUT_MS" in message
    assert "\n" not in message and "hunter2" not in message


def test_the_async_library_fails_a_start_with_nothing_listening_fast_naming_the_host() -> None:
    address = nothing_listening()

    async def start() -> None:
        async with AsyncCosmosStore.connect(f"mongodb://{address}/"):
            pass

    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        asyncio.run(start())
    assert time.monotonic() - started < START_LIMIT
    assert caught.value.reason == "unreachable" and address in str(caught.value)


@pytest.mark.slow
def test_the_cli_fails_a_start_with_nothing_listening_in_one_line_within_8_s() -> None:
    address = nothing_listening()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_MONGO_")}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cosmos_mongo.cli",
            "--uri",
            f"mongodb://{address}/",
            "prompt",
            "list",
        ],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert time.monotonic() - started < START_LIMIT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and address in lines[0], result.stderr
    assert "unreachable" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_mcp_server_answers_its_first_call_with_nothing_listening_within_8_s(
    tmp_path: Path,
) -> None:
    address = nothing_listening()
    server = RawStdio(env=environment(tmp_path, COSMOS_MONGO_URI=f"mongodb://{address}/"))
    try:
        assert "result" in server.initialize()
        started = time.monotonic()
        answer = server.call(1, "get_prompt", {"prompt_id": "ps_" + "0" * 32})
        waited = time.monotonic() - started
    finally:
        server.stop()
    result: Any = answer["result"]
    assert result["isError"] is True and waited < START_LIMIT
    assert f"unreachable: MongoDB at {address}" in result["content"][0]["text"]


# -- the operation time limit ---------------------------------------------------------------


def test_a_read_past_its_time_limit_is_a_clear_error_and_is_not_sent_again(
    database: Any,
) -> None:
    prompt = CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
    stalled = NetworkTimeout("127.0.0.1:27017: timed out (configured timeouts: timeoutMS: 500.0ms)")
    store, wrapped = failing(database, "find_one", stalled)
    with pytest.raises(StorageError) as caught:
        store.get_prompt(prompt.id)
    assert wrapped.calls == [("prompts", "find_one")]  # its time is spent: no second try
    error = caught.value
    assert error.reason == "timeout" and not error.may_have_written
    assert "COSMOS_MONGO_OPERATION_TIMEOUT_MS" in str(error) and "configured" not in str(error)


def test_a_server_side_time_limit_is_the_same_clear_error(database: Any) -> None:
    expired = ExecutionTimeout("operation exceeded time limit", code=50)
    store, _ = failing(database, "find", expired)
    with pytest.raises(StorageError) as caught:
        store.list_prompts()
    assert caught.value.reason == "timeout"


def test_a_write_past_its_time_limit_may_have_landed_and_says_how_to_check(
    database: Any,
) -> None:
    store, _ = failing(database, "insert_one", NetworkTimeout("127.0.0.1:27017: timed out"))
    with pytest.raises(StorageError) as caught:
        store.create_prompt("A robot arm stacks blocks", {}, {})
    error = caught.value
    assert error.reason == "timeout" and error.may_have_written
    assert "may have been applied" in str(error) and "cosmos-mongo verify" in str(error)


def test_a_write_whose_connection_dropped_may_have_landed(database: Any) -> None:
    store, _ = failing(database, "insert_one", AutoReconnect("connection closed by peer"))
    with pytest.raises(StorageError) as caught:
        store.create_prompt("A robot arm stacks blocks", {}, {})
    assert caught.value.may_have_written and "AutoReconnect" in str(caught.value)


def test_the_operation_time_limit_is_a_setting_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().operation_timeout_ms == 30_000 and Settings().timeout_ms == 5000
    monkeypatch.setenv("COSMOS_MONGO_OPERATION_TIMEOUT_MS", "0")
    monkeypatch.setenv("COSMOS_MONGO_TIMEOUT_MS", "1500")
    assert Settings().operation_timeout_ms == 0 and Settings().timeout_ms == 1500
    monkeypatch.setenv("COSMOS_MONGO_OPERATION_TIMEOUT_MS", "-1")
    with pytest.raises(ValueError, match="operation_timeout_ms"):
        Settings()


# -- writes the server did not confirm ------------------------------------------------------


def test_a_write_concern_error_says_the_write_may_have_landed(database: Any) -> None:
    unconfirmed = WriteConcernError(
        "waiting for replication timed out",
        64,
        {"code": 64, "errmsg": "waiting for replication timed out"},
    )
    store, _ = failing(database, "insert_one", unconfirmed)
    with pytest.raises(StorageError) as caught:
        store.create_prompt("A robot arm stacks blocks", {}, {})
    error = caught.value
    assert error.reason == "write_concern" and error.may_have_written
    message = str(error)
    assert "write concern error 64: waiting for replication timed out" in message
    assert "may have been applied" in message and "cosmos-mongo verify" in message
    assert "insert_one on prompts" in message


def test_a_batch_with_a_write_concern_error_says_the_same(database: Any) -> None:
    details = {
        "writeErrors": [],
        "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}],
        "nInserted": 1,
    }
    store, _ = failing(database, "insert_many", BulkWriteError(details))
    document = q.prompt_document("ps_" + "1" * 32, "p", {}, {}, utc_now())
    with pytest.raises(StorageError) as caught:
        store.put_documents("prompts", [document])
    assert caught.value.reason == "write_concern" and caught.value.may_have_written


def test_a_reply_carrying_a_write_concern_error_says_the_same(database: Any) -> None:
    reply = {"ok": 1, "writeConcernError": {"code": 100, "errmsg": "unsatisfiable"}}
    store, _ = failing(
        database, "find_one_and_update", OperationFailure("unsatisfiable", 100, reply)
    )
    with pytest.raises(StorageError) as caught:
        store.update_run_status("rs_" + "2" * 32, "running")
    assert caught.value.reason == "write_concern" and caught.value.may_have_written


def test_the_mcp_server_never_says_nothing_changed_when_a_write_may_have_landed() -> None:
    cause = WriteConcernError("timed out", 64, {"code": 64, "errmsg": "timed out"})
    error = StorageError("not confirmed", reason="write_concern", may_have_written=True)
    error.__cause__ = cause
    text = storage_message(error, "MongoDB at db.example.com:27017 (database 'cosmos')")
    assert "Nothing was changed" not in text and "may have been applied" in text
    assert "Do not call again blindly" in text and "verify_enhancements" in text
    timed_out = StorageError("too slow", reason="timeout")
    timed_out.__cause__ = NetworkTimeout("timed out")
    assert "time limit" in storage_message(timed_out, "MongoDB at h:1")


# -- answers over 16 MB ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        OperationFailure("BSONObjectTooLarge", 10334),
        OperationFailure("Total size of documents in prompts matching ... exceeds", 4568),
        DocumentTooLarge("BSON document too large (17000000 bytes)"),
    ],
    ids=["10334", "4568", "DocumentTooLarge"],
)
def test_a_read_whose_answer_is_over_16_mb_says_to_ask_for_less(
    database: Any, error: Exception
) -> None:
    prompt = CosmosStore(database).create_prompt("A robot arm stacks blocks", {}, {})
    store, _ = failing(database, "aggregate", error)
    with pytest.raises(StorageError) as caught:
        store.get_lineage(prompt.id)
    assert not isinstance(caught.value, InvalidInputError)
    assert caught.value.reason == "too_large" and not caught.value.may_have_written
    assert "16 MB" in str(caught.value) and "ask for less" in str(caught.value)
    text = storage_message(caught.value, "MongoDB at h:1")
    assert "ask for less" in text and "Nothing was changed" in text


@pytest.mark.parametrize(
    ("method", "error"),
    [
        ("insert_one", DocumentTooLarge("BSON document too large (17000000 bytes)")),
        ("insert_one", InvalidDocument("key '$x' must not start with '$'")),
        ("insert_one", OperationFailure("BSONObjectTooLarge", 10334)),
    ],
)
def test_a_write_of_a_document_over_16_mb_stays_an_input_error(
    database: Any, method: str, error: Exception
) -> None:
    store, _ = failing(database, method, error)
    with pytest.raises(InvalidInputError, match="cannot be stored"):
        store.create_prompt("A robot arm stacks blocks", {}, {})


LONGEST_TEXT = "機" * 10_000  # the longest prompt text there may be, 30 kB of UTF-8
BSON_LIMIT = 16 * 1024 * 1024


@pytest.mark.slow
def test_a_wide_tree_of_long_prompts_comes_back_under_16_mb_a_document_and_bounded_in_bytes(
    sync_backend: Any,
) -> None:
    # mongomock, the embedded default and a server: the async twins run the same flow.
    backend = sync_backend
    store = backend.store
    # Each enhanced prompt copies its original's inputs: 120 kB a child, 18 MB for the tree.
    inputs = {f"notes_{number}": LONGEST_TEXT for number in range(3)}
    root = store.create_prompt(LONGEST_TEXT, inputs, {})
    for child in range(150):
        store.enhance_prompt(root.id, enhanced_text=f"{child:03d} {LONGEST_TEXT[4:]}")
    prompts = backend.raw["prompts"]
    try:
        whole = list(prompts.aggregate(q.lineage_pipeline(root.id)))
    except OperationFailure as exc:  # mongod: more than one result document may hold
        assert exc.code in (10334, 4568)
    else:  # the in-process databases and the stand-in have no such limit: measure it
        assert len(bson.encode(whole[0])) > BSON_LIMIT
    nodes = list(prompts.aggregate(q.lineage_pipeline(root.id, one_per_node=True)))
    assert max(len(bson.encode(node)) for node in nodes) < 200_000  # a prompt and its run
    lineage = store.get_lineage(root.id)  # on mongod, one node a document after the refusal
    assert lineage.truncated and 0 < len(lineage.descendants) < 150
    answer = len(lineage.model_dump_json().encode())
    assert answer < q.LINEAGE_MAX_BYTES * 1.05  # the edges' own few bytes besides
    assert set(lineage.prompts) == {root.id, *(edge.child_id for edge in lineage.descendants)}
    runs = [edge.run for edge in lineage.descendants]
    assert all(run is not None and "enhanced_text" not in run.outputs for run in runs)


class AnswerTooLargeOnce(CountingDatabase):
    """The first aggregate fails as a server's does when its one result document would pass
    16 MB (code 10334)."""

    def call(self, name: str, method: str, target: Any, args: Any, kwargs: Any) -> Any:
        if method == "aggregate" and (name, method) not in self.calls:
            self.calls.append((name, method))
            raise OperationFailure("BSONObjectTooLarge: object to insert too large", 10334)
        return super().call(name, method, target, args, kwargs)


def test_a_lineage_too_large_for_one_document_is_read_one_node_a_document(backend: Any) -> None:
    store = backend.store
    root = store.create_prompt("A robot arm stacks blocks", {}, {"name": "arm"})
    child = store.enhance_prompt(root.id, enhanced_text="A robot arm stacks red blocks.")
    store.enhance_prompt(child.enhanced_prompt_id, enhanced_text="Three red blocks.")
    store.enhance_prompt(
        child.enhanced_prompt_id, create_new=False, enhanced_text="Red blocks, stacked."
    )
    expected = store.get_lineage(child.enhanced_prompt_id)
    assert expected.ancestors and expected.descendants and expected.in_place
    wrapped: list[AnswerTooLargeOnce] = []

    def refusing(database: Any) -> AnswerTooLargeOnce:
        wrapped.append(AnswerTooLargeOnce(database))
        return wrapped[-1]

    assert backend.over(refusing).get_lineage(child.enhanced_prompt_id) == expected
    assert wrapped[0].calls == [("prompts", "aggregate"), ("prompts", "aggregate")]
