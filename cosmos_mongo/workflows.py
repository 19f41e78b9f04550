"""Every store operation, written once as a generator over :mod:`cosmos_mongo.ops`.

``CosmosStore`` and ``AsyncCosmosStore`` are thin twins: each public method validates nothing
and decides nothing itself; it hands the generator from here to its driver. Arguments are
checked at the top of each workflow, before the first ``yield``, so a rejected call never
reaches the database. A read of one document by ``_id`` (``get_prompt``, ``get_run``) is
declared as a :class:`~cosmos_mongo.ops.ReadOne`, whose ``flow`` is its workflow; the sync
twin carries out the same steps directly (:func:`~cosmos_mongo.ops.read_one_sync`).
"""

from __future__ import annotations

import contextlib
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic

from cosmos_mongo import queries as q
from cosmos_mongo import validation as v
from cosmos_mongo.errors import (
    ConflictError,
    InvalidInputError,
    PromptNotFoundError,
    RunNotFoundError,
    StorageError,
)
from cosmos_mongo.models import (
    DeletionPreview,
    DeletionResult,
    IndexReport,
    Listing,
    Model,
    Prompt,
    Run,
    document_problems,
    listing,
    model_of,
    model_reader,
    new_prompt_id,
    new_run_id,
    utc_now,
)
from cosmos_mongo.ops import (
    Aggregate,
    CreateIndex,
    DeleteMany,
    DeleteOne,
    Document,
    DropIndex,
    Find,
    FindOne,
    FindOneAndUpdate,
    Flow,
    InsertMany,
    InsertOne,
    ListIndexes,
    ReadOne,
    UpdateMany,
)

ACTIVE_STATUSES = v.RUN_STATUSES - v.TERMINAL_STATUSES

# Fields update_run() may set, with the check each value must pass.
_RUN_FIELD_CHECKS: dict[str, Callable[[object, str], object]] = {
    "status": v.check_status,
    "execution_config": v.check_document_fields,
    "outputs": v.check_document_fields,
    "metadata": v.check_document_fields,
    "error_message": v.check_optional_text,
    "log_path": v.check_optional_text,
    "rating": v.check_rating,
}


def _index_plan() -> Flow[q.IndexPlan]:
    existing = {}
    for collection in (q.PROMPTS, q.RUNS):
        existing[collection] = yield from ListIndexes(collection)
    return q.plan_indexes(existing)


def ensure_indexes() -> Flow[list[str]]:
    """Create the indexes that are missing; reuse an identical one under another name."""
    plan = yield from _index_plan()
    problems = [
        f"{spec.collection}.{spec.name} exists as {found}, not as this version defines it "
        "(run `cosmos-mongo init --reconcile --apply` to recreate it)"
        for spec, found in plan.changed
    ] + [
        f"{conflict}: drop or rename that index, then run `cosmos-mongo init` again"
        for conflict in plan.conflicts
    ]
    if problems:
        raise StorageError("cannot create the indexes: " + "; ".join(problems))
    for spec in plan.create:
        yield from CreateIndex(spec.collection, spec.keys, spec.name, spec.options)
    reused = dict(plan.reused)
    return [reused.get(spec.name, spec.name) for spec in q.INDEXES]


def reconcile_indexes(apply: object = False) -> Flow[IndexReport]:
    """Compare the indexes with this version's; with ``apply``, make the library's own match.

    Indexes the library does not own are never dropped.
    """
    if not isinstance(apply, bool):
        raise InvalidInputError("apply", "must be true or false")
    plan = yield from _index_plan()
    report = IndexReport(
        present=plan.present,
        created=[spec.name for spec in plan.create],
        reused=[f"{ours} as {theirs}" for ours, theirs in plan.reused],
        recreated=[spec.name for spec, _ in plan.changed],
        dropped=[f"{collection}.{name}" for collection, name in plan.retired],
        conflicts=plan.conflicts,
        applied=apply,
    )
    if apply:
        for collection, name in plan.retired:
            yield from DropIndex(collection, name)
        for spec, _ in plan.changed:
            yield from DropIndex(spec.collection, spec.name)
        for spec in [*plan.create, *(spec for spec, _ in plan.changed)]:
            yield from CreateIndex(spec.collection, spec.keys, spec.name, spec.options)
    return report


def create_prompt(prompt_text: object, inputs: object, parameters: object) -> Flow[Prompt]:
    document = q.prompt_document(
        new_prompt_id(),
        v.check_text(prompt_text, "prompt_text"),
        v.check_document_fields(inputs, "inputs"),
        v.check_parameters(parameters),
        utc_now(),
    )
    v.check_document_size(document, "prompt")
    yield from InsertOne(q.PROMPTS, document)
    return Prompt.from_document(document)


