"""Elections, stalls and unconfirmed writes, over the wire, with the server's fail points.

Each test opens its store with ``connect`` (the client options users get) on a scratch
database, arms ``failCommand`` for this client's connections only (``appName``), and turns it
off in a ``finally``. Every ``failCommand`` option used here is honoured by SecantusDB
(``secantus/failpoints.py``: errorCode, errorLabels, writeConcernError, blockConnection and
blockTimeMS, appName) as by mongod started with ``enableTestCommands``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from cosmos_mongo import AsyncCosmosStore, CosmosStore, StorageError
from cosmos_mongo.config import Settings
from tests.conftest import AwaitingStore
from tests.wire_server import RETRY_REPLAY_GAP, WireServer, stand_in_gap

pytestmark = pytest.mark.realserver

APP_NAME = "cosmos-mongo"  # what connect's clients say in their handshake

FailPoint = Callable[..., None]


@pytest.fixture
def admin(mongodb_uri: str) -> Iterator[Any]:
    # Checks the server twice a second, so it sees a primary return at once (the default: 10 s).
    client: Any = MongoClient(mongodb_uri, heartbeatFrequencyMS=500)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fail_point(admin: Any) -> Iterator[FailPoint]:
    """``fail_point(mode, **data)`` arms failCommand for connect's clients; off at the end."""
    try:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")
    except OperationFailure as exc:  # an external mongod started without test commands
        pytest.skip(f"the server has no configureFailPoint (enableTestCommands): {exc}")

    def arm(mode: Any, **data: Any) -> None:
        admin.admin.command(
            "configureFailPoint", "failCommand", mode=mode, data={**data, "appName": APP_NAME}
        )

    try:
        yield arm
    finally:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")


@pytest.fixture(params=["sync", "async"])
def connected(
    request: pytest.FixtureRequest, mongodb_uri: str, admin: Any, runner: asyncio.Runner
) -> Iterator[Callable[..., Any]]:
    """``connected(settings=None, options="")`` opens a store of this flavour with
    ``connect`` on a scratch database (``options`` added to the URI); all closed at the end."""
    name = f"cosmos_test_{uuid.uuid4().hex[:12]}"
    opened: list[Any] = []

    def open_store(settings: Settings | None = None, options: str = "") -> Any:
        uri = with_options(mongodb_uri, options)
        if request.param == "sync":
            store: Any = CosmosStore.connect(uri, name, settings=settings)
        else:

            async def opening() -> AsyncCosmosStore:
                return await AsyncCosmosStore.connect(uri, name, settings=settings)

            store = AwaitingStore(runner.run(opening()), runner)
        opened.append(store)
        return store

    try:
        yield open_store
    finally:
        for store in opened:
            if isinstance(store, AwaitingStore):
                store.aclose()
            else:
                store.close()
        admin.drop_database(name)


def with_options(uri: str, options: str) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}{options}" if options else uri


def _prompts(admin: Any, store: Any, text: str) -> int:
    return int(admin[store.db.name]["prompts"].count_documents({"prompt_text": text}))


def test_a_write_during_an_election_waits_for_the_new_primary_and_lands_once(
    connected: Callable[..., Any], admin: Any, fail_point: FailPoint, mongodb_uri: str
) -> None:
    # The stand-in answers a monitor's waiting hello only when its wait ends (mongod answers
    # at once when the node changes state): a short wait keeps this test near the election's
    # own length. A direct connection (the CI's URI) would send the retry to the one node it
    # knows, primary or not: a replica set's client waits for the primary, as users' do.
    options = "heartbeatFrequencyMS=500&directConnection=false"
    store = connected(options=options)
    try:
        # The node is no primary for 6 s, longer than the 5 s selection timeout of 0.1.
        admin.admin.command({"replSetStepDown": 6, "force": True})
        # The refusal mongod gives a write meanwhile, with the label that makes it retryable
        # (the stand-in's own refusal during a step-down carries no label).
        fail_point(
            {"times": 1},
            failCommands=["insert"],
            errorCode=10107,
            errorLabels=["RetryableWriteError"],
        )
        started = time.monotonic()
        store.create_prompt("A robot arm stacks blocks during an election", {}, {})
        waited = time.monotonic() - started
    finally:
        _wait_for_a_primary(with_options(mongodb_uri, options))
    assert waited > 5
    assert _prompts(admin, store, "A robot arm stacks blocks during an election") == 1


