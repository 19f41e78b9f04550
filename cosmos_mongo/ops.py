"""Database operations as data, and the drivers that carry them out.

Every workflow in :mod:`cosmos_mongo.workflows` is a generator that *yields* operations and
receives their results. It never touches a driver. :func:`run_sync` and :func:`run_async`
execute the yielded operations on a pymongo ``Database`` or on an async database (pymongo
``AsyncDatabase``, Motor, mongomock-motor, the embedded async adapter). One operation is one
collection method call, that is one database round trip, so a workflow's round trips can be
read off its ``yield`` statements.

Driver errors are translated here, at the one boundary, into :mod:`cosmos_mongo.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, TypeVar, cast

from bson.errors import InvalidDocument
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from cosmos_mongo.errors import (
    ConflictError,
    CosmosMongoError,
    InvalidInputError,
    ReadOnlyError,
    StorageError,
)

# Server codes for a document over the 16 MB BSON limit: BSONObjectTooLarge, a $lookup or
# $graphLookup array over it, and an update whose result would be.
_TOO_LARGE_CODES: Final = frozenset({10334, 4568, 17419, 17420})

T = TypeVar("T")
log = logging.getLogger("cosmos_mongo")

Document = dict[str, Any]
Filter = Mapping[str, Any]
Pipeline = Sequence[Mapping[str, Any]]
SortSpec = Sequence[tuple[str, int]]


R = TypeVar("R")


class Yielded(Generic[R]):
    """A step a workflow yields and gets an ``R`` back for: ``result = yield from step``
    gives the result its type."""

    __slots__ = ()

    def __iter__(self) -> Generator[Any, Any, R]:
        result = yield self
        return cast(R, result)


@dataclass(frozen=True, slots=True)
class Operation(Yielded[R]):
    """One call of a collection method. Subclasses say which method and how to read the result,
    and ``R`` is that result's type: ``document = yield from FindOne(...)`` is typed."""

    method: ClassVar[str]
    returns_cursor: ClassVar[bool] = False
    # Reads may be sent again after a dropped connection; writes are left to the driver's
    # own retryable writes, which know whether the first attempt landed.
    retry_safe: ClassVar[bool] = False
    writes: ClassVar[bool] = True
    collection: str

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        raise NotImplementedError

    def finish(self, raw: Any) -> Any:
        return raw


@dataclass(frozen=True, slots=True)
class FindOne(Operation[Document | None]):
    retry_safe: ClassVar[bool] = True
    writes: ClassVar[bool] = False
    method: ClassVar[str] = "find_one"
    filter: Filter
    projection: Mapping[str, Any] | None = None

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.filter, self.projection), {}


@dataclass(frozen=True, slots=True)
class ReadOne(Generic[R]):
    """A read of one document by ``_id`` into its model, the whole of ``get_prompt`` and
    ``get_run``: declared as data, so that :meth:`flow` is its workflow for any driver, and
    :func:`read_one_sync` carries out the same steps without driving a generator (the
    commonest call, where that machinery costs as much as the read)."""

    collection: str
    check: Callable[[object], Any]  # the id, validated (raises InvalidInputError)
    model: Callable[[Document], R]  # the document's model (raises InvalidDocumentError)

    def flow(self, document_id: object) -> Flow[R | None]:
        document = yield from FindOne(self.collection, {"_id": self.check(document_id)})
        return None if document is None else self.model(document)


@dataclass(frozen=True, slots=True)
class Find(Operation[list[Document]]):
    retry_safe: ClassVar[bool] = True
    writes: ClassVar[bool] = False
    method: ClassVar[str] = "find"
    returns_cursor: ClassVar[bool] = True
    filter: Filter
    sort: SortSpec = ()
    skip: int = 0
    limit: int = 0
    projection: Mapping[str, Any] | None = None

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        options: dict[str, Any] = {"skip": self.skip, "limit": self.limit}
        if self.sort:
            options["sort"] = list(self.sort)
        return (self.filter, self.projection), options


@dataclass(frozen=True, slots=True)
class Aggregate(Operation[list[Document]]):
    retry_safe: ClassVar[bool] = True
    writes: ClassVar[bool] = False
    method: ClassVar[str] = "aggregate"
    returns_cursor: ClassVar[bool] = True
    pipeline: Pipeline

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return ([dict(stage) for stage in self.pipeline],), {}


