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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from cosmos_mongo import legacy
from cosmos_mongo import queries as q
from cosmos_mongo import validation as v
from cosmos_mongo.enhancers import (
    MAX_ENHANCED_WORDS,
    clean_enhanced_text,
    fenced_code_language,
    tidy_model_text,
    without_credentials,
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
    Listing,
    MigrationReport,
    Prompt,
    RepairReport,
    Run,
    VerificationReport,
    as_utc,
    document_problems,
    listing,
    model_of,
    new_prompt_id,
    new_run_id,
    utc_now,
)
from cosmos_mongo.ops import (
    Aggregate,
    Cancelled,
    DamagedDocuments,
    DeleteMany,
    DeleteOne,
    Document,
    Find,
    FindOne,
    FindOneAndUpdate,
    Flow,
    Generate,
    Generated,
    InsertOne,
    Progress,
    Report,
    UpdateMany,
    UpdateOne,
    reported,
)
from cosmos_mongo.workflows import documents_page

DEFAULT_STALE_AFTER = timedelta(minutes=10)
# Runs that mean a GPU job is using the prompt's text right now.
OVERWRITE_ACTIVE_STATUSES: Final = frozenset({"running", "uploading"})
_ID_ONLY = {"_id": 1}


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


MAX_STALE_AFTER: Final = timedelta(days=36500)


def check_stale_after(value: object) -> timedelta:
    if not isinstance(value, timedelta) or not timedelta(0) <= value <= MAX_STALE_AFTER:
        raise InvalidInputError(
            "stale_after", "must be a timedelta from zero to 100 years (36500 days)"
        )
    return value


def _usable(reply: Generated, model: str) -> tuple[str, str | None]:
    """The cleaned text of an enhancer's reply, or why it cannot be used."""
    if reply.error is not None:
        # Any enhancer's exception may quote a URL with its credentials: never store those.
        detail = without_credentials(str(reply.error))
        return "", f"enhancer {model} failed: {type(reply.error).__name__}: {detail}"
    if not isinstance(reply.text, str):
        return "", f"enhancer {model} returned no text"
    if (language := fenced_code_language(reply.text)) is not None:
        return "", f"enhancer {model} returned a {language or 'code'} code block, not a prompt"
    text = tidy_model_text(reply.text)
    if not text:
        return "", f"enhancer {model} returned empty text"
    try:
        v.check_unicode(text, "enhanced_text")
    except InvalidInputError:
        return "", f"enhancer {model} returned text that is not valid Unicode (a lone surrogate)"
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
    on_run: Callable[[str], None] | None = None,
) -> Flow[EnhancementResult]:
    """Enhance a prompt; ``model`` is the name the store resolved (enhancer or text's author).
    ``on_run(run_id)`` is called once the run is durably recorded."""
    checked_id = v.check_prompt_id(prompt_id)
    new = v.check_flag(create_new, "create_new")
    force = v.check_flag(force_overwrite, "force_overwrite")
    supplied = None if enhanced_text is None else check_enhanced_text(enhanced_text)
    prompt = yield from FindOne(q.PROMPTS, q.by_id(checked_id))
    if prompt is None:
        raise PromptNotFoundError(checked_id)
    guarded = not new and not force
    if guarded and (refusal := (yield from _overwrite_refusal(checked_id))) is not None:
        raise refusal
    run_id = new_run_id()
    target = new_prompt_id() if new else checked_id
    document = q.enhance_run_document(run_id, prompt, model, new, target, utc_now(), supplied)
    run_recorded = False
    try:
        if not new and legacy.has_legacy_keys(prompt):
            # The overwrite unsets the old keys: first let the runs record what they knew.
            yield from legacy.absorb_legacy_keys(prompt)
        yield from InsertOne(q.RUNS, document)
        run_recorded = True
        if on_run is not None:
            yield from Report(lambda: on_run(run_id))
        return (yield from _produce(run_id, prompt, target, model, supplied, guarded))
    except Cancelled:
        # The caller is gone (a client cancelled or timed out): settle the run as repair
        # would, now rather than when it is stale, and let the cancellation go on.
        run = yield from FindOne(q.RUNS, q.running_run(run_id))
        if run is not None:
            yield from _settle(run, _CANCELLED)
        raise
    except StorageError as exc:
        if type(exc) is not StorageError:
            raise  # ReadOnlyError, InvalidDocumentError: their class says what happened
        # The outcome of the interrupted write is unknown: say which run to look at.
        raise StorageError(
            f"{exc} (during enhancement run {run_id}: verify() reports it if it was left "
            "half-finished, and repair() settles it)",
            reason=exc.reason,
            may_have_written=run_recorded or exc.may_have_written,
        ) from exc


