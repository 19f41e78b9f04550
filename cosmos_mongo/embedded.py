"""The embedded default database: mongomock answers queries, a SQLite file keeps the data.

How it holds together:

* **Durable.** Every write runs inside one SQLite transaction (WAL, ``synchronous=FULL``) that
  stores the BSON of each document it touched. When a write returns, it is on disk.
* **Constant cost per write.** A write rewrites only the rows of the documents it touched; the
  file is never rewritten whole.
* **Shared between processes.** Writers serialize on SQLite's write lock (``BEGIN IMMEDIATE``).
  Each document row carries the sequence number of the write that last touched it (deletes
  leave a tombstone), so the rows form a change log in the same file. Before every operation a
  process asks SQLite whether another connection has committed (``PRAGMA data_version``) and,
  if so, loads only the rows newer than the last sequence it has seen.
* **Fast reads.** mongomock scans every document for every query. Here each collection keeps
  hash indexes on ``_id`` and on the leading field of every declared non-unique index, and
  hands mongomock only the candidates an equality or ``$in`` term allows. mongomock still
  applies the whole filter, so the answer is the same; only the scan is shorter.

The classes mirror the part of the pymongo API the library uses. ``find`` and ``aggregate``
return materialized results, because the in-memory engine must not be read outside its lock.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import re
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import bson
import bson.errors
import mongomock as _mongomock
from mongomock import aggregate as _aggregation
from mongomock import filtering as _filtering
from mongomock import helpers as _helpers
from pymongo import ReturnDocument
from pymongo.results import DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from cosmos_mongo.errors import InvalidInputError, ReadOnlyError, StorageError
from cosmos_mongo.validation import MAX_DOCUMENT_BYTES

# mongomock's own type hints claim pymongo's classes; the engine treats it as untyped.
mongomock: Any = _mongomock
filtering: Any = _filtering
aggregation: Any = _aggregation
helpers: Any = _helpers

T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB,
    body_crc INTEGER,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_seq ON documents (seq);
-- body_crc: CRC-32 of body, checked on load (NULL in rows written before it existed;
-- files made before it get the column added on open).
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('seq', 0), ('format', 1);
"""
_INDEX_CATALOG: Final = "system.indexes"
_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_DATABASE_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,63}")
_NARROWABLE: Final = (str, int, float)  # bool is an int; Mongo and Python agree on equality


def check_database_name(name: object) -> str:
    if not isinstance(name, str) or not _DATABASE_NAME.fullmatch(name):
        raise InvalidInputError(
            "database", "must be 1 to 63 letters, digits, '_' or '-' (it names a file)"
        )
    return name


def _encode_key(document_id: Any) -> bytes:
    return bson.encode({"_id": document_id})


def _decode_key(key: bytes) -> Any:
    return bson.decode(key)["_id"]


def _key_label(key: bytes) -> str:
    try:
        return str(_decode_key(key))
    except (bson.errors.BSONError, ValueError, KeyError):
        return f"key {key[:32].hex()}"


class _Damaged(Exception):
    def __init__(self, label: str, why: str) -> None:
        self.label = label
        super().__init__(why)


def _checked_document(key: bytes, body: bytes | None, crc: int | None) -> Any:
    """The decoded row, or ``_Damaged`` if its checksum or its BSON is wrong."""
    if body is None:
        return None
    if crc is not None and zlib.crc32(body) != crc:
        raise _Damaged(_key_label(key), "checksum mismatch: the stored bytes changed on disk")
    try:
        return bson.decode(body)
    except (bson.errors.BSONError, ValueError) as exc:
        raise _Damaged(_key_label(key), f"not valid BSON ({exc})") from exc


def _encoded(document: Mapping[str, Any]) -> bytes:
    """BSON of a document, refused over 16 MB as a server would (updates can grow one)."""
    body = bson.encode(document)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise InvalidInputError(
            "document",
            f"is {len(body)} bytes as BSON; MongoDB stores at most {MAX_DOCUMENT_BYTES}",
        )
    return body


