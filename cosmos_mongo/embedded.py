"""The embedded default database: a SQLite file holds the documents and their indexes, and
mongomock's matching, update and aggregation code answers on the few documents a query needs.

How it holds together (docs/DEVELOPMENT.md, "The embedded engine", walks through it):

* **Nothing is loaded at open.** Each operation reads what it needs from the file inside one
  SQLite transaction, so opening costs the same at any size and every process sees the
  others' committed writes at once.
* **Indexes on disk.** Every declared index is a range of rows in the ``entries`` table: one
  row per document (per array element for an array), keyed by the indexed values encoded so
  that SQLite's byte order is MongoDB's sort order. A query's equality terms pick a key range,
  its range terms narrow it, and a sort the index matches is a walk in key order that stops at
  ``limit``. Only the documents that range names are decoded; mongomock's ``filter_applies``
  then applies the whole filter, so the answer is the one a scan would give.
* **Durable.** Every write is one SQLite transaction (WAL, ``synchronous=FULL``) covering the
  document rows and their index entries; when a write returns, it is on disk. Writers
  serialize on SQLite's write lock (``BEGIN IMMEDIATE``).
* **mongomock semantics.** Updates run mongomock's own ``update_one``/``update_many`` on a
  scratch collection holding only the target documents; aggregation runs mongomock's pipeline
  on the documents of a leading ``$match``, with ``$lookup`` and ``$graphLookup`` served by
  the same indexed ``find``. Ties in a sort keep insertion order, as mongomock's stable sort
  does (each document keeps its ``arrival`` number).

The classes mirror the part of the pymongo API the library uses. ``find`` and ``aggregate``
return lists, because a cursor must not outlive its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import heapq
import itertools
import math
import os
import re
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

import bson
import bson.errors
import mongomock as _mongomock
from bson import ObjectId
from bson.binary import Binary
from bson.code import Code
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from mongomock import aggregate as _aggregation
from mongomock import collection as _mongomock_collection
from mongomock import filtering as _filtering
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError
from pymongo.results import DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from cosmos_mongo.errors import InvalidInputError, ReadOnlyError, StorageError
from cosmos_mongo.files import private_directory
from cosmos_mongo.validation import MAX_DOCUMENT_BYTES

# mongomock's own type hints claim pymongo's classes; the engine treats it as untyped.
mongomock: Any = _mongomock
filtering: Any = _filtering
aggregation: Any = _aggregation
mongomock_collection: Any = _mongomock_collection

T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB,
    body_crc INTEGER,
    id_crc INTEGER,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
-- body_crc: CRC-32 of body (NULL in rows written before it existed); id_crc: CRC-32 of the
-- row's identity, collection, key and arrival (format 3; NULL in rows older versions wrote,
-- which keep it right for rows they update: those never change their identity). Both are
-- checked on every read.
-- The _id index. A key is the BSON of {_id}: its 5th byte is the type, a string's UTF-8 starts
-- at the 14th (after its size), an ObjectId's 12 bytes at the 10th; so strings and ObjectIds
-- sort as in MongoDB. Made of the key alone, SQLite keeps it for every writer, older ones too.
CREATE INDEX IF NOT EXISTS documents_id ON documents (collection, substr(key, 5, 1),
    substr(key, CASE substr(key, 5, 1) WHEN x'02' THEN 14 ELSE 10 END));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('seq', 0), ('format', 1), ('arrival', 0),
    ('catalog', 0);
-- One row per indexed value of a document: the key orders like MongoDB sorts, arrival names
-- the document (every document has its own) and breaks ties in insertion order.
CREATE TABLE IF NOT EXISTS entries (
    ix INTEGER NOT NULL,
    key BLOB NOT NULL,
    arrival INTEGER NOT NULL,
    PRIMARY KEY (ix, key, arrival)
) WITHOUT ROWID;
-- A row per index whose entries are complete; ordered = 0 once an array or an object was
-- indexed, after which the index narrows candidates but no longer serves a sort.
CREATE TABLE IF NOT EXISTS built_indexes (
    ix INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    name TEXT NOT NULL,
    ordered INTEGER NOT NULL DEFAULT 1,
    crc INTEGER,
    UNIQUE (collection, name)
);
-- crc: CRC-32 of the row's other columns (format 3), checked whenever the catalog is read.
"""
# 1: documents only, loaded whole at open; 2: indexes on disk, arrival numbers; 3: checksums
# of each row's identity and of the rows that say which indexes are built.
_FORMAT: Final = 3
_ARRIVAL_FORMAT: Final = 2  # the first format with arrival numbers and indexes on disk
_IDENTITY_FORMAT: Final = 3  # the first whose checksums cover the identity
_INDEX_CATALOG: Final = "system.indexes"
# Set once a file's partial indexes hold only their documents (built so, or trimmed).
_PARTIAL_ENTRIES_MARK: Final = (
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('partial_entries', 1)"
)
_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_DATABASE_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,63}")
_BATCH: Final = 500  # documents fetched per SQL statement
_CHECKPOINT_SECONDS: Final = 30.0  # compact's wait for a pause between other writers
# Stored documents decode with aware UTC datetimes, as a tz_aware pymongo client returns them
# (bson's own UTC: naming ``datetime.UTC`` instead converts each datetime, a third slower).
_STORED: Final[CodecOptions[dict[str, Any]]] = CodecOptions(tz_aware=True)


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


_ZERO_RUNS: Final = re.compile(rb"\x00{9,}")


def _may_hold_empty_timestamp(body: bytes) -> bool:
    """Whether a BSON body may hold an empty timestamp, which mongomock fills in (so the
    write takes its path): the element is its type byte 0x11, a name without zero bytes, the
    name's 0x00 and eight zero bytes. Errs only towards yes; linear in the body."""
    for run in _ZERO_RUNS.finditer(body):
        name_start = body.rfind(b"\x00", 0, run.start()) + 1
        if b"\x11" in body[name_start : run.start()]:
            return True
    return False


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
    private_directory(path.parent)
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


def _nothing_can_write(path: Path) -> bool:
    """Whether the file ``path`` is on a read-only mount, or in a directory this process
    cannot write (where SQLite could make no -wal or -shm file to coordinate with writers)."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        pass
    return not os.access(path.parent, os.W_OK | os.X_OK)


def _fsync_path(path: Path) -> None:
    """Flush a file's or a directory's contents to disk (a directory: the names in it)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish(source: Path, target: Path) -> None:
    """Give ``source``'s file the name ``target`` too, atomically, never replacing a file
    there; a file system without hard links gets a rename after a check.

    Raises:
        FileExistsError: ``target`` exists.
        OSError: neither works.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        if target.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.rename(source, target)


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


# SQLite's wal-index header (the start of the -shm file): its version, then mxFrame (the last
# committed frame of the -wal) at byte 16, and nBackfill (how many of them are already copied
# into the database file) at byte 96, in the machine's byte order.
_WAL_INDEX_VERSION: Final = 3007000
_WAL_INDEX_HEADER: Final = struct.Struct("=I8xB3xI")  # version, isInit, mxFrame
_WAL_INDEX_BACKFILL: Final = struct.Struct("=I")


def _check_no_lost_commits(path: Path) -> None:
    """Refuse a file whose -wal is gone while its -shm says the -wal held commits not yet
    copied into the file (someone deleted the -wal after a crash, or under a running
    process): opening it would silently serve the store as it was before those commits.

    The -shm is read only when no -wal exists: then no connection of this process has the
    file open (each keeps the -wal), so closing the descriptor drops no lock of SQLite's.

    Raises:
        StorageError: commits are lost (reason ``"damaged"``); the files were left untouched.
    """
    wal, shm = (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))
    if wal.exists() or not shm.exists():
        return
    try:
        with shm.open("rb") as file:
            header = file.read(_WAL_INDEX_BACKFILL.size + 96)
    except OSError:
        return  # unreadable: SQLite will say what it thinks of it
    if len(header) < 100 or header[:48] != header[48:96]:
        return  # not a wal-index, or one being written: not ours to judge
    version, initialized, last_frame = _WAL_INDEX_HEADER.unpack_from(header)
    (copied,) = _WAL_INDEX_BACKFILL.unpack_from(header, 96)
    if version != _WAL_INDEX_VERSION or not initialized or last_frame <= copied:
        return
    raise StorageError(
        f"the embedded database {path} lost recent commits: its write-ahead log {wal.name} is "
        f"gone, but {shm.name} records {last_frame - copied} committed page writes that were "
        "still only in it. Nothing was opened or changed. Put the -wal file back if you can; "
        f"else restore from a backup, or, to accept the loss and open the file as it is, "
        f"delete {shm} and run `cosmos-mongo verify`.",
        reason="damaged",
    )


# -- index keys: bytes whose order is MongoDB's sort order --------------------------------------
#
# A value becomes a type byte (MongoDB's order of BSON types) and bytes that compare like the
# value. A key is its fields' encodings, each escaped (0x00 -> 0x00 0xFF) and ended by
# 0x00 0x01, so a shorter value sorts before a longer one with the same start; a descending
# field has every byte inverted. Objects, arrays' elements that are objects or arrays, and
# rare types (regex, timestamp, min/max key...) share one "unordered" byte per type: they
# still find their documents by equality on scalars, and an index holding one stops serving
# sorts (mongomock sorts those documents itself).

_NULL: Final = b"\x05"
_NUMBER: Final = b"\x10"
_STRING: Final = b"\x20"
_OBJECT: Final = b"\x30"
_BINARY: Final = b"\x3a"
_OBJECT_ID: Final = b"\x3c"
_BOOLEAN: Final = b"\x40"
_DATE: Final = b"\x50"
_OTHER: Final = b"\x60"
_END: Final = b"\x00\x01"
_MISSING: Final = object()
_HOLE: Final = object()  # an array's element without the field at the rest of a path
_ARRAY: Final = b"\x38"  # an array inside an array, in exact keys only
_EMPTY_ARRAY: Final = b"\x01"  # MongoDB indexes an empty array as undefined


def _double_bytes(number: float) -> bytes:
    if math.isnan(number):
        return b"\x00" * 8  # NaN sorts below every number, as in MongoDB
    (bits,) = struct.unpack(">Q", struct.pack(">d", number + 0.0))  # -0.0 == 0.0
    return struct.pack(">Q", bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | 1 << 63)


def _number_bytes(number: int | float) -> bytes:
    """A number's ordered encoding, exact for every double and every 64-bit integer (MongoDB
    compares an int64 and a double by value, 1 equal to 1.0): an integer past 2**53 that no
    double holds is the greatest double below it and the distance from there, which is less
    than 2**11 and comes after it in two bytes, so it sorts between its two doubles."""
    if isinstance(number, float):
        return _double_bytes(number)
    try:
        below = float(number)
    except OverflowError:  # no stored integer is this large: a query's, compared by its filter
        return _double_bytes(math.copysign(math.inf, number))
    if below == number or abs(number) >= 2**64:
        return _double_bytes(below)
    if below > number:
        below = math.nextafter(below, -math.inf)
    return _double_bytes(below) + struct.pack(">H", number - int(below))


def _datetime_millis(value: datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    delta = value - datetime(1970, 1, 1)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _scalar_bytes(value: Any) -> bytes | None:
    """The ordered encoding of a scalar; None for a value with no total order here."""
    if type(value) is str:  # ids, names, statuses: most of what is encoded, checked first
        return _STRING + value.encode("utf-8", "surrogatepass")
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _BOOLEAN + (b"\x01" if value else b"\x00")
    if type(value) is float:
        return _NUMBER + _double_bytes(value)
    if isinstance(value, int | float):
        return _NUMBER + _number_bytes(value)
    if isinstance(value, str):
        return _STRING + value.encode("utf-8", "surrogatepass")
    if isinstance(value, datetime):
        return _DATE + struct.pack(">Q", _datetime_millis(value) + (1 << 63))
    if isinstance(value, ObjectId):
        return _OBJECT_ID + value.binary
    if isinstance(value, bytes):  # Binary is a bytes subclass
        subtype = value.subtype if isinstance(value, Binary) else 0
        return _BINARY + struct.pack(">IB", len(value), subtype) + bytes(value)
    return None


_INVERTED: Final = bytes(range(255, -1, -1))  # a translate table: every byte b -> 255 - b


def _component(encoded: bytes, descending: bool) -> bytes:
    escaped = encoded.replace(b"\x00", b"\x00\xff") + _END
    return escaped.translate(_INVERTED) if descending else escaped


def _after(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\xff" * (len(prefix) + 1)
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _path_value(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, ``_MISSING`` if absent. A part made of digits names an
    array's element (``arr.0``); a list met midway on another part is returned as the list of
    what each element holds there (MongoDB's multikey reading), ``_HOLE`` for an element that
    holds nothing there (MongoDB indexes it as null, and ``{path: null}`` matches it)."""
    if "." not in path:
        return document.get(path, _MISSING)
    return _along(document, path.split("."))


def _along(value: Any, parts: Sequence[str]) -> Any:
    for position, part in enumerate(parts):
        if isinstance(value, list):
            if part.isdigit() and part.isascii():
                value = value[int(part)] if int(part) < len(value) else _MISSING
                if value is _MISSING:
                    return _MISSING
                continue
            rest = parts[position:]
            found: list[Any] = []
            for item in value:
                inner = _along(item, rest) if isinstance(item, Mapping) else _MISSING
                if isinstance(inner, list):
                    found.extend(inner)  # {a: [{b: [1, 2]}]} holds 1 and 2 at a.b
                else:
                    found.append(_HOLE if inner is _MISSING else inner)
            return found or _MISSING
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _field_keys(value: Any) -> tuple[list[bytes], bool]:
    """The encodings a field's value is indexed under, and whether they keep a total order."""
    if value is _MISSING:
        return [_NULL], True
    if isinstance(value, list):
        keys: list[bytes] = []
        for item in value:
            encoded = _NULL if item is _HOLE else _scalar_bytes(item)
            keys.append(encoded if encoded is not None else _OBJECT)
        return (sorted(set(keys)) or [_OBJECT]), False
    encoded = _scalar_bytes(value)
    if encoded is not None:
        return [encoded], True
    return [_OBJECT if isinstance(value, Mapping) else _OTHER], False


def _exact_key(value: Any) -> Any:
    """A value as a unique index compares it, hashable: equal for values MongoDB takes as one
    key (1 and 1.0, a missing field and null), different for any others, objects and arrays
    included (their ``_field_keys`` share one byte)."""
    if value is _HOLE or value is _MISSING:
        return _NULL
    encoded = _scalar_bytes(value)
    if encoded is not None:
        return encoded
    if isinstance(value, Mapping):
        return (_OBJECT, tuple((str(name), _exact_key(item)) for name, item in value.items()))
    if isinstance(value, list):
        return (_ARRAY, tuple(_exact_key(item) for item in value))
    return bson.encode({"": value})  # a rarer type: equal as its BSON is


def _exact_keys(index: _IndexSpec, document: Mapping[str, Any]) -> set[tuple[Any, ...]]:
    """Every key MongoDB would give ``document`` in ``index``, exactly (see ``_exact_key``)."""
    fields = []
    for path, _ in index.fields:
        value = _path_value(document, path)
        if isinstance(value, list):
            fields.append({_exact_key(item) for item in value} or {_EMPTY_ARRAY})
        else:
            fields.append({_exact_key(value)})
    return set(itertools.product(*fields))


def _equality_keys(value: Any) -> list[bytes] | None:
    """The encodings a document's value may have if it equals ``value`` (a superset: the filter
    decides), or None when the index cannot narrow for it. mongomock, unlike MongoDB, takes
    True for 1 and False for 0, so both are looked up."""
    if (
        type(value) is not str
        and isinstance(value, bool | int | float)
        and not (isinstance(value, float) and math.isnan(value))
    ):
        keys = {_NUMBER + _number_bytes(value)}
        if value in (0, 1):
            keys.add(_BOOLEAN + (b"\x01" if value else b"\x00"))
        return sorted(keys)
    encoded = _scalar_bytes(value)
    return None if encoded is None else [encoded]