@dataclass(frozen=True, slots=True)
class InsertOne(Operation[Any]):
    method: ClassVar[str] = "insert_one"
    document: Mapping[str, Any]

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # The driver adds _id to the dict it is given; hand it a copy.
        return (dict(self.document),), {}

    def finish(self, raw: Any) -> Any:
        return raw.inserted_id


@dataclass(frozen=True, slots=True)
class InsertMany(Operation[int]):
    """Insert a batch, unordered (one bad document does not stop the rest). Returns the count."""

    method: ClassVar[str] = "insert_many"
    documents: Sequence[Mapping[str, Any]]

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return ([dict(document) for document in self.documents],), {"ordered": False}

    def finish(self, raw: Any) -> Any:
        return len(raw.inserted_ids)


@dataclass(frozen=True, slots=True)
class UpdateOne(Operation[int]):
    """Returns the number of documents matched (0 or 1)."""

    method: ClassVar[str] = "update_one"
    filter: Filter
    update: Mapping[str, Any]

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.filter, self.update), {}

    def finish(self, raw: Any) -> Any:
        return raw.matched_count


@dataclass(frozen=True, slots=True)
class UpdateMany(UpdateOne):
    """Returns the number of documents matched. Only for writes that may be repeated."""

    method: ClassVar[str] = "update_many"


@dataclass(frozen=True, slots=True)
class FindOneAndUpdate(Operation[Document | None]):
    """Returns the document after the update, or None if nothing matched."""

    method: ClassVar[str] = "find_one_and_update"
    filter: Filter
    update: Mapping[str, Any]

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.filter, self.update), {"return_document": ReturnDocument.AFTER}

    def finish(self, raw: Any) -> Any:
        return raw


@dataclass(frozen=True, slots=True)
class DeleteOne(Operation[int]):
    """Returns the number of documents deleted (0 or 1)."""

    method: ClassVar[str] = "delete_one"
    filter: Filter

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.filter,), {}

    def finish(self, raw: Any) -> Any:
        return raw.deleted_count


@dataclass(frozen=True, slots=True)
class DeleteMany(DeleteOne):
    method: ClassVar[str] = "delete_many"


@dataclass(frozen=True, slots=True)
class CreateIndex(Operation[str]):
    """Create one index; creating an identical index again is a no-op on the server."""

    method: ClassVar[str] = "create_index"
    keys: Sequence[tuple[str, int | str]]  # a direction, or an index type such as "text"
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (list(self.keys),), {"name": self.name, **self.options}


@dataclass(frozen=True, slots=True)
class ListIndexes(Operation[list[Document]]):
    """The collection's indexes, as ``list_indexes`` gives them (name, key, options)."""

    retry_safe: ClassVar[bool] = True
    writes: ClassVar[bool] = False
    method: ClassVar[str] = "list_indexes"
    returns_cursor: ClassVar[bool] = True

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (), {}

    def finish(self, raw: Any) -> Any:
        return [dict(entry) for entry in raw]


@dataclass(frozen=True, slots=True)
class DropIndex(Operation[None]):
    """Drop one index by name (only the library's own: reconcile never drops others)."""

    method: ClassVar[str] = "drop_index"
    name: str

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.name,), {}


@dataclass(frozen=True, slots=True)
class Generate(Yielded["Generated"]):
    """Ask the driver's enhancer for a rewrite. Not a database call.

    The result is a :class:`Generated`; a failure or timeout comes back in ``error`` rather
    than as an exception, so the workflow can record it on the run.
    """

    prompt_text: str
    inputs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Generated:
    text: str | None
    seconds: float
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class DamagedDocuments(Yielded[list[str]]):
    """Ask the database what of its storage fails its integrity checks. Not a query: the
    embedded default checks its file (with ``full``, every index's entries too); other
    databases have no such method and answer with an empty list."""

    full: bool = True


@dataclass(frozen=True, slots=True)
class ChangeStamp(Yielded[Any]):
    """Ask the database for a value that changes whenever a write commits, in this process or
    another: the embedded default's (see ``EmbeddedDatabase.change_stamp``), or on a server
    whose topology has change streams (a replica set or sharded cluster) the count of changes
    to ``collections`` that ``feed``'s stream has reported. Otherwise None: a watcher then
    compares the documents themselves. ``close`` ends ``feed``'s stream instead."""

    feed: ChangeFeed | None = None
    collections: tuple[str, ...] = ()
    close: bool = False


