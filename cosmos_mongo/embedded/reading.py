"""Reading: the reader a read transaction hands out, which races index plans, fetches only
the documents a plan names, and sorts what the index cannot.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mongomock import filtering as _filtering

from cosmos_mongo.embedded.integrity import (
    _broken_entries,
    _checked_document,
    _damage_error,
    _Damaged,
)
from cosmos_mongo.embedded.keys import _MISSING, _NULL, _component, _path_value, _scalar_bytes
from cosmos_mongo.embedded.planning import (
    _FEW,
    _ID_INDEX,
    _ID_VALUE,
    _ORDERED_IDS,
    _RACE_CAP,
    _WHOLE,
    _check_filter,
    _decided_by_id_span,
    _id_span,
    _id_values,
    _implies,
    _index_plan,
    _Plan,
    _Terms,
    _terms,
)
from cosmos_mongo.embedded.storage import _BATCH, _encode_key, _key_label, _Stored

if TYPE_CHECKING:
    import sqlite3

    from cosmos_mongo.embedded.engine import EmbeddedEngine

# mongomock's own type hints claim pymongo's classes; the engine treats it as untyped.
filtering: Any = _filtering

_Span = tuple[int, bytes, bytes]  # (index number, first key, the key after the last)
_Entry = tuple[int, bytes, int, int | None]  # (index number, key, arrival, checksum)


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

    # fetch_one's cursor and statement, made by its first call. Only the engine's kept reader
    # (EmbeddedEngine.by_key) calls it, once the file is open and its columns are settled.
    _one: tuple[sqlite3.Cursor, str] | None = None

    def fetch_one(self, collection: str, key: bytes) -> Any:
        """The document with this key, or None.

        Raises:
            StorageError: as :meth:`fetch`.
        """
        one = self._one
        if one is None:
            one = self._one = (
                self.conn.cursor(),
                f"SELECT {self.engine.arrival}, body, body_crc, {self.engine.id_crc} "
                "FROM documents WHERE collection = ? AND key = ?",
            )
        cursor, statement = one
        # The checksum is taken over the collection and key asked for: a row a broken b-tree
        # gives instead fails it. Its one row fetched, the statement is done: the kept cursor
        # holds no snapshot between calls.
        row = cursor.execute(statement, (collection, key)).fetchone()
        if row is None:
            self._confirm_absent(collection, "key", [key])
            return None
        arrival, body, crc, id_crc = row
        if body is None:
            return None
        return self._decoded(collection, key, arrival, body, crc, id_crc)

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
        rows = self._read_checked(
            collection,
            f"WHERE ({terms}) LIMIT ?",
            (*itertools.chain.from_iterable(spans), limit),
            spans,
            limit,
        )
        return [(row[5], row[3], row[6], row[7], row[8]) for row in rows]

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
        self,
        collection: str,
        column: str,
        index: str,
        values: Sequence[Any],
        *,
        from_id_index: bool = False,
    ) -> Iterator[tuple[bytes, int | None, bytes, int | None, int | None]]:
        """(key, arrival, body, crc, id_crc) of the stored documents whose ``column`` is one of
        ``values``, read ``_BATCH`` values per statement and not decoded.

        Raises:
            StorageError: a value with no row is still in the file's other index of it
                (see :meth:`_confirm_absent`), or came from the ``_id`` index
                (``from_id_index``), which names only stored rows.
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
            missing = [v for v in batch if v not in present]
            if from_id_index and missing:
                raise _damage_error(
                    self.engine.path,
                    f"{collection} {_key_label(missing[0])}",
                    "the _id index names it but no row has it (a byte of the index, or of "
                    "the row's key or collection, changed on disk)",
                )
            self._confirm_absent(collection, column, missing)
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
        # One statement per kind of _id and batch of keys: a copy into an empty store asks
        # for every key it writes, and a statement per key cost seconds at 100k.
        by_value: dict[tuple[bytes, bytes], bytes] = {}
        for key in missing:
            kind = key[4:5]
            by_value[kind, key[13:] if kind == b"\x02" else key[9:]] = key
        for kind in sorted({kind for kind, _ in by_value}):
            values = [value for of_kind, value in by_value if of_kind == kind]
            for start in range(0, len(values), _BATCH):
                chunk = values[start : start + _BATCH]
                held = self.conn.execute(
                    f"SELECT {_ID_VALUE} {_ID_INDEX} AND substr(key, 5, 1) = ? "
                    f"AND {_ID_VALUE} IN ({','.join('?' * len(chunk))}) LIMIT 1",
                    (collection, kind, *chunk),
                ).fetchone()
                if held is not None:
                    raise _damage_error(
                        self.engine.path,
                        f"{collection} {_key_label(by_value[kind, held[0]])}",
                        "the _id index holds it but its row is gone (its key or collection "
                        "bytes changed on disk)",
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
        # key bytes changed; a look-up by key notices (_raw_rows). Each entry's values are
        # checked against its key: they are what the walk's order and range come from.
        keys = self.conn.execute(
            f"SELECT collection, substr(key, 5, 1), {_ID_VALUE}, key {_ID_INDEX} {where} {ordered}",
            (collection, *parameters),
        )
        try:
            read = 0
            if ordered:
                self._check_id_around(collection, plan, direction, read=None)
            while entries := list(itertools.islice(keys, batch)):
                wanted = [self._id_entry_key(collection, entry) for entry in entries]
                read += len(wanted)
                found = self._raw_rows(collection, "key", "", wanted, from_id_index=True)
                rows = {row[0]: row for row in found}
                for key in wanted:
                    if key in rows:  # else a tombstone an older version left
                        _, arrival, body, crc, id_crc = rows[key]
                        document = self._decoded(collection, key, arrival, body, crc, id_crc)
                        yield _Stored(key, arrival or 0, document)
            if ordered:
                self._check_id_around(collection, plan, direction, read=read)
        finally:
            keys.close()

    def _check_id_around(
        self, collection: str, plan: _Plan, direction: int, *, read: int | None
    ) -> None:
        """The ``_id`` index's twin of :meth:`_check_around`, for a walk of one ordered kind:
        the entry before the walk's first (``read`` None), or the one after the ``read``
        entries it gave, is intact and outside the span, found from the same seek.

        Raises:
            StorageError: it is damaged or inside the span (reason ``"damaged"``).
        """
        start, end = plan.ranges[0]
        forward = direction >= 0
        if read is None:
            term, order, bound = ("<", "DESC", start) if forward else (">=", "ASC", end)
        else:
            term, order, bound = (">=", "ASC", start) if forward else ("<", "DESC", end)
        row = self.conn.execute(
            f"SELECT collection, substr(key, 5, 1), {_ID_VALUE}, key {_ID_INDEX} "
            f"AND substr(key, 5, 1) = ? AND {_ID_VALUE} {term} ? "
            f"ORDER BY {_ID_VALUE} {order} LIMIT 1 OFFSET ?",
            (collection, plan.id_kind, bound, read or 0),
        ).fetchone()
        if row is None:
            return
        key = self._id_entry_key(collection, row)
        value = row[2]
        inside = (value >= start) if (read is None) == forward else (value < end)
        if inside:
            raise _damage_error(
                self.engine.path,
                f"{collection} {_key_label(key)}",
                "the _id index's entries are out of order (a byte of the index changed on disk)",
            )

    def _id_entry_key(self, collection: str, entry: tuple[str, bytes, bytes, bytes]) -> bytes:
        """The key of an ``_id`` index entry read whole (collection, type byte, value, key),
        once its values are checked against the key they are derived from.

        Raises:
            StorageError: they differ (reason ``"damaged"``).
        """
        held, kind, value, key = entry
        if (
            not isinstance(key, bytes)
            or held != collection
            or kind != key[4:5]
            or value != (key[13:] if kind == b"\x02" else key[9:])
        ):
            raise _damage_error(
                self.engine.path,
                f"{collection} {_key_label(key)}",
                "its entry in the _id index differs from its key (a byte of the index changed "
                "on disk)",
            )
        return key

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
                f"SELECT ix, key, arrival, {self.engine.entry_crc} FROM entries "
                f"WHERE {terms} LIMIT ?",
                (*itertools.chain.from_iterable(spans), cap),
            ).fetchall()
            if len(rows) >= cap:
                return cap
            plan.counted = [arrival for _, _, arrival, _ in rows]
            plan.check_counted = lambda: self._check_spans(collection, spans, rows, whole=True)
            return len(rows)
        if plan.union:
            for branch in plan.union:
                total += self._count(collection, branch, cap - total)
                if total >= cap:
                    break
            return total
        assert plan.index is not None
        documents: list[int] = []
        ranges: list[_Span] = []
        read: list[_Entry] = []
        for start, end in plan.ranges:
            rows = self.conn.execute(
                f"SELECT ix, key, arrival, {self.engine.entry_crc} FROM entries "
                "WHERE ix = ? AND key >= ? AND key < ? LIMIT ?",
                (plan.index.ix, start, end, cap - len(documents)),
            ).fetchall()
            documents += [arrival for _, _, arrival, _ in rows]
            if len(documents) >= cap:
                return cap
            ranges.append((plan.index.ix, start, end))
            read += rows
        plan.counted = documents  # all of them: the winner need not read them again
        plan.check_counted = lambda: self._check_spans(collection, ranges, read, whole=True)
        return len(documents)

    def entries(self, collection: str, plan: _Plan, direction: int) -> Iterator[tuple[bytes, int]]:
        """(key, arrival) of a plan's ranges, in key order (or reversed)."""
        assert plan.index is not None
        streams = [
            self._range_entries(collection, (plan.index.ix, start, end), direction)
            for start, end in plan.ranges
            if start < end
        ]
        if len(streams) == 1:
            return streams[0]
        # Ranges of an $in differ in their equality prefix: merge on what follows it.
        equal = [descending for _, descending in plan.index.fields[: plan.equal_fields]]

        def after_prefix(row: tuple[bytes, int]) -> tuple[bytes, int]:
            return row[0][len(_leading_components(row[0], equal)) :], row[1]

        return heapq.merge(*streams, key=after_prefix, reverse=direction < 0)

    def _range_entries(
        self, collection: str, span: _Span, direction: int
    ) -> Iterator[tuple[bytes, int]]:
        """(key, arrival) of one range of an index, in key order (or reversed), read as
        consumed; each entry checked, and the entries around the range (see
        :meth:`_check_around`): before it first, after it once the read has reached its end.

        Raises:
            StorageError: a damaged entry (reason ``"damaged"``).
        """
        order = "ASC" if direction >= 0 else "DESC"
        self._check_around(collection, [(span, None)], direction, before=True)
        rows = self.conn.execute(
            f"SELECT key, arrival, {self.engine.entry_crc} FROM entries "
            f"WHERE ix = ? AND key >= ? AND key < ? ORDER BY key {order}, arrival {order}",
            span,
        )
        read = 0
        for key, arrival, crc in rows:
            self._check_entries(collection, ((span[0], key, arrival, crc),))
            read += 1
            yield key, arrival
        self._check_around(collection, [(span, read)], direction, before=False)

    def _check_entries(self, collection: str, entries: Iterable[_Entry]) -> None:
        """The index entries read pass their checksums (format 4; older entries have none).

        Raises:
            StorageError: one does not (reason ``"damaged"``), naming its index; none is used.
        """
        broken = _broken_entries(entries)
        if broken:
            raise _damage_error(
                self.engine.path,
                self._index_label(collection, broken[0][0]),
                "an entry fails its checksum (its key, arrival or index number changed on disk)",
            )

    def _check_spans(
        self, collection: str, spans: Sequence[_Span], entries: Sequence[_Entry], *, whole: bool
    ) -> None:
        """Check every entry a read of ``spans`` gave, and, if the read reached the end of
        every span (``whole``), the entries around each span.

        Raises:
            StorageError: a damaged entry (reason ``"damaged"``).
        """
        self._check_entries(collection, entries)
        if whole:
            read = _read_per_span(spans, entries)
            self._check_around(
                collection,
                [
                    (span, count)
                    for span, count in zip(spans, read, strict=True)
                    if span[1] < span[2]
                ],
                1,
                before=True,
            )

    def _read_checked(
        self,
        collection: str,
        terms: str,
        parameters: Sequence[Any],
        spans: Sequence[_Span],
        limit: int,
        *,
        direction: int = 1,
    ) -> list[tuple[Any, ...]]:
        """Index entries (``terms``: what follows ``FROM entries e`` and the join of their
        documents, ending in a ``LIMIT`` of ``limit``, -1 for none) as rows of -1, the entry's
        index number, key, arrival and checksum, then its document's key, body, checksum and
        identity checksum; returned once every entry they name and the entries around each
        of ``spans`` (see :meth:`_check_around`) are checked, all read in one statement. The
        entry after a span is found at an offset of as many of its entries as the read can
        have given (counted in the same statement), and judged only if the read reached the
        end of every span.

        Raises:
            StorageError: a damaged entry (reason ``"damaged"``).
        """
        forward = direction >= 0
        spans = [span for span in spans if span[1] < span[2]]
        engine = self.engine
        sql = _checked_read_sql(
            engine.entry_crc,
            engine.joined_entry_crc,
            engine.joined_id_crc,
            terms,
            len(spans),
            forward,
        )
        extra: list[int | bytes] = []
        for ix, start, end in spans:
            seek = (ix, start if forward else end)
            extra += (*seek, *seek, ix, start, end, limit)
        rows = self.conn.execute(sql, (collection, *parameters, *extra)).fetchall()
        read = [row for row in rows if row[0] == -1]
        self._check_spans(
            collection, spans, [(row[1], row[2], row[3], row[4]) for row in read], whole=False
        )
        whole = limit < 0 or len(read) < limit
        self._judge_around(
            collection,
            spans,
            forward,
            [row[:5] for row in rows if row[0] >= 0 and (whole or row[0] % 2 == 0)],
        )
        return read

    def _check_around(
        self,
        collection: str,
        reads: Sequence[tuple[_Span, int | None]],
        direction: int,
        *,
        before: bool,
    ) -> None:
        """The entries just outside range reads are intact and outside their range: for each
        (span, read), the last one before the read's first (``before``), and the first one
        after the ``read`` entries it gave (None: not checked), each in the read's direction,
        each found from the same seek as the read; one statement for all of them. A damaged entry
        stays where it was in the b-tree: a read that stops at it because its key now lies
        past the range, or a seek it misleads past the range's first entries, leaves it just
        outside. So a damaged byte never makes a range silently shorter.

        Raises:
            StorageError: one is damaged or inside the range (reason ``"damaged"``).
        """
        # A plan reads at most 64 ranges (planning): at most 128 parts, within the 500 SQLite
        # takes in one compound statement.
        forward = direction >= 0
        shape = tuple((before, read is not None) for _, read in reads)
        if not any(b or a for b, a in shape):
            return
        parameters: list[int | bytes] = []
        for (ix, start, end), read in reads:
            seek = (ix, start if forward else end)
            if before:
                parameters += seek
            if read is not None:
                parameters += (*seek, read)
        sql = _around_sql(self.engine.entry_crc, forward, shape)
        rows = self.conn.execute(sql, parameters).fetchall()
        self._judge_around(collection, [span for span, _ in reads], forward, rows)

    def _judge_around(
        self,
        collection: str,
        spans: Sequence[_Span],
        forward: bool,
        rows: Sequence[tuple[int, Any, Any, Any, Any]],
    ) -> None:
        """Each (side, ix, key, arrival, checksum) found around ``spans`` (side 2i: before
        the i-th span's read, 2i + 1: after it) is intact and outside its span.

        Raises:
            StorageError: one is not (reason ``"damaged"``).
        """
        self._check_entries(collection, (row[1:] for row in rows))
        for side, ix_read, key, _, _ in rows:
            ix, start, end = spans[side // 2]
            place = (ix_read, key)
            outside = (
                (place < (ix, start) if forward else place >= (ix, end))
                if side % 2 == 0
                else (place >= (ix, end) if forward else place < (ix, start))
            )
            if not outside:
                raise _damage_error(
                    self.engine.path,
                    self._index_label(collection, ix),
                    "its entries are out of order (a byte of the index changed on disk)",
                )

    def _index_label(self, collection: str, ix: int) -> str:
        for index, _ in self.engine.catalog(collection):
            if index.ix == ix:
                return f"index {collection}.{index.name}"
        return f"index number {ix}"

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
            if plan.check_counted is not None:
                plan.check_counted()
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
        read = []
        for start, end in plan.ranges:
            if start >= end:
                continue
            span = (plan.index.ix, start, end)
            got = self._read_checked(
                collection,
                "WHERE e.ix = ? AND e.key >= ? AND e.key < ? "
                f"ORDER BY e.key {order}, e.arrival ASC LIMIT ?",
                (*span, wanted),
                [span],
                wanted,
                direction=plan.walk,
            )
            read.append([(row[2], row[5], row[3], row[6], row[7], row[8]) for row in got])
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


@functools.lru_cache(maxsize=256)
def _checked_read_sql(
    crc: str, joined_crc: str, joined_id_crc: str, terms: str, spans: int, forward: bool
) -> str:
    """The statement of :meth:`_Reader._read_checked`: the read, then the entries around
    each of its ``spans``."""
    read = (
        f"SELECT -1, e.ix, e.key, e.arrival, {joined_crc}, d.key, d.body, d.body_crc, "
        f"{joined_id_crc} FROM entries e LEFT JOIN documents d INDEXED BY documents_arrival "
        f"ON d.collection = ? AND d.arrival = e.arrival {terms}"
    )
    if not spans:
        return read
    around = _around_sql(crc, forward, ((True, True),) * spans, pad=4, counted=True)
    return f"SELECT * FROM ({read}) UNION ALL {around}"


@functools.lru_cache(maxsize=256)
def _around_sql(
    crc: str,
    forward: bool,
    shape: tuple[tuple[bool, bool], ...],
    *,
    pad: int = 0,
    counted: bool = False,
) -> str:
    """The statement of :meth:`_Reader._check_around`: for the i-th read of ``shape``
    (before, after), the entry before its first (side 2i; parameters: the seek) and the one
    after the entries it gave (side 2i + 1, at an offset; parameters: the seek and the
    offset, or, if ``counted``, the seek and the span and limit whose entries are counted
    for it), as asked; each row padded with ``pad`` NULLs. ``crc``: the checksum column, or
    NULL in a file without one."""
    near, far = ("<", ">=") if forward else (">=", "<")
    near_order, far_order = ("DESC", "ASC") if forward else ("ASC", "DESC")
    nulls = ", NULL" * pad
    offset = (
        "(SELECT count(*) FROM (SELECT 1 FROM entries "
        "WHERE ix = ? AND key >= ? AND key < ? LIMIT ?))"
        if counted
        else "?"
    )
    parts = []
    for position, (before, after) in enumerate(shape):
        if before:
            parts.append(
                f"SELECT * FROM (SELECT {2 * position}, ix, key, arrival, {crc}{nulls} "
                f"FROM entries WHERE (ix, key) {near} (?, ?) "
                f"ORDER BY ix {near_order}, key {near_order}, arrival {near_order} LIMIT 1)"
            )
        if after:
            parts.append(
                f"SELECT * FROM (SELECT {2 * position + 1}, ix, key, arrival, {crc}{nulls} "
                f"FROM entries WHERE (ix, key) {far} (?, ?) "
                f"ORDER BY ix {far_order}, key {far_order}, arrival {far_order} "
                f"LIMIT 1 OFFSET {offset})"
            )
    return " UNION ALL ".join(parts)


def _read_per_span(spans: Sequence[_Span], entries: Sequence[_Entry]) -> list[int]:
    """How many of ``entries`` (each once) lie in each span: as many as a read of that span
    alone gives, whichever other spans the read covered."""
    if len(spans) == 1:  # the commonest: every entry read lies in it (each was checked)
        return [len(dict.fromkeys((e[0], e[1], e[2]) for e in entries))]
    read = [0] * len(spans)
    by_index: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for position, (ix, start, end) in enumerate(spans):
        by_index.setdefault(ix, []).append((start, end, position))
    for ranges in by_index.values():
        ranges.sort()
    disjoint = all(
        all(a[1] <= b[0] for a, b in itertools.pairwise(ranges)) for ranges in by_index.values()
    )
    for ix, key, _ in dict.fromkeys((e[0], e[1], e[2]) for e in entries):
        ranges = by_index.get(ix, [])
        if disjoint:  # a bisection finds the one range that may hold it
            at = bisect.bisect_right(ranges, key, key=lambda held: held[0]) - 1
            candidates = ranges[at : at + 1] if at >= 0 else []
        else:
            candidates = ranges
        for start, end, position in candidates:
            if start <= key < end:
                read[position] += 1
    return read


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
