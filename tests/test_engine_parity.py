"""The embedded engine answers as MongoDB does where an independent differential run found it
did not: each class of difference, minimized, against plain mongomock, or against the MongoDB
manual's stated answer where mongomock is wrong too (the manual decides)."""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mongomock
import pytest
from bson.int64 import Int64
from pymongo.errors import DuplicateKeyError, OperationFailure, WriteError

from cosmos_mongo.embedded import EmbeddedCollection, open_embedded

BEYOND_DOUBLES = 2**53 + 1  # the least positive integer no double holds


@contextlib.contextmanager
def _both(directory: Path) -> Iterator[tuple[Any, EmbeddedCollection]]:
    """An empty collection in plain mongomock and one in the engine."""
    database = open_embedded(directory)
    try:
        yield mongomock.MongoClient(tz_aware=True)["cosmos"]["things"], database["things"]
    finally:
        database.close()


def _load(
    collections: tuple[Any, ...], docs: list[dict[str, Any]], index: list[tuple[str, int]] | None
) -> None:
    for collection in collections:
        if index is not None:
            collection.create_index(index, name="probe")
        for i, doc in enumerate(docs):
            collection.insert_one({"_id": f"d{i}", **doc})


def _ids(documents: list[dict[str, Any]]) -> list[Any]:
    return [document["_id"] for document in documents]


# -- count_documents ----------------------------------------------------------------------------


@pytest.mark.parametrize("index", [None, [("k", 1)]])
@pytest.mark.parametrize(("skip", "limit"), [(1, None), (0, 2), (1, 2), (4, 3), (9, 1), (0, 2.5)])
def test_count_documents_counts_after_skip_and_up_to_limit_like_mongomock(
    tmp_path: Path, index: list[tuple[str, int]] | None, skip: int, limit: float | None
) -> None:
    window = {"skip": skip} if limit is None else {"skip": skip, "limit": limit}
    with _both(tmp_path) as (plain, embedded):
        _load((plain, embedded), [{"k": i % 2} for i in range(5)], index)
        for query in ({}, {"k": 1}, {"k": {"$in": [0, 1]}}):
            expected = plain.count_documents(query, **window)
            assert embedded.count_documents(query, **window) == expected


@pytest.mark.parametrize("window", [{"limit": 0}, {"limit": -1}, {"skip": -1}])
def test_count_documents_refuses_a_window_a_server_refuses(
    tmp_path: Path, window: dict[str, int]
) -> None:
    """A limit that is not positive (as mongomock refuses it) or a negative skip (the
    manual's ``$skip``: a positive integer)."""
    with _both(tmp_path) as (_, embedded), pytest.raises(OperationFailure):
        embedded.count_documents({}, **window)


# -- unique indexes -------------------------------------------------------------------------------


@pytest.mark.parametrize("built_over_documents", [False, True])
@pytest.mark.parametrize(
    ("path", "first", "second"),
    [
        pytest.param("u", {"x": 1}, {"x": 2}, id="two objects"),
        pytest.param("u", [1, 2], [3, 4], id="two arrays"),
        pytest.param("u", [[1]], [[2]], id="arrays of arrays"),
        pytest.param("u", [{"x": 1}], [{"x": 2}], id="arrays of objects"),
        pytest.param("u.0", [5, 6], [7, 8], id="a positional path"),
        pytest.param("u", BEYOND_DOUBLES, BEYOND_DOUBLES - 1, id="integers past 2**53"),
    ],
)
def test_a_unique_index_stores_distinct_objects_arrays_and_large_integers_like_mongomock(
    tmp_path: Path, built_over_documents: bool, path: str, first: Any, second: Any
) -> None:
    with _both(tmp_path) as (plain, embedded):
        for collection in (plain, embedded):
            if not built_over_documents:
                collection.create_index([(path, 1)], unique=True)
            collection.insert_one({"_id": 1, "u": first})
            collection.insert_one({"_id": 2, "u": second})
            if built_over_documents:
                collection.create_index([(path, 1)], unique=True)
        assert embedded.find({}, sort=[("_id", 1)]) == list(plain.find({}, sort=[("_id", 1)]))


@pytest.mark.parametrize("built_over_documents", [False, True])
def test_a_unique_index_takes_objects_with_their_fields_in_another_order_for_distinct(
    tmp_path: Path, built_over_documents: bool
) -> None:
    """The manual ("Comparison/Sort Order", objects): key-value pairs compare in the order
    they appear, so {x: 1, y: 2} and {y: 2, x: 1} are two keys. (mongomock's dict equality
    takes them for one.)"""
    database = open_embedded(tmp_path)
    collection = database["things"]
    if not built_over_documents:
        collection.create_index([("u", 1)], unique=True)
    collection.insert_many([{"_id": 1, "u": {"x": 1, "y": 2}}, {"_id": 2, "u": {"y": 2, "x": 1}}])
    if built_over_documents:
        collection.create_index([("u", 1)], unique=True)
    assert _ids(collection.find({})) == [1, 2]
    database.close()