@dataclass(eq=False, slots=True)
class ChangeFeed:
    """A server's change stream, kept open between a watcher's looks; the driver fills it."""

    stream: Any = None
    changes: int = 0
    unavailable: bool = False  # the server has none (a standalone, a mock): compare documents


# The stream's server-side wait per look: a look must stay cheap.
_FEED_AWAIT_MS: Final = 10


def _feed_pipeline(step: ChangeStamp) -> list[Document]:
    match = {"ns.coll": {"$in": list(step.collections)}}
    return [{"$match": match}, {"$project": {"documentKey": 1, "operationType": 1}}]


def _feed_stamp_sync(database: Any, step: ChangeStamp) -> Any:
    """The change count of ``step.feed``'s stream (opened on first use), or None."""
    feed = _feed_of(step)
    if feed is None:
        return None
    if step.close:
        if (stream := _detached(feed)) is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                stream.close()
        return None
    try:
        if feed.stream is None:
            if not _watchable(database, feed):
                return None
            feed.stream = database.watch(_feed_pipeline(step), max_await_time_ms=_FEED_AWAIT_MS)
        while feed.stream.try_next() is not None:
            feed.changes += 1
    except OperationFailure as exc:
        return _feed_failed(feed, exc)
    except _DRIVER_ERRORS as exc:
        return _feed_interrupted(feed, exc)
    return ("changes", feed.changes)


async def _feed_stamp_async(database: Any, step: ChangeStamp) -> Any:
    """:func:`_feed_stamp_sync` on an async database (pymongo async or Motor)."""
    feed = _feed_of(step)
    if feed is None:
        return None
    if step.close:
        if (stream := _detached(feed)) is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                closed = stream.close()
                if inspect.isawaitable(closed):
                    await closed
        return None
    try:
        if feed.stream is None:
            if not _watchable(database, feed):
                return None
            opened = database.watch(_feed_pipeline(step), max_await_time_ms=_FEED_AWAIT_MS)
            feed.stream = await opened if inspect.isawaitable(opened) else opened
        while (await feed.stream.try_next()) is not None:
            feed.changes += 1
    except OperationFailure as exc:
        return _feed_failed(feed, exc)
    except _DRIVER_ERRORS as exc:
        return _feed_interrupted(feed, exc)
    return ("changes", feed.changes)


def _feed_of(step: ChangeStamp) -> ChangeFeed | None:
    """The feed a look reads, or None: none was given, or this topology has none."""
    feed = step.feed
    return None if feed is None or feed.unavailable else feed


def _detached(feed: ChangeFeed) -> Any:
    """The feed's open stream, if any, now no longer the feed's (for the caller to close)."""
    stream, feed.stream = feed.stream, None
    return stream


def _watchable(database: Any, feed: ChangeFeed) -> bool:
    """Whether ``database`` can open change streams; one without ``watch`` marks the feed
    unavailable for good."""
    if getattr(type(database), "watch", None) is None:
        feed.unavailable = True
        return False
    return True


def _feed_interrupted(feed: ChangeFeed, exc: Exception) -> None:
    """A dropped stream: this look reads the documents, and the next reopens it."""
    log.info("change stream interrupted: %s", _first_line(exc))
    feed.stream = None


def _feed_failed(feed: ChangeFeed, exc: OperationFailure) -> None:
    if feed.stream is None:  # refused at once: this topology has no change streams
        feed.unavailable = True
    else:  # the stream failed later (its resume point is gone): reopen next time
        log.info("change stream ended: %s", _first_line(exc))
        feed.stream = None


@dataclass(frozen=True, slots=True)
class Blocking(Yielded[R]):
    """A blocking call that is not a database operation (the importer reading its SQLite
    file): made directly by the sync driver, on a worker thread by the async one, so it never
    stalls an event loop."""

    call: Callable[[], R]


@dataclass(frozen=True, slots=True)
class Report(Yielded[None]):
    """Tell the caller how far a long workflow got (its ``progress`` callback). Made after the
    writes before it are durable, so what it reports is what a crash would keep."""

    call: Callable[[], None]


Step = Operation[Any] | Generate | DamagedDocuments | ChangeStamp | Blocking[Any] | Report


def _damaged_probe(database: Any) -> Any:
    # Looked up on the class: pymongo's Database turns unknown attributes into collections.
    return getattr(type(database), "damaged_documents", None)


