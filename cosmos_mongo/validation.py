"""Checks for values that come from outside: arguments from callers, the CLI and MCP tools.

Every check either returns the value in canonical form or raises
:class:`~cosmos_mongo.errors.InvalidInputError` naming the field and the rule. Checks run
before any database call, so a rejected call writes nothing.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Literal, get_args

import bson

from cosmos_mongo.errors import InvalidInputError

PROMPT_ID_PREFIX: Final = "ps_"
RUN_ID_PREFIX: Final = "rs_"
# New ids are 32 hex characters; the predecessor's were shorter hashes (e.g. 12 hex), and
# imported ids must stay reachable. Hex only: no operator, dot or dollar can get through.
_ID_PATTERNS: Final = {
    prefix: re.compile(prefix + r"[0-9a-f]{8,64}") for prefix in (PROMPT_ID_PREFIX, RUN_ID_PREFIX)
}
_ID_PREFIX_PATTERN: Final = re.compile(r"[a-z_0-9]{0,67}")

MAX_PROMPT_TEXT_CHARS: Final = 10_000
MAX_QUERY_CHARS: Final = 500
MAX_MAPPING_DEPTH: Final = 8
MAX_MAPPING_ITEMS: Final = 500
MAX_STRING_CHARS: Final = 10_000
MAX_LIMIT: Final = 1000

ModelType = Literal["transfer", "enhance", "upscale", "predict", "reason"]
RunStatus = Literal[
    "pending", "running", "completed", "failed", "cancelled", "uploading", "downloading"
]
MODEL_TYPES: Final = frozenset(get_args(ModelType))
RUN_STATUSES: Final = frozenset(get_args(RunStatus))
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})


class Unset(enum.Enum):
    """The default of a keyword that was not given, where None is a value (it clears)."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET
# The predecessor duplicated these into prompt parameters; the enhance run now owns them.
LEGACY_ENHANCEMENT_KEYS: Final = frozenset(
    {"enhancement_model", "enhanced_at", "last_enhancement_run_id", "parent_prompt_id"}
)


def check_id(value: object, prefix: str, field: str) -> str:
    """Return ``value`` if it is a well-formed id with ``prefix``: never a dict or operator."""
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string id, got {type(value).__name__}")
    if _ID_PATTERNS[prefix].fullmatch(value) is None:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise InvalidInputError(
            field, f"must be {prefix!r} followed by 8 to 64 lowercase hex characters, got {shown!r}"
        )
    return value


def check_prompt_id(value: object, field: str = "prompt_id") -> str:
    return check_id(value, PROMPT_ID_PREFIX, field)


def check_run_id(value: object, field: str = "run_id") -> str:
    return check_id(value, RUN_ID_PREFIX, field)


def check_text(value: object, field: str, max_chars: int = MAX_PROMPT_TEXT_CHARS) -> str:
    """Return non-blank text without NUL bytes, at most ``max_chars`` long, stripped."""
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError(field, "must not contain NUL bytes")
    check_unicode(value, field)
    text = value.strip()
    if not text:
        raise InvalidInputError(field, "must not be empty or only whitespace")
    if len(text) > max_chars:
        raise InvalidInputError(field, f"must be at most {max_chars} characters, got {len(text)}")
    return text


def check_unicode(value: str, field: str) -> str:
    """Refuse a lone surrogate: what Python makes of invalid UTF-8 (in a CLI argument, say),
    which no database can store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            field,
            f"must be valid Unicode text; position {exc.start} holds a lone surrogate "
            "(invalid UTF-8)",
        ) from None
    return value


def check_document_fields(value: object, field: str) -> dict[str, Any]:
    """Return a copy of a JSON-like mapping that is safe to store as a sub-document.

    Keys must be non-empty strings without ``$`` at the start, ``.`` or NUL (MongoDB field-name
    rules); values are strings, finite numbers, booleans, None, lists and nested mappings.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, f"must be an object, got {type(value).__name__}")
    counter = [0]
    return _check_mapping(value, field, 1, counter)


def _check_mapping(
    value: Mapping[Any, Any], path: str, depth: int, counter: list[int]
) -> dict[str, Any]:
    if depth > MAX_MAPPING_DEPTH:
        raise InvalidInputError(path, f"must not nest deeper than {MAX_MAPPING_DEPTH} levels")
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(path, f"keys must be non-empty strings, got {key!r}")
        if key.startswith("$") or "." in key or "\x00" in key:
            raise InvalidInputError(
                path, f"key {key!r} must not start with '$' or contain '.' or NUL"
            )
        check_unicode(key, path)
        result[key] = _check_value(item, f"{path}.{key}", depth, counter)
    return result


