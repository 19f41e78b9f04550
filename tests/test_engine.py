"""The embedded engine's indexes on disk: answers equal plain mongomock's on random data,
files of the first format are upgraded, and compaction gives the space of deletions back."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import bson
import mongomock
import pytest
from bson import ObjectId
from bson.code import Code
from bson.errors import InvalidDocument
from hypothesis import example, given
from hypothesis import strategies as st
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from cosmos_mongo import CosmosStore, enhancement, legacy, workflows
from cosmos_mongo import queries as q
from cosmos_mongo.embedded import open_embedded
from cosmos_mongo.embedded.keys import _IndexSpec
from cosmos_mongo.embedded.storage import _may_hold_empty_timestamp
from tests.helpers.budget import randomized

START = datetime(2026, 1, 1, tzinfo=UTC)

# -- random documents and queries, one engine against plain mongomock ------------------------

# Small pools, so documents and query bounds collide often (equal values are where range
# ends and tie orders go wrong); the rarer types still come up.
common = st.one_of(
    st.sampled_from(["a", "ab", "b"]),
    st.integers(0, 2),
    st.integers(0, 3).map(lambda s: START + timedelta(seconds=s)),
)
values = st.one_of(
    common,
    common,
    st.sampled_from(["", "é", "a\x00b", 0.5, -1.5, 2.0, True, False, None]),
)
field_value = st.one_of(
    values,
    values,
    st.lists(values, max_size=3),
    st.fixed_dictionaries({"x": values}),
)


def _documents(value: st.SearchStrategy[Any]) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.dictionaries(st.sampled_from(["k", "s", "t", "n"]), value, max_size=4).map(
            lambda doc: {**doc, "nested": {"k": doc.get("k")}} if "s" in doc else doc
        ),
        max_size=25,
    )


# Scalars only, so the indexes keep their order and serve sorts; or with arrays and objects,
# which turn that off (and must still be found by equality).
dense = st.lists(
    st.fixed_dictionaries(
        {
            "k": st.sampled_from(["a", "b", 1]),
            "t": st.integers(0, 4).map(lambda s: START + timedelta(seconds=s)),
            "s": st.sampled_from(["a", "ab", "b"]),
        }
    ),
    min_size=4,
    max_size=25,
)
documents = st.one_of(dense, _documents(values), _documents(field_value))
INDEXES: list[tuple[list[tuple[str, int]], str, dict[str, Any]]] = [
    ([("k", 1), ("t", -1), ("_id", -1)], "k_t_id", {}),
    ([("t", -1), ("_id", -1)], "t_id", {}),
    ([("s", 1)], "s", {}),
    ([("nested.k", 1), ("t", 1)], "nested_k_t", {}),
    ([("n", -1), ("s", 1)], "n_s", {}),
    # partial indexes hold only their documents: usable only for filters that imply theirs
    ([("s", -1), ("_id", 1)], "s_present", {"partialFilterExpression": {"s": {"$exists": True}}}),
    ([("k", 1), ("n", 1)], "k_is_a", {"partialFilterExpression": {"k": "a"}}),
]
FIELDS = ["k", "s", "t", "n", "nested.k"]
scalar = st.one_of(common, common, st.sampled_from([True, False, None, ""]))
comparable = st.one_of(
    st.sampled_from(["a", "ab", "b"]),
    st.integers(0, 3).map(lambda s: START + timedelta(seconds=s)),
)
condition = st.one_of(
    scalar,
    st.builds(lambda v: {"$eq": v}, scalar),
    st.builds(lambda v: {"$in": v}, st.lists(scalar, max_size=3)),
    st.builds(lambda v: {"$ne": v}, scalar),
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$lt", "$lte", "$gt", "$gte"]), comparable),
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$lt", "$lte", "$gt", "$gte"]), comparable),
    st.builds(lambda a, b: {"$gte": a, "$lt": b}, comparable, comparable),
    st.builds(lambda a, b: {"$gt": a, "$lte": b}, comparable, comparable),
)
term = st.dictionaries(st.sampled_from(FIELDS), condition, min_size=1, max_size=2)
queries = st.one_of(
    st.just({}),
    term,
    # several equality prefixes of one index, merged into the sort's order
    st.builds(lambda v: {"k": {"$in": v}}, st.lists(common, min_size=2, max_size=3)),
    st.builds(lambda v, t: {"k": {"$in": v}, "t": t}, st.lists(common, min_size=2), condition),
    st.builds(lambda a, b: {"$and": [a, b]}, term, term),
    st.builds(lambda a, b: {"$or": [a, b]}, term, term),
    st.builds(lambda a, b, c: {**a, "$or": [b, c]}, term, term, term),
    st.builds(lambda ids: {"_id": {"$in": ids}}, st.lists(st.sampled_from(["d0", "d3", "dx"]))),
    # filters that imply a partial index's own, alone or with more
    st.just({"s": {"$exists": True}}),
    st.builds(lambda t: {"s": {"$exists": True}, **t}, term),
    st.builds(lambda t: {"k": "a", **t}, term),
    st.builds(lambda v: {"s": v, "k": "a"}, scalar),
)
# Sorts an index serves (walked in either direction) more often than chance would give.
served_sorts = st.sampled_from(
    [
        [("t", -1), ("_id", -1)],
        [("t", 1), ("_id", 1)],
        [("t", -1)],
        [("t", 1)],
        [("s", 1)],
        [("s", -1)],
        [("n", -1), ("s", 1)],
        [("s", -1), ("_id", 1)],
    ]
)
sorts = st.one_of(
    served_sorts,
    st.lists(
        st.tuples(st.sampled_from(["k", "t", "s", "n", "_id"]), st.sampled_from([1, -1])),
        max_size=3,
        unique_by=lambda item: item[0],
    ),
)


@randomized(3)
@given(
    docs=documents,
    query=queries,
    sort=sorts,
    skip=st.integers(0, 3),
    limit=st.integers(0, 5),
    changes=st.lists(st.tuples(st.integers(0, 30), term), max_size=4),
    removed=st.lists(st.integers(0, 30), max_size=3),
)
def test_every_query_shape_answers_like_plain_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[dict[str, Any]],
    query: dict[str, Any],
    sort: list[tuple[str, int]],
    skip: int,
    limit: int,
    changes: list[tuple[int, dict[str, Any]]],
    removed: list[int],
) -> None:
    plain = mongomock.MongoClient(tz_aware=True)["cosmos"]["things"]
    database = open_embedded(tmp_path_factory.mktemp("engine"))
    embedded = database["things"]
    for collection in (plain, embedded):
        for position, (keys, name, options) in enumerate(INDEXES):
            if position % 2 == 0:  # some indexes before the documents, some built over them
                collection.create_index(keys, name=name, **options)
        for i, doc in enumerate(docs):
            collection.insert_one({"_id": f"d{i}", **doc})
        for position, (keys, name, options) in enumerate(INDEXES):
            if position % 2 == 1:
                collection.create_index(keys, name=name, **options)
        for i, values_set in changes:  # updates move documents between index entries
            collection.update_one({"_id": f"d{i}"}, {"$set": _settable(values_set)})
        for i in removed:
            collection.delete_one({"_id": f"d{i}"})
    expected = list(plain.find(query, sort=sort or None, skip=skip, limit=limit))
    assert embedded.find(query, sort=sort or None, skip=skip, limit=limit) == expected
    assert embedded.count_documents(query) == plain.count_documents(query)
    window = {"skip": skip, **({"limit": limit} if limit else {})}  # a limit of 0 is refused
    assert embedded.count_documents(query, **window) == plain.count_documents(query, **window)
    pipeline = [
        {"$match": query},
        {"$lookup": {"from": "things", "localField": "k", "foreignField": "s", "as": "joined"}},
    ]
    by_id = sorted(plain.aggregate(pipeline), key=lambda d: d["_id"])
    assert sorted(embedded.aggregate(pipeline), key=lambda d: d["_id"]) == by_id
    database.close()


@randomized(1.5)
@given(
    docs=dense,
    sort=served_sorts,
    query=st.sampled_from([{}, {"k": "a"}, {"k": {"$in": ["a", "b"]}}, {"k": {"$in": ["b", 1]}}]),
    limit=st.integers(0, 6),
)
def test_sorted_walks_keep_ties_in_insertion_order_like_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[dict[str, Any]],
    sort: list[tuple[str, int]],
    query: dict[str, Any],
    limit: int,
) -> None:
    plain = mongomock.MongoClient(tz_aware=True)["cosmos"]["things"]
    database = open_embedded(tmp_path_factory.mktemp("ties"))
    embedded = database["things"]
    for collection in (plain, embedded):
        for keys, name, options in INDEXES:
            collection.create_index(keys, name=name, **options)
        for i, doc in enumerate(docs):
            collection.insert_one({"_id": f"d{i}", **doc})
    expected = [doc["_id"] for doc in plain.find(query, sort=sort, limit=limit)]
    assert [doc["_id"] for doc in embedded.find(query, sort=sort, limit=limit)] == expected
    database.close()


@contextlib.contextmanager
def _plain_and_embedded(directory: Path, docs: list[dict[str, Any]]) -> Iterator[tuple[Any, Any]]:
    """The same documents under the same indexes, in plain mongomock and in the engine."""
    plain = mongomock.MongoClient(tz_aware=True)["cosmos"]["things"]
    database = open_embedded(directory)
    try:
        for collection in (plain, database["things"]):
            for keys, name, options in INDEXES:
                collection.create_index(keys, name=name, **options)
            for i, doc in enumerate(docs):
                collection.insert_one({"_id": f"d{i}", **doc})
        yield plain, database["things"]
    finally:
        database.close()


@randomized(1)
@given(
    docs=dense,
    query=st.sampled_from([{}, {"k": "a"}, {"k": "zzz"}, {"_id": "d1"}, {"s": {"$gte": "b"}}]),
    sort=st.sampled_from([None, [("k", 1)], [("s", -1), ("_id", 1)]]),
    projection=st.sampled_from([None, {"k": 1}, {"s": 0}]),
    upsert=st.booleans(),
    after=st.booleans(),
)
def test_find_one_and_update_answers_and_writes_like_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[dict[str, Any]],
    query: dict[str, Any],
    sort: list[tuple[str, int]] | None,
    projection: dict[str, int] | None,
    upsert: bool,
    after: bool,
) -> None:
    def modify(collection: Any) -> tuple[Any, list[Any]]:
        answer = collection.find_one_and_update(
            query,
            {"$set": {"k": "b", "changed": True}, "$setOnInsert": {"_id": "new"}},
            projection=projection,
            sort=sort,
            upsert=upsert,
            return_document=ReturnDocument.AFTER if after else ReturnDocument.BEFORE,
        )
        return answer, list(collection.find({}, sort=[("_id", 1)]))

    with _plain_and_embedded(tmp_path_factory.mktemp("modify"), docs) as (plain, embedded):
        assert modify(embedded) == modify(plain)


set_values = st.one_of(
    st.sampled_from(["a", "b", 1, None, True, [1, "a"], {"k": "a"}, {"k": "a", "t": START}]),
    # microseconds and zones: stored as UTC milliseconds, as mongomock stores them
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-5))])),
    st.just(bson.Timestamp(0, 0)),  # an empty timestamp, which mongomock fills in
)


@randomized(1.5)
@given(
    docs=dense,
    query=st.sampled_from([{}, {"k": "a"}, {"k": "zzz"}, {"_id": "d1"}, {"t": {"$gte": START}}]),
    fields=st.dictionaries(st.sampled_from(["k", "s", "t", "fresh", "é"]), set_values, min_size=1),
    method=st.sampled_from(["update_one", "update_many", "before", "after"]),
)
@example(
    docs=[{"k": "a", "t": START, "s": "a"}] * 5,
    query={"k": "a"},
    fields={"t": datetime(2026, 1, 1, 1, 2, 3, 456789), "k": "a"},
    method="after",
)
@example(
    docs=[{"k": "a", "t": START, "s": "a"}] * 5,
    query={},
    fields={"fresh": bson.Timestamp(0, 0)},
    method="update_many",
)
@example(
    docs=[{"k": "a", "t": START, "s": "a"}] * 5,
    query={"k": "a"},
    fields={"fresh": {"at": [bson.Timestamp(0, 0)], "d": 0.0}},
    method="after",
)
@example(
    docs=[{"k": "a", "t": START, "s": "a"}] * 5, query={}, fields={"k": "a"}, method="update_one"
)
@example(docs=[{"k": 1, "t": START, "s": "a"}] * 5, query={}, fields={"k": True}, method="after")
def test_a_set_of_top_level_fields_answers_and_writes_like_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[dict[str, Any]],
    query: dict[str, Any],
    fields: dict[str, Any],
    method: str,
) -> None:
    """What the store's status and completion writes are: the engine applies it without
    mongomock's update machinery, and must count, store and return the same."""

    def apply(collection: Any) -> tuple[Any, list[Any]]:
        update = {"$set": fields}
        if method in ("update_one", "update_many"):
            raw = getattr(collection, method)(query, update).raw_result
            answer = {key: value for key, value in raw.items() if key != "connectionId"}
        else:
            answer = collection.find_one_and_update(
                query,
                update,
                sort=[("s", -1), ("_id", 1)],
                return_document=ReturnDocument.AFTER
                if method == "after"
                else ReturnDocument.BEFORE,
            )
        return answer, list(collection.find({}, sort=[("_id", 1)]))

    with _plain_and_embedded(tmp_path_factory.mktemp("set"), docs) as (plain, embedded):
        expected_answer, expected_documents = apply(plain)
        answer, documents = apply(embedded)
        assert _timestamps_filled(answer) == _timestamps_filled(expected_answer)
        assert _timestamps_filled(documents) == _timestamps_filled(expected_documents)


