"""Index keys: bytes whose order is MongoDB's sort order, and the index specs that make them."""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import bson
import bson.errors
from bson import ObjectId
from bson.binary import Binary
from mongomock import filtering as _filtering

# mongomock's own type hints claim pymongo's classes; the engine treats it as untyped.
filtering: Any = _filtering


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


def _present(value: Any) -> bool:
    """Whether a path's value (``_path_value``) is there: not missing, and not only array
    elements without the field."""
    if isinstance(value, list):
        return any(item is not _HOLE for item in value)
    return value is not _MISSING
