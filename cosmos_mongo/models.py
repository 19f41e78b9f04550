"""Pydantic models for stored documents and operation results.

Documents map to models through :meth:`Prompt.from_document` / :meth:`Run.from_document`; the
document ``_id`` becomes ``id``. Readers are lenient (older documents may lack ``updated_at``
or ``metadata``, and naive datetimes are read as UTC); writers are strict (see
:mod:`cosmos_mongo.validation`). A document that still does not fit (edited by hand) is left
out of a listing and named in its ``skipped`` (:func:`listing`), and a read of it alone raises
:class:`~cosmos_mongo.errors.InvalidDocumentError` (:func:`model_of`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self, TypeVar

from bson.tz_util import utc as BSON_UTC
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    computed_field,
    field_validator,
)

from cosmos_mongo.errors import InvalidDocumentError
from cosmos_mongo.validation import PROMPT_ID_PREFIX, RUN_ID_PREFIX

log = logging.getLogger("cosmos_mongo")


def utc_now() -> datetime:
    """The current time as an aware UTC datetime at BSON's millisecond precision."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(value: datetime) -> datetime:
    """Treat a naive datetime as UTC (pymongo's default) and convert aware ones to UTC.
    What a ``tz_aware`` client decodes is kept as it is: its zone is already UTC."""
    zone = value.tzinfo
    if zone is BSON_UTC or zone is UTC:  # the commonest first: every stored datetime read
        return value
    return value.replace(tzinfo=UTC) if zone is None else value.astimezone(UTC)