@pytest.mark.parametrize(
    ("document", "refusal"),
    [
        pytest.param({1: "a"}, ValueError, id="a key that is not a string"),
        pytest.param({"$k": "a"}, InvalidDocument, id="a top-level operator key"),
        pytest.param({"k": {"a\x00b": 1}}, InvalidDocument, id="a null character in a key"),
        pytest.param({"k": {1, 2}}, InvalidDocument, id="a value BSON cannot hold"),
        pytest.param({"_id": [1, 2]}, TypeError, id="an array _id"),
        pytest.param(("k", "a"), TypeError, id="not a mapping"),
    ],
)
def test_an_insert_mongomock_refuses_is_refused_alike_and_leaves_the_document_as_it_was(
    tmp_path: Path, document: Any, refusal: type[Exception]
) -> None:
    plain = mongomock.MongoClient(tz_aware=True)["cosmos"]["things"]
    with pytest.raises(refusal):
        plain.insert_one(document.copy() if isinstance(document, dict) else document)
    given_document = document.copy() if isinstance(document, dict) else document
    database = open_embedded(tmp_path)
    with pytest.raises(refusal):
        database["things"].insert_one(given_document)
    assert given_document == document  # no _id was set on a refused document
    assert database["things"].find({}) == []
    database.close()


def test_an_insert_fills_an_empty_timestamp_and_an_id_like_mongomock(tmp_path: Path) -> None:
    database = open_embedded(tmp_path)
    document: dict[str, Any] = {"k": "a", "at": bson.Timestamp(0, 0)}
    inserted = database["things"].insert_one(document).inserted_id
    assert isinstance(inserted, bson.ObjectId) and document["_id"] == inserted
    stored = database["things"].find_one({"_id": inserted})
    assert list(stored) == ["_id", "k", "at"]  # _id first, as a server stores it
    assert stored["at"] != bson.Timestamp(0, 0)
    database.close()


