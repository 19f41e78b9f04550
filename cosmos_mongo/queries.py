"""Pure builders for filters, sorts, updates, pipelines and index definitions.

Nothing here performs I/O; every function returns plain data and is tested as data. Callers
pass values that :mod:`cosmos_mongo.validation` has already checked, so an id is always a
string and never an operator document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from cosmos_mongo.ops import Document, SortSpec

PROMPTS: Final = "prompts"
RUNS: Final = "runs"

NEWEST_FIRST: Final[SortSpec] = (("created_at", -1),)


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """An index the product relies on, created by name by ``ensure_indexes()``."""

    collection: str
    name: str
    keys: SortSpec
    options: dict[str, Any] = field(default_factory=dict)


ENHANCE_ONLY: Final = {"model_type": "enhance"}

INDEXES: Final[tuple[IndexSpec, ...]] = (
    IndexSpec(
        PROMPTS,
        "prompts_enhanced_created_at",
        (("parameters.enhanced", 1), ("created_at", -1)),
        {"partialFilterExpression": {"parameters.enhanced": True}},
    ),
    IndexSpec(PROMPTS, "prompts_created_at", (("created_at", -1),)),
    IndexSpec(RUNS, "runs_prompt_id_created_at", (("prompt_id", 1), ("created_at", -1))),
    IndexSpec(
        RUNS,
        "runs_enhance_original_prompt_id",
        (("outputs.original_prompt_id", 1),),
        {"partialFilterExpression": ENHANCE_ONLY},
    ),
    IndexSpec(
        RUNS,
        "runs_enhance_enhanced_prompt_id",
        (("outputs.enhanced_prompt_id", 1),),
        {"partialFilterExpression": ENHANCE_ONLY},
    ),
    IndexSpec(RUNS, "runs_model_type_created_at", (("model_type", 1), ("created_at", -1))),
    # Not in the design's minimum: serves list_runs() with no prompt or model filter.
    IndexSpec(RUNS, "runs_created_at", (("created_at", -1),)),
)


def by_id(document_id: str) -> Document:
    return {"_id": document_id}


def enhanced_prompts_filter() -> Document:
    """Exactly the partial index's predicate, as a top-level term, so the server can use it."""
    return {"parameters.enhanced": True}


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
    now: datetime, prompt_text: str | None = None, parameters: dict[str, Any] | None = None
) -> Document:
    """Set the text and merge the given parameter keys; other parameters stay as they are."""
    changes: Document = {"updated_at": now}
    if prompt_text is not None:
        changes["prompt_text"] = prompt_text
    for key, value in (parameters or {}).items():
        changes[f"parameters.{key}"] = value
    return {"$set": changes}


def run_update(now: datetime, fields: dict[str, Any]) -> Document:
    changes = {"updated_at": now, **fields}
    if "status" in fields:
        for key, value in status_timestamps(fields["status"], now).items():
            changes.setdefault(key, value)
    return {"$set": changes}


def deletion_preview_pipeline(prompt_id: str) -> list[Document]:
    """The prompt with the id, status and type of each of its runs, in one round trip."""
    return [
        {"$match": by_id(prompt_id)},
        {
            "$lookup": {
                "from": RUNS,
                "localField": "_id",
                "foreignField": "prompt_id",
                "as": "runs",
            }
        },
        {
            "$project": {
                "prompt_text": 1,
                "inputs": 1,
                "parameters": 1,
                "created_at": 1,
                "updated_at": 1,
                "runs._id": 1,
                "runs.status": 1,
            }
        },
    ]
