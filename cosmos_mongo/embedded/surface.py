"""The pymongo-shaped surface: the sync collections and databases the library calls,
``open_embedded``, and their asyncio twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import bson
import bson.errors
import mongomock as _mongomock
from bson import ObjectId
from mongomock import collection as _mongomock_collection
from mongomock import filtering as _filtering
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError
from pymongo.results import DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from cosmos_mongo.embedded.engine import EmbeddedEngine, IndexRebuild
from cosmos_mongo.embedded.keys import _IndexSpec
from cosmos_mongo.embedded.pipeline import _LookupDatabase, _run_pipeline
from cosmos_mongo.embedded.planning import _check_filter, _id_values, _patched, _Plan, _terms
from cosmos_mongo.embedded.reading import _Reader, _sort_spec
from cosmos_mongo.embedded.storage import (
    _BATCH,
    _INDEX_CATALOG,
    _STORED,
    _encode_key,
    _encoded,
    _may_hold_empty_timestamp,
    _Stored,
    check_database_name,
)
from cosmos_mongo.embedded.writing import (
    _UPDATE_FAILURES,
    _duplicate,
    _equal_with_nan,
    _top_level_set,
    _unbuild,
    _update_failed,
    _Writer,
)

# mongomock's own type hints claim pymongo's classes; the engine treats it as untyped.
filtering: Any = _filtering
mongomock_collection: Any = _mongomock_collection


class EmbeddedCollection:
    """The pymongo ``Collection`` methods the library uses, on the embedded engine."""

    def __init__(self, engine: EmbeddedEngine, name: str) -> None:
        self._engine = engine
        self.name = name

    def _output(self, document: Any, projection: Mapping[str, Any] | None) -> Any:
        # Decoded afresh for this call, so it is the caller's to keep.
        if projection:
            return self._engine._scratch._copy_only_fields(document, projection, dict)
        return document

    # reads
    def find_one(
        self,
        filter: Mapping[str, Any] | None = None,
        projection: Mapping[str, Any] | None = None,
        *,
        sort: Any = None,
    ) -> Any:
        if not projection and filter is not None and len(filter) == 1:
            document_id = filter.get("_id")
            if type(document_id) is str:  # the commonest read: its key is the whole answer
                return self._engine.by_key(self.name, _encode_key(document_id))
        found = self.find(filter, projection, sort=sort, limit=1)
        return found[0] if found else None

    def find(
        self,
        filter: Mapping[str, Any] | None = None,
        projection: Mapping[str, Any] | None = None,
        *,
        sort: Any = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[Any]:
        if not (projection or skip) and filter is not None and len(filter) == 1:
            document_id = filter.get("_id")
            if type(document_id) is str:  # the commonest read: its key is the whole answer
                found = self._engine.by_key(self.name, _encode_key(document_id))
                return [] if found is None else [found]
        query, order = _patched(filter or {}), _sort_spec(sort)

        def find(reader: _Reader) -> list[Any]:
            found = reader.find(self.name, query, order, skip, limit)
            return [self._output(stored.document, projection) for stored in found]

        ids = _id_values(query)
        return self._engine.read(find, one_statement=ids is not None and len(ids) <= _BATCH)

    def aggregate(self, pipeline: Sequence[Mapping[str, Any]], **_: Any) -> list[Any]:
        """A leading ``$match`` is served by the indexed find; mongomock runs the rest."""
        stages = [dict(stage) for stage in pipeline]
        first = stages[0] if stages else {}
        query = first.get("$match") if len(first) == 1 else None

        def aggregate(reader: _Reader) -> list[Any]:
            if isinstance(query, Mapping):
                found, rest = reader.find(self.name, _patched(query)), stages[1:]
            else:
                found, rest = list(reader.scan(self.name)), stages
            documents = [self._output(stored.document, None) for stored in found]
            return _run_pipeline(documents, _LookupDatabase(reader), rest)

        return self._engine.read(aggregate)

    def count_documents(self, filter: Mapping[str, Any], **options: Any) -> int:
        """How many documents match, after ``skip`` and at most ``limit`` of them, as
        pymongo's ``count_documents`` counts them (other options are ignored).

        Raises:
            OperationFailure: the filter is malformed, ``skip`` is negative or ``limit`` is
                not a positive number (a server's ``$skip`` and ``$limit`` refuse them).
        """
        skip, limit = options.get("skip", 0), options.get("limit")
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise OperationFailure(f"invalid argument to $skip stage: {skip!r}", 15956)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | float) or not limit >= 1
        ):
            raise OperationFailure(f"the limit must be positive: {limit!r}", 15958)
        query, most = _patched(filter or {}), 0 if limit is None else math.floor(limit)
        if not query:  # every document: the rows, counted without reading one
            left = max(0, self._engine.read(self._rows) - skip)
            return left if most == 0 else min(left, most)
        return self._engine.read(lambda reader: len(reader.find(self.name, query, (), skip, most)))

    def estimated_document_count(self) -> int:
        """How many documents the collection holds (exact here: its rows, counted)."""
        return self._engine.read(self._rows)

    def _rows(self, reader: _Reader) -> int:
        (found,) = reader.conn.execute(
            "SELECT count(*) FROM documents WHERE collection = ? AND body IS NOT NULL",
            (self.name,),
        ).fetchone()
        return int(found)

    def list_indexes(self) -> list[Any]:
        def indexes(reader: _Reader) -> list[Any]:
            rows = self._engine.index_rows(self.name)
            exists = (
                rows
                or reader.conn.execute(
                    "SELECT 1 FROM documents WHERE collection = ? LIMIT 1", (self.name,)
                ).fetchone()
            )
            if not exists:
                return []  # a collection nothing created, as MongoDB and mongomock answer
            listed: list[Any] = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]
            for row in rows:
                key = {str(name): direction for name, direction in row["keys"]}
                listed.append({"v": 2, "key": key, "name": row["name"], **row.get("options", {})})
            return listed

        return self._engine.read(indexes)

    def explain(self, filter: Mapping[str, Any] | None = None, sort: Any = None) -> dict[str, Any]:
        """The winning plan of ``find(filter, sort=sort)`` as the engine's planner chooses it,
        in the shape of a server's ``queryPlanner.winningPlan``: an ``IXSCAN`` naming the
        index (under a ``FETCH``), an ``OR`` of them for an ``$or``, ``IDHACK`` for a look-up
        by ``_id``, or a ``COLLSCAN``; a ``SORT`` on top when the index order does not give
        the sort. Reads no document.

        Raises:
            OperationFailure: the filter is malformed (as :meth:`find` raises).
        """
        query, order = _patched(filter or {}), _sort_spec(sort)
        _check_filter(query)  # as find checks it, whatever the documents
        filtering.filter_applies(query, {})  # and as mongomock checks it, on no document
        if _id_values(query) is not None:
            return {"stage": "IDHACK"}
        plan = self._engine.read(lambda reader: reader.plan(self.name, _terms(query), order))
        patterns = {
            row["name"]: {str(name): direction for name, direction in row["keys"]}
            for row in self._engine.index_rows(self.name)
        }

        def scan(plan: _Plan) -> dict[str, Any]:
            if plan.union:
                return {"stage": "OR", "inputStages": [scan(branch) for branch in plan.union]}
            name = "_id_" if plan.index is None else plan.index.name
            index = {
                "stage": "IXSCAN",
                "indexName": name,
                "keyPattern": patterns.get(name, {"_id": 1}),
                "isUnique": plan.index is None or plan.index.unique,
                "isPartial": plan.index is not None and plan.index.partial is not None,
                "direction": "backward" if plan.walk < 0 else "forward",
            }
            return {"stage": "FETCH", "inputStage": index}

        winning = {"stage": "COLLSCAN", "direction": "forward"} if plan is None else scan(plan)
        if order and (plan is None or not plan.walk):
            winning = {"stage": "SORT", "sortPattern": dict(order), "inputStage": winning}
        return winning

    def index_information(self) -> dict[str, Any]:
        return {
            entry["name"]: {
                **{k: v for k, v in entry.items() if k != "name"},
                "key": list(entry["key"].items()),
            }
            for entry in self.list_indexes()
        }

    # writes
    def insert_one(self, document: dict[str, Any]) -> InsertOneResult:
        def insert(writer: _Writer) -> InsertOneResult:
            return InsertOneResult(self._insert(writer, document), acknowledged=True)

        return self._engine.write(self.name, insert)

    def _insert(self, writer: _Writer, document: dict[str, Any]) -> Any:
        """Insert one document as mongomock would: its checks, then an ObjectId set on the
        caller's document if it has no ``_id`` (not if the insert is refused)."""
        mongomock_collection.validate_is_mutable_mapping("document", document)
        if not all(isinstance(key, str) for key in document):
            raise ValueError("Document keys must be strings")
        mongomock_collection._validate_data_fields(document)
        document_id = document["_id"] if "_id" in document else ObjectId()
        # mongomock keys its store by _id: one it cannot hash (a list) raises TypeError there.
        hash(
            _mongomock.helpers.hashdict(document_id)
            if isinstance(document_id, dict)
            else document_id
        )
        stored = document if "_id" in document else {"_id": document_id, **document}
        body = _encoded(stored)
        if _may_hold_empty_timestamp(body):  # mongomock sets an empty timestamp: let it
            scratch = self._engine._scratch
            scratch.drop()
            scratch.insert_one(stored)
            stored = scratch.find_one({"_id": document_id})
            body = _encoded(stored)
        writer.put(None, stored, _encode_key(document_id), body=body)  # a duplicate raises
        document.setdefault("_id", document_id)
        return document_id

    def insert_many(
        self, documents: Iterable[dict[str, Any]], ordered: bool = True
    ) -> InsertManyResult:
        batch = list(documents)

        def insert(writer: _Writer) -> InsertManyResult:
            inserted, errors = [], []
            for position, document in enumerate(batch):
                try:
                    inserted.append(self._insert(writer, document))
                except DuplicateKeyError as exc:
                    errors.append({"index": position, "code": 11000, "errmsg": str(exc)})
                    if ordered:
                        break
            if errors:  # what went in stays, as on a server; the error follows the commit
                writer.deferred = BulkWriteError(
                    {"writeErrors": errors, "nInserted": len(inserted), "writeConcernErrors": []}
                )
            return InsertManyResult(inserted, acknowledged=True)

        return self._engine.write(self.name, insert)

    def update_one(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False
    ) -> UpdateResult:
        return self._update(filter, update, upsert=upsert, many=False)

    def update_many(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False
    ) -> UpdateResult:
        return self._update(filter, update, upsert=upsert, many=True)

    def _changed(
        self,
        writer: _Writer,
        filter: Mapping[str, Any] | None,
        update: Any,
        *,
        upsert: bool,
        many: bool,
        sort: Any = None,
    ) -> tuple[dict[str, Any], list[tuple[Any, Any]]]:
        """Apply ``update`` to the matching documents as mongomock would, and store what it
        changed. Returns mongomock's raw result and each document it matched or upserted,
        before (None if upserted) and after."""
        query = _patched(filter or {})
        targets = writer.find(self.name, query, _sort_spec(sort), 0, 0 if many else 1)
        fields = _top_level_set(update)
        if targets and fields is not None:
            done = self._set_in_place(writer, targets, fields)
            if done is not None:
                return done
        # Anything else runs on a scratch collection holding only the matching documents.
        mongomock_collection.validate_ok_for_update(update)  # what pymongo refuses unsent
        scratch = self._engine._scratch
        scratch.drop()
        if targets:
            scratch.insert_many([stored.document for stored in targets])
            ids = [stored.document["_id"] for stored in targets]
            pinned: Any = {"_id": {"$in": ids}} if many else {"_id": ids[0]}
        else:
            pinned = filter or {}
        method = scratch.update_many if many else scratch.update_one
        try:
            outcome: dict[str, Any] = method(pinned, update, upsert=upsert).raw_result
        except _UPDATE_FAILURES as exc:
            if len(targets) > 1:  # mongomock may have left one document half done
                return self._one_by_one(writer, targets, update)
            if isinstance(exc, WriteError):
                raise
            raise _update_failed(exc, targets[0].document if targets else None) from exc
        written: list[tuple[Any, Any]] = []
        for stored in targets:
            after = scratch.find_one({"_id": stored.document["_id"]})
            if len(targets) == 1:
                writer.put(stored, after)
            elif (refused := writer.put_alone(stored, after)) is not None:
                writer.deferred = refused  # the documents before it stay, as on a server
                break
            written.append((stored.document, after))
        if not targets:
            for upserted in scratch.find({}):  # an upsert that matched nothing inserted one
                key = _encode_key(upserted["_id"])
                if writer.fetch(self.name, [key]):
                    raise _duplicate(self.name, "_id_", upserted["_id"], {"_id": upserted["_id"]})
                writer.put(None, upserted, key)
                written.append((None, upserted))
        return outcome, written

    def _one_by_one(
        self, writer: _Writer, targets: list[_Stored], update: Any
    ) -> tuple[dict[str, Any], list[tuple[Any, Any]]]:
        """A multi-document update that failed on a document, applied as a server applies it:
        each document whole or not at all, in order; the ones before the failure are written
        and the failure is raised after the commit."""
        scratch = self._engine._scratch
        written: list[tuple[Any, Any]] = []
        modified = 0
        for stored in targets:
            document_id = stored.document["_id"]
            scratch.drop()
            scratch.insert_one(stored.document)
            try:
                result = scratch.update_one({"_id": document_id}, update).raw_result
            except _UPDATE_FAILURES as exc:
                failure = _update_failed(exc, stored.document)
                if failure is not exc:
                    failure.__cause__ = exc
                writer.deferred = failure
                break
            after = scratch.find_one({"_id": document_id})
            refused = writer.put_alone(stored, after)
            if refused is not None:
                writer.deferred = refused
                break
            modified += int(result.get("nModified") or 0)
            written.append((stored.document, after))
        outcome = {
            "connectionId": scratch.database.client._id,
            "err": None,
            "n": len(written),
            "nModified": modified,
            "ok": 1,
            "upserted": None,
            "updatedExisting": bool(written),
        }
        return outcome, written

    def _set_in_place(
        self, writer: _Writer, targets: list[_Stored], fields: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[Any, Any]]] | None:
        """A ``$set`` of top-level fields (the store's status and completion writes) without
        the scratch collection; None, having written nothing, for a document that may hold an
        empty BSON timestamp, which mongomock fills in. The result and the stored form (read back
        from BSON: milliseconds, UTC) are what mongomock's would be."""
        changes = []
        for stored in targets:
            body = _encoded({**stored.document, **fields})
            if _may_hold_empty_timestamp(body):
                return None
            changes.append((stored, body, bson.decode(body, _STORED)))
        modified = 0
        for stored, body, after in changes:
            # mongomock counts what Python's == finds changed, but stores the new value even
            # when == finds none (1 -> True, 1 -> 1.0): so do both. A NaN read back is a new
            # float, unequal to the old one: a server compares its bytes, equal.
            if after != stored.document and not _equal_with_nan(after, stored.document):
                modified += 1
            elif body == bson.encode(stored.document):
                continue  # the very same bytes: nothing to write
            if len(changes) == 1:
                writer.put(stored, after, body=body)
            elif (refused := writer.put_alone(stored, after, body=body)) is not None:
                writer.deferred = refused  # the documents before it stay, as on a server
                break
        outcome = {
            "connectionId": self._engine._scratch.database.client._id,
            "err": None,
            "n": len(targets),
            "nModified": modified,
            "ok": 1,
            "upserted": None,
            "updatedExisting": True,
        }
        return outcome, [(stored.document, after) for stored, _, after in changes]

    def _update(
        self, query: Mapping[str, Any], update: Any, *, upsert: bool, many: bool
    ) -> UpdateResult:
        def change(writer: _Writer) -> UpdateResult:
            outcome, _ = self._changed(writer, query, update, upsert=upsert, many=many)
            return UpdateResult(outcome, acknowledged=True)

        result: UpdateResult = self._engine.write(self.name, change)
        return result

    def find_one_and_update(
        self,
        filter: Mapping[str, Any],
        update: Any,
        projection: Mapping[str, Any] | None = None,
        sort: Any = None,
        upsert: bool = False,
        return_document: bool = ReturnDocument.BEFORE,
    ) -> Any:
        def modify(writer: _Writer) -> Any:
            _, written = self._changed(writer, filter, update, upsert=upsert, many=False, sort=sort)
            if not written:
                return None
            before, after = written[0]
            chosen = after if return_document == ReturnDocument.AFTER else before
            return None if chosen is None else self._output(chosen, projection)

        return self._engine.write(self.name, modify)

    def delete_one(self, filter: Mapping[str, Any]) -> DeleteResult:
        return self._delete(filter, many=False)

    def delete_many(self, filter: Mapping[str, Any]) -> DeleteResult:
        return self._delete(filter, many=True)

    def _delete(self, query: Mapping[str, Any], *, many: bool) -> DeleteResult:
        patched = _patched(query)

        def remove(writer: _Writer) -> DeleteResult:
            targets = writer.find(self.name, patched, (), 0, 0 if many else 1)
            for stored in targets:
                writer.put(stored, None)
            return DeleteResult({"n": len(targets), "ok": 1.0}, acknowledged=True)

        return self._engine.write(self.name, remove)

    def create_index(self, keys: Any, name: str | None = None, **options: Any) -> str:
        key_list = [(keys, 1)] if isinstance(keys, str) else [(k, d) for k, d in keys]
        index_name = name or "_".join(f"{k}_{d}" for k, d in key_list)
        spec = {
            "_id": f"{self.name}.{index_name}",
            "collection": self.name,
            "name": index_name,
            "keys": [list(key) for key in key_list],
            "options": options,
        }

        def record(writer: _Writer) -> str:
            for row in self._engine.index_rows(self.name):
                same = row["keys"] == spec["keys"] and row.get("options", {}) == options
                if row["name"] == index_name:
                    if same:
                        return index_name  # creating an identical index again changes nothing
                    raise OperationFailure(
                        f"An existing index has the same name as the requested index: {index_name}",
                        86,
                    )
                if same:
                    raise OperationFailure(
                        f"Index already exists with a different name: {row['name']}", 85
                    )
            catalog = _Writer(self._engine, _INDEX_CATALOG, writer.seq)
            catalog.put(None, spec, _encode_key(spec["_id"]))
            index = _IndexSpec.from_catalog(spec)
            if index is not None:
                writer.build(index)
            self._engine._catalog_changed()
            return index_name

        return self._engine.write(self.name, record)

    def drop_index(self, name: str) -> None:
        def drop(writer: _Writer) -> None:
            if not any(row["name"] == name for row in self._engine.index_rows(self.name)):
                raise OperationFailure(f"index not found with name [{name}]", 27)
            key = _encode_key(f"{self.name}.{name}")
            writer.conn.execute(
                "DELETE FROM documents WHERE collection = ? AND key = ?", (_INDEX_CATALOG, key)
            )
            _unbuild(writer.conn, self.name, name)
            self._engine._catalog_changed()

        self._engine.write(self.name, drop)