# The commonest reads. Their id checks are plain functions (a partial with keywords copies
# them at every call, which costs more than the check) and their models' validators are
# looked up once.
PROMPT_BY_ID: ReadOne[Prompt] = ReadOne(q.PROMPTS, v.check_prompt_id, model_reader(Prompt))
RUN_BY_ID: ReadOne[Run] = ReadOne(q.RUNS, v.check_run_id, model_reader(Run))


def get_prompt(prompt_id: object) -> Flow[Prompt | None]:
    return PROMPT_BY_ID.flow(prompt_id)


def list_prompts(
    limit: object = 50, offset: object = 0, enhanced: object = None
) -> Flow[Listing[Prompt]]:
    if enhanced is not None and not isinstance(enhanced, bool):
        raise InvalidInputError("enhanced", "must be true, false or null")
    documents = yield from Find(
        q.PROMPTS,
        q.prompts_filter(enhanced),
        sort=q.NEWEST_FIRST,
        skip=v.check_offset(offset),
        limit=v.check_limit(limit),
    )
    return listing(Prompt, documents)


@dataclass(frozen=True, slots=True)
class Page(Generic[Model]):
    """One keyset page: its models, and where the next page starts (None after the last)."""

    items: Listing[Model]
    after: tuple[Any, Any] | None


def _page(model: type[Model], documents: list[Document], limit: int) -> Page[Model]:
    # The next page starts after the last document read, fitting or not: a page of documents
    # that all fail the model must still move on.
    full = len(documents) == limit
    after = (documents[-1].get("created_at"), documents[-1]["_id"]) if full else None
    return Page(listing(model, documents), after)


def prompts_page(after: object, limit: object, enhanced: object = None) -> Flow[Page[Prompt]]:
    """The prompts after ``after`` (a ``(created_at, id)`` position), newest first."""
    if enhanced is not None and not isinstance(enhanced, bool):
        raise InvalidInputError("enhanced", "must be true, false or null")
    checked_limit = v.check_limit(limit)
    documents = yield from Find(
        q.PROMPTS,
        q.older_than(q.prompts_filter(enhanced), v.check_position(after)),
        sort=q.NEWEST_FIRST,
        limit=checked_limit,
    )
    return _page(Prompt, documents, checked_limit)


def _checked_runs_filter(prompt_id: object, model_type: object, status: object) -> Document:
    return q.runs_filter(
        None if prompt_id is None else v.check_prompt_id(prompt_id),
        None if model_type is None else v.check_model_type(model_type),
        None if status is None else v.check_status(status),
    )


def runs_page(
    after: object,
    limit: object,
    prompt_id: object = None,
    model_type: object = None,
    status: object = None,
) -> Flow[Page[Run]]:
    """The runs after ``after`` (a ``(created_at, id)`` position), newest first."""
    run_filter = _checked_runs_filter(prompt_id, model_type, status)
    checked_limit = v.check_limit(limit)
    documents = yield from Find(
        q.RUNS,
        q.older_than(run_filter, v.check_position(after)),
        sort=q.NEWEST_FIRST,
        limit=checked_limit,
    )
    return _page(Run, documents, checked_limit)


@dataclass(frozen=True, slots=True)
class DocumentsPage:
    """A page of raw documents, and where the next one starts: ``(kind, last _id)``, the
    kind an index into :data:`~cosmos_mongo.queries.ID_KIND_STARTS`; None after the last."""

    documents: list[Document]
    following: tuple[int, Any] | None


def documents_page(
    collection: object, position: tuple[int, Any] | None, limit: object
) -> Flow[DocumentsPage]:
    """Raw documents of ``collection`` from ``position`` (None: the start), by ``_id``: for
    export, copy and verify, which must reach every document with every field as stored.

    ``$gt`` compares like types only, so the walk goes through each kind of ``_id`` in turn
    (numbers, strings, ObjectIds): a document mongosh inserted without an ``_id`` is reached
    too. Each page is one range of the ``_id`` index."""
    if collection not in (q.PROMPTS, q.RUNS):
        raise InvalidInputError("collection", "must be 'prompts' or 'runs'")
    size = v.check_limit(limit)
    kind, last = position or (0, None)
    documents: list[Document] = yield from Find(
        str(collection), q.ids_from(q.ID_KIND_STARTS[kind], last), sort=(("_id", 1),), limit=size
    )
    following: tuple[int, Any] | None = None
    if len(documents) == size:
        following = (kind, documents[-1]["_id"])
    elif kind + 1 < len(q.ID_KIND_STARTS):
        following = (kind + 1, None)
    return DocumentsPage(documents, following)


