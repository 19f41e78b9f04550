"""Planning: which key ranges of which index can hold a query's answer, and the checks a
filter passes before any document is read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import bson
import bson.errors
from bson import ObjectId
from bson.code import Code
from pymongo.errors import OperationFailure

from cosmos_mongo.embedded.keys import (
    _NULL,
    _after,
    _component,
    _equality_keys,
    _IndexSpec,
    _scalar_bytes,
)
from cosmos_mongo.embedded.storage import _encode_key, _Stored

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
    # The checks of the entries the race read (reading._Reader._check_spans), made only if
    # ``counted`` is used: a losing plan's count decides nothing.
    check_counted: Callable[[], None] | None = None
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