def _wait_for_a_primary(uri: str) -> None:
    """Bounded by server selection: a command for the primary waits until there is one."""
    client: Any = MongoClient(uri, serverSelectionTimeoutMS=60_000)
    try:
        client.admin.command("ping")
    finally:
        client.close()


def test_a_write_whose_answer_was_lost_is_retried_and_stored_once(
    connected: Callable[..., Any],
    admin: Any,
    fail_point: FailPoint,
    wire_server: WireServer,
    request: pytest.FixtureRequest,
) -> None:
    # mongod answers a retried write (same lsid and txnNumber) from the first attempt; under
    # pymongo's timeoutMS each attempt carries its own maxTimeMS, and then SecantusDB does not:
    # L = db.getMongo().startSession().getSessionId()
    # db.runCommand({insert: "c", documents: [{_id: 1}], lsid: L, txnNumber: NumberLong(1), maxTimeMS: 900})
    # the same with maxTimeMS: 800  // mongod: {n: 1, ok: 1}; SecantusDB: E11000 duplicate key
    stand_in_gap(request, wire_server, RETRY_REPLAY_GAP)
    store = connected()
    # The insert is applied, then its answer says it was not confirmed, retryably: the driver
    # sends it again, which the server must answer from the first attempt.
    fail_point(
        {"times": 1},
        failCommands=["insert"],
        writeConcernError={"code": 64, "errmsg": "waiting for replication timed out"},
        errorLabels=["RetryableWriteError"],
    )
    prompt = store.create_prompt("A robot arm stacks blocks, retried", {}, {})
    assert _prompts(admin, store, prompt.prompt_text) == 1


def test_a_write_concern_error_says_the_write_may_have_landed_and_how_to_check(
    connected: Callable[..., Any], admin: Any, fail_point: FailPoint
) -> None:
    store = connected()
    fail_point(
        {"times": 1},
        failCommands=["insert"],
        writeConcernError={"code": 64, "errmsg": "waiting for replication timed out"},
    )
    with pytest.raises(StorageError) as caught:
        store.create_prompt("A robot arm stacks blocks, unconfirmed", {}, {})
    error = caught.value
    assert error.reason == "write_concern" and error.may_have_written
    assert "may have been applied" in str(error) and "cosmos-mongo verify" in str(error)
    assert "write concern error 64" in str(error)
    assert _prompts(admin, store, "A robot arm stacks blocks, unconfirmed") == 1  # it landed


def test_a_stalled_read_ends_at_the_operation_time_limit_with_a_clear_error(
    connected: Callable[..., Any], fail_point: FailPoint
) -> None:
    store = connected(Settings(operation_timeout_ms=500))
    prompt = store.create_prompt("A robot arm stacks blocks", {}, {})
    fail_point({"times": 1}, failCommands=["find"], blockConnection=True, blockTimeMS=3000)
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.get_prompt(prompt.id)
    assert time.monotonic() - started < 2.5  # the limit, not the stall (nor a resend)
    error = caught.value
    assert error.reason == "timeout" and not error.may_have_written
    assert "COSMOS_MONGO_OPERATION_TIMEOUT_MS" in str(error)
    assert "\n" not in str(error)


def test_a_stalled_write_ends_at_the_time_limit_and_says_it_may_have_landed(
    connected: Callable[..., Any], admin: Any, fail_point: FailPoint
) -> None:
    store = connected(Settings(operation_timeout_ms=500))
    prompts = admin[store.db.name]["prompts"]
    with prompts.watch([{"$match": {"operationType": "insert"}}], max_await_time_ms=200) as stream:
        fail_point({"times": 1}, failCommands=["insert"], blockConnection=True, blockTimeMS=1500)
        with pytest.raises(StorageError) as caught:
            store.create_prompt("A robot arm stacks blocks, stalled", {}, {})
        assert caught.value.reason == "timeout" and caught.value.may_have_written
        assert "may have been applied" in str(caught.value)
        # And so it was: the server went on with it after the client stopped waiting.
        deadline = time.monotonic() + 30
        while (change := stream.try_next()) is None:
            assert time.monotonic() < deadline, "the stalled insert never landed"
    assert change["fullDocument"]["prompt_text"] == "A robot arm stacks blocks, stalled"
