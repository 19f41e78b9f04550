"""Checksums and damage: the CRC-32 of each row's body, identity, index entry and catalog
entry, the check every read makes, and the ``StorageError`` a damaged row becomes.
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import bson
import bson.errors

from cosmos_mongo.embedded.storage import _STORED, _key_label
from cosmos_mongo.errors import StorageError


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


_ARRIVAL_BYTES: Final = struct.Struct(">q").pack  # as int.to_bytes(8, "big", signed=True)


def _entry_crc(ix: int, key: bytes, arrival: int) -> int:
    """The checksum of an index entry (format 4): the index number seeds the CRC of the key,
    which seeds that of the arrival number, so a change in any of the three changes it."""
    return zlib.crc32(_ARRIVAL_BYTES(arrival), zlib.crc32(key, ix))


def _broken_entries(
    entries: Iterable[tuple[Any, Any, Any, Any]],
) -> list[tuple[Any, Any, Any, Any]]:
    """The (ix, key, arrival, crc) of ``entries`` that fail their checksum, or whose columns
    hold the wrong type (a changed record header); an entry without a checksum (an older
    version wrote it) is taken unchecked."""
    broken = []
    for entry in entries:
        ix, key, arrival, crc = entry
        if crc is None:
            continue
        try:
            if crc == _entry_crc(ix, key, arrival):
                continue
        except (TypeError, struct.error):
            pass
        broken.append(entry)
    return broken


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
    if not _stored_types(collection, key, arrival, body):
        raise _Damaged(
            _key_label(key) if isinstance(key, bytes) else repr(key)[:40],
            "a column holds a value of the wrong type (the row's bytes changed on disk)",
        )
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


def _stored_types(collection: object, key: object, arrival: object, body: object) -> bool:
    """Whether a row's columns hold the types written there: a changed byte in a record's
    header can turn a blob into text or a number into a float."""
    return (
        isinstance(collection, str)
        and isinstance(key, bytes)
        and (arrival is None or isinstance(arrival, int))
        and isinstance(body, bytes)
    )


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


def _mark_built(
    conn: sqlite3.Connection, ix: int, collection: str, name: str, ordered: bool
) -> None:
    """Set whether a built index serves sorts, with its row's checksum."""
    conn.execute(
        "UPDATE built_indexes SET ordered = ?, crc = ? WHERE ix = ?",
        (int(ordered), _catalog_crc(ix, collection, name, int(ordered)), ix),
    )
