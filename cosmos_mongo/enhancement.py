"""Enhancement, written once: the enhance and revert workflows, the query helpers, lineage,
``verify`` and ``repair``. Both store twins drive these generators.

Write order of an enhancement (no transaction needed; each step is one idempotent write):

1. insert the enhance run, ``running``, recording the model, ``create_new``, the text being
   replaced and the id of the prompt it will produce (chosen up front);
2. record the enhanced text on the run (folded into 1 when the caller supplied the text);
3. insert the new prompt under the chosen id, or compare-and-set the original's text;
4. mark the run ``completed`` with its full outputs.

A crash between any two leaves a state ``verify()`` reports and ``repair()`` settles: before
2 it rolls the run back to ``failed`` (no text existed); from 2 on it finishes 3 and 4.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from cosmos_mongo import legacy
from cosmos_mongo import queries as q
from cosmos_mongo import validation as v
from cosmos_mongo.enhancers import (
    MAX_ENHANCED_WORDS,
    clean_enhanced_text,
    tidy_model_text,
    word_count,
)
from cosmos_mongo.errors import (
    ConflictError,
    EnhancementError,
    InvalidInputError,
    PromptNotFoundError,
    RunNotFoundError,
    StorageError,
)
from cosmos_mongo.models import (
    EnhancementDetails,
    EnhancementResult,
    Lineage,
    LineageEdge,
    Prompt,
    RepairReport,
    Run,
    VerificationReport,
    new_prompt_id,
    new_run_id,
    utc_now,
)
from cosmos_mongo.ops import (
    Aggregate,
    Find,
    FindOne,
    FindOneAndUpdate,
    Flow,
    Generate,
    Generated,
    InsertOne,
    UpdateOne,
)

DEFAULT_STALE_AFTER = timedelta(minutes=10)
_ID_ONLY = {"_id": 1}


def check_flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(field, f"must be true or false, got {value!r}")
    return value


def check_enhanced_text(value: object) -> str:
    """Text a caller wrote: cleaned like a model's answer, non-empty, within Cosmos' limit."""
    text = clean_enhanced_text(v.check_text(value, "enhanced_text"))
    if not text:
        raise InvalidInputError("enhanced_text", "must contain text besides markup and labels")
    if word_count(text) > MAX_ENHANCED_WORDS:
        raise InvalidInputError(
            "enhanced_text",
            f"must be at most {MAX_ENHANCED_WORDS} words (Cosmos' limit), got {word_count(text)}",
        )
    return text


def check_stale_after(value: object) -> timedelta:
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise InvalidInputError("stale_after", "must be a timedelta of zero or more")
    return value


def _usable(reply: Generated, model: str) -> tuple[str, str | None]:
    """The cleaned text of an enhancer's reply, or why it cannot be used."""
    if reply.error is not None:
        return "", f"enhancer {model} failed: {type(reply.error).__name__}: {reply.error}"
    if not isinstance(reply.text, str):
        return "", f"enhancer {model} returned no text"
    text = tidy_model_text(reply.text)
    if not text:
        return "", f"enhancer {model} returned empty text"
    if len(text) > v.MAX_PROMPT_TEXT_CHARS:
        return "", f"enhancer {model} returned more than {v.MAX_PROMPT_TEXT_CHARS} characters"
    return text, None


def enhance_prompt(
    prompt_id: object,
    create_new: object = True,
    force_overwrite: object = False,
    enhanced_text: object = None,
    *,
    model: str,
) -> Flow[EnhancementResult]:
    """Enhance a prompt; ``model`` is the name the store resolved (enhancer or text's author)."""
    checked_id = v.check_prompt_id(prompt_id)
    new = check_flag(create_new, "create_new")
    force = check_flag(force_overwrite, "force_overwrite")
    supplied = None if enhanced_text is None else check_enhanced_text(enhanced_text)
    prompt = yield FindOne(q.PROMPTS, q.by_id(checked_id))
    if prompt is None:
        raise PromptNotFoundError(checked_id)
    if not new and not force:
        blocking = yield FindOne(q.RUNS, q.blocking_runs_filter(checked_id), {"model_type": 1})
        if blocking is not None:
            raise ConflictError(
                f"prompt {checked_id} has a {blocking.get('model_type')} run "
                f"({blocking['_id']}) that used its current text, so it is not overwritten. "
                "Pass create_new=True to keep the original and create an enhanced copy, or "
                "force_overwrite=True to overwrite it anyway."
            )
    run_id = new_run_id()
    target = new_prompt_id() if new else checked_id
    document = q.enhance_run_document(run_id, prompt, model, new, target, utc_now(), supplied)
    try:
        yield InsertOne(q.RUNS, document)
        return (yield from _produce(run_id, prompt, target, model, supplied))
    except StorageError as exc:
        # The outcome of the interrupted write is unknown: say which run to look at.
        raise StorageError(
            f"{exc} (during enhancement run {run_id}: verify() reports it if it was left "
            "half-finished, and repair() settles it)"
        ) from exc