class EmbeddedDatabase:
    """A pymongo-``Database``-like handle on the embedded engine."""

    def __init__(self, engine: EmbeddedEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._collections: dict[str, EmbeddedCollection] = {}

    def get_collection(self, name: str) -> EmbeddedCollection:
        if name not in self._collections:
            self._collections[name] = EmbeddedCollection(self.engine, name)
        return self._collections[name]

    __getitem__ = get_collection  # every operation asks for its collection: one call, not two

    def document_by_id(self, collection: str, document_id: str) -> Any:
        """``database[collection].find_one({"_id": document_id})`` for a string id, as
        :func:`~cosmos_mongo.ops.read_one_sync` asks it: the look-up alone, with nothing of a
        collection's call around it (it raises nothing a driver would send again).

        Raises:
            StorageError: as :meth:`EmbeddedEngine.by_key`.
        """
        return self.engine.by_key(collection, _encode_key(document_id))

    def list_collection_names(self) -> list[str]:
        """The collections holding a document or a declared index, sorted by name."""

        def names(reader: _Reader) -> list[str]:
            held, last = {str(row["collection"]) for row in self.engine._catalog_rows}, ""
            # One look-up per collection in the primary key, not a scan of every row.
            while (
                found := reader.conn.execute(
                    "SELECT min(collection) FROM documents WHERE collection > ?", (last,)
                ).fetchone()[0]
            ) is not None:
                last = str(found)
                if reader.conn.execute(
                    "SELECT 1 FROM documents WHERE collection = ? AND body IS NOT NULL LIMIT 1",
                    (last,),
                ).fetchone():
                    held.add(last)
            return sorted(held - {_INDEX_CATALOG})

        return self.engine.read(names)

    def close(self) -> None:
        self.engine.close()

    def damaged_documents(self, *, full: bool = True) -> list[str]:
        """Everything in the file that fails a check: its structure, rows (checksums of their
        identity and body), arrival numbers and, with ``full``, the index catalog and
        every index's entries, re-derived from the documents (see
        :meth:`EmbeddedEngine.damaged_documents`). A read that meets damage raises
        ``StorageError`` (reason ``"damaged"``): nothing damaged is served.

        Raises:
            StorageError: SQLite failed.
        """
        return self.engine.damaged_documents(full=full)

    def rebuild_indexes(self) -> IndexRebuild:
        """Re-derive every index entry from the documents and put the rows saying which
        indexes are built right; only differences are written, so running it twice changes
        nothing the second time (see :meth:`EmbeddedEngine.rebuild_indexes`).

        Raises:
            ReadOnlyError: the store is open read-only.
            StorageError: SQLite failed (nothing was changed).
        """
        return self.engine.rebuild_indexes()

    def change_stamp(self) -> tuple[int, int]:
        """Changes whenever a write commits, here or in another process (see
        :meth:`EmbeddedEngine.change_stamp`)."""
        return self.engine.change_stamp()

    def unit_of_work(self) -> contextlib.AbstractContextManager[None]:
        """One durable transaction for the writes made inside (see
        :meth:`EmbeddedEngine.unit_of_work`); the workflow drivers open one per run of
        database steps."""
        return self.engine.unit_of_work()

    def backup(self, destination: Path) -> Path:
        """A consistent copy of the database file (SQLite online backup); returns its path."""
        return self.engine.backup(destination)

    def compact(self) -> tuple[int, int]:
        """Give the space of deleted documents back to the file system (SQLite ``VACUUM``);
        returns the bytes on disk before and after."""
        return self.engine.compact()

    def __enter__(self) -> EmbeddedDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_embedded(
    data_dir: Path, database: str = "cosmos", *, read_only: bool = False
) -> EmbeddedDatabase:
    """Open (creating if needed) the embedded database ``database`` in ``data_dir``.

    ``read_only=True`` creates and changes nothing: a missing database reads as empty, and
    every write raises :class:`~cosmos_mongo.errors.StorageError`.
    """
    name = check_database_name(database)
    path = Path(data_dir) / f"{name}.sqlite3"
    return EmbeddedDatabase(EmbeddedEngine(path, name, read_only=read_only), name)


class _Materialized:
    """What the async adapter returns for ``find``/``aggregate``: awaited via ``to_list``."""

    def __init__(self, produce: Callable[[], list[Any]]) -> None:
        self._produce = produce

    async def to_list(self, length: int | None = None) -> list[Any]:
        documents = await asyncio.to_thread(self._produce)
        return documents if length is None else documents[:length]


class AsyncEmbeddedCollection:
    """Async face of :class:`EmbeddedCollection`: each call runs on a worker thread."""

    def __init__(self, collection: EmbeddedCollection) -> None:
        self._collection = collection

    def find(self, *args: Any, **kwargs: Any) -> _Materialized:
        return _Materialized(lambda: self._collection.find(*args, **kwargs))

    def aggregate(self, *args: Any, **kwargs: Any) -> _Materialized:
        return _Materialized(lambda: self._collection.aggregate(*args, **kwargs))

    def list_indexes(self) -> _Materialized:
        return _Materialized(self._collection.list_indexes)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._collection, name)

        async def offloaded(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return offloaded


class AsyncEmbeddedDatabase:
    """An async-database-like handle on the embedded engine, for ``AsyncCosmosStore``."""

    def __init__(self, database: EmbeddedDatabase) -> None:
        self.sync = database
        self.name = database.name

    def __getitem__(self, name: str) -> AsyncEmbeddedCollection:
        return AsyncEmbeddedCollection(self.sync[name])

    def grouping_database(self) -> EmbeddedDatabase:
        """The synchronous database on which the async driver runs a workflow's writes, on
        one worker thread, in one :meth:`~EmbeddedDatabase.unit_of_work`."""
        return self.sync

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def damaged_documents(self, *, full: bool = True) -> list[str]:
        return await asyncio.to_thread(self.sync.damaged_documents, full=full)
