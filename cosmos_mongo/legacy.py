"""Reading the predecessor's enhancement metadata, and migrating it into run records.

The predecessor duplicated enhancement details into prompt ``parameters``
(``enhancement_model``, ``enhanced_at``, ``last_enhancement_run_id``, ``parent_prompt_id``)
and some of its runs lack ``enhancement_model`` or ``enhanced_at`` (they have
``outputs.timestamp``). The readers here give the helpers one view of both shapes, so no
migration is required. :func:`migrate` tidies old data when asked: it first copies into run
records whatever only the legacy keys know, then removes the keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cosmos_mongo import queries as q
from cosmos_mongo.errors import ConflictError, InvalidInputError
from cosmos_mongo.models import (
    EnhancementDetails,
    MigrationReport,
    as_utc,
    new_run_id,
    utc_now,
)
from cosmos_mongo.ops import Aggregate, Find, Flow, InsertOne, Progress, UpdateOne, reported
from cosmos_mongo.validation import LEGACY_ENHANCEMENT_KEYS, check_progress, check_run_id

log = logging.getLogger(__name__)


def parse_time(value: Any) -> datetime | None:
    """A stored time as aware UTC: a datetime, or the ISO-8601 text older versions wrote."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        try:
            return as_utc(datetime.fromisoformat(value.strip()))
        except ValueError:
            return None
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def run_enhanced_at(run: Mapping[str, Any]) -> datetime | None:
    """``outputs.enhanced_at``, else the older ``outputs.timestamp``, else when the run was made."""
    outputs = run.get("outputs") or {}
    return (
        parse_time(outputs.get("enhanced_at"))
        or parse_time(outputs.get("timestamp"))
        or parse_time(run.get("created_at"))
    )


def run_enhancement_model(run: Mapping[str, Any]) -> str | None:
    """``outputs.enhancement_model``, else the model the run was configured with."""
    outputs = run.get("outputs") or {}
    config = run.get("execution_config") or {}
    return _text(outputs.get("enhancement_model")) or _text(config.get("model"))


def is_completed_enhancement(run: Mapping[str, Any]) -> bool:
    return run.get("model_type") == q.ENHANCE and run.get("status") == "completed"