def _produce(
    run_id: str, prompt: Mapping[str, Any], target: str, model: str, supplied: str | None
) -> Flow[EnhancementResult]:
    """Get the text (unless supplied), record it, then write the prompt and finish the run."""
    seconds = 0.0
    if supplied is None:
        reply = yield Generate(prompt["prompt_text"], prompt.get("inputs") or {})
        text, problem = _usable(reply, model)
        if problem is not None:
            yield UpdateOne(q.RUNS, q.running_run(run_id), q.fail_run(problem, utc_now()))
            raise EnhancementError(problem, run_id) from reply.error
        yield UpdateOne(q.RUNS, q.by_id(run_id), q.record_text(text, utc_now()))
        seconds = reply.seconds
    else:
        text = supplied
    return (yield from _apply(run_id, prompt, target, text, model, seconds, prompt["prompt_text"]))


def _apply(
    run_id: str,
    original: Mapping[str, Any],
    target: str,
    text: str,
    model: str,
    seconds: float | None,
    expected_text: str,
) -> Flow[EnhancementResult]:
    """Writes 3 and 4: the prompt, then the run's completion. Safe to repeat."""
    now = utc_now()
    if target != original["_id"]:
        document = q.enhanced_prompt_document(target, original, text, now)
        with contextlib.suppress(ConflictError):  # inserted by the attempt this one finishes
            yield InsertOne(q.PROMPTS, document)
    else:
        matched = yield UpdateOne(
            q.PROMPTS, q.overwrite_filter(target, expected_text), q.overwrite_update(text, now)
        )
        if not matched:
            problem = (
                "the prompt's text changed while it was being enhanced; nothing was overwritten"
            )
            yield UpdateOne(q.RUNS, q.running_run(run_id), q.fail_run(problem, now))
            raise ConflictError(f"{problem} (run {run_id} marked failed); enhance it again")
    outputs = q.enhancement_outputs(original["_id"], target, text, model, now, seconds)
    yield UpdateOne(q.RUNS, q.running_run(run_id), q.complete_run(outputs, now))
    return EnhancementResult(
        run_id=run_id,
        original_prompt_id=original["_id"],
        enhanced_prompt_id=target,
        enhanced_text=text,
        enhancement_model=model,
        duration_seconds=round(seconds or 0.0, 3),
        status="completed",
    )


def revert_enhancement(run_id: object) -> Flow[Prompt]:
    """Restore an overwritten prompt from its enhance run's ``original_prompt_text``."""
    checked_id = v.check_run_id(run_id)
    run = yield FindOne(q.RUNS, q.by_id(checked_id))
    if run is None:
        raise RunNotFoundError(checked_id)
    outputs, config = run.get("outputs") or {}, run.get("execution_config") or {}
    if run.get("model_type") != q.ENHANCE:
        raise ConflictError(
            f"run {checked_id} is a {run.get('model_type')} run, not an enhancement"
        )
    if run.get("status") != "completed":
        raise ConflictError(
            f"run {checked_id} is {run.get('status')}; only a completed enhancement can be reverted"
        )
    prompt_id = outputs.get("enhanced_prompt_id")
    if prompt_id != outputs.get("original_prompt_id"):
        raise ConflictError(
            f"run {checked_id} created {prompt_id} as a new prompt and left the original "
            f"{outputs.get('original_prompt_id')} unchanged; delete {prompt_id} instead"
        )
    original_text = config.get("original_prompt_text")
    if not isinstance(original_text, str) or not original_text:
        raise ConflictError(
            f"run {checked_id} did not record the text it replaced; nothing to restore"
        )
    prompt = yield FindOne(q.PROMPTS, q.by_id(str(prompt_id)))
    if prompt is None:
        raise PromptNotFoundError(str(prompt_id))
    if prompt["prompt_text"] != outputs.get("enhanced_text"):
        raise ConflictError(
            f"prompt {prompt_id} changed after run {checked_id}; reverting would discard that "
            "change (revert later enhancements first)"
        )
    yield UpdateOne(
        q.RUNS,
        {"_id": checked_id, "status": "completed"},
        {"$set": {"outputs.revert_pending": True, "updated_at": utc_now()}},
    )
    return (yield from _finish_revert(run))