def _overwrite_refusal(prompt_id: str) -> Flow[ConflictError | None]:
    """Why an in-place overwrite must not go ahead: runs that used the current text."""
    blocking = yield from Find(
        q.RUNS,
        q.blocking_runs_filter(prompt_id),
        sort=q.NEWEST_FIRST,
        limit=v.MAX_LIMIT,
        projection={"model_type": 1, "status": 1},
    )
    if not blocking:
        return None
    active = [run for run in blocking if run.get("status") in OVERWRITE_ACTIVE_STATUSES]
    shown = ", ".join(
        f"{run['_id']} ({run.get('model_type')}, {run.get('status')})" for run in blocking[:20]
    )
    more = f" and {len(blocking) - 20} more" if len(blocking) > 20 else ""
    return ConflictError(
        f"prompt {prompt_id} has {len(blocking)} run(s) that used its current text, "
        f"{len(active)} of them active (running or uploading): {shown}{more}. It is not "
        "overwritten. Pass create_new=True to keep the original and create an enhanced copy, "
        "or force_overwrite=True to overwrite it anyway.",
        prompt_id=prompt_id,
        run_ids=[run["_id"] for run in blocking],
        reason="has_runs",
    )


def _produce(
    run_id: str,
    prompt: Mapping[str, Any],
    target: str,
    model: str,
    supplied: str | None,
    guarded: bool,
) -> Flow[EnhancementResult]:
    """Get the text (unless supplied), record it, then write the prompt and finish the run.

    Recording the text only matches a run that is still ``running``: if ``delete_prompt`` or
    ``repair`` settled the run while the enhancer worked, nothing further is written.
    """
    seconds = 0.0
    if supplied is None:
        reply = yield from Generate(prompt["prompt_text"], prompt.get("inputs") or {})
        text, problem = _usable(reply, model)
        if problem is not None:
            outcome = yield from _fail(run_id, prompt["_id"], problem)
            raise EnhancementError(problem, run_id, outcome=outcome) from reply.error
        if not (
            yield from UpdateOne(q.RUNS, q.running_run(run_id), q.record_text(text, utc_now()))
        ):
            raise (yield from _lost_run(run_id, prompt["_id"], "while the enhancer worked"))
        seconds = reply.seconds
    else:
        text = supplied
    if guarded and (refusal := (yield from _overwrite_refusal(prompt["_id"]))) is not None:
        # A run of the prompt appeared while the text was being written: refuse after all.
        outcome = yield from _fail(run_id, prompt["_id"], "refused: " + str(refusal))
        raise ConflictError(
            f"{refusal} (run {run_id} {outcome})",
            prompt_id=refusal.prompt_id,
            run_ids=[*refusal.run_ids, run_id],
            reason=refusal.reason,
        )
    return (yield from _apply(run_id, prompt, target, text, model, seconds, prompt["prompt_text"]))


def _fail(run_id: str, prompt_id: str, problem: str) -> Flow[str]:
    """Mark a running enhance run failed; say what became of it.

    A run whose prompt is gone is deleted instead, so a failed call leaves no orphan.
    """
    if not (yield from UpdateOne(q.RUNS, q.running_run(run_id), q.fail_run(problem, utc_now()))):
        return "was already settled or deleted by another writer"
    if (yield from FindOne(q.PROMPTS, q.by_id(prompt_id), _ID_ONLY)) is None:
        yield from DeleteOne(q.RUNS, q.by_id(run_id))
        return "deleted with its prompt"
    return "marked failed"


def _lost_run(
    run_id: str, prompt_id: str, when: str, done: str = "nothing else was written"
) -> Flow[ConflictError]:
    """The error for a run that another writer settled or deleted ``when``."""
    run = yield from FindOne(q.RUNS, q.by_id(run_id), {"status": 1, "error_message": 1})
    if run is None:
        fate = "was deleted (its prompt was deleted)"
    else:
        fate = f"was settled by another writer (repair?) as {run.get('status')}"
    return ConflictError(
        f"enhance run {run_id} {fate} {when}; the enhancement was abandoned and {done}",
        prompt_id=prompt_id,
        run_ids=[run_id],
        reason="run_settled",
    )


def _apply(
    run_id: str,
    original: Mapping[str, Any],
    target: str,
    text: str,
    model: str,
    seconds: float | None,
    expected_text: str,
) -> Flow[EnhancementResult]:
    """Writes 3 and 4: the prompt, then the run's completion. Safe to repeat.

    Each write checks what it matched. If the run was settled or deleted meanwhile, the
    prompt write is undone (compensation) and the call fails, so no answer describes
    something that is not stored and nothing is left orphaned.
    """
    now = utc_now()
    if target != original["_id"]:
        document = q.enhanced_prompt_document(target, original, text, now)
        with contextlib.suppress(ConflictError):  # inserted by the attempt this one finishes
            yield from InsertOne(q.PROMPTS, document)
    else:
        matched = yield from UpdateOne(
            q.PROMPTS, q.overwrite_filter(target, expected_text), q.overwrite_update(text, now)
        )
        if not matched and (yield from _finished_by_another(run_id, target, text)):
            matched = 1  # repair finished this very enhancement meanwhile
        current = None if matched else (yield from FindOne(q.PROMPTS, q.by_id(target), _ID_ONLY))
        if not matched:
            problem = (
                "the prompt was deleted while it was being enhanced"
                if current is None
                else "the prompt's text changed while it was being enhanced"
            )
            outcome = yield from _fail(run_id, target, f"{problem}; nothing was overwritten")
            raise ConflictError(
                f"{problem}; nothing was overwritten (run {run_id} {outcome}); enhance it again",
                prompt_id=target,
                run_ids=[run_id],
                reason="prompt_deleted" if current is None else "text_changed",
            )
    outputs = q.enhancement_outputs(original["_id"], target, text, model, now, seconds)
    if not (yield from UpdateOne(q.RUNS, q.running_run(run_id), q.complete_run(outputs, now))):
        yield from _compensate(run_id, original, target, text, expected_text)
    return EnhancementResult(
        run_id=run_id,
        original_prompt_id=original["_id"],
        enhanced_prompt_id=target,
        enhanced_text=text,
        enhancement_model=model,
        duration_seconds=round(seconds or 0.0, 3),
        status="completed",
    )