class _FieldKeys:
    """One document's values and key components by path, each worked out once for all the
    indexes that share the field (most end in ``created_at, _id``)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self._values: dict[str, Any] = {}
        self._components: dict[tuple[str, bool], tuple[list[bytes], bool]] = {}

    def value(self, path: str) -> Any:
        if path not in self._values:
            self._values[path] = _path_value(self.document, path)
        return self._values[path]

    def components(self, path: str, descending: bool) -> tuple[list[bytes], bool]:
        found = self._components.get((path, descending))
        if found is None:
            encodings, keeps_order = _field_keys(self.value(path))
            found = [_component(e, descending) for e in encodings], keeps_order
            self._components[(path, descending)] = found
        return found


@dataclass(frozen=True, slots=True)
class _IndexSpec:
    collection: str
    name: str
    fields: tuple[tuple[str, bool], ...]  # (path, descending)
    unique: bool
    options: Mapping[str, Any]
    ix: int = 0  # its number in built_indexes (0 until built)
    partial: Mapping[str, Any] | None = None  # it holds only the documents this matches

    def holds(self, document: Mapping[str, Any]) -> bool:
        """Whether ``document`` has entries in this index (a partial one skips others)."""
        partial = self.partial
        return partial is None or bool(filtering.filter_applies(partial, document))

    def membership_follows_fields(self) -> bool:
        """Whether the partial filter reads only the index's own fields, so a write that
        leaves those alone leaves the document in or out of the index as it was."""
        partial = self.partial
        own = {path for path, _ in self.fields}
        return partial is None or all(path in own for path in partial)

    @classmethod
    def from_catalog(cls, row: Mapping[str, Any]) -> _IndexSpec | None:
        """The spec of a catalog row; None for an index the engine cannot keep (text)."""
        keys = [(str(name), direction) for name, direction in row["keys"]]
        if any(direction not in (1, -1) for _, direction in keys):
            return None
        options = dict(row.get("options", {}))
        partial = options.get("partialFilterExpression")
        return cls(
            row["collection"],
            row["name"],
            tuple((name, direction == -1) for name, direction in keys),
            bool(options.get("unique")),
            options,
            partial=partial if isinstance(partial, Mapping) else None,
        )

    def keys_of(
        self, document: Mapping[str, Any], fields: _FieldKeys | None = None
    ) -> tuple[set[bytes], bool]:
        """Every entry key of ``document`` (one per combination of array elements) and whether
        they keep a total order. ``fields`` shares the work on each field across indexes."""
        fields = fields if fields is not None else _FieldKeys(document)
        combos: list[bytes] = [b""]
        ordered = True
        for path, descending in self.fields:
            components, keeps_order = fields.components(path, descending)
            ordered = ordered and keeps_order
            if len(components) == 1:  # a scalar: the common case, one key
                component = components[0]
                combos = [k + component for k in combos]
            else:
                combos = [k + c for k in combos for c in components]
        return set(combos), ordered

    def covers(self, document: Mapping[str, Any]) -> bool:
        """Whether a unique index constrains ``document`` (partial and sparse indexes skip some)."""
        if not self.holds(document):
            return False
        if self.options.get("sparse"):
            return any(_present(_path_value(document, path)) for path, _ in self.fields)
        return True


# -- planning: which key ranges of which index can hold the answer -----------------------------

_RANGE_OPERATORS: Final = frozenset({"$lt", "$lte", "$gt", "$gte"})
_WHOLE: Final = (b"", b"\xff")  # every key of an index (no key starts with 0xFF)
_RACE_CAP: Final = 1000  # plans are compared by counting at most this many entries each
_FEW: Final = 16  # a plan naming at most this many documents wins without further counting


@dataclass(frozen=True, slots=True)
class _Bound:
    """A range on one field's encoded values (ascending): None is unbounded."""

    low: tuple[bytes, bool] | None = None  # (encoding, inclusive)
    high: tuple[bytes, bool] | None = None

    def meet(self, other: _Bound) -> _Bound:
        low = max((b for b in (self.low, other.low) if b), key=_low_order, default=None)
        high = min((b for b in (self.high, other.high) if b), key=_high_order, default=None)
        return _Bound(low, high)

    def join(self, other: _Bound) -> _Bound:
        low = None if not (self.low and other.low) else min(self.low, other.low, key=_low_order)
        high = (
            None if not (self.high and other.high) else max(self.high, other.high, key=_high_order)
        )
        return _Bound(low, high)


def _low_order(bound: tuple[bytes, bool]) -> tuple[bytes, bool]:
    return (bound[0], not bound[1])  # at the same value, exclusive is the tighter low


def _high_order(bound: tuple[bytes, bool]) -> tuple[bytes, bool]:
    return bound  # at the same value, exclusive (False) is the tighter high


@dataclass(slots=True)
class _Terms:
    """What a filter says about single fields, in the forms an index can use."""

    equal: dict[str, list[bytes]] = field(default_factory=dict)
    bounds: dict[str, _Bound] = field(default_factory=dict)
    branches: list[_Terms] | None = None  # a top-level $or whose every branch is read
    conditions: dict[str, list[Any]] = field(default_factory=dict)  # as written, by path


_LOGICAL: Final = frozenset({"$and", "$or", "$nor"})
_TOP_LEVEL: Final = _LOGICAL | {
    "$expr", "$where", "$text", "$comment", "$jsonSchema", "$alwaysTrue", "$alwaysFalse",
    "$sampleRate",
}  # fmt: skip
_FIELD_OPERATORS: Final = frozenset(
    {
        *("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$all", "$size"),
        *("$exists", "$type", "$not", "$regex", "$options", "$elemMatch", "$mod"),
        *("$bitsAllSet", "$bitsAnySet", "$bitsAllClear", "$bitsAnyClear"),
        *("$geoWithin", "$geoIntersects", "$near", "$nearSphere", "$within"),
        *("$maxDistance", "$minDistance"),
    }
)


_CHECKED_OPERATORS: Final = frozenset(
    {"$in", "$nin", "$all", "$not", "$elemMatch", "$size", "$mod"}
)


def _bad_filter(message: str) -> OperationFailure:
    return OperationFailure(message, 2, {"ok": 0, "errmsg": message, "code": 2})


def _check_filter(query: Any) -> None:
    """Raise as a server does for a malformed filter, whatever the documents: it parses the
    whole filter first, where mongomock looks at a term only when a document reaches it.

    Raises:
        OperationFailure: an unknown operator, or an operator given the wrong kind of value.
    """
    if type(query) is not dict and not isinstance(query, Mapping):
        return  # refused elsewhere, as pymongo refuses it
    for path, condition in query.items():
        if type(path) is not str or path[:1] != "$":
            if type(condition) not in _UNPATCHED:  # a plain value is an equality
                _check_condition(condition)
        elif path not in _TOP_LEVEL:
            raise _bad_filter(f"unknown top level operator: {path}")
        elif path in _LOGICAL:
            if not (isinstance(condition, list | tuple) and condition):
                raise _bad_filter("$and/$or/$nor must be a nonempty array")
            for branch in condition:
                if type(branch) is not dict and not isinstance(branch, Mapping):
                    raise _bad_filter("$or/$and/$nor entries need to be full objects")
                _check_filter(branch)


def _check_condition(condition: Any) -> None:
    """A field's condition: a value to equal, or (its first key an operator) operators."""
    if type(condition) is not dict and not isinstance(condition, Mapping):
        return
    if not condition or str(next(iter(condition)))[:1] != "$":
        return  # equality with an embedded document
    for operator, value in condition.items():
        if operator not in _FIELD_OPERATORS:
            raise _bad_filter(f"unknown operator: {operator}")
        if operator in _CHECKED_OPERATORS:
            _check_operator(operator, value)


def _check_operator(operator: str, value: Any) -> None:
    """The value of one of ``_CHECKED_OPERATORS``, as a server checks it."""
    if operator in ("$in", "$nin", "$all"):
        if not isinstance(value, list | tuple):
            raise _bad_filter(f"{operator} needs an array")
    elif operator == "$not":
        if isinstance(value, Mapping):
            if not value:
                raise _bad_filter("$not cannot be empty")
            _check_condition(value)
        elif not isinstance(value, re.Pattern | bson.Regex):
            raise _bad_filter("$not needs a regex or a document")
    elif operator == "$elemMatch":
        if not isinstance(value, Mapping):
            raise _bad_filter("$elemMatch needs an Object")
        first = str(next(iter(value), ""))
        if first.startswith("$") and first not in _TOP_LEVEL:
            _check_condition(value)  # conditions on each element
        else:
            _check_filter(value)  # a query on each element (a document)
    elif operator == "$size":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad_filter("$size needs a number")
    elif not (isinstance(value, list | tuple) and len(value) == 2):  # $mod
        raise _bad_filter("malformed mod, needs to be an array of a divisor and a remainder")


def _terms(query: Mapping[str, Any]) -> _Terms:
    terms = _Terms()
    parts = [query]
    while parts:
        part = parts.pop()
        for path, condition in part.items():
            if path == "$and" and isinstance(condition, list):
                parts.extend(c for c in condition if isinstance(c, Mapping))
            elif path == "$or" and isinstance(condition, list) and condition:
                if terms.branches is None and all(isinstance(c, Mapping) for c in condition):
                    terms.branches = [_terms(c) for c in condition]
                    _bound_from_branches(terms)
            elif not path.startswith("$"):
                terms.conditions.setdefault(path, []).append(condition)
                _add_condition(terms, path, condition)
    return terms


def _implies(terms: _Terms, partial: Mapping[str, Any]) -> bool:
    """Whether every document matching the filter behind ``terms`` matches a partial index's
    filter, so the index (which holds only those) can answer: each of its terms is in the
    filter as written, or is ``$exists: true`` on a path the filter compares with a value
    other than null."""
    for path, condition in partial.items():
        if path.startswith("$"):
            return False  # $and and the like: not worked out here
        if condition in terms.conditions.get(path, ()):
            continue
        present = path in terms.bounds or (path in terms.equal and _NULL not in terms.equal[path])
        if not (condition == {"$exists": True} and present):
            return False
    return True


def _add_condition(terms: _Terms, path: str, condition: Any) -> None:
    operators = type(condition) is not str and isinstance(condition, Mapping) and bool(condition)
    operators = operators and all(str(key).startswith("$") for key in condition)
    if not operators:
        keys = _equality_keys(condition)
        if keys is not None and path not in terms.equal:
            terms.equal[path] = keys
        return
    if "$eq" in condition:
        keys = _equality_keys(condition["$eq"])
        if keys is not None and path not in terms.equal:
            terms.equal[path] = keys
    values = condition.get("$in")
    if isinstance(values, list | tuple) and path not in terms.equal:
        found = [_equality_keys(value) for value in values]
        if all(keys is not None for keys in found):
            terms.equal[path] = sorted({key for keys in found for key in keys or ()})
    bound = _Bound()
    for operator in _RANGE_OPERATORS & condition.keys():
        value = condition[operator]
        if not isinstance(value, str | datetime):  # mongomock's number order is not MongoDB's
            return
        encoded = _scalar_bytes(value)
        assert encoded is not None
        inclusive = operator.endswith("e")
        side = (
            _Bound(low=(encoded, inclusive))
            if "g" in operator
            else _Bound(high=(encoded, inclusive))
        )
        bound = bound.meet(side)
    if bound.low or bound.high:
        terms.bounds[path] = terms.bounds[path].meet(bound) if path in terms.bounds else bound


def _bound_from_branches(terms: _Terms) -> None:
    """A field every branch of an $or bounds is bounded by their union (keyset pages)."""
    assert terms.branches is not None
    for path in set.intersection(*(_bounded_paths(b) for b in terms.branches)):
        union: _Bound | None = None
        for branch in terms.branches:
            own = branch.bounds.get(path)
            if own is None:
                keys = branch.equal[path]
                own = _Bound((keys[0], True), (keys[-1], True))
            union = own if union is None else union.join(own)
        if union is not None and (union.low or union.high):
            terms.bounds[path] = terms.bounds[path].meet(union) if path in terms.bounds else union


def _bounded_paths(terms: _Terms) -> set[str]:
    return set(terms.bounds) | {p for p, keys in terms.equal.items() if len(keys) == 1}


@dataclass(slots=True)
class _Plan:
    """Key ranges of one index (or, for an $or, several plans whose union holds the answer)."""

    index: _IndexSpec | None
    ranges: list[tuple[bytes, bytes]]
    equal_fields: int = 0
    walk: int = 0  # 1 or -1: the walk in key order gives the sort's order; 0: it does not
    sort_fields: int = 0  # leading key fields that decide the sort (ties: insertion order)
    union: list[_Plan] = field(default_factory=list)
    partial: bool = False  # the whole of a partial index the filter implies
    counted: list[int] | None = None  # every document's arrival, once the race read them all
    id_kind: bytes = b""  # not entries: _ids of these BSON types in the _id index, ranges[0]
    fetched: list[_Stored] | None = None  # the documents too, when the race read a few whole

    def decides(self, query: Mapping[str, Any]) -> bool:
        """Whether every document this index plan names matches ``query``: the filter is
        only equalities its key prefix decides exactly (``_exact_paths``)."""
        assert self.index is not None
        equal_paths = frozenset(path for path, _ in self.index.fields[: self.equal_fields])
        return _exact_paths(query) == equal_paths


def _index_plan(
    index: _IndexSpec, terms: _Terms, sort: Sequence[tuple[str, int]], ordered: bool
) -> _Plan | None:
    lead = index.fields[0][0]
    if lead not in terms.equal and lead not in terms.bounds and not (sort and sort[0][0] == lead):
        return None  # the index can neither narrow nor order this query
    prefixes = [b""]
    equal_fields = 0
    for path, descending in index.fields:
        keys = terms.equal.get(path)
        if keys is None or len(prefixes) * len(keys) > 64:
            break
        prefixes = [p + _component(k, descending) for p in prefixes for k in keys]
        equal_fields += 1
    ranges = [(p, _after(p)) if p else _WHOLE for p in prefixes]
    bounded = False
    if equal_fields < len(index.fields):
        path, descending = index.fields[equal_fields]
        bound = terms.bounds.get(path)
        if bound is not None and not ordered and bound.low and bound.high:
            # An array's elements may each meet one side ({k: ["a", "ab"]} matches
            # {$gt: "a", $lte: "a"}): where the index has met arrays, one side only.
            bound = _Bound(low=bound.low)
        if bound is not None:
            ranges = [
                _narrowed(r, p, bound, descending) for r, p in zip(ranges, prefixes, strict=True)
            ]
            bounded = True
    walk = 0
    rest = index.fields[equal_fields:]
    if ordered and sort and len(sort) <= len(rest):
        same = all(p == s and (d == (w == -1)) for (p, d), (s, w) in zip(rest, sort, strict=False))
        flipped = all(
            p == s and (d != (w == -1)) for (p, d), (s, w) in zip(rest, sort, strict=False)
        )
        walk = 1 if same else -1 if flipped else 0
    if not (equal_fields or bounded or walk):
        return None
    return _Plan(index, ranges, equal_fields, walk, equal_fields + len(sort) if walk else 0)


def _narrowed(
    span: tuple[bytes, bytes], prefix: bytes, bound: _Bound, descending: bool
) -> tuple[bytes, bytes]:
    start, end = span
    limits = [(bound.low, True), (bound.high, False)]
    for limit, is_low in limits:
        if limit is None:
            continue
        value, inclusive = limit
        at = prefix + _component(value, descending)
        if is_low != descending:  # a low bound ascending, or a high bound descending: the start
            start = max(start, at if inclusive else _after(at))
        else:
            end = min(end, _after(at) if inclusive else at)
    return start, end


# The _id index (documents_id in the schema) holds every document under the BSON type byte of
# its _id and a value that, for a string (its UTF-8 and two zero bytes) or an ObjectId (its 12
# bytes and one), orders like MongoDB. Other kinds are held but not in order.
_ID_VALUE: Final = "substr(key, CASE substr(key, 5, 1) WHEN x'02' THEN 14 ELSE 10 END)"
_ID_INDEX: Final = "FROM documents INDEXED BY documents_id WHERE collection = ?"
_ORDERED_IDS: Final = frozenset({b"\x02", b"\x07"})  # string, ObjectId
_NUMERIC_IDS: Final = frozenset({b"\x01", b"\x10", b"\x12"})  # double, int32, int64


