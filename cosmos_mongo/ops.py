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

import inspect
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from cosmos_mongo.errors import ConflictError, CosmosMongoError, StorageError

T = TypeVar("T")

Document = dict[str, Any]
Filter = Mapping[str, Any]
Pipeline = Sequence[Mapping[str, Any]]
SortSpec = Sequence[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One call of a collection method. Subclasses say which method and how to read the result."""

    method: ClassVar[str]
    returns_cursor: ClassVar[bool] = False
    collection: str

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        raise NotImplementedError

    def finish(self, raw: Any) -> Any:
        return raw


@dataclass(frozen=True, slots=True)
class FindOne(Operation):
    method: ClassVar[str] = "find_one"
    filter: Filter
    projection: Mapping[str, Any] | None = None

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.filter, self.projection), {}


@dataclass(frozen=True, slots=True)
class Find(Operation):
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
class Aggregate(Operation):
    method: ClassVar[str] = "aggregate"
    returns_cursor: ClassVar[bool] = True
    pipeline: Pipeline

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return ([dict(stage) for stage in self.pipeline],), {}


@dataclass(frozen=True, slots=True)
class InsertOne(Operation):
    method: ClassVar[str] = "insert_one"
    document: Mapping[str, Any]

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # The driver adds _id to the dict it is given; hand it a copy.
        return (dict(self.document),), {}

    def finish(self, raw: Any) -> Any:
        return raw.inserted_id


@dataclass(frozen=True, slots=True)
class UpdateOne(Operation):
    """Returns the number of documents matched (0 or 1)."""

    method: ClassVar[str] = "update_one"
    filter: Filter
    update: Mapping[str, Any]

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.filter, self.update), {}

    def finish(self, raw: Any) -> Any:
        return raw.matched_count


@dataclass(frozen=True, slots=True)
class FindOneAndUpdate(UpdateOne):
    """Returns the document after the update, or None if nothing matched."""

    method: ClassVar[str] = "find_one_and_update"

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.filter, self.update), {"return_document": ReturnDocument.AFTER}

    def finish(self, raw: Any) -> Any:
        return raw


@dataclass(frozen=True, slots=True)
class DeleteOne(Operation):
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
class CreateIndex(Operation):
    """Create one index; creating an identical index again is a no-op on the server."""

    method: ClassVar[str] = "create_index"
    keys: SortSpec
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (list(self.keys),), {"name": self.name, **self.options}


Flow = Generator[Operation, Any, T]
"""A workflow: yields operations, is sent their results, returns its answer."""


def _translate(exc: PyMongoError) -> CosmosMongoError:
    """Map a driver error to the library's tree, keeping the original as ``__cause__``."""
    translated: CosmosMongoError
    if isinstance(exc, DuplicateKeyError):
        translated = ConflictError("a document with that key already exists")
    else:
        translated = StorageError(f"database operation failed: {type(exc).__name__}: {exc}")
    translated.__cause__ = exc
    return translated


def run_sync(database: Any, flow: Flow[T]) -> T:
    """Drive ``flow`` to completion against a synchronous pymongo-style database."""

    def execute(op: Operation) -> Any:
        args, kwargs = op.arguments()
        raw = getattr(database[op.collection], op.method)(*args, **kwargs)
        return op.finish(list(raw) if op.returns_cursor else raw)

    return _drive(flow, execute)


async def run_async(database: Any, flow: Flow[T]) -> T:
    """Drive ``flow`` to completion against an async database (pymongo async, Motor, mocks)."""
    try:
        op = next(flow)
        while True:
            try:
                args, kwargs = op.arguments()
                raw = getattr(database[op.collection], op.method)(*args, **kwargs)
                if inspect.isawaitable(raw):  # pymongo async awaits aggregate(); Motor does not
                    raw = await raw
                result = op.finish(await raw.to_list(None) if op.returns_cursor else raw)
            except PyMongoError as exc:
                op = flow.throw(_translate(exc))
            else:
                op = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _drive(flow: Flow[T], execute: Callable[[Operation], Any]) -> T:
    try:
        op = next(flow)
        while True:
            try:
                result = execute(op)
            except PyMongoError as exc:
                op = flow.throw(_translate(exc))
            else:
                op = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