# A datetime field of a model, in UTC (see as_utc). A plain function as the validator, not a
# classmethod: pydantic calls it for every datetime of every document read.
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class _TimeOrderedIds:
    """32 hex digits: a 12-digit millisecond timestamp, a 5-digit counter, 15 random digits.

    Within one process every id is greater than the one before, even within one millisecond
    or when the wall clock steps back: the counter starts at a random point in its lower half
    each millisecond and counts up; if it ever runs out, the timestamp moves on by one.
    """

    _COUNTER_LIMIT = 16**5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._millis = 0
        self._counter = 0

    def next(self) -> str:
        with self._lock:
            millis = time.time_ns() // 1_000_000
            if millis > self._millis:
                self._millis, self._counter = millis, secrets.randbelow(self._COUNTER_LIMIT // 2)
            else:
                self._counter += 1
                if self._counter >= self._COUNTER_LIMIT:
                    self._millis, self._counter = self._millis + 1, 0
            millis, counter = self._millis, self._counter
        return f"{millis:012x}{counter:05x}{secrets.randbits(60):015x}"


_ids = _TimeOrderedIds()


def new_prompt_id() -> str:
    """A new, time-ordered prompt id: ``ps_`` + 32 lowercase hex digits."""
    return PROMPT_ID_PREFIX + _ids.next()


def new_run_id() -> str:
    """A new, time-ordered run id: ``rs_`` + 32 lowercase hex digits."""
    return RUN_ID_PREFIX + _ids.next()


class _Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    collection: ClassVar[str]  # where documents of this model are stored

    # ``id`` in Python and JSON; ``_id`` in MongoDB. Both are accepted when reading.
    id: str = Field(validation_alias=AliasChoices("id", "_id"))

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Self:
        """The model of a stored document.

        Raises:
            pydantic.ValidationError: the document lacks a field or has one of the wrong type.
        """
        # The validator itself: model_validate's keyword handling adds about a quarter,
        # once per document of every listing.
        model: Self = cls.__pydantic_validator__.validate_python(
            document if type(document) is dict else dict(document)
        )
        return model

    def to_document(self) -> dict[str, Any]:
        """The document as stored: ``_id`` instead of ``id``, datetimes as aware UTC."""
        return {"_id": self.id, **self.model_dump(exclude={"id"}, exclude_none=True)}


class SkippedDocument(BaseModel):
    """A stored document that a read left out because it does not fit its model (edited by
    hand?). ``verify()`` lists every such document in ``invalid_documents``."""

    model_config = ConfigDict(frozen=True)

    collection: str = Field(description="`prompts` or `runs`.")
    id: str = Field(description="The document's `_id`, as text.")
    field: str = Field(description="The first field that breaks the model, e.g. `rating`.")
    rule: str = Field(description="What that field must be, and the value stored.")

    def __str__(self) -> str:
        return f"{self.collection} {self.id}: {self.field} {self.rule}"


class Prompt(_Document):
    """A Cosmos prompt: the text, its input files and its generation parameters."""

    collection: ClassVar[str] = "prompts"

    prompt_text: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcDatetime
    updated_at: UtcDatetime | None = None

    @property
    def name(self) -> str | None:
        name = self.parameters.get("name")
        return name if isinstance(name, str) else None

    @property
    def enhanced(self) -> bool:
        return self.parameters.get("enhanced") is True


class Run(_Document):
    """One execution of a prompt by a model (transfer, enhance, upscale, predict, reason)."""

    collection: ClassVar[str] = "runs"

    prompt_id: str
    model_type: str
    status: str
    execution_config: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcDatetime
    updated_at: UtcDatetime | None = None
    started_at: UtcDatetime | None = None
    completed_at: UtcDatetime | None = None
    error_message: str | None = None
    log_path: str | None = None
    rating: int | None = None

    @field_validator("execution_config", "outputs", "metadata", mode="before")
    @classmethod
    def _none_as_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @property
    def enhancement(self) -> EnhancementOutputs | None:
        """The outputs of a completed enhance run, typed; None for any other run (or an
        enhance run whose outputs are incomplete: ``verify`` reports those)."""
        if self.model_type != "enhance" or self.status != "completed":
            return None
        try:
            return EnhancementOutputs.model_validate(self.outputs)
        except ValueError:
            return None


Model = TypeVar("Model", bound=_Document)


class Listing(list[Model]):
    """What a read of many documents returns: a ``list`` of the models, in order, whose
    ``skipped`` names the stored documents left out because they do not fit the model (edited
    by hand?). It is a list in every other way, so code written for a list keeps working."""

    def __init__(
        self, items: Iterable[Model] = (), skipped: Iterable[SkippedDocument] = ()
    ) -> None:
        super().__init__(items)
        self.skipped: list[SkippedDocument] = list(skipped)


def model_of(model: type[Model], document: Mapping[str, Any], *, written: bool = False) -> Model:
    """The model of one stored document; ``written`` when the call stored a change first.

    Raises:
        InvalidDocumentError: the document does not fit the model (names the first field).
    """
    try:
        return model.from_document(document)
    except ValidationError as exc:
        raise _invalid(model, document, exc, written) from exc


def model_reader(model: type[Model]) -> Callable[[Mapping[str, Any]], Model]:
    """``model_of`` for one model, its validator looked up once: the last step of every read
    by id, the commonest read, where the class method's call cost a third of the validation.

    The function it returns raises:
        InvalidDocumentError: as :func:`model_of`.
    """
    validate = model.__pydantic_validator__.validate_python

    def read(document: Mapping[str, Any]) -> Model:
        try:
            found: Model = validate(document if type(document) is dict else dict(document))
        except ValidationError as exc:
            raise _invalid(model, document, exc, False) from exc
        return found

    return read


def _invalid(
    model: type[Model], document: Mapping[str, Any], exc: ValidationError, written: bool
) -> InvalidDocumentError:
    found = skipped_document(model, document, exc)
    return InvalidDocumentError(
        found.collection, found.id, found.field, found.rule, written=written
    )


def listing(model: type[Model], documents: Iterable[Mapping[str, Any]]) -> Listing[Model]:
    """The models of ``documents``, in order. Those that do not fit are left out, named in
    ``skipped`` and in one WARNING on the ``cosmos_mongo`` logger: one hand-edited document
    must not hide all the others."""
    found: Listing[Model] = Listing()
    for document in documents:
        try:
            found.append(model.from_document(document))
        except ValidationError as exc:
            found.skipped.append(skipped_document(model, document, exc))
    if found.skipped:
        shown = "; ".join(str(each) for each in found.skipped[:10])
        more = f"; and {len(found.skipped) - 10} more" if len(found.skipped) > 10 else ""
        log.warning(
            "left out %d stored document(s) that do not fit the data model: %s%s "
            "(`cosmos-mongo verify` lists every such document)",
            len(found.skipped),
            shown,
            more,
        )
    return found


def document_problems(model: type[_Document], document: Mapping[str, Any]) -> list[str]:
    """Every way ``document`` breaks ``model``, as "field rule"; empty when it fits."""
    try:
        model.from_document(document)
    except ValidationError as exc:
        return [f"{field} {rule}" for field, rule in _problems(exc)]
    return []


def skipped_document(
    model: type[_Document], document: Mapping[str, Any], exc: ValidationError
) -> SkippedDocument:
    field, rule = _problems(exc)[0]
    return SkippedDocument(
        collection=model.collection, id=str(document.get("_id")), field=field, rule=rule
    )


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, rule) for each of pydantic's errors, worded as the rule the field breaks and
    the value stored (never the whole document, which a missing field's error holds)."""
    found = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "document"
        if error["type"] == "missing":
            found.append((field, "is required but missing"))
            continue
        message = str(error["msg"])
        if message.startswith("Input should be "):
            rule = "must be " + message.removeprefix("Input should be ")
        else:
            rule = "is invalid: " + message[:1].lower() + message[1:]
        shown = repr(error.get("input"))
        found.append(
            (field, f"{rule} (stored: {shown if len(shown) <= 60 else shown[:57] + '...'})")
        )
    return found


class EnhancementOutputs(BaseModel):
    """What a completed enhance run records in ``outputs``."""

    model_config = ConfigDict(frozen=True)

    enhanced_text: str
    original_prompt_id: str
    enhanced_prompt_id: str
    enhancement_model: str
    enhanced_at: datetime
    duration_seconds: float | None = None

    @property
    def in_place(self) -> bool:
        return self.original_prompt_id == self.enhanced_prompt_id


class DeletionPreview(BaseModel):
    """What :meth:`CosmosStore.delete_prompt` would remove."""

    model_config = ConfigDict(frozen=True)

    prompt: Prompt
    run_count: int
    run_ids: list[str]
    runs_by_status: dict[str, int]
    active_run_ids: list[str] = Field(
        description="Runs still pending or in progress; deleting the prompt deletes them too."
    )
    running_enhancement_ids: list[str] = Field(
        default_factory=list,
        description="Enhancements in progress: delete_prompt refuses unless force=True.",
    )
    kept_run_ids: list[str] = Field(
        default_factory=list,
        description="Enhance runs that produced other prompts: they stay as those prompts' "
        "record and keep pointing at this one.",
    )
    derived_prompt_ids: list[str] = Field(
        default_factory=list,
        description="Prompts enhanced from this one; they stay, with their enhance runs.",
    )


class DeletionResult(BaseModel):
    """What :meth:`CosmosStore.delete_prompt` removed."""

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    deleted_runs: int
    kept_run_ids: list[str] = Field(
        default_factory=list, description="Enhance runs kept as other prompts' provenance."
    )


class IndexReport(BaseModel):
    """How the indexes compare with this version's (``reconcile_indexes``)."""

    model_config = ConfigDict(frozen=True)

    present: list[str] = Field(description="The library's indexes, as this version defines them.")
    created: list[str] = Field(description="Missing: created (with ``apply``) or to create.")
    reused: list[str] = Field(description="Served by an identical index under another name.")
    recreated: list[str] = Field(description="The library's, defined otherwise: dropped and made.")
    dropped: list[str] = Field(description="Retired names of earlier versions' indexes.")
    conflicts: list[str] = Field(description="Another index with the keys; left alone.")
    applied: bool = Field(description="False for a dry run: nothing was changed.")

    @property
    def in_order(self) -> bool:
        """Nothing to create, recreate, drop, and no conflict."""
        return not (self.created or self.recreated or self.dropped or self.conflicts)


class EnhancementResult(BaseModel):
    """What :meth:`CosmosStore.enhance_prompt` did."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    original_prompt_id: str
    enhanced_prompt_id: str = Field(description="Equal to original_prompt_id for an overwrite.")
    enhanced_text: str
    enhancement_model: str
    duration_seconds: float
    status: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def created_new(self) -> bool:
        return self.enhanced_prompt_id != self.original_prompt_id


class EnhancementDetails(BaseModel):
    """How a prompt got its current enhanced text: from its enhance run, or legacy keys."""

    model_config = ConfigDict(frozen=True)

    run_id: str | None = Field(description="None for legacy data that has no enhance run.")
    enhanced_text: str
    enhancement_model: str | None
    enhanced_at: UtcDatetime | None
    original_prompt_id: str
    enhanced_prompt_id: str
    duration_seconds: float | None


# Room kept per node drawn, for its "+K more" node and edge (and for the closing lines).
_MERMAID_RESERVE = 80
# Most children of one prompt a diagram draws, and its most characters: Mermaid's default
# maxTextSize is 50,000, and a few hundred siblings render as an unreadable sliver.
MERMAID_MAX_CHILDREN = 20
MERMAID_MAX_CHARS = 30_000


class LineageEdge(BaseModel):
    """A create_new enhancement: ``parent_id`` was enhanced into the new prompt ``child_id``."""

    model_config = ConfigDict(frozen=True)

    parent_id: str
    child_id: str
    depth: int = Field(description="1 for the prompt's own parent or child, 2 for the next, ...")
    run: Run | None = Field(
        description="The enhance run, without the texts it keeps (execution_config."
        "original_prompt_text, outputs.enhanced_text: the tree's prompts carry theirs, get_run "
        "the whole run); None for a legacy parent_prompt_id key."
    )

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id


class Lineage(BaseModel):
    """Where a prompt came from and what came of it."""

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    root_id: str = Field(
        description="The oldest ancestor (of those shown, when truncated); the prompt itself if "
        "it has none."
    )
    ancestors: list[LineageEdge] = Field(description="Nearest first, up to the root.")
    descendants: list[LineageEdge] = Field(description="Breadth first, oldest first per level.")
    in_place: list[Run] = Field(
        description="Overwrite enhancements of prompts in this lineage, without their texts."
    )
    prompts: dict[str, Prompt] = Field(description="Every prompt of the lineage that exists.")
    missing_prompt_ids: list[str] = Field(description="Ids an edge names but no prompt has.")
    truncated: bool = Field(
        default=False,
        description="True when the tree was larger than one answer holds (100 generations, "
        "1,000 documents a walk, about 8 MB of JSON) and was cut, the nearest prompts kept: "
        "ask get_lineage of a prompt at the edge to see beyond.",
    )
    skipped: list[SkippedDocument] = Field(
        default_factory=list,
        description="Prompts and runs of the tree that do not fit the data model (edited by "
        "hand?): left out, and a run's edge with it; `verify` lists every such document.",
    )

    def children_of(self, prompt_id: str) -> list[LineageEdge]:
        return [edge for edge in self.descendants if edge.parent_id == prompt_id]

    def to_mermaid(
        self, *, max_children: int = MERMAID_MAX_CHILDREN, max_chars: int = MERMAID_MAX_CHARS
    ) -> str:
        """The tree as a Mermaid ``flowchart``: a node per prompt (id and the start of its
        text), an edge per completed enhancement labelled with its model and run id, and a
        self-loop per completed in-place rewrite. Stored text is escaped, so it cannot break
        out of a label.

        Bounded so that it renders: at most ``max_children`` children of one prompt are drawn
        and the diagram keeps within ``max_chars`` characters (Mermaid refuses 50,000 by
        default). The prompts left out are counted in a ``+K more`` node under the nearest
        prompt drawn; in-place rewrites left out, in a closing comment."""
        return _MermaidDrawing(self, max_children, max_chars).draw()


class _MermaidDrawing:
    """One :meth:`Lineage.to_mermaid` drawing: nodes placed breadth first within a budget."""

    def __init__(self, lineage: Lineage, max_children: int, max_chars: int) -> None:
        self.lineage = lineage
        self.max_children = max_children
        self.max_chars = max_chars
        self.unreadable = {
            each.id for each in lineage.skipped if each.collection == Prompt.collection
        }
        self.node: dict[str, str] = {}
        self.node_lines: list[str] = []
        self.edge_lines: list[str] = []
        # Room for the first line, the style line and a comment on left-out rewrites.
        self.used = 3 * _MERMAID_RESERVE

    def take(self, lines: list[str]) -> bool:
        """Count ``lines`` and a node's reserve (its "+K more" node and edge) against the
        budget, if they fit."""
        cost = sum(len(line) + 1 for line in lines) + _MERMAID_RESERVE
        if self.used + cost > self.max_chars:
            return False
        self.used += cost
        return True

    def node_line(self, prompt_id: str, name: str) -> str:
        found = self.lineage.prompts.get(prompt_id)
        text = "(deleted)" if found is None else _shortened(found.prompt_text, 48)
        if found is None and prompt_id in self.unreadable:
            text = "(does not fit the data model)"
        return f'    {name}["{_mermaid_text(prompt_id)}<br/>{_mermaid_text(text)}"]'

    def edge_line(self, edge: LineageEdge, child: str) -> str:
        label = "legacy parent link" if edge.run is None else _edge_label(edge.run)
        return f'    {self.node[edge.parent_id]} -->|"{label}"| {child}'

    def draw(self) -> str:
        lineage = self.lineage
        for prompt_id in dict.fromkeys([lineage.root_id, lineage.prompt_id]):
            self.node[prompt_id] = f"n{len(self.node)}"
            self.node_lines.append(self.node_line(prompt_id, self.node[prompt_id]))
            self.take([self.node_lines[-1]])  # drawn whatever the budget
        more = self.place_edges()
        lines = ["flowchart TD", *self.node_lines, *self.edge_lines]
        for number, (keeper, count) in enumerate(more.items()):
            lines.append(f'    m{number}["+{count} more"]')
            lines.append(f"    {self.node[keeper]} -.-> m{number}")
        loops_left_out = 0
        for run in lineage.in_place:
            if run.status == "completed" and run.prompt_id in self.node:
                loop = self.node[run.prompt_id]
                line = f'    {loop} -->|"in place: {_edge_label(run)}"| {loop}'
                if self.used + len(line) + 1 > self.max_chars:
                    loops_left_out += 1
                    continue
                lines.append(line)
                self.used += len(line) + 1
        lines.append(f"    style {self.node[lineage.prompt_id]} stroke-width:3px")
        if loops_left_out:
            lines.append(f"%% {loops_left_out} more in-place rewrites not drawn")
        return "\n".join(lines) + "\n"

    def place_edges(self) -> dict[str, int]:
        """Draw each completed edge whose prompt fits; returns, per drawn prompt, how many
        prompts under it were left out."""
        lineage = self.lineage
        edges = [
            edge
            for edge in [*reversed(lineage.ancestors), *lineage.descendants]
            if edge.run is None or edge.run.status == "completed"
        ]
        drawn_children: dict[str, int] = {}
        more: dict[str, int] = {}
        kept_by: dict[str, str] = {}  # a left-out prompt -> the drawn one counting it
        for edge in edges:
            parent, child = edge.parent_id, edge.child_id
            if child in self.node or child in kept_by:  # the asked prompt, or a cycle
                if child in self.node and parent in self.node:
                    line = self.edge_line(edge, self.node[child])
                    if self.used + len(line) + 1 <= self.max_chars:
                        self.edge_lines.append(line)
                        self.used += len(line) + 1
                continue
            keeper = parent if parent in self.node else kept_by.get(parent)
            if keeper is None:
                continue
            if parent in self.node and drawn_children.get(parent, 0) < self.max_children:
                name = f"n{len(self.node)}"
                lines = [self.node_line(child, name), self.edge_line(edge, name)]
                if self.take(lines):
                    self.node[child] = name
                    self.node_lines.append(lines[0])
                    self.edge_lines.append(lines[1])
                    drawn_children[parent] = drawn_children.get(parent, 0) + 1
                    continue
            more[keeper] = more.get(keeper, 0) + 1
            kept_by[child] = keeper
        return more


_MERMAID_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,_-")


def _mermaid_text(text: str) -> str:
    """Every character but letters, digits and plain punctuation as a Mermaid entity code
    (``#34;``), so quotes, brackets, pipes and markup in stored text stay text."""
    return "".join(c if c in _MERMAID_PLAIN else f"#{ord(c)};" for c in text)


def _shortened(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "\u2026"


def _edge_label(run: Run) -> str:
    named = run.outputs.get("enhancement_model") or run.execution_config.get("enhancement_model")
    model = _shortened(str(named or "unknown model"), 32)
    return f"{_mermaid_text(model)}, {_mermaid_text(run.id)}"


class VerificationReport(BaseModel):
    """The enhancement data checks (see ``verify()``). ``ok`` is True when every list is empty."""

    model_config = ConfigDict(frozen=True)

    quick: bool = Field(
        default=False,
        description="True when only the index-served checks of interrupted work ran; the "
        "checks that read every run (legacy keys, outputs, edges, orphans, flags, documents "
        "that do not fit the model) were skipped.",
    )
    prompts_with_legacy_keys: list[str] = Field(
        description="Enhanced prompts still carrying keys beside `enhanced`; `migrate` fixes them."
    )
    incomplete_enhance_runs: list[str] = Field(
        description="Completed enhance runs missing part of their outputs; `repair` backfills."
    )
    dangling_edges: list[str] = Field(
        description="Completed enhance runs whose produced prompt does not exist; `repair` "
        "removes them (their original being gone is fine: that is kept provenance)."
    )
    orphan_runs: list[str] = Field(
        default_factory=list,
        description="Runs whose prompt does not exist and that are not kept provenance "
        "(a deletion interrupted midway); `repair` removes them.",
    )
    flag_mismatches: list[str] = Field(
        default_factory=list,
        description="Prompts whose `enhanced` flag disagrees with their enhance runs; `repair` "
        "sets or clears the flag to match.",
    )
    half_finished: list[str] = Field(
        description="Enhancements or reverts interrupted between writes; `repair` settles them."
    )
    damaged_documents: list[str] = Field(
        default_factory=list,
        description="Damage in the embedded default's file, one line each: rows whose checksum "
        "(of identity or body) fails, as '<collection> <id>: <why>'; 'file: ...' for what "
        "SQLite's own check finds; arrival numbers; and, in the full check, the index catalog "
        "and each index whose entries differ from its documents. Nothing damaged is served, "
        "and repair changes nothing while there is any: `backup` first, `rebuild-indexes` for "
        "indexes, a backup for documents.",
    )
    invalid_documents: list[str] = Field(
        default_factory=list,
        description="Prompts and runs that do not fit the data model (edited by hand?), as "
        "'<collection> <id>: <field> <rule>'; listings leave them out and a read of one fails. "
        "Fix or delete them (e.g. in mongosh).",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return not (
            self.prompts_with_legacy_keys
            or self.incomplete_enhance_runs
            or self.dangling_edges
            or self.orphan_runs
            or self.flag_mismatches
            or self.half_finished
            or self.damaged_documents
            or self.invalid_documents
        )


class RepairReport(BaseModel):
    """What ``repair()`` did, run by run."""

    model_config = ConfigDict(frozen=True)

    quick: bool = Field(
        default=False,
        description="True when only interrupted work was settled; the steps that read every "
        "run (orphans, flags, outputs, legacy migration) were skipped.",
    )
    completed: list[str] = Field(description="Interrupted enhancements finished.")
    rolled_back: list[str] = Field(description="Interrupted enhancements marked failed.")
    reverts_finished: list[str] = Field(description="Interrupted reverts finished.")
    runs_removed: list[str] = Field(
        default_factory=list,
        description="Runs whose prompt is gone (left by an interrupted deletion, or found by "
        "the full checks), removed.",
    )
    deletions_finished: list[str] = Field(
        default_factory=list,
        description="Prompts whose interrupted deletion repair finished (their runs removed).",
    )
    deletions_cancelled: list[str] = Field(
        default_factory=list,
        description="Prompts whose deletion stopped before the prompt went: its runs were "
        "unmarked and the prompt stays; delete it again if that was meant.",
    )
    flags_fixed: list[str] = Field(
        default_factory=list, description="Prompts whose `enhanced` flag was set or cleared."
    )
    migration: MigrationReport
    unrepairable: list[str] = Field(description="Problems repair cannot fix, with the reason.")


class MigrationReport(BaseModel):
    """What ``migrate()`` did or, with ``dry_run``, would do."""

    model_config = ConfigDict(frozen=True)

    dry_run: bool
    prompts_examined: int
    runs_backfilled: list[str] = Field(description="Existing runs that gained missing outputs.")
    runs_created: list[str] = Field(description="Runs made for legacy prompts that had none.")
    prompts_stripped: list[str] = Field(description="Prompts whose legacy keys were removed.")
    prompts_left: list[str] = Field(
        default_factory=list,
        description="Prompts the database refused a write for, each with its ids and the "
        "reason: their keys stay as they were, and the other prompts are migrated.",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def changes(self) -> int:
        return len(self.runs_backfilled) + len(self.runs_created) + len(self.prompts_stripped)


RepairReport.model_rebuild()