def _id_kind(value: Any) -> bytes | None:
    """The BSON type bytes of the _ids a range on ``value`` can match, as mongomock compares
    (only like kinds: MongoDB's type bracketing); None for a kind not narrowed here."""
    if isinstance(value, str) and not isinstance(value, Code):  # Code: a str, not a BSON string
        return b"\x02"
    if isinstance(value, ObjectId):
        return b"\x07"
    if isinstance(value, datetime):
        return b"\x09"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return b"\x01\x10\x12\x13"  # double, int32, int64, decimal128
    return None


def _id_value(value: Any) -> bytes:
    """A string's or an ObjectId's value in the _id index (``_ID_VALUE`` in Python)."""
    key = _encode_key(value)
    return key[13:] if key[4:5] == b"\x02" else key[9:]


@dataclass(frozen=True, slots=True)
class _IdSpan:
    """What the ``_id`` ranges of a filter allow: the kind they bracket (one or more BSON type
    bytes) and, for an ordered kind, a span of values (start inclusive, end exclusive)."""

    kind: bytes
    span: tuple[bytes, bytes] = _WHOLE


def _id_span(conditions: Sequence[Any]) -> _IdSpan | None:
    """The part of the _id index that holds every document the ``_id`` conditions (all of
    which must hold) can match, or None if none of them is a range. A range matches only
    _ids of its value's kind, whatever the other conditions; the first range's kind is taken,
    and the ranges on that kind narrow the span if it is ordered."""
    found: _IdSpan | None = None
    for condition in conditions:
        if not isinstance(condition, Mapping) or not condition:
            continue
        if not all(str(key).startswith("$") for key in condition):
            continue  # equality with an embedded document
        for operator in sorted(_RANGE_OPERATORS & condition.keys()):
            value = condition[operator]
            kind = _id_kind(value)
            if kind is None or (found is not None and kind != found.kind):
                continue
            found = found or _IdSpan(kind)
            if kind not in _ORDERED_IDS:
                continue
            at = _id_value(value)
            start, end = found.span
            if operator == "$gt":
                start = max(start, at + b"\x00")  # the least value above ``at``
            elif operator == "$gte":
                start = max(start, at)
            elif operator == "$lt":
                end = min(end, at)
            else:
                end = min(end, at + b"\x00")
            found = _IdSpan(kind, (start, end))
    return found


def _decided_by_id_span(query: Mapping[str, Any]) -> bool:
    """Whether every document an _id span names matches ``query``: it is empty (a walk of a
    collection whose _ids are all of one ordered kind), or only ranges on ``_id`` whose values
    are all of one ordered kind, which the span is exactly."""
    if not query:
        return True
    condition = query.get("_id") if len(query) == 1 else None
    if not isinstance(condition, Mapping) or not condition:
        return False
    kinds = {_id_kind(value) if o in _RANGE_OPERATORS else None for o, value in condition.items()}
    return len(kinds) == 1 and kinds <= _ORDERED_IDS


# -- reading ----------------------------------------------------------------------------------


@dataclass
class EngineStats:
    """What the engine did, for tests and benchmarks."""

    documents_decoded: int = 0
    write_transactions: int = 0


class _Damaged(Exception):
    def __init__(self, label: str, why: str) -> None:
        self.label = label
        super().__init__(why)


def _identity_crc(collection: str, key: bytes, arrival: int) -> int:
    """The checksum of a row's identity (format 3), kept beside its body's so that versions
    that know only the body's still read and write the file. (The key is BSON, which starts
    with its length, and a collection name holds no zero byte: the parts cannot run into each
    other.)"""
    identity = collection.encode("utf-8", "surrogatepass") + b"\x00" + key
    return zlib.crc32(identity + arrival.to_bytes(8, "big", signed=True))


def _catalog_crc(ix: int, collection: str, name: str, ordered: int) -> int:
    """The checksum of a ``built_indexes`` row (format 3)."""
    return zlib.crc32(f"{ix}\x00{collection}\x00{name}\x00{ordered}".encode("utf-8", "replace"))


def _catalog_row_intact(ix: int, collection: str, name: str, ordered: int, crc: int | None) -> bool:
    """Whether a ``built_indexes`` row passes its checksum. Older versions writing to the file
    make rows without one, and mark an index unordered without updating it: both are taken
    (the second stops an index serving sorts, which never gives a wrong answer)."""
    return crc is None or crc in (
        _catalog_crc(ix, collection, name, ordered),
        _catalog_crc(ix, collection, name, 1) if ordered == 0 else -1,
    )


def _checked_document(
    collection: str,
    key: bytes,
    arrival: int | None,
    body: bytes,
    crc: int | None,
    id_crc: int | None,
) -> Any:
    """The decoded row, or ``_Damaged`` if a checksum (of its identity, or of its body) or
    its BSON is wrong. A row without an identity checksum (an older version wrote it) is
    checked on its body alone."""
    if id_crc is not None and _identity_crc(collection, key, arrival or 0) != id_crc:
        raise _Damaged(
            _key_label(key),
            "identity checksum mismatch: the row's key, collection or arrival number changed "
            "on disk",
        )
    if crc is not None and zlib.crc32(body) != crc:
        raise _Damaged(_key_label(key), "checksum mismatch: the stored bytes changed on disk")
    try:
        return bson.decode(body, _STORED)
    except (bson.errors.BSONError, ValueError) as exc:
        raise _Damaged(_key_label(key), f"not valid BSON ({exc})") from exc


def _intact(body: bytes) -> Any:
    """The document of a row whose checksum has passed."""
    return bson.decode(body, _STORED)


DAMAGE_ADVICE: Final = (
    "`cosmos-mongo verify` lists all of it; `cosmos-mongo backup` keeps a copy of the file as "
    "it is; `cosmos-mongo rebuild-indexes` rebuilds damaged indexes from the documents; a "
    "damaged document comes back only from a backup made before the damage"
)


def _damage_error(path: Path, where: str, why: str) -> StorageError:
    """The error of an operation that met damage: it served and changed nothing."""
    return StorageError(
        f"the embedded database {path} is damaged ({where}: {why}); the operation stopped "
        f"and changed nothing. {DAMAGE_ADVICE}.",
        reason="damaged",
    )


@dataclass(slots=True)
class _Stored:
    key: bytes
    arrival: int
    document: dict[str, Any]  # as stored: naive UTC datetimes, mongomock's own form


def _sort_in_memory(found: list[_Stored], sort: Sequence[tuple[str, int]]) -> list[_Stored]:
    """mongomock's order: stable sorts from the last key to the first, over insertion order."""
    if len(found) > 2:  # two sort as quickly either way
        keyed = _in_key_order(found, sort)
        if keyed is not None:
            return keyed
    ordered = sorted(found, key=lambda stored: stored.arrival)
    for path, direction in reversed(sort):

        def sort_key(stored: _Stored, path: str = path) -> Any:
            return filtering.resolve_sort_key(path, stored.document)

        ordered.sort(key=sort_key, reverse=direction < 0)
    return ordered


def _in_key_order(found: list[_Stored], sort: Sequence[tuple[str, int]]) -> list[_Stored] | None:
    """The same order in one sort on index keys (which order like mongomock's sort, and three
    times faster on 100 documents), ties in insertion order; None if a sort value is an array
    or an object, whose place mongomock's own comparison decides."""
    rows = []
    for stored in found:
        key = b""
        for path, direction in sort:
            value = _path_value(stored.document, path)
            encoded = _NULL if value is _MISSING else _scalar_bytes(value)
            if encoded is None:
                return None
            key += _component(encoded, direction < 0)
        rows.append((key, stored.arrival, stored))
    rows.sort(key=lambda row: row[:2])
    return [stored for _, _, stored in rows]


def _sort_spec(sort: Any) -> list[tuple[str, int]]:
    if not sort:
        return []
    items = sort.items() if isinstance(sort, Mapping) else sort
    return [(str(path), int(direction)) for path, direction in items]


