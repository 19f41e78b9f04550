"""Pure builders for filters, sorts, updates, pipelines and index definitions.

Nothing here performs I/O; every function returns plain data and is tested as data. Callers
pass values that :mod:`cosmos_mongo.validation` has already checked, so an id is always a
string and never an operator document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from bson import ObjectId

from cosmos_mongo.ops import Document, SortSpec
from cosmos_mongo.validation import LEGACY_ENHANCEMENT_KEYS as LEGACY_KEYS

PROMPTS: Final = "prompts"
RUNS: Final = "runs"
# Per-store secrets (the MCP server's task-id key): one document each, made on first use.
SECRETS: Final = "secrets"

# `_id` breaks ties within a millisecond: new ids are time-ordered, so the order is total,
# stable for skip paging, and newest first even for two writes in the same millisecond.
NEWEST_FIRST: Final[SortSpec] = (("created_at", -1), ("_id", -1))


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """An index the product relies on, created by name by ``ensure_indexes()``."""

    collection: str
    name: str
    keys: SortSpec
    options: dict[str, Any] = field(default_factory=dict)


ENHANCE: Final = "enhance"

# The indexes that serve a listing end in `created_at, _id` like NEWEST_FIRST, so a server
# walks them in order with no in-memory sort. (Their names end in `_id` since 0.2: the 0.1
# indexes without it are no longer used and may be dropped.)
INDEXES: Final[tuple[IndexSpec, ...]] = (
    IndexSpec(
        PROMPTS,
        "prompts_enhanced_created_at_id",
        (("parameters.enhanced", 1), ("created_at", -1), ("_id", -1)),
        {"partialFilterExpression": {"parameters.enhanced": True}},
    ),
    IndexSpec(PROMPTS, "prompts_created_at_id", (("created_at", -1), ("_id", -1))),
    IndexSpec(
        RUNS, "runs_prompt_id_created_at_id", (("prompt_id", 1), ("created_at", -1), ("_id", -1))
    ),
    # Not partial: $lookup joins on these fields with no room to repeat a model_type predicate.
    # They end in the listing sort so each branch of the history's $or comes out in order and
    # the server merges them (SORT_MERGE) instead of sorting in memory.
    IndexSpec(
        RUNS,
        "runs_original_prompt_id_created_at_id",
        (("outputs.original_prompt_id", 1), ("created_at", -1), ("_id", -1)),
    ),
    IndexSpec(
        RUNS,
        "runs_enhanced_prompt_id_created_at_id",
        (("outputs.enhanced_prompt_id", 1), ("created_at", -1), ("_id", -1)),
    ),
    # list_runs(status=...): "what failed", "what is still running"; and repair's look-up of
    # interrupted enhancements (status "running").
    IndexSpec(RUNS, "runs_status_created_at_id", (("status", 1), ("created_at", -1), ("_id", -1))),
    # Reverts interrupted between their writes: a handful at most, so a tiny partial index.
    IndexSpec(
        RUNS,
        "runs_revert_pending",
        (("outputs.revert_pending", 1),),
        {"partialFilterExpression": {"outputs.revert_pending": True}},
    ),
    # Runs marked by a deletion that has not finished: empty but for an interrupted one.
    IndexSpec(
        RUNS,
        "runs_deletion_prompt_id",
        (("deletion.prompt_id", 1),),
        {"partialFilterExpression": {"deletion.prompt_id": {"$exists": True}}},
    ),
    IndexSpec(
        RUNS,
        "runs_model_type_created_at_id",
        (("model_type", 1), ("created_at", -1), ("_id", -1)),
    ),
    # Not in the design's minimum: serves list_runs() with no prompt or model filter.
    IndexSpec(RUNS, "runs_created_at_id", (("created_at", -1), ("_id", -1))),
    # Legacy data: walks down lineage through parent_prompt_id keys; empty once migrated.
    IndexSpec(
        PROMPTS,
        "prompts_legacy_parent_prompt_id",
        (("parameters.parent_prompt_id", 1),),
        {"sparse": True},
    ),
)


# Names earlier versions created: the library owns them, so reconcile may drop them.
RETIRED_INDEX_NAMES: Final = frozenset(
    {
        "prompts_created_at",
        "prompts_enhanced_created_at",
        "runs_created_at",
        "runs_model_type_created_at",
        "runs_prompt_id_created_at",
        "runs_enhance_enhanced_prompt_id",
        "runs_enhance_original_prompt_id",
        "runs_original_prompt_id",  # 0.2: without the sort suffix
        "runs_enhanced_prompt_id",
    }
)
# The options that change what an index is; others (v, ns, background) do not.
_DEFINING_OPTIONS: Final = ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds")


def _canonical(value: Any) -> Any:
    """A value as comparable data: documents as sorted pairs whatever their mapping class
    (pymongo's ``list_indexes`` decodes them as ``SON``, mongomock as ``dict``), numbers of
    equal value equal (mongod may answer 1.0 for 1), booleans apart from numbers."""
    if isinstance(value, Mapping):
        return ("document", tuple(sorted((str(k), _canonical(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("array", tuple(_canonical(item) for item in value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return (type(value).__name__, value)


def _key_direction(direction: Any) -> int | str:
    """An index key's direction (1, -1; mongod may say 1.0) or type ("text", "2dsphere")."""
    if isinstance(direction, int | float) and not isinstance(direction, bool):
        return int(direction)
    return str(direction)


def index_definition(keys: Any, options: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two indexes the same index: ordered keys and the defining options, compared
    as data (a server's SON and our dicts are the same index)."""
    pairs = tuple((str(name), _key_direction(direction)) for name, direction in dict(keys).items())
    defining = tuple(
        (name, _canonical(options[name]))
        for name in _DEFINING_OPTIONS
        if options.get(name) not in (None, False)
    )
    return pairs, defining


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """How the indexes a collection has compare with the ones the library needs."""

    present: list[str] = field(default_factory=list)  # ours, as defined
    create: list[IndexSpec] = field(default_factory=list)
    reused: list[tuple[str, str]] = field(default_factory=list)  # (our name, the other name)
    changed: list[tuple[IndexSpec, str]] = field(default_factory=list)  # ours, defined otherwise
    conflicts: list[str] = field(default_factory=list)  # same keys, other options, not ours
    retired: list[tuple[str, str]] = field(default_factory=list)  # (collection, old name of ours)


def plan_indexes(existing: Mapping[str, Sequence[Mapping[str, Any]]]) -> IndexPlan:
    """Compare ``existing`` (collection -> ``list_indexes`` entries) with :data:`INDEXES`."""
    plan = IndexPlan()
    for spec in INDEXES:
        have = [entry for entry in existing.get(spec.collection, []) if entry["name"] != "_id_"]
        wanted = index_definition(spec.keys, spec.options)
        by_name = {entry["name"]: entry for entry in have}
        same = [e for e in have if index_definition(e["key"], e) == wanted]
        same_keys = [e for e in have if index_definition(e["key"], {})[0] == wanted[0]]
        if spec.name in by_name:
            if index_definition(by_name[spec.name]["key"], by_name[spec.name]) == wanted:
                plan.present.append(spec.name)
            else:
                plan.changed.append((spec, _describe(by_name[spec.name])))
        elif same:
            plan.reused.append((spec.name, same[0]["name"]))
        elif same_keys and not wanted[1]:
            plan.conflicts.append(
                f"{spec.collection}.{same_keys[0]['name']} ({_describe(same_keys[0])}) has the "
                f"keys {spec.name} needs with other options"
            )
        else:
            plan.create.append(spec)
    for collection, entries in existing.items():
        for entry in entries:
            if entry["name"] in RETIRED_INDEX_NAMES:
                plan.retired.append((collection, entry["name"]))
    return plan


def _describe(entry: Mapping[str, Any]) -> str:
    keys, _ = index_definition(entry["key"], entry)
    shown = ", ".join(f"{field}: {direction}" for field, direction in keys)
    extra = "".join(
        f", {name}={_shown(entry[name])}"
        for name in _DEFINING_OPTIONS
        if entry.get(name) not in (None, False)
    )
    return f"{{{shown}}}{extra}"


def _shown(value: Any) -> str:
    """An option as a person reads it in mongosh: documents as ``{a: 1}``, not ``SON([...])``."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_shown(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_shown(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def id_prefix_filter(prefix: str) -> Document:
    """Documents whose ``_id`` starts with ``prefix`` (an anchored regex: served by ``_id``)."""
    return {"_id": {"$regex": "^" + re.escape(prefix)}}


def by_id(document_id: str) -> Document:
    return {"_id": document_id}


def enhanced_prompts_filter() -> Document:
    """Exactly the partial index's predicate, as a top-level term, so the server can use it."""
    return {"parameters.enhanced": True}


def prompts_filter(enhanced: bool | None = None) -> Document:
    """All prompts, only enhanced ones (the partial index), or only the others."""
    if enhanced is None:
        return {}
    return enhanced_prompts_filter() if enhanced else {"parameters.enhanced": {"$ne": True}}


# Opt-in (``create_text_index``): a word search served by a text index, on servers only.
TEXT_INDEX_NAME: Final = "prompts_text"
TEXT_INDEX_KEYS: Final = (("prompt_text", "text"), ("parameters.name", "text"))
# "none": words match as written (no stemming or stop words in any one language).
TEXT_INDEX_OPTIONS: Final = {"default_language": "none"}


def words_filter(query: str) -> Document:
    """Prompts holding every word of ``query`` as a whole word, through the text index."""
    quoted = " ".join(f'"{word}"' for word in query.replace('"', " ").split())
    return {"$text": {"$search": quoted, "$caseSensitive": False}}


def search_filter(query: str) -> Document:
    """Case-insensitive substring match on the text or the name; the query is regex-escaped."""
    pattern = {"$regex": re.escape(query), "$options": "i"}
    return {"$or": [{"prompt_text": pattern}, {"parameters.name": pattern}]}


def runs_filter(
    prompt_id: str | None = None, model_type: str | None = None, status: str | None = None
) -> Document:
    """Filter for ``list_runs``; each given value is an equality term."""
    terms = {"prompt_id": prompt_id, "model_type": model_type, "status": status}
    return {key: value for key, value in terms.items() if value is not None}


def older_than(base: Document, after: tuple[Any, Any] | None) -> Document:
    """``base`` restricted to documents after ``(created_at, _id)`` in NEWEST_FIRST order:
    keyset paging, which the listing indexes serve at any depth (skip would walk it all)."""
    if after is None:
        return base
    created_at, document_id = after
    position = {
        "$or": [
            {"created_at": {"$lt": created_at}},
            {"created_at": created_at, "_id": {"$lt": document_id}},
        ]
    }
    return {"$and": [base, position]} if base else position


def after_id(last: Any) -> Document:
    """Documents whose ``_id`` sorts after ``last``: paging through a whole collection."""
    return {} if last is None else {"_id": {"$gt": last}}


# ``$gt`` compares like types only (``{_id: {$gt: "ps_..."}}`` never reaches an ObjectId), so a
# scan of every document walks each kind of ``_id`` from its lowest value, through the ``_id``
# index: numbers, the library's strings, and the ObjectIds mongosh gives a document inserted
# without one. Other kinds (an object or a date as ``_id``) are not walked.
ID_KIND_STARTS: Final = (float("-inf"), "", ObjectId("0" * 24))


def ids_from(start: Any, last: Any) -> Document:
    """Documents whose ``_id`` is of ``start``'s kind: from ``start``, or after ``last``."""
    return {"_id": {"$gte": start}} if last is None else {"_id": {"$gt": last}}


def prompt_document(
    prompt_id: str,
    prompt_text: str,
    inputs: dict[str, Any],
    parameters: dict[str, Any],
    now: datetime,
) -> Document:
    return {
        "_id": prompt_id,
        "prompt_text": prompt_text,
        "inputs": inputs,
        "parameters": parameters,
        "created_at": now,
        "updated_at": now,
    }


def run_document(
    run_id: str,
    prompt_id: str,
    model_type: str,
    status: str,
    execution_config: dict[str, Any],
    metadata: dict[str, Any],
    now: datetime,
) -> Document:
    document: Document = {
        "_id": run_id,
        "prompt_id": prompt_id,
        "model_type": model_type,
        "status": status,
        "execution_config": execution_config,
        "outputs": {},
        "metadata": metadata,
        "created_at": now,
        "updated_at": now,
    }
    document.update(status_timestamps(status, now))
    return document


def status_timestamps(status: str, now: datetime) -> Document:
    """``started_at`` when a run starts, ``completed_at`` when it reaches a final status."""
    if status == "running":
        return {"started_at": now}
    if status in {"completed", "failed", "cancelled"}:
        return {"completed_at": now}
    return {}


def prompt_update(
    now: datetime,
    prompt_text: str | None = None,
    parameters: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
) -> Document:
    """Set the text and merge the given parameter and input keys; other keys stay as they are."""
    changes: Document = {"updated_at": now}
    if prompt_text is not None:
        changes["prompt_text"] = prompt_text
    for name, given in (("parameters", parameters), ("inputs", inputs)):
        for key, value in (given or {}).items():
            changes[f"{name}.{key}"] = value
    return {"$set": changes}


def run_update(now: datetime, fields: dict[str, Any]) -> Document:
    changes = {"updated_at": now, **fields}
    if "status" in fields:
        for key, value in status_timestamps(fields["status"], now).items():
            changes.setdefault(key, value)
    return {"$set": changes}


def kept_provenance_filter(prompt_id: str) -> Document:
    """Runs of a deleted prompt that stay: completed enhancements that produced another prompt.

    They are the other prompt's birth record (its details and history read them), so they
    outlive the original and keep pointing at it.
    """
    return {
        "model_type": ENHANCE,
        "status": "completed",
        "outputs.enhanced_prompt_id": {"$nin": [prompt_id, None]},
    }


def deletion_filter(prompt_id: str) -> Document:
    """What goes with a prompt: its runs, and the enhance runs whose result it is, except the
    kept provenance of prompts enhanced from it."""
    return {
        "$or": [{"prompt_id": prompt_id}, {"outputs.enhanced_prompt_id": prompt_id}],
        "$nor": [kept_provenance_filter(prompt_id)],
    }


def deletion_mark(prompt_id: str, now: datetime) -> Document:
    """Set on the runs a deletion will remove, before it removes the prompt: if it stops
    midway, the marks say which deletion to finish, found through a tiny partial index."""
    return {"$set": {"deletion": {"prompt_id": prompt_id, "started_at": now}}}


def interrupted_deletions_filter(before: datetime) -> Document:
    """Runs marked by a deletion that started before ``before`` and has not finished."""
    return {
        "deletion.prompt_id": {"$exists": True},  # the partial index's own condition
        "deletion.started_at": {"$lte": before},
    }


def deletion_marks(prompt_id: str) -> Document:
    return {"deletion.prompt_id": prompt_id}


CLEAR_DELETION_MARK: Final = {"$unset": {"deletion": ""}}


def deletion_preview_pipeline(prompt_id: str) -> list[Document]:
    """The prompt with the runs that would go with it, in one round trip."""
    run_fields = ("_id", "status", "model_type", "outputs.enhanced_prompt_id")
    return [
        {"$match": by_id(prompt_id)},
        {"$lookup": {"from": RUNS, "localField": "_id", "foreignField": "prompt_id", "as": "runs"}},
        {
            "$lookup": {
                "from": RUNS,
                "localField": "_id",
                "foreignField": "outputs.enhanced_prompt_id",
                "as": "created_by",
            }
        },
        {
            "$project": {
                "prompt_text": 1,
                "inputs": 1,
                "parameters": 1,
                "created_at": 1,
                "updated_at": 1,
                **{f"{array}.{name}": 1 for array in ("runs", "created_by") for name in run_fields},
            }
        },
    ]


# -- enhancement -----------------------------------------------------------------------------

COMPLETED_ENHANCEMENT: Final = {"model_type": ENHANCE, "status": "completed"}
OUTPUT_FIELDS: Final = (
    "enhanced_text",
    "original_prompt_id",
    "enhanced_prompt_id",
    "enhancement_model",
    "enhanced_at",
    "duration_seconds",
)


def enhance_run_document(
    run_id: str,
    prompt: Document,
    model: str,
    create_new: bool,
    target_prompt_id: str,
    now: datetime,
    enhanced_text: str | None = None,
) -> Document:
    """A running enhance run that records, before anything else is written, what it will do."""
    document = run_document(
        run_id,
        prompt["_id"],
        ENHANCE,
        "running",
        {
            "model": model,
            "create_new": create_new,
            "original_prompt_text": prompt["prompt_text"],
            "target_prompt_id": target_prompt_id,
            "previously_enhanced": prompt.get("parameters", {}).get("enhanced") is True,
        },
        {},
        now,
    )
    if enhanced_text is not None:
        document["outputs"] = {"enhanced_text": enhanced_text}
    return document


def blocking_runs_filter(prompt_id: str) -> Document:
    """Runs that make an in-place overwrite unsafe: anything but an enhancement."""
    return {"prompt_id": prompt_id, "model_type": {"$ne": ENHANCE}}


def running_enhancements_filter(prompt_id: str) -> Document:
    """Enhancements of the prompt still in progress (or interrupted and not yet repaired)."""
    return {"prompt_id": prompt_id, "model_type": ENHANCE, "status": "running"}


def record_text(enhanced_text: str, now: datetime) -> Document:
    return {"$set": {"outputs.enhanced_text": enhanced_text, "updated_at": now}}


def enhanced_prompt_document(
    new_id: str, original: Mapping[str, Any], enhanced_text: str, now: datetime
) -> Document:
    """The create_new prompt: the original's inputs and parameters, ``name_enhanced``, the flag.

    Legacy enhancement keys the original may carry are not copied: only ``enhanced`` is.
    """
    parameters = {
        key: value
        for key, value in original.get("parameters", {}).items()
        if key not in LEGACY_KEYS
    }
    name = parameters.get("name")
    if isinstance(name, str) and name:
        parameters["name"] = f"{name}_enhanced"
    parameters["enhanced"] = True
    return prompt_document(new_id, enhanced_text, dict(original.get("inputs", {})), parameters, now)


def overwrite_filter(prompt_id: str, expected_text: str) -> Document:
    """Compare-and-set: match only while the prompt still has the text being replaced."""
    return {"_id": prompt_id, "prompt_text": expected_text}


def overwrite_update(enhanced_text: str, now: datetime, enhanced: bool = True) -> Document:
    """Set the text and the flag. Legacy enhancement keys go too: the enhance run recorded
    what they knew before this write (see ``legacy.absorb_legacy_keys``)."""
    unset = {f"parameters.{key}": "" for key in sorted(LEGACY_KEYS)}
    if enhanced:
        return {
            "$set": {"prompt_text": enhanced_text, "parameters.enhanced": True, "updated_at": now},
            "$unset": unset,
        }
    return {
        "$set": {"prompt_text": enhanced_text, "updated_at": now},
        "$unset": {"parameters.enhanced": "", **unset},
    }


def enhancement_outputs(
    original_id: str,
    enhanced_id: str,
    enhanced_text: str,
    model: str,
    enhanced_at: datetime,
    duration_seconds: float | None,
) -> Document:
    """The complete record; ``duration_seconds`` is None when repair finished the run."""
    return {
        "enhanced_text": enhanced_text,
        "original_prompt_id": original_id,
        "enhanced_prompt_id": enhanced_id,
        "enhancement_model": model,
        "enhanced_at": enhanced_at,
        "duration_seconds": None if duration_seconds is None else round(duration_seconds, 3),
    }


def running_run(run_id: str) -> Document:
    """Matches the run only while it is running: finishing twice changes nothing."""
    return {"_id": run_id, "status": "running"}


def complete_run(outputs: Document, now: datetime) -> Document:
    return {
        "$set": {"status": "completed", "outputs": outputs, "completed_at": now, "updated_at": now}
    }


def fail_run(message: str, now: datetime) -> Document:
    return {
        "$set": {
            "status": "failed",
            # Storable whatever the message holds (an enhancer's error text may not be UTF-8).
            "error_message": message[:2000].encode("utf-8", "replace").decode("utf-8"),
            "completed_at": now,
            "updated_at": now,
        }
    }


def field_of_each(array: str, path: str) -> Document:
    """The values of ``path`` in each document of the array field ``array``, leaving out the
    missing ones: what ``"$array.path"`` means, written with ``$map`` and ``$filter``, which
    every server evaluates alike (SecantusDB returns nothing for a field path through an array
    of documents) and which are as plain to read in mongosh."""
    return {
        "$filter": {
            "input": {
                "$map": {
                    "input": {"$ifNull": [f"${array}", []]},
                    "as": "item",
                    "in": f"$$item.{path}",
                }
            },
            "as": "value",
            "cond": {"$ne": [{"$ifNull": ["$$value", None]}, None]},
        }
    }


def details_pipeline(prompt_id: str) -> list[Document]:
    """The prompt with every run that names it as the result, in one round trip."""
    return [
        {"$match": by_id(prompt_id)},
        {
            "$lookup": {
                "from": RUNS,
                "localField": "_id",
                "foreignField": "outputs.enhanced_prompt_id",
                "as": "result_of",
            }
        },
    ]


def original_pipeline(enhanced_prompt_id: str) -> list[Document]:
    """The prompt, the runs that produced it, and every candidate original, in one round trip."""
    return [
        *details_pipeline(enhanced_prompt_id),
        {"$addFields": {"run_parents": field_of_each("result_of", "outputs.original_prompt_id")}},
        {
            "$lookup": {
                "from": PROMPTS,
                "localField": "run_parents",
                "foreignField": "_id",
                "as": "run_originals",
            }
        },
        {
            "$lookup": {
                "from": PROMPTS,
                "localField": "parameters.parent_prompt_id",
                "foreignField": "_id",
                "as": "legacy_originals",
            }
        },
    ]


def history_filter(prompt_id: str) -> Document:
    """Enhance runs where the prompt is the original, the result, or the run's own prompt."""
    return {
        "model_type": ENHANCE,
        "$or": [
            {"prompt_id": prompt_id},
            {"outputs.original_prompt_id": prompt_id},
            {"outputs.enhanced_prompt_id": prompt_id},
        ],
    }


RUN_EDGE: Final = ("outputs.original_prompt_id", "outputs.enhanced_prompt_id")
LEGACY_EDGE: Final = ("parameters.parent_prompt_id", "_id")


# How much of a lineage one answer holds: generations each way, nodes per walk, and bytes of
# the answer's JSON.
LINEAGE_MAX_DEPTH: Final = 100
LINEAGE_MAX_NODES: Final = 1000
LINEAGE_MAX_BYTES: Final = 8_000_000
_WALKED: Final = (
    "up_runs",
    "up_prompts",
    "up_run_prompts",
    "down_prompts",
    "down_runs",
    "down_legacy_runs",
)


def _walked(name: str) -> Document:
    """A walk's array; a server always sets it, mongomock leaves it out when nothing starts."""
    return {"$ifNull": [f"${name}", []]}


def _walk(collection: str, edge: tuple[str, str], start: str, up: bool, into: str) -> Document:
    """``$graphLookup`` along ``edge`` (parent field, child field), toward parents if ``up``.

    Over runs it follows completed enhancements; over prompts, legacy parent keys.
    """
    parent, child = edge
    stage: Document = {
        "from": collection,
        "startWith": start,
        "connectFromField": parent if up else child,
        "connectToField": child if up else parent,
        "as": into,
    }
    if collection == RUNS:
        stage["restrictSearchWithMatch"] = COMPLETED_ENHANCEMENT
    stage["maxDepth"] = LINEAGE_MAX_DEPTH - 1  # depth 0 is the first generation
    return {"$graphLookup": stage}


# The walks of runs whose results are not walked otherwise, and where their results go.
_RESULTS_OF: Final = {
    "down_runs": "down_run_prompts",
    "down_legacy_runs": "down_legacy_run_prompts",
}
LINEAGE_RUNS: Final = ("up_runs", "down_runs", "down_legacy_runs")
LINEAGE_COUNTS: Final = tuple(f"{name}_count" for name in _WALKED)
LINEAGE_PROMPTS: Final = (
    "up_prompts",
    "up_run_prompts",
    "down_prompts",
    *_RESULTS_OF.values(),
)
# What the tree does not show: the two texts an enhance run keeps (its prompts carry theirs).
LINEAGE_RUN_TEXTS: Final = ("execution_config.original_prompt_text", "outputs.enhanced_text")


def lineage_pipeline(prompt_id: str, *, one_per_node: bool = False) -> list[Document]:
    """Every edge around a prompt, in one aggregation over ``prompts``: one document, the
    prompt with each walk's array and count (see :func:`lineage_document`), or with
    ``one_per_node`` one document per node of the tree, for a tree larger than one result
    document may hold (16 MB). The runs come without :data:`LINEAGE_RUN_TEXTS`.

    Run edges come from ``$graphLookup`` over completed enhance runs: up from the result to
    the original, down from the original to the result. Legacy edges come from
    ``parameters.parent_prompt_id`` keys; they are walked from the prompt and from every
    prompt the run walk reached, so a chain whose older part has only legacy keys is still
    followed. Overwrites are self-edges: they come back too and are told apart when the
    lineage is assembled. Cycles end because ``$graphLookup`` visits each document once.
    Only plain field paths are used as start values, which mongomock evaluates like a server.
    """
    walks = [
        {"$match": by_id(prompt_id)},
        _walk(RUNS, RUN_EDGE, "$_id", up=True, into="up_runs"),
        {
            "$addFields": {
                "up_run_parent_ids": field_of_each("up_runs", "outputs.original_prompt_id")
            }
        },
        _walk(PROMPTS, LEGACY_EDGE, "$parameters.parent_prompt_id", up=True, into="up_prompts"),
        _walk(PROMPTS, LEGACY_EDGE, "$up_run_parent_ids", up=True, into="up_run_prompts"),
        _walk(PROMPTS, LEGACY_EDGE, "$_id", up=False, into="down_prompts"),
        {"$addFields": {"down_prompt_ids": field_of_each("down_prompts", "_id")}},
        _walk(RUNS, RUN_EDGE, "$_id", up=False, into="down_runs"),
        _walk(RUNS, RUN_EDGE, "$down_prompt_ids", up=False, into="down_legacy_runs"),
        # Keep the first nodes of each walk and say how many there were.
        {
            "$addFields": {
                **{f"{name}_count": {"$size": _walked(name)} for name in _WALKED},
                **{name: {"$slice": [_walked(name), LINEAGE_MAX_NODES]} for name in _WALKED},
            }
        },
        {"$project": {f"{walk}.{path}": 0 for walk in LINEAGE_RUNS for path in LINEAGE_RUN_TEXTS}},
    ]
    if one_per_node:
        return [*walks, *_one_document_per_node()]
    return [
        *walks,
        *(
            stage
            for walk, into in _RESULTS_OF.items()
            for stage in _prompts_named_by(field_of_each(walk, "outputs.enhanced_prompt_id"), into)
        ),
    ]


def _prompts_named_by(ids: Document, into: str) -> list[Document]:
    return [
        {"$addFields": {f"{into}_ids": ids}},
        {
            "$lookup": {
                "from": PROMPTS,
                "localField": f"{into}_ids",
                "foreignField": "_id",
                "as": into,
            }
        },
    ]


def _one_document_per_node() -> list[Document]:
    """The walked tree as one result document per node (``{walk, doc}``), each far below
    16 MB however wide the tree and long its prompts. The asked prompt comes as stored, with
    the counts; a down run brings the prompt it produced (``results``)."""

    def nodes_of(walk: str) -> Document:
        node: Document = {"walk": walk, "doc": "$$node"}
        if walk in _RESULTS_OF:
            node["result_id"] = {"$ifNull": ["$$node.outputs.enhanced_prompt_id", None]}
        return {"$map": {"input": _walked(walk), "as": "node", "in": node}}

    asked = {"walk": "asked", "doc": "$$node", "counts": {c: f"${c}" for c in LINEAGE_COUNTS}}
    return [
        {"$lookup": {"from": PROMPTS, "localField": "_id", "foreignField": "_id", "as": "asked"}},
        {
            "$project": {
                "_id": 0,
                "node": {
                    "$concatArrays": [
                        {"$map": {"input": "$asked", "as": "node", "in": asked}},
                        *(nodes_of(walk) for walk in _WALKED),
                    ]
                },
            }
        },
        {"$unwind": "$node"},
        {"$replaceRoot": {"newRoot": "$node"}},
        {"$project": {f"doc.{path}": 0 for path in LINEAGE_RUN_TEXTS}},
        {
            "$lookup": {
                "from": PROMPTS,
                "localField": "result_id",
                "foreignField": "_id",
                "as": "results",
            }
        },
    ]


def lineage_document(found: Sequence[Mapping[str, Any]], *, one_per_node: bool) -> Document | None:
    """The answer of :func:`lineage_pipeline` as one document: the asked prompt with each
    walk's array and count (``up_runs``, ``up_runs_count``, ...), the runs without
    :data:`LINEAGE_RUN_TEXTS`; or None when no prompt has the id."""
    if not one_per_node:
        return _without_run_texts(dict(found[0])) if found else None
    document = _regrouped(found)
    return None if document is None else _without_run_texts(document)


def _without_run_texts(document: Document) -> Document:
    """``document``'s runs without :data:`LINEAGE_RUN_TEXTS`. The pipeline projects them
    away, but SecantusDB ignores an exclusion through an array (``"runs.f": 0``), which mongod
    and mongomock honour: dropped here too, so that every database answers alike."""
    for run in (run for walk in LINEAGE_RUNS for run in document.get(walk) or []):
        for path in LINEAGE_RUN_TEXTS:
            part, key = path.split(".")
            if isinstance(run.get(part), dict):
                run[part].pop(key, None)
    return document


def _regrouped(nodes: Sequence[Mapping[str, Any]]) -> Document | None:
    asked = next((node for node in nodes if node.get("walk") == "asked"), None)
    if asked is None:
        return None
    document: Document = {**asked["doc"], **asked.get("counts", {})}
    for name in LINEAGE_RUNS + LINEAGE_PROMPTS:
        document[name] = []
    for node in nodes:
        walk = node.get("walk")
        if walk in _WALKED:
            document[walk].append(node["doc"])
        if walk in _RESULTS_OF:
            document[_RESULTS_OF[walk]].extend(node.get("results") or [])
    return document


def stale_enhancements_filter(before: datetime) -> Document:
    """Enhance runs still running that nobody has touched since ``before``."""
    return {"model_type": ENHANCE, "status": "running", "updated_at": {"$lte": before}}


def pending_reverts_filter(before: datetime) -> Document:
    """Reverts that started (flagged on the run) and have not finished since ``before``."""
    return {"model_type": ENHANCE, "outputs.revert_pending": True, "updated_at": {"$lte": before}}


def legacy_prompts_filter() -> Document:
    """Enhanced prompts that still carry a duplicated key (served by the partial index)."""
    return {
        **enhanced_prompts_filter(),
        "$or": [{f"parameters.{key}": {"$exists": True}} for key in sorted(LEGACY_KEYS)],
    }


def incomplete_runs_filter() -> Document:
    return {
        **COMPLETED_ENHANCEMENT,
        "$or": [{f"outputs.{name}": {"$exists": False}} for name in OUTPUT_FIELDS],
    }


def produced_prompts_pipeline() -> list[Document]:
    """Completed enhance runs with the prompt each produced (absent if it is gone)."""
    return [
        {"$match": COMPLETED_ENHANCEMENT},
        {
            "$lookup": {
                "from": PROMPTS,
                "localField": "outputs.enhanced_prompt_id",
                "foreignField": "_id",
                "as": "result",
            }
        },
        {
            "$project": {
                "_id": 1,
                "outputs.original_prompt_id": 1,
                "outputs.enhanced_prompt_id": 1,
                "result._id": 1,
                "result.parameters.enhanced": 1,
            }
        },
    ]


def flagged_prompts_pipeline() -> list[Document]:
    """Prompts flagged as enhanced, with the status of every run that names them as result."""
    return [
        {"$match": enhanced_prompts_filter()},
        {
            "$lookup": {
                "from": RUNS,
                "localField": "_id",
                "foreignField": "outputs.enhanced_prompt_id",
                "as": "result_of",
            }
        },
        {
            "$project": {
                "_id": 1,
                **{f"parameters.{key}": 1 for key in sorted(LEGACY_KEYS)},
                "result_of.model_type": 1,
                "result_of.status": 1,
            }
        },
    ]


def orphan_runs_pipeline() -> list[Document]:
    """Runs whose own prompt does not exist, with the prompt each produced (if any)."""
    return [
        {
            "$lookup": {
                "from": PROMPTS,
                "localField": "prompt_id",
                "foreignField": "_id",
                "as": "prompt",
            }
        },
        {"$match": {"prompt": {"$size": 0}}},
        {
            "$lookup": {
                "from": PROMPTS,
                "localField": "outputs.enhanced_prompt_id",
                "foreignField": "_id",
                "as": "result",
            }
        },
        {
            "$project": {
                "_id": 1,
                "prompt_id": 1,
                "model_type": 1,
                "status": 1,
                "updated_at": 1,
                "outputs.enhanced_prompt_id": 1,
                "result._id": 1,
            }
        },
    ]