def put_documents(collection: object, documents: list[Document]) -> Flow[tuple[int, int, int]]:
    """Insert the documents whose ids are new; count the identical and the differing ones
    (never overwritten). Returns (inserted, identical, differing). Every document is checked
    against its model first: one that breaks it refuses the whole batch, unwritten."""
    if collection not in (q.PROMPTS, q.RUNS):
        raise InvalidInputError("collection", "must be 'prompts' or 'runs'")
    name = str(collection)
    _check_documents(Prompt if name == q.PROMPTS else Run, documents)
    ids = [document["_id"] for document in documents]
    stored = yield from Find(name, {"_id": {"$in": ids}})
    by_id = {document["_id"]: document for document in stored}
    new = [document for document in documents if document["_id"] not in by_id]
    identical = sum(1 for document in documents if by_id.get(document["_id"]) == document)
    if new:
        yield from InsertMany(name, new)
    return len(new), identical, len(by_id) - identical


def _check_documents(model: type[Model], documents: object) -> None:
    """Refuse the batch unless every document fits ``model``, has an ``_id`` of its own and
    no two share one: the first that does not is named, with the rule it breaks.

    Raises:
        InvalidInputError: on ``documents``, naming the document and the rule.
    """
    if not isinstance(documents, list):
        raise InvalidInputError("documents", f"must be a list of documents, not {_kind(documents)}")
    unwritten = f"none of the {len(documents)} documents of this batch was written"
    seen: set[str] = set()
    for position, document in enumerate(documents):
        if not isinstance(document, dict):
            raise InvalidInputError(
                "documents",
                f"item {position} must be a document (a dict), not {_kind(document)}; {unwritten}",
            )
        if "_id" not in document:
            raise InvalidInputError(
                "documents", f"item {position} has no '_id' (every document needs one); {unwritten}"
            )
        # Checked as stored: without an "id" key, which the model would read instead of _id.
        checked = {key: value for key, value in document.items() if key != "id"}
        if problems := document_problems(model, checked):
            shown = repr(document["_id"])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise InvalidInputError(
                "documents",
                f"{model.collection} document {shown} (item {position}) breaks the contract: "
                f"{'; '.join(problems)}; {unwritten}",
            )
        identifier: str = document["_id"]  # a string: the model has just checked it
        if identifier in seen:
            raise InvalidInputError(
                "documents",
                f"_id {identifier!r} appears twice in the batch (item {position}); {unwritten}",
            )
        seen.add(identifier)


def _kind(value: object) -> str:
    return "None" if value is None else type(value).__name__


def search_prompts(
    query: object,
    limit: object = 50,
    offset: object = 0,
    match: object = "substring",
    after: object = None,
) -> Flow[Listing[Prompt]]:
    text = v.check_text(query, "query", v.MAX_QUERY_CHARS)
    if match not in ("substring", "words"):
        raise InvalidInputError("match", "must be 'substring' or 'words'")
    chosen = q.search_filter(text) if match == "substring" else q.words_filter(text)
    try:
        documents = yield from Find(
            q.PROMPTS,
            q.older_than(chosen, v.check_position(after)),
            sort=q.NEWEST_FIRST,
            skip=v.check_offset(offset),
            limit=v.check_limit(limit),
        )
    except StorageError as exc:
        if match != "words" or exc.reason is not None:  # an outage is not a missing index
            raise
        raise InvalidInputError(
            "match",
            "'words' needs a MongoDB server with the text index (create it with "
            "`cosmos-mongo init --text-search`); 'substring' works everywhere",
        ) from exc
    return listing(Prompt, documents)


def create_text_index() -> Flow[str]:
    name = yield from CreateIndex(
        q.PROMPTS, q.TEXT_INDEX_KEYS, q.TEXT_INDEX_NAME, q.TEXT_INDEX_OPTIONS
    )
    return name


def suggest_ids(kind: object, prefix: object, limit: object = 20) -> Flow[list[str]]:
    """Ids of ``kind`` ("prompt" or "run") starting with ``prefix``, newest first."""
    if kind not in ("prompt", "run"):
        raise InvalidInputError("kind", "must be 'prompt' or 'run'")
    collection = q.PROMPTS if kind == "prompt" else q.RUNS
    text = v.check_id_prefix(prefix)
    documents = yield from Find(
        collection,
        q.id_prefix_filter(text),
        sort=q.NEWEST_FIRST,
        limit=v.check_limit(limit),
        projection={"_id": 1, "created_at": 1},
    )
    return [str(document["_id"]) for document in documents]