@pytest.mark.parametrize(
    ("document", "may_hold"),
    [
        ({"t": bson.Timestamp(0, 0)}, True),
        ({"": bson.Timestamp(0, 0)}, True),
        ({"a": {"b": [1, bson.Timestamp(0, 0)]}}, True),
        ({"t": bson.Timestamp(5, 1), "d": 0.0, "n": 0}, False),
        ({"s": "\x11" * 1000, "d": 0.0}, False),  # a string ends in 0x00 before the zeros
        ({"\x11": 0.0}, True),  # looks like one; a yes only costs the slower path
    ],
)
def test_a_body_that_may_hold_an_empty_timestamp_is_told_apart(
    document: dict[str, Any], may_hold: bool
) -> None:
    assert _may_hold_empty_timestamp(bson.encode(document)) is may_hold


def _timestamps_filled(value: Any) -> Any:
    """``value`` with each timestamp as a mark (mongomock fills empty ones from its own clock)
    and each scalar with its type, since ``==`` takes 1, 1.0 and True for one another."""
    if isinstance(value, dict):
        return {key: _timestamps_filled(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_timestamps_filled(item) for item in value]
    if isinstance(value, bson.Timestamp):
        return "empty timestamp" if value == bson.Timestamp(0, 0) else "filled timestamp"
    return (type(value).__name__, value)


@randomized(1)
@given(
    docs=documents,
    start=st.sampled_from(["$k", "$s", "$nested.k", "$missing"]),
    connect_from=st.sampled_from(["s", "nested.k", "k"]),
    max_depth=st.sampled_from([None, 0, 1]),
    depth_field=st.sampled_from([None, "depth"]),
    restrict=st.sampled_from([None, {"t": {"$exists": True}}, {"k": {"$ne": "a"}}]),
)
def test_graph_lookup_walks_like_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[dict[str, Any]],
    start: str,
    connect_from: str,
    max_depth: int | None,
    depth_field: str | None,
    restrict: dict[str, Any] | None,
) -> None:
    walk: dict[str, Any] = {
        "from": "things",
        "startWith": start,
        "connectFromField": connect_from,
        "connectToField": "k",
        "as": "reached",
    }
    walk.update({"maxDepth": max_depth} if max_depth is not None else {})
    walk.update({"depthField": depth_field} if depth_field else {})
    walk.update({"restrictSearchWithMatch": restrict} if restrict else {})
    pipeline = [{"$match": {}}, {"$graphLookup": walk}, {"$sort": {"_id": 1}}]
    with _plain_and_embedded(tmp_path_factory.mktemp("graph"), docs) as (plain, embedded):
        assert list(embedded.aggregate(pipeline)) == list(plain.aggregate(pipeline))


references = st.one_of(
    st.sampled_from(["d0", "d1", "d3", "dx", None, 1]),
    st.lists(st.sampled_from(["d0", "d2", "dx"]), max_size=2),
)


@randomized(1.5)
@given(
    docs=documents,
    refs=st.lists(references, max_size=25),
    lead=st.sampled_from([[], [{"$match": {}}], [{"$match": {"k": "a"}}]]),
    local=st.sampled_from(["ref", "k", "nested.k", "missing"]),
    foreign=st.sampled_from(["_id", "_id", "k"]),
    joined=st.sampled_from(
        [
            {"joined": {"$size": 0}},
            {"joined.k": "a"},
            {"joined.t": {"$gte": START + timedelta(seconds=1)}},
            {"joined": {"$ne": []}, "t": {"$lt": START + timedelta(seconds=3)}},
        ]
    ),
    query=queries,
    after=st.sampled_from(
        [[], [{"$project": {"k": 1, "joined._id": 1}}], [{"$unwind": "$joined"}, {"$match": {}}]]
    ),
)
def test_lookup_and_match_stages_answer_like_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[dict[str, Any]],
    refs: list[Any],
    lead: list[dict[str, Any]],
    local: str,
    foreign: str,
    joined: dict[str, Any],
    query: dict[str, Any],
    after: list[dict[str, Any]],
) -> None:
    with_refs = [
        {**doc, "ref": ref} if ref is not None else doc
        for doc, ref in itertools.zip_longest(docs, refs[: len(docs)])
    ]
    join = {"from": "things", "localField": local, "foreignField": foreign, "as": "joined"}
    pipeline = [*lead, {"$lookup": join}, {"$match": joined}, {"$match": query}, *after]
    with _plain_and_embedded(tmp_path_factory.mktemp("lookup"), with_refs) as (plain, embedded):
        assert embedded.aggregate(pipeline) == list(plain.aggregate(pipeline))