def _finished_by_another(run_id: str, target: str, text: str) -> Flow[bool]:
    """Whether another writer (repair) completed this run exactly as this call would."""
    run = yield from FindOne(q.RUNS, q.by_id(run_id), {"status": 1, "outputs": 1})
    outputs = (run or {}).get("outputs") or {}
    return (
        run is not None
        and run.get("status") == "completed"
        and outputs.get("enhanced_prompt_id") == target
        and outputs.get("enhanced_text") == text
    )


def _compensate(
    run_id: str, original: Mapping[str, Any], target: str, text: str, expected_text: str
) -> Flow[None]:
    """The run could not be completed. If another writer completed it just as this call would
    have, the answer stands; otherwise undo the prompt write and raise."""
    if (yield from _finished_by_another(run_id, target, text)):
        return
    run = yield from FindOne(q.RUNS, q.by_id(run_id), {"execution_config": 1})
    now = utc_now()
    if target != original["_id"]:
        yield from DeleteOne(q.PROMPTS, {"_id": target, "prompt_text": text})
    else:
        previously = bool((run or {}).get("execution_config", {}).get("previously_enhanced"))
        previously = previously or (original.get("parameters") or {}).get("enhanced") is True
        yield from UpdateOne(
            q.PROMPTS,
            q.overwrite_filter(target, text),
            q.overwrite_update(expected_text, now, previously),
        )
    raise (
        yield from _lost_run(
            run_id, str(original["_id"]), "before it was completed", "its prompt write was undone"
        )
    )


def revert_enhancement(run_id: object) -> Flow[Prompt]:
    """Restore an overwritten prompt from its enhance run's ``original_prompt_text``."""
    run = yield from check_revert(run_id)
    yield from UpdateOne(
        q.RUNS,
        {"_id": run["_id"], "status": "completed"},
        {"$set": {"outputs.revert_pending": True, "updated_at": utc_now()}},
    )
    return (yield from _finish_revert(run))


def check_revert(run_id: object) -> Flow[Document]:
    """Reads only: the run, if :func:`revert_enhancement` of it can go ahead now; raises
    what that would raise otherwise."""
    checked_id = v.check_run_id(run_id)
    run = yield from FindOne(q.RUNS, q.by_id(checked_id))
    if run is None:
        raise RunNotFoundError(checked_id)
    outputs, config = run.get("outputs") or {}, run.get("execution_config") or {}
    prompt_id = outputs.get("enhanced_prompt_id")
    involved = prompt_id if isinstance(prompt_id, str) else run.get("prompt_id")

    def refusal(message: str, reason: str) -> ConflictError:
        shown = involved if isinstance(involved, str) else None
        return ConflictError(message, prompt_id=shown, run_ids=[checked_id], reason=reason)

    if run.get("model_type") != q.ENHANCE:
        raise refusal(
            f"run {checked_id} is a {run.get('model_type')} run, not an enhancement",
            "not_enhancement",
        )
    if run.get("status") != "completed":
        raise refusal(
            f"run {checked_id} is {run.get('status')}; only a completed enhancement can be "
            "reverted",
            "not_completed",
        )
    if prompt_id != outputs.get("original_prompt_id"):
        raise refusal(
            f"run {checked_id} created {prompt_id} as a new prompt and left the original "
            f"{outputs.get('original_prompt_id')} unchanged; delete {prompt_id} instead",
            "created_new",
        )
    original_text = config.get("original_prompt_text")
    if not isinstance(original_text, str) or not original_text:
        raise refusal(
            f"run {checked_id} did not record the text it replaced; nothing to restore",
            "no_original_text",
        )
    prompt = yield from FindOne(q.PROMPTS, q.by_id(str(prompt_id)))
    if prompt is None:
        raise PromptNotFoundError(str(prompt_id))
    if prompt["prompt_text"] != outputs.get("enhanced_text"):
        raise refusal(
            f"prompt {prompt_id} changed after run {checked_id}; reverting would discard that "
            "change (revert later enhancements first)",
            "text_changed",
        )
    return run