# A long workflow (repair, migrate) commits every so many steps, so that it never holds the
# store's write lock for long: other processes' writers wait for it at most that long.
_UNIT_STEPS: Final = 16


def _stamp_probe(database: Any) -> Any:
    # Looked up on the class: pymongo's Database turns unknown attributes into collections.
    return getattr(type(database), "change_stamp", None)


def _grouping(database: Any) -> Any:
    """The synchronous database that can group writes into one transaction (the embedded
    default's ``unit_of_work``), or None. Its async adapter names its synchronous one."""
    # Looked up on the class: pymongo's Database turns unknown attributes into collections.
    if getattr(type(database), "unit_of_work", None) is not None:
        return database
    grouping = getattr(type(database), "grouping_database", None)
    return None if grouping is None else grouping(database)


@dataclass(frozen=True, slots=True)
class _Finished:
    value: Any


def _database_steps(
    database: Any, flow: Flow[Any], services: Services, step: Operation[Any]
) -> Step | _Finished:
    """Carry out ``step`` and the database steps after it (at most ``_UNIT_STEPS``) in one
    unit of work: one durable commit for all their writes. Returns the first step that is
    not a database one, the next one once the cap is reached, or the workflow's answer. No
    lock is held while an enhancer works: the unit ends before any such step."""
    with database.unit_of_work():
        for _ in range(_UNIT_STEPS):
            try:
                try:
                    result = _operation_sync(database, services, {}, step)
                except _DRIVER_ERRORS as exc:
                    following = flow.throw(translate(exc, step))
                else:
                    following = flow.send(result)
            except StopIteration as stop:
                return _Finished(stop.value)
            if not isinstance(following, Operation):
                return following
            step = following
    return step


Progress = Callable[[str, int, int | None], None]
"""Called as ``progress(stage, done, total)`` after each batch; ``total`` None when unknown."""


def reported(progress: Progress | None, stage: str, done: int, total: int | None) -> Flow[None]:
    """Report ``progress(stage, done, total)`` as a :class:`Report` step, if there is one."""
    if progress is not None:
        yield from Report(lambda: progress(stage, done, total))


Flow = Generator[Step, Any, T]
"""A workflow: yields operations, is sent their results, returns its answer."""


@dataclass(frozen=True, slots=True)
class Services:
    """What a driver needs besides the database: the enhancer and how long it may take."""

    enhancer: Any = None
    timeout: float = 180.0
    read_only: bool = False
    # One causally consistent session per workflow, on a real server (see sessions_supported).
    causal_sessions: bool = False


def sessions_supported(database: Any) -> bool:
    """Whether ``database`` belongs to a real driver (pymongo, its async API, or Motor over
    pymongo), whose server takes sessions. mongomock, mongomock-motor (a Motor class over
    mongomock) and the embedded default do not."""
    real = (Database, AsyncDatabase)
    return isinstance(database, real) or isinstance(getattr(database, "delegate", None), real)


def _refuse_writes(services: Services, step: Operation[Any]) -> None:
    if services.read_only and step.writes:
        raise ReadOnlyError(
            f"this store is read-only (COSMOS_MONGO_READ_ONLY): refused {step.method} on "
            f"{step.collection}; nothing was written"
        )


# mongomock (and so the embedded default) raises NotImplementedError for server features it
# lacks, such as $text: a storage error like any other, not an escape.
_DriverError = PyMongoError | InvalidDocument | OverflowError | NotImplementedError
_DRIVER_ERRORS = (PyMongoError, InvalidDocument, OverflowError, NotImplementedError)
_UNAUTHORIZED_CODES: Final = frozenset({13})  # Unauthorized