def _create_if_missing(path: Path) -> None:
    """Create the data dir (0700) and a new database file (0600) atomically, or check that
    an existing file is a SQLite database: an empty or foreign file is refused, untouched.

    The new file is built aside and linked into place, so a second process starting at the
    same moment never sees a half-made (0-byte) file.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
        try:
            fd = os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            connection = sqlite3.connect(staging)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
            finally:
                connection.close()
            with contextlib.suppress(FileExistsError):  # another process created it first
                os.link(staging, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
    _check_header(path)


def _check_header(path: Path) -> None:
    """Refuse, untouched, a file that is empty or not a SQLite database."""
    with path.open("rb") as file:
        header = file.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        what = "is empty (0 bytes)" if not header else "is not a SQLite database"
        raise StorageError(
            f"the embedded database {path} {what}; it was left untouched. Restore it from a "
            "backup (cosmos-mongo backup), or move it away to start a new store."
        )


_MISSING: Final = object()
_UNREACHABLE: Final = object()  # the path crosses an array: leave such documents to mongomock


def _field_value(document: Mapping[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return _UNREACHABLE if isinstance(value, list) else _MISSING
        if part not in value:
            return _MISSING
        value = value[part]
    return value


def _field_values(document: Mapping[str, Any], path: str) -> list[Any] | None:
    """Hashable values of ``path`` for indexing; None if the value cannot be indexed safely."""
    value = _field_value(document, path)
    if value is _MISSING or value is None:
        return []
    if isinstance(value, _NARROWABLE):
        return [value]
    return None


def _equality_values(condition: Any) -> list[Any] | None:
    """The values a field condition must equal one of, or None if it does not pin them."""
    if isinstance(condition, _NARROWABLE):
        return [condition]
    if (
        isinstance(condition, Mapping)
        and condition
        and all(isinstance(key, str) and key.startswith("$") for key in condition)
    ):
        if "$eq" in condition and isinstance(condition["$eq"], _NARROWABLE):
            return [condition["$eq"]]
        values = condition.get("$in")
        if isinstance(values, list | tuple) and all(isinstance(x, _NARROWABLE) for x in values):
            return list(values)
    return None


@dataclass
class _HashIndex:
    """Document ids by the value of one field. Unindexable documents are always candidates."""

    path: str
    buckets: dict[Any, dict[Any, None]] = field(default_factory=dict)
    keys_of: dict[Any, list[Any]] = field(default_factory=dict)
    unindexable: set[Any] = field(default_factory=set)

    def put(self, document_id: Any, document: Mapping[str, Any] | None) -> None:
        self.remove(document_id)
        if document is None:
            return
        values = _field_values(document, self.path)
        if values is None:
            self.unindexable.add(document_id)
            return
        for value in values:
            self.buckets.setdefault(value, {})[document_id] = None
        self.keys_of[document_id] = values

    def remove(self, document_id: Any) -> None:
        self.unindexable.discard(document_id)
        for value in self.keys_of.pop(document_id, ()):
            bucket = self.buckets.get(value)
            if bucket is not None:
                bucket.pop(document_id, None)
                if not bucket:
                    del self.buckets[value]

    def lookup(self, values: Iterable[Any]) -> dict[Any, None]:
        found: dict[Any, None] = {}
        for value in values:
            found.update(self.buckets.get(value, {}))
        found.update(dict.fromkeys(self.unindexable))
        return found


@dataclass
class _OrderedIndex:
    """Document ids in the order of one field's value, for sorted finds without a full sort.

    Values of one comparable kind (dates, strings or numbers: the first kind seen) are kept in
    a sorted list. A document with a missing or other-kind value makes the index decline, so
    the caller falls back to mongomock's own sort and BSON ordering. Equal values keep
    mongomock's (stable, arrival) order, or are ordered by ``_id`` when the sort says so.
    """

    path: str
    entries: list[tuple[Any, int, Any]] = field(default_factory=list)
    entry_of: dict[Any, tuple[Any, int, Any]] = field(default_factory=dict)
    declined: set[Any] = field(default_factory=set)
    kind: type | None = None
    arrivals: int = 0
    id_kinds: dict[type | None, int] = field(default_factory=dict)

    def put(self, document_id: Any, document: Mapping[str, Any] | None) -> None:
        old = self.entry_of.pop(document_id, None)
        if old is not None:
            del self.entries[bisect.bisect_left(self.entries, old)]
            self._count_id(document_id, -1)
        self.declined.discard(document_id)
        if document is None:
            return
        value = _field_value(document, self.path)
        kind = _sort_kind(value)
        if kind is None or (self.kind is not None and kind is not self.kind):
            self.declined.add(document_id)
            return
        self.kind = kind
        if old is None:
            self.arrivals += 1
        # The arrival number breaks ties, so equal values keep mongomock's (stable) order.
        entry = (value, self.arrivals if old is None else old[1], document_id)
        bisect.insort(self.entries, entry)
        self.entry_of[document_id] = entry
        self._count_id(document_id, 1)

    def _count_id(self, document_id: Any, change: int) -> None:
        kind = _sort_kind(document_id)
        self.id_kinds[kind] = self.id_kinds.get(kind, 0) + change
        if not self.id_kinds[kind]:
            del self.id_kinds[kind]

    def ordered(
        self, descending: bool, among: list[Any] | None, needed: int = 0, ties_by_id: bool = False
    ) -> Iterable[Any] | None:
        """Ids in order (all, or ``among``); None if some document cannot be ordered here.

        ``needed`` (0: all) is how many the caller will take at most, which decides between
        sorting the candidates and walking the whole index. ``ties_by_id`` orders equal
        values by ``_id`` in the same direction (ids of one comparable kind only).
        """
        if ties_by_id and (None in self.id_kinds or len(self.id_kinds) > 1):
            return None
        if among is None:
            if self.declined:
                return None
            return _walk_entries(self.entries, descending, ties_by_id)
        if self.declined and not self.declined.isdisjoint(among):
            return None
        if needed and len(among) ** 2 > needed * len(self.entries):
            # Many candidates (say every enhanced prompt): walking the index until ``needed``
            # are found reads about needed * N / k entries, fewer than the k the sort would.
            wanted = set(among)
            walk = self.ordered(descending, None, ties_by_id=ties_by_id)
            assert walk is not None  # nothing is declined, checked above
            return (document_id for document_id in walk if document_id in wanted)
        keyed = sorted(self.entry_of[i] for i in among if i in self.entry_of)
        if ties_by_id:
            keyed.sort(key=lambda entry: (entry[0], entry[2]), reverse=descending)
        else:
            keyed.sort(key=lambda entry: entry[0], reverse=descending)  # stable: ties by arrival
        return (entry[2] for entry in keyed)


def _walk_entries(
    entries: list[tuple[Any, int, Any]], descending: bool, ties_by_id: bool
) -> Iterator[Any]:
    """Walk sorted entries in value order. Equal values stay in arrival order, or go by id."""
    if not descending and not ties_by_id:
        yield from (entry[2] for entry in entries)
        return
    end = len(entries)
    position = 0
    while (end > 0) if descending else (position < end):
        if descending:
            start = end - 1
            while start > 0 and entries[start - 1][0] == entries[end - 1][0]:
                start -= 1
            group, end = entries[start:end], start
        else:
            stop = position + 1
            while stop < end and entries[stop][0] == entries[position][0]:
                stop += 1
            group, position = entries[position:stop], stop
        if ties_by_id and len(group) > 1:
            group = sorted(group, key=lambda entry: entry[2], reverse=descending)
        yield from (entry[2] for entry in group)


def _sort_kind(value: Any) -> type | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float
    if isinstance(value, datetime | str):
        return type(value)
    return None


class _Planner:
    """Per-collection hash and ordered indexes, and the choice of candidates for a filter."""

    def __init__(self) -> None:
        self._indexes: dict[str, dict[str, _HashIndex]] = {}
        self._orders: dict[str, dict[str, _OrderedIndex]] = {}

    def add_index(
        self, collection: str, paths: list[str], documents: Iterable[Mapping[str, Any]]
    ) -> None:
        """Hash the leading field and order by every field of a newly declared index."""
        stored = list(documents)
        indexes = self._indexes.setdefault(collection, {})
        if paths[0] != "_id" and paths[0] not in indexes:
            index = indexes[paths[0]] = _HashIndex(paths[0])
            for document in stored:
                index.put(document["_id"], document)
        orders = self._orders.setdefault(collection, {})
        for path in paths:
            if path not in orders:
                order = orders[path] = _OrderedIndex(path)
                for document in stored:
                    order.put(document["_id"], document)

    def put(self, collection: str, document_id: Any, document: Mapping[str, Any] | None) -> None:
        for index in self._indexes.get(collection, {}).values():
            index.put(document_id, document)
        for order in self._orders.get(collection, {}).values():
            order.put(document_id, document)

    def order_for(self, collection: str, sort: Any) -> tuple[_OrderedIndex, bool, bool] | None:
        """The ordered index serving a sort on one key, or one key then ``_id`` in the same
        direction; whether it runs descending; and whether ties go by ``_id``."""
        keys = list(sort.items()) if isinstance(sort, Mapping) else list(sort or ())
        ties_by_id = len(keys) == 2 and tuple(keys[1]) == ("_id", keys[0][1])
        if len(keys) != 1 and not ties_by_id:
            return None
        path, direction = keys[0]
        order = self._orders.get(collection, {}).get(path)
        return None if order is None else (order, direction == -1, ties_by_id)

    def candidates(
        self, collection: str, query: Mapping[str, Any], stored: Mapping[Any, Any]
    ) -> list[Any] | None:
        """Ids of the documents that can match ``query``, or None when every one can.

        Every top-level term must hold, so the smallest candidate set of any term will do:
        an equality or ``$in`` on ``_id`` or on a hashed field, an ``$and`` of such terms, or
        an ``$or`` whose every branch narrows (the union of the branches).
        """
        indexes = self._indexes.get(collection, {})
        best: list[Any] | None = None
        for path, condition in query.items():
            ids: list[Any] | None = None
            if path == "$and" and isinstance(condition, list):
                narrowed = [self.candidates(collection, term, stored) for term in condition]
                ids = min((n for n in narrowed if n is not None), key=len, default=None)
            elif path == "$or" and isinstance(condition, list) and condition:
                branches = [self.candidates(collection, term, stored) for term in condition]
                if all(branch is not None for branch in branches):
                    ids = list(dict.fromkeys(i for branch in branches for i in branch or ()))
            elif path == "_id":
                # _id is never null or missing, so even {_id: null} pins the candidates.
                values = [None] if condition is None else _equality_values(condition)
                if values is not None:
                    ids = [value for value in dict.fromkeys(values) if value in stored]
            elif path in indexes:
                values = _equality_values(condition)
                if values is not None:
                    ids = list(indexes[path].lookup(values))
            if ids is not None and (best is None or len(ids) < len(best)):
                best = ids
        return best


class _IndexedCollection(mongomock.Collection):  # type: ignore[misc]
    """A mongomock collection that scans only the planner's candidates."""

    planner: _Planner

    def _iter_documents(self, filter: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        stored = self._store._documents
        ids = self.planner.candidates(self.name, filter, stored)
        if ids is None:
            return super()._iter_documents(filter)  # type: ignore[no-any-return]
        if not ids:
            filtering.filter_applies(filter, {})  # still reject a malformed filter
        documents = [stored[i] for i in ids if i in stored]
        return (document for document in documents if filtering.filter_applies(filter, document))

    def aggregate(self, pipeline: list[Mapping[str, Any]], session: Any = None, **_: Any) -> Any:
        """mongomock copies the whole collection before the first stage; a leading ``$match``
        is served by the indexed ``find`` instead, and the rest runs on what it returns."""
        stages = list(pipeline)
        first = stages[0] if stages else {}
        query = first.get("$match") if len(first) == 1 else None
        if isinstance(query, Mapping):
            documents, stages = list(self.find(query)), stages[1:]
        else:
            documents = list(self.find())
        return aggregation.process_pipeline(documents, self.database, stages, session)

    def find_sorted(
        self,
        query: Mapping[str, Any] | None,
        projection: Mapping[str, Any] | None,
        sort: Any,
        skip: int,
        limit: int,
    ) -> list[Any] | None:
        """A sorted find that walks an ordered index and copies only what it returns.

        Returns None when no ordered index serves ``sort``; the caller then uses ``find``.
        """
        plan = self.planner.order_for(self.name, sort)
        if plan is None:
            return None
        order, descending, ties_by_id = plan
        spec = helpers.patch_datetime_awareness_in_document(query or {})
        stored = self._store._documents
        ids = self.planner.candidates(self.name, spec, stored)
        ordered = order.ordered(descending, ids, skip + limit if limit else 0, ties_by_id)
        if ordered is None:
            return None
        filtering.filter_applies(spec, {})  # reject a malformed filter even when nothing matches
        found: list[Any] = []
        for document_id in ordered:
            document = stored.get(document_id)
            if document is None or not filtering.filter_applies(spec, document):
                continue
            if skip:
                skip -= 1
                continue
            found.append(self._copy_only_fields(document, projection, dict))
            if limit and len(found) >= limit:
                break
        if self.codec_options.tz_aware:
            return [helpers.make_datetime_timezone_aware_in_document(doc) for doc in found]
        return found


class _IndexedDatabase(mongomock.Database):  # type: ignore[misc]
    planner: _Planner

    def get_collection(self, name: str, *args: Any, **kwargs: Any) -> Any:
        collection = self._collection_accesses.get(name)
        if collection is None:
            self._ensure_valid_collection_name(name)
            collection = _IndexedCollection(
                self, name=name, _db_store=self._store, codec_options=self._codec_options
            )
            collection.planner = self.planner
            self._collection_accesses[name] = collection
        return collection


@dataclass
class EngineStats:
    """Counters that tests and benchmarks read to see what the engine did."""

    catch_ups: int = 0
    documents_loaded: int = 0
    full_loads: int = 0
    write_transactions: int = 0


class EmbeddedEngine:
    """One SQLite file and the in-memory mongomock database that mirrors it."""

    def __init__(self, path: Path, database: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.stats = EngineStats()
        self._lock = threading.RLock()
        self._planner = _Planner()
        client = mongomock.MongoClient(tz_aware=True)
        self._mock = _IndexedDatabase(
            client, database, _store=client._store[database], codec_options=client.codec_options
        )
        self._mock.planner = self._planner
        client._database_accesses[database] = self._mock
        self._seq = 0
        self._data_version: int | None = None
        self.damaged: dict[tuple[str, str], str] = {}
        try:
            if read_only:
                self._conn = self._connect_read_only(path)
            else:
                _create_if_missing(path)
                self._conn = self._connect(f"file:{path}?mode=rw")
                self._prepare()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the embedded database at {path}: {exc}") from exc
        with self._sqlite_errors():
            self._load_everything()

    @staticmethod
    def _connect(uri: str) -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
        )

    def _connect_read_only(self, path: Path) -> sqlite3.Connection:
        """The file opened read-only; a missing one reads as an empty store and is not made."""
        if not path.exists():
            connection = self._connect("file::memory:")
            connection.executescript(_SCHEMA)
            return connection
        _check_header(path)
        return self._connect(f"file:{path}?mode=ro")

    def _prepare(self) -> None:
        """Set the journal up and bring an older file's schema up to date."""
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(documents)")}
        if "body_crc" not in columns:
            try:
                self._conn.execute("ALTER TABLE documents ADD COLUMN body_crc INTEGER")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise

    # -- reading -------------------------------------------------------------------------

    def read(self, operation: Callable[[mongomock.Database], T]) -> T:
        """Run ``operation`` on the in-memory database after catching up with other writers."""
        with self._lock, self._sqlite_errors():
            self._catch_up()
            return operation(self._mock)

    def _load_everything(self) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                rows = self._conn.execute(
                    "SELECT collection, key, body, body_crc FROM documents WHERE body IS NOT NULL"
                ).fetchall()
                (self._seq,) = self._conn.execute(
                    "SELECT value FROM meta WHERE name='seq'"
                ).fetchone()
            finally:
                self._conn.execute("COMMIT")
            self._data_version = self._current_data_version()
            self.stats.full_loads += 1
            self._apply_rows(rows)

    def _current_data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _catch_up(self) -> None:
        version = self._current_data_version()
        if version == self._data_version:
            return
        rows = self._conn.execute(
            "SELECT collection, key, body, body_crc, seq FROM documents WHERE seq > ? ORDER BY seq",
            (self._seq,),
        ).fetchall()
        self._data_version = version
        if rows:
            self.stats.catch_ups += 1
            self._seq = max(self._seq, rows[-1][4])
            self._apply_rows(row[:4] for row in rows)

    def _apply_rows(self, rows: Iterable[tuple[str, bytes, bytes | None, int | None]]) -> None:
        catalog: list[Mapping[str, Any]] = []
        for collection, key, body, crc in rows:
            try:
                document = _checked_document(key, body, crc)
            except _Damaged as exc:
                # Not served: the rest of the store stays usable, and verify() names it.
                self.damaged[(collection, exc.label)] = str(exc)
                self._put_in_memory_if_decodable(collection, key, None)
                continue
            self.damaged.pop((collection, _key_label(key)), None)
            if collection == _INDEX_CATALOG:
                if document is not None:
                    catalog.append(document)
                continue
            self.stats.documents_loaded += 1
            self._put_in_memory(collection, _decode_key(key), document)
        for spec in catalog:
            self._install_index(spec)

    def _put_in_memory_if_decodable(self, collection: str, key: bytes, document: Any) -> None:
        with contextlib.suppress(bson.errors.BSONError, ValueError):
            self._put_in_memory(collection, _decode_key(key), document)

    def damaged_documents(self) -> list[str]:
        """Rows that failed their checksum or could not be decoded: "collection id: why"."""
        with self._lock, self._sqlite_errors():
            self._catch_up()
            return [f"{c} {label}: {why}" for (c, label), why in sorted(self.damaged.items())]

    def backup(self, destination: Path) -> Path:
        """A consistent copy of the file through SQLite's online backup, safe while other
        processes hold and write the store. Refuses to overwrite an existing file."""
        target = Path(destination)
        if target.is_dir():
            target = target / self.path.name
        if target.exists():
            raise InvalidInputError("destination", f"{target} exists; choose a new file")
        with self._lock, self._sqlite_errors():
            copy = sqlite3.connect(target)
            try:
                self._conn.backup(copy)
            finally:
                copy.close()
        with contextlib.suppress(OSError):
            target.chmod(0o600)
        return target

    def _put_in_memory(self, collection: str, document_id: Any, document: Any) -> None:
        store = self._mock[collection]._store
        memory_id = helpers.hashdict(document_id) if isinstance(document_id, dict) else document_id
        if document is None:
            if memory_id in store:
                del store[memory_id]
        else:
            store[memory_id] = document
        self._planner.put(collection, memory_id, document)

    def _install_index(self, spec: Mapping[str, Any]) -> None:
        collection = self._mock[spec["collection"]]
        options = dict(spec.get("options", {}))
        keys = [(name, direction) for name, direction in spec["keys"]]
        collection.create_index(keys, name=spec["name"], **options)
        if not options.get("unique"):
            # A unique index must see a new document before it is re-indexed, so it is not
            # narrowed; mongomock checks uniqueness by scanning.
            paths = [name for name, _ in keys]
            self._planner.add_index(collection.name, paths, collection._store.documents)

    # -- writing -------------------------------------------------------------------------

    def write(self, collection: str, operation: Callable[[Any, set[Any]], T]) -> T:
        """Run ``operation(mock_collection, touched_ids)`` in one durable transaction.

        ``operation`` adds the id of every document it may change to ``touched_ids`` before
        changing it. Those documents are then written to SQLite; if anything fails they are
        restored in memory from SQLite, so memory never holds a write the file does not.
        """
        touched: set[Any] = set()

        def apply(seq: int) -> T:
            result = operation(self._mock[collection], touched)
            self._persist(collection, touched, seq)
            return result

        return self._transaction(apply, lambda: self._restore(collection, touched))

    def record_index(
        self, collection: str, name: str, keys: list[tuple[str, int]], options: dict[str, Any]
    ) -> None:
        """Create an index here and in the file, so every process sharing it installs it."""
        spec = {
            "_id": f"{collection}.{name}",
            "collection": collection,
            "name": name,
            "keys": [list(key) for key in keys],
            "options": options,
        }

        def apply(seq: int) -> None:
            self._upsert_rows([(_INDEX_CATALOG, _encode_key(spec["_id"]), seq, bson.encode(spec))])

        self._transaction(apply, lambda: None)
        self._install_index(spec)

    def forget_index(self, collection: str, name: str) -> None:
        """Drop an index here and from the file (the catalog row is deleted)."""
        key = _encode_key(f"{collection}.{name}")

        def apply(seq: int) -> None:
            self._upsert_rows([(_INDEX_CATALOG, key, seq, None)])

        self._transaction(apply, lambda: None)
        with contextlib.suppress(Exception):  # mongomock: already gone in memory
            self._mock[collection].drop_index(name)

    def _transaction(self, apply: Callable[[int], T], restore: Callable[[], None]) -> T:
        if self.read_only:
            raise ReadOnlyError(f"the embedded database {self.path} is open read-only")
        with self._lock, self._sqlite_errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._catch_up()
                (seq,) = self._conn.execute(
                    "UPDATE meta SET value = value + 1 WHERE name='seq' RETURNING value"
                ).fetchone()
                result = apply(seq)
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                restore()
                raise
            self._seq = seq
            self.stats.write_transactions += 1
            return result

    def _persist(self, collection: str, touched: set[Any], seq: int) -> None:
        store = self._mock[collection]._store._documents
        rows = []
        for document_id in touched:
            document = store.get(document_id)
            self._planner.put(collection, document_id, document)
            body = None if document is None else _encoded(document)
            rows.append((collection, _encode_key(document_id), seq, body))
        self._upsert_rows(rows)

    def _upsert_rows(self, rows: list[tuple[str, bytes, int, bytes | None]]) -> None:
        self._conn.executemany(
            "INSERT INTO documents (collection, key, seq, body, body_crc) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (collection, key) DO UPDATE SET seq = excluded.seq, "
            "body = excluded.body, body_crc = excluded.body_crc",
            [(*row, None if row[3] is None else zlib.crc32(row[3])) for row in rows],
        )

    def _restore(self, collection: str, touched: set[Any]) -> None:
        """Put the touched documents back as the file has them (the write was rolled back)."""
        for document_id in touched:
            row = self._conn.execute(
                "SELECT body FROM documents WHERE collection = ? AND key = ?",
                (collection, _encode_key(document_id)),
            ).fetchone()
            body = None if row is None else row[0]
            self._put_in_memory(
                collection, document_id, None if body is None else bson.decode(body)
            )

    @contextlib.contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"embedded database {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class EmbeddedCollection:
    """The pymongo ``Collection`` methods the library uses, on the embedded engine."""

    def __init__(self, engine: EmbeddedEngine, name: str) -> None:
        self._engine = engine
        self.name = name

    # reads
    def find_one(self, filter: Mapping[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        return self._engine.read(lambda db: db[self.name].find_one(filter, *args, **kwargs))

    def find(
        self,
        filter: Mapping[str, Any] | None = None,
        projection: Mapping[str, Any] | None = None,
        *,
        sort: Any = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[Any]:
        def find(db: Any) -> list[Any]:
            collection = db[self.name]
            found: list[Any] | None = collection.find_sorted(filter, projection, sort, skip, limit)
            if found is None:
                found = list(collection.find(filter, projection, sort=sort, skip=skip, limit=limit))
            return found

        return self._engine.read(find)

    def aggregate(self, pipeline: list[Mapping[str, Any]], **kwargs: Any) -> list[Any]:
        return self._engine.read(lambda db: list(db[self.name].aggregate(pipeline, **kwargs)))

    def count_documents(self, filter: Mapping[str, Any], **kwargs: Any) -> int:
        return self._engine.read(lambda db: int(db[self.name].count_documents(filter, **kwargs)))

    def estimated_document_count(self) -> int:
        return self._engine.read(lambda db: int(db[self.name].estimated_document_count()))

    def list_indexes(self) -> list[Any]:
        return self._engine.read(lambda db: list(db[self.name].list_indexes()))

    def index_information(self) -> dict[str, Any]:
        return self._engine.read(lambda db: dict(db[self.name].index_information()))

    # writes
    def insert_one(self, document: dict[str, Any]) -> InsertOneResult:
        def insert(collection: Any, touched: set[Any]) -> InsertOneResult:
            if "_id" in document:
                touched.add(document["_id"])
            result = collection.insert_one(document)
            touched.add(result.inserted_id)
            return InsertOneResult(result.inserted_id, acknowledged=True)

        return self._engine.write(self.name, insert)

    def insert_many(
        self, documents: Iterable[dict[str, Any]], ordered: bool = True
    ) -> InsertManyResult:
        batch = list(documents)

        def insert(collection: Any, touched: set[Any]) -> InsertManyResult:
            touched.update(document["_id"] for document in batch if "_id" in document)
            result = collection.insert_many(batch, ordered=ordered)
            touched.update(result.inserted_ids)
            return InsertManyResult(result.inserted_ids, acknowledged=True)

        return self._engine.write(self.name, insert)

    def update_one(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False
    ) -> UpdateResult:
        return self._update(filter, update, upsert=upsert, many=False)

    def update_many(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False
    ) -> UpdateResult:
        return self._update(filter, update, upsert=upsert, many=True)

    def _update(
        self, query: Mapping[str, Any], update: Any, *, upsert: bool, many: bool
    ) -> UpdateResult:
        def change(collection: Any, touched: set[Any]) -> UpdateResult:
            targets = _matching_ids(collection, query, many)
            touched.update(targets)
            if targets:
                pinned = {"_id": {"$in": targets}} if many else {"_id": targets[0]}
                result = getattr(collection, "update_many" if many else "update_one")(
                    pinned, update
                )
            else:
                result = collection.update_one(query, update, upsert=upsert)
            if result.upserted_id is not None:
                touched.add(result.upserted_id)
            return UpdateResult(result.raw_result, acknowledged=True)

        return self._engine.write(self.name, change)

    def find_one_and_update(
        self,
        filter: Mapping[str, Any],
        update: Any,
        projection: Mapping[str, Any] | None = None,
        sort: Any = None,
        upsert: bool = False,
        return_document: bool = ReturnDocument.BEFORE,
    ) -> Any:
        def change(collection: Any, touched: set[Any]) -> Any:
            targets = _matching_ids(collection, filter, False, sort)
            touched.update(targets)
            pinned = {"_id": targets[0]} if targets else filter
            document = collection.find_one_and_update(
                pinned,
                update,
                projection=projection,
                upsert=upsert,
                return_document=return_document,
            )
            if document is not None and "_id" in document:
                touched.add(document["_id"])
            elif upsert and not targets:
                touched.update(_matching_ids(collection, filter, False, sort))
            return document

        return self._engine.write(self.name, change)

    def delete_one(self, filter: Mapping[str, Any]) -> DeleteResult:
        return self._delete(filter, many=False)

    def delete_many(self, filter: Mapping[str, Any]) -> DeleteResult:
        return self._delete(filter, many=True)

    def _delete(self, query: Mapping[str, Any], *, many: bool) -> DeleteResult:
        def remove(collection: Any, touched: set[Any]) -> DeleteResult:
            targets = _matching_ids(collection, query, many)
            touched.update(targets)
            if not targets:
                return DeleteResult({"n": 0, "ok": 1.0}, acknowledged=True)
            result = collection.delete_many({"_id": {"$in": targets}})
            return DeleteResult(result.raw_result, acknowledged=True)

        return self._engine.write(self.name, remove)

    def create_index(self, keys: Any, name: str | None = None, **options: Any) -> str:
        key_list = [(keys, 1)] if isinstance(keys, str) else [(k, d) for k, d in keys]
        index_name = name or "_".join(f"{k}_{d}" for k, d in key_list)
        self._engine.record_index(self.name, index_name, key_list, options)
        return index_name

    def drop_index(self, name: str) -> None:
        self._engine.forget_index(self.name, name)


def _matching_ids(
    collection: Any, query: Mapping[str, Any], many: bool, sort: Any = None
) -> list[Any]:
    cursor = collection.find(query, {"_id": 1}, sort=sort, limit=0 if many else 1)
    return [document["_id"] for document in cursor]


class EmbeddedDatabase:
    """A pymongo-``Database``-like handle on the embedded engine."""

    def __init__(self, engine: EmbeddedEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._collections: dict[str, EmbeddedCollection] = {}

    def __getitem__(self, name: str) -> EmbeddedCollection:
        return self.get_collection(name)

    def get_collection(self, name: str) -> EmbeddedCollection:
        if name not in self._collections:
            self._collections[name] = EmbeddedCollection(self.engine, name)
        return self._collections[name]

    def close(self) -> None:
        self.engine.close()

    def damaged_documents(self) -> list[str]:
        """Stored rows that failed their checksum or decoding; they are not served."""
        return self.engine.damaged_documents()

    def backup(self, destination: Path) -> Path:
        """A consistent copy of the database file (SQLite online backup); returns its path."""
        return self.engine.backup(destination)

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

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def damaged_documents(self) -> list[str]:
        return await asyncio.to_thread(self.sync.damaged_documents)