def latest(runs: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The most recent run by enhancement time, then creation time, then (time-ordered) id."""
    return max(runs, key=_order, default=None)


def resolved_outputs(run: Mapping[str, Any], prompt: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs of ``run``, the latest enhancement that produced ``prompt``, field by field:
    the run's own value, else its own fallbacks, else the prompt's legacy keys.

    The helpers read this, and ``migrate`` writes it, so they answer the same before and after.
    """
    outputs = run.get("outputs") or {}
    parameters = prompt.get("parameters") or {}
    return {
        "enhanced_text": _text(outputs.get("enhanced_text")) or prompt.get("prompt_text", ""),
        "original_prompt_id": _text(outputs.get("original_prompt_id"))
        or legacy_parent_id(prompt)
        or _text(run.get("prompt_id"))
        or prompt["_id"],
        "enhanced_prompt_id": _text(outputs.get("enhanced_prompt_id")) or prompt["_id"],
        "enhancement_model": run_enhancement_model(run)
        or _text(parameters.get("enhancement_model")),
        "enhanced_at": run_enhanced_at(run) or parse_time(parameters.get("enhanced_at")),
        "duration_seconds": _number(outputs.get("duration_seconds")),
    }


def details_from_run(run: Mapping[str, Any], prompt: Mapping[str, Any]) -> EnhancementDetails:
    return EnhancementDetails(run_id=str(run["_id"]), **resolved_outputs(run, prompt))


def has_legacy_keys(prompt: Mapping[str, Any]) -> bool:
    return bool(LEGACY_ENHANCEMENT_KEYS.intersection(prompt.get("parameters") or {}))


def legacy_parent_id(prompt: Mapping[str, Any]) -> str | None:
    parent = (prompt.get("parameters") or {}).get("parent_prompt_id")
    return parent if isinstance(parent, str) and parent and parent != prompt.get("_id") else None


def details_from_legacy_prompt(prompt: Mapping[str, Any]) -> EnhancementDetails | None:
    """Details of an enhanced prompt that has no enhance run: only its legacy keys know."""
    parameters = prompt.get("parameters") or {}
    if parameters.get("enhanced") is not True and not has_legacy_keys(prompt):
        return None
    return EnhancementDetails(
        run_id=None,
        enhanced_text=prompt.get("prompt_text", ""),
        enhancement_model=_text(parameters.get("enhancement_model")),
        enhanced_at=parse_time(parameters.get("enhanced_at")),
        original_prompt_id=legacy_parent_id(prompt) or prompt["_id"],
        enhanced_prompt_id=prompt["_id"],
        duration_seconds=None,
    )


def enhancement_details(
    prompt: Mapping[str, Any], result_of: list[Mapping[str, Any]]
) -> EnhancementDetails | None:
    """How ``prompt`` got its current text: the latest completed enhance run that produced it,
    else its legacy keys, else None (it is not enhanced)."""
    produced = [
        run
        for run in result_of
        if is_completed_enhancement(run)
        and (run.get("outputs") or {}).get("enhanced_prompt_id") == prompt["_id"]
    ]
    # The run whose text the prompt still has wins; then the latest (ties are possible within
    # a millisecond).
    current = [
        run
        for run in produced
        if (run.get("outputs") or {}).get("enhanced_text") == prompt.get("prompt_text")
    ]
    run = latest(current or produced)
    return details_from_run(run, prompt) if run is not None else details_from_legacy_prompt(prompt)


# -- migration -------------------------------------------------------------------------------


def _own_backfill(run: Mapping[str, Any]) -> dict[str, Any]:
    """What a completed enhance run lacks and its own fallbacks know (model, time, original)."""
    outputs = run.get("outputs") or {}
    known = {
        "enhancement_model": run_enhancement_model(run),
        "enhanced_at": run_enhanced_at(run),
        "original_prompt_id": _text(run.get("prompt_id")),
        "duration_seconds": None,
    }
    return _missing(outputs, known)


def _missing(outputs: Mapping[str, Any], known: Mapping[str, Any]) -> dict[str, Any]:
    """``$set`` terms for the known output fields a run lacks (a None duration is recorded)."""
    return {
        f"outputs.{name}": value
        for name, value in known.items()
        if name not in outputs and (value is not None or name == "duration_seconds")
    }


def _backfills(
    prompt: Mapping[str, Any], producing: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The outputs each run that produced a legacy prompt lacks, by run id.

    The latest run gets everything :func:`resolved_outputs` knows (the prompt's text and its
    legacy keys included), exactly what the helpers show for it. Older runs get what their
    own fallbacks know; a legacy key also fills the newest run that would otherwise lack it,
    so nothing the keys know is lost when they are removed.
    """
    newest_first = sorted(producing, key=_order, reverse=True)
    changes: dict[str, dict[str, Any]] = {}
    parameters = prompt.get("parameters") or {}
    for position, run in enumerate(newest_first):
        outputs = run.get("outputs") or {}
        if position == 0:
            wanted = _missing(outputs, resolved_outputs(run, prompt))
        else:
            wanted = _own_backfill(run)
        changes[str(run["_id"])] = wanted
    key_values = {
        "enhancement_model": _text(parameters.get("enhancement_model")),
        "enhanced_at": parse_time(parameters.get("enhanced_at")),
    }
    for name, value in key_values.items():
        path = f"outputs.{name}"
        if value is None:
            continue
        for run in newest_first:
            run_changes = changes[str(run["_id"])]
            if name in (run.get("outputs") or {}) or run_changes.get(path) is not None:
                continue
            run_changes[path] = value
            break
    return {run_id: wanted for run_id, wanted in changes.items() if wanted}


def _order(run: Mapping[str, Any]) -> tuple[datetime, datetime, str]:
    floor = datetime.min.replace(tzinfo=UTC)
    return (
        run_enhanced_at(run) or floor,
        parse_time(run.get("created_at")) or floor,
        str(run.get("_id")),
    )


def named_run_id(prompt: Mapping[str, Any]) -> str | None:
    """The run the prompt's ``last_enhancement_run_id`` names, if that is a well-formed id."""
    value = (prompt.get("parameters") or {}).get("last_enhancement_run_id")
    try:
        return check_run_id(value, "last_enhancement_run_id")
    except InvalidInputError:
        return None  # not an id a run could have: the created run gets a new one


def _adoptable(run: Mapping[str, Any], prompt: Mapping[str, Any]) -> bool:
    """Whether the run the keys name made the prompt but, in an older shape, does not say so:
    a completed enhance run of the prompt's origin that names no result of its own."""
    outputs = run.get("outputs")
    return (
        is_completed_enhancement(run)
        and (outputs is None or isinstance(outputs, Mapping))
        and not (outputs or {}).get("enhanced_prompt_id")
        and run.get("prompt_id") == (legacy_parent_id(prompt) or prompt["_id"])
    )


def _run_from_legacy_keys(prompt: Mapping[str, Any], now: datetime, run_id: str) -> dict[str, Any]:
    """A completed enhance run ``run_id`` holding what only a prompt's legacy keys know."""
    parameters = prompt.get("parameters") or {}
    parent = legacy_parent_id(prompt)
    model = _text(parameters.get("enhancement_model"))
    enhanced_at = parse_time(parameters.get("enhanced_at"))
    metadata: dict[str, Any] = {"migrated_from": "legacy prompt parameters"}
    named = parameters.get("last_enhancement_run_id")
    if isinstance(named, str) and named and named != run_id:
        # The id the keys gave is another run's, another legacy prompt's, or no run id at
        # all: keep it, so nothing the keys said is lost.
        metadata["legacy_run_id"] = named
    document = q.run_document(
        run_id,
        parent or prompt["_id"],
        q.ENHANCE,
        "completed",
        {"model": model, "create_new": parent is not None, "original_prompt_text": None},
        metadata,
        enhanced_at or now,
    )
    document["outputs"] = {
        "enhanced_text": prompt.get("prompt_text", ""),
        "original_prompt_id": parent or prompt["_id"],
        "enhanced_prompt_id": prompt["_id"],
        "enhancement_model": model,
        "enhanced_at": enhanced_at,
        "duration_seconds": None,
    }
    return document


@dataclass
class _Tally:
    """What a migration did so far, and the run ids it has taken (also in a dry run)."""

    now: datetime
    dry_run: bool
    created: list[str] = field(default_factory=list)
    backfilled: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)
    writing: str = ""  # the write under way, named if the database refuses it


def _record_legacy_keys(
    prompt: Mapping[str, Any],
    producing: Sequence[Mapping[str, Any]],
    named: Mapping[str, Any] | None,
    tally: _Tally,
) -> Flow[None]:
    """Write into runs what the prompt's legacy keys know (step one of migrating it).

    ``producing`` are the completed enhance runs that name the prompt as their result;
    ``named`` is the existing run its ``last_enhancement_run_id`` names (None if none). With
    no producing run, the named run is completed if it is the older shape of the run that made
    the prompt; otherwise a run is created, under the named id only while that id is free.
    Raises ``ConflictError`` or ``InvalidInputError`` if the database refuses a write.
    """
    if (
        not producing
        and named is not None
        and named["_id"] not in tally.taken
        and _adoptable(named, prompt)
    ):
        producing = [named]
    if not producing:
        run_id = named_run_id(prompt)
        if run_id is None or named is not None or run_id in tally.taken:
            run_id = new_run_id()  # the named id is no run id, or is not free
        document = _run_from_legacy_keys(prompt, tally.now, run_id)
        tally.taken.add(document["_id"])
        if not tally.dry_run:
            tally.writing = f"creating run {document['_id']}"
            yield from InsertOne(q.RUNS, document)
        tally.created.append(document["_id"])
        return
    for run_id, changes in _backfills(prompt, producing).items():
        tally.taken.add(run_id)
        if not tally.dry_run:
            tally.writing = f"completing the outputs of run {run_id}"
            change = {"$set": {**changes, "updated_at": tally.now}}
            yield from UpdateOne(q.RUNS, q.by_id(run_id), change)
        tally.backfilled.append(run_id)


def _named_runs(prompts: Sequence[Mapping[str, Any]]) -> Flow[dict[str, Mapping[str, Any]]]:
    """The existing runs that the prompts' ``last_enhancement_run_id`` name, by id."""
    wanted = sorted({run_id for prompt in prompts if (run_id := named_run_id(prompt))})
    if not wanted:
        return {}
    found = yield from Find(q.RUNS, {"_id": {"$in": wanted}})
    return {str(run["_id"]): run for run in found}


def absorb_legacy_keys(prompt: Mapping[str, Any]) -> Flow[None]:
    """Before a legacy prompt is overwritten in place (which unsets its keys), record what the
    keys know on the runs that produced it, as ``migrate`` would.

    Raises ``ConflictError`` or ``InvalidInputError`` if the database refuses a write.
    """
    producing = yield from Find(
        q.RUNS, {**q.COMPLETED_ENHANCEMENT, "outputs.enhanced_prompt_id": prompt["_id"]}
    )
    named = {} if producing else (yield from _named_runs([prompt]))
    named_run = named.get(named_run_id(prompt) or "")
    yield from _record_legacy_keys(prompt, producing, named_run, _Tally(utc_now(), False))


def _migrate_prompt(
    prompt: Mapping[str, Any],
    producing: Sequence[Mapping[str, Any]],
    named: Mapping[str, Any] | None,
    tally: _Tally,
) -> Flow[bool]:
    """Migrate one legacy prompt: record its keys in runs, then strip them. False, with the
    prompt's keys left as they were and the reason in ``tally.left``, if a write is refused:
    one prompt the database will not take must not stop the others."""
    before = len(tally.created), len(tally.backfilled)
    try:
        yield from _record_legacy_keys(prompt, producing, named, tally)
        if not tally.dry_run:
            tally.writing = "removing its keys"
            unset = {f"parameters.{key}": "" for key in sorted(LEGACY_ENHANCEMENT_KEYS)}
            change = {"$unset": unset, "$set": {"updated_at": tally.now}}
            yield from UpdateOne(q.PROMPTS, q.by_id(prompt["_id"]), change)
    except (ConflictError, InvalidInputError) as exc:
        # What was written before is idempotent backfill or a complete run, which the next
        # migration reads as this prompt's producing run: the prompt can simply be tried again.
        written = [*tally.created[before[0] :], *tally.backfilled[before[1] :]]
        named_id = (prompt.get("parameters") or {}).get("last_enhancement_run_id")
        facts = [f"refused while {tally.writing}: {exc}"]
        if named_id is not None:
            facts.append(f"its keys name run {named_id!r}")
        if written:
            facts.append(f"already written: run {', '.join(written)}")
        tally.left.append(f"{prompt['_id']}: left with its legacy keys ({'; '.join(facts)})")
        log.warning("migrate: %s", tally.left[-1])
        return False
    return True


MIGRATE_BATCH = 1000


def migrate(dry_run: bool = True, progress: Progress | None = None) -> Flow[MigrationReport]:
    """Backfill run records from legacy keys and fallbacks, then strip the keys. Idempotent.

    For each enhanced prompt with legacy keys: every completed enhance run that produced it
    gains the outputs it lacks; if none did, the run its ``last_enhancement_run_id`` names
    gains them when it is the older shape of the run that made it (a completed enhance run of
    its origin naming no result), else a run is created from the keys (with the named id only
    if no run has it). Only then are the keys removed, so a crash in between leaves keys that
    the next run migrates again. A prompt whose write the database refuses keeps its keys and
    is listed in ``prompts_left``; the others go on. Completed enhance runs missing
    ``enhancement_model`` or ``enhanced_at`` are backfilled from their own fallbacks.

    Raises ``InvalidInputError`` if ``dry_run`` is not a bool or ``progress`` is neither None
    nor callable.
    """
    if not isinstance(dry_run, bool):
        raise InvalidInputError("dry_run", "must be true or false")
    check_progress(progress)
    tally = _Tally(utc_now(), dry_run)
    stripped: list[str] = []
    examined = 0
    after: Any = None
    # A total for the progress bar: one count on the partial index of enhanced prompts.
    counted = yield from Aggregate(
        q.PROMPTS, ({"$match": q.legacy_prompts_filter()}, {"$count": "legacy"})
    )
    total = int(counted[0]["legacy"]) if counted else 0
    # In batches by _id: one $in per batch stays far below 16 MB however many prompts there are.
    while True:
        page = q.legacy_prompts_filter()
        if after is not None:
            page = {"$and": [page, {"_id": {"$gt": after}}]}
        batch = yield from Find(q.PROMPTS, page, sort=(("_id", 1),), limit=MIGRATE_BATCH)
        if not batch:
            break
        after, examined = batch[-1]["_id"], examined + len(batch)
        log.debug("migrate: %d legacy prompt(s) examined", examined)
        # Written meanwhile by another process, there may be more than counted.
        yield from reported(progress, "legacy prompts", examined, max(total, examined))
        producing = yield from Find(
            q.RUNS,
            {
                **q.COMPLETED_ENHANCEMENT,
                "outputs.enhanced_prompt_id": {"$in": [prompt["_id"] for prompt in batch]},
            },
        )
        by_result: dict[Any, list[Mapping[str, Any]]] = {}
        for run in producing:
            by_result.setdefault(run["outputs"].get("enhanced_prompt_id"), []).append(run)
        # The runs that run-less prompts' keys name: such an id may be taken by a run that does
        # not record the prompt (an older shape, a failed or another kind of run).
        named = yield from _named_runs([p for p in batch if p["_id"] not in by_result])
        for prompt in batch:
            runs = by_result.get(prompt["_id"], [])
            named_run = None if runs else named.get(named_run_id(prompt) or "")
            if (yield from _migrate_prompt(prompt, runs, named_run, tally)):
                stripped.append(prompt["_id"])
    # The last word: how many there were (also when there were none).
    yield from reported(progress, "legacy prompts", examined, examined)
    backfilled = tally.backfilled
    incomplete = yield from Find(q.RUNS, q.incomplete_runs_filter())
    for run in incomplete:
        if str(run["_id"]) in backfilled:
            continue
        changes = _own_backfill(run)
        if changes:
            backfilled.append(str(run["_id"]))
            if not dry_run:
                yield from UpdateOne(
                    q.RUNS, q.by_id(run["_id"]), {"$set": {**changes, "updated_at": tally.now}}
                )
    return MigrationReport(
        dry_run=dry_run,
        prompts_examined=examined,
        runs_backfilled=backfilled,
        runs_created=tally.created,
        prompts_stripped=stripped,
        prompts_left=tally.left,
    )