def _check_value(value: object, path: str, depth: int, counter: list[int]) -> Any:
    counter[0] += 1
    if counter[0] > MAX_MAPPING_ITEMS:
        raise InvalidInputError(path, f"must hold at most {MAX_MAPPING_ITEMS} values in all")
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise InvalidInputError(path, "integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(path, "numbers must be finite")
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInputError(path, "must not contain NUL bytes")
        check_unicode(value, path)
        if len(value) > MAX_STRING_CHARS:
            raise InvalidInputError(path, f"strings must be at most {MAX_STRING_CHARS} characters")
        return value
    if isinstance(value, Mapping):
        return _check_mapping(value, path, depth + 1, counter)
    if isinstance(value, list | tuple):
        if depth + 1 > MAX_MAPPING_DEPTH:
            raise InvalidInputError(path, f"must not nest deeper than {MAX_MAPPING_DEPTH} levels")
        return [
            _check_value(item, f"{path}[{i}]", depth + 1, counter) for i, item in enumerate(value)
        ]
    raise InvalidInputError(
        path, f"must be a string, number, boolean, null, list or object, got {type(value).__name__}"
    )


def check_parameters(value: object, field: str = "parameters") -> dict[str, Any]:
    """Check prompt parameters from a caller: JSON-like, no enhancement metadata.

    ``enhanced`` belongs to the library (enhancement, revert, import and migrate set it), so a
    caller cannot make the flag disagree with the runs; nor can it write the legacy keys.
    """
    parameters = check_document_fields(value, field)
    if "enhanced" in parameters:
        raise InvalidInputError(
            f"{field}.enhanced",
            "is set by the library when a prompt is enhanced (enhance_prompt) or reverted; "
            "leave it out",
        )
    legacy = sorted(LEGACY_ENHANCEMENT_KEYS.intersection(parameters))
    if legacy:
        raise InvalidInputError(
            field,
            f"must not contain {', '.join(legacy)}: enhancement details live on the enhance run",
        )
    return parameters


MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024  # MongoDB's BSON document limit


def check_document_size(document: Mapping[str, Any], field: str) -> None:
    """Refuse what a server would refuse: a document (or an update) over 16 MB of BSON."""
    size = len(bson.encode(document))
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidInputError(
            field, f"makes a document of {size} bytes; MongoDB stores at most {MAX_DOCUMENT_BYTES}"
        )


def check_progress(value: object, field: str = "progress") -> None:
    """Refuse a ``progress`` argument that is neither None nor callable.

    Raises:
        InvalidInputError: on ``field``.
    """
    if value is not None and not callable(value):
        raise InvalidInputError(
            field,
            "must be a function called as progress(stage, done, total), or None; "
            f"got {type(value).__name__}",
        )


def check_flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(field, f"must be true or false, got {value!r}")
    return value


def check_choice(value: object, field: str, choices: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(
            field, f"must be one of {', '.join(sorted(choices))}; got {value!r}"
        )
    return value


def check_status(value: object, field: str = "status") -> str:
    return check_choice(value, field, RUN_STATUSES)


def check_id_prefix(value: object, field: str = "prefix") -> str:
    """The start of an id, for completions: up to 67 of the characters ids are made of."""
    if not isinstance(value, str) or not _ID_PREFIX_PATTERN.fullmatch(value):
        raise InvalidInputError(field, "must be the start of an id: lowercase hex, 'ps_', 'rs_'")
    return value


def check_model_type(value: object, field: str = "model_type") -> str:
    return check_choice(value, field, MODEL_TYPES)


def check_rating(value: object, field: str = "rating") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise InvalidInputError(field, f"must be a whole number from 1 to 5, got {value!r}")
    return value


def check_limit(value: object, field: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidInputError(
            field, f"must be a whole number from 1 to {MAX_LIMIT}, got {value!r}"
        )
    return value


MAX_OFFSET: Final = 2**31 - 1


def check_position(value: object, field: str = "after") -> tuple[Any, Any] | None:
    """A keyset position: None, or a previous page's ``after``, ``(created_at, _id)``: a
    datetime (None for a document stored without one) and a scalar id. A document, list or
    other container is refused in either place, so a position cannot carry a query operator
    into the filter."""
    if value is None:
        return None
    if isinstance(value, tuple | list) and len(value) == 2:
        created_at, document_id = value
        if (created_at is None or isinstance(created_at, datetime)) and not isinstance(
            document_id, Mapping | list | tuple | set
        ):
            return created_at, document_id
    raise InvalidInputError(
        field, f"must be None or a previous page's after, (created_at, id), got {value!r}"
    )


def check_offset(value: object, field: str = "offset") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OFFSET:
        raise InvalidInputError(
            field, f"must be a whole number from 0 to {MAX_OFFSET}, got {value!r}"[:200]
        )
    return value


def check_optional_text(value: object, field: str, max_chars: int = MAX_STRING_CHARS) -> str | None:
    if value is None:
        return None
    return check_text(value, field, max_chars)