def test_a_lookup_gives_each_document_its_own_copy_of_what_it_joins(tmp_path: Path) -> None:
    docs = [{"k": "a"}, {"ref": "d0"}, {"ref": "d0"}, {"ref": ["d0", "d0"]}]
    join = {"from": "things", "localField": "ref", "foreignField": "_id", "as": "joined"}
    with _plain_and_embedded(tmp_path, docs) as (_, embedded):
        found = embedded.aggregate([{"$lookup": join}, {"$match": {"joined": {"$ne": []}}}])
    joined = [document["joined"][0] for document in found]
    assert joined == [{"_id": "d0", "k": "a"}] * 3
    assert len({id(document) for document in joined}) == 3


@pytest.mark.parametrize(
    "query",
    [
        {"k": {"$gt": "a", "$lte": "a"}},
        {"$and": [{"k": {"$gt": "a"}}, {"k": {"$lte": "a"}}]},
        {"k": {"$gte": "ab", "$lt": "ab"}, "t": START},
    ],
)
def test_a_range_each_side_of_which_another_element_meets_answers_like_mongomock(
    tmp_path: Path, query: dict[str, Any]
) -> None:
    """On arrays each side of a range may be met by a different element: the range that
    looks empty still matches them."""
    docs = [{"k": ["a", "ab"], "t": START}, {"k": "a", "t": START}, {"k": "ab", "t": START}]
    docs += [{"k": "b", "t": START}] * 20  # more than the few the planner reads whole
    with _plain_and_embedded(tmp_path, docs) as (plain, embedded):
        expected = [d["_id"] for d in plain.find(query)]
        assert expected == ["d0"]
        assert [d["_id"] for d in embedded.find(query)] == expected
        assert embedded.count_documents(query) == 1


@pytest.mark.parametrize("value", [2**53, 2**53 - 1, 2**53 + 1, -(2**53), 0.5, True, 1])
def test_equality_on_large_numbers_answers_like_mongomock(tmp_path: Path, value: Any) -> None:
    """Integers past 2**53 that no double holds are keyed exactly (the greatest double below
    and the distance from it): equality finds them alone, and 2**53 with its double."""
    plain = mongomock.MongoClient(tz_aware=True)["cosmos"]["things"]
    database = open_embedded(tmp_path)
    stored = [2**53 - 1, 2**53, 2**53 + 1, 2**53 + 2, -(2**53), -(2**53) - 1, 0.5, 1, True]
    for collection in (plain, database["things"]):
        collection.create_index([("k", 1)], name="k")
        for i, number in enumerate(stored):
            collection.insert_one({"_id": f"d{i}", "k": number})
    expected = [doc["_id"] for doc in plain.find({"k": value})]
    assert [doc["_id"] for doc in database["things"].find({"k": value})] == expected
    database.close()


@pytest.mark.parametrize("direction", [1, -1])
def test_a_sorted_page_over_arrays_names_each_document_once_like_mongomock(
    tmp_path: Path, direction: int
) -> None:
    """More documents than the few the planner reads whole, several holding arrays, which
    have an entry per element: each document comes once, in mongomock's order."""
    docs = [{"s": ["b", "a"] if i % 3 == 0 else "ab", "t": START} for i in range(30)]
    with _plain_and_embedded(tmp_path, docs) as (plain, embedded):
        for query in ({}, {"s": {"$in": ["a", "b", "ab"]}}):
            for limit in (1, 4, 12):
                expected = [
                    d["_id"] for d in plain.find(query, sort=[("s", direction)], limit=limit)
                ]
                found = embedded.find(query, sort=[("s", direction)], limit=limit)
                assert [d["_id"] for d in found] == expected


@pytest.mark.parametrize(
    "query",
    [
        {"$or": [{"k": "a", "s": "b"}, {"s": "a"}]},  # a branch its index only narrows
        {"t": START, "$or": [{"k": "a"}, {"s": "ab"}]},  # a term beside exact branches
        {"$or": [{"k": 2**53 + 1}, {"s": "a"}]},  # a number its key cannot decide
        {"$or": [{"k": "b"}, {"s": {"$gte": "ab"}}]},  # a range branch
    ],
)
def test_an_or_answers_like_mongomock_whether_or_not_its_branches_decide(
    tmp_path: Path, query: dict[str, Any]
) -> None:
    docs = [
        {"k": k, "s": s, "t": START + timedelta(seconds=i % 2)}
        for i, (k, s) in enumerate(
            itertools.product(["a", "b", 2**53, 2**53 + 2], ["a", "ab", "b"])
        )
    ]
    with _plain_and_embedded(tmp_path, docs) as (plain, embedded):
        expected = [d["_id"] for d in plain.find(query, sort=[("_id", 1)])]
        assert [d["_id"] for d in embedded.find(query, sort=[("_id", 1)])] == expected
        assert expected  # the query finds something, and leaves something out
        assert len(expected) < len(docs)


# -- positional paths, arrays of documents, integers past 2**53 -------------------------------

# Integers no double holds beside their neighbours and the doubles between them.
LARGE = [2**53, 2**53 + 1, 2**53 + 2, float(2**53), float(2**53 + 2), 2**62 + 1, -(2**53) - 1]
small = st.one_of(st.integers(0, 2), st.sampled_from(["a", "b", None, 1.0]))
number = st.one_of(st.sampled_from(LARGE), st.integers(0, 2))
element = st.one_of(
    small,
    st.sampled_from(LARGE),
    st.fixed_dictionaries({}, optional={"x": small, "y": small}),
    st.lists(small, max_size=2),
)
shaped = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "a": st.one_of(
                st.lists(element, max_size=3),
                st.fixed_dictionaries({}, optional={"0": small, "x": small}),
                small,
            ),
            "big": number,
        },
    ),
    max_size=20,
)
SHAPED_INDEXES: list[list[tuple[str, int]]] = [
    [("a.0", 1)],
    [("a.x", -1), ("_id", 1)],
    [("a.0.x", 1)],
    [("big", 1)],
    [("a", 1), ("big", -1)],
]
shaped_queries = st.one_of(
    st.builds(lambda v: {"a.0": v}, st.one_of(small, st.sampled_from(LARGE))),
    st.builds(lambda v: {"a.0": {"$in": v}}, st.lists(small, min_size=1, max_size=3)),
    st.builds(lambda v: {"a.x": v}, small),  # None among them: an element without x matches
    st.just({"a.x": None}),
    st.builds(lambda v: {"a.0.x": v}, small),
    st.builds(lambda v: {"big": v}, number),
    st.builds(lambda v: {"big": {"$in": v}}, st.lists(number, min_size=1, max_size=3)),
    st.builds(lambda v: {"a": v}, st.one_of(small, st.sampled_from(LARGE))),
    st.just({}),
)
shaped_sorts = st.sampled_from(
    [[], [("a.0", 1)], [("a.0", -1)], [("big", 1)], [("big", -1)], [("a.0.x", 1), ("big", -1)]]
)