def _finish_revert(run: Mapping[str, Any]) -> Flow[Prompt]:
    outputs, config = run.get("outputs") or {}, run.get("execution_config") or {}
    now = utc_now()
    restored = yield FindOneAndUpdate(
        q.PROMPTS,
        q.overwrite_filter(outputs["enhanced_prompt_id"], outputs["enhanced_text"]),
        q.overwrite_update(
            config["original_prompt_text"], now, bool(config.get("previously_enhanced"))
        ),
    )
    if restored is None:
        yield UpdateOne(q.RUNS, q.by_id(run["_id"]), {"$unset": {"outputs.revert_pending": ""}})
        raise ConflictError(
            f"prompt {outputs['enhanced_prompt_id']} changed while reverting; nothing restored"
        )
    yield UpdateOne(
        q.RUNS,
        q.by_id(run["_id"]),
        {
            "$set": {"status": "cancelled", "outputs.reverted_at": now, "updated_at": now},
            "$unset": {"outputs.revert_pending": ""},
        },
    )
    return Prompt.from_document(restored)


# -- the four helpers and lineage: one round trip each ---------------------------------------


def get_enhancement_details(prompt_id: object) -> Flow[EnhancementDetails | None]:
    found = yield Aggregate(q.PROMPTS, q.details_pipeline(v.check_prompt_id(prompt_id)))
    if not found:
        return None
    document = found[0]
    return legacy.enhancement_details(document, document.pop("result_of", []))


def get_original_prompt(enhanced_prompt_id: object) -> Flow[Prompt | None]:
    checked_id = v.check_prompt_id(enhanced_prompt_id, "enhanced_prompt_id")
    found = yield Aggregate(q.PROMPTS, q.original_pipeline(checked_id))
    if not found:
        return None
    document = found[0]
    creating = legacy.latest(
        [
            run
            for run in document.get("result_of", [])
            if legacy.is_completed_enhancement(run)
            and run["outputs"].get("enhanced_prompt_id") == checked_id
            and run["outputs"].get("original_prompt_id") not in (None, checked_id)
        ]
    )
    if creating is not None:
        parent, candidates = (
            creating["outputs"]["original_prompt_id"],
            document.get("run_originals", []),
        )
    else:
        parent, candidates = legacy.legacy_parent_id(document), document.get("legacy_originals", [])
    match = next((p for p in candidates if parent is not None and p["_id"] == parent), None)
    return None if match is None else Prompt.from_document(match)


def list_enhanced_prompts(limit: object = 100) -> Flow[list[Prompt]]:
    documents = yield Find(
        q.PROMPTS, q.enhanced_prompts_filter(), sort=q.NEWEST_FIRST, limit=v.check_limit(limit)
    )
    return [Prompt.from_document(document) for document in documents]


def get_enhancement_history(prompt_id: object, limit: object = 100) -> Flow[list[Run]]:
    documents = yield Find(
        q.RUNS,
        q.history_filter(v.check_prompt_id(prompt_id)),
        sort=q.NEWEST_FIRST,
        limit=v.check_limit(limit),
    )
    return [Run.from_document(document) for document in documents]


def get_lineage(prompt_id: object) -> Flow[Lineage]:
    checked_id = v.check_prompt_id(prompt_id)
    found = yield Aggregate(q.PROMPTS, q.lineage_pipeline(checked_id))
    if not found:
        raise PromptNotFoundError(checked_id)
    return assemble_lineage(found[0])