def _finish_revert(run: Mapping[str, Any]) -> Flow[Prompt]:
    outputs, config = run.get("outputs") or {}, run.get("execution_config") or {}
    now = utc_now()
    restored = yield from FindOneAndUpdate(
        q.PROMPTS,
        q.overwrite_filter(outputs["enhanced_prompt_id"], outputs["enhanced_text"]),
        q.overwrite_update(
            config["original_prompt_text"], now, bool(config.get("previously_enhanced"))
        ),
    )
    if restored is None:
        yield from UpdateOne(
            q.RUNS, q.by_id(run["_id"]), {"$unset": {"outputs.revert_pending": ""}}
        )
        raise ConflictError(
            f"prompt {outputs['enhanced_prompt_id']} changed while reverting; nothing restored",
            prompt_id=outputs["enhanced_prompt_id"],
            run_ids=[run["_id"]],
            reason="text_changed",
        )
    yield from UpdateOne(
        q.RUNS,
        q.by_id(run["_id"]),
        {
            "$set": {"status": "cancelled", "outputs.reverted_at": now, "updated_at": now},
            "$unset": {"outputs.revert_pending": ""},
        },
    )
    return model_of(Prompt, restored, written=True)


# -- the four helpers and lineage: one round trip each ---------------------------------------


def get_enhancement_details(prompt_id: object) -> Flow[EnhancementDetails | None]:
    found = yield from Aggregate(q.PROMPTS, q.details_pipeline(v.check_prompt_id(prompt_id)))
    if not found:
        return None
    document = found[0]
    result_of = document.pop("result_of", [])
    model_of(Prompt, document)  # the details read its fields: one that does not fit is named
    return legacy.enhancement_details(document, result_of)


def get_original_prompt(enhanced_prompt_id: object) -> Flow[Prompt | None]:
    checked_id = v.check_prompt_id(enhanced_prompt_id, "enhanced_prompt_id")
    found = yield from Aggregate(q.PROMPTS, q.original_pipeline(checked_id))
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
    return None if match is None else model_of(Prompt, match)


def list_enhanced_prompts(limit: object = 100, offset: object = 0) -> Flow[Listing[Prompt]]:
    documents = yield from Find(
        q.PROMPTS,
        q.enhanced_prompts_filter(),
        sort=q.NEWEST_FIRST,
        skip=v.check_offset(offset),
        limit=v.check_limit(limit),
    )
    return listing(Prompt, documents)


def get_enhancement_history(
    prompt_id: object, limit: object = 100, offset: object = 0, after: object = None
) -> Flow[Listing[Run]]:
    """The prompt's enhance runs. An empty first page asks whether the prompt exists: an
    unknown id is PromptNotFoundError, not an empty history. A deleted prompt whose kept
    provenance runs (``q.kept_provenance_filter``) still name it answers with those runs."""
    checked_id = v.check_prompt_id(prompt_id)
    skip = v.check_offset(offset)
    position = v.check_position(after)
    documents = yield from Find(
        q.RUNS,
        q.older_than(q.history_filter(checked_id), position),
        sort=q.NEWEST_FIRST,
        skip=skip,
        limit=v.check_limit(limit),
    )
    if (
        not documents
        and skip == 0
        and position is None
        and (yield from FindOne(q.PROMPTS, q.by_id(checked_id), _ID_ONLY)) is None
    ):
        raise PromptNotFoundError(checked_id)
    return listing(Run, documents)


def get_lineage(prompt_id: object) -> Flow[Lineage]:
    checked_id = v.check_prompt_id(prompt_id)
    one_per_node = False
    try:
        found = yield from Aggregate(q.PROMPTS, q.lineage_pipeline(checked_id))
    except StorageError as exc:
        if exc.reason != "too_large":
            raise
        # A server's result document holds 16 MB: a tree larger than that comes one node a
        # document (a second round trip only then; in-process databases have no such limit).
        one_per_node = True
        found = yield from Aggregate(q.PROMPTS, q.lineage_pipeline(checked_id, one_per_node=True))
    document = q.lineage_document(found, one_per_node=one_per_node)
    if document is None:
        raise PromptNotFoundError(checked_id)
    return within_bytes(assemble_lineage(document), q.LINEAGE_MAX_BYTES)


def assemble_lineage(document: Mapping[str, Any]) -> Lineage:
    """Build the tree from the lineage pipeline's edges; cycles and missing prompts are fine.
    Other documents of the tree that do not fit their model are left out and named in
    ``skipped`` (a run with its edge); the prompt asked about must fit."""
    prompt_id = document["_id"]
    asked = model_of(Prompt, document)
    walked = {run["_id"]: run for key in q.LINEAGE_RUNS for run in document.get(key) or []}
    prompt_docs = {doc["_id"]: doc for key in q.LINEAGE_PROMPTS for doc in document.get(key) or []}
    prompt_docs.pop(prompt_id, None)
    run_models = listing(Run, walked.values())
    prompt_models = listing(Prompt, prompt_docs.values())
    model_of_run = {run.id: run for run in run_models}
    runs = {run_id: run for run_id, run in walked.items() if run_id in model_of_run}
    prompt_docs[prompt_id] = document
    in_place = sorted(
        (model_of_run[r["_id"]] for r in runs.values() if _endpoints(r)[0] == _endpoints(r)[1]),
        key=lambda run: (run.created_at, run.id),
    )
    parent_of: dict[str, tuple[str, Run | None]] = {}
    for run in sorted(
        runs.values(), key=lambda r: (legacy.run_enhanced_at(r) or r["created_at"], str(r["_id"]))
    ):
        parent, child = _endpoints(run)
        if parent and child and parent != child and child not in parent_of:
            parent_of[child] = (parent, model_of_run[run["_id"]])
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
    model_by_id = {prompt.id: prompt for prompt in [asked, *prompt_models]}
    return Lineage(
        prompt_id=prompt_id,
        root_id=node,
        ancestors=ancestors,
        descendants=descendants,
        in_place=[run for run in in_place if run.prompt_id in named],
        prompts={i: model_by_id[i] for i in sorted(named) if i in model_by_id},
        missing_prompt_ids=sorted(named - set(prompt_docs)),
        truncated=_cut_short(document, ancestors, descendants),
        skipped=[*prompt_models.skipped, *run_models.skipped],
    )