@randomized(1.5)
@given(
    docs=shaped,
    indexed=st.lists(st.sampled_from(range(len(SHAPED_INDEXES))), unique=True, max_size=3),
    query=shaped_queries,
    sort=shaped_sorts,
    skip=st.integers(0, 3),
    limit=st.integers(0, 4),
)
def test_positional_paths_arrays_of_documents_and_large_integers_answer_like_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    docs: list[dict[str, Any]],
    indexed: list[int],
    query: dict[str, Any],
    sort: list[tuple[str, int]],
    skip: int,
    limit: int,
) -> None:
    plain = mongomock.MongoClient(tz_aware=True)["cosmos"]["things"]
    database = open_embedded(tmp_path_factory.mktemp("shaped"))
    embedded = database["things"]
    for collection in (plain, embedded):
        for position in indexed[:1]:  # one index before the documents, the rest over them
            collection.create_index(SHAPED_INDEXES[position])
        for i, doc in enumerate(docs):
            collection.insert_one({"_id": i, **doc})
        for position in indexed[1:]:
            collection.create_index(SHAPED_INDEXES[position])
    expected = list(plain.find(query, sort=sort or None, skip=skip, limit=limit))
    assert embedded.find(query, sort=sort or None, skip=skip, limit=limit) == expected
    window = {"skip": skip, **({"limit": limit} if limit else {})}
    assert embedded.count_documents(query, **window) == plain.count_documents(query, **window)
    database.close()