class _Reader:
    """One operation's view of the file: every read goes through one SQLite transaction."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine
        self.conn = engine._conn

    # documents by key
    def fetch(self, collection: str, keys: Sequence[bytes]) -> list[_Stored]:
        """The stored documents with these keys, in the given order.

        Raises:
            StorageError: a row read is damaged, or a key is missing from the file's rows but
                not from its ``_id`` index (reason ``"damaged"``).
        """
        found = self._rows(collection, "key", "", keys)
        return [found[key] for key in dict.fromkeys(keys) if key in found]

    def fetch_one(self, collection: str, key: bytes) -> list[Any]:
        """The document with this key, as a list of none or one.

        Raises:
            StorageError: as :meth:`fetch`.
        """
        # The checksum is taken over the collection and key asked for: a row a broken b-tree
        # gives instead fails it.
        row = self.conn.execute(
            f"SELECT {self.engine.arrival}, body, body_crc, {self.engine.id_crc} FROM documents "
            "WHERE collection = ? AND key = ?",
            (collection, key),
        ).fetchone()
        if row is None:
            self._confirm_absent(collection, "key", [key])
            return []
        arrival, body, crc, id_crc = row
        if body is None:
            return []
        return [self._decoded(collection, key, arrival, body, crc, id_crc)]

    def fetch_ranges(self, collection: str, plan: _Plan) -> list[_Stored]:
        """The documents a plan's ranges name, read with their entries in one statement.

        Raises:
            StorageError: an entry names no document, or a row is damaged.
        """
        assert plan.index is not None
        spans = [(plan.index.ix, start, end) for start, end in plan.ranges]
        return self._stored_once(collection, self._with_entries(collection, spans))

    def _with_entries(
        self, collection: str, spans: Sequence[tuple[int, bytes, bytes]], limit: int = -1
    ) -> list[tuple[bytes | None, int, bytes | None, int | None, int | None]]:
        """(key, arrival, body, crc, id_crc) of the documents whose entries lie in any of ``spans``
        (index, start, end), joined in one statement (SQLite's multi-index ``OR``), at most
        ``limit`` rows (-1: all); a document in two spans comes twice. An entry whose
        document is missing comes with key None (the outer join): a damaged file."""
        if not spans:
            return []
        terms = " OR ".join(["(e.ix = ? AND e.key >= ? AND e.key < ?)"] * len(spans))
        rows: list[tuple[bytes | None, int, bytes | None, int | None, int | None]]
        rows = self.conn.execute(
            f"SELECT d.key, e.arrival, d.body, d.body_crc, {self.engine.joined_id_crc} "
            "FROM entries e LEFT JOIN "
            "documents d INDEXED BY documents_arrival "
            f"ON d.collection = ? AND d.arrival = e.arrival WHERE ({terms}) LIMIT ?",
            (collection, *itertools.chain.from_iterable(spans), limit),
        ).fetchall()
        return rows

    def _stored_once(
        self,
        collection: str,
        rows: Iterable[tuple[bytes | None, int, bytes | None, int | None, int | None]],
    ) -> list[_Stored]:
        """The documents of ``rows`` (a join of entries and documents), each once.

        Raises:
            StorageError: an entry names no document, or a row is damaged.
        """
        found: dict[int, _Stored] = {}
        for key, arrival, body, crc, id_crc in rows:
            if key is None:
                self._confirm_absent(collection, "arrival", [arrival])
            elif body is not None and arrival not in found:
                document = self._decoded(collection, key, arrival, body, crc, id_crc)
                found[arrival] = _Stored(key, arrival, document)
        return list(found.values())

    def fetch_arrivals(self, collection: str, arrivals: Sequence[int]) -> list[_Stored]:
        """The stored documents with these arrival numbers (what index entries name), in the
        given order.

        Raises:
            StorageError: an arrival number has no document (index entries name only
                stored documents: the file is damaged), or a row is damaged.
        """
        # Named: without statistics SQLite would scan the collection by primary key.
        found = self._rows(collection, "arrival", "INDEXED BY documents_arrival", arrivals)
        by_arrival = {stored.arrival: stored for stored in found.values()}
        return [by_arrival[a] for a in dict.fromkeys(arrivals) if a in by_arrival]

    def _rows(
        self, collection: str, column: str, index: str, values: Sequence[Any]
    ) -> dict[Any, _Stored]:
        """The documents whose ``column`` is one of ``values``, by key.

        Raises:
            StorageError: as :meth:`_raw_rows`, or a row is damaged.
        """
        found: dict[Any, _Stored] = {}
        for key, arrival, body, crc, id_crc in self._raw_rows(collection, column, index, values):
            document = self._decoded(collection, key, arrival, body, crc, id_crc)
            found[key] = _Stored(key, arrival or 0, document)
        return found

    def _raw_rows(
        self, collection: str, column: str, index: str, values: Sequence[Any]
    ) -> Iterator[tuple[bytes, int | None, bytes, int | None, int | None]]:
        """(key, arrival, body, crc, id_crc) of the stored documents whose ``column`` is one of
        ``values``, read ``_BATCH`` values per statement and not decoded.

        Raises:
            StorageError: a value with no row is still in the file's other index of it
                (see :meth:`_confirm_absent`).
        """
        for start in range(0, len(values), _BATCH):
            batch = list(dict.fromkeys(values[start : start + _BATCH]))
            rows = self.conn.execute(
                f"SELECT key, {self.engine.arrival}, body, body_crc, {self.engine.id_crc}, "
                f"collection, {column} "
                f"FROM documents {index} "
                f"WHERE collection = ? AND {column} IN ({','.join('?' * len(batch))})",
                (collection, *batch),
            ).fetchall()
            asked = set(batch)
            for row in rows:
                self._check_asked(collection, column, asked, row[5:])
            present = {row[6] for row in rows}
            self._confirm_absent(collection, column, [v for v in batch if v not in present])
            yield from (row[:5] for row in rows if row[2] is not None)  # not tombstones

    def _check_asked(
        self, collection: str, column: str, asked: set[Any], got: tuple[str, Any]
    ) -> None:
        """A row SQLite gives for a look-up is one that was asked for: a b-tree whose order
        a damaged byte broke can give another.

        Raises:
            StorageError: it is not (reason ``"damaged"``).
        """
        if got[0] != collection or got[1] not in asked:
            label = _key_label(got[1]) if isinstance(got[1], bytes) else f"{column} {got[1]}"
            raise _damage_error(
                self.engine.path,
                f"{got[0]} {label}",
                f"a look-up in {collection} by {column} gave this row instead (the order of "
                "the file's rows is broken)",
            )

    def _confirm_absent(self, collection: str, column: str, missing: Sequence[Any]) -> None:
        """Check that rows the file has no row for are truly absent. An arrival number comes
        from an index entry, which names only stored documents; a key is looked for in the
        ``_id`` index (an index seek, made only on a miss), which a damaged key or collection
        in the row itself leaves behind. A damaged byte never makes a document silently
        absent from these reads.

        Raises:
            StorageError: the file is damaged (reason ``"damaged"``).
        """
        if not missing:
            return
        if column == "arrival":
            raise _damage_error(
                self.engine.path,
                f"index entries of {collection}",
                f"they name arrival number {missing[0]}, which no document there has",
            )
        if not self.engine.id_index:
            return
        for key in missing:
            kind = key[4:5]
            value = key[13:] if kind == b"\x02" else key[9:]
            held = self.conn.execute(
                f"SELECT 1 {_ID_INDEX} AND substr(key, 5, 1) = ? AND {_ID_VALUE} = ? LIMIT 1",
                (collection, kind, value),
            ).fetchone()
            if held is not None:
                raise _damage_error(
                    self.engine.path,
                    f"{collection} {_key_label(key)}",
                    "the _id index holds it but its row is gone (its key or collection bytes "
                    "changed on disk)",
                )

    def _decoded(
        self,
        collection: str,
        key: bytes,
        arrival: int | None,
        body: bytes,
        crc: int | None,
        id_crc: int | None,
    ) -> Any:
        """The document of a row.

        Raises:
            StorageError: the row is damaged (reason ``"damaged"``); never served.
        """
        try:
            document = _checked_document(collection, key, arrival, body, crc, id_crc)
        except _Damaged as exc:
            self.engine.damaged[(collection, exc.label)] = str(exc)
            raise _damage_error(self.engine.path, f"{collection} {exc.label}", str(exc)) from None
        self.engine.stats.documents_decoded += 1
        return document

    def scan(self, collection: str) -> Iterator[_Stored]:
        """Every document of the collection, in insertion order.

        Raises:
            StorageError: a row is damaged, or (once the scan is over) the file's indexes of
                the collection's rows name rows the scan did not meet.
        """
        rows = self.conn.execute(
            f"SELECT key, {self.engine.arrival}, body, body_crc, {self.engine.id_crc} "
            f"FROM documents {self.engine.by_arrival} WHERE collection = ? "
            f"ORDER BY {self.engine.arrival}",
            (collection,),
        )
        met = 0
        for key, arrival, body, crc, id_crc in rows:
            met += 1
            if body is not None:
                document = self._decoded(collection, key, arrival, body, crc, id_crc)
                yield _Stored(key, arrival or 0, document)
        self._check_all_met(collection, met)

    def _check_all_met(self, collection: str, met: int) -> None:
        """A scan by arrival meets each row its index names; a row whose key or collection
        bytes changed is left out by SQLite without a word. Counting both of the file's
        indexes of the rows (index-only reads) shows it.

        Raises:
            StorageError: a count differs (reason ``"damaged"``).
        """
        if not self.engine.by_arrival:
            return  # a first-format file read-only: no index to compare with
        counts = [
            self.conn.execute(
                "SELECT count(*) FROM documents INDEXED BY documents_arrival WHERE collection = ?",
                (collection,),
            ).fetchone()[0]
        ]
        if self.engine.id_index:
            counts.append(
                self.conn.execute(f"SELECT count(*) {_ID_INDEX}", (collection,)).fetchone()[0]
            )
        if any(count != met for count in counts):
            raise _damage_error(
                self.engine.path,
                collection,
                f"its indexes count {' and '.join(map(str, counts))} rows, but {met} are "
                "readable (a row's key, collection or arrival bytes changed on disk)",
            )

    # planning
    def plan(self, collection: str, terms: _Terms, sort: Sequence[tuple[str, int]]) -> _Plan | None:
        union = self._union_plan(collection, terms)
        if union is not None and union.fetched is not None:
            return union  # a few documents, already read: no plan can beat it
        by_lead = self.engine.catalog_by_lead(collection)
        leads = {*terms.equal, *terms.bounds}
        if sort:
            leads.add(sort[0][0])
        plans = [
            plan
            for lead in sorted(leads)  # the same plan in every process when counts tie
            for index, ordered in by_lead.get(lead, ())
            if (index.partial is None or _implies(terms, index.partial))
            and (plan := _index_plan(index, terms, sort, ordered)) is not None
        ]
        # A partial index the filter implies narrows by itself: it holds only its documents.
        plans += [
            _Plan(index, [_WHOLE], partial=True)
            for index, _ in self.engine.catalog(collection)
            if index.partial is not None
            and index.fields[0][0] not in leads
            and _implies(terms, index.partial)
        ]
        if union is not None:
            plans.append(union)
        by_id = self._id_plan(terms, sort)
        if by_id is not None and by_id.id_kind:
            plans.append(by_id)
        narrowing = [
            p
            for p in plans
            if p.equal_fields or p.union or p.partial or p.id_kind or p.ranges != [_WHOLE]
        ]
        if len(narrowing) == 1:
            return narrowing[0]
        if narrowing:
            return self._race(collection, narrowing)
        walks = [p for p in plans if p.walk]
        if walks:
            return walks[0]
        if by_id is not None and by_id.walk:  # a sort on _id, no range on it
            kind = self._only_id_kind(collection)
            if kind in _ORDERED_IDS:
                by_id.id_kind = kind
                return by_id
        return None

    def _id_plan(self, terms: _Terms, sort: Sequence[tuple[str, int]]) -> _Plan | None:
        """The _id index's plan, as mongod's _id index serves ``_id`` ranges and sorts: the
        kind and span that the filter's ranges on ``_id`` allow (``id_kind`` empty if none),
        walked in order if the sort starts with ``_id`` and the kind is ordered (an _id is
        unique: the rest of the sort never decides)."""
        if not self.engine.id_index:
            return None
        allowed = _id_span(terms.conditions.get("_id", ()))
        walk = (-1 if sort[0][1] < 0 else 1) if sort and sort[0][0] == "_id" else 0
        if allowed is not None and allowed.kind not in _ORDERED_IDS:
            walk = 0
        if allowed is None and not walk:
            return None
        kind, span = (allowed.kind, allowed.span) if allowed is not None else (b"", _WHOLE)
        return _Plan(None, [span], walk=walk, sort_fields=len(sort) if walk else 0, id_kind=kind)

    def _only_id_kind(self, collection: str) -> bytes | None:
        """The BSON type of every _id in the collection if they share one, else None (the
        least and the greatest type byte: two seeks in the _id index)."""
        least, greatest = self.conn.execute(
            f"SELECT (SELECT substr(key, 5, 1) {_ID_INDEX} ORDER BY substr(key, 5, 1) LIMIT 1), "
            f"(SELECT substr(key, 5, 1) {_ID_INDEX} ORDER BY substr(key, 5, 1) DESC LIMIT 1)",
            (collection, collection),
        ).fetchone()
        return bytes(least) if least is not None and least == greatest else None

    def _id_where(self, plan: _Plan) -> tuple[str, tuple[bytes, ...]]:
        """The terms and parameters (after the collection) of an _id span plan's rows."""
        kinds = tuple(bytes([kind]) for kind in plan.id_kind)
        where = f"AND substr(key, 5, 1) IN ({','.join('?' * len(kinds))})"
        if plan.id_kind not in _ORDERED_IDS:
            return where, kinds
        return f"{where} AND {_ID_VALUE} >= ? AND {_ID_VALUE} < ?", (*kinds, *plan.ranges[0])

    def by_id(
        self, collection: str, plan: _Plan, direction: int, batch: int = _BATCH
    ) -> Generator[_Stored]:
        """The documents of an _id span plan, in _id order (or reversed) for an ordered kind,
        read as consumed.

        Raises:
            StorageError: a row read is damaged.
        """
        where, parameters = self._id_where(plan)
        order = "ASC" if direction >= 0 else "DESC"
        ordered = f"ORDER BY {_ID_VALUE} {order}" if plan.id_kind in _ORDERED_IDS else ""
        # The keys from the index alone, then their rows by key, ``batch`` at a time (each
        # decoded only when consumed): SQLite would silently drop an index entry whose row's
        # key bytes changed; a look-up by key notices (_raw_rows).
        keys = self.conn.execute(
            f"SELECT key {_ID_INDEX} {where} {ordered}", (collection, *parameters)
        )
        try:
            while wanted := [row[0] for row in itertools.islice(keys, batch)]:
                rows = {row[0]: row for row in self._raw_rows(collection, "key", "", wanted)}
                for key in wanted:
                    if key in rows:  # else a tombstone an older version left
                        _, arrival, body, crc, id_crc = rows[key]
                        document = self._decoded(collection, key, arrival, body, crc, id_crc)
                        yield _Stored(key, arrival or 0, document)
        finally:
            keys.close()

    def _union_plan(self, collection: str, terms: _Terms) -> _Plan | None:
        """The union of an ``$or``'s branch plans, if an index narrows every branch; its
        documents already read (``fetched``) if they are a few."""
        if not terms.branches:
            return None
        branches = [self.plan(collection, branch, ()) for branch in terms.branches]
        if not all(p is not None and (p.equal_fields or p.union) for p in branches):
            return None
        union = _Plan(None, [], 1, union=[p for p in branches if p is not None])
        spans = _union_spans(union)
        if spans is not None:
            found = self._few_of_union(collection, spans)
            if found is not None:
                union.counted, union.fetched = [stored.arrival for stored in found], found
        return union

    def _race(self, collection: str, plans: list[_Plan]) -> _Plan:
        """Like a server's plan race: the plan with the fewest entries wins, one that also
        gives the sort's order breaks ties. Each plan's first few entries are looked at
        first; if none names only a few, the likely small ones are counted first, and each
        later count stops once it passes the best so far."""
        ordered = sorted(plans, key=lambda p: (not p.union, -p.equal_fields))
        # A first look at a few entries of each: one naming a few documents wins without
        # any plan being counted far (interrupted work beside every enhance run, say).
        glance = [self._count(collection, plan, _FEW + 1) for plan in ordered]
        if min(glance) <= _FEW:
            fewest = min(glance)
            few = [plan for plan, count in zip(ordered, glance, strict=True) if count == fewest]
            return next((plan for plan in few if plan.walk), few[0])
        best: _Plan | None = None
        best_count = _RACE_CAP
        for plan in ordered:
            if best is not None and best_count <= _FEW:
                break  # a handful to read already: counting the others costs more than it saves
            count = self._count(collection, plan, best_count + 1)
            if best is None or count < best_count or (count == best_count and plan.walk):
                best, best_count = plan, count
        assert best is not None
        return best

    def _count(self, collection: str, plan: _Plan, cap: int) -> int:
        """How many entries the plan reads, counting no further than ``cap``."""
        if plan.id_kind:
            where, parameters = self._id_where(plan)
            (found,) = self.conn.execute(
                f"SELECT count(*) FROM (SELECT 1 {_ID_INDEX} {where} LIMIT ?)",
                (collection, *parameters, cap),
            ).fetchone()
            return int(found)
        total = 0
        spans = _union_spans(plan)
        if spans is not None:  # one statement for every branch (SQLite's MULTI-INDEX OR)
            terms = " OR ".join(["(ix = ? AND key >= ? AND key < ?)"] * len(spans))
            rows = self.conn.execute(
                f"SELECT arrival FROM entries WHERE {terms} LIMIT ?",
                (*itertools.chain.from_iterable(spans), cap),
            ).fetchall()
            if len(rows) >= cap:
                return cap
            plan.counted = [arrival for (arrival,) in rows]
            return len(rows)
        if plan.union:
            for branch in plan.union:
                total += self._count(collection, branch, cap - total)
                if total >= cap:
                    break
            return total
        assert plan.index is not None
        documents: list[int] = []
        for start, end in plan.ranges:
            rows = self.conn.execute(
                "SELECT arrival FROM entries WHERE ix = ? AND key >= ? AND key < ? LIMIT ?",
                (plan.index.ix, start, end, cap - len(documents)),
            ).fetchall()
            documents += [arrival for (arrival,) in rows]
            if len(documents) >= cap:
                return cap
        plan.counted = documents  # all of them: the winner need not read them again
        return len(documents)

    def entries(self, collection: str, plan: _Plan, direction: int) -> Iterator[tuple[bytes, int]]:
        """(key, arrival) of a plan's ranges, in key order (or reversed)."""
        assert plan.index is not None
        order = "ASC" if direction >= 0 else "DESC"
        streams = [
            self.conn.execute(
                "SELECT key, arrival FROM entries WHERE ix = ? AND key >= ? AND key < ? "
                f"ORDER BY key {order}, arrival {order}",
                (plan.index.ix, start, end),
            )
            for start, end in plan.ranges
            if start < end
        ]
        if len(streams) == 1:
            return iter(streams[0])
        # Ranges of an $in differ in their equality prefix: merge on what follows it.
        equal = [descending for _, descending in plan.index.fields[: plan.equal_fields]]

        def after_prefix(row: tuple[bytes, int]) -> tuple[bytes, int]:
            return row[0][len(_leading_components(row[0], equal)) :], row[1]

        return heapq.merge(*streams, key=after_prefix, reverse=direction < 0)

    def _few_of_union(
        self, collection: str, spans: list[tuple[int, bytes, bytes]]
    ) -> list[_Stored] | None:
        """The documents an ``$or``'s ranges name, if there are at most ``_FEW``, read with
        their entries in one statement; None if there are more (damaged ones skipped)."""
        rows = self._with_entries(collection, spans, _FEW + 1)
        return None if len(rows) > _FEW else self._stored_once(collection, rows)

    def candidates(self, collection: str, plan: _Plan) -> list[int]:
        """The arrival numbers of the documents a plan's ranges name."""
        if plan.counted is not None:
            return list(dict.fromkeys(plan.counted))
        if plan.union:
            found: dict[int, None] = {}
            for branch in plan.union:
                found.update(dict.fromkeys(self.candidates(collection, branch)))
            return list(found)
        return list(dict.fromkeys(arrival for _, arrival in self.entries(collection, plan, 1)))

    # find
    def find(
        self,
        collection: str,
        query: Mapping[str, Any],
        sort: Sequence[tuple[str, int]] = (),
        skip: int = 0,
        limit: int = 0,
    ) -> list[_Stored]:
        """The stored documents matching ``query`` (already datetime-patched), sorted, sliced.
        A malformed filter raises as a server's would, even when no document is read."""
        _check_filter(query)
        ids = _id_values(query)
        plan = None if ids is not None else self.plan(collection, _terms(query), sort)
        exact = ids is not None and len(query) == 1  # {_id: string}: the key decides
        if plan is not None and plan.index is not None:
            exact = plan.decides(query)
        elif plan is not None and plan.id_kind:
            exact = _decided_by_id_span(query)
        if plan is not None and plan.id_kind and plan.walk:
            found = self._walk_by_id(collection, query, plan, skip, limit, exact)
        elif ids is None and plan is not None and plan.walk:
            found = self._walk(collection, query, plan, skip, limit, exact)
        else:
            if ids is not None:
                candidates: Iterable[_Stored] = self.fetch(
                    collection, [_encode_key(i) for i in ids]
                )
            elif plan is not None and plan.fetched is not None:
                candidates = plan.fetched
            elif plan is not None and plan.id_kind:
                candidates = self.by_id(collection, plan, 1)
            elif plan is not None and plan.counted is None and not plan.union:
                candidates = self.fetch_ranges(collection, plan)
            elif plan is not None:
                candidates = self.fetch_arrivals(collection, self.candidates(collection, plan))
            else:
                candidates = self.scan(collection)
            deciding = _left_to_decide(query, plan) if plan is not None and plan.union else query
            if exact or not deciding:
                found = list(candidates)
            else:
                found = [c for c in candidates if filtering.filter_applies(deciding, c.document)]
            if len(found) > 1:
                found = _sort_in_memory(found, sort)
            found = found[skip : skip + limit] if limit else found[skip:]
        if not found:
            filtering.filter_applies(query, {})  # checked on no document: check it here
        return found

    def _walk(
        self,
        collection: str,
        query: Mapping[str, Any],
        plan: _Plan,
        skip: int,
        limit: int,
        exact: bool,
    ) -> list[_Stored]:
        """Walk the index in the sort's order, stopping once ``skip + limit`` documents match.
        Entries equal on the sort's fields come out in insertion order, as mongomock's do.
        Documents are fetched a batch of whole groups at a time. ``exact``: every document
        the plan names matches, so the filter need not be applied."""
        wanted = skip + limit if limit else 0
        assert plan.index is not None
        if exact and wanted and plan.sort_fields >= len(plan.index.fields):
            read = self._ordered_in_one(collection, plan, wanted)
            if read is not None:
                return read[skip:]
        found: list[_Stored] = []
        pending: list[int] = []  # arrivals of whole groups, in order, not yet fetched
        group: list[int] = []
        group_key: bytes | None = None
        flags = [descending for _, descending in plan.index.fields]
        deciding_fields, equal_fields = flags[: plan.sort_fields], flags[: plan.equal_fields]
        whole = plan.sort_fields >= len(flags)  # every field decides: the key is the group

        def settle() -> None:
            for stored in self.fetch_arrivals(collection, pending):
                if exact or filtering.filter_applies(query, stored.document):
                    found.append(stored)
            pending.clear()

        for key, arrival in self.entries(collection, plan, plan.walk):
            # The sort's own fields decide; the equality prefix may differ (an $in).
            deciding = key if whole else _leading_components(key, deciding_fields)
            if equal_fields:
                deciding = deciding[len(_leading_components(key, equal_fields)) :]
            if deciding != group_key:
                pending.extend(sorted(group))
                group.clear()
                group_key = deciding
                if len(pending) >= (wanted - len(found) if wanted else _BATCH):
                    settle()
                    if wanted and len(found) >= wanted:
                        break
            group.append(arrival)
        else:
            pending.extend(sorted(group))
            settle()
        unique = list({stored.key: stored for stored in found}.values())  # one per document
        return unique[skip:wanted] if wanted else unique[skip:]

    def _walk_by_id(
        self,
        collection: str,
        query: Mapping[str, Any],
        plan: _Plan,
        skip: int,
        limit: int,
        exact: bool,
    ) -> list[_Stored]:
        """Walk the _id index's span in the sort's order, stopping once ``skip + limit``
        documents match: a page after the last ``_id`` reads that page, not the collection."""
        wanted = skip + limit if limit else 0
        found: list[_Stored] = []
        walked = self.by_id(collection, plan, plan.walk, min(wanted, _BATCH) if wanted else _BATCH)
        for stored in walked:
            if exact or filtering.filter_applies(query, stored.document):
                found.append(stored)
                if len(found) == wanted:
                    break
        walked.close()  # the statement ends now, not when the generator is collected
        return found[skip:]

    def _ordered_in_one(self, collection: str, plan: _Plan, wanted: int) -> list[_Stored] | None:
        """The first ``wanted`` documents of a walk whose whole key is the sort (ties in
        insertion order): each range's first ``wanted`` read with their entries in one
        statement (an ordered index holds no arrays, so each document once), and only the
        winners decoded. None if one was a tombstone an older version left: the general walk
        reads on past it.

        Raises:
            StorageError: an entry names no document, or a row is damaged.
        """
        assert plan.index is not None
        order = "ASC" if plan.walk > 0 else "DESC"
        read = [
            self.conn.execute(
                f"SELECT e.key, d.key, e.arrival, d.body, d.body_crc, {self.engine.joined_id_crc} "
                "FROM entries e "
                "LEFT JOIN documents d INDEXED BY documents_arrival "
                "ON d.collection = ? AND d.arrival = e.arrival "
                "WHERE e.ix = ? AND e.key >= ? AND e.key < ? "
                f"ORDER BY e.key {order}, e.arrival ASC LIMIT ?",
                (collection, plan.index.ix, start, end, wanted),
            ).fetchall()
            for start, end in plan.ranges
            if start < end
        ]
        rows: list[tuple[bytes, bytes | None, int, bytes | None, int | None, int | None]] = [
            row for found in read if found for row in found
        ]
        if sum(1 for found in read if found) > 1:  # an $in: prefixes differ, merge after them
            equal = [descending for _, descending in plan.index.fields[: plan.equal_fields]]
            rows.sort(key=lambda row: row[2])
            rows.sort(
                key=lambda row: row[0][len(_leading_components(row[0], equal)) :],
                reverse=plan.walk < 0,
            )
            del rows[wanted:]
        found = self._stored_once(collection, [row[1:] for row in rows])
        return found if len(found) == len(rows) else None


def _left_to_decide(query: Mapping[str, Any], union: _Plan) -> Mapping[str, Any]:
    """What of ``query`` its union plan's documents may still fail: all of it, or the terms
    beside the ``$or`` when each branch's index names only documents matching that branch."""
    branches = query.get("$or")
    if not isinstance(branches, list) or len(branches) != len(union.union):
        return query
    for branch, plan in zip(branches, union.union, strict=True):
        if plan.index is None or not isinstance(branch, Mapping) or not plan.decides(branch):
            return query
    return {path: condition for path, condition in query.items() if path != "$or"}


# What mongomock raises for an update a document cannot take ($inc on a string: TypeError;
# $push on a string: AttributeError), and its own WriteError.
_UPDATE_FAILURES: Final = (TypeError, ValueError, AttributeError, KeyError, IndexError, WriteError)


def _update_failed(exc: Exception, document: Mapping[str, Any] | None) -> WriteError:
    """A server's write error for an update that ``document`` (None: the one an upsert
    makes) cannot take: mongomock's own WriteError, or its Python error, said plainly."""
    if isinstance(exc, WriteError):
        return exc
    which = "the upserted document" if document is None else f"_id {document.get('_id')!r}"
    message = f"the update cannot be applied to the document with {which}: {exc}"
    code = 14 if isinstance(exc, TypeError | AttributeError) else 2  # TypeMismatch, BadValue
    return WriteError(message, code, {"index": 0, "code": code, "errmsg": message})


def _equal_with_nan(first: Any, second: Any) -> bool:
    """Python's ``==`` on documents, except that NaN equals NaN (as a server's no-op check
    finds the same bytes)."""
    if isinstance(first, float) and isinstance(second, float):
        return first == second or (math.isnan(first) and math.isnan(second))
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        return first.keys() == second.keys() and all(
            _equal_with_nan(value, second[name]) for name, value in first.items()
        )
    if isinstance(first, list) and isinstance(second, list):
        return len(first) == len(second) and all(
            _equal_with_nan(a, b) for a, b in zip(first, second, strict=True)
        )
    return bool(first == second)


def _top_level_set(update: Any) -> Mapping[str, Any] | None:
    """The fields of an update that is only a ``$set`` of plain top-level names (not
    ``_id``), or None."""
    if not isinstance(update, Mapping) or len(update) != 1:
        return None
    fields = update.get("$set")
    if not isinstance(fields, Mapping) or not fields:
        return None
    for name in fields:
        if not (isinstance(name, str) and name.isidentifier() and name != "_id"):
            return None
    return fields


def _unbuild(conn: sqlite3.Connection, collection: str, name: str) -> None:
    """Delete an index's entries and the row that marks it built (its catalog row stays)."""
    conn.execute(
        "DELETE FROM entries WHERE ix IN "
        "(SELECT ix FROM built_indexes WHERE collection = ? AND name = ?)",
        (collection, name),
    )
    conn.execute("DELETE FROM built_indexes WHERE collection = ? AND name = ?", (collection, name))


def _union_spans(plan: _Plan) -> list[tuple[int, bytes, bytes]] | None:
    """Every (index, start, end) of a union of plain index plans, or None for another plan
    (or too many ranges for one statement)."""
    if not plan.union or any(b.union or b.index is None for b in plan.union):
        return None
    spans = [(b.index.ix, s, e) for b in plan.union if b.index for s, e in b.ranges if s < e]
    return spans if 0 < len(spans) <= 64 else None


def _leading_components(key: bytes, descending: Sequence[bool]) -> bytes:
    """The bytes of a key's first fields, one per flag: an ascending field ends at 0x00 0x01
    (0x00 0xFF is an escaped 0x00), a descending one at the inverted 0xFF 0xFE."""
    position = 0
    for inverted in descending:
        mark, end = (b"\xff", 0xFE) if inverted else (b"\x00", 0x01)
        while True:
            found = key.find(mark, position)
            if found < 0 or found + 1 >= len(key):
                return key
            position = found + 2
            if key[found + 1] == end:
                break
    return key[:position]


def _decided_by_key(value: Any) -> bool:
    """Whether a document whose index key equals this value's surely matches it: strings,
    dates, ObjectIds and booleans, and numbers below 2**53 (no other stored number's double
    equals theirs; a larger integer may round onto another's)."""
    if isinstance(value, str | datetime | ObjectId | bool):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value) and abs(value) < 2**53
    return False