def translate(exc: _DriverError, step: Operation[Any] | None = None) -> CosmosMongoError:
    """Map a driver error to the library's tree, keeping the original as ``__cause__``.

    ``step`` is the operation that failed, if any. Whether it writes decides what a document
    over 16 MB means (a write's input, a read's answer) and whether a failure may hide a write
    that was applied all the same.
    """
    writes = step is not None and step.writes
    during = "" if step is None else f" ({step.method} on {step.collection})"
    translated: CosmosMongoError
    if isinstance(exc, DuplicateKeyError):
        translated = _duplicate_key(exc, step)
    elif _too_large(exc) and not writes:
        translated = StorageError(
            f"the answer{during} is larger than the 16 MB MongoDB sends as one document: ask "
            "for less (a smaller limit, or the lineage of a prompt nearer the edge of its tree)",
            reason="too_large",
        )
    elif isinstance(exc, InvalidDocument | OverflowError) or _too_large(exc):
        # pymongo's DocumentTooLarge is an InvalidDocument and bson's integer overflow an
        # OverflowError: neither is a PyMongoError.
        translated = InvalidInputError("document", f"cannot be stored: {exc}"[:300])
    elif isinstance(exc, OperationFailure) and exc.code in _UNAUTHORIZED_CODES:
        translated = StorageError(
            "not authorized: the database user may not do this "
            f"({str(exc.details.get('errmsg', exc) if exc.details else exc)[:200]}). A user "
            "with only the read role runs with --no-ensure-indexes "
            "(COSMOS_MONGO_ENSURE_INDEXES=0) and without write commands."
        )
    elif (concern := _write_concern_error(exc)) is not None:
        translated = StorageError(
            f"MongoDB did not confirm the write{during} as asked ({concern}), but it may have "
            f"been applied. {_CHECK_FIRST}",
            reason="write_concern",
            may_have_written=True,
        )
    elif isinstance(exc, ServerSelectionTimeoutError):
        # Nothing was sent: after a first attempt, pymongo raises that attempt's error instead.
        translated = StorageError(
            f"MongoDB unreachable (ServerSelectionTimeoutError): {unreachable_host(exc)}",
            reason="unreachable",
        )
    elif isinstance(exc, PyMongoError) and exc.timeout:
        translated = StorageError(
            f"MongoDB did not finish{during} within the operation time limit "
            f"(COSMOS_MONGO_OPERATION_TIMEOUT_MS): {_first_line(exc)}."
            + (f" The write may have been applied. {_CHECK_FIRST}" if writes else ""),
            reason="timeout",
            may_have_written=writes,
        )
    elif isinstance(exc, ConnectionFailure) and writes:
        translated = StorageError(
            f"the connection to MongoDB failed{during}: {_first_line(exc)}. The write may "
            f"have been applied. {_CHECK_FIRST}",
            may_have_written=True,
        )
    else:
        translated = StorageError(f"database operation failed: {type(exc).__name__}: {exc}")
    translated.__cause__ = exc
    return translated


def _duplicate_key(exc: DuplicateKeyError, step: Operation[Any] | None) -> ConflictError:
    """The refusal naming the collection and the key that is taken (the key's own values only:
    the rest of the document may be long or private)."""
    key = (exc.details or {}).get("keyValue")
    if not isinstance(key, Mapping) and isinstance(step, InsertOne) and "_id" in step.document:
        # mongomock names no key; _id is the one unique index the library inserts under.
        key = {"_id": step.document["_id"]}
    where = "" if step is None else f" in {step.collection}"
    named = (
        ""
        if not isinstance(key, Mapping)
        else ": " + ", ".join(f"{name} {_short_repr(value)}" for name, value in key.items())
    )
    document_id = key.get("_id") if isinstance(key, Mapping) and len(key) == 1 else None
    document_id = document_id if isinstance(document_id, str) else None
    collection = None if step is None else step.collection
    return ConflictError(
        f"a document with that key already exists{where}{named}",
        prompt_id=document_id if collection == "prompts" else None,
        run_ids=[document_id] if collection == "runs" and document_id is not None else [],
        reason="duplicate",
    )


def _short_repr(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


_CHECK_FIRST: Final = (
    "Read it back (or run `cosmos-mongo verify`) before trying again: repeating it blindly may "
    "store it twice."
)


def _too_large(exc: _DriverError) -> bool:
    return isinstance(exc, DocumentTooLarge) or (
        isinstance(exc, OperationFailure) and exc.code in _TOO_LARGE_CODES
    )


def _write_concern_error(exc: _DriverError) -> str | None:
    """The write concern error in a failed write's reply ("code 64: waiting for replication
    timed out"), or None: the write was applied on the primary, not confirmed as asked."""
    found: Any = None
    if isinstance(exc, WriteConcernError):
        found = exc.details
    elif isinstance(exc, BulkWriteError):
        found = next(iter((exc.details or {}).get("writeConcernErrors") or []), None)
    elif isinstance(exc, OperationFailure) and isinstance(exc.details, Mapping):
        found = exc.details.get("writeConcernError")
    if not isinstance(found, Mapping):
        return None
    return f"write concern error {found.get('code')}: {str(found.get('errmsg', ''))[:200]}"


def unreachable_host(exc: ServerSelectionTimeoutError) -> str:
    """pymongo's text starts with "host:port: reason", then the whole topology: keep the
    start, which names the host and never the credentials."""
    reached = str(exc).split(" (configured timeouts", 1)[0].split(", Timeout:", 1)[0]
    return reached[:300]


def _first_line(exc: Exception) -> str:
    """``Kind: the first line of its text``, without pymongo's list of configured timeouts."""
    text = str(exc).split(" (configured timeouts", 1)[0]
    return f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:300]}"