def _exact(value: Any) -> Any:
    """A value as MongoDB's index compares it (the manual's comparison order): numbers by
    value whatever their type, objects field by field in order, arrays element by element."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", Fraction(value))
    if isinstance(value, dict):
        return ("object", tuple((name, _exact(item)) for name, item in value.items()))
    if isinstance(value, list):
        return ("array", tuple(_exact(item) for item in value))
    return ("null",) if value is None else (type(value).__name__, value)


def _unique_keys(document: dict[str, Any], path: str) -> set[Any]:
    """The keys a unique index on ``u`` or ``u.0`` gives ``document``, by the manual: one per
    array element (an empty array: undefined), null for a missing field."""
    value = document.get("u")
    if path == "u.0":
        if isinstance(value, list):
            value = value[0] if value else None
        elif isinstance(value, dict):
            value = value.get("0")
        else:
            value = None
    if isinstance(value, list):
        return {_exact(item) for item in value} or {("undefined",)}
    return {_exact(value)}


unique_values = st.one_of(
    small,
    st.sampled_from(LARGE),
    st.sampled_from([{"x": 1}, {"x": 1.0}, {"x": 1, "y": 2}, {"y": 2, "x": 1}, {"0": 1}, {}]),
    st.lists(st.one_of(small, st.sampled_from([{"x": 1}, {"x": 2}, 2**53 + 1])), max_size=3),
)


@randomized(1)
@given(
    values=st.lists(st.one_of(st.none(), unique_values), min_size=1, max_size=8),
    path=st.sampled_from(["u", "u.0"]),
    built_over=st.booleans(),
)
def test_a_unique_index_refuses_exactly_the_documents_that_share_a_key(
    tmp_path_factory: pytest.TempPathFactory, values: list[Any], path: str, built_over: bool
) -> None:
    """Objects, arrays (a key per element), positional paths and integers past 2**53, against
    the manual's rule: a document is refused when it shares an index key with another. (Not
    mongomock's: it compares whole arrays, and dicts without their order.) None stands for
    a document without ``u``."""
    database = open_embedded(tmp_path_factory.mktemp("unique"))
    collection = database["things"]
    documents = [{"_id": i} if v is None else {"_id": i, "u": v} for i, v in enumerate(values)]
    if built_over:
        collection.insert_many(documents)
        clash = any(
            _unique_keys(first, path) & _unique_keys(second, path)
            for first, second in itertools.combinations(documents, 2)
        )
        if clash:
            with pytest.raises(DuplicateKeyError):
                collection.create_index([(path, 1)], unique=True)
        else:
            collection.create_index([(path, 1)], unique=True)
    else:
        collection.create_index([(path, 1)], unique=True)
        held: list[dict[str, Any]] = []
        for document in documents:
            taken = any(_unique_keys(document, path) & _unique_keys(other, path) for other in held)
            if taken:
                with pytest.raises(DuplicateKeyError):
                    collection.insert_one(document)
            else:
                collection.insert_one(document)
                held.append(document)
        assert collection.find({}, sort=[("_id", 1)]) == held
    database.close()


def _settable(values_set: dict[str, Any]) -> dict[str, Any]:
    """A $set from a query term: its plain values (operators dropped)."""
    return {
        path: value
        for path, value in values_set.items()
        if not (isinstance(value, dict) and any(str(k).startswith("$") for k in value))
    } or {"k": "b"}


# -- the store's own query shapes, on both engines, through every helper ---------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, 3)),
        st.tuples(st.just("enhance-new"), st.integers(0, 9)),
        st.tuples(st.just("enhance-in-place"), st.integers(0, 9)),
        st.tuples(st.just("run"), st.integers(0, 9)),
        st.tuples(st.just("delete"), st.integers(0, 9)),
        st.tuples(st.just("status"), st.integers(0, 9)),
    ),
    min_size=1,
    max_size=14,
)


@randomized(0.4)
@given(steps=operations)
def test_every_helper_answers_on_disk_as_on_plain_mongomock(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    database = open_embedded(tmp_path_factory.mktemp("store"))
    stores = [CosmosStore(mongomock.MongoClient(tz_aware=True)["cosmos"]), CosmosStore(database)]
    for store in stores:
        with _same_ids_and_clock():
            store.ensure_indexes()
            _replay(store, steps)
    answers = [_everything(store) for store in stores]
    assert answers[1] == answers[0]
    database.close()


@contextlib.contextmanager
def _same_ids_and_clock() -> Iterator[None]:
    """Ids and times from counters, so two stores given the same calls hold the same data."""
    counter = itertools.count(1)
    ticks = itertools.count(1)
    patches = {
        "new_prompt_id": lambda: f"ps_{next(counter):032x}",
        "new_run_id": lambda: f"rs_{next(counter):032x}",
        "utc_now": lambda: START + timedelta(milliseconds=next(ticks)),
    }
    with pytest.MonkeyPatch.context() as patch:
        for module in (workflows, enhancement, legacy):
            for name, replacement in patches.items():
                if hasattr(module, name):
                    patch.setattr(module, name, replacement)
        yield


def _replay(store: CosmosStore, steps: list[tuple[str, int]]) -> None:
    for action, number in steps:
        prompts = [p.id for p in store.list_prompts(limit=100)]
        target = prompts[number % len(prompts)] if prompts else None
        if action == "create" or target is None:
            store.create_prompt(f"A robot arm stacks {number} blocks", {"video": "v.mp4"}, {})
        elif action.startswith("enhance"):
            store.enhance_prompt(
                target,
                create_new=action == "enhance-new",
                force_overwrite=True,
                enhanced_text=f"A robot arm stacks {number} red blocks, slowly.",
            )
        elif action == "run":
            store.create_run(target, {"steps": number}, initial_status="running")
        elif action == "delete":
            store.delete_prompt(target, force=True)
        else:
            runs = store.list_runs(limit=100)
            if runs:
                store.update_run_status(runs[number % len(runs)].id, "completed")


def _everything(store: CosmosStore) -> list[Any]:
    """What every read helper answers, for every prompt."""
    found: list[Any] = [
        store.list_prompts(limit=100),
        store.list_prompts(limit=3, offset=1),
        store.list_prompts(limit=100, enhanced=True),
        store.list_prompts(limit=100, enhanced=False),
        store.list_enhanced_prompts(limit=100),
        store.search_prompts("robot", limit=5),
        store.list_runs(limit=100),
        store.list_runs(limit=100, status="running"),
        store.list_runs(limit=100, model_type="enhance"),
        list(store.iter_prompts(batch_size=2)),
        list(store.iter_documents("prompts", batch_size=2)),
        list(store.iter_documents("runs", batch_size=3)),
        store.verify(quick=True),
    ]
    for prompt in store.list_prompts(limit=100):
        found += [
            store.get_prompt(prompt.id),
            store.list_runs(prompt_id=prompt.id, limit=100),
            store.get_enhancement_details(prompt.id),
            store.get_original_prompt(prompt.id),
            store.get_enhancement_history(prompt.id),
            store.get_lineage(prompt.id),
            store.preview_prompt_deletion(prompt.id),
        ]
    return found


# -- files of the first format --------------------------------------------------------------

FIRST_FORMAT = """
CREATE TABLE documents (
    collection TEXT NOT NULL, key BLOB NOT NULL, seq INTEGER NOT NULL, body BLOB,
    body_crc INTEGER, PRIMARY KEY (collection, key)
) WITHOUT ROWID;
CREATE INDEX documents_seq ON documents (seq);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (name, value) VALUES ('seq', 0), ('format', 1);
"""


def _first_format_file(data_dir: Path) -> CosmosStore:
    """A store on mongomock, and the same data written as 0.3 wrote its file: every document
    a row, a tombstone for a deleted one, the index catalog, no indexes on disk."""
    reference = CosmosStore(mongomock.MongoClient(tz_aware=True)["cosmos"])
    reference.ensure_indexes()
    for i in range(30):
        prompt = reference.create_prompt(f"A robot arm stacks {i} blocks", {}, {})
        if i % 3 == 0:
            reference.enhance_prompt(prompt.id, enhanced_text=f"A robot arm stacks {i} red ones.")
        reference.create_run(prompt.id, {"steps": i})
    data_dir.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(data_dir / "cosmos.sqlite3")
    connection.executescript(FIRST_FORMAT)
    rows: list[tuple[str, bytes, int, bytes | None, int | None]] = []
    for collection in ("prompts", "runs"):
        for doc in reference.db[collection].find({}):
            body = bson.encode(doc)
            rows.append(
                (collection, bson.encode({"_id": doc["_id"]}), len(rows), body, zlib.crc32(body))
            )
    rows.append(("prompts", bson.encode({"_id": "ps_" + "0" * 32}), len(rows), None, None))
    for spec in q.INDEXES:
        catalog = {
            "_id": f"{spec.collection}.{spec.name}",
            "collection": spec.collection,
            "name": spec.name,
            "keys": [list(key) for key in spec.keys],
            "options": dict(spec.options),
        }
        body = bson.encode(catalog)
        rows.append(
            (
                "system.indexes",
                bson.encode({"_id": catalog["_id"]}),
                len(rows),
                body,
                zlib.crc32(body),
            )
        )
    connection.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?)", rows)
    connection.commit()
    connection.close()
    return reference


def test_a_first_format_file_reads_read_only_and_upgrades_once_on_write_open(
    tmp_path: Path,
) -> None:
    reference = _first_format_file(tmp_path)
    expected = _everything(reference)
    with open_embedded(tmp_path, read_only=True) as database:
        assert _everything(CosmosStore(database)) == expected  # scans, untouched
    file = sqlite3.connect(tmp_path / "cosmos.sqlite3")
    assert file.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == (1,)
    file.close()
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        assert _everything(store) == expected
        connection = database.engine._conn
        assert connection.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == (4,)
        assert connection.execute(
            "SELECT count(*) FROM documents WHERE body IS NULL"
        ).fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM entries WHERE crc IS NULL").fetchone() == (
            0,
        )
        built = {name for (name,) in connection.execute("SELECT name FROM built_indexes")}
        assert built == {spec.name for spec in q.INDEXES}
        database.engine.stats.documents_decoded = 0
        assert len(store.list_prompts(limit=2)) == 2
        assert database.engine.stats.documents_decoded == 2  # served by the index built on open


def _partial_index_entries(connection: sqlite3.Connection) -> dict[str, int]:
    return dict(
        connection.execute(
            "SELECT b.name, count(e.arrival) FROM built_indexes b LEFT JOIN entries e "
            "ON e.ix = b.ix WHERE b.name IN "
            "('prompts_enhanced_created_at_id', 'runs_deletion_prompt_id', 'runs_revert_pending') "
            "GROUP BY b.name"
        ).fetchall()
    )


def test_partial_indexes_hold_only_their_documents_and_older_files_are_trimmed_on_write_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        originals = [
            store.create_prompt(f"A robot arm stacks {i} blocks", {}, {}) for i in range(6)
        ]
        child = store.enhance_prompt(originals[0].id, enhanced_text="In detail.")
        in_place = store.enhance_prompt(
            originals[1].id, enhanced_text="In detail.", create_new=False, force_overwrite=True
        )
        store.revert_enhancement(in_place.run_id)  # flagged, then unflagged
        expected = [store.get_prompt(child.enhanced_prompt_id)]
        assert store.list_enhanced_prompts() == expected
        assert _partial_index_entries(database.engine._conn) == {
            "prompts_enhanced_created_at_id": 1,  # of 7 prompts
            "runs_deletion_prompt_id": 0,
            "runs_revert_pending": 0,
        }
    # What 0.4 before this change wrote: an entry for every document in a partial index.
    monkeypatch.setattr(_IndexSpec, "holds", lambda self, document: True)
    file = sqlite3.connect(tmp_path / "cosmos.sqlite3")
    file.execute("DELETE FROM meta WHERE name = 'partial_entries'")
    file.commit()
    with open_embedded(tmp_path) as database:  # "trims", keeping every document
        pass
    file.execute("DELETE FROM meta WHERE name = 'partial_entries'")
    file.commit()
    assert _partial_index_entries(file)["prompts_enhanced_created_at_id"] == 7
    monkeypatch.undo()
    with open_embedded(tmp_path, read_only=True) as database:  # answers right, untouched
        assert CosmosStore(database).list_enhanced_prompts() == expected
    assert file.execute("SELECT 1 FROM meta WHERE name = 'partial_entries'").fetchone() is None
    with open_embedded(tmp_path) as database:
        assert CosmosStore(database).list_enhanced_prompts() == expected
        assert _partial_index_entries(database.engine._conn) == {
            "prompts_enhanced_created_at_id": 1,
            "runs_deletion_prompt_id": 0,
            "runs_revert_pending": 0,
        }
    file.close()


# -- space -----------------------------------------------------------------------------------


def test_after_deleting_half_and_compacting_the_file_is_close_to_a_fresh_one(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path / "used") as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        prompts = [
            store.create_prompt(f"A robot arm stacks {i} blocks " * 8, {}, {}) for i in range(600)
        ]
        for prompt in prompts[:300]:
            store.create_run(prompt.id, {"steps": 30})
        for prompt in prompts[::2]:
            store.delete_prompt(prompt.id, force=True)
        kept = {name: list(store.iter_documents(name)) for name in ("prompts", "runs")}
        before, after = database.compact()
        assert after < before
    with open_embedded(tmp_path / "fresh") as database:
        fresh = CosmosStore(database)
        fresh.ensure_indexes()
        for name, documents in kept.items():
            fresh.put_documents(name, documents)  # type: ignore[arg-type]
    used = (tmp_path / "used" / "cosmos.sqlite3").stat().st_size
    new = (tmp_path / "fresh" / "cosmos.sqlite3").stat().st_size
    assert used <= new * 1.2, (used, new)


def test_compact_refuses_on_a_read_only_store(tmp_path: Path) -> None:
    from cosmos_mongo import ReadOnlyError

    with open_embedded(tmp_path) as database:
        CosmosStore(database).create_prompt("A robot arm", {}, {})
    with open_embedded(tmp_path, read_only=True) as database, pytest.raises(ReadOnlyError):
        database.compact()


# -- cost: what SQLite does per helper call does not grow with the store ----------------------


def _sqlite_steps(database: Any, call: Any) -> int:
    """SQLite virtual-machine steps (in tens) one call takes: work, not time."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    database.engine._conn.set_progress_handler(count, 10)
    try:
        call()
    finally:
        database.engine._conn.set_progress_handler(None, 10)
    return steps[0]