def _exact_paths(query: Mapping[str, Any]) -> frozenset[str] | None:
    """The paths of a filter made only of equalities that index keys decide, or None. A plan
    whose equality prefix is exactly these paths names only matching documents."""
    paths = []
    for path, condition in query.items():
        if path.startswith("$"):
            return None
        value = condition
        if isinstance(condition, Mapping):
            if list(condition) != ["$eq"]:
                return None
            value = condition["$eq"]
        if not _decided_by_key(value):
            return None
        paths.append(path)
    return frozenset(paths)


def _id_values(query: Mapping[str, Any]) -> list[Any] | None:
    """The ``_id`` values a top-level term pins the answer to, or None. Only strings and
    ObjectIds pin (a number may be stored as 1 or 1.0, which have different keys). ``_id`` is
    never null or missing, so ``{_id: None}`` pins it to nothing."""
    if "_id" not in query:
        return None
    condition = query["_id"]
    if condition is None:
        return []
    if isinstance(condition, Mapping):
        if set(condition) == {"$eq"}:
            condition = condition["$eq"]
        elif set(condition) == {"$in"} and isinstance(condition["$in"], list | tuple):
            values = list(condition["$in"])
            return values if all(isinstance(v, str | ObjectId) for v in values) else None
        else:
            return None
    return [condition] if isinstance(condition, str | ObjectId) else None


# -- the engine: one SQLite connection, a lock, the index catalog ------------------------------


_UNPATCHED: Final = frozenset({str, int, float, bool, type(None), ObjectId})


def _patched(query: Any) -> Any:
    """The query as stored documents compare with it: datetimes in UTC, to the millisecond
    (what BSON keeps), as a server reads them."""
    if type(query) in _UNPATCHED:  # most values: nothing to do, nothing to look into
        return query
    if isinstance(query, Mapping):
        return {key: _patched(value) for key, value in query.items()}
    if isinstance(query, list | tuple):
        return [_patched(value) for value in query]
    if isinstance(query, datetime):
        aware = query.replace(tzinfo=UTC) if query.tzinfo is None else query.astimezone(UTC)
        return aware.replace(microsecond=aware.microsecond // 1000 * 1000)
    return query


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite (or Python reading its text) found the file's bytes damaged."""
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "decode to UTF-8" in str(exc)


class _SQLiteErrors:
    """The engine's one error boundary: SQLite's errors become ``StorageError`` naming the
    file. (A class, not a generator: every operation enters it.)"""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, sqlite3.Error):
            if _is_damage(exc):
                raise _damage_error(self.path, "the file's structure", str(exc)) from exc
            raise StorageError(f"embedded database {self.path}: {exc}") from exc


_HASH_MASK: Final = (1 << 64) - 1  # verify sums entry hashes modulo 2**64


def _mark_built(
    conn: sqlite3.Connection, ix: int, collection: str, name: str, ordered: bool
) -> None:
    """Set whether a built index serves sorts, with its row's checksum."""
    conn.execute(
        "UPDATE built_indexes SET ordered = ?, crc = ? WHERE ix = ?",
        (int(ordered), _catalog_crc(ix, collection, name, int(ordered)), ix),
    )


@dataclass(frozen=True)
class IndexRebuilt:
    """One index as ``rebuild_indexes`` left it: ``name`` is "collection.index",
    ``entries`` how many it now holds, ``removed`` and ``added`` what changed, and
    ``order_changed`` whether its use for sorts was put right."""

    name: str
    entries: int
    removed: int = 0
    added: int = 0
    order_changed: bool = False


@dataclass(frozen=True)
class IndexRebuild:
    """What ``rebuild_indexes`` did: each index, the catalog rows it removed or made,
    the entries of indexes that do not exist that it removed, and the damage it cannot
    rebuild from (damaged documents: restore them from a backup)."""

    indexes: list[IndexRebuilt]
    catalog_fixed: list[str]
    stray_entries_removed: int
    not_rebuilt: list[str]

    @property
    def changes(self) -> int:
        """How many entries and catalog rows it wrote or removed (0: all was in order)."""
        return (
            sum(i.removed + i.added + i.order_changed for i in self.indexes)
            + len(self.catalog_fixed)
            + self.stray_entries_removed
        )

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "changes": self.changes}