def run_sync(database: Any, flow: Flow[T], services: Services | None = None) -> T:
    """Drive ``flow`` to completion against a synchronous pymongo-style database, inside one
    causally consistent session when ``services.causal_sessions`` is set."""
    services = services or Services()
    if not services.causal_sessions:
        return _drive_sync(database, flow, services, {})
    try:
        session = database.client.start_session(causal_consistency=True)
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc
    with session:
        return _drive_sync(database, flow, services, {"session": session})


def read_one_sync(
    database: Any, read: ReadOne[T], document_id: object, services: Services
) -> T | None:
    """What ``run_sync(database, read.flow(document_id), services)`` does, made directly:
    the same check, the one ``find_one`` (retried and logged alike), the same error
    translation and the same model. Inside a causally consistent session it is left to
    :func:`run_sync`.

    A database that offers ``document_by_id`` (the embedded default) is asked that instead
    of ``find_one``, unless DEBUG logging is on (then the generic call logs its line): a
    look-up in a local file has no connection to drop, so nothing to send again, and the
    operation wrapper around it would cost about as much as the read itself."""
    if services.causal_sessions:
        return run_sync(database, read.flow(document_id), services)
    checked = read.check(document_id)
    # Looked up on the class: pymongo's Database turns unknown attributes into collections.
    by_id = getattr(type(database), "document_by_id", None)
    if by_id is None or log.isEnabledFor(logging.DEBUG):
        step = FindOne(read.collection, {"_id": checked})
        try:
            document = _operation_sync(database, services, {}, step)
        except _DRIVER_ERRORS as exc:
            raise translate(exc, step) from exc
    else:
        try:
            document = by_id(database, read.collection, checked)
        except _DRIVER_ERRORS as exc:
            raise translate(exc, FindOne(read.collection, {"_id": checked})) from exc
    return None if document is None else read.model(document)


def _call_sync(database: Any, extra: Document, step: Operation[Any]) -> Any:
    args, kwargs = step.arguments()
    if extra:
        kwargs = {**kwargs, **extra}
    method = getattr(database[step.collection], step.method)
    if not log.isEnabledFor(logging.DEBUG):  # the timing is only for the debug line
        raw = method(*args, **kwargs)
        return step.finish(list(raw) if step.returns_cursor else raw)
    started = time.perf_counter()
    raw = method(*args, **kwargs)
    result = step.finish(list(raw) if step.returns_cursor else raw)
    _log_operation(step, started)
    return result


def _operation_sync(
    database: Any, services: Services, extra: Document, step: Operation[Any]
) -> Any:
    if step.writes:
        _refuse_writes(services, step)
    try:
        return _call_sync(database, extra, step)
    except AutoReconnect as exc:
        if not _send_again(step, exc):
            raise
        return _call_sync(database, extra, step)


def _execute_sync(
    database: Any,
    services: Services,
    step: Generate | DamagedDocuments | ChangeStamp | Blocking[Any] | Report,
) -> Any:
    """Carry out a step that is not a database operation."""
    if isinstance(step, Generate):
        return _log_generated(services, _generate_sync(services, step))
    if isinstance(step, DamagedDocuments):
        if _damaged_probe(database) is None:
            return []
        return database.damaged_documents(full=step.full)
    if isinstance(step, ChangeStamp):
        if _stamp_probe(database) is None:
            return _feed_stamp_sync(database, step)
        return database.change_stamp()
    return step.call()  # Blocking, Report


