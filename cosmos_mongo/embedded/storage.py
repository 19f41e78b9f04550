"""The file on disk: its schema and format numbers, how an ``_id`` becomes a row key and a
document its BSON, and how a database file is created, checked, flushed and published.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import bson
import bson.errors
from bson.codec_options import CodecOptions

from cosmos_mongo.errors import InvalidInputError, StorageError
from cosmos_mongo.files import private_directory
from cosmos_mongo.validation import MAX_DOCUMENT_BYTES

# One row per indexed value of a document: the key orders like MongoDB sorts, arrival names the
# document (every document has its own) and breaks ties in insertion order. crc: CRC-32 of the
# other three (format 4; NULL in entries an older version wrote), checked on every read.
_ENTRIES_TABLE: Final = """
CREATE TABLE IF NOT EXISTS entries (
    ix INTEGER NOT NULL,
    key BLOB NOT NULL,
    arrival INTEGER NOT NULL,
    crc INTEGER,
    PRIMARY KEY (ix, key, arrival)
) WITHOUT ROWID;
"""
_SCHEMA: Final = (
    """
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
"""
    + _ENTRIES_TABLE
    + """
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
)
# 1: documents only, loaded whole at open; 2: indexes on disk, arrival numbers; 3: checksums
# of each row's identity and of the rows that say which indexes are built; 4: checksums of
# index entries.
_FORMAT: Final = 4
_ARRIVAL_FORMAT: Final = 2  # the first format with arrival numbers and indexes on disk
_IDENTITY_FORMAT: Final = 3  # the first whose checksums cover the identity
_ENTRY_FORMAT: Final = 4  # the first whose index entries carry checksums
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


_STRING_KEY: Final = struct.Struct("<i5si")  # a key's size, then "_id" as a string, its size
_LONGEST_LAID_OUT: Final = 1 << 28  # characters: its UTF-8 fits a BSON size (int32) with room


def _encode_key(document_id: Any) -> bytes:
    """The BSON of ``{"_id": document_id}``. A string, the commonest ``_id`` and the key of
    every read by id, is laid out here (a fifth of what ``bson.encode`` takes): its size, the
    element, the UTF-8 and two terminating zero bytes, as the BSON spec has it."""
    if type(document_id) is str and len(document_id) < _LONGEST_LAID_OUT:
        text = document_id.encode()  # an unpaired surrogate raises, as in bson.encode
        size = len(text)
        return _STRING_KEY.pack(size + 15, b"\x02_id\x00", size + 1) + text + b"\x00\x00"
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


@dataclass(slots=True)
class _Stored:
    key: bytes
    arrival: int
    document: dict[str, Any]  # as stored: naive UTC datetimes, mongomock's own form