def _helper_work(data_dir: Path, size: int) -> list[int]:
    """SQLite steps of each read helper on a store of ``size`` prompts besides its own."""
    with open_embedded(data_dir) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        for i in range(size):
            prompt = store.create_prompt(f"A robot arm stacks {i} blocks", {}, {})
            if i % 10 == 0:  # enhance runs too: what repair's look-ups must not walk
                store.enhance_prompt(prompt.id, enhanced_text=f"In detail, {i} blocks.")
            else:
                store.create_run(prompt.id, {})
        target = store.create_prompt("A robot arm stacks blocks", {}, {})
        child = store.enhance_prompt(target.id, enhanced_text="A robot arm stacks red ones.")
        store.create_run(target.id, {})
        calls = [
            lambda: store.get_prompt(target.id),
            lambda: store.list_prompts(limit=20),
            lambda: store.list_runs(prompt_id=target.id),
            lambda: store.get_enhancement_details(child.enhanced_prompt_id),
            lambda: store.get_enhancement_history(target.id),
            lambda: store.get_lineage(target.id),
            lambda: store.list_enhanced_prompts(5),
            # a scheduled repair: interrupted work through small (partial) indexes
            lambda: store.repair(quick=True),
        ]
        return [_sqlite_steps(database, call) for call in calls]


def test_the_helpers_do_the_same_sqlite_work_in_a_small_and_a_large_store(
    tmp_path: Path,
) -> None:
    small, large = _helper_work(tmp_path / "small", 50), _helper_work(tmp_path / "large", 1500)
    # Room for deeper B-trees and a plan race's capped first look (17 entries of each plan);
    # reading the 150 enhance runs of the large store would take about 130 more.
    assert all(big <= little + 20 for little, big in zip(small, large, strict=True)), (small, large)


# -- the _id index: ranges and sorts on _id, as mongod's _id index serves them --------------------

# _ids of every kind the engine narrows (strings and ObjectIds in order; numbers and dates by
# type), and one it does not (booleans). No two equal in Python, which mongomock would refuse.
string_ids = st.sampled_from(["", "a", "ab", "a\x00b", "b", "é", "d10", "d2", "zz"])
object_ids = st.sampled_from([ObjectId("0" * 24), ObjectId("5" * 24), ObjectId("6" * 24)])
any_ids = st.one_of(
    string_ids,
    object_ids,
    st.sampled_from([-2, 0, 3, 0.5, -1.5, True]),
    st.integers(0, 3).map(lambda s: START + timedelta(seconds=s)),
)
id_lists = st.one_of(
    st.lists(string_ids, unique=True, max_size=9),
    st.lists(object_ids, unique=True),
    st.lists(any_ids, unique=True, max_size=20),
)
id_bounds = st.one_of(
    string_ids,
    object_ids,
    # JavaScript code: a str that mongomock compares as a string, not one BSON stores as such
    st.sampled_from([-1, 0.5, float("-inf"), START + timedelta(seconds=1), False, None, Code("a")]),
)
id_range = st.one_of(
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$lt", "$lte", "$gt", "$gte"]), id_bounds),
    st.builds(lambda a, b: {"$gt": a, "$lte": b}, id_bounds, id_bounds),
    st.builds(lambda a, b: {"$gte": a, "$lt": b}, id_bounds, id_bounds),
)
id_queries = st.one_of(
    st.just({}),
    st.builds(lambda r: {"_id": r}, id_range),
    st.builds(lambda r, k: {"_id": r, "k": k}, id_range, st.sampled_from(["a", "b", 1])),
    st.builds(lambda a, b: {"$and": [{"_id": a}, {"_id": b}]}, id_range, id_range),
    st.builds(lambda a, k: {"$or": [{"_id": a}, {"k": k}]}, id_range, st.sampled_from(["a", 1])),
    st.builds(lambda r: {"_id": {**r, "$ne": "b"}}, id_range),
)
id_sorts = st.sampled_from(
    [None, [("_id", 1)], [("_id", -1)], [("_id", 1), ("k", -1)], [("k", 1), ("_id", -1)]]
)