def assemble_lineage(document: Mapping[str, Any]) -> Lineage:
    """Build the tree from the lineage pipeline's edges; cycles and missing prompts are fine."""
    prompt_id = document["_id"]
    runs = {run["_id"]: run for key in q.LINEAGE_RUNS for run in document.get(key) or []}
    prompt_docs = {doc["_id"]: doc for key in q.LINEAGE_PROMPTS for doc in document.get(key) or []}
    prompt_docs[prompt_id] = document
    in_place = sorted(
        (Run.from_document(r) for r in runs.values() if _endpoints(r)[0] == _endpoints(r)[1]),
        key=lambda run: (run.created_at, run.id),
    )
    parent_of: dict[str, tuple[str, Run | None]] = {}
    for run in sorted(
        runs.values(), key=lambda r: (legacy.run_enhanced_at(r) or r["created_at"], str(r["_id"]))
    ):
        parent, child = _endpoints(run)
        if parent and child and parent != child and child not in parent_of:
            parent_of[child] = (parent, Run.from_document(run))
    for doc in prompt_docs.values():
        parent = legacy.legacy_parent_id(doc)
        if parent is not None and doc["_id"] not in parent_of:
            parent_of[doc["_id"]] = (parent, None)
    children_of: dict[str, list[str]] = {}
    for child, (parent, _) in parent_of.items():
        children_of.setdefault(parent, []).append(child)

    ancestors: list[LineageEdge] = []
    node, seen = prompt_id, {prompt_id}
    while node in parent_of and parent_of[node][0] not in seen:
        parent, run = parent_of[node]
        ancestors.append(
            LineageEdge(parent_id=parent, child_id=node, depth=len(ancestors) + 1, run=run)
        )
        seen.add(parent)
        node = parent

    descendants: list[LineageEdge] = []
    queue, seen_down = deque([(prompt_id, 1)]), {prompt_id}
    while queue:
        parent, depth = queue.popleft()
        for child in children_of.get(parent, []):
            if child in seen_down:
                continue
            seen_down.add(child)
            descendants.append(
                LineageEdge(parent_id=parent, child_id=child, depth=depth, run=parent_of[child][1])
            )
            queue.append((child, depth + 1))

    named = (
        {prompt_id}
        | {e.parent_id for e in ancestors + descendants}
        | {e.child_id for e in ancestors + descendants}
    )
    return Lineage(
        prompt_id=prompt_id,
        root_id=node,
        ancestors=ancestors,
        descendants=descendants,
        in_place=[run for run in in_place if run.prompt_id in named],
        prompts={
            i: Prompt.from_document(prompt_docs[i]) for i in sorted(named) if i in prompt_docs
        },
        missing_prompt_ids=sorted(named - set(prompt_docs)),
    )


def _endpoints(run: Mapping[str, Any]) -> tuple[Any, Any]:
    outputs = run.get("outputs") or {}
    return outputs.get("original_prompt_id"), outputs.get("enhanced_prompt_id")


# -- verify and repair -----------------------------------------------------------------------


def verify(stale_after: object = DEFAULT_STALE_AFTER) -> Flow[VerificationReport]:
    """The seed's three checks, plus enhancements and reverts interrupted between writes."""
    before = utc_now() - check_stale_after(stale_after)
    legacy_prompts = yield Find(q.PROMPTS, q.legacy_prompts_filter(), projection=_ID_ONLY)
    incomplete = yield Find(q.RUNS, q.incomplete_runs_filter(), projection=_ID_ONLY)
    dangling = yield Aggregate(q.RUNS, q.dangling_edges_pipeline())
    stale = yield Find(q.RUNS, q.stale_enhancements_filter(before), projection=_ID_ONLY)
    reverts = yield Find(q.RUNS, q.pending_reverts_filter(before), projection=_ID_ONLY)
    return VerificationReport(
        prompts_with_legacy_keys=[doc["_id"] for doc in legacy_prompts],
        incomplete_enhance_runs=[doc["_id"] for doc in incomplete],
        dangling_edges=[_describe_dangling(doc) for doc in dangling],
        half_finished=[f"{doc['_id']}: enhancement interrupted" for doc in stale]
        + [f"{doc['_id']}: revert interrupted" for doc in reverts],
    )