def _cut_short(
    document: Mapping[str, Any], ancestors: list[LineageEdge], descendants: list[LineageEdge]
) -> bool:
    """Whether the pipeline's bounds cut the tree: a walk hit its node cap, or a chain
    reached the depth cap (it may go on beyond)."""
    over = any((document.get(count) or 0) > q.LINEAGE_MAX_NODES for count in q.LINEAGE_COUNTS)
    deepest = max([len(ancestors), *(edge.depth for edge in descendants)])
    return over or deepest >= q.LINEAGE_MAX_DEPTH


def within_bytes(lineage: Lineage, budget: int) -> Lineage:
    """``lineage`` cut to about ``budget`` bytes of JSON: the asked prompt, then its ancestors
    nearest first, then its descendants breadth first, each prompt with the run that made it
    and its in-place rewrites, while they fit. When one does not, the tree ends before it,
    ``root_id`` is the oldest prompt kept, and ``truncated`` is set."""
    rewrites: dict[str, list[Run]] = {}
    for run in lineage.in_place:
        rewrites.setdefault(run.prompt_id, []).append(run)

    def size(prompt_id: str, run: Run | None) -> int:
        parts = [lineage.prompts.get(prompt_id), run, *rewrites.get(prompt_id, [])]
        return sum(len(part.model_dump_json().encode()) for part in parts if part is not None)

    used = size(lineage.prompt_id, None)
    ancestors: list[LineageEdge] = []
    descendants: list[LineageEdge] = []
    for edge in lineage.ancestors:
        used += size(edge.parent_id, edge.run)
        if used > budget:
            return _cut_to(lineage, ancestors, descendants)
        ancestors.append(edge)
    for edge in lineage.descendants:
        used += size(edge.child_id, edge.run)
        if used > budget:
            return _cut_to(lineage, ancestors, descendants)
        descendants.append(edge)
    return lineage


def _cut_to(
    lineage: Lineage, ancestors: list[LineageEdge], descendants: list[LineageEdge]
) -> Lineage:
    named = {lineage.prompt_id} | {edge.parent_id for edge in ancestors}
    named |= {edge.child_id for edge in descendants}
    return lineage.model_copy(
        update={
            "root_id": ancestors[-1].parent_id if ancestors else lineage.prompt_id,
            "ancestors": ancestors,
            "descendants": descendants,
            "in_place": [run for run in lineage.in_place if run.prompt_id in named],
            "prompts": {i: prompt for i, prompt in lineage.prompts.items() if i in named},
            "missing_prompt_ids": [i for i in lineage.missing_prompt_ids if i in named],
            "truncated": True,
        }
    )


def _endpoints(run: Mapping[str, Any]) -> tuple[Any, Any]:
    outputs = run.get("outputs") or {}
    return outputs.get("original_prompt_id"), outputs.get("enhanced_prompt_id")


# -- verify and repair -----------------------------------------------------------------------