class EmbeddedEngine:
    """One SQLite file, read and written one operation (one transaction) at a time."""

    def __init__(self, path: Path, database: str, *, read_only: bool = False) -> None:
        self.path = path
        self.name = database
        self.read_only = read_only
        self._errors = _SQLiteErrors(path)
        self._key_reader: _Reader | None = None
        self.stats = EngineStats()
        self.damaged: dict[tuple[str, str], str] = {}
        self._lock = threading.RLock()
        self._unit_depth = 0  # > 0 inside unit_of_work(): writes share one transaction
        self._unit_seq: int | None = None  # the write stamp of the open transaction
        self._catalog: dict[str, list[tuple[_IndexSpec, bool]]] = {}
        self._catalog_rows: list[dict[str, Any]] = []
        self._by_lead: dict[str, dict[str, list[tuple[_IndexSpec, bool]]]] = {}
        self._catalog_version: int | None = None
        # mongomock's update and projection code runs on a scratch collection holding only
        # the documents one operation touches.
        self._scratch = mongomock.MongoClient(tz_aware=True)["scratch"]["documents"]
        self.arrival = "arrival"  # the column giving insertion order (see below)
        self.by_arrival = "INDEXED BY documents_arrival"
        self.id_index = False  # whether the file has the _id index (documents_id)
        self.identity_checked = False  # whether the file has identity checksums (format 3)
        self.id_crc = self.joined_id_crc = "NULL"  # their column, or NULL where there is none
        try:
            _check_no_lost_commits(path)
            if read_only:
                self._conn = self._connect_read_only(path)
            else:
                _create_if_missing(path)
                self._conn = self._connect(f"file:{quote(str(path))}?mode=rw")
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._upgrade()
            # A first-format file opened read-only cannot be upgraded: its rows are read in
            # the order of their last write, and every query scans. A second-format one is
            # read with the checksums it has (of bodies alone).
            found = self._known_format()
            self._set_identity_checked(found >= _IDENTITY_FORMAT)
            self.arrival = "arrival" if found >= _ARRIVAL_FORMAT else "seq"
            self.by_arrival = "INDEXED BY documents_arrival" if self.arrival == "arrival" else ""
            # Made on every write open; a file opened read-only before that is scanned instead.
            self.id_index = (
                self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'documents_id'"
                ).fetchone()
                is not None
            )
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the embedded database at {path}: {exc}") from exc

    @staticmethod
    def _connect(uri: str) -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
        )

    def _connect_read_only(self, path: Path) -> sqlite3.Connection:
        """The file opened read-only; a missing one reads as an empty store and is not made.
        A file of the first format (no indexes on disk yet) is read by scanning.

        Where nothing can write (a read-only mount, or a directory this process cannot write,
        so no -wal/-shm can be made beside the file), it is opened ``immutable``: SQLite then
        takes no locks and creates no file. A non-empty -wal there holds commits that an
        immutable open would not see: it is read normally if SQLite can, else refused.

        Raises:
            StorageError: such a -wal cannot be read.
        """
        if not path.exists():
            connection = self._connect("file::memory:")
            self._conn = connection
            self._upgrade()
            return connection
        _check_header(path)
        name = quote(str(path))
        if not _nothing_can_write(path):
            return self._connect_query_only(name)
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            connection = self._connect(f"file:{name}?mode=ro")
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:
                connection.close()
                raise StorageError(
                    f"the embedded database {path} cannot be read where it is: its {wal.name} "
                    f"holds commits not yet in the file, and {path.parent} cannot be written "
                    "(read-only media?); copy the directory to writable storage and open it "
                    "there"
                ) from exc
            return connection
        return self._connect(f"file:{name}?mode=ro&immutable=1")

    def _connect_query_only(self, name: str) -> sqlite3.Connection:
        """A read-only open where files can be made: opened for writing with every write
        refused (``query_only``). While open it shares the -wal and -shm with writers, as any
        reader must to see their commits; unlike a ``mode=ro`` reader, which cannot remove
        them, the last connection to close removes both, so read-only use leaves the directory
        as it found it. SQLite opens a file this process may not write read-only instead."""
        connection = self._connect(f"file:{name}?mode=rw")
        connection.execute("PRAGMA query_only=1")
        return connection

    def _format(self) -> int:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0]) if row else 0

    def _upgrade(self) -> None:
        """Create the schema, or bring an older file up to date once, in one transaction: a
        first-format file gets arrival numbers and its indexes on disk (the tombstones of
        deleted documents go), and every older file gets checksums over each row's identity
        (format 3). A file of the current format costs one read of its format number here.

        Raises:
            StorageError: the file's format is newer than this version knows (or damaged).
        """
        self._conn.executescript(_SCHEMA)
        if self._known_format() >= _FORMAT:
            self._set_identity_checked(True)
            self._trim_partial_indexes()
            self._rekey_indexes()
            return
        with self._upgrading():
            found = self._known_format()
            if found < _FORMAT:  # another process may have upgraded meanwhile
                self._checksum_catalog()  # first: the builds below write checksummed rows
                if found < _ARRIVAL_FORMAT:
                    self._number_arrivals()
                self._checksum_identities()
                self._set_identity_checked(True)
                if found < _ARRIVAL_FORMAT:
                    self._conn.execute("DELETE FROM entries")
                    self._conn.execute("DELETE FROM built_indexes")
                    for row in self._catalog_documents():
                        index = _IndexSpec.from_catalog(row)
                        if index is not None:
                            _Writer(self, index.collection, 0).build(index)
                    self._conn.execute(_PARTIAL_ENTRIES_MARK)  # built just now, as they trim
                self._conn.execute("UPDATE meta SET value = ? WHERE name = 'format'", (_FORMAT,))
                self._catalog_changed()
        self._set_identity_checked(True)
        self._trim_partial_indexes()  # a second-format file may not have had its turn yet
        self._rekey_indexes()

    def _set_identity_checked(self, checked: bool) -> None:
        self.identity_checked = checked
        self.id_crc, self.joined_id_crc = ("id_crc", "d.id_crc") if checked else ("NULL", "NULL")

    def _known_format(self) -> int:
        """The file's format number.

        Raises:
            StorageError: one newer than this version knows (a newer version wrote the file,
                or the number itself is damaged).
        """
        found = self._format()
        if found > _FORMAT:
            raise StorageError(
                f"the embedded database {self.path} has format {found}, newer than this "
                f"version of cosmos-mongo knows ({_FORMAT}); it was left untouched. Upgrade "
                "cosmos-mongo to open it (or, if no newer version wrote it, the file is "
                "damaged: restore it from a backup).",
                reason="damaged",
            )
        return found

    def _number_arrivals(self) -> None:
        """First format to second: the arrival and checksum columns, arrival numbers in the
        order of the rows' last writes, and no tombstones."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(documents)")}
        for column in ("body_crc", "arrival"):
            if column not in columns:
                self._conn.execute(f"ALTER TABLE documents ADD COLUMN {column} INTEGER")
        # Documents by arrival, for index entries; the change log by seq is not needed.
        self._conn.execute(
            "CREATE INDEX IF NOT EXISTS documents_arrival ON documents (collection, arrival)"
        )
        self._conn.execute("DROP INDEX IF EXISTS documents_seq")
        self._conn.execute("DELETE FROM documents WHERE body IS NULL")
        keys = self._conn.execute(
            "SELECT collection, key FROM documents ORDER BY seq, key"
        ).fetchall()
        self._conn.executemany(
            "UPDATE documents SET arrival = ? WHERE collection = ? AND key = ?",
            [(number, c, k) for number, (c, k) in enumerate(keys, 1)],
        )
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'arrival'", (len(keys),))

    def _checksum_identities(self) -> None:
        """Every row's identity checksum (format 3), a batch of rows at a time; the body's
        stays as it is, so damage found before stays damage."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(documents)")}
        if "id_crc" not in columns:
            self._conn.execute("ALTER TABLE documents ADD COLUMN id_crc INTEGER")
        after: tuple[str, bytes] = ("", b"")
        while True:
            rows = self._conn.execute(
                "SELECT collection, key, arrival FROM documents WHERE (collection, key) > (?, ?) "
                "ORDER BY collection, key LIMIT ?",
                (*after, _BATCH),
            ).fetchall()
            if not rows:
                return
            self._conn.executemany(
                "UPDATE documents SET id_crc = ? WHERE collection = ? AND key = ?",
                [(_identity_crc(c, k, a or 0), c, k) for c, k, a in rows],
            )
            after = (rows[-1][0], rows[-1][1])

    def _checksum_catalog(self) -> None:
        """Every ``built_indexes`` row's checksum (format 3)."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(built_indexes)")}
        if "crc" not in columns:
            self._conn.execute("ALTER TABLE built_indexes ADD COLUMN crc INTEGER")
        rows = self._conn.execute(
            "SELECT ix, collection, name, ordered FROM built_indexes"
        ).fetchall()
        self._conn.executemany(
            "UPDATE built_indexes SET crc = ? WHERE ix = ?",
            [(_catalog_crc(*row), row[0]) for row in rows],
        )

    def _trim_partial_indexes(self) -> None:
        """Once per file: rebuild each partial index to hold only its documents (versions
        before 0.4's last change kept an entry for every document in them)."""
        if self._partial_entries_marked():
            return
        with self._upgrading():
            if not self._partial_entries_marked():  # another process may have done it
                for row in self._catalog_documents():
                    index = _IndexSpec.from_catalog(row)
                    if index is None or index.partial is None:
                        continue
                    _unbuild(self._conn, index.collection, index.name)
                    _Writer(self, index.collection, 0).build(index)
                self._conn.execute(_PARTIAL_ENTRIES_MARK)
                self._catalog_changed()

    def _rekey_indexes(self) -> None:
        """Once per file: rebuild the indexes whose keys this version derives differently
        from earlier ones (``_keyed_differently``). The others keep their entries, so a
        large store's first write open rebuilds nothing it need not. Duplicates a unique
        index holds are kept: it held them before."""
        if self._conn.execute("SELECT 1 FROM meta WHERE name = 'index_keys'").fetchone():
            return
        with self._upgrading():
            if not self._conn.execute("SELECT 1 FROM meta WHERE name = 'index_keys'").fetchone():
                ordered = {
                    (collection, name): bool(flag)
                    for collection, name, flag in self._conn.execute(
                        "SELECT collection, name, ordered FROM built_indexes"
                    )
                }
                for row in self._catalog_documents():
                    index = _IndexSpec.from_catalog(row)
                    built = None if index is None else ordered.get((index.collection, index.name))
                    if index is not None and built is not None and _keyed_differently(index, built):
                        _unbuild(self._conn, index.collection, index.name)
                        _Writer(self, index.collection, 0).build(index, refuse_duplicates=False)
                self._conn.execute("INSERT INTO meta (name, value) VALUES ('index_keys', 2)")
                self._catalog_changed()

    @contextlib.contextmanager
    def _upgrading(self) -> Iterator[None]:
        """One exclusive transaction for a change to the file's format: all of it or none."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise

    def _partial_entries_marked(self) -> bool:
        row = self._conn.execute("SELECT 1 FROM meta WHERE name = 'partial_entries'").fetchone()
        return row is not None

    # -- the catalog of indexes ---------------------------------------------------------------

    def _catalog_documents(self) -> list[dict[str, Any]]:
        """The index catalog's documents.

        Raises:
            StorageError: one is damaged (reason ``"damaged"``): without it no index of its
                collection could be kept in step, so nothing is served.
        """
        rows = self._conn.execute(
            f"SELECT key, {self.arrival}, body, body_crc, {self.id_crc} FROM documents "
            "WHERE collection = ? AND body IS NOT NULL",
            (_INDEX_CATALOG,),
        ).fetchall()
        found = []
        for key, arrival, body, crc, id_crc in rows:
            try:
                found.append(_checked_document(_INDEX_CATALOG, key, arrival, body, crc, id_crc))
            except _Damaged as exc:
                self.damaged[(_INDEX_CATALOG, exc.label)] = str(exc)
                raise _damage_error(
                    self.path, f"the index catalog's {exc.label}", str(exc)
                ) from None
        return found

    def _built_indexes(self) -> dict[tuple[str, str], tuple[int, bool]]:
        """(ix, ordered) of every built index, by (collection, name).

        Raises:
            StorageError: a row fails its checksum (reason ``"damaged"``).
        """
        if self._format() < _ARRIVAL_FORMAT:
            return {}
        if not self.identity_checked:  # a second-format file opened read-only: no checksums
            rows = self._conn.execute("SELECT ix, collection, name, ordered, 0 FROM built_indexes")
        else:
            rows = self._conn.execute(
                "SELECT ix, collection, name, ordered, crc FROM built_indexes"
            )
        built = {}
        for ix, collection, name, ordered, crc in rows:
            if self.identity_checked and not _catalog_row_intact(
                ix, collection, name, ordered, crc
            ):
                raise _damage_error(
                    self.path,
                    f"the row of index number {ix} ({collection}.{name})",
                    "checksum mismatch: the stored bytes changed on disk",
                )
            built[(collection, name)] = (ix, bool(ordered))
        return built

    def _refresh_catalog(self) -> None:
        """Reload the index catalog if any process changed it since this one last looked.
        The first read of an operation's transaction: the catalog and the entries it then
        reads come from the same snapshot."""
        (changes,) = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'catalog'"
        ).fetchone() or (0,)
        if changes == self._catalog_version:
            return
        self._catalog_rows = sorted(self._catalog_documents(), key=lambda row: str(row["_id"]))
        built = self._built_indexes()
        catalog: dict[str, list[tuple[_IndexSpec, bool]]] = {}
        for row in self._catalog_rows:
            index = _IndexSpec.from_catalog(row)
            if index is not None and (index.collection, index.name) in built:
                ix, ordered = built[(index.collection, index.name)]
                catalog.setdefault(index.collection, []).append(
                    (dataclasses.replace(index, ix=ix), ordered)
                )
        self._catalog = catalog
        self._by_lead = {name: _grouped_by_lead(indexes) for name, indexes in catalog.items()}
        self._catalog_version = changes

    def _catalog_changed(self) -> None:
        self._conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'catalog'")
        self._catalog_version = None  # reread after this write

    def catalog(self, collection: str) -> list[tuple[_IndexSpec, bool]]:
        """The indexes whose entries are complete, each with whether it serves sorts."""
        return self._catalog.get(collection, [])

    def catalog_by_lead(self, collection: str) -> dict[str, list[tuple[_IndexSpec, bool]]]:
        """The same, by the path of each index's first field."""
        return self._by_lead.get(collection, {})

    def index_rows(self, collection: str) -> list[dict[str, Any]]:
        return [row for row in self._catalog_rows if row["collection"] == collection]

    # -- transactions -------------------------------------------------------------------------

    def read(self, operation: Callable[[_Reader], T], *, one_statement: bool = False) -> T:
        """Run ``operation`` in one read transaction: one consistent view of the file.
        ``one_statement``: the operation makes a single SELECT that needs no index (a look-up
        by ``_id``), which SQLite already answers from one snapshot."""
        with self._lock, self._sqlite_errors():
            if one_statement:
                return operation(_Reader(self))
            if self._conn.in_transaction:  # a unit of work's: it already sees one snapshot
                self._refresh_catalog()
                return operation(_Reader(self))
            self._conn.execute("BEGIN")
            try:
                self._refresh_catalog()
                return operation(_Reader(self))
            finally:
                self._conn.execute("COMMIT")

    def by_key(self, collection: str, key: bytes) -> Any:
        """The document with this key, or None: :meth:`read` of a look-up by ``_id``, without
        its generic steps (one SELECT, which SQLite answers from one snapshot, needs neither a
        transaction nor the index catalog). The commonest read of all: ``get_prompt``.

        Raises:
            StorageError: as :meth:`_Reader.fetch_one`, or SQLite failed.
        """
        with self._lock:
            reader = self._key_reader
            if reader is None:  # made once the connection is open, then kept: it holds no state
                reader = self._key_reader = _Reader(self)
            try:
                found = reader.fetch_one(collection, key)
            except sqlite3.Error:
                with self._errors:  # the one error boundary, entered only when there is an error
                    raise
        return found[0] if found else None

    def write(self, collection: str, operation: Callable[[_Writer], T]) -> T:
        """Run ``operation`` in one durable write transaction; nothing of it stays if it fails.
        An error the operation defers (a bulk insert's duplicates) is raised after commit."""
        if self.read_only:
            raise ReadOnlyError(f"the embedded database {self.path} is open read-only")
        with self._lock, self._sqlite_errors():
            grouped = self._unit_depth > 0
            joined = grouped and self._conn.in_transaction
            if not joined:
                self._conn.execute("BEGIN IMMEDIATE")
            else:  # undone alone if it fails; committed with the unit
                self._conn.execute("SAVEPOINT write")
            try:
                # A unit holds the write lock from its first write: no other process can
                # change the catalog meanwhile, and one stamp serves all its writes.
                if not joined or self._catalog_version is None:
                    self._refresh_catalog()
                if not joined or self._unit_seq is None:
                    (self._unit_seq,) = self._conn.execute(
                        "UPDATE meta SET value = value + 1 WHERE name = 'seq' RETURNING value"
                    ).fetchone()
                writer = _Writer(self, collection, self._unit_seq)
                result = operation(writer)
                if joined:
                    self._conn.execute("RELEASE write")
                elif not grouped:
                    self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if joined:
                        self._conn.execute("ROLLBACK TO write")
                        self._conn.execute("RELEASE write")
                    else:  # the transaction began with this write: nothing else is in it
                        self._conn.execute("ROLLBACK")
                self._catalog_version = self._unit_seq = None
                raise
            if not grouped:
                self._unit_seq = None
                self.stats.write_transactions += 1
        if writer.deferred is not None:
            raise writer.deferred
        return result

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """The writes made inside share one durable transaction, committed on the way out, so
        a workflow's consecutive writes cost one ``fsync`` instead of one each. Each write still
        stands or fails alone, and the unit commits also when an exception leaves it, as if
        each write had committed: only a crash before the end loses the unit, whole, and other
        processes see all of it or none. Other threads of this process wait for it to end.

        Raises:
            StorageError: the commit failed (nothing of the unit was written).
        """
        with self._lock:
            self._unit_depth += 1
            try:
                yield
            finally:
                self._unit_depth -= 1
                if self._unit_depth == 0 and self._conn.in_transaction:
                    self._end_unit()

    def _end_unit(self) -> None:
        self._unit_seq = None
        with self._sqlite_errors():
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                self._catalog_version = None
                raise
            self.stats.write_transactions += 1

    def _sqlite_errors(self) -> _SQLiteErrors:
        return self._errors

    def change_stamp(self) -> tuple[int, int]:
        """A value that changes whenever a write commits: SQLite's ``data_version`` (moved by
        other connections' commits, other processes' included) and this connection's own
        commit count (which ``data_version`` does not see). Reads no page: cheap to poll.

        Raises:
            StorageError: SQLite failed.
        """
        with self._lock, self._sqlite_errors():
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
            return int(version), self.stats.write_transactions

    # -- maintenance ---------------------------------------------------------------------------

    def damaged_documents(self, *, full: bool = True) -> list[str]:
        """Everything in the file that fails a check, one line each (a row as "collection
        id: why"). Reads the whole file in one snapshot (``full=False``: all but the last
        check, which decodes every document and costs the most):

        * SQLite's own check of the file's structure and of its indexes against the rows
          (``PRAGMA integrity_check``): a changed key, collection or arrival byte leaves a
          row and its index entries disagreeing;
        * every row's checksums (of its identity, format 3, and of its body);
        * arrival numbers: one document each, none past the counter new ones come from;
        * the index catalog: its documents and the checksummed rows that say which indexes
          are built, each with the other;
        * every index's entries, re-derived from its documents (compared as an
          order-independent sum, so memory stays flat).

        Raises:
            StorageError: SQLite failed.
        """
        with self._lock, self._sqlite_errors():
            if self._conn.in_transaction:  # a unit of work's: it already sees one snapshot
                return self._damage(full)
            self._conn.execute("BEGIN")
            try:
                return self._damage(full)
            finally:
                self._conn.execute("COMMIT")

    def _damage(self, full: bool) -> list[str]:
        found: list[str] = []
        try:
            problems = [row[0] for row in self._conn.execute("PRAGMA integrity_check(50)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            found += [f"file: {problem}" for problem in problems]
        try:
            rows, damaged = self._damaged_rows()
        except sqlite3.DatabaseError as exc:
            return [*found, f"file: the rows cannot be read ({exc})"]
        self.damaged = rows
        found += [f"{c} {label}: {why}" for (c, label), why in sorted(rows.items())]
        if full and self._format() >= _ARRIVAL_FORMAT:
            try:
                found += self._damaged_indexes(damaged)
            except sqlite3.DatabaseError as exc:
                found.append(f"file: the indexes cannot be read ({exc})")
        return found

    def _damaged_rows(self) -> tuple[dict[tuple[str, str], str], set[tuple[str, int]]]:
        """Rows failing their checksum (or decoding) by (collection, label), and the
        (collection, arrival) of those; a whole-table pass, not through any index."""
        found: dict[tuple[str, str], str] = {}
        damaged: set[tuple[str, int]] = set()
        seen: set[tuple[str, int]] = set()
        greatest = 0
        rows = self._conn.execute(
            f"SELECT collection, key, {self.arrival}, body, body_crc, {self.id_crc} "
            "FROM documents NOT INDEXED WHERE body IS NOT NULL"
        )
        for collection, key, arrival, body, crc, id_crc in rows:
            if (
                crc is None
                or zlib.crc32(body) != crc
                or (id_crc is not None and _identity_crc(collection, key, arrival or 0) != id_crc)
            ):
                try:  # says why (decoded only where no checksum can vouch for the body)
                    _checked_document(collection, key, arrival, body, crc, id_crc)
                except _Damaged as exc:
                    found[(collection, exc.label)] = str(exc)
                    damaged.add((collection, arrival or 0))
                    continue
            if self.arrival == "arrival":
                if (collection, arrival) in seen or not isinstance(arrival, int):
                    found[(collection, _key_label(key))] = (
                        f"its arrival number {arrival} is not its own (another document of "
                        "the collection has it, or it is missing)"
                    )
                    damaged.add((collection, arrival or 0))
                seen.add((collection, arrival))
                greatest = max(greatest, arrival if isinstance(arrival, int) else 0)
        if self.arrival == "arrival":
            (counter,) = self._conn.execute(
                "SELECT value FROM meta WHERE name = 'arrival'"
            ).fetchone() or (0,)
            if counter < greatest:
                found[("meta", "arrival")] = (
                    f"the counter of arrival numbers ({counter}) is behind the greatest one "
                    f"in use ({greatest}): new documents would reuse numbers"
                )
        return found, damaged

    def _damaged_indexes(self, damaged: set[tuple[str, int]]) -> list[str]:
        """The index catalog's rows against each other, and every index's entries against
        what its documents give (damaged documents' entries cannot be re-derived: left out)."""
        found: list[str] = []
        specs = {(i.collection, i.name): i for i in self._intact_catalog(damaged)}
        built: dict[int, tuple[str, str, bool]] = {}
        columns = "ix, collection, name, ordered, " + ("crc" if self.identity_checked else "0")
        for ix, collection, name, ordered, crc in self._conn.execute(
            f"SELECT {columns} FROM built_indexes"
        ).fetchall():
            label = f"index {collection}.{name} (number {ix})"
            if self.identity_checked and not _catalog_row_intact(
                ix, collection, name, ordered, crc
            ):
                found.append(f"{label}: its catalog row fails its checksum")
            elif (collection, name) not in specs:
                found.append(f"{label}: built, but not in the index catalog")
            else:
                built[ix] = (collection, name, bool(ordered))
        held = {(c, n) for c, n, _ in built.values()}
        for collection, name in sorted(set(specs) - held):
            if not any(line.startswith(f"index {collection}.{name} ") for line in found):
                found.append(f"index {collection}.{name}: in the catalog, but not built")
        for ix, count in self._conn.execute(
            "SELECT ix, count(*) FROM entries GROUP BY ix"
        ).fetchall():
            if ix not in built and not any(f"(number {ix})" in line for line in found):
                found.append(f"index number {ix}: {count} entries of an index that is not built")
        by_collection: dict[str, list[tuple[int, _IndexSpec, bool]]] = {}
        for ix, (collection, name, ordered) in sorted(built.items()):
            by_collection.setdefault(collection, []).append(
                (ix, specs[(collection, name)], ordered)
            )
        for collection, indexes in sorted(by_collection.items()):
            found += self._entries_checked(collection, indexes, damaged)
        return found

    def _entries_checked(
        self,
        collection: str,
        indexes: list[tuple[int, _IndexSpec, bool]],
        damaged: set[tuple[str, int]],
    ) -> list[str]:
        """The indexes of one collection whose stored entries differ from the documents'
        (as a count and an order-independent sum of hashes, each side), or that serve sorts
        although a document's keys have no total order."""
        expected = {ix: [0, 0] for ix, _, _ in indexes}
        keeps_order = {ix: True for ix, _, _ in indexes}
        # NOT INDEXED: the table itself, as an index of it may be what is damaged.
        rows = self._conn.execute(
            "SELECT arrival, body FROM documents NOT INDEXED WHERE collection = ? "
            "AND body IS NOT NULL",
            (collection,),
        )
        while batch := rows.fetchmany(_BATCH):
            for arrival, body in batch:
                if (collection, arrival) in damaged:
                    continue
                document = _intact(body)
                fields = _FieldKeys(document)
                for ix, index, _ in indexes:
                    if not index.holds(document):
                        continue
                    keys, ordered = index.keys_of(document, fields)
                    keeps_order[ix] = keeps_order[ix] and ordered
                    tally = expected[ix]
                    for entry in keys:
                        tally[0] += 1
                        tally[1] = (tally[1] + hash((entry, arrival))) & _HASH_MASK
        found = []
        left_out = {arrival for c, arrival in damaged if c == collection}
        for ix, index, ordered in indexes:
            count = total = 0
            for entry, arrival in self._conn.execute(
                "SELECT key, arrival FROM entries WHERE ix = ?", (ix,)
            ):
                if arrival in left_out:
                    continue
                count += 1
                total = (total + hash((entry, arrival))) & _HASH_MASK
            label = f"index {collection}.{index.name}"
            if [count, total] != expected[ix]:
                found.append(
                    f"{label}: its entries differ from what its documents give ({count} "
                    f"stored, {expected[ix][0]} expected)"
                )
            if ordered and not keeps_order[ix]:
                found.append(f"{label}: marked as serving sorts, but it holds arrays or objects")
        return found

    def rebuild_indexes(self) -> IndexRebuild:
        """Re-derive every index entry from the documents, in one durable transaction, and
        put right the rows that say which indexes are built. Only what differs is written,
        so a second run changes nothing. A damaged document's entries are kept as they are
        (nothing can re-derive them), and a damaged catalog document's index is left alone:
        both are reported in ``not_rebuilt`` (they come back only from a backup).

        Raises:
            ReadOnlyError: the store is open read-only.
            StorageError: SQLite failed (nothing was changed).
        """
        if self.read_only:
            raise ReadOnlyError(f"the embedded database {self.path} is open read-only")
        with self._lock, self._sqlite_errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                report = self._rebuilt()
                if report.changes:
                    self._catalog_changed()
                    self._conn.execute("COMMIT")
                else:  # all in order: not a byte written
                    self._conn.execute("ROLLBACK")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                self._catalog_version = None
                raise
            self.stats.write_transactions += 1
            return report

    def _rebuilt(self) -> IndexRebuild:
        """The rebuild, inside its transaction. The entries are compared with what the
        documents give; if anything differs, the table is emptied whole and written again
        (a delete of one entry could miss it in a b-tree whose order a damaged byte broke)."""
        rows, damaged = self._damaged_rows()
        not_rebuilt = [f"{c} {label}: {why}" for (c, label), why in sorted(rows.items())]
        catalog_fixed = self._sqlite_indexes_rebuilt(documents_intact=not rows)
        specs = self._intact_catalog(damaged)
        kept = {(index.collection, index.name) for index in specs}
        # A damaged catalog document hides which index it defined: its rows stay.
        catalog_whole = not any(c == _INDEX_CATALOG for c, _ in damaged)
        by_name: dict[tuple[str, str], tuple[int, int]] = {}
        for ix, collection, name, ordered, crc in self._conn.execute(
            "SELECT ix, collection, name, ordered, crc FROM built_indexes"
        ).fetchall():
            intact = _catalog_row_intact(ix, collection, name, ordered, crc)
            if intact and (collection, name) in kept:
                by_name[(collection, name)] = (ix, ordered)
            elif intact and not catalog_whole:
                by_name[(collection, name)] = (ix, ordered)  # perhaps the damaged one's
            else:
                self._conn.execute("DELETE FROM built_indexes WHERE ix = ?", (ix,))
                catalog_fixed.append(f"{collection}.{name} (number {ix}): row removed")
        present: dict[int, set[tuple[bytes, int]]] = {}
        for ix, entry, arrival in self._conn.execute(
            "SELECT ix, key, arrival FROM entries NOT INDEXED"
        ):
            present.setdefault(ix, set()).add((entry, arrival))
        wanted: dict[int, set[tuple[bytes, int]]] = {}
        rebuilt: list[IndexRebuilt] = []
        for index in sorted(specs, key=lambda spec: (spec.collection, spec.name)):
            held = by_name.get((index.collection, index.name))
            if held is None:
                (ix,) = self._conn.execute(
                    "INSERT INTO built_indexes (collection, name, ordered) VALUES (?, ?, 1) "
                    "RETURNING ix",
                    (index.collection, index.name),
                ).fetchone()
                stored_order = -1  # always written below
                catalog_fixed.append(f"{index.collection}.{index.name}: row made (number {ix})")
            else:
                ix, stored_order = held
            expected: set[tuple[bytes, int]] = set()
            ordered = True
            for stored in self._all_rows(index.collection, damaged):
                if index.holds(stored.document):
                    keys, keeps = index.keys_of(stored.document)
                    ordered = ordered and keeps
                    expected.update((entry, stored.arrival) for entry in keys)
            left_out = {arrival for c, arrival in damaged if c == index.collection}
            stored_entries = present.get(ix, set())
            # A damaged document's entries cannot be re-derived: those stored are kept.
            expected |= {(e, a) for e, a in stored_entries if a in left_out}
            wanted[ix] = expected
            if int(ordered) != stored_order:
                _mark_built(self._conn, ix, index.collection, index.name, ordered)
            rebuilt.append(
                IndexRebuilt(
                    f"{index.collection}.{index.name}",
                    len(expected),
                    removed=len(stored_entries - expected),
                    added=len(expected - stored_entries),
                    order_changed=stored_order >= 0 and int(ordered) != stored_order,
                )
            )
        for ix, _ in by_name.values():
            wanted.setdefault(ix, present.get(ix, set()))  # a damaged catalog's: kept as is
        stray = sum(len(entries) for ix, entries in present.items() if ix not in wanted)
        if stray or any(present.get(ix, set()) != entries for ix, entries in wanted.items()):
            self._conn.execute("DELETE FROM entries")  # whole: no b-tree search involved
            self._conn.executemany(
                "INSERT INTO entries (ix, key, arrival) VALUES (?, ?, ?)",
                sorted((ix, e, a) for ix, entries in wanted.items() for e, a in entries),
            )
        return IndexRebuild(rebuilt, catalog_fixed, stray, not_rebuilt)

    def _sqlite_indexes_rebuilt(self, *, documents_intact: bool) -> list[str]:
        """SQLite's own indexes of the tables are derived data too (those of the documents
        only while every row is intact): rebuilt where its check finds them wrong."""
        problems = " ".join(row[0] for row in self._conn.execute("PRAGMA integrity_check"))
        rebuilt = []
        for table, indexes in (
            ("built_indexes", ("sqlite_autoindex_built_indexes_1",)),
            ("documents", ("documents_id", "documents_arrival") if documents_intact else ()),
        ):
            if any(f"index {index}" in problems for index in indexes):
                self._conn.execute(f"REINDEX {table}")
                rebuilt.append(f"SQLite's indexes of {table} rebuilt")
        return rebuilt

    def _intact_catalog(self, damaged: set[tuple[str, int]]) -> list[_IndexSpec]:
        """The indexes the intact catalog documents define (not text indexes)."""
        specs = []
        for arrival, body in self._conn.execute(
            "SELECT arrival, body FROM documents WHERE collection = ? AND body IS NOT NULL",
            (_INDEX_CATALOG,),
        ).fetchall():
            if (_INDEX_CATALOG, arrival or 0) not in damaged:
                index = _IndexSpec.from_catalog(_intact(body))
                if index is not None:
                    specs.append(index)
        return specs

    def _all_rows(self, collection: str, damaged: set[tuple[str, int]]) -> Iterator[_Stored]:
        """The collection's intact documents, read from the table itself (not through an
        index that may be damaged), a batch at a time."""
        rows = self._conn.execute(
            "SELECT key, arrival, body FROM documents NOT INDEXED WHERE collection = ? "
            "AND body IS NOT NULL",
            (collection,),
        )
        while batch := rows.fetchmany(_BATCH):
            for key, arrival, body in batch:
                if (collection, arrival) not in damaged:
                    yield _Stored(key, arrival, _intact(body))

    def backup(self, destination: Path) -> Path:
        """A consistent copy of the file through SQLite's online backup, safe while other
        processes hold and write the store. Refuses to overwrite an existing file.

        The copy is written to a hidden temporary file beside the target (mode 0600 from its
        first byte, ``.NAME.*.partial``: never taken for a store), flushed to disk, then
        linked into place and the directory flushed: a killed backup leaves no target at
        all, or a complete one. A temporary left by a killed backup is not in the way of the
        next one (it may be deleted).

        Raises InvalidInputError when the destination exists or its directory does not (or
        cannot be written), and StorageError naming the destination when the copy cannot be
        written or the store cannot be read."""
        target = Path(destination)
        try:
            if target.is_dir():
                target = target / self.path.name
            exists = target.exists()
            directory = target.parent.is_dir()
        except OSError as exc:  # a name too long for the file system, say
            raise InvalidInputError("destination", f"{target}: {exc.strerror or exc}") from exc
        if exists:
            raise InvalidInputError("destination", f"{target} exists; choose a new file")
        if not directory:
            raise InvalidInputError(
                "destination", f"{target}: the directory {target.parent} does not exist"
            )
        if not os.access(target.parent, os.W_OK | os.X_OK):
            raise InvalidInputError(
                "destination", f"{target}: the directory {target.parent} is not writable"
            )
        partial = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}.partial")
        try:
            try:
                os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                copy = sqlite3.connect(partial)
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"cannot create the backup {target}: {exc}") from exc
            try:
                # No journal beside the copy: it is not a store until it is linked into place.
                copy.execute("PRAGMA journal_mode=OFF")
                with self._lock:
                    self._conn.backup(copy)
            except sqlite3.Error as exc:
                raise StorageError(
                    f"cannot write the backup {target} (from the embedded database "
                    f"{self.path}): {exc}"
                ) from exc
            finally:
                copy.close()
            try:
                _fsync_path(partial)
                _publish(partial, target)
                _fsync_path(target.parent)
            except FileExistsError as exc:
                raise InvalidInputError(
                    "destination", f"{target} exists; choose a new file"
                ) from exc
            except OSError as exc:
                raise StorageError(f"cannot write the backup {target}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        return target

    def compact(self) -> tuple[int, int]:
        """Rewrite the file without its free pages (SQLite ``VACUUM``), then empty the WAL.
        Other processes may hold the store; it waits for their writes. Returns the bytes on
        disk (file and WAL) before and after."""
        if self.read_only:
            raise ReadOnlyError(f"the embedded database {self.path} is open read-only")
        with self._lock, self._sqlite_errors():
            before = self._bytes_on_disk()
            self._conn.execute("VACUUM")
            # VACUUM writes the new file into the WAL; copying it back and emptying the WAL
            # needs a moment with no writer, which a busy store gives between its writes.
            deadline = time.monotonic() + _CHECKPOINT_SECONDS
            while True:
                (busy, _, _) = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            return before, self._bytes_on_disk()

    def _bytes_on_disk(self) -> int:
        paths = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(p.stat().st_size for p in paths if p.exists())

    def close(self) -> None:
        """Close the file, first copying what the -wal holds into it (without waiting for
        other processes' readers): a -wal deleted after a clean close loses nothing."""
        with self._lock:
            if not self.read_only:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._conn.close()


def _same_fields(index: _IndexSpec, old: _FieldKeys, new: _FieldKeys) -> bool:
    """Whether the index's fields hold the same scalars in both versions of a document (so its
    entries stay). Arrays and objects are never taken as the same: Python's ``==`` would
    equate ``[1]`` and ``[True]``, which index differently."""
    for path, _ in index.fields:
        before, after = old.value(path), new.value(path)
        if before is _MISSING or after is _MISSING:
            if before is not after:
                return False
        elif type(before) is not type(after) or isinstance(before, list | dict) or before != after:
            return False
    return True


def _keyed_differently(index: _IndexSpec, ordered: bool) -> bool:
    """Whether an earlier version gave this index other keys: a positional path part
    (``arr.0``, indexed as missing), or a dotted path in an index that met an array (an
    element without the field was indexed as nothing, now as null). An integer past 2**53
    was keyed as its nearest double in any index: a full ``verify`` names such an index and
    ``rebuild_indexes`` re-derives it."""
    for path, _ in index.fields:
        parts = path.split(".")
        if any(part.isdigit() and part.isascii() for part in parts):
            return True
        if len(parts) > 1 and not ordered:
            return True
    return False


def _grouped_by_lead(
    indexes: list[tuple[_IndexSpec, bool]],
) -> dict[str, list[tuple[_IndexSpec, bool]]]:
    grouped: dict[str, list[tuple[_IndexSpec, bool]]] = {}
    for index, ordered in indexes:
        grouped.setdefault(index.fields[0][0], []).append((index, ordered))
    return grouped


def _held_at(document: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` as a server's ``keyValue`` shows it (None when absent)."""
    value = _path_value(document, path)
    if isinstance(value, list):
        return [None if item is _HOLE else item for item in value]
    return None if value is _MISSING else value


def _present(value: Any) -> bool:
    """Whether a path's value (``_path_value``) is there: not missing, and not only array
    elements without the field."""
    if isinstance(value, list):
        return any(item is not _HOLE for item in value)
    return value is not _MISSING


def _duplicate(
    collection: str, index: str, key: Any, key_value: Mapping[str, Any] | None = None
) -> DuplicateKeyError:
    """A server's duplicate-key error; ``key_value`` is its ``keyValue`` (the taken key)."""
    details = {} if key_value is None else {"keyValue": dict(key_value)}
    return DuplicateKeyError(
        f"E11000 duplicate key error collection: {collection} index: {index} dup key: {key!r}",
        11000,
        details,
    )


class _Writer(_Reader):
    """One write transaction: reads like a reader, and keeps rows and index entries in step."""

    def __init__(self, engine: EmbeddedEngine, collection: str, seq: int) -> None:
        super().__init__(engine)
        self.collection = collection
        self.seq = seq
        self.deferred: BaseException | None = None

    def put(
        self,
        old: _Stored | None,
        new: Mapping[str, Any] | None,
        key: bytes | None = None,
        *,
        body: bytes | None = None,
    ) -> None:
        """Replace ``old`` (None: insert) by ``new`` (None: delete), with its index entries;
        ``body``: ``new`` already encoded."""
        key = old.key if old is not None else key
        assert key is not None
        unique_check: list[tuple[_IndexSpec, set[bytes]]] = []
        if new is None:
            self.conn.execute(
                "DELETE FROM documents WHERE collection = ? AND key = ?", (self.collection, key)
            )
            arrival = old.arrival if old is not None else 0
        else:
            body = _encoded(new) if body is None else body
            if old is not None:
                arrival = old.arrival
            else:
                (arrival,) = self.conn.execute(
                    "UPDATE meta SET value = value + 1 WHERE name = 'arrival' RETURNING value"
                ).fetchone()
                self._check_arrival_free(arrival)
            id_crc = _identity_crc(self.collection, key, arrival)
            row = (self.collection, key, self.seq, body, zlib.crc32(body), arrival, id_crc)
            if old is not None:
                self.conn.execute(  # id_crc too: a row an older version wrote has none
                    "UPDATE documents SET seq = ?, body = ?, body_crc = ?, id_crc = ? "
                    "WHERE collection = ? AND key = ?",
                    (*row[2:5], id_crc, *row[:2]),
                )
            else:
                self._refuse_equal_number_id(key)
                # A live row with this key refuses the insert; a tombstone an older version
                # left (body NULL) is taken over.
                inserted = self.conn.execute(
                    "INSERT INTO documents "
                    "(collection, key, seq, body, body_crc, arrival, id_crc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (collection, key) DO UPDATE SET "
                    "seq = excluded.seq, body = excluded.body, body_crc = excluded.body_crc, "
                    "arrival = excluded.arrival, id_crc = excluded.id_crc "
                    "WHERE documents.body IS NULL",
                    row,
                ).rowcount
                if not inserted:
                    raise _duplicate(
                        self.collection, "_id_", _decode_key(key), {"_id": _decode_key(key)}
                    )
        gone: list[tuple[int, bytes, int]] = []
        added: list[tuple[int, bytes, int]] = []
        old_fields = _FieldKeys(old.document) if old is not None else None
        new_fields = _FieldKeys(new) if new is not None else None
        for index, ordered in self.engine.catalog(self.collection):
            if (
                old_fields
                and new_fields
                and _same_fields(index, old_fields, new_fields)
                and index.membership_follows_fields()
            ):
                continue  # an update that left this index's fields alone
            # The old keys even if the old document was outside a partial index: an earlier
            # version indexed every document, and this clears what it left.
            before = index.keys_of(old_fields.document, old_fields)[0] if old_fields else set()
            after, keeps_order = (
                index.keys_of(new_fields.document, new_fields)
                if new_fields and index.holds(new_fields.document)
                else (set(), True)
            )
            gone += [(index.ix, entry, arrival) for entry in before - after]
            added += [(index.ix, entry, arrival) for entry in after - before]
            if new is not None and index.unique and index.covers(new):
                unique_check.append((index, after))
            if ordered and not keeps_order:
                self._unordered(index)
        # One statement for all the indexes' changes, each way.
        if gone:
            self.conn.executemany(
                "DELETE FROM entries WHERE ix = ? AND key = ? AND arrival = ?", gone
            )
        if added:
            self.conn.executemany(
                "INSERT OR IGNORE INTO entries (ix, key, arrival) VALUES (?, ?, ?)", added
            )
        for index, after in unique_check:
            assert new is not None
            self._check_unique(index, _Stored(key, arrival, dict(new)), after)

    def put_alone(
        self, old: _Stored, new: Mapping[str, Any], *, body: bytes | None = None
    ) -> DuplicateKeyError | None:
        """``put`` as one document of a multi-document write: undone alone if a unique index
        refuses it, and the refusal returned (a server keeps the documents before it)."""
        self.conn.execute("SAVEPOINT document")
        try:
            self.put(old, new, body=body)
        except DuplicateKeyError as exc:
            self.conn.execute("ROLLBACK TO document")
            self.conn.execute("RELEASE document")
            return exc
        self.conn.execute("RELEASE document")
        return None

    def _refuse_equal_number_id(self, key: bytes) -> None:
        """Refuse a numeric ``_id`` equal to a stored one of another BSON type: MongoDB's
        ``_id`` index takes 1, 1.0 and Int64(1) for one value (their keys differ here)."""
        if key[4:5] not in _NUMERIC_IDS:
            return
        value = _decode_key(key)
        twins: set[bytes] = set()
        if float(value) == value:
            twins.add(_encode_key(float(value)))
        if isinstance(value, int) or value.is_integer():
            number = int(value)
            if -(2**63) <= number < 2**63:
                twins.add(_encode_key(Int64(number)))
            if -(2**31) <= number < 2**31:
                twins.add(_encode_key(number))  # BSON's int32
        twins.discard(key)
        marks = ",".join("?" * len(twins))
        if (
            twins
            and self.conn.execute(
                f"SELECT 1 FROM documents WHERE collection = ? AND key IN ({marks}) "
                "AND body IS NOT NULL LIMIT 1",
                (self.collection, *sorted(twins)),
            ).fetchone()
        ):
            raise _duplicate(self.collection, "_id_", value, {"_id": value})

    def _check_unique(self, index: _IndexSpec, stored: _Stored, entries: set[bytes]) -> None:
        for entry in entries:
            others = self.conn.execute(
                "SELECT arrival FROM entries WHERE ix = ? AND key = ? AND arrival != ?",
                (index.ix, entry, stored.arrival),
            ).fetchall()
            if not others:
                continue
            # The entry is a coarse key (objects share one byte): the exact keys decide.
            own = _exact_keys(index, stored.document)
            for other in self.fetch_arrivals(self.collection, [a for (a,) in others]):
                if index.covers(other.document) and own & _exact_keys(index, other.document):
                    raise _duplicate(
                        self.collection,
                        index.name,
                        _key_label(stored.key),
                        {path: _held_at(stored.document, path) for path, _ in index.fields},
                    )

    def _check_arrival_free(self, arrival: int) -> None:
        """A new arrival number must name no document yet (an index seek): a damaged
        counter would otherwise give two documents one number, and their entries each
        other's documents.

        Raises:
            StorageError: it names one (reason ``"damaged"``); nothing is written.
        """
        taken = self.conn.execute(
            "SELECT 1 FROM documents INDEXED BY documents_arrival "
            "WHERE collection = ? AND arrival = ?",
            (self.collection, arrival),
        ).fetchone()
        if taken is not None:
            raise _damage_error(
                self.engine.path,
                "the counter of arrival numbers",
                f"it gave {arrival}, which a document of {self.collection} already has",
            )

    def _unordered(self, index: _IndexSpec) -> None:
        _mark_built(self.conn, index.ix, index.collection, index.name, False)
        self.engine._catalog_changed()

    def build(self, index: _IndexSpec, *, refuse_duplicates: bool = True) -> None:
        """Write every document's entries for a new index, checking a unique one unless
        ``refuse_duplicates`` is False (a rebuild of what the file already holds)."""
        (ix,) = self.conn.execute(
            "INSERT INTO built_indexes (collection, name, ordered) VALUES (?, ?, 1) RETURNING ix",
            (index.collection, index.name),
        ).fetchone()
        _mark_built(self.conn, ix, index.collection, index.name, True)
        ordered = True
        # entry -> the exact keys of the documents holding it; None once a document of
        # scalars holds it (its entries are exact: any other document there duplicates it).
        covered: dict[bytes, list[set[tuple[Any, ...]]] | None] = {}
        for stored in self.scan(index.collection):
            if not index.holds(stored.document):
                continue
            keys, keeps_order = index.keys_of(stored.document)
            ordered = ordered and keeps_order
            self.conn.executemany(
                "INSERT OR IGNORE INTO entries (ix, key, arrival) VALUES (?, ?, ?)",
                [(ix, k, stored.arrival) for k in keys],
            )
            if refuse_duplicates and index.unique and index.covers(stored.document):
                exact = None if keeps_order else _exact_keys(index, stored.document)
                for key in keys:
                    if key in covered:
                        held = covered[key]
                        if exact is None or held is None or any(exact & o for o in held):
                            raise _duplicate(index.collection, index.name, _key_label(stored.key))
                for key in keys:
                    if exact is None:
                        covered[key] = None
                    elif (held_by := covered.setdefault(key, [])) is not None:
                        held_by.append(exact)
        if not ordered:
            _mark_built(self.conn, ix, index.collection, index.name, False)


# -- the pymongo-shaped surface ---------------------------------------------------------------


class _LookupDatabase:
    """What mongomock's ``$lookup`` and ``$graphLookup`` see: collections whose ``find`` is
    the engine's indexed find, inside the aggregation's own transaction."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader

    def get_collection(self, name: str) -> _LookupCollection:
        return _LookupCollection(self._reader, name)


class _LookupCollection:
    def __init__(self, reader: _Reader, name: str) -> None:
        self._reader, self._name = reader, name

    def find(self, query: Mapping[str, Any] | None = None) -> list[Any]:
        return [stored.document for stored in self._reader.find(self._name, _patched(query or {}))]

    def rows(
        self, keys: Sequence[bytes]
    ) -> dict[bytes, tuple[bytes, int | None, bytes, int | None, int | None]]:
        """(key, arrival, body, crc, id_crc) of the stored documents with these keys, by key,
        not decoded.

        Raises:
            StorageError: a missing key is still in the _id index (a damaged file).
        """
        rows = self._reader._raw_rows(self._name, "key", "", keys)
        return {row[0]: row for row in rows}

    def decoded(
        self, key: bytes, arrival: int | None, body: bytes, crc: int | None, id_crc: int | None
    ) -> Any:
        """A fresh decoding of a row of :meth:`rows`.

        Raises:
            StorageError: the row is damaged.
        """
        return self._reader._decoded(self._name, key, arrival, body, crc, id_crc)


def _run_pipeline(
    documents: list[Any], lookups: _LookupDatabase, stages: Sequence[Mapping[str, Any]]
) -> list[Any]:
    """mongomock's pipeline over ``documents`` (as stored), except the stages the engine runs
    itself: ``$graphLookup``, and ``$lookup`` and ``$match`` while every document is still as
    stored (only ``$lookup`` before them), where mongomock's copies are not needed: its
    ``$match`` rewrites every document's datetimes before it matches, and its ``$lookup``
    reads one document per statement."""
    pending: list[Mapping[str, Any]] = []
    as_stored = True
    for stage in stages:
        name = next(iter(stage)) if len(stage) == 1 else None
        if not (name == "$graphLookup" or (as_stored and name in ("$lookup", "$match"))):
            pending.append(stage)
            as_stored = False
            continue
        if pending:
            documents = list(aggregation.process_pipeline(documents, lookups, pending, None))
            pending = []
        if name == "$graphLookup":
            documents = _graph_lookup(documents, lookups, stage["$graphLookup"])
            as_stored = False
        elif name == "$lookup":
            documents = _lookup(documents, lookups, stage["$lookup"])
        else:
            documents = _match(documents, stage["$match"])
    if pending:
        documents = list(aggregation.process_pipeline(documents, lookups, pending, None))
    return documents


def _match(documents: list[Any], spec: Any) -> list[Any]:
    """``$match`` on documents as stored: mongomock's, without its copy of each document with
    naive datetimes (stored ones are UTC to the millisecond, and the spec is read as a
    query is, ``_patched``), as the engine's find matches."""
    patched = _patched(spec)
    _check_filter(patched)
    return [document for document in documents if filtering.filter_applies(patched, document)]


def _lookup(documents: list[Any], lookups: _LookupDatabase, options: Any) -> list[Any]:
    """``$lookup`` as mongomock answers it (a find of ``{foreignField: value}`` per document),
    with the documents found by ``_id`` read a batch of keys per statement, each decoded
    afresh for each document that names it (a document is never shared between results)."""
    # mongomock checks the options (and raises as a server would) on no document.
    aggregation.process_pipeline([], lookups, [{"$lookup": options}], None)
    foreign = lookups.get_collection(options["from"])
    local, into, foreign_field = options["localField"], options["as"], options["foreignField"]
    queries: list[tuple[Any, bytes | None]] = []  # each document's query, and its key if one
    for document in documents:
        try:
            value = mongomock.helpers.get_value_by_dot(document, local)
        except KeyError:
            value = None
        query = {"$in": value} if isinstance(value, list) else value
        # A string or an ObjectId on _id names one key (see _id_values).
        by_id = foreign_field == "_id" and isinstance(query, str | ObjectId)
        queries.append((query, _encode_key(query) if by_id else None))
    rows = foreign.rows([key for _, key in queries if key is not None])
    for document, (query, key) in zip(documents, queries, strict=True):
        if key is None:
            document[into] = foreign.find({foreign_field: query})
            continue
        row = rows.get(key)
        found = None if row is None else foreign.decoded(*row)
        document[into] = [] if found is None else [found]
    return documents


def _graph_lookup(
    documents: list[Any], lookups: _LookupDatabase, options: Mapping[str, Any]
) -> list[Any]:
    """``$graphLookup`` as mongomock answers it, without its deep copy of every input
    document: the engine's documents are decoded for this call alone."""
    # mongomock checks the options (and raises as a server would) on no document.
    aggregation.process_pipeline([], lookups, [{"$graphLookup": options}], None)
    foreign = lookups.get_collection(options["from"])
    connect_to, into = options["connectToField"], options["as"]
    connect_from = options["connectFromField"].split(".")
    max_depth, depth_field = options.get("maxDepth"), options.get("depthField")
    restrict = options.get("restrictSearchWithMatch", {})

    def matches(value: Any, depth: int, seen: set[Any]) -> list[Any]:
        """The unseen documents whose ``connectToField`` matches ``value``, now seen."""
        query = {"$in": value} if isinstance(value, list) else value
        found = []
        for match in foreign.find({connect_to: query}):
            if match["_id"] not in seen and filtering.filter_applies(restrict, match):
                seen.add(match["_id"])
                found.append(match if depth_field is None else {**match, depth_field: depth})
        return found

    for document in documents:
        try:
            start = aggregation._parse_expression(options["startWith"], document)
        except KeyError:
            continue  # no start value: mongomock leaves the document without the field
        seen: set[Any] = set()
        depth = 0
        frontier = document[into] = matches(start, depth, seen)
        while frontier and (max_depth is None or depth < max_depth):
            depth += 1
            discovered = []
            for match in frontier:
                for target in aggregation._recursive_get(match, connect_from):
                    discovered += matches(target, depth, seen)
            document[into] += discovered
            frontier = discovered
    return documents


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
        return self._engine.read(lambda reader: len(reader.find(self.name, query, (), skip, most)))

    def estimated_document_count(self) -> int:
        def count(reader: _Reader) -> int:
            (found,) = reader.conn.execute(
                "SELECT count(*) FROM documents WHERE collection = ? AND body IS NOT NULL",
                (self.name,),
            ).fetchone()
            return int(found)

        return self._engine.read(count)

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