def _describe_dangling(run: Mapping[str, Any]) -> str:
    original, result = _endpoints(run)
    gone = []
    if not run.get("original"):
        gone.append(f"original {original}")
    if not run.get("result"):
        gone.append(f"result {result}")
    return f"{run['_id']}: {' and '.join(gone)} missing"


def repair(stale_after: object = DEFAULT_STALE_AFTER) -> Flow[RepairReport]:
    """Finish or roll back interrupted enhancements and reverts, then migrate legacy data."""
    before = utc_now() - check_stale_after(stale_after)
    completed: list[str] = []
    rolled_back: list[str] = []
    reverts_finished: list[str] = []
    unrepairable: list[str] = []
    for run in (yield Find(q.RUNS, q.stale_enhancements_filter(before))):
        outcome = yield from _settle(run)
        (completed if outcome else rolled_back).append(run["_id"])
    for run in (yield Find(q.RUNS, q.pending_reverts_filter(before))):
        problem = yield from _settle_revert(run)
        if problem is None:
            reverts_finished.append(run["_id"])
        else:
            unrepairable.append(f"{run['_id']}: {problem}")
    migration = yield from legacy.migrate(dry_run=False)
    for doc in (yield Aggregate(q.RUNS, q.dangling_edges_pipeline())):
        unrepairable.append(f"{_describe_dangling(doc)}: a deleted prompt cannot be restored")
    for doc in (yield Find(q.RUNS, q.incomplete_runs_filter())):
        missing = [name for name in q.OUTPUT_FIELDS if name not in (doc.get("outputs") or {})]
        unrepairable.append(f"{doc['_id']}: nothing records its {', '.join(missing)}")
    return RepairReport(
        completed=completed,
        rolled_back=rolled_back,
        reverts_finished=reverts_finished,
        migration=migration,
        unrepairable=unrepairable,
    )


def _settle_revert(run: Mapping[str, Any]) -> Flow[str | None]:
    """Finish an interrupted revert, or undo its flag if the prompt moved on; None if done."""
    outputs, config = run.get("outputs") or {}, run.get("execution_config") or {}
    prompt = yield FindOne(q.PROMPTS, q.by_id(str(outputs.get("enhanced_prompt_id"))))
    text = None if prompt is None else prompt.get("prompt_text")
    if text == outputs.get("enhanced_text"):
        try:
            yield from _finish_revert(run)
        except ConflictError as exc:
            return str(exc)
        return None
    if text == config.get("original_prompt_text"):  # the prompt was restored; only the run lags
        now = utc_now()
        done = {
            "$set": {"status": "cancelled", "outputs.reverted_at": now, "updated_at": now},
            "$unset": {"outputs.revert_pending": ""},
        }
        yield UpdateOne(q.RUNS, q.by_id(run["_id"]), done)
        return None
    yield UpdateOne(q.RUNS, q.by_id(run["_id"]), {"$unset": {"outputs.revert_pending": ""}})
    return "the prompt changed since the revert began; the revert was abandoned"


def _settle(run: Mapping[str, Any]) -> Flow[bool]:
    """Finish an interrupted enhancement if its text was recorded; else mark it failed."""
    config, outputs = run.get("execution_config") or {}, run.get("outputs") or {}
    text, target = outputs.get("enhanced_text"), config.get("target_prompt_id")
    original = yield FindOne(q.PROMPTS, q.by_id(run["prompt_id"]))
    expected = config.get("original_prompt_text")
    problem = None
    if not isinstance(text, str) or not isinstance(target, str):
        problem = "interrupted before the enhanced text was recorded"
    elif original is None:
        problem = "interrupted, and the original prompt no longer exists"
    elif target == original["_id"] and original["prompt_text"] not in (text, expected):
        problem = "interrupted, and the prompt's text has changed since"
    if problem is not None or original is None or not isinstance(text, str):
        message = f"{problem}; rolled back by repair"
        yield UpdateOne(q.RUNS, q.running_run(run["_id"]), q.fail_run(message, utc_now()))
        return False
    if target == original["_id"] and original["prompt_text"] == text:
        expected = text  # the overwrite landed before the interruption: only the run is left
    model = config.get("model") or "unknown"
    try:
        yield from _apply(run["_id"], original, str(target), text, model, None, str(expected))
    except ConflictError:
        return False
    return True