@pytest.mark.parametrize("built_over_documents", [False, True])
@pytest.mark.parametrize(
    ("path", "first", "second"),
    [
        pytest.param("u", {"x": 1}, {"x": 1.0}, id="equal objects"),
        pytest.param("u", 1, 1.0, id="an integer and its double"),
        pytest.param("u", BEYOND_DOUBLES, Int64(BEYOND_DOUBLES), id="a large int32 and int64"),
        pytest.param("u.0", [5, 6], [5, 9], id="a positional path"),
        pytest.param("u.x", [{"x": 1}, {"y": 1}], {"y": 2}, id="an element without the field"),
    ],
)
def test_a_unique_index_refuses_an_equal_value(
    tmp_path: Path, built_over_documents: bool, path: str, first: Any, second: Any
) -> None:
    """Equal keys, as mongomock finds them too; and (manual, "Unique Index and Missing
    Field") a document whose array element lacks the field holds null, as one without it."""
    _refused_as_duplicates(tmp_path, path, first, second, built_over_documents)


def _refused_as_duplicates(
    directory: Path, path: str, first: Any, second: Any, built_over_documents: bool
) -> None:
    """A unique index on ``path`` is refused over the two documents, or refuses the second."""
    database = open_embedded(directory)
    collection = database["things"]
    if not built_over_documents:
        collection.create_index([(path, 1)], unique=True)
    collection.insert_one({"_id": 1, "u": first})
    if built_over_documents:
        collection.insert_one({"_id": 2, "u": second})
        with pytest.raises(DuplicateKeyError):
            collection.create_index([(path, 1)], unique=True)
        assert collection.list_indexes()[1:] == []
    else:
        with pytest.raises(DuplicateKeyError):
            collection.insert_one({"_id": 2, "u": second})
        assert _ids(collection.find({})) == [1]
    database.close()


@pytest.mark.parametrize("built_over_documents", [False, True])
def test_a_unique_multikey_index_refuses_an_element_another_document_holds(
    tmp_path: Path, built_over_documents: bool
) -> None:
    """The manual ("Unique Multikey Index"): a document may repeat an element in its own
    array, but not hold one that another document's array holds. mongomock compares whole
    arrays, and takes [1, 2] and [2, 3] for distinct."""
    _refused_as_duplicates(tmp_path, "u", [1, 2, 2], [2, 3], built_over_documents)


def test_an_id_equal_as_a_number_to_a_stored_one_is_a_duplicate_like_mongomock(
    tmp_path: Path,
) -> None:
    with _both(tmp_path) as (plain, embedded):
        for collection in (plain, embedded):
            collection.insert_one({"_id": 1})
            collection.insert_one({"_id": 2.5})
            for twin in (1.0, Int64(1)):
                with pytest.raises(DuplicateKeyError):
                    collection.insert_one({"_id": twin})
            collection.insert_one({"_id": 2})  # near is not equal
        assert embedded.find({}, sort=[("_id", 1)]) == list(plain.find({}, sort=[("_id", 1)]))


# -- null on a path through an array of documents -------------------------------------------


def test_null_on_a_path_through_an_array_of_documents_finds_the_same_with_an_index(
    tmp_path: Path,
) -> None:
    docs: list[dict[str, Any]] = [
        {"a": [{"b": 1}, {"c": 2}]},  # an element without b: matches null
        {"a": [{"b": 1}]},
        {"a": []},
        {},
        {"a": [1]},
        {"a": {"b": None}},
        {"a": [{"b": None}]},
    ]
    with _both(tmp_path) as (plain, embedded):
        _load((plain, embedded), docs, [("a.b", 1)])
        for query in ({"a.b": None}, {"a.b": {"$in": [None, 1]}}, {"a.b": {"$eq": None}}):
            assert _ids(embedded.find(query)) == _ids(plain.find(query))
            assert embedded.count_documents(query) == plain.count_documents(query)


# -- positional paths -------------------------------------------------------------------------

POSITIONAL_DOCS: list[dict[str, Any]] = [
    {"a": [3, 1]},
    {"a": [1, 9]},
    {"a": [2]},
    {"a": {"0": 7}},
    {"a": []},
    {"b": 1},
    {"a": [[0], 5]},
    {"a": [{"x": 4}, {"x": 0}]},
]