def update_prompt(
    prompt_id: object, prompt_text: object = None, parameters: object = None, inputs: object = None
) -> Flow[Prompt]:
    checked_id = v.check_prompt_id(prompt_id)
    text = None if prompt_text is None else v.check_text(prompt_text, "prompt_text")
    params = None if parameters is None else v.check_parameters(parameters)
    files = None if inputs is None else v.check_document_fields(inputs, "inputs")
    if text is None and not params and not files:
        raise InvalidInputError("prompt_text", "give prompt_text, parameters or inputs to change")
    update = q.prompt_update(utc_now(), text, params, files)
    v.check_document_size(update, "inputs" if files else "parameters")
    document = yield from FindOneAndUpdate(q.PROMPTS, q.by_id(checked_id), update)
    if document is None:
        raise PromptNotFoundError(checked_id)
    return model_of(Prompt, document, written=True)


def preview_prompt_deletion(prompt_id: object) -> Flow[DeletionPreview]:
    checked_id = v.check_prompt_id(prompt_id)
    found = yield from Aggregate(q.PROMPTS, q.deletion_preview_pipeline(checked_id))
    if not found:
        raise PromptNotFoundError(checked_id)
    return _deletion_preview(checked_id, found[0])


def _split_runs(prompt_id: str, document: Document) -> tuple[list[Document], list[Document]]:
    """Split the prompt's runs as ``delete_prompt`` will: (removed, kept as provenance).
    Takes the runs out of ``document``, leaving the prompt."""
    own = document.pop("runs", [])
    every = {run["_id"]: run for run in [*own, *document.pop("created_by", [])]}
    kept = [run for run in own if _is_kept_provenance(run, prompt_id)]
    kept_ids = {run["_id"] for run in kept}
    return [run for run_id, run in every.items() if run_id not in kept_ids], kept


def _running_enhancements(runs: list[Document]) -> list[str]:
    return [
        run["_id"]
        for run in runs
        if run.get("model_type") == q.ENHANCE and run.get("status") == "running"
    ]


def _deletion_preview(prompt_id: str, document: Document) -> DeletionPreview:
    removed, kept = _split_runs(prompt_id, document)
    return DeletionPreview(
        prompt=model_of(Prompt, document),
        run_count=len(removed),
        run_ids=[run["_id"] for run in removed],
        runs_by_status=dict(Counter(str(run.get("status")) for run in removed)),
        active_run_ids=[run["_id"] for run in removed if run.get("status") in ACTIVE_STATUSES],
        running_enhancement_ids=_running_enhancements(removed),
        kept_run_ids=[run["_id"] for run in kept],
        derived_prompt_ids=sorted({str(run["outputs"]["enhanced_prompt_id"]) for run in kept}),
    )


def _is_kept_provenance(run: Mapping[str, Any], prompt_id: str) -> bool:
    """The same test as ``q.kept_provenance_filter``, on a run already read."""
    produced = (run.get("outputs") or {}).get("enhanced_prompt_id")
    return (
        run.get("model_type") == q.ENHANCE
        and run.get("status") == "completed"
        and produced not in (prompt_id, None)
    )


def delete_prompt(prompt_id: object, force: object = False) -> Flow[DeletionResult]:
    """Mark the runs that go with the prompt, delete the prompt, then those runs (provenance
    of other prompts stays).

    In this order no run can outlive its prompt unnoticed: ``create_run`` re-checks the prompt
    after inserting, a live enhancement finds its run gone and fails, and a crash in between
    leaves marked runs, which ``verify`` reports and ``repair`` finishes deleting (or, if the
    prompt was never deleted, unmarks) through a small index, without reading every run.
    """
    checked_id = v.check_prompt_id(prompt_id)
    forced = v.check_flag(force, "force")
    found = yield from Aggregate(q.PROMPTS, q.deletion_preview_pipeline(checked_id))
    if not found:
        raise PromptNotFoundError(checked_id)
    # The prompt itself is not read as a model: one that does not fit it can still be deleted.
    removed, kept = _split_runs(checked_id, found[0])
    running_enhancements = _running_enhancements(removed)
    if running_enhancements and not forced:
        running = ", ".join(running_enhancements)
        raise ConflictError(
            f"prompt {checked_id} is being enhanced (run {running}); nothing was deleted. Wait "
            "for it to finish, or pass force=True to delete anyway (that enhancement then "
            "fails and writes nothing).",
            prompt_id=checked_id,
            run_ids=running_enhancements,
            reason="enhancement_running",
        )
    yield from UpdateMany(
        q.RUNS, q.deletion_filter(checked_id), q.deletion_mark(checked_id, utc_now())
    )
    if not (yield from DeleteOne(q.PROMPTS, q.by_id(checked_id))):
        # Another writer deleted it first and deletes these runs; if it stops midway, the
        # marks lead repair to them.
        raise PromptNotFoundError(checked_id)
    deleted_runs = yield from DeleteMany(q.RUNS, q.deletion_filter(checked_id))
    return DeletionResult(
        prompt_id=checked_id, deleted_runs=deleted_runs, kept_run_ids=[run["_id"] for run in kept]
    )