def _drive_sync(database: Any, flow: Flow[T], services: Services, extra: Document) -> T:
    grouping = _grouping(database)
    try:
        step = next(flow)
        while True:
            if isinstance(step, Operation):
                if step.writes and grouping is not None:
                    outcome = _database_steps(grouping, flow, services, step)
                    if isinstance(outcome, _Finished):
                        return outcome.value  # type: ignore[no-any-return]
                    step = outcome
                    continue
                try:
                    result = _operation_sync(database, services, extra, step)
                except _DRIVER_ERRORS as exc:
                    step = flow.throw(translate(exc, step))
                    continue
            else:
                try:
                    result = _execute_sync(database, services, step)
                except _DRIVER_ERRORS as exc:
                    step = flow.throw(translate(exc))
                    continue
            step = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def run_async(database: Any, flow: Flow[T], services: Services | None = None) -> T:
    """Drive ``flow`` to completion against an async database (pymongo async, Motor, mocks),
    inside one causally consistent session when ``services.causal_sessions`` is set."""
    services = services or Services()
    if not services.causal_sessions:
        return await _drive_async(database, flow, services, {})
    try:
        session = database.client.start_session(causal_consistency=True)
        if inspect.isawaitable(session):  # Motor's is a coroutine; pymongo async's is not
            session = await session
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc
    try:
        return await _drive_async(database, flow, services, {"session": session})
    finally:
        ended = session.end_session()
        if inspect.isawaitable(ended):
            await ended


async def _drive_async(database: Any, flow: Flow[T], services: Services, extra: Document) -> T:
    driver = _AsyncDriver(database, flow, services, extra)
    return await driver.drive(lambda: next(flow))


class _AsyncDriver(Generic[T]):
    """Carries out one flow's steps on an async database. A cancelled caller settles the
    flow's work first (see :class:`Cancelled`), then the cancellation goes on."""

    def __init__(self, database: Any, flow: Flow[T], services: Services, extra: Document) -> None:
        self.database, self.flow, self.services, self.extra = database, flow, services, extra
        self.grouping = _grouping(database)
        # Whether the flow waits at a yield for its step's result (so a cancellation may be
        # thrown into it), rather than being run by a worker thread or being finished.
        self.waiting = False
        self.settling = False

    async def call(self, step: Operation[Any]) -> Any:
        args, kwargs = step.arguments()
        started = time.perf_counter()
        collection = self.database[step.collection]
        raw = getattr(collection, step.method)(*args, **kwargs, **self.extra)
        if inspect.isawaitable(raw):  # pymongo async awaits aggregate(); Motor does not
            raw = await raw
        result = step.finish(await raw.to_list(None) if step.returns_cursor else raw)
        _log_operation(step, started)
        return result

    async def execute(self, step: Step) -> Any:
        if isinstance(step, Generate):
            return _log_generated(self.services, await _generate_async(self.services, step))
        if isinstance(step, DamagedDocuments):
            database = self.database
            if _damaged_probe(database) is None:
                return []
            return await database.damaged_documents(full=step.full)
        if isinstance(step, ChangeStamp):
            # The embedded default's async adapter names its synchronous database.
            grouping = self.grouping
            if grouping is None or _stamp_probe(grouping) is None:
                return await _feed_stamp_async(self.database, step)
            return await asyncio.to_thread(grouping.change_stamp)
        if isinstance(step, Blocking):
            return await asyncio.to_thread(step.call)
        if isinstance(step, Report):  # the caller's callback, on the caller's own thread
            return step.call()
        _refuse_writes(self.services, step)
        try:
            return await self.call(step)
        except AutoReconnect as exc:
            if not _send_again(step, exc):
                raise
            return await self.call(step)

    async def unit(self, step: Operation[Any]) -> Step | _Finished:
        """The embedded default: the writes and the reads between them run on one worker
        thread, in one transaction. A cancelled caller waits for them (bounded), so that it
        can settle from the step they stopped at."""
        self.waiting = False
        unit = asyncio.ensure_future(
            asyncio.to_thread(_database_steps, self.grouping, self.flow, self.services, step)
        )
        try:
            return await asyncio.shield(unit)
        except asyncio.CancelledError:
            await _wait_out(unit, SETTLE_SECONDS)
            stopped = unit.done() and not unit.cancelled() and unit.exception() is None
            self.waiting = stopped and not isinstance(unit.result(), _Finished)
            raise

    async def drive(self, start: Callable[[], Step]) -> T:
        flow = self.flow
        try:
            self.waiting = False
            step = start()
            while True:
                self.waiting = True
                if self.grouping is not None and isinstance(step, Operation) and step.writes:
                    outcome = await self.unit(step)
                    if isinstance(outcome, _Finished):
                        self.waiting = False
                        return outcome.value  # type: ignore[no-any-return]
                    step = outcome
                    continue
                try:
                    result = await self.execute(step)
                except _DRIVER_ERRORS as exc:
                    self.waiting = False
                    step = flow.throw(translate(exc, _operation(step)))
                else:
                    self.waiting = False
                    step = flow.send(result)
        except StopIteration as stop:
            self.waiting = False
            return stop.value  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            if self.waiting and not self.settling:
                await self.settle_cancelled()
            raise

    async def settle_cancelled(self) -> None:
        """Throw :class:`Cancelled` into the flow and carry out the writes it answers with,
        in a task of their own so that the cancellation cannot cut them short, for at most
        ``SETTLE_SECONDS``."""
        self.settling = True

        async def settle() -> None:
            try:
                await self.drive(lambda: self.flow.throw(Cancelled("the call was cancelled")))
            except Cancelled:
                pass
            except CosmosMongoError as exc:
                log.warning("settling a cancelled workflow failed: %s", exc)
            except Exception:
                log.exception("settling a cancelled workflow failed")

        await _wait_out(asyncio.ensure_future(settle()), SETTLE_SECONDS)


