"""Aggregation: mongomock's pipeline over the documents a leading ``$match`` selects, with
``$lookup`` and ``$graphLookup`` served by the engine's indexed reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mongomock as _mongomock
from bson import ObjectId
from mongomock import aggregate as _aggregation
from mongomock import filtering as _filtering

from cosmos_mongo.embedded.planning import _check_filter, _patched
from cosmos_mongo.embedded.reading import _Reader
from cosmos_mongo.embedded.storage import _encode_key

# mongomock's own type hints claim pymongo's classes; the engine treats it as untyped.
mongomock: Any = _mongomock
filtering: Any = _filtering
aggregation: Any = _aggregation


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