@randomized(3)
@given(
    ids=id_lists,
    query=id_queries,
    sort=id_sorts,
    skip=st.integers(0, 2),
    limit=st.integers(0, 4),
    removed=st.lists(st.integers(0, 20), max_size=3),
)
def test_ranges_and_sorts_on_id_answer_like_plain_mongomock(
    tmp_path_factory: pytest.TempPathFactory,
    ids: list[Any],
    query: dict[str, Any],
    sort: list[tuple[str, int]] | None,
    skip: int,
    limit: int,
    removed: list[int],
) -> None:
    plain = mongomock.MongoClient(tz_aware=True)["cosmos"]["things"]
    database = open_embedded(tmp_path_factory.mktemp("ids"))
    embedded = database["things"]
    for collection in (plain, embedded):
        collection.create_index([("k", 1)], name="k")  # a plan to race the _id index's
        for position, document_id in enumerate(ids):
            collection.insert_one({"_id": document_id, "k": ["a", "b", 1][position % 3]})
        for position in removed:
            if position < len(ids):
                collection.delete_one({"_id": ids[position]})
    expected = list(plain.find(query, sort=sort, skip=skip, limit=limit))
    assert embedded.find(query, sort=sort, skip=skip, limit=limit) == expected
    assert embedded.count_documents(query) == plain.count_documents(query)
    database.close()


def _paged(collection: Any, start: Any, size: int) -> list[Any]:
    """Every _id of ``start``'s kind, a page of ``size`` after the last at a time, as
    ``iter_documents`` and verify's scan read them."""
    found: list[Any] = []
    while True:
        after = {"$gte": start} if not found else {"$gt": found[-1]}
        page = collection.find({"_id": after}, sort=[("_id", 1)], limit=size)
        found += [document["_id"] for document in page]
        if len(page) < size:
            return found


def test_paging_after_the_last_id_decodes_each_document_once(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database:
        things = database["things"]
        strings = [f"ps_{n:08x}" for n in range(0, 600, 2)]
        object_ids = [ObjectId(f"{n:024x}") for n in range(100)]
        things.insert_many([{"_id": i, "k": 1} for i in [*strings, 5, 2.5, *object_ids]])
        database.engine.stats.documents_decoded = 0
        assert _paged(things, "", 40) == sorted(strings)
        assert _paged(things, ObjectId("0" * 24), 40) == object_ids
        assert _paged(things, float("-inf"), 40) == [2.5, 5]
        # Without the _id index each page read the whole collection: 8 pages of 402 here.
        assert database.engine.stats.documents_decoded == len(strings) + 100 + 2
        page = things.find({}, sort=[("_id", -1)], limit=10)  # kinds in MongoDB's order
        assert [document["_id"] for document in page] == object_ids[::-1][:10]


def test_iter_documents_decodes_each_document_once(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        prompts = [
            store.create_prompt(f"A robot arm stacks {i} blocks", {}, {}) for i in range(120)
        ]
        database.engine.stats.documents_decoded = 0
        listed = [document["_id"] for document in store.iter_documents("prompts", batch_size=25)]
        assert listed == sorted(prompt.id for prompt in prompts)
        assert database.engine.stats.documents_decoded == len(prompts)


def _transfer_work(data_dir: Path, size: int) -> tuple[int, int]:
    """SQLite steps of a page of ``iter_documents`` from the middle of a store of ``size``
    prompts, and of ``put_documents`` of 50 new ones into it."""
    with open_embedded(data_dir) as database:
        store = CosmosStore(database)
        store.ensure_indexes()
        store.put_documents(
            "prompts",
            [
                q.prompt_document(f"ps_{n:032x}", "A robot arm", {}, {}, START)
                for n in range(0, 2 * size, 2)
            ],
        )
        middle = f"ps_{size:032x}"
        page = _sqlite_steps(
            database,
            lambda: database["prompts"].find(q.after_id(middle), sort=[("_id", 1)], limit=50),
        )
        batch = [
            q.prompt_document(f"ps_{n:032x}", "A robot arm", {}, {}, START)
            for n in range(size + 1, size + 101, 2)
        ]
        put = _sqlite_steps(database, lambda: store.put_documents("prompts", batch))
        assert store.put_documents("prompts", batch) == (0, 50, 0)
        return page, put


def test_export_and_copy_pages_do_the_same_sqlite_work_in_a_small_and_a_large_store(
    tmp_path: Path,
) -> None:
    small = _transfer_work(tmp_path / "small", 100)
    large = _transfer_work(tmp_path / "large", 3000)
    # Room for deeper B-trees; a page that read the collection would take about 100 times more.
    assert all(big <= little * 1.2 + 20 for little, big in zip(small, large, strict=True)), (
        small,
        large,
    )


def test_the_id_index_is_made_on_write_open_and_kept_by_writers_that_do_not_know_it(
    tmp_path: Path,
) -> None:
    with open_embedded(tmp_path) as database:
        database["things"].insert_many([{"_id": f"d{n}"} for n in range(5)])
    file = sqlite3.connect(tmp_path / "cosmos.sqlite3")
    file.execute("DROP INDEX documents_id")  # as a file written before the _id index
    file.commit()
    file.close()
    with open_embedded(tmp_path, read_only=True) as database:
        assert not database.engine.id_index
        found = database["things"].find({"_id": {"$gt": "d2"}}, sort=[("_id", -1)])
        assert [document["_id"] for document in found] == ["d4", "d3"]  # by a scan
    with open_embedded(tmp_path) as database:
        assert database.engine.id_index
    # A row written straight into the table (as by a version that has no _id index) is in it.
    file = sqlite3.connect(tmp_path / "cosmos.sqlite3")
    body = bson.encode({"_id": "d9"})
    file.execute(
        "INSERT INTO documents (collection, key, seq, body, body_crc, arrival) "
        "VALUES ('things', ?, 99, ?, ?, 99)",
        (body, body, zlib.crc32(body)),
    )
    file.commit()
    file.close()
    with open_embedded(tmp_path) as database:
        database.engine.stats.documents_decoded = 0
        found = database["things"].find({"_id": {"$gt": "d3"}}, sort=[("_id", 1)], limit=2)
        assert [document["_id"] for document in found] == ["d4", "d9"]
        assert database.engine.stats.documents_decoded == 2
