"""Writing: the writer of one write transaction, which keeps documents, their checksums and
every index entry in step, and the helpers the update paths share.
"""

from __future__ import annotations

import math
import sqlite3
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from bson.int64 import Int64
from pymongo.errors import DuplicateKeyError, WriteError

from cosmos_mongo.embedded.integrity import _damage_error, _entry_crc, _identity_crc, _mark_built
from cosmos_mongo.embedded.keys import (
    _HOLE,
    _MISSING,
    _exact_keys,
    _FieldKeys,
    _IndexSpec,
    _path_value,
)
from cosmos_mongo.embedded.planning import _NUMERIC_IDS
from cosmos_mongo.embedded.reading import _Reader
from cosmos_mongo.embedded.storage import _decode_key, _encode_key, _encoded, _key_label, _Stored

if TYPE_CHECKING:
    from cosmos_mongo.embedded.engine import EmbeddedEngine


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
                "INSERT OR IGNORE INTO entries (ix, key, arrival, crc) VALUES (?, ?, ?, ?)",
                [
                    (ix, entry, arrival, _entry_crc(ix, entry, arrival))
                    for ix, entry, arrival in added
                ],
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
                "INSERT OR IGNORE INTO entries (ix, key, arrival, crc) VALUES (?, ?, ?, ?)",
                [(ix, k, stored.arrival, _entry_crc(ix, k, stored.arrival)) for k in keys],
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