@pytest.mark.parametrize("index", [None, [("a.0", 1)], [("a.0", -1), ("_id", 1)]])
def test_a_positional_path_finds_and_sorts_like_mongomock(
    tmp_path: Path, index: list[tuple[str, int]] | None
) -> None:
    with _both(tmp_path) as (plain, embedded):
        _load((plain, embedded), POSITIONAL_DOCS, index)
        for query in ({"a.0": 1}, {"a.0": 0}, {"a.0": {"$in": [2, 7]}}, {"a.0": None}):
            assert _ids(embedded.find(query)) == _ids(plain.find(query))
        for direction in (1, -1):
            sort = [("a.0", direction)]
            assert _ids(embedded.find({}, sort=sort)) == _ids(plain.find({}, sort=sort))
            limited = _ids(plain.find({}, sort=sort, limit=3))
            assert _ids(embedded.find({}, sort=sort, limit=3)) == limited


@pytest.mark.parametrize("index", [None, [("a.0.x", 1)]])
def test_a_positional_path_into_an_array_of_documents_finds_like_mongomock(
    tmp_path: Path, index: list[tuple[str, int]] | None
) -> None:
    docs: list[dict[str, Any]] = [
        {"a": [{"x": 4}, {"x": 0}]},
        {"a": [{"x": 0}, {"x": 4}]},
        {"a": [{"y": 0}]},
        {"a": {"0": {"x": 4}}},
    ]
    with _both(tmp_path) as (plain, embedded):
        _load((plain, embedded), docs, index)
        for query in ({"a.0.x": 4}, {"a.0.x": 0}, {"a.0.x": None}):
            assert _ids(embedded.find(query)) == _ids(plain.find(query))
        sort = [("a.0.x", 1)]
        assert _ids(embedded.find({}, sort=sort)) == _ids(plain.find({}, sort=sort))


# -- integers past 2**53 ----------------------------------------------------------------------

LARGE = [2**53 + 1, 2**53, 2**53 + 2, float(2**53), -(2**53) - 1, 2**62 + 1, 2**62, 2**63 - 1]


@pytest.mark.parametrize("index", [None, [("k", 1)], [("k", -1)]])
def test_integers_past_2_53_sort_by_value_like_mongomock(
    tmp_path: Path, index: list[tuple[str, int]] | None
) -> None:
    with _both(tmp_path) as (plain, embedded):
        _load((plain, embedded), [{"k": number} for number in LARGE], index)
        for direction in (1, -1):
            sort = [("k", direction)]
            assert _ids(embedded.find({}, sort=sort)) == _ids(plain.find({}, sort=sort))
            assert _ids(embedded.find({}, sort=sort, limit=3)) == _ids(
                plain.find({}, sort=sort, limit=3)
            )
        for number in LARGE:
            assert _ids(embedded.find({"k": number})) == _ids(plain.find({"k": number}))


# -- a multi-document update that fails on one document -------------------------------------


def test_an_update_many_that_fails_keeps_the_documents_before_the_failure(
    tmp_path: Path,
) -> None:
    """The manual: a write is atomic on one document only, and ``updateMany`` is not atomic
    across them; the documents updated before an error stay updated, and the one that fails
    is left whole (mongomock applies its $set and raises a raw TypeError)."""
    database = open_embedded(tmp_path)
    things = database["things"]
    things.insert_many([{"_id": 0, "k": 1}, {"_id": 1, "k": "a"}, {"_id": 2, "k": 2}])
    with pytest.raises(WriteError) as raised:
        things.update_many({}, {"$set": {"seen": True}, "$inc": {"k": 1}})
    assert raised.value.code == 14  # TypeMismatch, as a server answers $inc on a string
    assert "_id 1" in str(raised.value)
    assert things.find({}, sort=[("_id", 1)]) == [
        {"_id": 0, "k": 2, "seen": True},
        {"_id": 1, "k": "a"},
        {"_id": 2, "k": 2},
    ]
    database.close()


@pytest.mark.parametrize(
    ("query", "update", "after"),
    [
        # applied by mongomock's update code: 1 + 1 is the third document's 2
        ({}, {"$inc": {"u": 1}}, [11, 1, 2]),
        # a $set of top-level fields, applied in place: the second takes the first's new 5
        ({"_id": {"$in": [0, 1]}}, {"$set": {"u": 5}}, [5, 1, 2]),
    ],
)
def test_an_update_many_a_unique_index_refuses_keeps_the_documents_before_it(
    tmp_path: Path, query: dict[str, Any], update: dict[str, Any], after: list[int]
) -> None:
    """The first document stays updated, the refused one and the rest stay as they were,
    and the refusal is raised (as a server's ``updateMany`` stops at its first error)."""
    database = open_embedded(tmp_path)
    things = database["things"]
    things.create_index([("u", 1)], unique=True)
    things.insert_many([{"_id": 0, "u": 10}, {"_id": 1, "u": 1}, {"_id": 2, "u": 2}])
    with pytest.raises(DuplicateKeyError):
        things.update_many(query, update)
    assert [doc["u"] for doc in things.find({}, sort=[("_id", 1)])] == after
    database.close()