SETTLE_SECONDS: Final = 10.0
"""How long a cancelled async workflow may take to settle its work (mark its run failed)."""


class Cancelled(Exception):
    """Thrown into a workflow at the step it waits for when its async caller is cancelled
    (a client cancelled the call or timed out). The workflow may yield the writes that settle
    its work (they run shielded from the cancellation and bounded by ``SETTLE_SECONDS``), then
    re-raises it; the caller's cancellation goes on regardless."""


async def _wait_out(task: asyncio.Future[Any], seconds: float) -> None:
    """Wait for ``task`` for at most ``seconds``, through repeated cancellation of the waiter
    (anyio cancels a cancelled scope's task again at every await); then cancel what is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            task.cancel()
            log.warning("a cancelled workflow did not settle within %g s", seconds)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=remaining)


def _operation(step: Step) -> Operation[Any] | None:
    return step if isinstance(step, Operation) else None


def _send_again(step: Operation[Any], exc: AutoReconnect) -> bool:
    """A read whose connection dropped is sent once more; a server nobody can reach is not,
    nor one that timed out (its time limit is spent: a resend would start another)."""
    again = step.retry_safe and not exc.timeout
    if again:
        log.info(
            "%s.%s: connection dropped (%s); sending it again",
            step.collection,
            step.method,
            type(exc).__name__,
        )
    return again


def _log_operation(step: Operation[Any], started: float) -> None:
    """One DEBUG line per database operation: names and time only, never values."""
    if log.isEnabledFor(logging.DEBUG):
        elapsed = (time.perf_counter() - started) * 1000
        log.debug("%s.%s %.1f ms", step.collection, step.method, elapsed)


def _log_generated(services: Services, generated: Generated) -> Generated:
    model = getattr(services.enhancer, "model", "enhancer")
    if generated.error is None:
        log.info("enhancer %s answered in %.2f s", model, generated.seconds)
    else:
        log.info(
            "enhancer %s failed after %.2f s: %s",
            model,
            generated.seconds,
            type(generated.error).__name__,
        )
    return generated


def _generate_sync(services: Services, step: Generate) -> Generated:
    """Run the enhancer on a worker thread so that a hung one times out instead of hanging us."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            outcome["text"] = services.enhancer.enhance(step.prompt_text, step.inputs)
        except BaseException as exc:  # handed back to the workflow, never lost
            outcome["error"] = exc
        finally:
            done.set()

    start = time.monotonic()
    threading.Thread(target=call, name="cosmos-enhancer", daemon=True).start()
    if not done.wait(services.timeout):
        error = TimeoutError(f"the enhancer gave no answer within {services.timeout:g} s")
        return Generated(None, time.monotonic() - start, error)
    return Generated(outcome.get("text"), time.monotonic() - start, outcome.get("error"))


async def _generate_async(services: Services, step: Generate) -> Generated:
    start = time.monotonic()
    try:
        text = await asyncio.wait_for(
            services.enhancer.aenhance(step.prompt_text, step.inputs), services.timeout
        )
    except TimeoutError:
        error = TimeoutError(f"the enhancer gave no answer within {services.timeout:g} s")
        return Generated(None, time.monotonic() - start, error)
    except Exception as exc:  # handed back to the workflow, never lost
        return Generated(None, time.monotonic() - start, exc)
    return Generated(text, time.monotonic() - start)