def verify(
    stale_after: object = DEFAULT_STALE_AFTER, quick: object = False
) -> Flow[VerificationReport]:
    """The seed's three checks, the flag against the runs both ways, orphans, and enhancements,
    reverts and deletions interrupted between writes. ``quick`` keeps to the index-served
    look-ups of interrupted work and skips the checks that read every run.

    The storage is checked first (the embedded default's checksums, indexes and catalog).
    If it is damaged, the report names the damage and nothing else: the other checks would
    read through it, and a run whose prompt is unreadable is not an orphan."""
    before = utc_now() - check_stale_after(stale_after)
    only_interrupted = v.check_flag(quick, "quick")
    damaged = yield from DamagedDocuments(full=not only_interrupted)
    if damaged:
        return VerificationReport(
            quick=only_interrupted,
            damaged_documents=[*damaged, _CHECKS_NOT_RUN],
            prompts_with_legacy_keys=[],
            incomplete_enhance_runs=[],
            dangling_edges=[],
            half_finished=[],
        )
    stale = yield from Find(q.RUNS, q.stale_enhancements_filter(before), projection=_ID_ONLY)
    reverts = yield from Find(q.RUNS, q.pending_reverts_filter(before), projection=_ID_ONLY)
    deletions = yield from _interrupted_deletions(before)
    legacy_prompts: list[Document] = []
    incomplete: list[Document] = []
    invalid: list[str] = []
    findings = _Findings()
    if not only_interrupted:
        legacy_prompts = yield from Find(q.PROMPTS, q.legacy_prompts_filter(), projection=_ID_ONLY)
        incomplete = yield from Find(q.RUNS, q.incomplete_runs_filter(), projection=_ID_ONLY)
        findings = yield from _inconsistencies(before)
        invalid = yield from _invalid_documents()
    orphans = [
        (
            f"{run_id}: its prompt {deletion.prompt_id} was deleted by a deletion that stopped",
            run_id,
        )
        for deletion in deletions
        if not deletion.prompt_exists
        for run_id in deletion.run_ids
    ]
    seen = {run_id for _, run_id in orphans}
    orphans += [(text, run_id) for text, run_id in findings.orphans if run_id not in seen]
    return VerificationReport(
        quick=only_interrupted,
        damaged_documents=damaged,
        invalid_documents=invalid,
        prompts_with_legacy_keys=[doc["_id"] for doc in legacy_prompts],
        incomplete_enhance_runs=[doc["_id"] for doc in incomplete],
        dangling_edges=[text for text, _ in findings.dangling],
        orphan_runs=[text for text, _ in orphans],
        flag_mismatches=[text for text, _, _ in findings.flags],
        half_finished=[f"{doc['_id']}: enhancement interrupted" for doc in stale]
        + [f"{doc['_id']}: revert interrupted" for doc in reverts]
        + [
            f"{deletion.prompt_id}: deletion interrupted before the prompt was deleted "
            f"({len(deletion.run_ids)} runs marked)"
            for deletion in deletions
            if deletion.prompt_exists
        ],
    )


_CHECKS_NOT_RUN: Final = (
    "the other checks did not run: they would read through the damage (deal with it, then "
    "verify again)"
)
_SCAN_BATCH: Final = 1000


def _invalid_documents() -> Flow[list[str]]:
    """Every prompt and run that does not fit its model, as "<collection> <id>: <problems>".
    One pass over each collection, a thousand documents per read by ``_id`` (an index range
    each), holding one batch and the findings at a time."""
    found: list[str] = []
    for model in (Prompt, Run):
        position: tuple[int, Any] | None = None
        while True:
            page = yield from documents_page(model.collection, position, _SCAN_BATCH)
            for document in page.documents:
                if problems := document_problems(model, document):
                    found.append(f"{model.collection} {document['_id']}: {'; '.join(problems)}")
            if page.following is None:
                break
            position = page.following
    return found


@dataclass
class _Findings:
    """What disagrees, each with a sentence and what repair needs to fix it."""

    dangling: list[tuple[str, str]] = field(default_factory=list)  # (text, run id)
    orphans: list[tuple[str, str]] = field(default_factory=list)  # (text, run id)
    flags: list[tuple[str, str, bool]] = field(default_factory=list)  # (text, prompt, flag)


@dataclass(frozen=True)
class _Deletion:
    """A deletion that stopped midway: the prompt it deleted and the runs it marked."""

    prompt_id: str
    run_ids: list[str]
    prompt_exists: bool


def _interrupted_deletions(before: datetime) -> Flow[list[_Deletion]]:
    """Marked runs (a partial index holds only those), grouped by the deletion that marked
    them, and whether that deletion got as far as the prompt."""
    marked = yield from Find(
        q.RUNS, q.interrupted_deletions_filter(before), projection={"deletion.prompt_id": 1}
    )
    by_prompt: dict[str, list[str]] = {}
    for run in marked:
        by_prompt.setdefault(str(run["deletion"]["prompt_id"]), []).append(run["_id"])
    deletions = []
    for prompt_id, run_ids in sorted(by_prompt.items()):
        exists = (yield from FindOne(q.PROMPTS, q.by_id(prompt_id), _ID_ONLY)) is not None
        deletions.append(_Deletion(prompt_id, run_ids, exists))
    return deletions


def _inconsistencies(before: datetime) -> Flow[_Findings]:
    """Runs whose prompts are gone, and flags that disagree with the runs, in three reads."""
    findings = _Findings()
    should_be_flagged: dict[str, str] = {}
    for run in (yield from Aggregate(q.RUNS, q.produced_prompts_pipeline())):
        produced = _endpoints(run)[1]
        result = run.get("result") or []
        if not result:
            findings.dangling.append((f"{run['_id']}: result {produced} missing", run["_id"]))
        elif (result[0].get("parameters") or {}).get("enhanced") is not True:
            should_be_flagged[str(produced)] = str(run["_id"])
    for prompt_id, run_id in sorted(should_be_flagged.items()):
        text = f"{prompt_id}: not flagged, but completed enhance run {run_id} produced it"
        findings.flags.append((text, prompt_id, True))
    for prompt in (yield from Aggregate(q.PROMPTS, q.flagged_prompts_pipeline())):
        if legacy.has_legacy_keys(prompt):
            continue  # a legacy record: its keys are what knows the enhancement
        if not any(legacy.is_completed_enhancement(run) for run in prompt.get("result_of", [])):
            text = f"{prompt['_id']}: flagged enhanced, but no completed enhance run produced it"
            findings.flags.append((text, prompt["_id"], False))
    for run in (yield from Aggregate(q.RUNS, q.orphan_runs_pipeline())):
        produced = (run.get("outputs") or {}).get("enhanced_prompt_id")
        if legacy.is_completed_enhancement(run) and run.get("result") and produced:
            continue  # kept provenance of a prompt enhanced from a deleted one
        updated = run.get("updated_at")
        recent = not isinstance(updated, datetime) or as_utc(updated) > before  # or unknown
        if run.get("status") == "running" and recent:
            continue  # may still be live; it fails by itself, or counts once stale
        text = f"{run['_id']}: its prompt {run.get('prompt_id')} does not exist"
        findings.orphans.append((text, run["_id"]))
    return findings