def create_run(
    prompt_id: object,
    execution_config: object,
    model_type: object = "transfer",
    metadata: object = None,
    initial_status: object = "pending",
) -> Flow[Run]:
    """Insert, then check the prompt again: a run whose prompt was deleted meanwhile is
    taken back, so no run outlives its prompt."""
    checked_prompt_id = v.check_prompt_id(prompt_id)
    document = q.run_document(
        new_run_id(),
        checked_prompt_id,
        v.check_model_type(model_type),
        v.check_status(initial_status, "initial_status"),
        v.check_document_fields(execution_config, "execution_config"),
        v.check_document_fields(metadata, "metadata"),
        utc_now(),
    )
    v.check_document_size(document, "run")
    if (yield from FindOne(q.PROMPTS, q.by_id(checked_prompt_id), {"_id": 1})) is None:
        raise PromptNotFoundError(checked_prompt_id)
    yield from InsertOne(q.RUNS, document)
    if (yield from FindOne(q.PROMPTS, q.by_id(checked_prompt_id), {"_id": 1})) is None:
        yield from DeleteOne(q.RUNS, q.by_id(document["_id"]))
        raise PromptNotFoundError(checked_prompt_id)
    return Run.from_document(document)


def get_run(run_id: object) -> Flow[Run | None]:
    return RUN_BY_ID.flow(run_id)


def list_runs(
    prompt_id: object = None,
    model_type: object = None,
    status: object = None,
    limit: object = 50,
    offset: object = 0,
) -> Flow[Listing[Run]]:
    run_filter = _checked_runs_filter(prompt_id, model_type, status)
    documents = yield from Find(
        q.RUNS,
        run_filter,
        sort=q.NEWEST_FIRST,
        skip=v.check_offset(offset),
        limit=v.check_limit(limit),
    )
    return listing(Run, documents)


def given(**fields: object) -> dict[str, object]:
    """The keywords a caller gave: those not left at :data:`~cosmos_mongo.validation.UNSET`."""
    return {name: value for name, value in fields.items() if value is not v.UNSET}


def update_run(run_id: object, fields: Mapping[str, object]) -> Flow[Run]:
    checked_id = v.check_run_id(run_id)
    if not fields:
        raise InvalidInputError("fields", "give at least one field to change")
    unknown = sorted(set(fields) - set(_RUN_FIELD_CHECKS))
    if unknown:
        allowed = ", ".join(sorted(_RUN_FIELD_CHECKS))
        raise InvalidInputError(unknown[0], f"is not a field update_run can set; use {allowed}")
    checked = {name: _RUN_FIELD_CHECKS[name](value, name) for name, value in fields.items()}
    update = q.run_update(utc_now(), checked)
    v.check_document_size(update, "fields")
    document = yield from FindOneAndUpdate(q.RUNS, q.by_id(checked_id), update)
    if document is None:
        raise RunNotFoundError(checked_id)
    return model_of(Run, document, written=True)


def delete_run(run_id: object) -> Flow[None]:
    checked_id = v.check_run_id(run_id)
    if not (yield from DeleteOne(q.RUNS, q.by_id(checked_id))):
        raise RunNotFoundError(checked_id)


def secret(name: object) -> Flow[bytes]:
    """The store's secret called ``name``: 32 random bytes, made by whoever asks first (a
    concurrent maker's is kept), then the same for every process sharing the store."""
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidInputError("name", f"must be an identifier, got {name!r}")
    found = yield from FindOne(q.SECRETS, q.by_id(name))
    if found is None:
        made = {"_id": name, "value": secrets.token_hex(32), "created_at": utc_now()}
        with contextlib.suppress(ConflictError):  # another process made it first: use theirs
            yield from InsertOne(q.SECRETS, made)
        found = yield from FindOne(q.SECRETS, q.by_id(name))
    if found is None or not isinstance(found.get("value"), str):
        raise StorageError(f"the store's secret {name!r} could not be made or read")
    return bytes.fromhex(found["value"])