def test_an_update_one_a_document_cannot_take_raises_a_write_error(tmp_path: Path) -> None:
    database = open_embedded(tmp_path)
    things = database["things"]
    things.insert_one({"_id": 0, "k": "a"})
    with pytest.raises(WriteError) as raised:
        things.update_one({}, {"$push": {"k": 1}})
    assert raised.value.code == 14 and isinstance(raised.value.__cause__, AttributeError)
    assert things.find({}) == [{"_id": 0, "k": "a"}]
    database.close()


# -- malformed filters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"k": "zzz", "n": {"$foo": 1}},
        {"k": "zzz", "n": {"$in": 5}},
        {"k": "zzz", "$foo": 1},
        {"k": "zzz", "$or": []},
        {"k": "zzz", "$and": [{"n": {"$gt": 1, "$foo": 1}}]},
        {"k": "zzz", "n": {"$not": {"$foo": 1}}},
        {"k": "zzz", "n": {"$elemMatch": {"$foo": 1}}},
        {"k": "zzz", "n": {"$gt": 1, "m": 1}},
    ],
)
def test_a_malformed_filter_raises_even_when_an_index_finds_nothing(
    tmp_path: Path, query: dict[str, Any]
) -> None:
    """The manual: a server parses the whole filter, and an unknown operator or an operator
    given the wrong kind of value is an error (code 2, BadValue), whatever the documents.
    mongomock looks at a term only when a document reaches it."""
    database = open_embedded(tmp_path)
    things = database["things"]
    things.create_index([("k", 1)])
    things.insert_one({"_id": 0, "k": "a", "n": 1})
    for call in (
        lambda: things.find(query),
        lambda: things.count_documents(query),
        lambda: things.aggregate([{"$match": {}}, {"$match": query}]),
        lambda: things.update_many(query, {"$set": {"n": 2}}),
        lambda: things.delete_many(query),
        lambda: things.explain(query),
    ):
        with pytest.raises(OperationFailure) as raised:
            call()
        assert raised.value.code == 2
    assert things.find({}) == [{"_id": 0, "k": "a", "n": 1}]
    database.close()


# -- a no-op $set beside a NaN ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["update_one", "update_many"])
def test_a_set_that_changes_nothing_beside_a_nan_reports_no_change_like_mongomock(
    tmp_path: Path, method: str
) -> None:
    with _both(tmp_path) as (plain, embedded):
        results = []
        for collection in (plain, embedded):
            collection.insert_one({"_id": 0, "k": math.nan, "s": "a", "o": {"n": [math.nan]}})
            result = getattr(collection, method)({"_id": 0}, {"$set": {"s": "a"}})
            results.append((result.matched_count, result.modified_count))
        assert results[1] == results[0] == (1, 0)


# -- files whose indexes an older version keyed ---------------------------------------------


def test_indexes_an_older_version_keyed_are_rebuilt_once_on_write_open(tmp_path: Path) -> None:
    """Only the indexes whose keys changed: a positional path, and a dotted path through an
    array; an index of scalars keeps its entries (no rebuild of a large store's indexes)."""
    database = open_embedded(tmp_path)
    things = database["things"]
    things.create_index([("a.0", 1)], name="positional")
    things.create_index([("d.f", 1)], name="through_arrays")
    things.create_index([("k", 1)], name="scalars")
    things.insert_many(
        [{"_id": i, "a": [i % 3, 9], "d": [{"f": 1}, {"g": 1}], "k": i} for i in range(6)]
    )
    database.close()
    connection = sqlite3.connect(tmp_path / "cosmos.sqlite3")
    # As an older version left them: no entries where keys changed (positional ones were all
    # null, elements without f had none), and no mark. The scalar index is emptied too, to
    # show that it is not rebuilt.
    connection.execute("DELETE FROM entries")
    connection.execute("DELETE FROM meta WHERE name = 'index_keys'")
    connection.commit()
    connection.close()
    database = open_embedded(tmp_path)
    things = database["things"]
    assert _ids(things.find({"a.0": 1})) == [1, 4]
    assert _ids(things.find({}, sort=[("a.0", -1), ("_id", 1)])) == [2, 5, 1, 4, 0, 3]
    assert _ids(things.find({"d.f": None})) == list(range(6))
    database.close()
    connection = sqlite3.connect(tmp_path / "cosmos.sqlite3")
    held = dict(
        connection.execute(
            "SELECT b.name, count(e.key) FROM built_indexes b "
            "LEFT JOIN entries e ON e.ix = b.ix GROUP BY b.name"
        ).fetchall()
    )
    connection.close()
    assert held == {"positional": 6, "through_arrays": 12, "scalars": 0}