@dataclass
class _Repairs:
    """What repair did so far, gathered for its report."""

    completed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    reverts_finished: list[str] = field(default_factory=list)
    runs_removed: list[str] = field(default_factory=list)
    deletions_finished: list[str] = field(default_factory=list)
    deletions_cancelled: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)


def repair(
    stale_after: object = DEFAULT_STALE_AFTER,
    progress: Progress | None = None,
    quick: object = False,
) -> Flow[RepairReport]:
    """Finish or roll back interrupted enhancements, reverts and deletions; then, unless
    ``quick``, remove what else has no prompt, make flags agree with the runs, and migrate
    legacy data (the steps that read every run). Unless ``quick``, the storage is checked
    first, and any damage stops it before it writes anything."""
    before = utc_now() - check_stale_after(stale_after)
    only_interrupted = v.check_flag(quick, "quick")
    v.check_progress(progress)
    # The full check reads the whole store, which a scheduled quick repair must not: that one
    # reads only what it settles, and any read that meets damage stops it before it writes.
    damaged = [] if only_interrupted else (yield from DamagedDocuments())
    if damaged:
        # What looks interrupted or orphaned may only look so through the damage: a run whose
        # prompt is unreadable is not an orphan. Nothing is written until it is dealt with.
        shown = "; ".join(damaged[:3]) + (
            f"; and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        )
        raise StorageError(
            f"repair changed nothing: the store is damaged ({shown}). Keep a copy of it as it "
            "is first (`cosmos-mongo backup`); `cosmos-mongo rebuild-indexes` rebuilds damaged "
            "indexes from the documents, and a damaged document comes back only from a backup "
            "made before the damage. Then run verify and repair again.",
            reason="damaged",
        )
    done = _Repairs()
    stale = yield from Find(q.RUNS, q.stale_enhancements_filter(before))
    for count, run in enumerate(stale, 1):
        outcome = yield from _settle(run)
        (done.completed if outcome else done.rolled_back).append(run["_id"])
        yield from reported(progress, "interrupted enhancements", count, len(stale))
    reverts = yield from Find(q.RUNS, q.pending_reverts_filter(before))
    for count, run in enumerate(reverts, 1):
        problem = yield from _settle_revert(run)
        if problem is None:
            done.reverts_finished.append(run["_id"])
        else:
            done.unrepairable.append(f"{run['_id']}: {problem}")
        yield from reported(progress, "interrupted reverts", count, len(reverts))
    deletions = yield from _interrupted_deletions(before)
    for count, deletion in enumerate(deletions, 1):
        yield from _settle_deletion(deletion, done)
        yield from reported(progress, "interrupted deletions", count, len(deletions))
    if only_interrupted:
        migration = MigrationReport(
            dry_run=False,
            prompts_examined=0,
            runs_backfilled=[],
            runs_created=[],
            prompts_stripped=[],
        )
        flags_fixed: list[str] = []
    else:
        migration = yield from legacy.migrate(dry_run=False, progress=progress)
        flags_fixed = yield from _settle_inconsistencies(before, done, progress)
    return RepairReport(
        quick=only_interrupted,
        completed=done.completed,
        rolled_back=done.rolled_back,
        reverts_finished=done.reverts_finished,
        runs_removed=done.runs_removed,
        deletions_finished=done.deletions_finished,
        deletions_cancelled=done.deletions_cancelled,
        flags_fixed=flags_fixed,
        migration=migration,
        unrepairable=done.unrepairable,
    )


def _settle_deletion(deletion: _Deletion, done: _Repairs) -> Flow[None]:
    """Finish a deletion that removed its prompt; unmark the runs of one that did not."""
    if not deletion.prompt_exists:
        # Everything the deletion would have removed, marked or not (a run created while it
        # ran is unmarked); kept provenance is never part of it.
        going = yield from Find(q.RUNS, q.deletion_filter(deletion.prompt_id), projection=_ID_ONLY)
        removed = [doc["_id"] for doc in going]
        yield from _delete_runs(removed)
        done.runs_removed.extend(removed)
        done.deletions_finished.append(deletion.prompt_id)
    else:
        done.deletions_cancelled.append(deletion.prompt_id)
    # What is still marked is kept (provenance that completed meanwhile) or was never deleted.
    yield from UpdateMany(q.RUNS, q.deletion_marks(deletion.prompt_id), q.CLEAR_DELETION_MARK)


def _delete_runs(run_ids: list[str]) -> Flow[None]:
    for start in range(0, len(run_ids), 1000):  # one bounded $in per thousand
        yield from DeleteMany(q.RUNS, {"_id": {"$in": run_ids[start : start + 1000]}})


def _settle_inconsistencies(
    before: datetime, done: _Repairs, progress: Progress | None
) -> Flow[list[str]]:
    """Remove runs whose prompts are gone, set or clear flags to match the runs, and list
    the enhance runs nothing can complete. Returns the prompts whose flag changed."""
    findings = yield from _inconsistencies(before)
    yield from reported(progress, "consistency checks", 1, 1)
    removed = [run_id for _, run_id in findings.dangling + findings.orphans]
    yield from _delete_runs(removed)
    done.runs_removed.extend(removed)
    flags_fixed = []
    for _, prompt_id, flagged in findings.flags:
        change: dict[str, Any] = (
            {"$set": {"parameters.enhanced": True, "updated_at": utc_now()}}
            if flagged
            else {"$unset": {"parameters.enhanced": ""}, "$set": {"updated_at": utc_now()}}
        )
        if (yield from UpdateOne(q.PROMPTS, q.by_id(prompt_id), change)):
            flags_fixed.append(prompt_id)
    for doc in (yield from Find(q.RUNS, q.incomplete_runs_filter())):
        missing = [name for name in q.OUTPUT_FIELDS if name not in (doc.get("outputs") or {})]
        done.unrepairable.append(f"{doc['_id']}: nothing records its {', '.join(missing)}")
    return flags_fixed


def _settle_revert(run: Mapping[str, Any]) -> Flow[str | None]:
    """Finish an interrupted revert, or undo its flag if the prompt moved on; None if done."""
    outputs, config = run.get("outputs") or {}, run.get("execution_config") or {}
    prompt = yield from FindOne(q.PROMPTS, q.by_id(str(outputs.get("enhanced_prompt_id"))))
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
        yield from UpdateOne(q.RUNS, q.by_id(run["_id"]), done)
        return None
    yield from UpdateOne(q.RUNS, q.by_id(run["_id"]), {"$unset": {"outputs.revert_pending": ""}})
    return "the prompt changed since the revert began; the revert was abandoned"


_REPAIRED: Final = ("interrupted", "rolled back by repair")
_CANCELLED: Final = ("the enhancement call was cancelled", "the run was marked failed")
_TASK_CANCELLED: Final = ("the enhancement task was cancelled", "the run was marked failed")


def cancel_enhancement(run_id: object) -> Flow[Run | None]:
    """Settle a running enhance run now, as repair would settle it when stale: finished if its
    text was recorded, else marked failed ("the enhancement task was cancelled ..."). Only a
    run still ``running`` is written; returns the run as it is afterwards (None if none)."""
    checked_id = v.check_run_id(run_id)
    run = yield from FindOne(q.RUNS, q.running_run(checked_id))
    if run is not None and run.get("model_type") == q.ENHANCE:
        yield from _settle(run, _TASK_CANCELLED)
    document = yield from FindOne(q.RUNS, q.by_id(checked_id))
    return None if document is None else model_of(Run, document)


def was_cancelled(run: Run) -> bool:
    """Whether an enhance run failed because its call or its task was cancelled."""
    reasons = (_CANCELLED[0], _TASK_CANCELLED[0])
    return run.status == "failed" and (run.error_message or "").startswith(reasons)


def _settle(run: Mapping[str, Any], why: tuple[str, str] = _REPAIRED) -> Flow[bool]:
    """Finish an interrupted enhancement if its text was recorded; else mark it failed.

    ``why`` names the interruption and what became of the run, for its ``error_message``:
    repair's by default; :data:`_CANCELLED` for a call cancelled while it ran. Only a run
    still ``running`` is written."""
    interrupted, settled = why
    config, outputs = run.get("execution_config") or {}, run.get("outputs") or {}
    text, target = outputs.get("enhanced_text"), config.get("target_prompt_id")
    original = yield from FindOne(q.PROMPTS, q.by_id(run["prompt_id"]))
    expected = config.get("original_prompt_text")
    problem = None
    if not isinstance(text, str) or not isinstance(target, str):
        problem = f"{interrupted} before the enhanced text was recorded"
    elif original is None:
        problem = f"{interrupted}, and the original prompt no longer exists"
    elif target == original["_id"] and original["prompt_text"] not in (text, expected):
        problem = f"{interrupted}, and the prompt's text has changed since"
    if problem is not None or original is None or not isinstance(text, str):
        message = f"{problem}; {settled}"
        yield from UpdateOne(q.RUNS, q.running_run(run["_id"]), q.fail_run(message, utc_now()))
        return False
    if target == original["_id"] and original["prompt_text"] == text:
        expected = text  # the overwrite landed before the interruption: only the run is left
    model = config.get("model") or "unknown"
    try:
        yield from _apply(run["_id"], original, str(target), text, model, None, str(expected))
    except ConflictError:
        return False
    return True
